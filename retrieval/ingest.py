"""Filling a memory from labelled images: ImageFolder trees and CSV manifests.

Builds are resumable (sources already in memory are skipped), go in batches with a
progress bar, and never stop on a bad image: it is skipped and listed in the report.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .feature_cache import FeatureCache
from .images import (
    failure_line,
    files_under,
    is_image_path,
    is_system_folder,
    is_unread_file,
    unread_files_message,
)
from .journal import FileJournal, JournalQuery
from .preprocessing import EmbedFailure, EmbedResult
from .store import MemoryStore, normalize_source, point_id_for
from .text import as_held, canonical_label, counted, label_problem, not_utf8_problem, quoted, short_repr, visible

if TYPE_CHECKING:
    from .featurizers import Featurizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImage:
    source: str  # absolute path (or URI)
    label: str


class DatasetError(ValueError):
    """A dataset directory or manifest is not in the expected layout."""


def scan_imagefolder(root: str | Path) -> list[LabelledImage]:
    """`ROOT/<label>/*.{jpg,png,...}` (nested folders below a label are included), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{visible(str(root))} is not a directory")
    items: list[LabelledImage] = []
    unread: list[Path] = []
    broken: list[str] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not is_system_folder(p.name)):
        label = canonical_label(label_dir.name) or label_dir.name  # a folder named by spaces alone keeps them
        items += _images_below(label_dir, label, unread, broken)
    _warn_left_out(root, unread, broken)
    if not items:
        one_class = any(is_image_path(p) for p in files_under(root))
        raise DatasetError(f"{visible(str(root))} holds no images in ROOT/<label>/<image> layout"
                           + ("; for a folder of one class's images, give the class: vmem build FOLDER --label LABEL"
                              if one_class else ""))
    linked = {it.source for it in items}  # a file at the root that a label folder links to is in, through the link
    if loose := [visible(p.name) for p in sorted(root.iterdir())
                 if p.is_file() and is_image_path(p) and normalize_source(p) not in linked]:
        # No folder, so no label: left out, but said, or a user wonders where they went.
        log.warning("%s directly under %s (%s%s) %s in no label folder, and left out: "
                    "ROOT/<label>/<image> labels an image by its folder", counted(len(loose), "image"),
                    visible(str(root)), ", ".join(loose[:3]), ", ..." if len(loose) > 3 else "",
                    "is" if len(loose) == 1 else "are")
    return items


def read_manifest(path: str | Path, unlabelled: list[int] | None = None) -> list[LabelledImage]:
    """A UTF-8 CSV with a `path,label` header; relative paths are relative to the CSV's folder.

    A leading byte-order mark (Excel's "CSV UTF-8") is allowed. A row whose label is empty is left out: a person
    reviewing `vmem classify --review-csv`'s queue blanks the label of an image they cannot tell. Its line number is
    appended to `unlabelled`, for the caller to say; without one, a warning says them. DatasetError if the file is
    not UTF-8 text or not in this layout, or a row has a label and no path.
    """
    path = Path(path)
    shown = visible(str(path))  # as every line of output names a file (a manifest's name is any text)
    # utf-8-sig: the same as utf-8, but a BOM before the header is not read as part of the name "path".
    with path.open(newline="", encoding="utf-8-sig") as fh:
        try:
            # A space after a comma ("a.jpg, cat") is no part of the next cell, and a label's outer spaces are none
            # of it: " cat" and "cat" were two classes, and `vmem relabel --to` (which strips) could reach only one.
            reader = csv.DictReader(fh, skipinitialspace=True)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                got = ", ".join(map(quoted, reader.fieldnames or [])) or "none"  # the file's own text, escaped
                raise DatasetError(f"{shown}: expected a header with columns path,label; got {got}")
            items = []
            blank: list[int] = []
            for n, row in enumerate(reader, start=2):
                if None in row:  # more cells than the header names: an unquoted comma in a path moved the label
                    raise DatasetError(f"{shown}:{n}: {len(reader.fieldnames) + len(row[None])} cells where the header "
                                       f"has {len(reader.fieldnames)}: put a path or label holding a comma in quotes")
                label = canonical_label(row["label"] or "")
                if not label:
                    blank.append(n)
                    continue
                if not row["path"]:
                    raise DatasetError(f"{shown}:{n}: the label {quoted(label)} has no path: give the image's path")
                src = row["path"]
                if "://" not in src and not Path(src).is_absolute():
                    src = str(path.parent / src)
                items.append(LabelledImage(normalize_source(src), label))
        except UnicodeDecodeError as exc:  # decoded as it is read: raised by any row
            raise DatasetError(
                f"{shown} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be UTF-8: saved as Latin-1 "
                "or Windows-1252?): save the manifest as UTF-8 (\"CSV UTF-8\") and try again"
            ) from exc
        except csv.Error as exc:
            raise DatasetError(f"{shown}: not a readable CSV ({exc}): save it as a path,label CSV") from exc
    if not items:  # as an empty ImageFolder is: refused before a memory is made for nothing
        if blank:
            raise DatasetError(f"{shown}: no row has a label ({len(blank):,} left empty, and a row whose label is "
                               "empty is skipped): nothing to add")
        raise DatasetError(f"{shown} lists no images: add a path,label row for each image under its header")
    if unlabelled is not None:
        unlabelled += blank
    elif blank:
        log.warning("%s", unlabelled_rows_message(path, blank))
    return items


