"""The service's working parts behind the routes: one `VisualMemory`, a thread pool that embeds
images off the event loop, a cache of recent answers, the out-of-distribution threshold, thumbnails.

Everything that touches the encoder or the memory is synchronous and runs off the event loop, so it stays
free for health checks and cached answers while images are being embedded: embedding and searching in
`executor`, edits on a thread of their own (they wait for each other and for a backup's copy), re-ranked
requests (seconds on Gemini) in a pool of their own, the label audit and novelty
recalibration on threads of their own, and short reads (counts, a point, the journal) in Starlette's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import io
import logging
import os
import shutil
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from PIL import Image

from retrieval import ImageDecodeError, is_local_source, load_image, point_id_for
from retrieval.files import (
    NotASmallFile,
    OutsideFolders,
    decodable,
    is_under,
    make_private_folder,
    open_under,
    os_error_reason,
    read_small_file,
    remove_dead_private_folders,
    write_atomically,
)
from retrieval.store import (
    SERVED_READ_ONLY,
    THUMBNAILS_DIR,
    UPLOADS_DIR,
    IndexUpkeep,
    MemoryFullError,
    kept_upload,
    local_folder,
    thumbnail_file,
    upload_file,
)
from retrieval.text import counted, visible
from vmem import (
    AddResult,
    Classification,
    NearDuplicate,
    NoSuchLabelsError,
    NothingToSearchError,
    VisualMemory,
    upload_source,
)
from vmem.answer_log import AnswerLog, Asked
from vmem.import_points import ImportReport, PointsFile
from vmem.novelty import out_of_distribution
from vmem.results import DEFAULT_K

from .metrics import GEMINI_TOKEN_KINDS, Metrics
from .schemas import ClassifyQuery, NotBase64
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# OOD thresholds kept per memory version, one per k and label set asked for: each costs one batch query of
# the sample to compute (0.1 s for a few labels, ~1 s for the whole memory or 200 labels, at 100k points on
# 2 cores), and a float to keep.
_MAX_OOD_ENTRIES = 256
# Decoded pixels a request holds before embedding them (then the next step's are decoded): a 64-megapixel
# image's worth, so a batch of ordinary photos is one step and a batch of huge ones never more than two at once.
DECODED_PIXELS_PER_STEP = 64_000_000
# The service's folders in the temporary folder (TMPDIR), each named for its process (`make_private_folder`): an
# export's file, an import's as it arrives (up to VMEM_MAX_IMPORT_BYTES), a memory without a folder's thumbnails.
# Those of a service killed before it removed them are removed when one starts (`warm_up`).
EXPORT_FOLDER_PREFIX = "vmem-export-"
IMPORT_FOLDER_PREFIX = "vmem-import-"
THUMBNAILS_FOLDER_PREFIX = "vmem-thumbnails-"


@dataclass(frozen=True)
class Upload:
    """An image as received: its encoded bytes and, when given, its file name; or, where a batch's slot held no
    image at all (text that is no base64), why: that slot fails as an image that does not decode."""

    data: bytes
    filename: str | None = None
    problem: str | None = None

    @classmethod
    def of(cls, data: bytes | NotBase64, filename: str | None) -> Upload:
        if isinstance(data, NotBase64):
            return cls(b"", filename, problem=data.reason)
        return cls(data, filename)

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def source(self) -> str:
        return upload_source(self.data, self.filename, self.sha256)  # hashed once per upload


@dataclass(frozen=True)
class Answer:
    result: Classification
    ood_threshold: float | None
    out_of_distribution: bool | None
    cached: bool
    # When it was asked and the memory's newest edit then (VisualMemory.answer_state), for the answer log: a cached
    # answer's are those of the answer it repeats
    asked_at: tuple[str, str | None] | None = None


# Audits the memory's labels: (store, progress) -> an object with `ids` and `suspects(min_share)`, each suspect
# with id, label, suggested, share, own_share and source (`eval.label_audit.audit_labels`). Given by whoever
# builds the app (`vmem serve`), so that the service does not depend on `eval`.
Auditor = Callable[[Any, Callable[[int], None]], Any]


@dataclass
class AuditJob:
    """One audit of the memory's labels, for one version of its points; run in a thread of its own."""

    generation: int
    total: int
    done: int = 0
    result: Any = None
    error: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    seconds: float | None = None

    @property
    def state(self) -> str:
        return "failed" if self.error else "done" if self.result is not None else "running"


class EraseFailedError(Exception):
    """Points were forgotten, but erasing their vectors from the memory's files failed (a full or read-only
    disk): the forget stands, and the answer must say so, not be a 500 that reads as nothing done."""

    def __init__(self, forgotten: int, reason: str, points: list[NearDuplicate] | None = None) -> None:
        super().__init__(reason)
        self.forgotten = forgotten
        self.reason = reason
        self.points = points or []  # the points forgotten, where the forget chose them by likeness


# The kind of fallback of a re-rank asked of a memory opened without a re-ranker (in Python: `vmem serve`'s makes one),
# as the metrics label it and an answer's usage.error names it: it has no re-ranker's error class.
RERANK_NOT_CONFIGURED = "NotConfigured"


class ThumbnailUnavailable(LookupError):
    """No thumbnail can be served for a point; the message says why."""


# A thumbnail of 160 px is 5-15 kB: room for each upload's, at most this much, and some left over.
THUMBNAIL_BYTES = 64 << 10
THUMBNAIL_HEADROOM_BYTES = 8 << 20


