"""Features computed once per (featurizer, file content) and reused.

Layout under the cache root, one folder per featurizer:

    <root>/<featurizer-key>/features.npy     float32 [n, dim], appended as files are seen
    <root>/<featurizer-key>/index.json       {content sha256: row}

A file is looked up by the hash of its bytes, so a moved file is still a hit and a changed
file is embedded again. Files that fail to decode are reported, never cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .featurizers import EmbedFailure, Featurizer
from .files import write_atomically


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def featurizer_key(featurizer: Featurizer) -> str:
    spec = featurizer.spec.model_dump_json()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in featurizer.name)[-48:]
    return f"{safe}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


class FeatureCache:
    def __init__(self, root: str | Path, featurizer: Featurizer) -> None:
        self.featurizer = featurizer
        self.dir = Path(root) / featurizer_key(featurizer)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index_path = self.dir / "index.json"
        self._feats_path = self.dir / "features.npy"
        self._lock_path = self.dir / ".lock"
        with self._locked():
            self._load()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Several processes may fill one cache (a test run beside a warm-up job): one writer at a time."""
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> None:
        self.index: dict[str, int] = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
        self.features = (np.load(self._feats_path) if self._feats_path.exists()
                         else np.zeros((0, self.featurizer.dim), np.float32))
        if len(self.features) < len(self.index):  # a torn write: keep only rows that exist
            self.index = {h: r for h, r in self.index.items() if r < len(self.features)}

    def _save(self) -> None:
        # Features first: an index naming rows a torn write lost is trimmed on load; the reverse is not caught.
        write_atomically(self._feats_path, lambda fh: np.save(fh, self.features))
        write_atomically(self._index_path, json.dumps(self.index))

    def features_for(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        num_workers: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, list[int], list[EmbedFailure]]:
        """Features for `paths` (cached or computed now).

        Returns:
            (features [n_ok, dim], indices of `paths` they belong to, failures)
        """
        hashes = [file_sha256(p) for p in paths]
        missing = sorted({h: i for i, h in reversed(list(enumerate(hashes))) if h not in self.index}.values())
        failures: list[EmbedFailure] = []
        if on_batch:
            on_batch(len(paths) - len(missing))
        if missing:
            new_rows, new_hashes = [], []
            for res in self.featurizer.iter_embed([str(paths[i]) for i in missing], batch_size, num_workers):
                new_rows.append(res.features)
                new_hashes += [hashes[missing[j]] for j in res.indices]
                failures += [EmbedFailure(missing[f.index], f.source, f.reason) for f in res.failures]
                if on_batch:
                    on_batch(len(res.indices) + len(res.failures))
                if sum(len(r) for r in new_rows) >= 4096:  # checkpoint long runs
                    self._append(new_rows, new_hashes)
                    new_rows, new_hashes = [], []
            self._append(new_rows, new_hashes)
        failed_hashes = {hashes[f.index] for f in failures}
        ok = [i for i, h in enumerate(hashes) if h in self.index and h not in failed_hashes]
        rows = np.asarray([self.index[hashes[i]] for i in ok], dtype=np.int64)
        return self.features[rows] if len(rows) else np.zeros((0, self.featurizer.dim), np.float32), ok, failures

    def _append(self, rows: list[np.ndarray], hashes: list[str]) -> None:
        if not hashes:
            return
        new = np.concatenate(rows).astype(np.float32, copy=False)
        with self._locked():
            self._load()  # another process may have appended since we last looked
            fresh = [j for j, h in enumerate(hashes) if h not in self.index]
            start = len(self.features)
            self.features = np.concatenate([self.features, new[fresh]])
            for n, j in enumerate(fresh):
                self.index.setdefault(hashes[j], start + n)
            self._save()
