"""What changed between two memories (`vmem diff A B`, `VisualMemory.diff`): a memory and last week's backup, a
replica and its primary, a memory before and after an import, a prune or a `copy --featurizer`.

Points are matched by id (the UUIDv5 of the image's source, the same in a backup, a copy and a re-embedded copy).
Both memories are paged through in id order at once, a page of each at a time (a merge of two sorted streams),
so that two memories larger than RAM are compared without either being held: what is kept is a count per label
and kind, and the first `limit` points of each kind.

A point held by both is *relabelled* where its label differs, *re-embedded* where its vector does (1 - cosine of
the stored vectors above `tolerance`), its *pruning* changed where hard pruning's exclusion or soft pruning's
reliability differs, its *tags* where they differ. What 1 - cosine is: float16 storage rounds a 1,280-d unit vector
by 2e-8; EfficientNet-Lite0 run again on the same Tiny-ImageNet photos gave 0, the photos mirrored 0.05 and 0.10
(tests/test_diff.py); another encoder's vectors are not compared at all.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval.files import holder_note
from retrieval.journal import JournalEntry
from retrieval.store import (
    EXCLUDED_KEY,
    RELIABILITY_KEY,
    MemoryInUseError,
    StoredPoint,
    held_here,
    is_embedded_location,
)
from retrieval.text import visible, without_secrets

if TYPE_CHECKING:
    from .visual_memory import VisualMemory

# 1 - cosine above which a point's stored vector counts as another one: far above float16's rounding (2e-8) and
# room for an encoder's noise on other hardware, far below a mirrored photo's (0.05).
VECTOR_TOLERANCE = 1e-4
PAGE = 1024  # points read from each memory at a time
DiffKind = Literal["only_in_a", "only_in_b", "relabelled", "reembedded", "pruning", "tags"]
KINDS: tuple[DiffKind, ...] = ("only_in_a", "only_in_b", "relabelled", "reembedded", "pruning", "tags")


class PointChange(BaseModel):
    """One point that differs, as each memory holds it (None: not held there)."""

    id: str
    source: str
    label_a: str | None = None
    label_b: str | None = None
    cosine: float | None = Field(default=None, description="of its two stored vectors, where both were compared")
    excluded_a: bool | None = None
    excluded_b: bool | None = None
    reliability_a: float | None = None
    reliability_b: float | None = None
    tags_a: dict[str, Any] | None = None
    tags_b: dict[str, Any] | None = None


class LabelChange(BaseModel):
    """A label whose points changed: how many each memory holds, and why they differ."""

    label: str
    a: int = 0
    b: int = 0
    added: int = Field(default=0, description="points only in B")
    forgotten: int = Field(default=0, description="points only in A")
    relabelled_in: int = Field(default=0, description="points of another label in A, of this one in B")
    relabelled_out: int = Field(default=0, description="points of this label in A, of another one in B")
    reembedded: int = Field(default=0, description="points of this label in B whose vector changed")


class NameChange(BaseModel):
    label: str
    a: str | None = Field(description="its name in A (None: unnamed)")
    b: str | None = Field(description="its name in B (None: unnamed)")


class SettingChange(BaseModel):
    key: str = Field(description="dotted: featurizer.name, index.quantization, settings.vote.k, ...")
    a: Any = None
    b: Any = None


class JournalDiff(BaseModel):
    """The edits each journal holds that the other does not (entries told apart by when, what, host, process)."""

    shared: int = Field(description="entries both journals hold")
    b_continues_a: bool = Field(description="B holds every entry of A: B's own entries are edits made after A")
    only_in_a: int = 0
    only_in_b: int = 0
    entries_only_in_a: list[JournalEntry] = Field(default_factory=list, description="the oldest `limit`")
    entries_only_in_b: list[JournalEntry] = Field(default_factory=list, description="the oldest `limit`")


class MemoryDiff(BaseModel):
    """What differs between memory A and memory B (`VisualMemory.diff`): counts exact, details the first `limit`
    points of each kind in id order (of those with `label` in A or B, where given)."""

    a: str = Field(description="A's location")
    b: str = Field(description="B's location")
    same_memory: bool = Field(description="the same memory's key: B is a backup, or A of B (a copy is another)")
    points_a: int
    points_b: int
    counts: dict[DiffKind, int] = Field(description="points of each kind (one point may be of several)")
    unchanged: int = Field(description="points in both that differ in none of these")
    tolerance: float = Field(description="1 - cosine above which a vector counts as changed")
    vectors_compared: bool
    vectors_note: str | None = Field(default=None, description="why the vectors were not compared")
    labels: list[LabelChange] = Field(description="labels whose points changed, most changes first")
    names: list[NameChange]
    settings: list[SettingChange]
    journal: JournalDiff
    label: str | None = Field(default=None, description="the label the details were chosen by")
    limit: int | None = Field(default=None, description="details of each kind at most (None: all)")
    details: dict[DiffKind, list[PointChange]] = Field(description="the first `limit` points of each kind")

    @property
    def changed(self) -> bool:
        return bool(any(self.counts.values()) or self.names or self.settings or self.journal.only_in_a
                    or self.journal.only_in_b)


def open_to_compare(location: str | Path, wait: float = 0.0) -> VisualMemory:
    """The memory at `location` opened to be read: an embedded one read-only (a private copy of its folder in
    TMPDIR, removed at close: nothing of it is written), a Qdrant server's as it is. `wait`: seconds to wait for a
    process that has the embedded memory open to write to let go (`VisualMemory.open`).

    Raises MemoryStoreError: no memory there; MemoryInUseError: a process has the embedded memory open to write
    (its files change under a copy), this one included."""
    from .visual_memory import VisualMemory

    if not is_embedded_location(location):
        return VisualMemory.open(location, reranker=None)
    if held_here(location):  # the object that holds it compares it as it is, no copy needed
        raise MemoryInUseError(
            f"the memory at {visible(str(location))} is open in this process: call mem.diff(...) on the object that "
            "holds it (held.diff(other): what changed from it to the other; other.diff(held): the other way), or "
            "close it first (mem.close())")
    try:
        return VisualMemory.open(location, reranker=None, read_only=True, wait=wait)
    except MemoryInUseError as exc:
        who = holder_note(exc.folder).who if exc.folder is not None else ""
        raise MemoryInUseError(
            f"{exc.fact}{f' ({who})' if who else ''}: a diff reads a memory at rest (a copy of its files). Compare a "
            "backup of it instead (vmem backup; POST /v1/memory/backup to a vmem serve that holds it), or stop that "
            "process", folder=exc.folder) from None


def diff_memories(a: VisualMemory, b: VisualMemory, label: str | None = None, limit: int | None = 20,
                  tolerance: float = VECTOR_TOLERANCE, progress: Callable[[int], None] | None = None) -> MemoryDiff:
    """What changed from memory `a` to memory `b` (`VisualMemory.diff`)."""
    if not (isinstance(tolerance, int | float) and 0 <= tolerance <= 2):
        raise ValueError(f"tolerance is 1 - cosine, 0 to 2: got {tolerance!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more (None: every point), got {limit}")
    spec_a, spec_b = a.store.meta.featurizer, b.store.meta.featurizer
    note = None
    if (spec_a.name, spec_a.dim) != (spec_b.name, spec_b.dim):
        note = (f"A's vectors are {spec_a.name}'s ({spec_a.dim}-d), B's {spec_b.name}'s ({spec_b.dim}-d): every "
                "point's vector is another encoder's, so none were compared")
    wanted = None
    if label is not None:
        wanted = {a.stored_label(label), b.stored_label(label)}
    walk = _Walk(compare_vectors=note is None, tolerance=tolerance, wanted=wanted, limit=limit)
    for pa, pb in _merged(_points(a, "A"), _points(b, "B"), progress):
        walk.see(pa, pb)
    walk.flush()
    return MemoryDiff(
        a=_where(a), b=_where(b), same_memory=a.key == b.key, points_a=walk.total_a, points_b=walk.total_b,
        counts=walk.counts, unchanged=walk.unchanged, tolerance=tolerance, vectors_compared=note is None,
        vectors_note=note, labels=walk.label_changes(), names=_name_changes(a.label_names, b.label_names),
        settings=_setting_changes(a, b), journal=_journal_diff(a, b, limit), label=label, limit=limit,
        details=walk.details)


def _where(mem: VisualMemory) -> str:
    """A memory's location as the user named it (a read-only one's folder, not its private copy)."""
    return without_secrets(str(getattr(mem.store, "source", None) or mem.store.location))


def _points(mem: VisualMemory, name: str) -> Iterator[StoredPoint]:
    """Every point of the memory with its vector, in id order, a page at a time; checked to be in that order (the
    merge counts on it)."""
    last = -1
    for page in mem.store.scroll(batch_size=PAGE, with_vectors=True):
        for p in page:
            at = uuid.UUID(p.id).int
            if at <= last:
                raise RuntimeError(f"memory {name} ({_where(mem)}) did not page its points in id order: they cannot "
                                   "be compared as they stream")
            last = at
            yield p


def _merged(a: Iterator[StoredPoint], b: Iterator[StoredPoint],
            progress: Callable[[int], None] | None) -> Iterator[tuple[StoredPoint | None, StoredPoint | None]]:
    """The points of two id-ordered streams, paired by id: (a, b), (a, None) or (None, b)."""
    pa, pb = next(a, None), next(b, None)
    while pa is not None or pb is not None:
        ka = uuid.UUID(pa.id).int if pa is not None else math.inf
        kb = uuid.UUID(pb.id).int if pb is not None else math.inf
        if ka == kb:
            yield pa, pb
            pa, pb = next(a, None), next(b, None)
            step = 2
        elif ka < kb:
            yield pa, None
            pa, step = next(a, None), 1
        else:
            yield None, pb
            pb, step = next(b, None), 1
        if progress is not None:
            progress(step)


def _pruning(p: StoredPoint) -> tuple[bool, float]:
    return bool(p.payload.get(EXCLUDED_KEY)), float(p.payload.get(RELIABILITY_KEY, 1.0))


class _Walk:
    """The counts and details gathered as the two memories' points go by."""

    def __init__(self, compare_vectors: bool, tolerance: float, wanted: set[str] | None, limit: int | None) -> None:
        self.compare_vectors, self.tolerance, self.wanted, self.limit = compare_vectors, tolerance, wanted, limit
        self.counts: dict[DiffKind, int] = dict.fromkeys(KINDS, 0)
        self.details: dict[DiffKind, list[PointChange]] = {kind: [] for kind in KINDS}
        self.per_label: dict[str, Counter[str]] = {}
        self.total_a = self.total_b = self.unchanged = 0
        self._pairs: list[tuple[StoredPoint, StoredPoint]] = []  # points in both, their vectors to compare

    def _label(self, label: str) -> Counter[str]:
        if (counts := self.per_label.get(label)) is None:
            counts = self.per_label[label] = Counter()
        return counts

    def see(self, pa: StoredPoint | None, pb: StoredPoint | None) -> None:
        if pa is not None:
            self.total_a += 1
            self._label(pa.label)["a"] += 1
        if pb is not None:
            self.total_b += 1
            self._label(pb.label)["b"] += 1
        if pb is None:
            assert pa is not None
            self._label(pa.label)["forgotten"] += 1
            self._found("only_in_a", pa, None)
        elif pa is None:
            self._label(pb.label)["added"] += 1
            self._found("only_in_b", None, pb)
        elif self.compare_vectors:
            self._pairs.append((pa, pb))  # judged a page at a time: the cosines are computed together
            if len(self._pairs) >= PAGE:
                self.flush()
        else:
            self._judge(pa, pb, None)

    def flush(self) -> None:
        """Judge the pairs held back, their cosines computed in one go."""
        if not self._pairs:
            return
        va = np.stack([np.asarray(pa.vector, dtype=np.float64) for pa, _ in self._pairs])
        vb = np.stack([np.asarray(pb.vector, dtype=np.float64) for _, pb in self._pairs])
        norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
        cosines = np.einsum("ij,ij->i", va, vb) / np.where(norms > 0, norms, 1.0)
        for (pa, pb), cos in zip(self._pairs, cosines.tolist(), strict=True):
            self._judge(pa, pb, cos)
        self._pairs = []

    def _judge(self, pa: StoredPoint, pb: StoredPoint, cosine: float | None) -> None:
        kinds: list[DiffKind] = []
        if pa.label != pb.label:
            kinds.append("relabelled")
            self._label(pa.label)["relabelled_out"] += 1
            self._label(pb.label)["relabelled_in"] += 1
        if cosine is not None and 1.0 - cosine > self.tolerance:
            kinds.append("reembedded")
            self._label(pb.label)["reembedded"] += 1
        if _pruning(pa) != _pruning(pb):
            kinds.append("pruning")
        if (pa.payload.get("tags") or {}) != (pb.payload.get("tags") or {}):
            kinds.append("tags")
        if not kinds:
            self.unchanged += 1
        for kind in kinds:
            self._found(kind, pa, pb, cosine)

    def _found(self, kind: DiffKind, pa: StoredPoint | None, pb: StoredPoint | None,
               cosine: float | None = None) -> None:
        self.counts[kind] += 1
        shown = self.details[kind]
        if self.limit is not None and len(shown) >= self.limit:
            return
        if self.wanted is not None and not ({p.label for p in (pa, pb) if p is not None} & self.wanted):
            return
        either = pa if pa is not None else pb
        assert either is not None
        change = PointChange(id=either.id, source=either.source, label_a=pa.label if pa else None,
                             label_b=pb.label if pb else None, cosine=cosine)
        if kind == "pruning":
            assert pa is not None and pb is not None
            (change.excluded_a, change.reliability_a), (change.excluded_b, change.reliability_b) = (
                _pruning(pa), _pruning(pb))
        if kind == "tags":
            assert pa is not None and pb is not None
            change.tags_a, change.tags_b = pa.payload.get("tags") or {}, pb.payload.get("tags") or {}
        shown.append(change)

    def label_changes(self) -> list[LabelChange]:
        changes = [LabelChange(label=label, **counts) for label, counts in self.per_label.items()
                   if counts["a"] != counts["b"] or counts["added"] or counts["forgotten"] or counts["relabelled_in"]
                   or counts["relabelled_out"] or counts["reembedded"]]
        return sorted(changes, key=lambda c: (-(c.added + c.forgotten + c.relabelled_in + c.relabelled_out
                                                 + c.reembedded), c.label))


