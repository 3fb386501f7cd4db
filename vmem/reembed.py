"""Moving a memory to another encoder: every point embedded again from its image, its curation kept.

`VisualMemory.reembed_to` (`vmem copy --featurizer NAME`) is `copy_to` with new vectors: the same ids, labels
(as relabelled), sources, tags, times added, label names, source roots and journal. What judged the old
encoder's vectors is not carried: pruning marks, tuned vote settings and DMN streams (notes say so). A point
with no image to embed (an upload, of which the memory keeps only a 160-px thumbnail unless its service kept it as
sent, VMEM_KEEP_UPLOADS; imported vectors; a file moved or gone) is left out and listed. Nothing in the old
memory changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval import is_local_source, open_store
from retrieval.doubtful import ROW_KEY
from retrieval.featurizers import OUTSIDE_REASON
from retrieval.files import is_under
from retrieval.store import (
    EXCLUDED_KEY,
    PRUNE_COUNT_KEY,
    RELIABILITY_KEY,
    SCROLL_PAGE,
    UPLOADS_DIR,
    FeaturizerMismatchError,
    MemoryStore,
    MemoryStoreError,
    StoredPoint,
    is_embedded_location,
    kept_upload,
    local_folder,
    read_meta_file,
    same_location,
)
from retrieval.text import counted

from .results import ReembedResult, SkippedPoint
from .visual_memory import COPIES_BEGUN_KEY, _journal_location, carry_meta

if TYPE_CHECKING:
    from retrieval import Featurizer, FeaturizerSpec, IndexSettings

    from .visual_memory import VisualMemory

# In the new memory's settings from its first point on: a run cut short is resumed only into a memory that came
# from this one (another memory's points would be mixed with these).
REEMBEDDED_FROM_KEY = "reembedded_from"
PRUNING_KEYS = (EXCLUDED_KEY, PRUNE_COUNT_KEY, RELIABILITY_KEY)
# Settings measured on the old encoder's similarities: a new encoder's differ (softmax's tau, the best k).
# The thumbnail folders are this memory's services' (as copy_to leaves them).
NOT_CARRIED_SETTINGS = ("vote", "tuning", "pruning", "thumbnail_dirs", REEMBEDDED_FROM_KEY, COPIES_BEGUN_KEY)


OUTSIDE = "outside the folders this memory's images were read from (source_roots, vmem info)"


def _image_of(point: StoredPoint, folder: Path | None,
              roots: list[str] | None) -> tuple[str | None, list[str] | None, str | None]:
    """(the file to embed a point again from, the folders it is to be read under, None) or (None, None, why it
    cannot be): an upload from the image a service kept as sent (VMEM_KEEP_UPLOADS) in the memory's `folder`, any
    other point from its source under `roots`. The featurizer reads the file under those folders again, as it opens
    it: the name checked here may lead elsewhere by then."""
    if point.source.startswith("upload:") and folder is not None and (kept := kept_upload(folder, point.id)):
        return str(kept), [str(folder / UPLOADS_DIR)], None
    return (point.source, roots, None) if (why := _no_image(point.source, roots)) is None else (None, None, why)


def _no_image(source: str, roots: list[str] | None) -> str | None:
    """Why a point's source cannot be embedded again, or None where it names a file that is there, under the
    memory's `roots` (None: a memory made before vmem recorded them, whose files are its roots)."""
    if source.startswith("upload:"):
        # A service keeps a thumbnail of 160 px at most (VMEM_THUMBNAIL_SIZE), smaller than any encoder's input:
        # its features would be of another, blurred image.
        return ("uploaded: the memory keeps only a thumbnail of it, too small to embed again (a service keeps "
                "uploads as sent with VMEM_KEEP_UPLOADS=true)")
    if source.startswith("import://"):
        return "imported as vectors: no image"
    if not is_local_source(source):
        return "not a file on this machine"
    if not os.path.isabs(source):
        # A name given to `add` (sources=), stored as given: a file of that name under the current folder may
        # be another image.
        return "a name given when it was added, not a file's path"
    if not os.path.isfile(source):
        return "no such file (moved or deleted?)"
    if roots is not None and not is_under(source, roots):
        # A point's source is data, and may name any file (a memory handed over, points written to its Qdrant
        # collection): a private photo's features would go into the new memory, and its path be answered to every
        # query near it. The thumbnails and the re-ranker keep to the roots too (docs/reliability.md), by the
        # same check: a link in an image folder to a file outside it is outside, as they do not show it.
        return OUTSIDE
    return None


def _reason(failed: str) -> str:
    """Why the featurizer did not embed a file, as `_no_image` says it of one outside before it is read."""
    return OUTSIDE if failed == OUTSIDE_REASON else failed