class ThumbnailStore:
    """Small JPEGs by point id: written when an image is added through the API, or made on demand
    from a memory image file, and deleted when the point is forgotten."""

    def __init__(self, root: Path, size: int, shared: bool = False, also_in: Sequence[Path] = ()) -> None:
        self.root = root
        self.size = size
        self.shared = shared  # root is one memory's folder inside VMEM_THUMBNAIL_DIR
        self.also_in = list(also_in)  # (shared) other folders of this memory's thumbnails: its own folder's
        root.mkdir(parents=True, exist_ok=True)

    def path(self, point_id: str) -> Path:
        return thumbnail_file(self.root, point_id)

    def encode(self, img: Image.Image) -> bytes:
        thumb = img.copy()
        thumb.thumbnail((self.size, self.size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        thumb.convert("RGB").save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def save(self, point_id: str, img: Image.Image) -> bytes:
        data = self.encode(img)
        try:  # not durable: a thumbnail lost to a crash is made again from its image
            write_atomically(self.path(point_id), data, durable=False)
        except OSError as exc:  # a read-only memory directory still serves thumbnails, uncached
            log.warning("could not keep a thumbnail in %s: %s", self.root, exc)
        return data

    def check_room(self, images: int) -> None:
        """MemoryFullError (507) where the folder's disk has too little room for these uploads' thumbnails: an
        upload's thumbnail is its only copy of the image, and on a full disk uploads had been taken (201) with
        thumbnail URLs that answered 404 for good."""
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return
        need = THUMBNAIL_HEADROOM_BYTES + images * THUMBNAIL_BYTES
        if free < need:
            raise MemoryFullError(f"the disk holding the thumbnail folder {self.root} has {free / 2**20:.0f} MB free, "
                                  f"and {counted(images, 'upload')} need{'s' if images == 1 else ''} "
                                  f"{need / 2**20:.0f} MB for their thumbnails, an upload's only copy of its image: "
                                  "nothing was added; free some space, then retry (classify goes on)")

    def load(self, point_id: str) -> bytes | None:
        if (data := _read_thumbnail(self.path(point_id))) is not None:
            return data
        # Kept before thumbnails had a folder per memory, directly in the shared one, or in the memory's own folder
        # (a copy's, or served before without VMEM_THUMBNAIL_DIR): copied in, not moved, since a memory and its copy
        # may both hold the point (a forget deletes the shared file too). Only for a point this memory holds: the
        # caller checks that first.
        if not self.shared:
            return None
        for kept in (thumbnail_file(self.root.parent, point_id), *(thumbnail_file(f, point_id) for f in self.also_in)):
            if (data := _read_thumbnail(kept)) is not None:
                with contextlib.suppress(OSError):
                    # Whole or not at all: a copy cut short (a full disk) had been served, broken, from then on
                    write_atomically(self.path(point_id), data, durable=False)
                return data
        return None

    def remove(self, point_ids: Sequence[str]) -> None:
        failed = 0
        for pid in point_ids:
            try:
                self.path(pid).unlink(missing_ok=True)
            except OSError:  # a read-only folder: the forget's own warning says what stayed (no traceback each)
                failed += 1
        if failed:
            log.warning("%s could not be deleted from %s", counted(failed, "thumbnail"), self.root)


def _open_kept(path: Path, memory_folder: Path) -> BinaryIO:
    """An upload's image kept as sent, opened and checked there to be under the memory's uploads folder
    (`kept_upload` checked its name only: a link swapped in since had led anywhere)."""
    try:
        return open_under(path, [memory_folder / UPLOADS_DIR])
    except OutsideFolders:
        raise ThumbnailUnavailable("the point's image kept as sent is outside the memory's uploads folder") from None
    except OSError as exc:  # forgotten meanwhile, or unreadable
        raise ThumbnailUnavailable(f"the point's image kept as sent could not be read "
                                   f"({os_error_reason(exc)})") from None


def _read_thumbnail(path: Path) -> bytes | None:
    """A kept thumbnail's bytes: a regular file holding a JPEG, else None. Not through a link: in a thumbnail folder
    several services share, a link planted under a point's id had served (and copied) any file the service could
    read, its env file with the API keys among them, as that point's image, to clients without a key."""
    try:
        # Not blocking either: a FIFO planted there had held every thread that opened it, for good
        data = read_small_file(path, THUMBNAIL_BYTES * 16)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a link
        log.warning("not serving %s as a thumbnail: %s", path, os_error_reason(exc))
        return None
    except NotASmallFile as exc:
        log.warning("not serving %s as a thumbnail: %s", path, "not a thumbnail JPEG" if exc.too_large else exc)
        return None
    if not data.startswith(b"\xff\xd8\xff"):
        log.warning("not serving %s as a thumbnail: not a thumbnail JPEG", path)
        return None
    return data


def _unlink_all(files: Iterable[Path]) -> None:
    for path in files:
        with contextlib.suppress(OSError):  # a read-only folder: as a forget leaves it
            path.unlink(missing_ok=True)


def template_registry(memory: VisualMemory | None = None) -> Any | None:
    """The template registry the memory's re-ranker reads (`GeminiReranker(registry=...)`), else `prompts`' default
    one (the built-ins and `$VMEM_TEMPLATES_DIR`, which the default re-ranker reads, built at the first re-rank), or
    None when that package has none. The service lists and checks names against the re-ranker's own: against the
    default one, a re-ranker's registry of its own had its templates refused (422) and the default's names let
    through, to fail in the re-ranker (500)."""
    registry = getattr(memory.reranker if memory is not None else None, "registry", None)
    if registry is not None:
        return registry
    try:
        from prompts import default_registry
    except ImportError:
        return None
    return default_registry()


def _as_served_from_cache(res: Classification) -> Classification:
    """A cached answer as this request got it: the Gemini usage it reports was the first request's, and a client
    summing `usage` to follow its Gemini bill counted it again with every repeat."""
    if res.usage is None:
        return res
    from reranker import Usage  # loaded already: only a re-ranked answer has usage

    # As the re-ranker's own cache answers (reranker/_gemini.py): no usage, no attempt, no time.
    return res.model_copy(update={"usage": {**res.usage, **Usage().model_dump(), "attempts": 0, "cached": True,
                                            "latency_s": 0.0}})


class ClassifierService:
    """One loaded memory and what the routes need around it."""

    def __init__(self, memory: VisualMemory, settings: Settings, metrics: Metrics, owns_memory: bool = False,
                 auditor: Auditor | None = None):
        self.memory = memory
        self.auditor = auditor
        self._thumbnail_builds = threading.BoundedSemaphore(4)
        self._audit: AuditJob | None = None
        self._audit_lock = threading.Lock()
        memory.via = "http"  # edits through the service, as the journal records them
        if memory.store.read_only:  # its refusals say so in the service's words, not in those of Python's opening
            memory.store.read_only_reason = SERVED_READ_ONLY
        # The re-ranker keeps to the folders whose images the service shows (`_servable`)
        memory.image_roots = [str(root) for root in settings.source_roots] if settings.source_roots else None
        self.settings = settings
        self.metrics = metrics
        metrics.count_rows_read(lambda: getattr(self.memory.store, "rows_read", 0))
        metrics.report_circuit(lambda: getattr(getattr(self.memory.reranker, "breaker", None), "state", None))
        self.owns_memory = owns_memory
        self._pools: dict[str, ThreadPoolExecutor] = {}  # by thread-name prefix, made on first use (`_pool`)
        self._executor_lock = threading.Lock()
        self._closed = False
        self.ready = False
        # Bumped on every edit: cached answers are keyed by it, so none outlives an edit.
        self._generation = 0
        # Bumped on every edit of the points (not on naming labels): OOD thresholds are keyed by it.
        self._points_generation = 0
        self._sizes_counted_at: tuple[int, int] | None = None  # the points generation and erases counted at
        self._erases = 0
        self._index_upkeep: IndexUpkeep | None = None
        self._upkeep_counted_at: tuple[int, int] | None = None  # as _sizes_counted_at, for stats' upkeep
        metrics.report_index_upkeep(lambda: self._index_upkeep)
        # Each with its answer_state: the answer log says a cached answer's search was the first request's
        self._cache: OrderedDict[tuple[Any, ...], tuple[Classification, tuple[str, str | None] | None]] = OrderedDict()
        self._cache_neighbors = 0  # the cached answers' neighbours, which their memory grows with
        self._cache_lock = threading.Lock()
        self._ood: dict[tuple[int, int, tuple[str, ...] | None], float | None] = {}
        self._ood_lock = threading.Lock()
        self._new_calibration = threading.Lock()  # held while a k and label set is calibrated the first time
        # Per (k, label set): the latest threshold computed, with its points generation, answered while a newer
        # one is computed; and which are being computed.
        self._ood_last: dict[tuple[int, tuple[str, ...] | None], tuple[int, float | None]] = {}
        self._recalibrating: set[tuple[int, tuple[str, ...] | None]] = set()
        self._tmp_thumbs: str | None = None
        # Files of failed adds whose points the memory could not say it holds (a Qdrant server down): asked again
        # after the next add that succeeds (`_settle_unsettled`). By point id; each list a new object when put, so
        # that an answer asked about one is not applied to the files of a later failed add of the same image.
        self._unsettled: dict[str, list[Path]] = {}
        self._adding: Counter[str] = Counter()  # point ids whose files an add is writing, or deciding on, now
        self._unsettled_lock = threading.Lock()
        own = local_folder(memory.store.location)
        self.thumbnails = ThumbnailStore(self._thumbnail_dir(), settings.thumbnail_size,
                                         shared=settings.thumbnail_dir is not None,
                                         also_in=[own / THUMBNAILS_DIR] if own is not None else [])
        if settings.thumbnail_dir is not None:  # a forget in another process deletes its points' thumbnails there too
            memory.note_thumbnail_folder(self.thumbnails.root)
        # Where an upload's thumbnail, lost or kept elsewhere, is made again from the image kept as sent (any service's
        # VMEM_KEEP_UPLOADS, as a re-rank shows it to Gemini)
        self._memory_folder = own
        # The memory folder each upload is kept in as sent (VMEM_KEEP_UPLOADS): a forget in any process deletes it there
        self.keep_uploads_in: Path | None = None
        if settings.keep_uploads:
            if own is None:
                raise ValueError("VMEM_KEEP_UPLOADS keeps uploaded images in an embedded memory's folder: this "
                                 "memory has none")
            self.keep_uploads_in = own
        memory.on_forget(self._forgotten)
        memory.on_relabel(lambda ids: self._edited())  # told before a large relabel re-indexes (seconds)
        memory.on_edited_elsewhere(self._edited_elsewhere)
        self.answer_log = None if settings.answer_log is None else AnswerLog(
            settings.answer_log, settings.answer_log_max_mb, on_failure=metrics.answer_log_failures.inc)

    def _thumbnail_dir(self) -> Path:
        if self.settings.thumbnail_dir is not None:
            # A folder of its own per memory: services of two memories (a memory and its copy) sharing the setting
            # had deleted each other's upload thumbnails, their only copy, at start-up, at a forget and at a GET.
            return self.settings.thumbnail_dir / self.memory.key
        folder = local_folder(self.memory.store.location)
        if not self.settings.qdrant_url and folder is not None:
            return folder / THUMBNAILS_DIR  # kept with the memory, deleted with it
        self._tmp_thumbs = str(make_private_folder(THUMBNAILS_FOLDER_PREFIX))
        weakref.finalize(self, shutil.rmtree, self._tmp_thumbs, True)  # also at interpreter exit
        log.warning("thumbnails of added images are kept in %s until the server stops; "
                    "set VMEM_THUMBNAIL_DIR to keep them", self._tmp_thumbs)
        return Path(self._tmp_thumbs)

    # ------------------------------------------------------------------ lifecycle

    def _pool(self, prefix: str, workers: int) -> ThreadPoolExecutor:
        """The pool whose threads are named `prefix`, made on first use, so a service outlives an app restart
        (tests)."""
        with self._executor_lock:
            if (pool := self._pools.get(prefix)) is None:
                pool = self._pools[prefix] = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
            return pool

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The embedding threads."""
        return self._pool("vmem-embed", self.settings.featurize_threads)

    @property
    def edit_executor(self) -> ThreadPoolExecutor:
        """One thread for the edits (adds, forgets, relabels, names, erases): they take the memory's edit lock in
        turn, and wait for a backup's copy under it; on the embedding threads, two of them waiting for a backup had
        held up every classify until it ended."""
        return self._pool("vmem-edit", 1)

    async def run_edit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an edit on `edit_executor`: behind other edits, never in the way of a classify."""
        return await self._run_on("edit", self.edit_executor, functools.partial(fn, *args, **kwargs))

    @property
    def rerank_executor(self) -> ThreadPoolExecutor:
        """The threads of re-ranking requests: they wait seconds on Gemini (a minute in an outage), and on the
        embedding threads two of them held up every classify, cached answers included."""
        return self._pool("vmem-rerank", self.settings.rerank_requests)

    @property
    def read_executor(self) -> ThreadPoolExecutor:
        """Two threads for the reads anyone may ask that can take seconds (the history read whole, a folder
        walked for links): on the embedding threads they held up classify, on the request threads they filled
        the pool /readyz and thumbnails answer on (readiness took 8.8 s)."""
        return self._pool("vmem-read", 2)

    async def run_read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a slow read anyone may ask for on `read_executor`."""
        return await self._run_on("read", self.read_executor, functools.partial(fn, *args, **kwargs))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (embedding, Qdrant calls) on the service's thread pool."""
        return await self._run_on("embedding", self.executor, functools.partial(fn, *args, **kwargs))

    async def run_alone(self, pool: Literal["import", "backup"], fn: Callable[..., T], *args: Any, **kwargs: Any
                        ) -> T:
        """Run long work, an import (`POST /v1/memory/import`: a million rows take minutes) or a backup (a large
        memory's files take a while to copy), on a thread of its own kind's: on the embedding threads it would hold
        one of those classify is answered on. A second of a kind waits for the first."""
        return await self._run_on(pool, self._pool(f"vmem-{pool}", 1), functools.partial(fn, *args, **kwargs))

    async def run_reranking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run work that asks Gemini on the re-ranking threads (`rerank_executor`)."""
        return await self._run_on("rerank", self.rerank_executor, functools.partial(fn, *args, **kwargs))

    async def _run_on(self, pool: str, executor: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        """`work` on `executor`, counted as queued until a thread takes it and as running until it ends."""
        queued, running = self.metrics.work_queued.labels(pool), self.metrics.work_running.labels(pool)

        def counted() -> T:
            queued.dec()
            running.inc()
            try:
                return work()
            finally:
                running.dec()

        queued.inc()
        try:
            # In the request's context: the API key's name it carries is journaled as who made an edit (`by`)
            future = executor.submit(contextvars.copy_context().run, counted)
        except BaseException:  # the pool shut down
            queued.dec()
            raise
        # A request cancelled while it waited (its client gone: `routes._common.unless_the_client_leaves`) cancels
        # its work, which then never runs.
        future.add_done_callback(lambda f: queued.dec() if f.cancelled() else None)
        return await asyncio.wrap_future(future)

    def warm_up(self) -> None:
        """Load the encoder, run it once, and calibrate novelty at the default k, before taking traffic; and remove
        the thumbnails of points forgotten by a process killed before it removed them (no add is in flight yet), and
        the temporary folders of services killed before they removed them (an import's file: gigabytes)."""
        # An embedded memory only: this process alone holds it. Services sharing a Qdrant server may share a
        # thumbnail folder, and another one's add in flight has its thumbnail written before its point.
        if local_folder(self.memory.store.location) is not None and (
                orphans := self.memory.remove_orphan_thumbnails(self.thumbnails.root)):
            log.info("removed %d thumbnails of points forgotten earlier", orphans)
        if not self.memory.store.read_only and (orphans := self.memory.remove_orphan_uploads()):
            log.info("removed %d uploaded images of points forgotten earlier", orphans)
        for prefix in (EXPORT_FOLDER_PREFIX, IMPORT_FOLDER_PREFIX, THUMBNAILS_FOLDER_PREFIX):
            for dead in remove_dead_private_folders(prefix):
                log.info("removed %s, a temporary folder of a service killed before it removed it", dead)
        self.memory.featurizer.warm_up()
        self.ood_threshold(self.memory.vote_settings().k)
        self.ready = True
        self.refresh_size_metrics()

    def prefetch_memory(self) -> None:
        """Read the memory's search files once, so that the first queries do not wait on the disk.

        Before taking traffic rather than beside it: the engine holds the GIL while it searches, so a
        reading thread beside queries hardly progressed. 1.28M points, cold (docs/benchmarks.md): 1.2 GiB read in
        ~2 s, then ~1,400 batched queries a second from the first; without it, ~250 at first and ~1,100 after 12 s.
        """
        started = time.perf_counter()
        try:
            done = self.memory.store.prefetch()
        except Exception:  # costs only speed: the first queries read from disk instead
            log.warning("reading the memory ahead of queries failed", exc_info=True)
            return
        if done:
            log.info("read %.0f MB of the memory ahead of queries in %.1f s", done / 2**20,
                     time.perf_counter() - started)

    def close(self) -> None:
        self._closed = True
        with self._executor_lock:
            for pool in self._pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools.clear()
        if self.answer_log is not None:
            self.answer_log.close()
        if self.owns_memory:
            self.memory.close()

    @property
    def backend(self) -> str:
        return "embedded" if type(self.memory.store).__name__ == "EdgeMemoryStore" else "qdrant"

    def refresh_size_metrics(self) -> None:
        """Count the memory's points and labels, and its index's upkeep, for the gauges; run by each scrape of
        /metrics, not by each edit (a label count reads every point: 90 ms at 250,000 points, on the thread the edit
        held). An embedded memory changes only through this process, so it is counted again only after an edit of
        its points or an erase."""
        generation = self._points_generation, self._erases
        if self.backend == "embedded" and generation == self._sizes_counted_at:
            return
        self.metrics.memory_points.set(self.memory.store.count())
        self.metrics.memory_labels.set(len(self.memory.store.label_counts()))
        if self._count_upkeep(generation):  # else a backup holds the writes: counted again at the next scrape
            self._sizes_counted_at = generation

    def index_upkeep(self) -> IndexUpkeep | None:
        """The memory's index against its points, counted again after an edit or an erase (the page asks for stats
        every few seconds, and each count flushes the engine); while a backup or an edit holds the memory's writes,
        as counted last: a stats request on an embedding thread had waited for the backup's whole copy."""
        self._count_upkeep((self._points_generation, self._erases))
        return self._index_upkeep

    def _count_upkeep(self, generation: tuple[int, int]) -> bool:
        """Count the index's upkeep for stats and the gauges alike, unless counted at this `generation` already
        (an embedded memory changes only through this process); False where a backup or an edit holds the
        memory's writes, the last count kept."""
        if self.backend == "embedded" and generation == self._upkeep_counted_at:
            return True
        try:
            self._index_upkeep = self.memory.store.index_upkeep(wait=False)
        except TimeoutError:
            return False
        self._upkeep_counted_at = generation
        return True

    # ------------------------------------------------------------------ edits

    def _edited(self, points: bool = True) -> None:
        """No cached answer outlives an edit; nor do the novelty thresholds, unless only names changed."""
        with self._cache_lock:
            self._generation += 1
            self._points_generation += points
            self._cache.clear()
            self._cache_neighbors = 0

    def _keep_answer(self, key: tuple[Any, ...], res: Classification, size: int,
                     asked_at: tuple[str, str | None] | None) -> None:
        """Cache an answer (under `_cache_lock`): at most `size` answers, and at most `size` x the default k's
        neighbours among them. Counted by answers alone, 1,024 answers at k = 1000 (anyone may ask for them) had held
        1.4 GB; a neighbour takes about 1.6 kB."""
        if (old := self._cache.pop(key, None)) is not None:
            self._cache_neighbors -= len(old[0].neighbors)
        self._cache[key] = (res, asked_at)
        self._cache_neighbors += len(res.neighbors)
        while len(self._cache) > size or (self._cache_neighbors > size * DEFAULT_K and len(self._cache) > 1):
            self._cache_neighbors -= len(self._cache.popitem(last=False)[1][0].neighbors)

    def _edited_elsewhere(self, changed: frozenset[str]) -> None:
        """Another process (a service or CLI sharing the Qdrant server) edited the memory: which answers cited
        its points is not known here, so none is kept."""
        self._edited(points="points" in changed)

    def _forgotten(self, ids: list[str]) -> None:
        self._edited()
        self.thumbnails.remove(ids)  # a forgotten upload leaves no copy of itself behind

    def add(self, uploads: Sequence[Upload], labels: Sequence[str]) -> tuple[list[tuple[int, str, str, str]],
                                                                             list[tuple[int, str]], AddResult]:
        """Add labelled uploads. Returns ([(index, id, label, source)], [(index, reason)], what each became)."""
        self.memory.store.check_writable()  # served read-only: nothing decoded, embedded or kept as a thumbnail
        labels = self.memory.stored_labels(labels)  # as the points are stored, and said so in the answer
        self.memory.check_added_labels(labels)  # before any thumbnail is kept
        names = self.memory.label_names  # a copy
        self.thumbnails.check_room(len(uploads))
        self._check_room_for_uploads(uploads)
        kept: list[tuple[int, str]] = []
        failed: list[tuple[int, str]] = []
        result = AddResult(ids=[])
        for step in self._decoded_in_steps(enumerate(uploads), failed):
            sources = [uploads[i].source for i, _ in step]
            pids = [point_id_for(src) for src in sources]
            # Files this step made, by point id, removed if its add fails; with those an earlier failed add of the
            # same image left unsettled, which this add now decides on
            written = self._claim(pids)
            try:
                # Thumbnails first: once a point is searchable, its thumbnail must already be there.
                for (i, img), pid in zip(step, pids, strict=True):
                    if self.keep_uploads_in is not None:  # durable: the one copy an encoder can read again
                        (kept_as_sent := upload_file(self.keep_uploads_in, pid)).parent.mkdir(exist_ok=True)
                        if not kept_as_sent.exists():
                            written.setdefault(pid, []).append(kept_as_sent)
                        write_atomically(kept_as_sent, uploads[i].data)
                    if not self.thumbnails.path(pid).exists():
                        written.setdefault(pid, []).append(self.thumbnails.path(pid))
                    self.thumbnails.save(pid, img)
                done = self.memory.add_images([img for _, img in step], [labels[i] for i, _ in step],
                                              sources=sources, tags={"added_via": "api"})
            except BaseException:
                self._remove_unless_points(written)
                raise
            finally:
                self._release(pids)
            self._settle_unsettled()  # the memory answers again: the files earlier failed adds left are decided
            self._keep_for_holders(sources, done.ids)
            kept += [(i, src) for (i, _), src in zip(step, done.sources, strict=True)]
            result = AddResult(ids=result.ids + done.ids, added=result.added + done.added,
                               relabelled={**result.relabelled, **done.relabelled})
            if done.added:  # (a relabel told the service itself, through on_relabel)
                self._edited()
        self.metrics.edits.labels("add").inc(len(result.added))
        self.metrics.edits.labels("relabel").inc(len(result.relabelled))
        self._count_names_since(names)
        return ([(i, pid, labels[i], src) for (i, src), pid in zip(kept, result.ids, strict=True)], failed, result)

    def _remove_unless_points(self, written: dict[str, list[Path]]) -> None:
        """Remove the files an add wrote before the memory refused it (a nearly full disk, a Qdrant server down),
        except those of points it holds after all: each refused add had left its thumbnail and bytes as sent, files
        of no point until a restart, and a client retrying for days filled the disk that was already nearly full."""
        if not written:
            return
        try:
            points = self.memory.store.existing_ids(list(written))
        except Exception:  # the memory cannot say which were written: a point's only copy of its image is kept
            log.warning("an add failed, and %d upload(s) it may have written are kept until the memory can say "
                        "whether it holds them (at the next add that succeeds)", len(written), exc_info=True)
            with self._unsettled_lock:
                for pid, files in written.items():
                    self._unsettled[pid] = list(files)
            return
        for pid, files in written.items():
            if pid not in points:
                _unlink_all(files)

    def _claim(self, pids: Sequence[str]) -> dict[str, list[Path]]:
        """Mark these point ids as being added (no settling touches their files meanwhile), and hand over the
        files an earlier failed add of them left unsettled: this add's outcome decides on them."""
        with self._unsettled_lock:
            self._adding.update(pids)
            return {pid: files for pid in dict.fromkeys(pids) if (files := self._unsettled.pop(pid, None))}

    def _release(self, pids: Sequence[str]) -> None:
        with self._unsettled_lock:
            self._adding.subtract(pids)
            self._adding += Counter()  # drops the ids at zero

    def _settle_unsettled(self) -> None:
        """Remove the files failed adds left for points the memory does not hold after all, now that it answers;
        those of points it holds stay. Left for the next add where it still cannot say."""
        with self._unsettled_lock:
            asked = {pid: files for pid, files in self._unsettled.items() if not self._adding[pid]}
        if not asked:
            return
        try:
            points = self.memory.store.existing_ids(list(asked))
        except Exception:
            return
        removed = 0
        with self._unsettled_lock:
            for pid, files in asked.items():
                # An add of the same image claimed them meanwhile (its own outcome decides), or failed and left
                # them again (a newer list): this answer may be older than its write
                if self._unsettled.get(pid) is not files or self._adding[pid]:
                    continue
                del self._unsettled[pid]
                if pid not in points:
                    _unlink_all(files)
                    removed += 1
        if removed:
            log.info("removed the files of %d upload(s) that failed adds had left: the memory does not hold them",
                     removed)

    def _keep_for_holders(self, sources: Sequence[str], ids: Sequence[str]) -> None:
        """The thumbnail and kept bytes written for an upload whose bytes a point held under another name: that
        point's where it has none (added from Python, or before it was kept), else removed, as no point's."""
        for src, pid in zip(sources, ids, strict=True):
            if (own := point_id_for(src)) == pid:
                continue
            files = [(self.thumbnails.path(own), self.thumbnails.path(pid))]
            if self.keep_uploads_in is not None:
                files.append((upload_file(self.keep_uploads_in, own), upload_file(self.keep_uploads_in, pid)))
            for spare, holders in files:
                with contextlib.suppress(OSError):  # a read-only folder: as a forget leaves it
                    if holders.exists():
                        spare.unlink(missing_ok=True)
                    else:
                        spare.replace(holders)

    def _check_room_for_uploads(self, uploads: Sequence[Upload]) -> None:
        """MemoryFullError (507) where the memory's disk has too little room to keep these uploads as sent
        (VMEM_KEEP_UPLOADS), checked before anything is written, as the thumbnails' room is."""
        if self.keep_uploads_in is None:
            return
        try:
            free = shutil.disk_usage(self.keep_uploads_in).free
        except OSError:
            return
        sent = sum(len(u.data) for u in uploads)
        if free < (need := THUMBNAIL_HEADROOM_BYTES + sent):
            raise MemoryFullError(f"the disk holding the memory {self.keep_uploads_in} has {free / 2**20:.0f} MB free, "
                                  f"and keeping {counted(len(uploads), 'upload')} as sent "
                                  f"(VMEM_KEEP_UPLOADS) needs {need / 2**20:.0f} MB: nothing was added; free some "
                                  "space, then retry (classify goes on)")

    def _decoded_in_steps(self, uploads: Iterable[tuple[int, Upload]],
                          failed: list[tuple[int, str]]) -> Iterator[list[tuple[int, Image.Image]]]:
        """The uploads decoded a few at a time, (index, image) each; (index, why) into `failed` for the rest.

        A request's images are embedded a step at a time, each step closed once it holds DECODED_PIXELS_PER_STEP:
        32 solid-colour 7999 x 7999 PNGs are 6.4 MB sent, but decoded all at once they were 19 GB.
        """
        step: list[tuple[int, Image.Image]] = []
        pixels = 0
        for i, up in uploads:
            if up.problem is not None:
                failed.append((i, up.problem))
                continue
            try:
                img = self.memory.decode(up.data)
            except ImageDecodeError as exc:
                failed.append((i, str(exc)))
                continue
            step.append((i, img))
            pixels += img.width * img.height
            if pixels >= DECODED_PIXELS_PER_STEP:
                yield step
                step, pixels = [], 0
        if step:
            yield step

    def import_points(self, points: PointsFile, label: str | None = None, relabel: bool = False,
                      dry_run: bool = False) -> ImportReport:
        """`VisualMemory.import_points` of a file `read_points_file` checked, counted as the adds, relabels and
        names it made."""
        names = self.memory.label_names  # a copy
        try:
            report = self.memory.import_points(points, label=label, relabel=relabel, dry_run=dry_run)
        finally:
            if not dry_run:  # the points added before a failure too (a full disk): no cached answer outlives them
                self._edited()
        if not dry_run:
            self.metrics.edits.labels("add").inc(report.added)
            self.metrics.edits.labels("relabel").inc(len(report.other_label) if report.relabel_applied else 0)
            self._count_names_since(names)
        return report

    def set_label_names(self, names: dict[str, str], replace: bool) -> dict[str, str]:
        before = dict(self.memory.label_names)
        self.memory.set_label_names(names, replace=replace)
        self._edited(points=False)  # cached answers carry the names they were given; novelty reads no name
        after = self.memory.label_names
        # Labels whose name changed, came or went: a name sent again as it was is no edit.
        self.metrics.edits.labels("name").inc(sum(before.get(k) != after.get(k) for k in before.keys() | after.keys()))
        return after

    def relabel(self, to: str, ids: Sequence[str] | None = None, label: str | None = None,
                source_prefix: str | None = None) -> int:
        names = self.memory.label_names  # a copy
        try:
            n = self.memory.relabel(to, ids=ids, label=label, source_prefix=source_prefix)
        except NoSuchLabelsError:  # a label never held: 0, with the route's note naming the labels there are
            return 0
        if n:  # cached answers that voted with the old labels went with the relabel (on_relabel)
            self.metrics.edits.labels("relabel").inc(n)
            self._count_names_since(names)
        return n

    def _count_names_since(self, before: dict[str, str]) -> None:
        """Count the names an add or relabel gave (a new class made as an ImageNet id is named so, and journaled
        as a name edit): the metric of name edits had missed them."""
        after = self.memory.label_names
        if named := sum(before.get(k) != after.get(k) for k in before.keys() | after.keys()):
            self.metrics.edits.labels("name").inc(named)

    def forget(self, ids: Sequence[str] | None = None, label: str | None = None,
               source_prefix: str | None = None, erase: bool = False) -> int:
        try:
            n = self.memory.forget(ids=ids, label=label, source_prefix=source_prefix)
        except NoSuchLabelsError:  # a label never held: 0, with the route's note naming the labels there are
            n = 0
        self._forgot(n, erase)
        return n

    def forget_like(self, upload: Upload | None, min_similarity: float, erase: bool = False,
                    dry_run: bool = False, point_id: str | None = None) -> list[NearDuplicate]:
        """Forget the points whose image looks like the upload, or like the point `point_id`
        (`VisualMemory.forget_like`); the points forgotten, or with `dry_run` those that would be."""
        found = self.memory.forget_like(None if upload is None else upload.data, min_similarity, dry_run=dry_run,
                                        point_id=point_id)
        if not dry_run:
            self._forgot(len(found), erase, found)
        return found

    def _forgot(self, n: int, erase: bool, points: list[NearDuplicate] | None = None) -> None:
        """Count a forget of `n` points and, asked to, erase them: EraseFailedError (with `points`, where a forget
        by likeness chose them) if that fails, the forget standing."""
        self.metrics.edits.labels("forget").inc(n)
        if erase and n:  # nothing forgotten, nothing to erase: a 404 for an unknown point changes nothing
            try:
                self.erase()
            except Exception as exc:
                log.warning("forgot %d points, but erasing their vectors from the files failed: %s", n, exc)
                raise EraseFailedError(n, str(exc), points) from exc

    def erase(self) -> float:
        """Rewrite the memory's files without every forgotten point's vector; returns the seconds it took."""
        started = time.perf_counter()
        with self.metrics.erase_seconds.time():
            try:
                self.memory.erase_forgotten()
            finally:
                self._erases += 1  # the index is rewritten (or partly): counted again at the next scrape
        return time.perf_counter() - started

    # ------------------------------------------------------------------ classifying

    def _cache_key(self, generation: int, up: Upload, q: ClassifyQuery, template: str | None) -> tuple[Any, ...]:
        labels = tuple(sorted(set(q.label))) if q.label else None
        return (generation, up.sha256, up.filename, q.k, q.vote, q.alpha, q.tau, labels, q.rerank, template,
                q.exact, q.why_not)

    def template_registry(self) -> Any | None:
        """The template registry this memory's re-ranker reads (see `template_registry`)."""
        return template_registry(self.memory)

    def _template_in_key(self, q: ClassifyQuery) -> str | None:
        """A re-ranked answer's template by name and content: a template file edited while the service runs is
        read again, and an answer its old wording gave must not be served for the new one."""
        registry = self.template_registry() if q.rerank else None
        if registry is None:
            return q.template
        from prompts import DEFAULT_TEMPLATE, TemplateError

        name = q.template or DEFAULT_TEMPLATE
        try:
            return f"{name}@{registry.entry(name).template.content_hash}"
        except TemplateError:  # gone or broken since it was checked: the re-ranker says so (a 422), not this key
            return name

    def classify(self, uploads: Sequence[Upload], q: ClassifyQuery, client: str | None = None) -> list[Answer | str]:
        """Classify uploads; a string in the output is why that image could not be classified. Each answer is logged
        (VMEM_ANSWER_LOG), as asked by `client` (the client's address)."""
        # Before the search: a forget made while Gemini is asked came after the question
        asked_at = self.memory.answer_state() if self.answer_log is not None else None
        # A memory shared with other processes: their edits first drop what they outdate. Read once for the
        # whole request (the classify below would read the edit marks again).
        with self.memory.refreshed():
            answers = self._classify(uploads, q, asked_at)
        if self.answer_log is not None:
            done = [(a, up) for a, up in zip(answers, uploads, strict=True) if isinstance(a, Answer)]
            # judged as the response is (classification_out): the log keeps which answers were unsure
            self.memory.log_answers([a.result.judged(q.min_confidence) for a, _ in done],
                                    [Asked(up.sha256, up.filename, a.cached, a.asked_at if a.cached else None)
                                     for a, up in done], client=client, to=self.answer_log, asked_at=asked_at)
        return answers

    def _classify(self, uploads: Sequence[Upload], q: ClassifyQuery,
                  asked_at: tuple[str, str | None] | None = None) -> list[Answer | str]:
        size = self.settings.result_cache_size
        generation = self._generation
        out: list[Answer | str | None] = [None] * len(uploads)
        keys: dict[int, tuple[Any, ...]] = {}  # of the uploads not answered from the cache
        if q.label:  # as the memory spells them: the OOD calibration and the cache key read them too
            q = q.model_copy(update={"label": self.memory.stored_labels(q.label)})
        threshold = self.ood_threshold(self.memory.vote_settings(q.vote, q.k).k, q.label)
        template = self._template_in_key(q)
        for i, up in enumerate(uploads):
            if not size or up.problem is not None:  # no cache: no key (it hashes the upload)
                keys[i] = ()
                continue
            key = self._cache_key(generation, up, q, template)
            with self._cache_lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
            if hit is not None:
                self.metrics.cache.labels("hit").inc()
                out[i] = self._answer(_as_served_from_cache(hit[0]), threshold, cached=True, asked_at=hit[1])
                continue
            keys[i] = key
        failed: list[tuple[int, str]] = []
        for step in self._decoded_in_steps(((i, uploads[i]) for i in keys), failed):
            try:
                results = self.memory.classify(
                    [img for _, img in step], k=q.k, rule=q.vote, alpha=q.alpha, tau=q.tau, labels=q.label,
                    rerank=q.rerank, template=q.template, exact=q.exact, why_not=q.why_not,
                    sources=[uploads[i].filename or uploads[i].source for i, _ in step])
            except NothingToSearchError as exc:  # refused before any answer is counted or kept: said for a client
                raise NothingToSearchError.of(
                    exc.total, add="add labelled images first (POST /v1/memory, or vmem build)") from None
            for (i, _), res in zip(step, results, strict=True):
                if size:  # a miss once decoded: an undecodable upload is no lookup the cache could have answered
                    self.metrics.cache.labels("miss").inc()
                self._count(res)
                # A fallback may be transient (a timeout): do not pin it in the cache.
                if size and not (q.rerank and res.fallback_reason):
                    with self._cache_lock:
                        if self._generation == generation:
                            self._keep_answer(keys[i], res, size, asked_at)
                out[i] = self._answer(res, threshold, cached=False, asked_at=asked_at)
        for i, why in failed:
            out[i] = why
        return [a for a in out if a is not None]

    def _count(self, res: Classification) -> None:
        usage = res.usage or {}
        # The re-ranker's own answer cache; a fallback before the lookup (one candidate label) is neither.
        if usage.get("cache_checked"):
            self.metrics.rerank_cache.labels("hit" if usage["cached"] else "miss").inc()
        if res.usage is not None:
            if usage.get("latency_s") is not None:
                self.metrics.rerank_seconds.observe(usage["latency_s"])
            # Every HTTP attempt, failed ones too (usage's `requests` counts the answered, billed calls only: an
            # outage of 503s left the counter still)
            self.metrics.gemini_requests.inc(usage.get("attempts", 0))
            for kind in GEMINI_TOKEN_KINDS:
                self.metrics.gemini_tokens.labels(kind).inc(usage.get(f"{kind}_tokens", 0))
        if res.fallback_reason:
            # Label by the error class, never the reason text: that holds attempt counts and endpoints,
            # and every distinct text would be a new time series.
            error = (res.usage or {}).get("error") or (
                RERANK_NOT_CONFIGURED if res.fallback_reason.startswith("re-ranking is not configured") else "Other")
            self.metrics.rerank_fallbacks.labels(error).inc()

    def _answer(self, res: Classification, threshold: float | None, cached: bool,
                asked_at: tuple[str, str | None] | None = None) -> Answer:
        # Every answer, cached or not, counts as classified, as it counts when flagged: the flagged share stays <= 1.
        self.metrics.classified.inc()
        ood = out_of_distribution(res.novelty, threshold)  # the rule vmem classify --ood flags by
        if ood:
            self.metrics.out_of_distribution.inc()
        return Answer(res, threshold, ood, cached, asked_at)

    # ------------------------------------------------------------------ novelty calibration

    def ood_threshold(self, k: int, labels: Sequence[str] | None = None, fresh: bool = False) -> float | None:
        """The novelty above which a query is out of distribution, for k neighbours (among `labels`, if given).

        Calibrated on the memory itself: sampled memory points query the memory (their own hit
        excluded), and the threshold is a high percentile of their novelty. A query restricted to some
        labels has its novelty measured among those labels' points only, so its threshold comes from
        those points too (the whole memory's would flag most of them: fewer candidates, farther
        neighbours). Cached per k and label set until the next edit of the points. After an edit, the
        threshold from before it is answered while the new one is computed in the background (0.19 s at
        20,100 points: a service taking a stream of adds would otherwise pay that on most requests, and one
        edit barely moves a percentile of 256 samples); `fresh` waits for the new one instead. The first
        threshold for a k and label set is computed before it is answered, unless another one is being computed
        then: that answer has none (None).
        """
        generation = self._points_generation
        which = (k, tuple(sorted(set(labels))) if labels else None)
        with self._ood_lock:
            if (generation, *which) in self._ood:
                return self._ood[(generation, *which)]
            earlier = None if fresh else self._ood_last.get(which)
            if earlier is not None:
                if which not in self._recalibrating:
                    self._recalibrating.add(which)
                    self.recalibration_executor.submit(self._recalibrate, generation, which)
                return earlier[1]
        # Outside the lock: a new label set's calibration (up to seconds) must not hold up the answers of
        # requests whose threshold is known. One at a time, though: each is 256 searches (5 s at k=1000 among 150
        # labels), and a client without a key could ask for new label sets without end. A request that finds
        # one running answers with no threshold (null) rather than queue behind it.
        if not fresh and not self._new_calibration.acquire(blocking=False):
            return None
        try:
            return self._keep_threshold(generation, which, self._calibrate(*which))
        finally:
            if not fresh:
                self._new_calibration.release()

    @property
    def recalibration_executor(self) -> ThreadPoolExecutor:
        """One thread that calibrates again, one k and label set at a time, the thresholds an edit outdated: a
        thread each had run them all at once after an edit (30 at k near 1000 took the service from 0.9 to 8 GB)."""
        return self._pool("vmem-novelty", 1)

    def _recalibrate(self, generation: int, which: tuple[int, tuple[str, ...] | None]) -> None:
        try:
            if generation != self._points_generation:  # edited again while it waited: the next request asks anew
                return
            self._keep_threshold(generation, which, self._calibrate(*which))
        except Exception:  # the earlier threshold stays in use; the next request after an edit tries again
            if not self._closed:  # a memory closed under it at shutdown is no failure worth a warning
                log.warning("recalibrating the novelty threshold failed", exc_info=True)
        finally:
            with self._ood_lock:
                self._recalibrating.discard(which)

    def _keep_threshold(self, generation: int, which: tuple[int, tuple[str, ...] | None],
                        value: float | None) -> float | None:
        with self._ood_lock:
            if generation >= self._ood_last.get(which, (-1, None))[0]:
                self._ood_last[which] = (generation, value)
                if len(self._ood_last) > _MAX_OOD_ENTRIES:
                    self._ood_last.pop(next(iter(self._ood_last)))
            if self._points_generation == generation:
                self._ood = {old: v for old, v in self._ood.items() if old[0] == generation}
                if len(self._ood) >= _MAX_OOD_ENTRIES:
                    self._ood.pop(next(iter(self._ood)))
                self._ood[(generation, *which)] = value
            return value

    def _calibrate(self, k: int, labels: Sequence[str] | None = None) -> float | None:
        # The one calibration rule, `VisualMemory.novelty_threshold` (as `vmem classify --ood` calibrates)
        t0 = time.perf_counter()
        value = self.memory.novelty_threshold(k, labels, sample_size=self.settings.ood_sample_size,
                                              percentile=self.settings.ood_percentile)
        if value is None:
            return None
        log.info("novelty threshold at k=%d%s: %.4f (p%g of up to %d memory points, %.2f s)", k,
                 f" among {len(labels)} labels" if labels else "", value, self.settings.ood_percentile,
                 self.settings.ood_sample_size, time.perf_counter() - t0)
        return value

    # ------------------------------------------------------------------ label audit

    def audit(self) -> AuditJob:
        """The audit of the memory's labels as its points are now: finished, failed, or running (started here
        if none is). A memory edited since its audit is audited again; one audit runs at a time.

        Not on the embedding threads: it searches every point's neighbours (seconds at 20k points, ~20 minutes
        at 1.28M through the index), and classify requests must not queue behind it.
        """
        if self.auditor is None:
            raise LookupError("this service was started without a label auditor (vmem serve has one)")
        self.memory.refresh()
        with self._audit_lock:
            job = self._audit
            # A failed audit (the memory unreachable meanwhile) is tried again when asked again.
            if job is not None and (job.state == "running" or (job.state == "done"
                                                                and job.generation == self._points_generation)):
                return job
            job = self._audit = AuditJob(self._points_generation, self.memory.store.count())
        threading.Thread(target=self._run_audit, args=(job,), name="vmem-audit", daemon=True).start()
        return job

    def audit_is_current(self, job: AuditJob) -> bool:
        return job.generation == self._points_generation

    def _run_audit(self, job: AuditJob) -> None:
        def progress(n: int) -> None:
            job.done += n

        t0 = time.perf_counter()
        try:
            job.result = self.auditor(self.memory.store, progress)  # type: ignore[misc]
        except Exception as exc:  # e.g. fewer than 2 points; said by the route, logged here
            log.warning("the label audit failed: %s", exc, exc_info=not isinstance(exc, ValueError))
            job.error = str(exc)
        job.seconds = time.perf_counter() - t0
        if job.result is not None:
            log.info("label audit of %d points done in %.1f s", job.total, job.seconds)

    # ------------------------------------------------------------------ thumbnails

    def _servable(self, path: Path) -> bool:
        """Only files under an allowed root: a point's source is data, and may name any file on the host."""
        return is_under(path, self.memory.shown_roots)

    def _open_shown(self, source: str) -> BinaryIO:
        """A point's image file, opened and checked there: a link swapped in after the name was checked (by whoever
        may write in an image folder) had led out of the roots."""
        try:
            return open_under(source, self.memory.shown_roots)
        except OutsideFolders:
            raise ThumbnailUnavailable("the point's image is outside the directories this service serves images "
                                       "from (the memory's build roots, or VMEM_SOURCE_ROOTS)") from None
        except OSError as exc:
            raise ThumbnailUnavailable(f"the point's image file could not be read at {visible(source)} "
                                       f"({os_error_reason(exc)})") from None

    def serves_from(self, source_prefix: str) -> bool:
        """Whether a source prefix is a local path inside the folders this service serves images from (the
        memory's build roots, or VMEM_SOURCE_ROOTS): only there is a folder walked for a request without a key."""
        if not is_local_source(source_prefix):
            return False
        try:
            return self._servable(Path(os.path.expanduser(source_prefix)))
        except OSError:
            return False

    def thumbnail(self, point_id: str) -> bytes:
        """A JPEG of the point's image. Raises ThumbnailUnavailable with the reason."""
        points = self.memory.store.retrieve([point_id])
        if not points:
            # Forgotten by another process sharing the memory: no copy is left here either. (Its own folder only:
            # a shared folder's other files may be another memory's.)
            self.thumbnails.remove([point_id])
            raise ThumbnailUnavailable(f"no point with id {point_id} in the memory")
        if (kept := self.thumbnails.load(point_id)) is not None:  # a point of this memory: taken in, if kept before
            return kept
        source = points[0].source
        if source.startswith("upload:"):
            # Its only other copy: a thumbnail lost, or kept under another VMEM_THUMBNAIL_DIR, had been a 404 for good
            # though the memory's folder held the image as sent
            if (folder := self._memory_folder) is None or (as_sent := kept_upload(folder, point_id)) is None:
                raise ThumbnailUnavailable("the point's image was uploaded, and neither a thumbnail of it nor the "
                                           "image as sent (VMEM_KEEP_UPLOADS) was kept here (it was added through "
                                           "another server or another thumbnail directory, or its thumbnail could "
                                           "not be written: the server log says)")
            return self._made_thumbnail(point_id, source, lambda: _open_kept(as_sent, folder))
        if "://" in source:
            raise ThumbnailUnavailable(f"the point's image is at {visible(source)}, which this service does not fetch")
        if not self._servable(Path(source)):
            raise ThumbnailUnavailable("the point's image is outside the directories this service serves images "
                                       "from (the memory's build roots, or VMEM_SOURCE_ROOTS)")
        if not Path(source).is_file():
            raise ThumbnailUnavailable(f"the point's image file is no longer at {visible(source)}")
        return self._made_thumbnail(point_id, source, lambda: self._open_shown(source))

    def _made_thumbnail(self, point_id: str, source: str, open_image: Callable[[], BinaryIO]) -> bytes:
        """The point's thumbnail made from its image, kept in the thumbnail folder, and checked to be of a point still
        in the memory."""
        try:
            # Decoded at the scale the thumbnail needs (a JPEG's draft), a few at a time: 15 thumbnails of 24 MP photos
            # asked at once, without a key, had taken 2.6 GB decoded whole
            with self._thumbnail_builds, open_image() as f:
                jpeg = self.thumbnails.save(point_id, load_image(decodable(f), min_side=self.thumbnails.size,
                                                                 name=source))
        except ImageDecodeError as exc:
            raise ThumbnailUnavailable(f"the point's image file could not be decoded: {exc}") from exc
        # A forget between the check above and the save would find no thumbnail to delete, and leave this one
        # after it returned: look again, now that it is written.
        if not self.memory.store.existing_ids([point_id]):
            self.thumbnails.remove([point_id])
            raise ThumbnailUnavailable(f"no point with id {point_id} in the memory (forgotten just now)")
        return jpeg