def _name_changes(a: dict[str, str], b: dict[str, str]) -> list[NameChange]:
    return [NameChange(label=label, a=a.get(label), b=b.get(label))
            for label in sorted(a.keys() | b.keys()) if a.get(label) != b.get(label)]


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """A nested dict's leaves by dotted key (lists are leaves)."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(_flat(f"{prefix}.{key}", inner))
    return flat


def _setting_changes(a: VisualMemory, b: VisualMemory) -> list[SettingChange]:
    """The encoder, index settings and stored settings (tuned vote, source roots, ...) that differ."""
    def settings(mem: VisualMemory) -> dict[str, Any]:
        meta = mem.store.meta
        return {**_flat("featurizer", meta.featurizer.model_dump(mode="json")),
                **_flat("index", meta.index.model_dump(mode="json")), **_flat("settings", meta.settings)}

    sa, sb = settings(a), settings(b)
    return [SettingChange(key=key, a=sa.get(key), b=sb.get(key)) for key in sorted(sa.keys() | sb.keys())
            if sa.get(key) != sb.get(key)]


def _journal_diff(a: VisualMemory, b: VisualMemory, limit: int | None) -> JournalDiff:
    entries_a, entries_b = a.store.journal.read(), b.store.journal.read()
    keys_a, keys_b = {e.key() for e in entries_a}, {e.key() for e in entries_b}
    only_a = [e for e in entries_a if e.key() not in keys_b]
    only_b = [e for e in entries_b if e.key() not in keys_a]
    return JournalDiff(shared=len(keys_a & keys_b), b_continues_a=not only_a, only_in_a=len(only_a),
                       only_in_b=len(only_b), entries_only_in_a=_first(only_a, limit),
                       entries_only_in_b=_first(only_b, limit))


def _first(entries: Sequence[JournalEntry], limit: int | None) -> list[JournalEntry]:
    return list(entries if limit is None else entries[:limit])