def same_encoder(a: FeaturizerSpec, b: FeaturizerSpec) -> bool:
    """Whether features of `a` and `b` are the same features (retrained weights in the same folder are not)."""
    return (a.name, a.dim, a.preprocessing, a.weights_sha256) == (b.name, b.dim, b.preprocessing, b.weights_sha256)


def _points(n: int) -> str:
    return counted(n, "point")


def _whole(value: object) -> bool:
    return type(value) is int and value > 0


def _marks(payload: dict[str, Any]) -> bool:
    return bool(payload.get(EXCLUDED_KEY)) or payload.get(PRUNE_COUNT_KEY) is not None or \
        payload.get(RELIABILITY_KEY) not in (None, 1.0)


def reembed(mem: VisualMemory, location: str | Path, feat: Featurizer, index: IndexSettings | None,
            batch_size: int, num_workers: int | None,
            progress: Callable[[int], None] | None, wait: float = 0.0) -> tuple[MemoryStore, ReembedResult]:
    """`VisualMemory.reembed_to`, with the encoder loaded. Returns the new memory's store, open."""
    started = time.perf_counter()
    mine, spec = mem.store.meta.featurizer, feat.spec
    if same_encoder(spec, mine):
        raise ValueError(f"this memory holds {mine.name} features already: to copy it as stored, nothing embedded "
                         "again, use copy_to (vmem copy without --featurizer)")
    if same_location(location, mem.store.location):
        raise ValueError(f"{location} is this memory: re-embed it into a new one (its points stay here)")
    notes: list[str] = []
    if index is None:
        index = mem.store.meta.index
        if index.rescore_doubtful and not is_embedded_location(location):
            index = index.model_copy(update={"rescore_doubtful": False, "doubt_margin": None, "rescore": True})
    try:
        dest = open_store(location, spec, index=index, wait=wait)
    except FeaturizerMismatchError:
        # Said of the destination: the store's own words ("this memory holds ...; use the memory's own
        # featurizer") read as if about the memory being moved
        try:
            theirs: str | None = read_meta_file(Path(location)).featurizer.name
        except MemoryStoreError:  # a Qdrant server's memory, or metadata unreadable: its encoder unnamed
            theirs = None
        if theirs == spec.name:
            raise  # the same name with other weights: the store's message says which
        what = f"{theirs} features" if theirs else "another encoder's features"
        raise FeaturizerMismatchError(f"{location} is a memory of {what}, not {spec.name}'s: re-embed into a new "
                                      "memory") from None
    try:
        origin = {"key": mem.store.key, "location": _journal_location(mem.store.location), "featurizer": mine.name}
        came_from = dest.meta.settings.get(REEMBEDDED_FROM_KEY) or {}
        if came_from.get("key") != mem.store.key:
            if held := dest.count():
                raise ValueError(f"{location} holds {_points(held)} of its own: re-embed into a new memory "
                                 "(its points and these would be mixed)")
            with dest.meta_edit() as meta:
                meta.settings[REEMBEDDED_FROM_KEY] = origin
        mem._copy_begun(dest)
        result = ReembedResult(location=str(dest.location), featurizer=spec.name, from_featurizer=mine.name,
                               embedded=0, already_there=0, memory_points=0, seconds=0.0)
        # Read as recorded, not through `mem.source_roots`, which would record them in a memory made before vmem
        # kept them (its points' own folders: none outside)
        recorded = mem.store.meta.settings.get("source_roots")
        roots = None if recorded is None else list(recorded)
        folder, uploads = local_folder(mem.store.location), []
        for page in mem.store.scroll(batch_size=SCROLL_PAGE):
            _reembed_page(page, dest, feat, batch_size, num_workers, progress, result, folder, roots)
            uploads += [p.id for p in page if p.source.startswith("upload:")]
        dest.flush()
        _carry_meta(mem, dest, notes)
        # Those embedded again take their thumbnails and kept images along, as copy_to does
        moved = set(uploads) - {s.id for s in result.skipped}
        mem._copy_upload_thumbnails(dest, [i for i in uploads if i in moved], notes)
        # The history goes too, as copy_to carries it; and a run again forgets there what was forgotten here.
        result.forgotten = mem._carry_history(dest, result.embedded + result.already_there, notes, reembedded={
            "from": mine.name, "to": spec.name, "embedded": result.embedded, "skipped": len(result.skipped)})
        dest.flush()
        dest.optimize()
    except BaseException:
        dest.close()
        raise
    if result.unpruned:
        done = mem.store.meta.settings.get("pruning") or {}
        # The options from the memory's vmem.json, a file of whoever handed it over: a command to run is made
        # only of what vmem prune writes there (a mode "soft; curl ... | sh" was offered to be pasted)
        if done.get("mode") in ("soft", "hard") and _whole(done.get("k")) and \
                (done.get("threshold") is None or _whole(done["threshold"])):
            again = (f"vmem prune --mode {done['mode']}" + (f" --threshold {done['threshold']}"
                                                             if done.get("threshold") else "") + f" --k {done['k']}")
        else:
            again = "vmem prune"
        notes.append(f"the pruning marks of {_points(result.unpruned)} were dropped: they judged {mine.name}'s "
                     f"neighbours; to prune the new memory, run `{again}` on it")
    if result.skipped:
        n = len(result.skipped)
        notes.append(f"{_points(n)} with no image to embed again left out (listed); this memory keeps "
                     f"{'it' if n == 1 else 'them'}")
    result.notes = notes
    result.memory_points = dest.count()
    result.seconds = time.perf_counter() - started
    return dest, result