def unlabelled_rows_message(path: str | Path, rows: Sequence[int]) -> str:
    """What a manifest's rows left with no label came to (skipped), naming their lines."""
    shown = ", ".join(str(n) for n in rows[:10]) + (", ..." if len(rows) > 10 else "")
    return (f"{visible(str(path))}: {counted(len(rows), 'row')} with no label left out (line"
            f"{'s' if len(rows) != 1 else ''} {shown}): a row whose label is empty is skipped")


def read_labelled(dataset: str | Path, label: str | None = None,
                  unlabelled: list[int] | None = None) -> list[LabelledImage]:
    """An ImageFolder directory or a `.csv` manifest (its rows with no label left out, as `read_manifest`'s);
    with `label`, every image below a folder (or one image file), all of that label: a class added from the folder
    its images came in."""
    p = Path(dataset)
    if label is not None:
        return images_as_label(p, label)
    if p.is_file() and p.suffix.lower() == ".csv":
        return read_manifest(p, unlabelled)
    return scan_imagefolder(p)


def images_as_label(path: str | Path, label: str) -> list[LabelledImage]:
    """Every image below the folder `path` (through links, sorted), or the image file `path`, labelled `label`."""
    path = Path(path)
    stored = canonical_label(label)
    if not stored:
        raise DatasetError("the label is empty: give the class the images are of")
    if problem := label_problem(stored):
        raise DatasetError(problem)
    if path.is_file():
        if not is_image_path(path):
            raise DatasetError(f"{visible(str(path))} is not an image file (by its extension)")
        return [LabelledImage(normalize_source(path), stored)]
    if not path.is_dir():
        raise DatasetError(f"{visible(str(path))} is not a folder or an image file")
    unread: list[Path] = []
    broken: list[str] = []
    items = _images_below(path, stored, unread, broken)
    # As a folder of class folders does: a folder of .heic photos had been "holds no images", unsaid why (said in
    # the error below when nothing is left: not twice)
    _warn_left_out(path, unread if items else [], broken)
    if not items:
        raise DatasetError(f"{visible(str(path))} holds no images"
                           + (f" vmem reads: {unread_files_message(unread)}" if unread else ""))
    return items


def _images_below(folder: Path, label: str, unread: list[Path], broken: list[str]) -> list[LabelledImage]:
    """The images below `folder`, labelled `label`; the files left out that may have been meant as images appended
    to `unread`, links to no file (kept, to fail as such and be listed) to `broken`."""
    items = []
    for path in files_under(folder):
        is_file = path.is_file()
        dangling = not is_file and path.is_symlink()  # is_file follows links: the target is gone (or it loops)
        if (is_file or dangling) and is_image_path(path):
            items.append(LabelledImage(normalize_source(path), label))
            if dangling:
                broken.append(f"{visible(str(path))} -> {visible(items[-1].source)}")
        elif is_file and is_unread_file(path):
            unread.append(path)
    return items


def _warn_left_out(root: Path, unread: list[Path], broken: list[str]) -> None:
    if broken:  # its failure names the missing target (a source is a resolved path): say which link led there
        log.warning("%s in %s lead%s to no file: %s%s", counted(len(broken), "link"),
                    visible(str(root)), "s" if len(broken) == 1 else "", "; ".join(broken[:3]),
                    "; ..." if len(broken) > 3 else "")
    if unread:  # a folder of .heic or extensionless images would otherwise vanish from the build unsaid
        log.warning("%s", unread_files_message(unread))


