"""Features computed once per (featurizer, file content) and reused.

Layout under the cache root, one folder per featurizer, both files append-only:

    <root>/<featurizer-key>/features.f32     float32 rows [n, dim], raw, appended as files are seen
    <root>/<featurizer-key>/hashes.txt       the content sha256 of row i on line i
    <root>/<featurizer-key>/file-hashes.txt  sha256, size, mtime, inode, ctime, path of files hashed before
                                             (appended; rewritten with one record per path once most
                                             records are superseded by a changed file's later one)

Appending writes only the new rows (a build of 1.28M images used to rewrite the whole array at each
4,096-row checkpoint: about a terabyte written), and the features are read through a memory map, not
loaded whole. A torn append (rows without their hashes, or a partial row) is cut off by the next one.
A file is looked up by the hash of its bytes, so a moved file is still a hit and a changed
file is embedded again. Files that fail to decode are reported, never cached. A file whose path, size,
modification and change times and inode are as when it was last hashed is not read again (as git decides a
file is unchanged; the change time, which no one can set, catches a rewrite whose modification time was put
back): at ImageNet scale, hashing every file anew read 140 GB to find cached features.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import DISK_FULL_ERRNOS, file_sha256, os_error_reason, remove_stale_temporaries, write_atomically
from .preprocessing import EmbedFailure

if TYPE_CHECKING:
    from .featurizers import Featurizer

log = logging.getLogger(__name__)


def featurizer_key(featurizer: Featurizer) -> str:
    # A local model's weights digest is in the key: its name, a folder, stays the same when retrained weights
    # are saved there. Built-in models have none, and their keys are as they were before it existed.
    spec = featurizer.spec
    key = spec.model_dump_json(exclude={"weights_sha256"})
    if spec.weights_sha256:
        key += f"|weights:{spec.weights_sha256}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in featurizer.name)[-48:]
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


_SAID_UNCACHED: set[str] = set()  # plugins already warned of, once each per process


def cacheable(featurizer: Featurizer) -> bool:
    """Whether `featurizer`'s features may be cached under its key. A `python:` plugin's name is its code's, which
    stays when the model is retrained: without a digest of its weights (`ModuleFeaturizer` takes one; a plugin's own
    Featurizer may set `weights_sha256`), its old features would be read back as the new model's. Built-in and Hub
    models are fixed by their name."""
    return not featurizer.name.startswith("python:") or bool(featurizer.weights_sha256)


def _say_what_is_not_used(root: Path, key: str, featurizer: Featurizer) -> None:
    """Warn of the caches of the same model here that this one does not read: made by a vmem whose preprocessing
    settings had another form, or with other weights. An upgrade embedded a whole dataset again without a word,
    and the old folder stayed for good."""
    prefix = key.rsplit("-", 1)[0] + "-"
    others = [d for d in root.glob(f"{prefix}*") if d.is_dir() and d.name != key and len(d.name) == len(key)
              and all(c in "0123456789abcdef" for c in d.name[len(prefix):])]  # another model's name is longer
    if others:
        mb = sum(f.stat().st_size for d in others for f in d.iterdir() if f.is_file()) / 1e6
        log.warning("feature caches of %s in %s are not used here (%s: made by another vmem version, or with "
                    "other weights or preprocessing), so its images are embedded again; delete them to free "
                    "%.0f MB", featurizer.name, root, ", ".join(d.name for d in others), mb)


def _complete_lines_after(path: Path, offset: int) -> tuple[bytes, int]:
    """The complete lines of an append-only file past `offset`, and the offset after them (a torn last line
    is left for later: its writer may still be at it, or the next append cuts it)."""
    if not path.exists():
        return b"", offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        tail = fh.read()
    complete = tail[: tail.rfind(b"\n") + 1]
    return complete, offset + len(complete)


def _append_at(path: Path, end: int, data: bytes, durable: bool) -> None:
    """Append to a file once it is cut back to `end`: what a torn append left past the last complete record
    goes first, or it would spoil the record written after it."""
    with open(path, "ab") as fh:
        if fh.tell() != end:
            fh.truncate(end)
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


_HASH_LINE_BYTES = 65  # a sha256 in hex and its newline
_SETTLED_NS = 2_000_000_000  # a file's hash is remembered once it has been left alone this long
# file-hashes.txt is rewritten with one record per path once it holds at least this many records and more than
# twice as many as paths (files changed or replaced add a record each; the old ones are never read again).
_COMPACT_MIN_RECORDS = 100_000


class FeatureCache:
    def __init__(self, root: str | Path, featurizer: Featurizer) -> None:
        self.featurizer = featurizer
        # `~/cache` from Python or `--feature-cache=~/cache` (no shell expands it there) is the home's, not a
        # folder named ~ made in the working directory
        self.dir = Path(root).expanduser() / featurizer_key(featurizer)
        self.index: dict[str, int] = {}
        self.features = np.zeros((0, featurizer.dim), np.float32)
        # A featurizer whose weights the key cannot tell apart embeds every time, nothing read or written here.
        self.uncached = not cacheable(featurizer)
        if self.uncached:
            if featurizer.name not in _SAID_UNCACHED:
                _SAID_UNCACHED.add(featurizer.name)
                log.warning("%s sets no weights_sha256, so its features are not cached (a retrained model keeps "
                            "its name): images are embedded each time. Set weights_sha256 on the featurizer, or "
                            "wrap the model in retrieval.own_encoders.ModuleFeaturizer, which does", featurizer.name)
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._feats_path = self.dir / "features.f32"
        self._hashes_path = self.dir / "hashes.txt"
        self._file_hashes_path = self.dir / "file-hashes.txt"
        self._file_hashes: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, inode, ctime) -> sha256
        self._file_hashes_offset = 0
        self._file_hashes_inode: int | None = None  # of the file read so far: a compaction replaces it
        self._file_hash_records = 0  # records read, superseded ones included
        self._file_hashes_compacted = False  # checked once per cache object, on its first full read
        self._lock_path = self.dir / ".lock"
        self._row_bytes = featurizer.dim * 4
        self._rows = 0  # rows with a hash, read so far
        self._hashes_offset = 0  # bytes of hashes.txt read so far
        self._not_kept: dict[str, np.ndarray] = {}  # hash -> features the disk took no more of (`_append_or_keep`)
        remove_stale_temporaries(self.dir)  # a compaction of file-hashes.txt killed before its rename
        _say_what_is_not_used(Path(root), self.dir.name, featurizer)
        with self._locked():
            self._load()
            self._upgrade_npy_cache()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Several processes may fill one cache (a test run beside a warm-up job): one writer at a time."""
        with open(self._lock_path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> None:
        """Read what other writers appended since the last look: the new hash lines, then map the rows."""
        complete, self._hashes_offset = _complete_lines_after(self._hashes_path, self._hashes_offset)
        for line in complete.decode("ascii").splitlines():
            self.index.setdefault(line, self._rows)
            self._rows += 1
        stored = self._feats_path.stat().st_size // self._row_bytes if self._feats_path.exists() else 0
        if stored < self._rows:  # hashes whose rows were never written (not by us: rows go first)
            self.index = {h: r for h, r in self.index.items() if r < stored}
            self._rows = stored
            self._hashes_offset = stored * _HASH_LINE_BYTES  # the next append cuts the lines past it
        self.features = (np.memmap(self._feats_path, np.float32, "r", shape=(self._rows, self.featurizer.dim))
                         if self._rows else np.zeros((0, self.featurizer.dim), np.float32))

    def _write_rows(self, rows: np.ndarray, hashes: list[str]) -> None:
        """Append rows, then their hashes, each synced: a crash between leaves rows no hash names."""
        _append_at(self._feats_path, self._rows * self._row_bytes,
                   np.ascontiguousarray(rows, np.float32).tobytes(), durable=True)
        _append_at(self._hashes_path, self._hashes_offset, "".join(f"{h}\n" for h in hashes).encode("ascii"),
                   durable=True)

    def _upgrade_npy_cache(self) -> None:
        """A cache written before 2026-12 (features.npy + index.json, rewritten whole) is appended to the new
        files (the rows they lack, in their old order), then removed: an upgrade cut short resumes."""
        old_feats, old_index = self.dir / "features.npy", self.dir / "index.json"
        if not (old_feats.exists() and old_index.exists()):
            return
        index: dict[str, int] = json.loads(old_index.read_text())
        feats = np.load(old_feats, mmap_mode="r")
        by_row = sorted((r, h) for h, r in index.items() if r < len(feats) and h not in self.index)
        for start in range(0, len(by_row), 65536):  # in pieces: an old cache may be bigger than RAM
            part = by_row[start : start + 65536]
            self._write_rows(feats[[r for r, _ in part]], [h for _, h in part])
            self._load()
        old_feats.unlink()
        old_index.unlink()

    def features_for(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        num_workers: int | None = None,
        on_batch: Callable[[int], object] | None = None,
    ) -> tuple[np.ndarray, list[int], list[EmbedFailure]]:
        """Features for `paths` (cached or computed now).

        Returns:
            (features [n_ok, dim], indices of `paths` they belong to, failures)
        """
        if self.uncached:
            self.featurizer.embed_as_stored()

            def count(n: int) -> None:
                if on_batch:
                    on_batch(n)

            res = self.featurizer.embed_many([str(p) for p in paths], batch_size, num_workers, count)
            order = np.argsort(res.indices, kind="stable")
            return res.features[order], [res.indices[i] for i in order], res.failures
        with self._locked():  # what other writers added since: reading it is incremental, so cheap
            self._load()
            self._load_file_hashes()
        unreadable: dict[int, str] = {}
        hashes = self._content_hashes(paths, unreadable)
        missing = sorted({h: i for i, h in reversed(list(enumerate(hashes)))
                          if h not in self.index and i not in unreadable}.values())
        failures = [EmbedFailure(i, str(paths[i]), reason) for i, reason in unreadable.items()]
        if on_batch:
            on_batch(len(paths) - len(missing))
        if missing:
            self.featurizer.embed_as_stored()  # a build reads these as it would have embedded them
            new_rows, new_hashes = [], []
            for res in self.featurizer.iter_embed([str(paths[i]) for i in missing], batch_size, num_workers):
                new_rows.append(res.features)
                new_hashes += [hashes[missing[j]] for j in res.indices]
                failures += [EmbedFailure(missing[f.index], f.source, f.reason) for f in res.failures]
                if on_batch:
                    on_batch(len(res.indices) + len(res.failures))
                if sum(len(r) for r in new_rows) >= 4096:  # checkpoint long runs
                    self._append_or_keep(new_rows, new_hashes)
                    new_rows, new_hashes = [], []
            self._append_or_keep(new_rows, new_hashes)
            failures += self._embed_copies(_copies_of_failed(failures, hashes), paths, hashes, batch_size,
                                           num_workers)
        failed = {f.index for f in failures}
        ok = [i for i, h in enumerate(hashes)
              if (h in self.index or h in self._not_kept) and i not in failed]  # "": in no row
        found = np.zeros((len(ok), self.featurizer.dim), np.float32)
        # The map's rows in one gather: indexed row by row, each became a memmap object of its own (6,660 rows:
        # 48 ms against 3.5 ms, of a 0.15 s lookup).
        mapped = [(j, self.index[hashes[i]]) for j, i in enumerate(ok) if hashes[i] in self.index]
        if mapped:
            found[[j for j, _ in mapped]] = self.features[[row for _, row in mapped]]
        for j, i in enumerate(ok):
            if hashes[i] not in self.index:
                found[j] = self._not_kept[hashes[i]]
        return found, ok, sorted(failures, key=lambda f: f.index)

    def _embed_copies(self, copies: list[int], paths: Sequence[str | Path], hashes: Sequence[str], batch_size: int,
                      num_workers: int | None) -> list[EmbedFailure]:
        """Embed the files of `copies` (of `paths`), each another file of contents that failed for its first file;
        their failures. A content is embedded once, for its first file: its copies (the same broken download saved
        under two names) were neither answered nor failed, and then failed with the first file's reason under their
        own names, a HEIC hint of `x.heic` said of `x.jpg`. Each is read now: its failure is its own, and a copy
        that decodes (the first file gone meanwhile) is embedded."""
        failures: list[EmbedFailure] = []
        rows, row_hashes = [], list[str]()
        for res in self.featurizer.iter_embed([str(paths[i]) for i in copies], batch_size, num_workers):
            for j, row in zip(res.indices, res.features, strict=True):
                if hashes[copies[j]] not in row_hashes:  # one row for each content
                    rows.append(row[None])
                    row_hashes.append(hashes[copies[j]])
            failures += [EmbedFailure(copies[f.index], f.source, f.reason) for f in res.failures]
        self._append_or_keep(rows, row_hashes)
        return failures

    def _append_or_keep(self, rows: list[np.ndarray], hashes: list[str]) -> None:
        """`_append`, or where the disk takes no more (full, a quota, a file-size limit), the rows kept for this
        run only: the cache is a speed-up, and a full one had ended an evaluation once every query was embedded."""
        try:
            self._append(rows, hashes)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            if not self._not_kept:
                log.warning("the feature cache in %s takes no more (%s): features computed now are used, not kept",
                            self.dir, os_error_reason(exc))
            for row, h in zip(np.concatenate(rows) if rows else [], hashes, strict=True):
                self._not_kept[h] = row

    def _content_hashes(self, paths: Sequence[str | Path], unreadable: dict[int, str]) -> list[str]:
        """sha256 of each file, read only when its (path, size, mtime, inode, ctime) is new; new ones are recorded.
        A file that cannot be read gets "" and its reason in `unreadable` (by index), as the featurizer says it:
        one missing file in a manifest ended a whole evaluation."""
        hashes, fresh = [], []
        for n, p in enumerate(paths):
            path = os.path.abspath(p)
            try:
                st = os.stat(path)
                key = (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                digest = self._file_hashes.get(key)
                if digest is None:
                    digest = file_sha256(path)
            except OSError as exc:
                unreadable[n] = f"{p}: no such file" if isinstance(exc, FileNotFoundError) else \
                    f"{p}: cannot be read ({os_error_reason(exc)})"
                hashes.append("")
                continue
            # Recorded, but not for a file modified in the last seconds: a rewrite within the clock's tick (ms)
            # would keep its size and mtime ("racy git"). One record per line: no newline in the path.
            if key not in self._file_hashes and time.time_ns() - st.st_mtime_ns > _SETTLED_NS and "\n" not in path:
                fresh.append(f"{digest}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ino}\t{st.st_ctime_ns}\t{path}\n")
                self._file_hashes[key] = digest
            hashes.append(digest)
        if fresh:
            with self._locked():
                self._load_file_hashes()  # past other writers' records, to the end of the last complete one
                data = "".join(fresh).encode("utf-8", "surrogateescape")
                # Not synced: a record lost to a crash only means hashing that file once more.
                try:
                    _append_at(self._file_hashes_path, self._file_hashes_offset, data, durable=False)
                    self._file_hashes_offset += len(data)
                except OSError as exc:  # a full disk: hashed again next time, no more
                    if exc.errno not in DISK_FULL_ERRNOS:
                        raise
        return hashes

    def _load_file_hashes(self) -> None:
        """The complete records appended since the last look (a torn last line is left for later); all of them
        anew if another process compacted the file meanwhile. Under the lock."""
        try:
            st = os.stat(self._file_hashes_path)
        except FileNotFoundError:
            return
        inode = st.st_ino
        if inode != self._file_hashes_inode or st.st_size < self._file_hashes_offset:
            # First read, or replaced by a compaction (a new file): our offset into the old one means nothing.
            self._file_hashes.clear()
            self._file_hashes_inode, self._file_hashes_offset, self._file_hash_records = inode, 0, 0
        complete, self._file_hashes_offset = _complete_lines_after(self._file_hashes_path, self._file_hashes_offset)
        for line in complete.decode("utf-8", "surrogateescape").split("\n")[:-1]:  # not splitlines: a path
            parts = line.split("\t", 5)  # may hold other line breaks (U+2028, \x85...)
            # (Records of the earlier layout, without the change time, are passed over: hashed once more.)
            if len(parts) == 6 and len(parts[0]) == 64 and all(x.isdigit() for x in parts[1:5]):
                self._file_hashes[(parts[5], int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))] = parts[0]
                self._file_hash_records += 1
        if not self._file_hashes_compacted:
            self._file_hashes_compacted = True
            self._compact_file_hashes()

    def _compact_file_hashes(self) -> None:
        """Rewrite file-hashes.txt with each path's last record, if superseded ones are most of it. Under the lock."""
        if self._file_hash_records < _COMPACT_MIN_RECORDS:
            return
        latest = {key[0]: (key, digest) for key, digest in self._file_hashes.items()}  # file order: last wins
        if self._file_hash_records <= 2 * len(latest):
            return
        data = "".join(f"{d}\t{k[1]}\t{k[2]}\t{k[3]}\t{k[4]}\t{k[0]}\n" for k, d in latest.values()).encode(
            "utf-8", "surrogateescape")
        write_atomically(self._file_hashes_path, data, durable=False)
        self._file_hashes = dict(latest.values())
        self._file_hashes_inode = os.stat(self._file_hashes_path).st_ino
        self._file_hashes_offset, self._file_hash_records = len(data), len(latest)

    def _append(self, rows: list[np.ndarray], hashes: list[str]) -> None:
        if not hashes:
            return
        new = np.concatenate(rows).astype(np.float32, copy=False)
        with self._locked():
            self._load()  # another process may have appended since we last looked
            fresh = list({h: j for j, h in reversed(list(enumerate(hashes))) if h not in self.index}.items())
            if not fresh:
                return
            fresh.sort(key=lambda item: item[1])
            self._write_rows(new[[j for _, j in fresh]], [h for h, _ in fresh])
            self._load()


def _copies_of_failed(failures: list[EmbedFailure], hashes: Sequence[str]) -> list[int]:
    """The indices of the other files of a failed file's contents (`FeatureCache._embed_copies`)."""
    failed = {f.index for f in failures}
    contents = {hashes[f.index] for f in failures} - {""}  # "": unreadable, each failed already
    return [i for i, h in enumerate(hashes) if i not in failed and h in contents]