def _reembed_page(page: list[StoredPoint], dest: MemoryStore, feat: Featurizer, batch_size: int,
                  num_workers: int | None, progress: Callable[[int], None] | None, result: ReembedResult,
                  folder: Path | None, roots: list[str] | None) -> None:
    """Put one page of this memory's points into `dest`: those there already with this memory's payload (a run
    resumed, or run again after relabels), the others embedded from their files (uploads from those kept as sent
    in the memory's `folder`)."""
    wanted = {p.id: {k: v for k, v in p.payload.items() if k not in (*PRUNING_KEYS, ROW_KEY)} for p in page}
    there = {p.id: p for p in dest.retrieve(list(wanted), with_vectors=True)}
    for pid, p in there.items():
        # The new memory's own pruning (run on it since) judged its vectors, and stays; unless the point was
        # relabelled here since: its marks judged the old label (as `relabel` drops them).
        if p.label == wanted[pid]["label"]:
            wanted[pid] |= {k: p.payload[k] for k in PRUNING_KEYS if k in p.payload}
    stale = [StoredPoint(pid, wanted[pid], p.vector) for pid, p in there.items()
             if {k: v for k, v in p.payload.items() if k != ROW_KEY} != wanted[pid]]
    dest.put(stale)
    result.already_there += len(there)
    todo: list[StoredPoint] = []
    files: list[str] = []
    under: list[list[str] | None] = []
    for p in page:
        if p.id in there:
            continue
        result.unpruned += _marks(p.payload)
        file, within, why = _image_of(p, folder, roots)
        if file is None:
            result.skipped.append(SkippedPoint(id=p.id, label=p.label, source=p.source, reason=str(why)))
        else:
            todo.append(p)
            files.append(file)
            under.append(within)
    if progress is not None:
        progress(len(page) - len(todo))
    if not todo:
        return
    feat.embed_as_stored()  # a run resumed stores the vectors one run whole would have
    for res in feat.iter_embed(files, batch_size, num_workers, under=under):
        dest.put([StoredPoint(todo[i].id, wanted[todo[i].id], res.features[row]) for row, i in enumerate(res.indices)])
        result.embedded += len(res.indices)
        result.skipped += [SkippedPoint(id=todo[f.index].id, label=todo[f.index].label, source=todo[f.index].source,
                                        reason=_reason(f.reason.removeprefix(f"{files[f.index]}: ")))  # named beside
                           for f in res.failures]
        if progress is not None:
            progress(len(res.indices) + len(res.failures))


def _carry_meta(mem: VisualMemory, dest: MemoryStore, notes: list[str]) -> None:
    """Label names and settings into `dest`'s metadata, as copy_to carries them, but for those measured on the
    old encoder's vectors (said in `notes`)."""
    from .dmn_classifier import dmn_home, stream_dir_key

    mine = mem.store.meta
    with dest.meta_edit() as meta:
        carry_meta(mine, meta, skip=NOT_CARRIED_SETTINGS)
    if vote := mine.settings.get("vote"):
        notes.append(f"the vote settings tuned for {mine.featurizer.name} ({vote.get('rule')}, k={vote.get('k')}) "
                     "were not carried: a new encoder's similarities differ; tune the new memory (vmem tune)")
    if mem.store.location != ":memory:" and (streams := dmn_home() / stream_dir_key(mem.store)).is_dir() and \
            (n := len(list(streams.glob("*.npz")))):
        notes.append(f"{counted(n, 'DMN dynamic memory', 'DMN dynamic memories')} of past queries hold "
                     f"{mine.featurizer.name} features and were not carried")