# Files that name a dataset's classes, looked for beside an ImageFolder tree (Tiny-ImageNet's classes.tsv and
# words.txt, ImageNet's LOC_synset_mapping.txt): folder names there are WordNet ids, which say nothing to a
# person or to the VLM that re-ranks.
LABEL_NAMES_FILES = ("classes.tsv", "LOC_synset_mapping.txt", "words.txt")


def read_label_names(path: str | Path) -> dict[str, str]:
    """label -> name, from `label<TAB>name` lines (classes.tsv, words.txt), `label name, ...` lines
    (LOC_synset_mapping.txt), or a `.csv` of `label,name` rows. In a text file, the first name of a comma-separated
    list of synonyms is kept; a CSV's name is its whole cell ("Shirt, blue, XL", quoted). A line starting with "#" is
    a comment, unless it holds a tab (`#label<TAB>name`).

    Example:
        >>> read_label_names("tiny-imagenet-200/classes.tsv")["n02124075"]
        'Egyptian cat'
    """
    path = Path(path)
    shown = visible(str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{shown} is not UTF-8 text: save it as UTF-8 and try again") from exc
    if path.suffix.lower() == ".csv":
        rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1) if r]
        if rows and [c.strip().lower() for c in rows[0][1][:2]] == ["label", "name"]:
            rows = rows[1:]  # a header
    else:
        # "#" starts a comment line, but not a line `#label<TAB>name`: a label may start with it
        rows = [(n, list(line.partition("\t" if "\t" in line else " ")[::2]))
                for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not (line.startswith("#") and "\t" not in line)]
    csv_cells = path.suffix.lower() == ".csv"
    out: dict[str, str] = {}
    for n, row in rows:
        # the head of a list of synonyms, except in a CSV, whose quoting keeps a name's own commas
        name = (row[1] if csv_cells else row[1].split(",")[0]).strip() if len(row) >= 2 else ""
        if not row[0].strip() or not name:
            cells = ", ".join(map(quoted, row))  # the file's own text, escaped
            raise DatasetError(f"{shown}:{n}: expected a label and its name, got [{cells}]")
        out[canonical_label(row[0])] = name
    if not out:
        raise DatasetError(f"{shown} names no labels")
    return out


def imagenet_label_names() -> dict[str, str]:
    """The 1000 ImageNet-1k WordNet ids' names, shipped with vmem (`retrieval/data/imagenet_names.txt`): curated
    names that tell classes apart ("crane bird", "construction crane"), for a memory of ImageNet folders."""
    text = resources.files("retrieval").joinpath("data/imagenet_names.txt").read_text(encoding="utf-8")
    # Not read_label_names: these names are whole (one holds a comma), not the head of a synonym list.
    return dict(line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#"))


def find_label_names_file(dataset: str | Path) -> Path | None:
    """A file naming an ImageFolder dataset's labels, in its folder or the one above (None for a manifest)."""
    root = Path(dataset)
    if not root.is_dir():
        return None
    for folder in (root, root.parent):
        for name in LABEL_NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


@dataclass
class BuildReport:
    total: int = 0
    added: int = 0
    added_per_label: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    duplicates: int = 0  # listed again with the same label (the same file, after resolving links)
    # (source, stored label, listed label) of images already in memory under another label: kept as stored,
    # unless the build was asked to relabel them (then `relabel_applied`)
    relabelled: list[tuple[str, str, str]] = field(default_factory=list)
    relabel_applied: bool = False
    failed: list[EmbedFailure] = field(default_factory=list)
    # Sources not in the memory that its journal says were forgotten from it: added again, or with
    # `skip_forgotten` left out (`forgotten_skipped`). A resumed build had brought them back unsaid.
    forgotten_before: list[str] = field(default_factory=list)
    forgotten_skipped: bool = False
    seconds: float = 0.0
    index_seconds: float = 0.0  # building the HNSW index after inserting
    memory_points: int = 0

    def __repr__(self) -> str:
        """Each list cut short (a notebook's `report` of a build of 202 classes and its failures); all in the
        fields, and `summary()` says it in words."""
        return short_repr(self)

    def summary(self, failures: bool = True) -> str:
        """What the build did, for people; with `failures`, the images that failed too."""
        rate = self.added / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.added} added, {self.skipped_existing} already in memory, "
            + (f"{self.duplicates} listed twice, " if self.duplicates else "")
            + f"{len(self.failed)} failed of {counted(self.total, 'image')} in {self.seconds:.1f}s "
            f"({rate:.1f} images/s); "
            f"index built in {self.index_seconds:.1f}s; memory now holds {counted(self.memory_points, 'point')}"
        ]
        if self.relabelled and self.relabel_applied:
            lines.append(f"{len(self.relabelled)} already in memory under another label, relabelled as listed "
                         "(not embedded again):")
            lines += [f"  {visible(src)}: {quoted(old)} -> {quoted(new)}" for src, old, new in self.relabelled[:10]]
        elif self.relabelled:
            lines.append(f"{len(self.relabelled)} already in memory under another label, kept as stored (build "
                         "again with --relabel to take the listed labels):")
            lines += [f"  {visible(src)}: stored {quoted(old)}, listed {quoted(new)}"
                      for src, old, new in self.relabelled[:10]]
        if len(self.relabelled) > 10:
            lines.append(f"  ... and {len(self.relabelled) - 10} more")
        if self.forgotten_before:
            n = len(self.forgotten_before)
            lines.append(f"{counted(n, 'listed image')} had been forgotten from this memory (vmem history "
                         + ("--source PATH): left out, as asked (--skip-forgotten):" if self.forgotten_skipped else
                            "--source PATH): added again; build with --skip-forgotten to leave such images out:"))
            lines += [f"  {visible(src)}" for src in self.forgotten_before[:10]]
            if n > 10:
                lines.append(f"  ... and {n - 10} more")
        if failures:
            lines.append(self.failures())
        return "\n".join(line for line in lines if line)

    def failures(self) -> str:
        """The images that failed, one line each (the first 50)."""
        # Each source escaped here, once: a UTF-8 name's U+202E or control character turned its line around
        lines = [f"  skipped {failure_line(f.source, f.reason, escaped=True)}" for f in self.failed[:50]]
        if len(self.failed) > 50:
            lines.append(f"  ... and {len(self.failed) - 50} more")
        return "\n".join(lines)


def first_occurrences(sources: Sequence[str], labels: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Where each source first comes (positions, in order), and the (first, later) positions of a source that
    comes again with another label: an image is one point with one label, so which one is meant cannot be known.
    """
    first: dict[str, int] = {}
    conflicts: list[tuple[int, int]] = []
    for i, src in enumerate(sources):
        j = first.setdefault(src, i)
        if labels[j] != labels[i]:
            conflicts.append((j, i))
    return list(first.values()), conflicts


def unique_sources(items: Sequence[LabelledImage]) -> list[LabelledImage]:
    """`items` with each source once (a point per file); DatasetError if a file is given two labels.

    Sources are resolved paths, so a file listed twice in a manifest, or reached twice through linked
    folders, is one point.
    """
    keep, conflicts = first_occurrences([it.source for it in items], [it.label for it in items])
    if conflicts:
        named = [f"{visible(items[i].source)} ({quoted(items[j].label)} and {quoted(items[i].label)})"
                 for j, i in conflicts[:5]]
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        are = "is" if len(conflicts) == 1 else "are"
        raise DatasetError(f"{counted(len(conflicts), 'image')} {are} listed with two labels: "
                           f"{'; '.join(named)}{more}. An image is one point with one label: list each file once")
    return [items[i] for i in keep]


def _as_stored_labels(store: MemoryStore, items: list[LabelledImage]) -> list[LabelledImage]:
    """Items labelled as the memory already spells their labels: one made before labels were canonical holds a
    Mac's folder "café" decomposed, and its images, resumed or new, are that label (not a second "café")."""
    held = set(store.label_counts()) if store.count() else set()
    if not held:
        return items
    spelled = as_held({it.label for it in items}, held)
    if all(lab == as_held for lab, as_held in spelled.items()):
        return items
    return [LabelledImage(it.source, spelled[it.label]) for it in items]


def _utf8_named(items: list[LabelledImage]) -> tuple[list[LabelledImage], list[EmbedFailure]]:
    """The items whose path and label are UTF-8 text, and failures for the others (`not_utf8_problem`)."""
    ok: list[LabelledImage] = []
    failed: list[EmbedFailure] = []
    for i, it in enumerate(items):
        if (problem := not_utf8_problem(it.source, [it.label])) is None:
            ok.append(it)
        else:
            # As it is: failures() names it by its bytes with visible's backslash rule (\xe9 a byte, \\xe9 the
            # name's own characters), as not_utf8_problem names a label folder, and as it names the others
            failed.append(EmbedFailure(i, it.source, f"{problem} to add it"))
    return ok, failed


def build_memory(
    store: MemoryStore,
    featurizer: Featurizer,
    items: Sequence[LabelledImage],
    batch_size: int = 64,
    num_workers: int | None = None,
    tags: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    feature_cache: FeatureCache | None = None,
    report: BuildReport | None = None,
    skip_forgotten: bool = False,
) -> BuildReport:
    """Embed and insert `items`, skipping sources already in memory (and with `skip_forgotten`, those its journal
    says were forgotten from it: `report.forgotten_before` lists them either way).

    Args:
        store: the memory (its featurizer must match `featurizer`).
        featurizer: the encoder.
        items: labelled image sources.
        tags: stored on every point (e.g. {"dataset": "tiny-imagenet", "split": "train"}).
        progress: called with the number of images done after each batch.
        feature_cache: reuse features computed before for the same file contents (and keep new ones).
        report: filled in as the build goes (default: a new one), so a caller knows what an interrupted build
            added.
    """
    store.check_featurizer(featurizer.spec)
    t0 = time.perf_counter()
    report = report if report is not None else BuildReport()
    report.total = len(items)
    items = unique_sources(items)
    report.duplicates = report.total - len(items)
    items, unnamed = _utf8_named(items)
    report.failed += unnamed
    items = _as_stored_labels(store, items)
    if progress and unnamed:
        progress(len(unnamed))
    ids = [point_id_for(it.source) for it in items]
    stored = store.existing_labels(ids)
    todo_ids = {it.source: pid for it, pid in zip(items, ids, strict=True) if pid not in stored}
    todo = [it for it in items if it.source in todo_ids]
    report.skipped_existing = len(items) - len(todo)
    if todo and (forgotten := forgotten_ids(store)):
        report.forgotten_before = [it.source for it in todo if todo_ids[it.source] in forgotten]
        if skip_forgotten and report.forgotten_before:
            report.forgotten_skipped = True
            left_out = set(report.forgotten_before)
            todo = [it for it in todo if it.source not in left_out]
            if progress:
                progress(len(left_out))
    # A resumed build never rewrites a point; a label changed since is reported rather than dropped unseen.
    report.relabelled = [(it.source, lab, it.label) for it, pid in zip(items, ids, strict=True)
                         if (lab := stored.get(pid)) is not None and lab != it.label]
    if progress and report.skipped_existing + report.duplicates:
        progress(report.skipped_existing + report.duplicates)
    # Insert after every batch: an interrupted build keeps what it finished, and resumes.
    for res in _embed_batches(featurizer, [it.source for it in todo], batch_size, num_workers, feature_cache):
        done = [todo[i] for i in res.indices]
        if done:
            store.add(res.features, [d.label for d in done], [d.source for d in done], tags)
        report.added += len(done)
        for d in done:
            report.added_per_label[d.label] = report.added_per_label.get(d.label, 0) + 1
        report.failed += res.failures
        if progress:
            progress(len(res.indices) + len(res.failures))
    store.flush()
    report.seconds = time.perf_counter() - t0
    report.memory_points = store.count()
    return report


def forgotten_ids(store: MemoryStore) -> set[str]:
    """The ids of the points the memory's journal says were forgotten (some may have been added again since)."""
    # With a limit, a journal file is read for its forget lines only (a 27 MB journal of adds, parsed whole: 1.1 s
    # a build; its forget lines: 0.08 s). A server's journal is read in pages, the limit being one page.
    limit = 1 << 40 if isinstance(store.journal, FileJournal) else None
    return {i for e in store.journal.newest(JournalQuery(op="forget"), limit=limit)[0] for i in e.ids}


def _embed_batches(featurizer: Featurizer, sources: list[str], batch_size: int, num_workers: int | None,
                   cache: FeatureCache | None) -> Iterator[EmbedResult]:
    featurizer.embed_as_stored()
    if cache is None:
        yield from featurizer.iter_embed(sources, batch_size, num_workers)
        return
    chunk = 32 * batch_size  # a cache round-trip per chunk, a store insert per chunk
    for start in range(0, len(sources), chunk):
        feats, ok, failures = cache.features_for(sources[start : start + chunk], batch_size, num_workers)
        yield EmbedResult(feats, [start + i for i in ok],
                          [EmbedFailure(start + f.index, f.source, f.reason) for f in failures])
