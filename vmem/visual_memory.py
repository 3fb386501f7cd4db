"""`VisualMemory`: the Python API that the CLI and the HTTP service share (evaluation scores a `MemoryStore`
directly, through `eval`; its re-ranking runs through this API).

    >>> mem = VisualMemory.open("./memory")
    >>> [result] = mem.classify(["cat.jpg"], k=50)
    >>> result.label, result.neighbors[0].source
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import numbers
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, overload

import numpy as np
from PIL import Image
from pydantic import ValidationError

from retrieval import (
    BuildReport,
    IndexSettings,
    LabelledImage,
    MemoryStore,
    Neighbor,
    VoteRule,
    build_memory,
    first_occurrences,
    imagenet_label_names,
    is_local_source,
    load_image,
    normalize_source,
    open_store,
    point_id_for,
    vote,
)
from retrieval.doubtful import unit_rows
from retrieval.feature_cache import FeatureCache
from retrieval.files import (
    DISK_FULL_ERRNOS,
    file_sha256,
    is_under,
    make_partial_folder,
    on_disk_spelling,
    os_error_reason,
    remove_dead_partials,
    write_atomically,
)
from retrieval.images import ImageDecodeError, ImageInput
from retrieval.journal import (
    JOURNAL_FILE,
    KEY_NAME,
    PENDING_DIR,
    FileJournal,
    JournalEntry,
    JournalOp,
    JournalQuery,
    LeftNote,
    NotedOp,
    PendingEdit,
    add_note_detail,
    label_counts,
    most_first,
    now,
)
from retrieval.kept_counts import KeptCounts, read_kept_counts
from retrieval.store import (
    DEFAULT_COLLECTION,
    EDIT_HEADROOM_BYTES,
    EXCLUDED_KEY,
    LOCAL_MODE_PREFIX,
    PRUNE_COUNT_KEY,
    RELABELLED_AT_KEY,
    RELABELLED_FROM_KEY,
    RELIABILITY_KEY,
    SCROLL_PAGE,
    THUMBNAILS_DIR,
    UPLOADS_DIR,
    MemoryFullError,
    MemoryMeta,
    MemoryStoreError,
    NoMemoryError,
    StoredPoint,
    at_rest,
    is_embedded_location,
    local_folder,
    read_meta_file,
    same_location,
    thumbnail_file,
    upload_file,
)
from retrieval.text import (
    canonical_label,
    counted,
    label_forms,
    label_problem,
    quoted,
    visible,
    without_secrets,
)
from retrieval.voting import fewest_to_win, wins_nearest

if TYPE_CHECKING:
    from retrieval import Featurizer

from .answer_log import AnswerLog, Asked, image_sha256
from .diff import VECTOR_TOLERANCE, MemoryDiff, diff_memories
from .export import PointBatch, check_export_path, export_meta, write_export
from .import_points import (
    ImportBatch,
    ImportReport,
    PointsFile,
    PointsFileError,
    check_featurizer,
    payloads,
    plan_rows,
    read_points_file,
    spec_for_new_memory,
    usable_batches,
)
from .novelty import OOD_PERCENTILE, OOD_SAMPLE_SIZE, check_calibration, self_excluded_novelties, threshold_of
from .results import (
    MAX_ALPHA,
    MAX_TAU,
    MIN_ALPHA,
    MIN_TAU,
    AddResult,
    BackupResult,
    Classification,
    FailedImage,
    FewPoints,
    HistoryPage,
    MemoryPoint,
    NearDuplicate,
    NeighborVote,
    PointPage,
    ReembedResult,
    VoteSettings,
    check_min_confidence,
)
from .why_not import RANK_LIMIT, WHY_NOT_POINTS, close_labels, note_rerank
from .why_not import explain as explain_why_not

log = logging.getLogger(__name__)

DEFAULT_FEATURIZER = "dinov2-small"
# A relabel of at least this many points indexes them again before it returns (`_relabel_points`).
REINDEX_AFTER_RELABEL = 10_000
PointsListener = Callable[[list[str]], None]  # told the ids of the points an edit (forget, relabel) touched
# Told what another process changed in a shared memory: "points" and/or "meta" (see `VisualMemory.refresh`).
ElsewhereListener = Callable[[frozenset[str]], None]
# `reranker=AUTO_RERANKER` (the default) builds a Gemini re-ranker on the first `rerank=True`;
# `reranker=None` turns re-ranking off (results then say "re-ranking is not configured").
AUTO_RERANKER = "auto"


# The cosine similarity at or above which `near_duplicates` and `forget_like` take a point for a copy of an image.
# Measured with EfficientNet-Lite0 on Tiny-ImageNet (docs/benchmarks/near_copies.py; README, "Forgetting"): the
# two most similar distinct images of all 20,200 train images are 0.919 apart (a file stored in two classes
# aside), and of a 3,000-image sample 0.846; copies of 300 of them re-encoded as JPEG at quality 95 or 75, saved
# as PNG or enlarged twice are at least 0.931. Resized to twice and back, 76 % of the copies reach it; mirrored 97 %,
# cropped to 90 % 52 %, JPEG at quality 50 3 %. Another encoder's features need their own measurement.
COPY_SIMILARITY = 0.93
# At most this many points are taken for copies of one image: more than this above the threshold means a
# threshold too low to mean copies, and `forget_like` refuses it rather than forget part of a class.
MOST_COPIES = 1000
# ... and more than this many, making up more than half of the memory, is refused too: a small memory has no
# 1,000 points to reach (a threshold of 0.01 forgot every point of a memory of 999).
FEW_COPIES = 10
# Similarities are compared with this much slack: the stored vectors are float16 (the default), so an image's
# similarity to its own point is 1 give or take 1e-4, and `min_similarity=1` had missed half of them.
SIMILARITY_SLACK = 1e-3


# A build journals what it has added at least this often (and at its end), so that a process killed midway
# leaves at most this much of its adds out of the journal.
BUILD_JOURNAL_EVERY_S = 60.0
# How long `points(source_prefix=...)` reuses its walk of the folder (for links) and its listing of their ids,
# from one page to the next, while the memory is unchanged; files linked meanwhile show after that.
LISTING_REUSE_S = 60.0


class _AddEntries:
    """The journal entries of one run that adds points in batches (`build`, `import_points`): each entry says the
    points added since the run's last one (`journal`), and the run makes one when `due` (a kill -9 loses at most
    BUILD_JOURNAL_EVERY_S of its adds), when stopped and at its end. A resumed run counts what a stopped one added
    as already there, so what a kill leaves unjournaled is journaled by the run's note (`Journal.settle`) or never.
    """

    def __init__(self, journal: Callable[..., bool], selector: dict[str, Any]) -> None:
        self._journal, self._selector = journal, selector
        self._journaled: dict[str, int] = {}  # points per label in the run's entries so far
        self._last = time.monotonic()
        self.all_journaled = True  # every entry recorded: the run's note can be settled

    def due(self) -> bool:
        return time.monotonic() - self._last >= BUILD_JOURNAL_EVERY_S

    def journal(self, added_per_label: Mapping[str, int], detail: dict[str, Any]) -> None:
        """One "add" entry of the points of `added_per_label` (the run's so far) its entries so far leave out (none
        left out: no entry). `detail`: the entry's, the run's counts and the note's token."""
        new = {lab: n - self._journaled.get(lab, 0) for lab, n in added_per_label.items()
               if n > self._journaled.get(lab, 0)}
        self._last = time.monotonic()
        if new:
            self.all_journaled &= self._journal("add", points=sum(new.values()), labels=most_first(new),
                                                selector=self._selector, detail=detail)
            self._journaled.update(added_per_label)


_SAID_OUT_OF_BOUNDS: set[tuple[str, float]] = set()


def _stored_vote(tuned: dict[str, Any]) -> VoteSettings:
    """A memory's tuned vote settings, with an alpha or tau that `vmem tune` could store before vote settings
    took HTTP's bounds brought within them (with a warning): refused, the memory classified nothing, and blamed an
    option no one gave."""
    bounded = dict(tuned)
    for name, high in (("alpha", MAX_ALPHA), ("tau", MAX_TAU)):
        value = tuned.get(name)
        if isinstance(value, int | float) and value > high:
            bounded[name] = high
            if (name, value) not in _SAID_OUT_OF_BOUNDS:  # read at every classify: said once
                _SAID_OUT_OF_BOUNDS.add((name, value))
                log.warning("this memory's tuned %s (%g) is above %g, the most vote settings take now: using %g; "
                            "run vmem tune again", name, value, high, high)
    try:
        return VoteSettings(**{**bounded, "origin": "memory"})
    except ValidationError as exc:  # a rule of a newer vmem's, a vmem.json edited: not an option the user gave
        problem = exc.errors()[0]
        field = problem["loc"][0] if problem["loc"] else "vote"
        raise ValueError(f"this memory's tuned vote settings ({tuned}, stored by vmem tune) cannot be read by this "
                         f"vmem: {field}: {problem['msg']}; run vmem tune again, or vmem tune --reset (back to the "
                         "defaults), or use the vmem that tuned it") from None


# What each vote option takes, for a one-line refusal (VoteSettings' bounds: HTTP's)
_VOTE_OPTIONS = {
    "rule": "one of " + ", ".join(rule.value for rule in VoteRule) + " or dmn",
    "k": "a whole number of neighbours from 1 to 1000",
    "alpha": f"a number from {MIN_ALPHA:g} to {MAX_ALPHA:g}",
    "tau": f"a number from {MIN_TAU:g} to {MAX_TAU:g}",
}


class VoteOptionError(ValueError):
    """A vote option given to classify (or `vote_settings`) that it does not take, said in one line: the argument,
    the value given and what it takes (`k=0: k takes a whole number of neighbours from 1 to 1000`)."""

    def __init__(self, option: str, value: Any, takes: str) -> None:
        self.option, self.value, self.takes = option, value, takes
        super().__init__(f"{option}={value!r}: {option} takes {takes}")

    @classmethod
    def of(cls, exc: ValidationError) -> ValueError:
        """VoteSettings' refusal of an option as this (pydantic's is many lines and a URL, of a model the caller
        never named)."""
        problem = exc.errors()[0]
        name = str(problem["loc"][0]) if problem["loc"] else "vote"
        if name not in _VOTE_OPTIONS:  # none other is given by a caller: said as pydantic says it, on one line
            return ValueError(f"{name}: {problem['msg']}")
        value = problem.get("input")
        return cls(name, getattr(value, "value", value), _VOTE_OPTIONS[name])  # a VoteRule as its text


def _tuned_vote(meta: MemoryMeta) -> VoteSettings:
    """The vote a memory classifies with where no setting is given: its tuned settings (`_stored_vote`), else the
    defaults. ValueError where they cannot be read by this vmem. Of an opened memory (`vote_settings`) and of one
    read at rest (`stats_from_files`), which must judge its labels of few points alike."""
    tuned = meta.settings.get("vote") or {}
    return _stored_vote(tuned) if tuned else VoteSettings()


def _asked(image: Any) -> Asked:
    """What the answer log keeps of an image classify was given: its bytes' sha256 and its file's name."""
    if isinstance(image, str | Path):
        return Asked(sha256=image_sha256(image), filename=Path(image).name)
    if isinstance(image, bytes | bytearray):
        return Asked(sha256=hashlib.sha256(image).hexdigest())
    return Asked()  # decoded pixels: no bytes to name them by


def upload_source(data: bytes | bytearray, name: str | None = None, sha256: str | None = None) -> str:
    """The source of an uploaded image: its content hash (`sha256` when the caller has it), so re-uploading is
    idempotent."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    return f"upload:sha256:{digest}" + (f":{Path(name).name}" if name else "")


_UPLOAD_CONTENT = re.compile(r"upload:sha256:[0-9a-f]{64}(?=:|\Z)")


def upload_content(source: str) -> str | None:
    """What an upload's source says of its bytes (`upload:sha256:<digest>`, its file name left off), the key of
    the image however it was named; None for a path, URI or a name given in its place."""
    return m.group(0) if (m := _UPLOAD_CONTENT.match(source)) else None


def local_source_prefix(prefix: str) -> str:
    """A source prefix as stored sources are written: local paths made absolute with links resolved.

    A folder that exists ends in '/', so `/data/cats` forgets `/data/cats/x.jpg` but not `/data/catsanddogs/x.jpg`
    (a folder that no longer exists: give the trailing '/' to say so). URIs and upload ids are left as given.
    """
    if not is_local_source(prefix):
        return prefix
    try:
        norm = normalize_source(prefix)
    except (ValueError, RuntimeError) as exc:  # a NUL byte; `~user` with no such user
        raise ValueError(f"source_prefix {quoted(prefix)} is not a path on this host: {exc}") from None
    if (prefix.endswith("/") or Path(norm).is_dir()) and not norm.endswith("/"):
        norm += "/"
    return norm


# The kernel's views of itself: huge trees of links (every process's files, again and again), never images.
KERNEL_FOLDERS = (Path("/proc"), Path("/sys"))


def linked_sources(folder: str | Path) -> tuple[list[str], list[str]]:
    """Where the links under a local folder lead: (resolved folders + '/', resolved files).

    Stored sources are resolved paths, so a build over a folder of links (class folders linked in from
    elsewhere, or linked files) stored its images under the links' targets, not under the folder. Forgetting
    the folder must reach them. Links inside a linked folder that lead elsewhere again are not followed.
    """
    folders: list[str] = []
    files: list[str] = []
    # No image was ever built from these (/proc alone took 49 s). Checked once: the walk follows no link, so it
    # enters them only by starting there.
    real = Path(os.path.realpath(folder))
    if any(real == kernel or kernel in real.parents for kernel in KERNEL_FOLDERS):
        return folders, files
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as scan:
                entries = list(scan)
        except OSError:  # unreadable, or gone meanwhile: nothing a build could have read there either
            continue
        for entry in entries:
            try:
                if entry.is_symlink():
                    target = Path(entry.path).resolve(strict=True)
                    if target.is_dir():
                        folders.append(str(target).rstrip("/") + "/")
                    elif target.is_file():
                        files.append(str(target))
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
            except (OSError, RuntimeError):  # a dangling link, a loop of links (RuntimeError before 3.13)
                continue
    return folders, files


def _utc(when: str | None) -> datetime:
    """An ISO time as an aware UTC datetime (a point stored without `added_at`: the earliest time)."""
    if not when:
        return datetime.min.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(when)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _journal_location(location: str) -> str:
    """A memory's location as a journal records it: a folder absolute (as typed, `vmem history` run elsewhere
    could not tell which memory a copy came from, nor a later copy which copies were its own); a server's URL
    without a user, password or query (a journal, an export's header and a re-embedding's origin are files kept and
    passed on: `https://admin:pw@host` went into them as typed). Copies are matched by key, not by this."""
    if (folder := local_folder(location)) is None:
        return without_secrets(location)
    return f"{LOCAL_MODE_PREFIX if location.startswith(LOCAL_MODE_PREFIX) else ''}{folder.resolve()}"


class NoSuchLabelsError(ValueError):
    """A classify's label filter that no searchable point passes (perhaps forgotten since a caller checked)."""


class UnknownPointError(LookupError):
    """A point id the memory does not hold (never added, or forgotten)."""


class NothingToSearchError(ValueError):
    """A vote over a memory with no point a search can return: it holds none, or every one is hard-pruned
    (`pruned` says which). `vmem classify` and HTTP refuse it too; an answer of label None with no neighbours
    read as the memory abstaining."""

    def __init__(self, message: str, total: int) -> None:
        super().__init__(message)
        self.total = total  # points held, all hard-pruned when not 0

    @classmethod
    def of(cls, total: int, memory: str = "the memory",
           add: str = "add labelled images first (add, or vmem build)") -> NothingToSearchError:
        """The error for a memory of `total` points none of which a search can return, said of `memory`; `add`:
        what to do where it holds none (each caller names its own way to add images)."""
        if total:
            every = "the 1 point of" if total == 1 else f"all {total:,} points of"
            return cls(f"{every} {memory} {'is' if total == 1 else 'are'} hard-pruned, so no search can return one: "
                       "`vmem prune --undo` restores them", total)
        return cls(f"{memory} holds no points: {add}", total)

    @property
    def pruned(self) -> bool:
        return self.total > 0


# Sampled points searched at once to calibrate novelty (`novelty_threshold`).
NOVELTY_PAGE = 32

# Index settings read at every search, which an existing memory may change (`set_search_settings`).
SEARCH_SETTINGS = frozenset({"hnsw_ef", "rescore"})

# vmem.json's settings: the thumbnail folders services outside the memory's folder keep (`note_thumbnail_folder`).
THUMBNAIL_FOLDERS_KEY = "thumbnail_dirs"
# A copy's settings: when each copy into it that has not finished began, by the key of the memory copied from
# (`_copy_begun`). Its points are there, its journal entries not yet: a forget made here before it is run again
# must still reach them.
COPIES_BEGUN_KEY = "copies_begun"


@functools.cache
def _imagenet_names() -> dict[str, str]:
    return imagenet_label_names()  # read once: a 1,000-line file each add would be waste



def carry_meta(mine: MemoryMeta, meta: MemoryMeta, skip: Sequence[str] = ()) -> None:
    """A memory's label names and settings into a copy's `meta` (`copy_to`, `reembed_to`), but for the `skip`
    keys: source roots joined, the copy's own tuned settings kept over these."""
    meta.label_names = {**meta.label_names, **mine.label_names}
    for key, value in mine.settings.items():
        if key in skip:
            continue
        if key == "source_roots":
            roots = meta.settings.setdefault("source_roots", [])
            roots += [r for r in value if r not in roots]
        else:
            meta.settings.setdefault(key, value)  # the destination's own tuned settings win


def _source_roots_of(sources: Sequence[str]) -> tuple[str | None, list[str]]:
    """The directory `sources` were read from (None: no local file) and the folders to record for them as a
    memory's image folders (`source_roots`)."""
    # Only files that are there: a dangling link's target (/nonexistent.jpg) made the common root "/".
    # Written plainly: "/usr/../etc" is "/etc", at the top of the disk, where its three parts had passed for deeper
    local = [os.path.normpath(src) for src in sources if is_local_source(src) and os.path.isfile(src)]
    if not local:
        return None, []
    root = os.path.commonpath(local)
    root = root if Path(root).is_dir() else str(Path(root).parent)
    # A common folder at the top of the disk ("/", "/home") would let the service show any image under it:
    # then the images' own folders are the roots, never "/" itself (a file directly in it). Judged as the folders
    # really are, as `is_under` reads them: named through a link to "/" (/proc/self/root), a folder passed for deep.
    if _depth(root) > 2:
        return root, [root]
    return root, sorted({folder for src in local if _depth(folder := str(Path(src).parent)) > 1})


def _depth(folder: str) -> int:
    """How many parts `folder` has as it really is, links followed ("/" has 1, "/home" 2)."""
    return len(Path(os.path.realpath(folder)).parts)


def _files_outside(sources: Sequence[str], roots: Sequence[str]) -> int:
    """How many of `sources` are files on this machine outside every folder of `roots`: images the memory neither
    shows nor sends to the re-ranker."""
    return sum(1 for src in sources if is_local_source(src) and os.path.isfile(src) and not is_under(src, roots))


def _make_folders_above(path: Path) -> list[Path]:
    """Make the missing folders above `path`; those made, outermost first. One that cannot be made removes those
    made before it, and raises."""
    made: list[Path] = []
    missing = [p for p in (path.parent, *path.parent.parents) if not os.path.lexists(p)][::-1]
    for folder in missing:
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by someone else: theirs, not removed
            continue
        except OSError:
            _remove_folders_made(made)
            raise
        made.append(folder)
    return made


def _remove_folders_made(made: list[Path]) -> None:
    """Remove the folders `_make_folders_above` made, innermost first, where still empty."""
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _delete_after_forget(files: Sequence[Path], what: str, folder: Path) -> None:
    """Delete files of forgotten points (their thumbnails, their uploads kept as sent). One that cannot be deleted
    is said, not raised: the forget is made, and failing it would say it was not."""
    failed: list[OSError] = []
    for file in files:
        try:
            file.unlink(missing_ok=True)
        except OSError as exc:
            failed.append(exc)
    if failed:
        log.warning("after a forget (made): %s of forgotten points could not be deleted from %s (%s): delete "
                    "them there, or forget the same points again once it can be written", counted(len(failed), what),
                    folder, os_error_reason(failed[0]))

class VisualMemory:
    """A memory of labelled feature vectors plus the encoder that made them."""

    _device: str | None  # the device `open` was given, for an encoder loaded on first use; unset otherwise

    def __init__(self, store: MemoryStore, featurizer: Featurizer | None = None, reranker: Any = AUTO_RERANKER) -> None:
        if not isinstance(store, MemoryStore):  # a path given here failed later, on a missing attribute of a str
            raise TypeError(f"VisualMemory takes an open store, not {type(store).__name__}: open a memory by its "
                            "location with VisualMemory.open(location)")
        self.store = store
        self._featurizer = featurizer
        self._featurizer_lock = threading.Lock()
        # Forgets, relabels and adds read the points' labels (or whether they exist), then change them: two
        # threads doing so at once would both journal the points the other changed. (Processes sharing a Qdrant
        # server are not covered.)
        self._edit_lock = threading.Lock()
        self._edits = 0  # edits journaled through this object: a cached listing of a source prefix is outdated
        self._listing: tuple[Any, ...] | None = None  # (prefix, when, memory state, links, ids in order)
        self._listing_lock = threading.Lock()
        if featurizer is not None:
            store.check_featurizer(featurizer.spec)
        self._forget_listeners: list[PointsListener] = []
        self._relabel_listeners: list[PointsListener] = []
        self._elsewhere_listeners: list[ElsewhereListener] = []
        self._refreshed_here = threading.local()  # inside `refreshed()` on this thread: its reads refresh no more
        self._reranker_lock = threading.Lock()
        self._reranker: Any = None
        self._auto_reranker = isinstance(reranker, str) and reranker == AUTO_RERANKER
        if not self._auto_reranker:
            self.reranker = reranker
        # Who edits, as the journal records it: the CLI and the service say "cli" and "http".
        self.via = "python"
        # The folders whose images are shown and sent to the re-ranker, where not the memory's own (`source_roots`):
        # the service sets its VMEM_SOURCE_ROOTS, so that no image it would not show is sent (`shown_roots`).
        self.image_roots: list[str] | None = None
        # Where classify logs its answers (`vmem.answer_log.AnswerLog`: `vmem answers` reads it); None: nowhere.
        self.answer_log: AnswerLog | None = None
        # The answer cache a forget cleans when no re-ranker is built: opened on the first forget that finds
        # its file (`_rerank_cache_path`), kept open for the next.
        self._idle_rerank_cache: Any = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        location: str | Path = "./memory",
        featurizer: str | None = None,
        create: bool = False,
        device: str | None = None,
        reranker: Any = AUTO_RERANKER,
        index: IndexSettings | None = None,
        read_only: bool = False,
        wait: float = 0.0,
    ) -> VisualMemory:
        """Open (or with `create=True`, create) the memory at `location`.

        Args:
            location: a directory (embedded Qdrant Edge), `http://host:6333` or `:memory:`.
            featurizer: the encoder's name; for an existing memory it must match the stored one,
                for a new one it defaults to DINOv2-S.
            create: make the memory if it does not exist.
            reranker: a `reranker.GeminiReranker` (or any object with `rerank_many`); the default
                builds one from the environment on first use; None disables re-ranking.
            index: HNSW and quantization settings for a new memory (fixed once it exists).
            read_only: an embedded memory for classify only, where its folder cannot be written or other
                processes serve it too: a private copy is opened (`retrieval.store.open_read_only`), every edit
                refused (`retrieval.MemoryReadOnlyError`, a `MemoryStoreError`). DMN streams are read from their
                files and updated in this process only.
            wait: seconds to wait for another process that holds the embedded memory (a build, a service, a
                notebook; or one creating it) to let go, said once as a warning (`logging`); 0 refuses at once,
                `math.inf` waits for good. Never taken from a live process: a killed one lets go as it dies.

        Raises:
            vmem.MemoryStoreError: no memory there (and not `create`: `vmem.NoMemoryError`, saying how to make
                one), or it is open in another process (still, after `wait`: `vmem.MemoryInUseError`).
                ValueError: a negative wait.
            vmem.FeaturizerMismatchError: `featurizer` is not the memory's own encoder.

        Example:
            >>> mem = VisualMemory.open("./memory", featurizer="efficientnet-lite0", create=True)   # new, or as it is
            >>> with VisualMemory.open("./memory") as mem:      # closed at the block's end: a cell run again opens it
            ...     [res] = mem.classify(["cat.jpg"])
        """
        until = time.monotonic() + wait if isinstance(wait, int | float) and wait >= 0 else 0.0  # else refused below
        try:
            store = open_store(location, read_only=read_only, wait=wait)
        except NoMemoryError as exc:
            if not create or read_only:  # said for a Python caller: the store's "(vmem build)" is the CLI's way
                raise NoMemoryError(exc.fact, _how_to_make(location, featurizer, read_only)) from None
            store = None
        if store is None or featurizer is not None:
            from retrieval import load_featurizer  # torch: imported only when an encoder is needed

            try:
                feat = load_featurizer(featurizer or DEFAULT_FEATURIZER, device)
                if store is not None:
                    store.check_featurizer(feat.spec)
            except BaseException:
                # Let go of the memory: a notebook keeps the exception (and so this store, its engine and its
                # open lock) alive, and opening it again with the right encoder had found it open, by this process
                if store is not None:
                    store.close()
                raise
            if store is None:
                # what is left of the wait: a build may have begun making it meanwhile
                left = max(0.0, until - time.monotonic())
                return cls(open_store(location, feat.spec, index=index, wait=left), feat, reranker)
            return cls(store, feat, reranker)
        mem = cls(store, reranker=reranker)
        mem._device = device
        return mem

    @property
    def featurizer(self) -> Featurizer:
        """The memory's encoder, loaded on first use from the name stored with the memory."""
        with self._featurizer_lock:
            if self._featurizer is None:
                from retrieval import load_featurizer

                # trusted=False: the name is the memory's, and a python: plugin it names is imported only where
                # the user trusts it (VMEM_PLUGINS), never because a memory says so.
                feat = load_featurizer(self.store.meta.featurizer.name, getattr(self, "_device", None), trusted=False)
                self.store.check_featurizer(feat.spec)
                self._featurizer = feat
            return self._featurizer

    def decode(self, source: ImageInput) -> Image.Image:
        """An image decoded as this memory's featurizer takes it (a big JPEG at a reduced scale; see
        `Preprocessing.jpeg_draft`); raises `ImageDecodeError`."""
        return self.store.meta.featurizer.preprocessing.decode(source)

    def close(self) -> None:
        """Release the memory: its lock (another process, or another `open` in this one, may then open it), its
        files, the re-ranker's connections and the answer log, and save any DMN stream updates not saved yet.
        Closing twice is harmless; `with VisualMemory.open(...) as mem:` closes it at the block's end."""
        classifier = self.store.__dict__.get("_dmn_classifier")
        if classifier is not None:
            classifier.close()
        reranker = self._reranker
        if reranker is not None and hasattr(reranker, "close"):
            reranker.close()
        if self._idle_rerank_cache is not None:
            self._idle_rerank_cache.close()
        if self.answer_log is not None:
            self.answer_log.close()
        self.store.close()

    def __enter__(self) -> VisualMemory:
        return self

    def __repr__(self) -> str:
        spec = self.store.meta.featurizer
        closed = ", closed" if self.store.closed else ""
        return f"<VisualMemory {without_secrets(self.store.location)} ({spec.name}, {spec.dim}-d{closed})>"

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ settings

    def store_vote_settings(self, vote: dict[str, Any], tuning: dict[str, Any] | None = None) -> None:
        """Keep `vote` (rule, k, alpha, tau: what `vmem tune` chose) as the memory's default vote settings, with
        `tuning` (what they were chosen on), journaled; `vote_settings()` reads them from then on. ValueError for
        settings a vote would refuse (stored, they had failed every classify after)."""
        unknown = set(vote) - {"rule", "k", "alpha", "tau", "soft_pruning"}
        if unknown or "rule" not in vote or vote.get("rule") == "dmn":
            raise ValueError(f"vote settings are a rule (plurality, distance, softmax, rank), k, alpha, tau and "
                             f"soft_pruning; got {sorted(vote)}")
        VoteSettings(**vote)  # checked as every vote is: a rule, k from 1 to 1000, alpha and tau in bounds
        detail = {"vote": dict(vote), **({"tuning": dict(tuning)} if tuning is not None else {})}
        # Noted first, as a naming is: a kill between the settings and the entry is journaled at the next opening
        with self._noted("tune", {}, detail=detail) as note:
            with self.store.meta_edit() as meta:
                meta.settings["vote"] = dict(vote)
                if tuning is not None:
                    meta.settings["tuning"] = dict(tuning)
            if self._journal("tune", detail=detail):
                self.store.journal.settled(note)

    def reset_vote_settings(self) -> dict[str, Any] | None:
        """Forget the tuned vote settings (journaled): the defaults again. Returns what they were (None: none)."""
        before = self.store.meta.settings.get("vote")
        if before is None:
            return None
        detail = {"reset": True, "before": before}
        with self._noted("tune", {}, detail=detail) as note:
            with self.store.meta_edit() as meta:
                meta.settings.pop("vote", None)
                meta.settings.pop("tuning", None)
            if self._journal("tune", detail=detail):
                self.store.journal.settled(note)
        return before

    def set_search_settings(self, **changed: Any) -> dict[str, Any]:
        """Change search settings read at every search (`hnsw_ef`, `rescore`), journaled with the values before;
        index settings built into the index are fixed once the memory exists (ValueError, as for a value out of
        bounds: stored unchecked, `hnsw_ef=4` had made the memory's metadata unreadable). Returns the values before."""
        if fixed := sorted(set(changed) - SEARCH_SETTINGS):
            raise ValueError(f"{', '.join(fixed)}: built into the index when the memory was made; only "
                             f"{', '.join(sorted(SEARCH_SETTINGS))} change (vmem copy into a new memory for others)")
        stored = self.store.meta.index
        changed = {name: value for name, value in changed.items() if getattr(stored, name) != value}
        if not changed:
            return {}
        before = {name: getattr(stored, name) for name in changed}
        updated = IndexSettings.model_validate({**stored.model_dump(), **changed})  # bounds checked, as at a build
        detail = {"search": changed, "before": before}
        with self._noted("settings", {}, detail=detail) as note:
            with self.store.meta_edit() as meta:
                meta.index = updated
            if self._journal("settings", detail=detail):
                self.store.journal.settled(note)
        return before

    def vote_settings(
        self,
        rule: VoteRule | str | None = None,
        k: int | None = None,
        alpha: float | None = None,
        tau: float | None = None,
    ) -> VoteSettings:
        """Explicit arguments win over the memory's tuned settings, which win over defaults.

        Raises ValueError for an alpha or tau the resulting rule would not read (alpha weights rank voting,
        tau softmax voting): silently ignored, it would be echoed in the result as if it had been used.
        """
        base = _tuned_vote(self.store.meta)
        given = {n: v for n, v in {"rule": rule, "k": k, "alpha": alpha, "tau": tau}.items() if v is not None}
        if not given:
            return base
        try:
            settings = VoteSettings(**{**base.model_dump(exclude={"origin"}), **given, "origin": "explicit"})
        except ValidationError as exc:  # pydantic's is many lines and a URL, of a model the caller never named
            raise VoteOptionError.of(exc) from None
        for name, reader in (("alpha", VoteRule.rank), ("tau", VoteRule.softmax)):
            if name in given and settings.rule != reader:
                used = getattr(settings.rule, "value", settings.rule)
                whose = ("the rule asked for is" if rule is not None else "this memory's tuned rule (vmem tune) is"
                         if base.origin == "memory" else "the default rule is")
                raise ValueError(f"{name} applies to {reader.value} voting only, and {whose} {used}: "
                                 f"ask for vote {reader.value}, or leave {name} out")
        return settings

    # ------------------------------------------------------------------ classifying

    @overload
    def stored_labels(self, labels: None) -> None: ...

    @overload
    def stored_labels(self, labels: Sequence[str] | str) -> list[str]: ...

    def stored_labels(self, labels: Sequence[str] | str | None) -> list[str] | None:
        """Labels as a person gives them, as the memory stores them: as given when that holds points (an older
        memory may hold both spellings of one name, as two labels: each is chosen by its own), else canonical
        (`canonical_label`: NFC, outer spaces stripped), else the other Unicode spelling when only that holds
        points ("cafe" + a combining accent, as a Mac names a folder). A label held in no form comes back
        canonical. A label of one spelling only (ASCII without outer spaces: most) costs no lookup."""
        if labels is None:
            return None
        if isinstance(labels, str):  # one label, not its characters
            labels = [labels]
        looked_up: dict[str, str] = {}  # each label once: an add gives one per image
        for label in labels:
            if not isinstance(label, str) or label in looked_up:  # not a label: refused further on, as it was
                continue
            forms = label_forms(label)
            spellings = list(dict.fromkeys([label, *forms]))
            looked_up[label] = label if len(spellings) == 1 else next(
                (f for f in spellings if self.store.count(label=f) > 0), forms[0])
        return [looked_up.get(label, label) if isinstance(label, str) else label for label in labels]

    def stored_label(self, label: str) -> str:
        """`stored_labels` of one label."""
        return self.stored_labels([label])[0]

    def unknown_labels(self, labels: Sequence[str]) -> list[str]:
        """The labels among these that no point a search can return has (none at all, or every one hard-pruned;
        a count per label on the label index): a filter by them would leave every answer empty, which the CLI
        and HTTP refuse."""
        return [label for label in dict.fromkeys(labels)
                if self.store.count(label=self.stored_label(label), searchable=True) == 0]

    def search(self, vectors: np.ndarray, k: int, labels: Sequence[str] | None = None,
               exact: bool = False) -> list[list[Neighbor]]:
        if isinstance(labels, str):  # one label, not its characters
            labels = [labels]
        return self.store.query_batch(vectors, k, labels, exact)

    def classify_vectors(
        self,
        vectors: np.ndarray,
        settings: VoteSettings | None = None,
        labels: Sequence[str] | None = None,
        sources: Sequence[str | None] | None = None,
        exact: bool = False,
        why_not: str | None = None,
        min_confidence: float | None = None,
    ) -> list[Classification]:
        """Vote over the neighbours of already-embedded queries (logged to `answer_log` as `classify` logs, the
        images unnamed: no bytes to name them by); `why_not` and `min_confidence` as `classify`'s."""
        check_min_confidence(min_confidence)
        self._refresh_for_reading()
        settings = settings or self.vote_settings()
        if why_not is not None:
            why_not = self.check_why_not(why_not, self.stored_labels(labels), settings.rule == "dmn")
        asked_at = self.answer_state() if self.answer_log is not None else None
        results = self._vote_vectors(vectors, settings, labels, sources, exact, why_not)
        results = _judged(results, min_confidence)  # before the log: it keeps which answers were unsure
        if self.answer_log is not None:
            self.log_answers(results, [Asked()] * len(results), asked_at=asked_at)
        return results

    def _vote_vectors(self, vectors: np.ndarray, settings: VoteSettings | None, labels: Sequence[str] | None,
                      sources: Sequence[str | None] | None, exact: bool,
                      why_not: str | None = None) -> list[Classification]:
        settings = settings or self.vote_settings()
        results = []
        neighbor_lists = self.search(vectors, settings.k, labels, exact) if len(vectors) else []
        if not all(neighbor_lists):  # counted only then: no count on every search
            self._check_searchable()
        for i, neighbors in enumerate(neighbor_lists):
            results.append(self._decide(neighbors, settings, sources[i] if sources else None))
        results = self._named(results)
        if why_not is not None and results:
            self._explain_why_not(why_not, vectors, neighbor_lists, results, settings, labels, exact)
        return results

    def check_why_not(self, label: str | None, labels: Sequence[str] | None, dmn: bool = False,
                      listed_by: str = "vmem labels") -> str | None:
        """`why_not` as the memory stores it, checked before any image is embedded: ValueError for rule dmn (no
        neighbour vote to explain) or a label the `labels` filter leaves out, NoSuchLabelsError for a label no
        searchable point has, naming the labels spelled or named like it."""
        if label is None:
            return None
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"why_not takes a label, not {label!r}")
        if dmn:
            raise ValueError("why_not explains a neighbour vote, and rule dmn fuses text, static and dynamic "
                             "memories instead: ask with a vote rule (rank, plurality, distance or softmax)")
        stored = self.stored_label(label)
        if labels is not None and stored not in labels:
            raise ValueError(f"why_not label {quoted(label)} is not among the labels the vote chooses from: add it to "
                             "them, or leave the label filter out")
        if self.store.count(label=stored, searchable=True) == 0:
            raise NoSuchLabelsError(self.unknown_labels_message([stored], listed_by) + self._spelled_like(label))
        return stored

    def no_label_note(self, label: str, listed_by: str, history_by: Callable[[str], str]) -> str:
        """What the CLI and HTTP say of a label to forget or relabel that no point has. One the memory had
        (`had_label`: a rename or forget asked again) is said so, with where its edits are listed (`history_by`
        of the label: the CLI's command or the service's route); it had been told "the memory has no label", as a
        misspelling is. One it never had: `unknown_labels_message`, with the labels spelled or named like it
        (among Tiny-ImageNet's 200 labels, 'n0162981' had named none of them, where the error Python raises,
        `check_label_held`, names n01629819)."""
        return self._gone_label_note(label, history_by) or self._never_had_note(label, listed_by)

    def _gone_label_note(self, label: str, history_by: Callable[[str], str]) -> str | None:
        """`no_label_note` of a label whose points all went, or None where it has points or never had any."""
        if self.store.count(label=self.stored_label(label)) or not self.had_label(label):
            return None
        return (f"no point has label {quoted(label)} any more: its points were relabelled or forgotten "
                f"({history_by(label)})")

    def _never_had_note(self, label: str, listed_by: str) -> str:
        """`no_label_note` of a label the memory never had."""
        return self.unknown_labels_message([label], listed_by) + self._spelled_like(label)

    def _spelled_like(self, label: str) -> str:
        """"; spelled or named like it: ..." with the labels spelled or named like `label`, or "" where there are
        none, or `label` is a label's name (`unknown_labels_message` says whose already)."""
        # A misspelling or a synonym had no hint (Tiny-ImageNet's "tabby cat" is n02123045, named "tabby")
        close = [] if self.name_hints([label]) else close_labels(label, self.store.label_counts(),
                                                                   self.store.meta.label_names)
        named = self.store.meta.label_names
        return "; spelled or named like it: " + ", ".join(
            quoted(lab) + (f" ({visible(named[lab])})" if lab in named else "") for lab in close) if close else ""

    def _explain_why_not(self, label: str, vectors: np.ndarray, neighbor_lists: list[list[Neighbor]],
                         results: list[Classification], settings: VoteSettings, labels: Sequence[str] | None,
                         exact: bool) -> None:
        """Set each result's `why_not`: one search among the label's points for its nearest, and, for the
        queries where one of those lies past the k, one deeper search of the memory for where it ranks."""
        own = self.search(vectors, WHY_NOT_POINTS, [label], exact)
        deeper = [i for i, (mine, voted) in enumerate(zip(own, neighbor_lists, strict=True))
                  if not {p.id for p in mine} <= {n.id for n in voted}]
        deep = dict(zip(deeper, self.search(vectors[deeper], RANK_LIMIT, labels, exact), strict=True)
                    ) if deeper else {}
        points = self.store.count(label=label, searchable=True)
        few = next(iter(self.few_point_labels([label], settings=settings)), None)  # at the vote's k, not the memory's
        names = self.store.meta.label_names
        for i, res in enumerate(results):
            voted = neighbor_lists[i]
            ranked = list(voted)
            if i in deep:  # the vote's own k first and in its order, then the deeper search's points past them
                seen = {n.id for n in voted}
                ranked += [n for n in deep[i] if n.id not in seen][: RANK_LIMIT - len(voted)]
            whole = i in deep and len(deep[i]) < RANK_LIMIT
            res.why_not = explain_why_not(label, own[i], ranked, whole, res, settings, points, few, names)

    def _check_searchable(self) -> None:
        """NothingToSearchError unless some point of the memory can be returned by a search."""
        if not self.store.count(searchable=True):
            raise NothingToSearchError.of(self.store.count(), f"the memory at {without_secrets(self.store.location)}")

    def _decide(self, neighbors: list[Neighbor], settings: VoteSettings, source: str | None) -> Classification:
        sims = np.array([n.similarity for n in neighbors], dtype=np.float64)
        outcome = vote([n.label for n in neighbors], sims, settings.rule, settings.alpha, settings.tau,
                       reliability=np.array([n.reliability for n in neighbors]) if settings.soft_pruning else None)
        votes = [NeighborVote(id=n.id, label=n.label, source=n.source, similarity=n.similarity,
                              weight=float(w), rank=i)
                 for i, (n, w) in enumerate(zip(neighbors, outcome.weights, strict=True))]
        novelty = float(np.mean(1.0 - sims)) if len(sims) else None
        return Classification(source=source, label=outcome.label, scores=outcome.scores, neighbors=votes,
                              vote=settings, novelty=novelty)

    def novelty_threshold(self, k: int | None = None, labels: Sequence[str] | None = None,
                          sample_size: int = OOD_SAMPLE_SIZE, percentile: float = OOD_PERCENTILE,
                          exact: bool = False) -> float | None:
        """The novelty above which a query is out of distribution (unlike anything the memory holds), for k
        neighbours (among `labels`, if given): compare a result's `novelty` with it.

            >>> t = mem.novelty_threshold(k=50)
            >>> [r for r in mem.classify(paths, k=50) if r.novelty > t]      # the unfamiliar images

        Calibrated on the memory itself, by the rule the HTTP service's `out_of_distribution` follows
        (`vmem.novelty`): the first `sample_size` points in id order (a pseudo-random sample: ids hash the
        sources), hard-pruned ones left out, each query the memory with its own point left out, and the threshold
        is the `percentile` percentile of their novelty. So about 1 % of images like the memory's own are
        flagged at the defaults. A query restricted to some labels has its novelty measured among those labels'
        points only, so its threshold comes from those points too (the whole memory's would flag most of them).
        `k` None is the memory's vote settings' k (tuned, else 50), as `classify` reads it; `exact` searches as
        `classify(exact=True)` does. One batch search of the sample (~0.2 s at 20,000 points): compute it once
        per k and label set, not per query.

        Returns:
            The threshold, or None when fewer than 2 sampled points can be searched (nothing to compare with).

        Raises:
            ValueError: k outside 1-1000, sample_size below 2, percentile outside 0-100.
        """
        check_calibration(sample_size, percentile)
        k = self.vote_settings(k=k).k  # the memory's when None; 1-1000, as classify's
        chosen = list(dict.fromkeys(self.stored_labels(labels))) if labels else None
        store = self.store
        # Point ids are UUIDv5 hashes of sources, and scrolling goes in id order, so the first page is a
        # pseudo-random sample of the memory, whatever order it was built in; the same among labels.
        if chosen is None:
            sample = next(iter(store.scroll(batch_size=sample_size, with_vectors=True)), [])
        else:
            ids = sorted(i for label in chosen for i in store.ids_where(label=label))[:sample_size]
            sample = store.retrieve(ids, with_vectors=True)
        # Hard-pruned points are out of every search, and are by their pruning atypical: not queries to learn from.
        sample = [p for p in sample if p.vector is not None and not p.payload.get(EXCLUDED_KEY)]
        if len(sample) < 2:
            return None
        novelties: list[float] = []
        # A page of the sample at a time: 256 rows of 1,000 neighbours, payloads and all, held 240 MB at once
        for at in range(0, len(sample), NOVELTY_PAGE):
            page = sample[at : at + NOVELTY_PAGE]
            hits = store.query_batch(np.stack([p.vector for p in page]), k + 1, chosen, exact)  # type: ignore[misc]  # vectors: kept above
            novelties += self_excluded_novelties([p.id for p in page], [[h.id for h in row] for row in hits],
                                                 [[h.similarity for h in row] for row in hits], k)
        return threshold_of(novelties, percentile)

    def classify(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        rule: VoteRule | str | None = None,
        alpha: float | None = None,
        tau: float | None = None,
        labels: Sequence[str] | None = None,
        rerank: bool = False,
        template: str | None = None,
        sources: Sequence[str | None] | None = None,
        exact: bool = False,
        dmn_stream: str | None = None,
        dmn: Any = None,
        why_not: str | None = None,
        min_confidence: float | None = None,
    ) -> list[Classification]:
        """Classify images (paths, bytes, PIL images or numpy arrays) from their nearest labelled neighbours.

        Args:
            images: the queries, a list of them (a 4-d array is a batch of images, a 1-d array of paths a list of
                paths); every one must decode (use `classify_many` to skip bad ones).
            k: neighbours that vote (default: the memory's tuned k, else 50).
            rule: plurality | distance | softmax | rank (default: tuned, else rank) | dmn (Dual Memory
                Networks, see `vmem.dmn_classifier`; k, alpha and tau do not apply).
            labels: only neighbours with these labels take part.
            rerank: ask the VLM re-ranker; falls back to the vote with a reason.
            template: the re-ranker's prompt template (with `rerank`; without it, a ValueError).
            dmn_stream: rule dmn: the named dynamic memory to write to and read (None: off).
            dmn: rule dmn: `DmnOptions` or a dict of them.
            sources: what each answer's `source` says (default: the path, or None).
            why_not: a label the caller expected: each answer's `why_not` says why the vote did not answer it
                (its nearest points and their ranks, its vote against the winner's, a k at which it wins, the
                reason in a line). One more search among its points; a deeper one where they lie past the k.
            min_confidence: an answer whose `confidence` (the vote share of its label) is under this is marked
                `unsure`, its label kept as a suggestion and `unsure_reason` saying why: the ones to send to a
                person. `vmem eval` gives the threshold that keeps a target accuracy (its table.md).

        Returns:
            One `Classification` per image, in order.

        Raises:
            vmem.ImageDecodeError: an image does not decode (nothing is classified).
            vmem.NoSuchLabelsError: no point passes the label filter, or has the `why_not` label.
            vmem.NothingToSearchError: the memory holds no point a search can return (empty, or all hard-pruned).
            vmem.UnknownTemplateError, vmem.TemplateLoadError: with `rerank`, before any image is embedded.
            ValueError: options that do not fit, in a line naming the argument and what it takes (k=0, an unknown
                rule: "k=0: k takes a whole number of neighbours from 1 to 1000"); one image, not a list: TypeError.

        Example:
            >>> [res] = mem.classify(["cat.jpg"], k=50, min_confidence=0.9)
            >>> res.label, res.confidence, res.unsure, res.neighbors[0].source   # the answer, and the image behind it
        """
        images = _image_list(images, "classify")
        sources = _source_list(sources, len(images), "classify")
        check_min_confidence(min_confidence)
        self._refresh_for_reading()
        settings = self._vote_or_dmn(rule, k, alpha, tau, dmn_stream, dmn)  # before any image is decoded
        labels = self.stored_labels(labels)
        self._check_label_filter(labels, settings)
        why_not = self.check_why_not(why_not, labels, settings is None)
        self.check_template(rerank, template)
        # Embedded from the inputs as given: the preprocessing decodes each once (a plain JPEG by the fast path).
        # Decoded to PIL images here first, they were decoded twice; only the re-ranker needs those.
        vectors = self.featurizer.embed(images)
        if sources is None:
            sources = [str(im) if isinstance(im, str | Path) else None for im in images]
        asked_at = self.answer_state() if self.answer_log is not None else None
        results = self._classify_embedded(vectors, lambda: [self.decode(im) for im in images], sources, settings,
                                          labels=labels, rerank=rerank, template=template, exact=exact,
                                          dmn_stream=dmn_stream, dmn=dmn, why_not=why_not)
        results = _judged(results, min_confidence)  # before the log: it keeps which answers were unsure
        if self.answer_log is not None:
            self.log_answers(results, [_asked(im) for im in images], asked_at=asked_at)
        return results

    def classify_many(
        self,
        images: Sequence[str | Path],
        batch_size: int = 64,
        k: int | None = None,
        rule: VoteRule | str | None = None,
        alpha: float | None = None,
        tau: float | None = None,
        labels: Sequence[str] | None = None,
        rerank: bool = False,
        template: str | None = None,
        exact: bool = False,
        dmn_stream: str | None = None,
        dmn: Any = None,
        progress: Callable[[int], None] | None = None,
        why_not: str | None = None,
        min_confidence: float | None = None,
    ) -> tuple[list[Classification], list[FailedImage]]:
        """Classify files like `classify`, skipping (and reporting) the ones that do not decode. `progress` is
        called with the images embedded since its last call (e.g. `tqdm(total=len(paths)).update`), as `build`'s.

        Returns:
            (one `Classification` per file that decoded, in order; the files that did not, each with the reason).

        Raises:
            TypeError: an image that is no path (`classify` takes images in memory); the rest as `classify`.

        Example:
            >>> results, failed = mem.classify_many(sorted(glob.glob("photos/*.jpg")), min_confidence=0.9)
            >>> [(r.source, r.label) for r in results if r.unsure]               # the ones for a person to check
        """
        check_min_confidence(min_confidence)
        listed = _image_list(images, "classify_many")
        if (bad := next((i for i, p in enumerate(listed) if not isinstance(p, str | Path)), None)) is not None:
            raise TypeError(f"classify_many reads files: image {bad} is a {type(listed[bad]).__name__}; "
                            "classify takes images in memory")
        paths = [str(p) for p in listed]
        self._refresh_for_reading()
        settings = self._vote_or_dmn(rule, k, alpha, tau, dmn_stream, dmn)  # before any image is embedded
        labels = self.stored_labels(labels)
        self._check_label_filter(labels, settings)
        why_not = self.check_why_not(why_not, labels, settings is None)
        self.check_template(rerank, template)
        res = self.featurizer.embed_many(paths, batch_size=batch_size, on_batch=progress)
        ok_sources = [paths[i] for i in res.indices]
        asked_at = self.answer_state() if self.answer_log is not None else None
        results = self._classify_embedded(
            res.features, lambda: [self.decode(src) for src in ok_sources], ok_sources, settings, labels=labels,
            rerank=rerank, template=template, exact=exact, dmn_stream=dmn_stream, dmn=dmn, why_not=why_not)
        results = _judged(results, min_confidence)  # before the log: it keeps which answers were unsure
        if self.answer_log is not None:
            self.log_answers(results, [_asked(src) for src in ok_sources], asked_at=asked_at)
        return results, [FailedImage(source=f.source, reason=f.reason) for f in res.failures]

    def _vote_or_dmn(self, rule: VoteRule | str | None, k: int | None, alpha: float | None, tau: float | None,
                     dmn_stream: str | None, dmn: Any) -> VoteSettings | None:
        """The vote settings a classify call means, or None for rule dmn; ValueError for an option it would not use,
        or rule dmn's options that are none (before any image is embedded)."""
        if _uses_dmn(rule, k, alpha, tau, dmn_stream, dmn):
            _dmn_options(dmn)
            return None
        return self.vote_settings(rule, k, alpha, tau)

    def check_template(self, rerank: bool, template: str | None) -> None:
        """An unknown or broken template is refused before any image is embedded (minutes for a folder), not
        when the re-ranker first reads it."""
        if template is not None and not rerank:  # as the CLI refuses --template without --rerank
            raise ValueError(f"template {quoted(template)} chooses the re-ranker's prompt: give rerank=True too")
        reranker = self._get_reranker() if rerank else None
        if reranker is not None and hasattr(reranker, "template"):
            reranker.template(template)

    def _check_label_filter(self, labels: Sequence[str] | str | None, settings: VoteSettings | None) -> None:
        """ValueError for a vote's label filter that no memory point passes: every answer would be None.

        Labels the memory lacks beside ones it has are let through (a benchmark's class list, of which a
        memory may hold a part); the CLI and HTTP refuse any. Rule dmn may answer from text alone: not checked.
        """
        if labels is None or settings is None:
            return
        wanted = [labels] if isinstance(labels, str) else list(labels)
        if not wanted:
            raise ValueError("labels is empty: give the labels to choose among, or None for all")
        if any(self.store.count(label=label, searchable=True) for label in dict.fromkeys(wanted)):
            return
        if any(self.store.count(label=label) for label in dict.fromkeys(wanted)):
            raise NoSuchLabelsError(self.unknown_labels_message(wanted, "vmem labels")
                                    + ": every answer would be empty")
        hints = self.name_hints(wanted)
        shown = ", ".join(map(repr, wanted[:5])) + (", ..." if len(wanted) > 5 else "")
        raise NoSuchLabelsError(f"the memory has none of the labels {shown}"
                                + (f" ({hints})" if hints else "") + ": every answer would be empty")

    def _classify_embedded(self, vectors: np.ndarray, images: Callable[[], list[Any]],
                           sources: Sequence[str | None], settings: VoteSettings | None, *,
                           labels: Sequence[str] | None, rerank: bool, template: str | None, exact: bool,
                           dmn_stream: str | None, dmn: Any, why_not: str | None = None) -> list[Classification]:
        """The one decision path after embedding: a vote rule (`settings`) or dmn (None), then the re-ranker."""
        if settings is None:
            results = self.classify_dmn(vectors, dmn_stream, dmn, labels, sources, exact)
        else:  # refreshed by the caller
            results = self._vote_vectors(vectors, settings, labels, sources, exact, why_not)
        if rerank:  # decoded images are only needed (and only loaded) for the re-ranker
            results = self._rerank_all(images(), vectors, results, template, labels)
            for res in results:  # the contrast is of the vote, which the VLM may have overruled
                if res.why_not is not None:
                    note_rerank(res, self.store.meta.label_names)
        return results

    @property
    def dmn(self) -> Any:
        """The `dmn` rule's classifier (`vmem.dmn_classifier.DmnClassifier`): streams, reset, classify."""
        from .dmn_classifier import DmnClassifier

        with self._featurizer_lock:
            if getattr(self, "_dmn", None) is None:
                # One classifier per store, whichever facade over it asks first, so a stream has one in-process
                # state: two would each hold their own copy of it and save over each other's updates.
                shared = self.store.__dict__.get("_dmn_classifier")
                if shared is None:  # the encoder is loaded on use
                    fresh = DmnClassifier(self.store, lambda: self.featurizer)
                    shared = self.store.__dict__.setdefault("_dmn_classifier", fresh)
                self._dmn = shared
            return self._dmn

    def classify_dmn(self, vectors: np.ndarray, stream: str | None = None, options: Any = None,
                     labels: Sequence[str] | None = None, sources: Sequence[str | None] | None = None,
                     exact: bool = False) -> list[Classification]:
        """Rule `dmn` over already-embedded queries, in order (see `vmem.dmn_classifier`). NothingToSearchError
        where only the labelled memory answers (mode memory-only) and it holds no point a search can return."""
        opts = _dmn_options(options)
        # The readouts take cos(q, k) as <q, k> of unit vectors: a query 3x as long read out sharper, and its stream
        # kept it so. Unit rows, as the engines compare every vote's query (an encoder's are unit already).
        vectors = unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        # Only the labelled memory answers (no CLIP text classifier): as a vote, a memory with no point a search
        # can return is refused, not answered label None (counted only then)
        memory_only = self.dmn.resolve_mode(opts.mode) == "memory-only"
        try:
            results = self._named(self.dmn.classify(vectors, stream, opts, labels, sources, exact))
        except ValueError:  # e.g. "the memory holds no labels": an empty memory is said as a vote says it
            if memory_only:
                self._check_searchable()
            raise
        if memory_only and not all(r.neighbors for r in results):
            self._check_searchable()
        return results

    # ------------------------------------------------------------------ label names

    @property
    def label_names(self) -> dict[str, str]:
        """label -> name, for labels that say nothing to a person or a VLM (WordNet ids: "n02124075" is
        "Egyptian cat"). Results carry them as `label_name`; the re-ranker shows Gemini the names."""
        return dict(self.store.meta.label_names)

    def set_label_names(self, names: Mapping[str, str], replace: bool = False) -> None:
        """Name labels (merged with the names already stored, or all of them replaced); stored with the memory.

        Names may be given for labels the memory does not hold yet (a class added later keeps its name).
        """
        given = {str(label): str(name).strip() for label, name in names.items()}
        # Keyed as the memory spells its labels (a names file read canonically, an older memory's decomposed café)
        clean = dict(zip(self.stored_labels(list(given)), given.values(), strict=True))
        if empty := [label for label, name in clean.items() if not name]:
            raise ValueError(f"empty name for label {quoted(empty[0])}: leave the label out instead")
        self.refresh()  # merged with the names stored now, not those this process read earlier
        before = self.store.meta.label_names
        after = clean if replace else {**before, **clean}
        if after == before:
            return  # names sent again as they are (a nightly sync): no write, and no journal entry of 50,000 names
        # The names that came or changed (a journal entry had held every name given, changed or not)
        changed = {label: name for label, name in clean.items() if before.get(label) != name}
        dropped = sorted(before.keys() - after.keys())
        detail = {"names": changed, "replace": replace, **({"dropped": dropped} if dropped else {})}
        with self._noted("name", {}, detail=detail) as note:
            with self.store.meta_edit() as meta:
                meta.label_names = after
            if self._journal("name", detail=detail):
                self.store.journal.settled(note)

    def name_hints(self, texts: Sequence[str]) -> str:
        """For texts that are label names rather than labels ("Egyptian cat" for n02124075), which labels they
        name, as a sentence for an error message ("" if none is): label filters take labels."""
        return name_hints(self.store.meta.label_names, texts)

    def unknown_labels_message(self, unknown: Sequence[str], listed_by: str) -> str:
        """What the CLI and HTTP say of labels the memory lacks: which they are, the labels they name when they
        are names ("Egyptian cat" for n02124075), and some labels it has, with where to see them all."""
        known = self.store.label_counts()
        pruned = [f"{quoted(label)} ({counted(known[label], 'point')})"
                  for label in unknown if known.get(label)]
        said = ("every point of label " + ", ".join(pruned) + " is excluded by hard pruning, and no search returns"
                " it (vmem prune --undo restores them)") if pruned else ""
        if not (missing := [label for label in unknown if not known.get(label)]):
            return said
        text = f"the memory has no label {', '.join(map(quoted, missing))}"
        if hints := self.name_hints(missing):
            text += f" ({hints})"
        if not known:
            return text + ": it holds no points"
        # stored labels of anyone's making: escaped, as the CLI prints labels (a "\u202etac" read "cat" here)
        some = ", ".join(map(visible, list(known)[:10])) + (", ..." if len(known) > 10 else "")
        text += f": it has {counted(len(known), 'label')} ({some}; {listed_by} lists them)"
        return text + (f"; {said}" if said else "")

    def _named(self, results: list[Classification]) -> list[Classification]:
        """`results` with `label_name` filled in from the memory's label names (in place)."""
        names = self.store.meta.label_names
        for res in results:
            res.label_name = names.get(res.label) if res.label is not None else None
            for n in res.neighbors:
                n.label_name = names.get(n.label)
        return results

    # ------------------------------------------------------------------ re-ranking

    @property
    def reranker(self) -> Any:
        """The re-ranker in use (None until the default one is built, or when turned off)."""
        return self._reranker

    @reranker.setter
    def reranker(self, reranker: Any) -> None:
        """Re-rank with this object from now on (None: off); deleting or relabelling points drops its cached
        answers citing them."""
        previous = self._reranker
        if previous is not None and hasattr(previous, "invalidate"):
            # Its cache is no longer this memory's to keep up: once closed, its listener raised after each delete.
            for listeners in (self._forget_listeners, self._relabel_listeners):
                listeners[:] = [f for f in listeners if f != previous.invalidate]
        self._reranker = reranker
        self._auto_reranker = False
        if reranker is not None and hasattr(reranker, "invalidate"):
            self.on_forget(reranker.invalidate)
            self.on_relabel(reranker.invalidate)

    def _get_reranker(self) -> Any:
        with self._reranker_lock:
            if self._reranker is None and self._auto_reranker:
                from reranker import make_reranker

                self.reranker = make_reranker("gemini")
            return self._reranker

    def _rerank_all(self, images: Sequence[Any], vectors: np.ndarray | None, results: list[Classification],
                    template: str | None, labels: Sequence[str] | None) -> list[Classification]:
        """Ask the re-ranker about every result at once (it bounds its own concurrency)."""
        reranker = self._get_reranker()
        if reranker is None:
            return [r.model_copy(update={"fallback_reason": "re-ranking is not configured"}) for r in results]
        from reranker import RerankNeighbor, RerankRequest

        roots = self.shown_roots  # once: the memory's own are read from its settings
        # Uploads a service kept as sent (VMEM_KEEP_UPLOADS) are shown to Gemini from the memory's folder
        folder = local_folder(self.store.location)

        requests = [RerankRequest(
            image=load_image(img),
            neighbors=[RerankNeighbor(**n.model_dump()) for n in res.neighbors],
            scores=res.scores, vote_label=res.label,
            vector=None if vectors is None else np.asarray(vectors[i], dtype=np.float32),
            labels=list(labels) if labels else None, source=res.source, template=template,
            label_names=self.store.meta.label_names or None,
            source_roots=roots, keep_uploads_in=None if folder is None else str(folder))
            for i, (img, res) in enumerate(zip(images, results, strict=True))]
        batch = reranker.rerank_many(requests, store=self.store)
        out = []
        for res, o in zip(results, batch.outcomes, strict=True):
            usage = {**o.usage.model_dump(), "cached": o.cached, "cache_checked": o.cache_checked,
                     "attempts": o.attempts,
                     "latency_s": round(o.latency_s, 4), "error": o.error}
            out.append(res.model_copy(update={
                "label": o.label if o.reranked else res.label, "reranked": o.reranked,
                "fallback_reason": o.fallback_reason, "template": o.template,
                "template_hash": getattr(o, "template_hash", None), "model": o.model,
                "usage": usage, "trace": o.trace or None}))
        return self._named(out)

    # ------------------------------------------------------------------ editing

    def build(self, items: Sequence[LabelledImage], batch_size: int = 64, num_workers: int | None = None,
              tags: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None,
              feature_cache: str | Path | None = None, relabel: bool = False,
              skip_forgotten: bool = False) -> BuildReport:
        """Embed and insert labelled images; resumable, bad images skipped and reported.

        An image already in memory under another label keeps its stored label and is reported
        (`report.relabelled`), unless `relabel`: then it takes the listed one, without being embedded again. An
        image the journal says was forgotten from this memory is added again and reported
        (`report.forgotten_before`), unless `skip_forgotten`: then it is left out.

        Returns:
            A `retrieval.BuildReport`: counts added per label, already there, failed (`report.failed`, each image
            with its reason); `report.summary()` says it in words. Interrupted (Ctrl-C), the batches written stay,
            journaled: run it again to go on.

        Example:
            >>> report = mem.build(read_labelled("data/train"), progress=tqdm(total=n).update)
            >>> print(report.summary())
        """
        self.check_added_labels(self.stored_labels([it.label for it in items]))
        cache = FeatureCache(feature_cache, self.featurizer) if feature_cache else None
        root = self._record_source_roots([it.source for it in items])
        report = BuildReport()
        selector = {"source_root": root} if root else {}
        entries = _AddEntries(self._journal, selector)

        def journal_the_adds(**more: Any) -> None:
            entries.journal(report.added_per_label, {
                "build": {"listed": report.total, "already_in_memory": report.skipped_existing,
                          "failed": len(report.failed), **more}, **({"tags": tags} if tags else {}),
                **add_note_detail(note)})

        def batch_done(n: int) -> None:
            if progress is not None:
                progress(n)
            if entries.due():
                journal_the_adds(running=True)

        # Noted before its first point: each batch's points are listed beside the note before they are written, and
        # the memory's next opening journals those a kill left held and unjournaled (`Journal.settle`)
        with self._noted("add", {}, selector=selector, detail={
                "build": {"listed": report.total or len(items), "killed": True}, **({"tags": tags} if tags else {})
        }) as note, self.store.adding(note):
            try:
                build_memory(self.store, self.featurizer, items, batch_size, num_workers, tags, batch_done, cache,
                             report, skip_forgotten=skip_forgotten)
            except BaseException:
                # Stopped (Ctrl-C, the server gone): what was added since the last entry is journaled now.
                journal_the_adds(interrupted=True)
                raise
            journal_the_adds()
            if entries.all_journaled:
                self.store.journal.settled(note)
        if relabel and report.relabelled:
            by_label: dict[str, list[str]] = {}
            for source, _, listed in report.relabelled:
                by_label.setdefault(listed, []).append(point_id_for(source))
            for listed, ids in by_label.items():
                self._relabel_points(ids, listed, {"build": True})
            report.relabel_applied = True
        t0 = time.perf_counter()
        self.store.optimize()
        report.index_seconds = time.perf_counter() - t0
        return report

    @property
    def source_roots(self) -> list[str]:
        """The folders the memory's images were read from: the service shows thumbnails, and the re-ranker sends
        Gemini neighbours' images, only from under them (a point's source is data, and may name any file).

        A memory made before vmem recorded them (no entry at all) has them recorded now, once, from its points'
        files, as its build would have: upgraded, it sent Gemini no neighbour image and the page showed none."""
        if "source_roots" not in self.store.meta.settings:
            with self._edit_lock:
                if "source_roots" not in self.store.meta.settings:
                    self._record_source_roots(self._all_sources())
                    if "source_roots" not in self.store.meta.settings:  # none to record, and none later
                        with self.store.meta_edit() as meta:
                            meta.settings["source_roots"] = []
                    log.info("recorded the folders of this memory's images, made before vmem kept them: %s",
                             ", ".join(self.store.meta.settings["source_roots"]) or "none (no local files)")
        return list(self.store.meta.settings.get("source_roots", []))

    @property
    def shown_roots(self) -> list[str]:
        """The folders whose images are shown (thumbnails) and sent to the re-ranker: `image_roots` where a service
        narrowed them (VMEM_SOURCE_ROOTS), else the memory's own `source_roots`."""
        return list(self.image_roots) if self.image_roots is not None else self.source_roots

    def _all_sources(self) -> list[str]:
        return [p.source for page in self.store.scroll(batch_size=4096) for p in page]

    def _record_source_roots(self, sources: Sequence[str]) -> str | None:
        """Remember the directory a build read from: the service serves thumbnails only from such roots.
        Returns it (None: no local file)."""
        root, wanted = _source_roots_of(sources)
        if root is not None:
            self._add_source_roots(wanted)
        return root

    def _add_source_roots(self, roots: Sequence[str]) -> None:
        """Record folders as the memory's image folders (`source_roots`)."""
        if set(roots) <= set(self.store.meta.settings.get("source_roots", [])):
            return
        self.refresh()  # the metadata is written whole: another process's latest names and settings go in it
        if added := [r for r in dict.fromkeys(roots) if r not in self.store.meta.settings.get("source_roots", [])]:
            with self.store.meta_edit() as meta:
                meta.settings["source_roots"] = [*meta.settings.get("source_roots", []), *added]

    def add(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | str,
        sources: Sequence[str] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[FailedImage]]:
        """Add labelled images now. A new label is simply new points (`add_images` says what each image became).
        `labels`: one per image, or one label for all of them. `sources`: one per image, the name each point is
        known by (its id derives from it) in place of the path or the content's hash, stored as given; a
        relative prefix (`forget(source_prefix="camera/")`) chooses such names as given as well as the files
        under the current folder.

        Returns:
            (the point id of each image that decoded, in order; images that failed to decode). The same
            image twice is one point (its id twice); given two labels, it is a ValueError and nothing is added.

        Raises (before any image is embedded; nothing added):
            TypeError: one image rather than a list, something that is no image, or a label that is no text (a
                class index: give its name).
            ValueError: labels neither one nor one per image; a label that is another label's name.
            vmem.MemoryStoreError: the memory is closed, or opened read-only.

        Example:
            >>> ids, failed = mem.add(["okapi1.jpg", "okapi2.jpg"], "okapi")    # a new class is just new points
        """
        result = self.add_images(images, labels, sources, tags)
        return result.ids, result.failed

    def add_images(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | str,
        sources: Sequence[str] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> AddResult:
        """Add labelled images now, as `add`, and say which were added and which were already in the memory.

        An image already in the memory (the same source: path, or bytes and name) is not embedded or added
        again, as `vmem build` skips it. Given another label than the one it has, it is relabelled, as `relabel`
        does it (journaled, keeping the label it had): adding it again used to overwrite the point silently,
        its earlier label and pruning marks gone and nothing recorded but an "add". An upload (bytes, keyed
        `upload:sha256:<digest>[:name]`) is the same image under any name: the point that holds its bytes
        answers for it (`sources` says under which name), where a second point had voted twice for one image.
        Files are keyed by path: identical files at two paths are two points (`forget_like` finds such copies).
        """
        self.store.check_writable()  # a memory opened read-only: refused before any image is embedded
        images = _image_list(images, "add")
        sources = _source_list(sources, len(images), "add")
        labels = _label_list(labels, len(images), "add")
        # As HTTP, manifests and relabel take them: " cat " is the label cat (an outer space is no part of a
        # label, and `relabel` could never give it back).
        # ... and "café" is the label the memory has, however it is spelled (`stored_labels`)
        labels = self.stored_labels(labels)
        if problem := next(filter(None, map(label_problem, dict.fromkeys(labels))), None):
            raise ValueError(problem)
        self.check_added_labels(labels)
        if sources is None:
            sources = [normalize_source(im) if isinstance(im, str | Path)
                       else upload_source(im) if isinstance(im, bytes | bytearray) else
                       upload_source(load_image(im).tobytes()) for im in images]
        ok_imgs, ok_labels, ok_sources, failed = [], [], [], []
        for im, lab, src in zip(images, labels, sources, strict=True):
            try:
                ok_imgs.append(self.decode(im))
                ok_labels.append(lab)
                ok_sources.append(src)
            except ImageDecodeError as exc:
                failed.append(FailedImage(source=src, reason=str(exc)))
        # One image is one point: the same image twice is added once, and with two labels refused. An upload's
        # key is its bytes, whatever its name.
        keys = [upload_content(src) or src for src in ok_sources]
        keep, conflicts = first_occurrences(keys, ok_labels)
        if conflicts:
            j, i = conflicts[0]
            twice = ok_sources[i] if ok_sources[i] == ok_sources[j] else f"{ok_sources[j]} and {ok_sources[i]}"
            raise ValueError(f"the same image ({visible(twice)}) is given twice, labelled {quoted(ok_labels[j])} and "
                             f"{quoted(ok_labels[i])}: an image is one point with one label")
        id_of = {keys[j]: point_id_for(ok_sources[j]) for j in keep}
        source_of = {keys[j]: ok_sources[j] for j in keep}
        stored = self.store.existing_labels(list(id_of.values()))

        def held_elsewhere(rows: Sequence[int]) -> None:
            """Point the uploads among `rows` not stored under their own source at a point holding their bytes."""
            for key, (pid, label, src) in self._upload_holders(
                    {keys[j]: ok_labels[j] for j in rows if id_of[keys[j]] not in stored}).items():
                id_of[key], source_of[key], stored[pid] = pid, src, label

        held_elsewhere(keep)
        new = [j for j in keep if id_of[keys[j]] not in stored]
        if new:
            self.featurizer.embed_as_stored()  # as a build embeds them: an image added holds its build's vector
        vectors = self.featurizer.embed([ok_imgs[j] for j in new]) if new else None
        self._record_source_roots([ok_sources[j] for j in new])  # before they are searchable, as thumbnails
        with self._edit_lock:  # checked again: another thread may have added some of them while these embedded
            stored |= self.store.existing_labels([id_of[keys[j]] for j in new])
            held_elsewhere(new)
            new_rows = [r for r, j in enumerate(new) if id_of[keys[j]] not in stored]
            new_classes = self._new_imagenet_classes({ok_labels[new[r]] for r in new_rows})
            added = []
            if vectors is not None and new_rows:
                # Noted first, as a build is: a kill between the points and their entry is journaled at the next
                # opening
                with self._noted("add", {}, detail={"tags": tags} if tags else {}) as note, self.store.adding(note):
                    added = self.store.add(vectors[new_rows], [ok_labels[new[r]] for r in new_rows],
                                           [ok_sources[new[r]] for r in new_rows], tags)
                    # journaled under the lock too (see forget): a backup holds the points with their line, or
                    # neither
                    if self._journal("add", points=len(added),
                                     labels=label_counts([ok_labels[new[r]] for r in new_rows]),
                                     detail={**({"tags": tags} if tags else {}), **add_note_detail(note)}):
                        self.store.journal.settled(note)
        if added:
            self._name_imagenet_classes(new_classes)
        relabel: dict[str, list[str]] = {}  # new label -> ids of images already stored under another
        just_added = set(added)
        for j in keep:
            pid = id_of[keys[j]]
            if pid in stored and pid not in just_added and stored[pid] != ok_labels[j]:
                relabel.setdefault(ok_labels[j], []).append(pid)
        relabelled: dict[str, str] = {}
        for to, ids in relabel.items():
            changed = self._relabel_points(ids, to, _selector(ids, None, None))
            relabelled |= {pid: stored[pid] for pid in changed}
        return AddResult(ids=[id_of[key] for key in keys], sources=[source_of[key] for key in keys], failed=failed,
                         added=added, relabelled=relabelled)

    def _upload_holders(self, labels: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
        """For uploads' contents (`upload_content` -> the label sent), a point holding those bytes under any name:
        (id, label, source), one with the label sent where there is one. On the sources' prefix index: 0.04 ms a
        lookup at 100,000 points (docs/benchmarks/upload_dupes.py), beside an image's embedding (~200 ms)."""
        holders: dict[str, tuple[str, str, str]] = {}
        for content, label in labels.items():
            if upload_content(content) != content:  # a path, a URI, a name given in its place
                continue
            points, _ = self.store.page(source_prefix=content, limit=64)
            # The digest ends the prefix: a source that goes on but with a name is another upload's
            points = [p for p in points if p.source == content or p.source.startswith(content + ":")]
            if points:
                p = next((p for p in points if p.label == label), points[0])
                holders[content] = (p.id, p.label, p.source)
        return holders

    def _new_imagenet_classes(self, labels: set[str]) -> dict[str, str]:
        """vmem's own names of the ImageNet-1k WordNet ids among `labels` that the memory neither names nor holds a
        point of: classes an add or relabel is about to make (`_name_imagenet_classes` names them once made)."""
        builtin = _imagenet_names()
        return {label: builtin[label] for label in labels
                if label in builtin and label not in self.store.meta.label_names and not self.store.count(label=label)}

    def _name_imagenet_classes(self, names: dict[str, str]) -> None:
        """Name new classes as `vmem build` names a folder of ImageNet ids: a class added or relabelled over HTTP or
        from Python as n02123045 had shown as that id alone, on the page and to the re-ranker (Gemini knows no
        WordNet id), where a build showed "tabby cat". A class the memory held already keeps what it had: a
        build of a folder not all ImageNet ids leaves them unnamed on purpose."""
        if names := {label: name for label, name in names.items() if label not in self.store.meta.label_names}:
            self.set_label_names(names)

    def answer_state(self) -> tuple[str, str | None]:
        """When answers are asked for, and the time of the memory's newest edit then (`edit_at`), for the answer
        log: taken before the search. Taken as the answer was logged, after a re-rank's seconds, a forget made
        meanwhile read as made before the answer, and `vmem answers --forgotten` missed a decision that used
        the point."""
        return now(), self.store.journal.newest_at

    def log_answers(self, results: Sequence[Classification], asked: Sequence[Asked], client: str | None = None,
                    to: AnswerLog | None = None, asked_at: tuple[str, str | None] | None = None) -> None:
        """Log answers to `to` (default: `answer_log`), as given by this object's `via`, with the memory's key:
        `asked_at` (`answer_state` before the search; default now) says when they were asked and the time of
        the memory's newest edit then (`edit_at`: what `vmem history` lists after it came after the question)."""
        if (to := to or self.answer_log) is not None:
            at, edit_at = asked_at or self.answer_state()
            to.record(results, asked, via=self.via, client=client, memory=self.store.key, edit_at=edit_at, at=at,
                      by=KEY_NAME.get())

    def _journal(self, op: JournalOp, ids: Sequence[str] = (), **fields: Any) -> bool:
        """Record an edit that has been made, as made by this object's `via`; whether it was recorded."""
        self._edits += 1
        return self.store.journal.record(op, ids, via=self.via, by=KEY_NAME.get(), **fields)

    @contextmanager
    def _noted(self, op: NotedOp, before: Mapping[str, str], **fields: Any) -> Iterator[PendingEdit | None]:
        """`MemoryStore.noted`, as made by this object's `via` (and the request's API key)."""
        with self.store.noted(op, before, via=self.via, by=KEY_NAME.get(), **fields) as note:
            yield note

    def history(self, point_id: str | None = None, source: str | Path | None = None, op: JournalOp | None = None,
                limit: int | None = None, label: str | None = None, since: str | None = None,
                by: str | None = None, until: str | None = None, cursor: str | None = None) -> list[JournalEntry]:
        """The memory's edits, newest first: every add, forget, relabel, erase, naming, prune, tune and copy made
        through vmem, when, by which process, and (forget, relabel) the ids of the points changed.

        `point_id` or `source` (the image's path or URI, as it was added): only the edits that forgot or
        relabelled that point. Whether it is in the memory now, and since when, is `point(id)`. `label`: only
        the edits that touched the label's points (added, forgot, relabelled from or to it, named it).
        `since`: only edits at or after this ISO 8601 time or date (UTC when it names no zone). `by`: only the
        edits made over HTTP with the API key of this name (`default`: VMEM_API_KEY's). `until`: only edits at or
        before this time (a date: through that day). Past the newest `limit`, `history_page` gives the cursor of
        the next page (`cursor`).

        Example:
            >>> [e.at for e in mem.history(source="/data/cats/tom.jpg", op="forget")]   # when it was forgotten
            >>> mem.history(by="alice", limit=20)   # what the key named alice changed lately

        Raises ValueError for a filter that is none (an op, a time, an id), a `since` after `until`, or a cursor
        that is none.
        """
        return self.history_page(point_id, source, op, limit, label, since, by, until, cursor).entries

    def history_page(self, point_id: str | None = None, source: str | Path | None = None,
                     op: JournalOp | None = None, limit: int | None = None, label: str | None = None,
                     since: str | None = None, by: str | None = None, until: str | None = None,
                     cursor: str | None = None) -> HistoryPage:
        """`history`, with how many older edits match beyond `limit` (to say "... and 1,234 earlier") and the cursor
        of the next page (`next_cursor`, None after the last): given as `cursor` with the same filters, the edits
        older than this page's, each once (the entries of one edit share its time: a forget of more than 100,000
        points is several).

        Example:
            >>> page = mem.history_page(op="forget", limit=100)
            >>> while page.next_cursor:  # every forget, 100 at a time
            ...     page = mem.history_page(op="forget", limit=100, cursor=page.next_cursor)
        """
        if point_id is not None and source is not None:
            raise ValueError("give a point id or a source, not both")
        if source is not None:
            point_id = self.point_id_of_source(str(source))
        elif point_id is not None:
            point_id = parse_point_id(point_id)
        query = _journal_query(op, point_id, self.stored_label(label) if label is not None else None, since, by,
                               until)
        return HistoryPage(**self.store.journal.page(query, limit, cursor)._asdict())

    def notes_left(self) -> list[LeftNote]:
        """The notes of edits begun and not journaled yet, oldest first: this opening journaled those of processes it
        knows ended, so on a memory on a Qdrant server these are of processes running on this host, or of processes
        on another host or container (`LeftNote.process`: nothing here tells whether they still run). A process
        killed in a container that never runs again, or one started again since (`docker restart`: same host name,
        a new pid namespace), leaves such a note for good: `settle_notes` journals it."""
        return self.store.journal.notes()

    def settle_notes(self, tokens: Sequence[str] = (), older_than: float | None = None) -> list[tuple[LeftNote, int]]:
        """Journal the edits of notes left by processes that an operator knows are gone (`notes_left`), as an
        opening journals those of processes it sees ended (what the memory shows made, at the edit's start, with
        `detail.journaled_at_open` and `detail.settled_by_hand`), and remove the notes. `tokens`: the notes named
        (a token, or a unique prefix of it of 6 or more characters); `older_than`: every note begun at least this
        many seconds ago, but those of processes running on this host. Returns each note settled with the points
        (labels named) journaled: 0 where its edit made nothing or its entry was written already.

        A note of a process still running elsewhere is its edit in progress: settled now, the edit is journaled as
        far as it went, and again by that process once it ends it. Name only notes whose process is surely gone.

        Raises:
            ValueError: neither tokens nor an age given; a token that names no note or several; a note named of a
                process running on this host (its edit in progress). Nothing is settled then.
        """
        if not tokens and older_than is None:
            raise ValueError("name the notes to settle (their tokens, as notes_left lists them) or an age")
        left = self.notes_left()
        chosen: dict[str, LeftNote] = {}
        for token in tokens:
            found = [n for n in left if len(token) >= 6 and n.note.token.startswith(token.lower())]
            if len(found) != 1:
                raise ValueError(f"no note {token!r} is left (vmem history --notes lists them)" if not found else
                                 f"{len(found)} notes begin with {token!r}: give more of the token")
            if (n := found[0]).process == "running":
                raise ValueError(f"the note {n.note.token} is of process {n.note.pid} on this host, which is running: "
                                 "its edit is in progress, for it to journal")
            chosen[n.note.token] = n
        if older_than is not None:
            cut = datetime.now(UTC) - timedelta(seconds=older_than)
            chosen.update((n.note.token, n) for n in left
                          if n.process != "running" and datetime.fromisoformat(n.note.begun) <= cut)
        with self._edit_lock:  # as an edit of this process: its own edits' entries are not interleaved with these
            return [(n, self.store.settle_note(n.note, by_hand=True))
                    for n in sorted(chosen.values(), key=lambda n: n.note.begun)]

    @staticmethod
    def _tell(listeners: list[PointsListener], ids: list[str], edit: str) -> None:
        """Call each listener with the ids an edit changed; a failing one is logged: the edit is made, and a
        cached answer a listener could not drop is checked against the memory when read (a full disk under the
        re-ranker's cache had turned a forget that was made into a 500, and skipped its erase)."""
        for listener in listeners:
            try:
                listener(ids)
            except Exception:
                log.error("after a %s of %d points (made): %r failed", edit, len(ids), listener, exc_info=True)

    def on_forget(self, listener: PointsListener) -> None:
        """Call `listener(ids)` after points are deleted (e.g. to drop cached answers citing them)."""
        self._forget_listeners.append(listener)

    def on_relabel(self, listener: PointsListener) -> None:
        """Call `listener(ids)` after points are given another label (e.g. to drop answers that voted with them)."""
        self._relabel_listeners.append(listener)

    def on_edited_elsewhere(self, listener: ElsewhereListener) -> None:
        """Call `listener(kinds)` when `refresh` finds that another process edited the memory (e.g. to drop
        every cached answer: which points it touched is not known here)."""
        self._elsewhere_listeners.append(listener)

    @contextmanager
    def refreshed(self) -> Iterator[frozenset[str]]:
        """Refresh once, for everything this thread reads inside the block: a request that classifies reads
        the edit marks once, not once per step (on a Qdrant server each read is a request). Yields what
        `refresh` found. Edits inside still refresh before they write, as they always do."""
        if getattr(self._refreshed_here, "active", False):
            yield frozenset()
            return
        changed = self.refresh()
        self._refreshed_here.active = True
        try:
            yield changed
        finally:
            self._refreshed_here.active = False

    def _refresh_for_reading(self) -> None:
        if not getattr(self._refreshed_here, "active", False):
            self.refresh()

    def refresh(self) -> frozenset[str]:
        """Take in what other processes changed in a memory they share with this one (a Qdrant server's).

        Searches always see the stored points; what this object keeps from them does not: label names and
        tuned settings are read again, and listeners (`on_edited_elsewhere`) are told. Returns what changed,
        "points" and/or "meta"; always nothing for an embedded memory (one process at a time). Classifying
        calls it first, at one more request to the server.
        """
        changed = self.store.edits_elsewhere()
        if changed:
            self._edits += 1  # what this object keeps of the points (a folder's listing) is outdated too
            log.info("the memory was edited by another process (%s)", ", ".join(sorted(changed)))
            for listener in self._elsewhere_listeners:
                listener(changed)
        return changed

    def forget(
        self,
        ids: Sequence[str] | None = None,
        label: str | None = None,
        source_prefix: str | None = None,
        erase: bool = False,
    ) -> int:
        """Delete points by id, by label, or by source prefix; returns how many went.

        A prefix that is a local folder also reaches the images its links lead to (`linked_sources`): a
        build through the links stored them under the targets' paths. Once this returns, no search returns
        them, and listeners have dropped what cited them. With `erase`, the memory's files are also
        rewritten without their vectors before it returns (`erase_forgotten`). An image and its copies, by
        what they look like rather than where they are: `forget_like`. Nothing to forget (a label the memory no
        longer holds: a forget asked again) returns 0; `chosen_points` lists what a forget would take.

        Raises:
            ValueError: none or more than one of ids, label and source_prefix; a label that is only another
                label's name (forgetting takes labels).
            vmem.NoSuchLabelsError: a label the memory never had (a misspelling), naming those spelled like it;
                one it had, all forgotten or relabelled since, returns 0.
            vmem.MemoryStoreError: the memory is closed or read-only; with `erase`, on a Qdrant server.

        Example:
            >>> mem.forget(label="okapi")                         # the class is gone: no search returns its points
            >>> mem.forget(ids=[res.neighbors[0].id])             # one mislabelled point an answer cited
        """
        if erase:
            self.check_erase_on_demand()
        if label is not None:
            self.check_chosen_label(label)
            self.check_label_held(label)
        targets = self._chosen_ids(ids, label, source_prefix, "forget")
        in_streams = self._stream_queries_of(targets)  # read before the points go
        n = self._forget_chosen(targets, _selector(ids, label, source_prefix), erase)[0]
        if in_streams is not None:
            # The forgotten images themselves, once queries through a stream: a photo classified with --dmn-stream
            # and then forgotten by its path or id was still there, its own feature. (The forget is made: logged.)
            try:
                if dropped := self.dmn.drop_similar(in_streams, _with_slack(1.0)):
                    log.info("dropped %d DMN stream entries of the images forgotten", dropped)
            except Exception:
                log.error("after a forget (made): the DMN streams kept the queries of the images forgotten",
                          exc_info=True)
        return n

    def _stream_queries_of(self, targets: list[str]) -> np.ndarray | None:
        """The DMN streams' query features that are the stored image of one of these points (similar to 1, give or
        take float16's rounding), or None where there are none: no stream, no such query. The targets' vectors are
        read a page at a time, and only where a stream holds queries."""
        if not targets:
            return None
        try:
            names = self.dmn.streams()
        except OSError:  # no home folder to keep streams in (NoHomeError): no stream holds these queries
            return None
        try:
            held = self.dmn.held_features() if names else None
        except Exception:  # a stream file that does not load: the forget goes on, as the streams' drop does
            log.warning("the DMN streams could not be read: queries of the images forgotten may stay in them",
                        exc_info=True)
            return None
        if held is None or not len(held):
            return None
        unit = held / np.maximum(np.linalg.norm(held, axis=1, keepdims=True), 1e-12)
        same = np.zeros(len(held), bool)
        for at in range(0, len(targets), 1000):
            stored = [np.asarray(p.vector, np.float32) for p in self.store.retrieve(targets[at:at + 1000],
                                                                                     with_vectors=True)
                      if p.vector is not None]
            if stored:
                rows = np.stack(stored)
                rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
                same |= (unit @ rows.T).max(axis=1) >= _with_slack(1.0)
        return held[same] if same.any() else None

    def near_duplicates(self, image: ImageInput | None = None, min_similarity: float = COPY_SIMILARITY,
                        limit: int = MOST_COPIES, *, point_id: str | None = None) -> list[NearDuplicate]:
        """The points whose image looks like this one: the image itself, however it was added (a path, an upload),
        and its copies re-encoded, re-saved or resized under other names. Those whose features' cosine similarity
        to the image's is at least `min_similarity`, most similar first, at most `limit` (a list `limit` long may
        have left more out).

        Every point is compared, by exact search (not through the index, whose answers are approximate), hard-
        pruned points included: what `forget_like` forgets. The default threshold is measured, and what it
        catches (re-encoded and enlarged copies; not every resized, cropped or mirrored one) is in README,
        "Forgetting"; it holds for EfficientNet-Lite0's features, where it was measured. Similarities are compared
        with 0.001 of slack (stored float16 vectors put an image's own similarity at 1 give or take 1e-4):
        `min_similarity=1` takes the image itself and exact copies.

        `point_id` in place of the image: the copies of a point the memory holds (a neighbour an answer cited),
        searched with its stored vector; the point itself is among them.

            >>> [(d.similarity, d.source) for d in mem.near_duplicates("photo.jpg")]
            >>> [d.source for d in mem.near_duplicates(point_id=answer.neighbors[0].id)]

        Raises:
            vmem.ImageDecodeError: the image does not decode.
            vmem.UnknownPointError: the memory holds no point `point_id`.
            ValueError: min_similarity outside (0, 1], limit below 1; neither or both of image and point_id.
        """
        _check_copy_search(min_similarity, limit)
        self._refresh_for_reading()
        return self._near_duplicates(self._like_vector(image, point_id, "near_duplicates"), min_similarity, limit)

    def forget_like(self, image: ImageInput | None = None, min_similarity: float = COPY_SIMILARITY,
                    erase: bool = False, dry_run: bool = False, *, point_id: str | None = None,
                    ) -> list[NearDuplicate]:
        """Forget every point whose image looks like this one (`near_duplicates`): "remove this photo, and any
        copy of it", for a user who knows neither its point id nor the paths its copies were stored under.
        Returns the points forgotten (with `dry_run`, those it would forget, forgetting nothing), most similar
        first. Journaled as a forget chosen by `like_sha256` (the sha256 of the image's bytes: of the file or the
        bytes given, or of the pixels of a PIL image or array) and `min_similarity`; the image itself is not kept.
        With `erase`, the memory's files are rewritten without their vectors too, as `forget(erase=True)`.
        The DMN streams' past queries that similar to the image go too (their files rewritten).
        `point_id` in place of the image: that point and its copies (`near_duplicates`), journaled by `like_point`
        (the id) and `min_similarity`.

        Raises:
            vmem.ImageDecodeError: the image does not decode (nothing forgotten).
            vmem.UnknownPointError: the memory holds no point `point_id`.
            ValueError: more than 1,000 points are that similar, or more than 10 making up more than half of the
                memory (nothing forgotten: a threshold that low takes more than copies of one image);
                min_similarity outside (0, 1]; erase on a Qdrant server; neither or both of image and point_id.
        """
        if erase and not dry_run:
            self.check_erase_on_demand()
        _check_copy_search(min_similarity, MOST_COPIES)
        self._refresh_for_reading()
        vector = self._like_vector(image, point_id, "forget_like")
        found = self._near_duplicates(vector, min_similarity, MOST_COPIES + 1)
        total = self.store.count()
        if len(found) > MOST_COPIES or (len(found) > FEW_COPIES and 2 * len(found) > total):
            many = f"more than {MOST_COPIES:,}" if len(found) > MOST_COPIES else f"{len(found):,} of the {total:,}"
            raise ValueError(f"{many} points of the memory are at least {min_similarity:g} similar to the image: "
                             "a threshold that low takes more than copies of it; raise it (the default, "
                             f"{COPY_SIMILARITY:g}, is measured: README, \"Forgetting\")")
        if dry_run:
            return found
        like = {"like_point": parse_point_id(point_id)} if point_id is not None else {
            "like_sha256": _image_sha256(image)}  # type: ignore[arg-type]  # one of the two: checked above
        selector = {**like, "min_similarity": float(min_similarity)}
        present = self._forget_chosen([d.id for d in found], selector, erase)[1]
        # A DMN stream keeps the features of past queries: the photo classified once (`classify --vote dmn
        # --dmn-stream`) was still there after it was unlearnt. (The forget is made: a failure here is logged.)
        try:
            if dropped := self.dmn.drop_similar(vector, _with_slack(min_similarity)):
                log.info("dropped %d DMN stream entries like the image forgotten", dropped)
        except Exception:
            log.error("after a forget by likeness (made): the DMN streams kept the queries like it", exc_info=True)
        return [d for d in found if d.id in present]

    def _like_vector(self, image: ImageInput | None, point_id: str | None, method: str) -> np.ndarray:
        """The features copies are searched by: the image's, embedded, or a stored point's original vector."""
        if (image is None) == (point_id is None):
            raise ValueError(f"{method} takes an image or a point_id: give one of them")
        if image is not None:
            return self._embedded(image, method)
        found = self.store.retrieve([parse_point_id(point_id)], with_vectors=True)  # type: ignore[arg-type]
        if not found or found[0].vector is None:
            raise UnknownPointError(f"no point with id {point_id} in the memory")
        return np.asarray(found[0].vector, dtype=np.float32)

    def _embedded(self, image: ImageInput, method: str) -> np.ndarray:
        [one] = _image_list([image], method)
        return self.featurizer.embed([one])[0]

    def _near_duplicates(self, vector: np.ndarray, min_similarity: float, limit: int) -> list[NearDuplicate]:
        names = self.store.meta.label_names
        return [NearDuplicate(id=h.id, label=h.label, label_name=names.get(h.label), source=h.source,
                              similarity=h.similarity)
                for h in self.store.similar(vector, _with_slack(min_similarity), limit)]

    def _forget_chosen(self, targets: list[str], selector: dict[str, Any],
                       erase: bool) -> tuple[int, dict[str, str]]:
        """Delete the points chosen, journaled with how they were chosen; (how many went, the labels of those
        that were there)."""
        # Read before they go: the journal is all that will say which points went, and what they were.
        # The journal entry under the same lock: edits of one point racing in this process are journaled in
        # the order they were made (a relabel then a forget must not read as a forget then a relabel).
        with self._edit_lock:
            present = self.store.existing_labels(targets) if targets else {}
            with self._noted("forget", present, selector=selector) as note:
                n = self.store.delete_ids(targets)
                if present and self._journal("forget", list(present), points=n, labels=label_counts(present),
                                             selector=selector):
                    self.store.journal.settled(note)
        # Listeners first: they drop the cached answers citing the points, which no failure after the delete may
        # skip (a thumbnail folder made read-only had raised here, and cached answers went on citing them).
        self._tell(self._forget_listeners, targets, "forget")
        # Every target's, not only those still there: a forget killed before this line, run again, finds its
        # points gone but their thumbnails (an upload's only copy) still on disk.
        self._remove_thumbnails(list(targets))
        self._remove_uploads(list(targets))  # the images kept as sent (VMEM_KEEP_UPLOADS) likewise
        if present and (emptied := {lab for lab in set(present.values()) if not self.store.count(label=lab)}):
            # Labels gone from the memory leave its DMN streams now, files included: they had left only at the
            # stream's next classify, and a stream not used again kept them. (The forget is made: logged.)
            try:
                self.dmn.drop_labels(emptied)
            except Exception:
                log.error("after a forget (made): the DMN streams kept the labels forgotten", exc_info=True)
        if self._reranker is None and targets:
            self._drop_cached_rerank_answers(targets)
        if erase:
            self.erase_forgotten()
        return n, present

    def check_chosen_label(self, label: str) -> None:
        """ValueError where `label`, choosing points to forget or relabel, is no label of the memory but the name of
        one ("Egyptian cat" for n02124075): they take labels, and an unlearning script told "0 points" reads it as
        "none left"."""
        if not self.store.count(label=self.stored_label(label)) and (hints := self.name_hints([label])):
            raise ValueError(f"the memory has no label {quoted(label)} ({hints}): give the label")

    def check_label_held(self, label: str) -> None:
        """NoSuchLabelsError where `label`, choosing points to forget or relabel, is one the memory never had: no
        point has it and no edit touched it (`had_label`). A misspelt label had returned 0 from Python, read as
        "none left"; one whose points all went (a forget asked again) passes, and 0 is then the answer. The CLI and
        HTTP answer it as 0 points with a note (`unknown_labels_message`)."""
        if not self.knows_label(label):
            raise NoSuchLabelsError(self.unknown_labels_message([self.stored_label(label)], "mem.store.label_counts()")
                                    + self._spelled_like(label))

    def knows_label(self, label: str) -> bool:
        """Whether listing this label's points means anything: it has points (hard-pruned ones count), or had some
        (all forgotten or relabelled away: an empty listing, not a misspelling). A label no edit touched, or a
        label's name, is not known: listing it is refused (`unknown_labels_message`)."""
        return bool(self.store.count(label=self.stored_label(label))) or self.had_label(label)

    def had_label(self, label: str) -> bool:
        """Whether the memory's journal records an edit that touched this label (added, forgot or relabelled its
        points, or named it): a label with no points left is then one the memory knows, empty, not a misspelling.
        Reads the whole journal (an entry names a label in four places): asked only of a label with no points."""
        return bool(self.store.journal.newest(JournalQuery(label=self.stored_label(label)), 0)[1])

    def check_erase_on_demand(self) -> None:
        """ValueError where the memory cannot erase forgotten points when asked: checked before anything is
        forgotten."""
        if not self.store.erases_on_demand:
            raise ValueError("this memory cannot erase forgotten points on demand (a Qdrant server rewrites "
                             "its segments on its own schedule): forget without erase")

    def _thumbnail_folder(self) -> Path | None:
        memory_dir = local_folder(self.store.location)  # where the service keeps them (its `_thumbnail_dir`)
        folder = memory_dir / THUMBNAILS_DIR if memory_dir is not None else None
        return folder if folder is not None and folder.is_dir() else None

    @property
    def key(self) -> str:
        """`MemoryStore.key`: this memory's name wherever it is (services sharing a thumbnail folder keep each
        memory's thumbnails under it, DMN streams live under it)."""
        return self.store.key

    def note_thumbnail_folder(self, folder: str | Path) -> None:
        """Record with the memory a folder a service keeps its points' thumbnails in (`VMEM_THUMBNAIL_DIR`), so
        that a forget in any process on this host deletes them there too: an upload's thumbnail is its only copy,
        and a CLI forget had left them until the service's next start (forever, for a memory on a server)."""
        folder = str(Path(folder).expanduser().absolute())
        held = list(self.store.meta.settings.get(THUMBNAIL_FOLDERS_KEY, []))
        if folder in held:
            return
        try:
            # Folders gone since (a scratch one) are no longer looked in; a server's memory may be served from
            # several hosts, each with folders the others do not see: kept.
            local = local_folder(self.store.location) is not None
            with self.store.meta_edit() as meta:
                meta.settings[THUMBNAIL_FOLDERS_KEY] = [f for f in held if not local or Path(f).is_dir()] + [folder]
        except (MemoryStoreError, OSError) as exc:  # a full disk: the service still starts, and classifies
            log.warning("could not record the thumbnail folder %s with the memory (%s): a forget in another "
                        "process leaves its thumbnails there until this service's next start", folder, exc)

    def _thumbnail_folders(self) -> list[Path]:
        """The memory's own thumbnail folder and those services recorded (`note_thumbnail_folder`), as exist here;
        and above a recorded `memory-<key>` folder, the shared folder itself, where services kept thumbnails before
        each memory had a folder there (a forget deletes those of its points, as it did then)."""
        own = self._thumbnail_folder()
        noted = [Path(f) for f in self.store.meta.settings.get(THUMBNAIL_FOLDERS_KEY, ())]
        shared = [f.parent for f in noted if f.name == self.store.key]
        return list(dict.fromkeys(f for f in [own, *noted, *shared] if f is not None and f.is_dir()))

    def _remove_thumbnails(self, ids: Sequence[str]) -> None:
        """Delete the thumbnails services kept of these points (`_thumbnail_folders`): an upload's is its only copy,
        and a forget outside the service (vmem forget --erase) left it there."""
        for folder in self._thumbnail_folders():
            _delete_after_forget([thumbnail_file(folder, pid) for pid in ids], "thumbnail", folder)

    def _remove_uploads(self, ids: Sequence[str]) -> None:
        """Delete the uploaded images kept of these points (VMEM_KEEP_UPLOADS), in the memory's folder: each is kept
        by point id, so no other point's goes with it (the same bytes under another name are another point's file)."""
        if (folder := local_folder(self.store.location)) is None or not (folder / UPLOADS_DIR).is_dir():
            return
        _delete_after_forget([upload_file(folder, pid) for pid in ids], "uploaded image", folder / UPLOADS_DIR)

    def remove_orphan_uploads(self) -> int:
        """Delete the uploaded images kept in the memory's folder whose points are gone, as a forget killed midway
        leaves them; returns how many. Call it with no add in flight: an upload is kept just before its point."""
        if (folder := local_folder(self.store.location)) is None or not (kept := folder / UPLOADS_DIR).is_dir():
            return 0
        files = {f.name: f for f in kept.iterdir() if _is_uuid(f.name)}  # a point's id: vmem's files only
        there = self.store.existing_ids(list(files))
        gone = [f for pid, f in files.items() if pid not in there]
        for f in gone:
            f.unlink(missing_ok=True)
        return len(gone)

    def remove_orphan_thumbnails(self, folder: str | Path | None = None) -> int:
        """Delete the thumbnails in `folder` (default: the memory's own, where the service keeps them) whose points
        are gone, as a forget killed midway leaves them; returns how many. Call it with no add in flight: an
        added image's thumbnail is written just before its point."""
        folder = Path(folder) if folder is not None else self._thumbnail_folder()
        if folder is None or not folder.is_dir():
            return 0
        files = {f.stem: f for f in folder.glob("*.jpg") if _is_uuid(f.stem)}  # a point's id: vmem's files only
        kept = self.store.existing_ids(list(files))  # asked in chunks a server takes
        gone = [f for pid, f in files.items() if pid not in kept]
        for f in gone:
            f.unlink(missing_ok=True)
        return len(gone)

    def relabel(
        self,
        to: str,
        ids: Sequence[str] | None = None,
        label: str | None = None,
        source_prefix: str | None = None,
    ) -> int:
        """Give points another label, embedding nothing again: a mislabelled image corrected, a class renamed,
        two classes merged. Points are chosen as `forget` chooses them; returns how many changed (those
        already labelled `to` are not counted).

        Once it returns, searches vote with the new label, and the re-ranker's cached answers citing the
        points are dropped. The points' pruning marks go (excluded, reliability, prune count: `vmem prune`
        judged them under the old label; prune again to judge them anew), and each keeps the label it held
        before (`MemoryPoint.relabelled_from`). A whole class relabelled (`label=`) takes its DMN dynamic
        memories' entries along (`DynamicMemory.rename_label`). Relabelling 10,000 points or more also indexes
        them again before returning, as they left the engine's index: other searches in this process wait for it
        (the engine holds Python's lock while it rewrites), and it takes as
        long as rebuilding the segments they are in (18,000 of 20,200 points: 3.4 s; 12,000 of 250,000: 40 s;
        90,000 of 250,000: 3 min, 2.4 GB peak).

        Example:
            >>> mem.relabel("n02123045", ids=["0b6f..."])       # this image is a tabby, not an Egyptian cat
            >>> mem.relabel("cat", label="kitty")                # every "kitty" point is now "cat"

        Raises ValueError for an empty `to`, or one that is no label of the memory but another label's name
        (`to="tabby"` where the memory calls n02123045 "tabby"): relabelling takes labels. `label=` the memory
        never had (a misspelling) raises vmem.NoSuchLabelsError, naming those spelled like it; one it had, with
        no points left (relabelled already), returns 0, as `forget` does.
        """
        to = self.check_new_label(to)
        if label is not None:
            self.check_chosen_label(label)
            self.check_label_held(label)
        label = self.stored_label(label) if label is not None else None
        n = len(self._relabel_points(self._chosen_ids(ids, label, source_prefix, "relabel"), to,
                                     _selector(ids, label, source_prefix)))
        if n and label is not None and not self.store.count(label=label):
            # A class renamed or merged: its DMN dynamic memories go with it (emptied otherwise, as a label
            # the memory no longer holds).
            self.dmn.rename_label(label, to)
        return n

    def check_added_labels(self, labels: Sequence[str]) -> None:
        """ValueError where a label images are added under is no label of the memory but another label's name
        ("German shepherd" for n02106662): added, they had made a second, unnamed class beside the named one, and
        split its votes."""
        new = [lab for lab in dict.fromkeys(labels) if not self.store.count(label=lab)]
        if new and (hints := self.name_hints(new)):
            raise ValueError(f"{hints}, not a label of this memory: add the images under the label")

    def check_new_label(self, to: str) -> str:
        """`to` as the memory spells it, or ValueError where `relabel` would refuse it (empty, a control
        character, too long, or another label's name)."""
        to = self.stored_label(to) if isinstance(to, str) else to
        if not isinstance(to, str) or not to:
            raise ValueError(f"the new label must be a non-empty string, got {to!r}")
        if problem := label_problem(to):
            raise ValueError(problem)
        if not self.store.count(label=to) and (hints := self.name_hints([to])):
            raise ValueError(f"{hints}, not a label of this memory: relabel to the label")
        return to

    def _relabel_points(self, ids: list[str], to: str, selector: dict[str, Any]) -> list[str]:
        """Relabel these points (no checks on `to`) and tell listeners; returns the ids that changed."""
        with self._edit_lock:  # journaled under it too, in the order the edits were made (see forget)
            new_class = self._new_imagenet_classes({to})
            to_change = {pid: old for pid, old in self.store.existing_labels(ids).items() if old != to}
            with self._noted("relabel", to_change, to=to, selector=selector) as note:
                before = self.store.relabel(ids, to)
                changed = list(before)
                if not changed or self._journal("relabel", changed, points=len(changed),
                                                labels=label_counts(before), to=to, selector=selector):
                    self.store.journal.settled(note)
        if changed:
            self._name_imagenet_classes(new_class)
        if changed:  # before any re-indexing: no cached answer with the old labels is served meanwhile
            self._tell(self._relabel_listeners, changed, "relabel")
            if self._reranker is None:
                self._drop_cached_rerank_answers(changed)
        if len(changed) >= REINDEX_AFTER_RELABEL:
            # The engine moves a point whose payload changes out of its indexed segment, and searches scan the
            # moved ones in full until they are indexed again. 18,000 of 20,200 points relabelled: 1,387 -> 619
            # batched queries/s, back to 1,319 after indexing them (3.4 s); 5,000 cost 6 %.
            self.store.flush()
            self.store.optimize()
        return changed

    def chosen_points(self, ids: Sequence[str] | None = None, label: str | None = None,
                      source_prefix: str | None = None) -> dict[str, str]:
        """The points held now that `forget` or `relabel` with these arguments would choose, with their labels:
        a preview, and how a script tells "already relabelled" from "no such points".

        Raises what `forget` and `relabel` raise for these arguments: vmem.NoSuchLabelsError for a label the
        memory never had (a misspelling; a dry run had chosen nothing quietly, as the real run then refused), and
        ValueError for a label's name. A label whose points all went chooses nothing.

        Example:
            >>> mem.chosen_points(source_prefix="/data/cats/")   # {"0b6f...": "n02123045", ...}
        """
        if label is not None:
            self.check_chosen_label(label)
            self.check_label_held(label)
        label = self.stored_label(label) if label is not None else None
        return self.store.existing_labels(self._chosen_ids(ids, label, source_prefix, "choose"))

    def why_nothing_relabelled(self, to: str, listed_by: str, history_by: Callable[[str], str],
                               ids: Sequence[str] | None = None, label: str | None = None,
                               source_prefix: str | None = None) -> tuple[bool, str]:
        """After a `relabel` that changed no point: (whether it was done already, why, as a sentence). Done
        already when every point chosen has the label `to`, and with `ids`, every id is a point: a corrections
        script run again succeeds, and an id that is not there is still said. Done too for a `label` whose points
        all went (relabelled or forgotten: a rename run again), as a forget asked again is; not for one the memory
        never had (a misspelling). `listed_by` and `history_by` say where labels and a label's edits are listed
        (`no_label_note`)."""
        to = self.stored_label(to)
        if label is not None and not self.store.count(label=self.stored_label(label)):
            if (gone := self._gone_label_note(label, history_by)) is not None:
                return True, gone  # the journal read once: it is read whole
            return False, self._never_had_note(label, listed_by)
        chosen = self.chosen_points(ids=ids, label=label, source_prefix=source_prefix)
        # Counted as parsed, as chosen ones are: an id given twice, in upper and lower case, is one point
        asked = len({parse_point_id(i) for i in ([ids] if isinstance(ids, str) else ids)}) if ids is not None \
            else len(chosen)
        if chosen and set(chosen.values()) == {to} and len(chosen) == asked:
            chosen_are = "the point chosen has" if len(chosen) == 1 else f"the {len(chosen)} points chosen have"
            return True, f"nothing to do: {chosen_are} the label {quoted(to)} already"
        if ids is not None:
            if chosen:
                missing = asked - len(chosen)
                are = "is" if missing == 1 else "are"
                rest = "the other has" if len(chosen) == 1 else "the rest have"
                return False, (f"{missing} of the {asked} ids {are} no point of the memory; {rest} the label "
                               f"{quoted(to)} already")
            return False, "the memory holds no point with " + ("these ids" if asked > 1 else "this id")
        return False, f"no point's source starts with {visible(source_prefix or '')}"

    def _chosen_ids(self, ids: Sequence[str] | None, label: str | None, source_prefix: str | None,
                    verb: str) -> list[str]:
        """The ids of the points chosen by exactly one of: ids, label, source prefix (as `forget` documents)."""
        chosen = [x is not None for x in (ids, label, source_prefix)]
        if sum(chosen) != 1:
            raise ValueError(f"{verb} takes exactly one of: ids, label, source_prefix")
        if source_prefix is not None and not source_prefix.strip():
            # normalize_source("") is the current directory: an empty prefix would choose everything under it.
            raise ValueError(f"source_prefix is empty: give the folder, file or URI prefix of the images to {verb}")
        if ids is not None:
            if isinstance(ids, str):  # one id, not its characters
                ids = [ids]
            # Parsed here: the embedded engine raised on a malformed id, and qdrant-client matched nothing quietly.
            return [parse_point_id(i) for i in ids]
        if source_prefix is not None:
            return self._ids_under(*self._prefix_and_links(source_prefix))
        return self.store.ids_where(label=self.stored_label(label))  # type: ignore[arg-type]  # the one given (above)

    def _prefix_and_links(self, given: str, follow_links: bool = True) -> tuple[str, tuple[list[str], list[str]]]:
        """A source prefix as stored sources are written (`local_source_prefix`), and the other prefixes and the
        files it chooses too, as `_ids_under` takes them: its links' targets, and a relative prefix as given
        when sources are stored so. `add(sources=[...])` keeps the names it is given ('camera/a.jpg',
        'cam1:frame-0001'), which the prefix made absolute under the current folder never found."""
        norm = local_source_prefix(given)
        folders, files = _links_under(norm) if follow_links else ([], [])
        if _relative_name(given):
            # Only names stored as given, relative and local: "upload" must not choose upload:sha256:... points
            # (an upload's only copy), nor "h" a URI. A folder named so here chooses what is under it, not DIR2/.
            as_given = given + "/" if Path(given).is_dir() and not given.endswith("/") else given
            files = [*files, *(src for src in self._sources_under(as_given)
                               if is_local_source(src) and not os.path.isabs(src))]
        # The other Unicode spelling of the same path: a Mac writes file names decomposed (NFD), a keyboard
        # types them composed, and on Linux they are two names; the one stored is chosen too.
        others = [unicodedata.normalize(form, norm) for form in ("NFC", "NFD")] if not norm.isascii() else []
        # As the disk spells it too: on a Mac `--source ~/data/cats` opens ~/Data/cats, and a build given ~/Data
        # stored its images so (a case-insensitive disk; on Linux a path has one spelling, and this costs a stat).
        spelled = on_disk_spelling(norm)
        others.append(spelled + "/" if norm.endswith("/") and not spelled.endswith("/") else spelled)
        folders += [other for other in dict.fromkeys(others)
                    if other != norm and self.store.page(None, other, None, 1, None)[0]]
        return norm, (folders, files)

    def _ids_under(self, source_prefix: str, links: tuple[list[str], list[str]]) -> list[str]:
        """The points whose source starts with the (normalised) prefix, and those its links (`_links_under`:
        (folders, files)) lead to."""
        targets = self.store.ids_where(source_prefix=source_prefix)
        folders, files = links
        if not (folders or files):
            return targets
        found = set(targets)
        for folder in folders:
            found.update(self.store.ids_where(source_prefix=folder))
        found |= self.store.existing_ids([point_id_for(f) for f in files]) if files else set()
        return sorted(found)

    def _sources_under(self, prefix: str) -> list[str]:
        """The sources of the points whose source starts with `prefix`, as stored."""
        found: list[str] = []
        start = None
        while True:
            page, start = self.store.page(None, prefix, start, 1000, None)
            found += [p.source for p in page]
            if start is None:
                return found

    def point_id_of_source(self, source: str) -> str:
        """The id of the point a source names (in the memory, or once): of its absolute path, unless only another
        spelling of it is (or was) in the memory: the path in the other Unicode form (see `_prefix_and_links`), or
        a relative name as `add(sources=...)` stored it. `history(source=...)` finds its edits by it."""
        made_absolute, others = _source_ids(source)
        if self.store.existing_ids([made_absolute]):
            return made_absolute
        return next((pid for pid in others if (
            self.store.existing_ids([pid]) or self.store.journal.newest(JournalQuery(point_id=pid), 1)[0])),
            made_absolute)

    def _drop_cached_rerank_answers(self, ids: list[str]) -> None:
        """Drop the default re-ranker's cached answers citing these points (forgotten or relabelled), with no
        re-ranker built here.

        Its answers are checked against the memory when read anyway (a forget in another process never
        reaches this one's listeners), so a failure here costs disk space, not a wrong answer: logged only.
        """
        from reranker import AnswerCache, GeminiSettings

        try:
            with self._reranker_lock:
                path = self._rerank_cache_path
                if path is None or not path.exists():  # caching off, or nothing cached yet: nothing to create
                    return
                if self._idle_rerank_cache is None:
                    # with the limit the re-ranker keeps it under: a lower default trimmed it at a forget
                    self._idle_rerank_cache = AnswerCache(path, GeminiSettings().cache_max_entries)
                cache = self._idle_rerank_cache
            cache.invalidate(ids)
        except Exception as exc:  # settings from the environment that do not validate, a locked database
            log.warning("the re-ranker's cached answers citing %d forgotten or relabelled points were not dropped "
                        "now (%s); they are dropped when next read", len(ids), exc)

    @functools.cached_property
    def _rerank_cache_path(self) -> Path | None:
        """The default re-ranker's answer cache file (None: caching off), read from the environment once
        (~0.5 ms a time)."""
        from reranker import configured_cache_path

        return configured_cache_path()

    def erase_forgotten(self) -> None:
        """Rewrite the memory's files without the vectors of the points forgotten so far.

        A forgotten point is out of every search at once, but the engine keeps its bytes in the segment that
        held it until the segment is rewritten: this does that now, for every segment with a forgotten point
        (other searches in this process wait: the engine holds Python's lock while it rewrites). What stays: the
        engine's write-ahead log of recent writes (README, "Forgetting"). The points added since the memory was
        last indexed are indexed too: a memory forgotten from and added to for months needs this on a schedule,
        or its searches drift from exact ones (README, "Upkeep").
        """
        # Noted before: a process killed between the rewrite and its entry leaves an erase the next opening
        # journals, where the files show it made (when the vectors left the disk is what an audit asks).
        with self._noted("erase", {}) as note:
            self.store.erase_forgotten()
            if self._journal("erase"):
                self.store.journal.settled(note)

    # ------------------------------------------------------------------ copying

    def backup(self, destination: str | Path) -> BackupResult:
        """Copy this embedded memory's folder, as it is now, to the new folder `destination`, while it stays open:
        classify goes on, and edits wait until the copy is made (a snapshot, not a copy of a memory being changed).

        The files are copied as they are (the index is not built again: seconds where `copy_to` takes minutes), into
        a hidden folder beside `destination` renamed to it once complete: a backup cut short (a full disk, a crash)
        leaves nothing under its name, and the hidden folder of one killed midway is removed by the next backup
        beside it (one whose writing process on this host is gone; never one being written). The backup is the same
        memory (the same `key`): restored in its place (the service stopped, the folder moved there) it finds the DMN
        streams and the thumbnails kept for it outside its folder. Open it beside the original only to read it;
        `copy_to` from it makes a memory of its own.

        Args:
            destination: a folder that does not exist yet, outside the memory's. The folders above it are made
                where missing (`backups/2026-12-07` with no `backups/` yet), as `vmem backup` and the service's
                backup folder make them; a backup refused or cut short removes those it made.

        Returns:
            where it went, its points, the bytes copied and the seconds taken; the dead backups' folders removed.

        Raises:
            ValueError: a memory on a Qdrant server (its server's snapshots back it up), or a destination inside
                the memory.
            FileExistsError: something is at `destination` already.
            NotADirectoryError: a file where a folder above it would be.
            MemoryFullError: too little room for it there; nothing is left under its name.
            OSError: a folder above it that cannot be made (PermissionError), or the copy failing otherwise.
        """
        if not self.store.backs_up_files:
            raise ValueError("a memory on a Qdrant server is backed up by the server: take a snapshot of its "
                             "collection and of its journal's (Qdrant's snapshots API), or copy it into an "
                             "embedded memory (vmem copy --to-memory DIR)")
        dest = Path(os.path.expanduser(destination)).absolute()
        folder = local_folder(self.store.location)
        assert folder is not None  # an embedded memory's
        if dest.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{destination} is inside the memory's folder {folder}: back it up somewhere else")
        if os.path.lexists(dest):
            raise FileExistsError(f"{destination} exists: a backup goes to a new folder (nothing was written)")
        made = _make_folders_above(dest)
        try:
            return self._backup_into(dest, destination, folder)
        except BaseException:
            _remove_folders_made(made)  # refused (no room) or cut short: no folder of its making left
            raise

    def _backup_into(self, dest: Path, destination: str | Path, folder: Path) -> BackupResult:
        """`backup` to `dest`, whose parent is there."""
        if not dest.parent.is_dir():
            raise NotADirectoryError(f"{dest.parent} is not a folder to write the backup {dest.name} in")
        removed, unnamed = remove_dead_partials(dest.parent)  # before the room is counted: they take some
        for path in removed:
            log.info("removed %s, the folder of a backup killed midway", path)
        need, free = self.store.size_on_disk() + EDIT_HEADROOM_BYTES, shutil.disk_usage(dest.parent).free
        if free < need:
            raise MemoryFullError(f"the disk holding {dest.parent} has {free / 2**20:,.0f} MB free, and a backup of "
                                  f"this memory needs {need / 2**20:,.0f} MB (its files, and "
                                  f"{EDIT_HEADROOM_BYTES >> 20} MB left for edits): nothing was written; free some "
                                  "space, or back it up elsewhere")
        started = time.perf_counter()
        partial = make_partial_folder(dest)
        try:
            os.chmod(partial, os.stat(folder).st_mode & 0o7777)  # as the memory's (mkdtemp makes it private)
            with self._edit_lock:  # edits of this process wait, whole: none is half in the copy
                written = self.store.write_backup(partial)
                points = self.store.count()
            os.rename(partial, dest)  # refused where a folder with files was made there meanwhile
        except BaseException as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise MemoryFullError(f"the backup to {destination} found the disk full ({exc.strerror}): nothing "
                                      "was left under its name; free some space, or back it up elsewhere") from None
            raise
        seconds = time.perf_counter() - started
        log.info("backed up %s (%d points, %.0f MB) to %s in %.1f s", without_secrets(self.store.location), points,
                 written / 2**20, dest, seconds)
        return BackupResult(path=str(dest), points=points, bytes=written, seconds=seconds,
                            removed_partials=[str(p) for p in removed], unnamed_partials=[str(p) for p in unnamed])

    def copy_to(self, location: str | Path, index: IndexSettings | None = None, batch_size: int = 1024,
                progress: Callable[[int], None] | None = None, wait: float = 0.0) -> tuple[MemoryStore, list[str]]:
        """Copy every point, as stored, into the memory at `location` (made if missing): no image is embedded
        again. Moves an embedded memory to a Qdrant server, or back, or into other index settings.

        Points keep their ids, labels, sources, tags and pruning state; the label names and settings (tuned
        vote, source roots, pruning) and the journal go with them, and the copy is journaled there. A memory
        already there must have the same encoder; its points stay, points with the same id are overwritten (so a
        copy cut short can be run again), and points an earlier copy from here put there that were forgotten here
        since go (erased where they were erased here).

        Args:
            index: a new memory's index settings (default: this memory's; an embedded-only setting is dropped
                for a server, which rescores on its own).
            wait: seconds to wait for another process that holds the embedded memory at `location` (`open`).

        Returns:
            (the destination store, open; notes on what was changed to fit it).
        """
        # The copy goes to the default collection there: another collection at the same place is another memory.
        if same_location(location, self.store.location) and \
                getattr(self.store, "collection", DEFAULT_COLLECTION) == DEFAULT_COLLECTION:
            raise ValueError(f"{location} is this memory: copy it somewhere else")
        notes: list[str] = []
        if index is None:
            index = self.store.meta.index
            if index.rescore_doubtful and not is_embedded_location(location):
                index = index.model_copy(update={"rescore_doubtful": False, "doubt_margin": None, "rescore": True})
                notes.append("rescore_doubtful keeps a file beside an embedded memory: the server copy rescores "
                             "by its original vectors instead")
        dest = open_store(location, self.store.meta.featurizer, index=index, wait=wait)
        copied = 0
        uploads: list[str] = []
        try:
            self._copy_begun(dest)
            for batch in self.store.scroll(batch_size=batch_size, with_vectors=True):
                dest.put(batch)
                copied += len(batch)
                uploads += [p.id for p in batch if str(p.payload.get("source", "")).startswith("upload:")]
                if progress is not None:
                    progress(len(batch))
            # Not this memory's services' thumbnail folders: a forget there is not one here
            carry_meta(self.store.meta, dest.meta, skip=(THUMBNAIL_FOLDERS_KEY, COPIES_BEGUN_KEY))
            dest.save_meta()
            self._carry_history(dest, copied, notes)
            if streams := self._copy_dmn_streams(dest):
                notes.append(f"{counted(streams, 'DMN dynamic memory', 'DMN dynamic memories')} copied along "
                             "(vmem dmn streams)")
            self._copy_upload_thumbnails(dest, uploads, notes)
            dest.flush()
            dest.optimize()
        except BaseException:
            dest.close()
            raise
        return dest, notes

    def reembed_to(self, location: str | Path, featurizer: str | Featurizer, index: IndexSettings | None = None,
                   batch_size: int = 64, num_workers: int | None = None,
                   progress: Callable[[int], None] | None = None, wait: float = 0.0
                   ) -> tuple[VisualMemory, ReembedResult]:
        """Copy every point into a new memory at `location`, embedded again from its image by another encoder:
        the memory moved to a better encoder with its curation. This memory is left as it was.

        Points keep their ids, labels (as relabelled), sources, tags and times added; label names, source roots
        and the journal go too, and the move is journaled there (a `copy` naming both encoders). Not carried,
        as they judged the old encoder's vectors (`notes` says which): pruning marks, tuned vote settings and
        DMN streams. A point with no image to embed (an upload, of which the memory keeps only a thumbnail;
        imported vectors; a name given to `add`, not a path; a file moved or gone; one that no longer decodes) is
        left out and listed in `skipped`.
        Resumable: run again, points already there are not embedded again (their labels and tags are brought
        up to date), and those forgotten here since the last run are forgotten there.

        Args:
            location: a new memory (a folder, a Qdrant server's URL), or one an earlier run from this memory made.
            featurizer: the new encoder: a name (`efficientnet-lite2`, `dinov2-base`) or a loaded `Featurizer`.
            index: the new memory's index settings (default: this memory's).
            progress: called with the number of points done after each batch.
            wait: seconds to wait for another process that holds the embedded memory at `location` (`open`).

        Returns:
            (the new memory, open with the new encoder: close it; what was done).

        Raises:
            ValueError: the same encoder as this memory's (`copy_to` copies as stored), `location` is this memory,
                or it holds points of its own.
            FeaturizerMismatchError: a memory of a third encoder is at `location`.

        Example:
            >>> new, done = mem.reembed_to("./memory-lite2", "efficientnet-lite2")
            >>> [s.source for s in done.skipped], done.notes
        """
        from retrieval import load_featurizer

        from .reembed import reembed

        feat = load_featurizer(featurizer, getattr(self, "_device", None)) if isinstance(featurizer, str) \
            else featurizer
        dest, result = reembed(self, location, feat, index, batch_size, num_workers, progress, wait)
        new = VisualMemory(dest, feat)
        new.via = self.via
        return new, result

    def _carry_history(self, dest: MemoryStore, points: int, notes: list[str], **detail: Any) -> int:
        """This memory's journal into a copy of it (`copy_to`, `reembed_to`), and the copy's own entry (`points`
        copied, `detail`); returns how many points it forgot there."""
        # The history goes too: a memory moved to a server still says what was forgotten, and when.
        history = dest.journal.not_held(self.store.journal)
        # A copy run again (a replica, a backup) forgets there what was forgotten here since: the history it
        # carries says so, and the points an earlier copy put there had stayed. Done before the entries are
        # carried, so that a copy cut short says no forget it has not made.
        forgotten = self._forget_in_copy(dest, history, notes)
        dest.journal.carry_from(self.store.journal, history)
        dest.journal.record("copy", points=points, selector={"from": _journal_location(self.store.location)},
                            via=self.via, detail={"from_key": self.store.key, **detail,
                                                  **({"forgotten": forgotten} if forgotten else {})})
        if self.store.key in (begun := dest.meta.settings.get(COPIES_BEGUN_KEY) or {}):
            with dest.meta_edit() as meta:  # finished: its journal entry says when from now on
                begun = {key: at for key, at in begun.items() if key != self.store.key}
                if begun:
                    meta.settings[COPIES_BEGUN_KEY] = begun
                else:
                    meta.settings.pop(COPIES_BEGUN_KEY, None)
        return forgotten

    def _last_copy_here(self, dest: MemoryStore) -> str | None:
        """When the last copy from this memory into `dest` that finished did (its journal entry there)."""
        return max((e.at for e in dest.journal.newest(JournalQuery(op="copy"))[0]
                    if self._copied_from_here(e, dest)), default=None)

    def _copy_begun(self, dest: MemoryStore) -> None:
        """Record in `dest`, before any point goes there, when this copy began, unless one from here that has not
        finished began earlier: a copy killed midway had left its points there with nothing saying so, and a
        point forgotten here before it was run again stayed in the copy for good."""
        begun = dict(dest.meta.settings.get(COPIES_BEGUN_KEY) or {})
        last = self._last_copy_here(dest)
        if self.store.key in begun and (last is None or begun[self.store.key] > last):
            return  # an earlier run's, cut short: its points are there since then
        begun[self.store.key] = now()
        with dest.meta_edit() as meta:
            meta.settings[COPIES_BEGUN_KEY] = begun

    def _forget_in_copy(self, dest: MemoryStore, history: Sequence[JournalEntry], notes: list[str]) -> int:
        """Delete from `dest` the points an earlier copy from this memory put there that this memory's `history`
        (entries new to `dest`) forgot since, and that it does not hold again; erase them there too where it
        erased. Returns how many went.

        Only a copy's own points: those of a destination that never had a copy from here, or that it added
        itself since its last one (a later `added_at`), are its own, and a forget here is none of theirs (the
        destination's own build of the same image had been deleted)."""
        last_copy = self._last_copy_here(dest)
        # A copy from here cut short since put points there too, those it read here by when it began
        begun = (dest.meta.settings.get(COPIES_BEGUN_KEY) or {}).get(self.store.key)
        if begun is not None and last_copy is not None and begun <= last_copy:
            begun = None  # the one that finished
        since, put_by = last_copy or begun, begun or last_copy
        if since is None or put_by is None:
            return 0
        forgotten = list(dict.fromkeys(i for e in history if e.op == "forget" and e.at > since for i in e.ids))
        if not forgotten:
            return 0
        back = self.store.existing_ids(forgotten)  # forgotten, then added again: copied as they are now
        copied = [p.id for p in dest.retrieve([i for i in forgotten if i not in back])
                  if _utc(p.payload.get("added_at")) <= _utc(put_by)]
        n = 0
        if copied:
            n = dest.delete_ids(copied)
            there = VisualMemory(dest, reranker=None)
            there._remove_thumbnails(copied)  # an upload's: its copied thumbnail goes too
            there._remove_uploads(copied)  # and its image copied as sent
        if n:
            notes.append(f"{counted(n, 'point')} an earlier copy put there {'was' if n == 1 else 'were'} "
                         "forgotten here since: forgotten there too")
        # Erased there too where they were here; also when a copy cut short had deleted them but not erased them
        # (its history not carried yet, so here again): its journal would say "erase" over vectors still there.
        if any(e.op == "erase" and e.at > since for e in history):
            if dest.erases_on_demand:
                dest.erase_forgotten()
                notes.append("forgotten points erased from its files, as they were here")
            elif n:
                notes.append("a Qdrant server erases them from its files on its own schedule")
        return n

    def _copied_from_here(self, entry: JournalEntry, dest: MemoryStore) -> bool:
        """Whether a copy entry of `dest`'s journal records a copy from this memory: by its key, which follows a
        memory moved; by location for entries made before copies recorded keys (one made with a relative path
        may be read against the current folder or the destination's parent)."""
        if "from_key" in entry.detail:
            return entry.detail["from_key"] == self.store.key
        given = str(entry.selector.get("from", ""))
        if not given:
            return False
        places = [given]
        if local_folder(given) is not None and not os.path.isabs(given.removeprefix(LOCAL_MODE_PREFIX)) and (
                parent := local_folder(dest.location)) is not None:
            places.append(str(parent.parent / given))
        return any(same_location(place, self.store.location) for place in places)

    def _copy_upload_thumbnails(self, dest: MemoryStore, ids: list[str], notes: list[str]) -> None:
        """Copy the thumbnails services kept of uploaded points, their only image, into `dest`'s folder (embedded),
        where a service of `dest` finds them: a copy had left its uploads with no image. The images kept as sent
        (VMEM_KEEP_UPLOADS) go too."""
        if not ids:
            return
        folder = local_folder(dest.location)
        if folder is None:
            notes.append(f"{len(ids):,} uploaded points' thumbnails, their only images, stay in this memory's "
                         "thumbnail folders (and any kept as sent, in its folder): a memory on a server has no folder "
                         "to take them")
            return
        target, kept, folders = folder / THUMBNAILS_DIR, 0, self._thumbnail_folders()
        for pid in ids:
            if (there := thumbnail_file(target, pid)).is_file():
                continue
            found = next((f for d in folders if (f := thumbnail_file(d, pid)).is_file()), None)
            if found is not None:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(found, there)
                kept += 1
        if kept:
            notes.append(f"{counted(kept, 'thumbnail')} of uploaded points (their only images) "
                         "copied along")
        originals = 0
        if (own := local_folder(self.store.location)) is not None and (own / UPLOADS_DIR).is_dir():
            for pid in ids:  # the images kept as sent (VMEM_KEEP_UPLOADS): the copy can be re-embedded too
                if (found := upload_file(own, pid)).is_file() and not (there := upload_file(folder, pid)).is_file():
                    there.parent.mkdir(parents=True, exist_ok=True)
                    write_atomically(there, found.read_bytes())  # whole or not at all: a copy cut short resumes
                    originals += 1
        if originals:
            notes.append(f"{counted(originals, 'uploaded image')} kept as sent copied along")

    def _copy_dmn_streams(self, dest: MemoryStore) -> int:
        """Copy this memory's DMN dynamic memories (files under `dmn_home()`, keyed by memory) to `dest`'s;
        a stream `dest` already has is left as it is. Returns how many were copied."""
        from .dmn_classifier import dmn_home, stream_dir_key

        # Made here if not yet: it moves streams kept by folder path before to the memory's own folder, read below
        classifier = self.dmn if self.store.location != ":memory:" else self.store.__dict__.get("_dmn_classifier")
        if classifier is not None:
            classifier.flush()  # updates not saved yet go too
        # A process-local `:memory:` memory keeps its streams in memory, and gets none from files.
        if ":memory:" in (self.store.location, dest.location):
            return 0
        mine, theirs = (dmn_home() / stream_dir_key(store) for store in (self.store, dest))
        if not mine.is_dir() or mine == theirs:
            return 0
        copied = 0
        for path in sorted(mine.glob("*.npz")):
            if not (theirs / path.name).exists():
                theirs.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, theirs / path.name)
                copied += 1
        return copied

    # ------------------------------------------------------------------ inspecting

    def points(self, label: str | None = None, source_prefix: str | None = None, cursor: str | None = None,
               limit: int = 100, excluded: bool | None = None, follow_links: bool = True) -> PointPage:
        """The memory's points (with this label and/or source prefix; with `excluded`, only those hard pruning
        took out of search, or only the others), a page at a time, in id order.

        A source prefix that is a local folder is walked for links (a build over a folder of links stored its
        images under the targets), unless `follow_links` is false: then the points stored under the prefix (in
        either Unicode spelling, or as given when relative), not those its links lead to.

        Example:
            >>> page = mem.points(label="n02124075", limit=20)
            >>> while page.next_cursor:  # every point of the label, 20 at a time
            ...     page = mem.points(label="n02124075", cursor=page.next_cursor, limit=20)

        Raises ValueError for a limit outside 1..1000 or a cursor that is no point id.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be 1 to 1000, got {limit}")
        start = parse_point_id(cursor) if cursor is not None else None
        stored, next_id = self._stored_page(label, source_prefix, start, limit, excluded, follow_links)
        return PointPage(points=[self._memory_point(p) for p in stored], next_cursor=next_id)

    def _stored_page(self, label: str | None, source_prefix: str | None, start: str | None, limit: int,
                     excluded: bool | None, follow_links: bool = True,
                     with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        """A page of the points `points` chooses, as stored (with their vectors, if asked), and the id the next
        page starts at: the one filter `points` and `export_points` share."""
        label = self.stored_label(label) if label is not None else None
        if source_prefix is not None:  # as stored: absolute, links resolved
            if not source_prefix.strip():  # normalize_source("") is the current directory, not "every source"
                raise ValueError("source_prefix is empty: give a folder, file or URI prefix, or leave it out")
            order = self._listing_under(source_prefix, follow_links)
            if order is not None:  # its images are stored under the links' targets (or as given) too
                return self._page_of(order, label, start, limit, excluded, with_vectors)
            source_prefix = local_source_prefix(source_prefix)
        return self.store.page(label, source_prefix, start, limit, excluded, with_vectors=with_vectors)

    def _listing_under(self, source_prefix: str, follow_links: bool = True) -> np.ndarray | None:
        """The ids of the points under a prefix (as given) that holds links or chooses sources stored as given
        too (`_prefix_and_links`), in id order (None: neither, and the store pages it by prefix). Kept for the
        next page's call for up to `LISTING_REUSE_S`, while the memory is unchanged: walking the folder and
        listing its ids for every page made `vmem points --all --source DIR` quadratic (250,000 points: 0.3-5 s
        a page, hours in all with a link)."""
        self._refresh_for_reading()  # another process's edits of a memory on a server count too
        state = (self.store.count(), self._edits)
        now = time.monotonic()
        with self._listing_lock:
            cached = self._listing
        if cached is not None and cached[0] == (source_prefix, follow_links) and now - cached[1] < LISTING_REUSE_S \
                and cached[2] == state:
            return cached[3]
        norm, links = self._prefix_and_links(source_prefix, follow_links)
        # As 16-byte strings, whose order is the ids' (big-endian): 20 MB for 1.28M ids, where UUID objects
        # took 138 MB.
        order = (np.unique(np.array([uuid.UUID(i).bytes for i in self._ids_under(norm, links)],
                                    dtype="S16")) if links[0] or links[1] else None)
        with self._listing_lock:
            self._listing = ((source_prefix, follow_links), now, state, order)
        return order

    def _page_of(self, order: np.ndarray, label: str | None, start: str | None, limit: int,
                 excluded: bool | None, with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        """A page of these points (ids as sorted 16-byte strings), filtered and from `start` on, as `store.page`
        pages (the ids of a folder with links come from several prefixes, so they are ordered here)."""
        if start is not None:
            order = order[np.searchsorted(order, np.bytes_(uuid.UUID(start).bytes)):]
        found: list[StoredPoint] = []
        for at in range(0, len(order), 256):
            # numpy drops a string's trailing zero bytes when it hands it back: put them back.
            chunk = [str(uuid.UUID(bytes=bytes(b).ljust(16, b"\0"))) for b in order[at : at + 256]]
            for p in sorted(self.store.retrieve(chunk, with_vectors=with_vectors), key=lambda p: uuid.UUID(p.id)):
                if (label is None or p.label == label) and (excluded is None
                                                            or bool(p.payload.get(EXCLUDED_KEY)) == excluded):
                    if len(found) == limit:
                        return found, p.id
                    found.append(p)
        return found, None

    def point_batches(self, label: str | None = None, source_prefix: str | None = None,
                      excluded: bool | None = None, batch_size: int = 1024,
                      follow_links: bool = True) -> Iterator[PointBatch]:
        """The points `points` chooses (the same filters), with their vectors as stored, a batch at a time in id
        order: arrays to analyse in Python without a file (`export_points` writes them to one). Nothing is kept
        between batches.

        Example:
            >>> for batch in mem.point_batches(label="n02124075"):
            ...     batch.vectors, batch.labels, batch.excluded   # float32 [n, dim], str, bool

        Raises ValueError for a batch_size outside 1..4096 or an empty source_prefix.
        """
        if not 1 <= batch_size <= SCROLL_PAGE:
            raise ValueError(f"batch_size must be 1 to {SCROLL_PAGE}, got {batch_size}")
        self._refresh_for_reading()
        start: str | None = None
        while True:
            stored, start = self._stored_page(label, source_prefix, start, batch_size, excluded, follow_links,
                                              with_vectors=True)
            if stored:
                yield PointBatch.of(stored, self.store.dim)
            if start is None:
                return

    def export_points(self, path: str | Path, label: str | None = None, source_prefix: str | None = None,
                      excluded: bool | None = None, overwrite: bool = False, batch_size: int = 1024,
                      progress: Callable[[int], None] | None = None) -> int:
        """Write the points `points` chooses, with their vectors as stored, to one `.npz` file that numpy alone
        reads (`vmem export`): arrays `vectors` (float32, n x dim), `ids`, `labels`, `sources`, `excluded`
        (hard-pruned), `reliability` (soft pruning's factor), and `meta`, a JSON string with the featurizer, its
        dim, vmem's version, the memory's vote settings and label names (the format: `vmem.export`). Returns
        how many points it holds; `progress` is called with each batch's count.

        The points are read a page at a time and their vectors go to a temporary file beside `path`, never all
        in RAM; the file appears whole or not at all (written beside it, then renamed).

        Example:
            >>> mem.export_points("cats.npz", label="n02124075")
            >>> with np.load("cats.npz") as f:
            ...     X, y, meta = f["vectors"], f["labels"], json.loads(f["meta"].item())

        Raises:
            FileExistsError: a file is at `path` and `overwrite` is false.
            IsADirectoryError, FileNotFoundError: `path` is a folder, or its folder is missing.
            ValueError: an empty source_prefix, a batch_size outside 1..4096.
        """
        path = check_export_path(path, overwrite)
        meta = self.store.meta
        header = export_meta(
            featurizer=meta.featurizer.model_dump(mode="json"), dim=self.store.dim,
            index=meta.index.model_dump(mode="json"), vote=self.vote_settings().model_dump(mode="json"),
            label_names=dict(meta.label_names),
            memory={"location": _journal_location(self.store.location), "key": self.store.key},
            filter={"label": self.stored_label(label) if label is not None else None, "source_prefix": source_prefix,
                    "excluded": excluded})
        return write_export(path, self.point_batches(label, source_prefix, excluded, batch_size), self.store.dim,
                            header, overwrite=overwrite, progress=progress)

    def diff(self, other: VisualMemory, label: str | None = None, limit: int | None = 20,
             tolerance: float = VECTOR_TOLERANCE, progress: Callable[[int], None] | None = None) -> MemoryDiff:
        """What changed from this memory (A) to `other` (B), `vmem diff`: points only in A, only in B, relabelled,
        re-embedded (1 - cosine of the stored vectors above `tolerance`), their pruning or tags changed; per label
        counts, label names and settings that differ, and the journal entries each holds that the other does not.
        Counts are exact; `details` lists the first `limit` points of each kind in id order (None: all), of those
        with `label` in A or B where given. Both memories are paged through in id order together, a page at a
        time: neither is held in RAM. `progress` is called with the points read.

        Example:
            >>> from vmem.diff import open_to_compare
            >>> with open_to_compare("backups/monday") as before, open_to_compare("memory") as now:
            ...     changes = before.diff(now)
            >>> changes.counts["only_in_b"], [c.label for c in changes.labels]

        Raises ValueError for a tolerance outside 0..2 or a negative limit.
        """
        return diff_memories(self, other, label=label, limit=limit, tolerance=tolerance, progress=progress)

    # ------------------------------------------------------------------ importing

    @classmethod
    def open_for_import(cls, location: str | Path, points: PointsFile, index: IndexSettings | None = None,
                        create: bool = True, reranker: Any = AUTO_RERANKER, wait: float = 0.0) -> VisualMemory:
        """The memory at `location`, to import the file `read_points_file` read into: as it is where its encoder
        made the file's vectors (FeaturizerMismatchError, naming both, where not); made with the file's encoder
        where there is no memory yet (`index`: its settings; by default an export's own, else the defaults). No
        encoder is loaded: an export's meta, or `featurizer_spec`, says what it is.

        With `create` false (a dry run), a memory not made yet is not made: an empty one of the file's encoder,
        held in this process, stands for it. `wait`: seconds to wait for a process that holds it to let go (`open`).
        """
        until = time.monotonic() + wait if isinstance(wait, int | float) and wait >= 0 else 0.0  # else refused below
        try:
            store = open_store(location, wait=wait)
        except MemoryStoreError as exc:
            if "build one first" not in str(exc):
                raise
            spec = spec_for_new_memory(points)
            if not create:
                import warnings

                with warnings.catch_warnings():  # qdrant-client's in-process mode warns of what it leaves out
                    warnings.simplefilter("ignore")
                    return cls(open_store(":memory:", spec), reranker=None)
            if index is None and points.is_export:
                index = _exported_index(points.meta.get("index"), location)
            return cls(open_store(location, spec, index=index, wait=max(0.0, until - time.monotonic())),
                       reranker=reranker)
        try:
            check_featurizer(store.meta.featurizer, points)
        except BaseException:
            store.close()
            raise
        return cls(store, reranker=reranker)

    def import_points(self, path: str | Path | PointsFile, featurizer: str | None = None, label: str | None = None,
                      relabel: bool = False, dry_run: bool = False, batch_size: int = 1024,
                      progress: Callable[[int], None] | None = None, source_roots: Sequence[str | Path] = (),
                      trust_sources: bool = False) -> ImportReport:
        """Add the points of an `.npz` file with their vectors, none embedded (`vmem import`): one `vmem export`
        wrote (ids, labels, sources, pruning and label names carried as stored), or vectors made elsewhere with
        their labels (and sources), by the encoder `featurizer` names, which must be this memory's. The file's
        format, what must match and what is skipped: `vmem.import_points`.

        Rows that cannot be points are skipped and reported; points the memory holds already are skipped, and
        under another label keep the stored one unless `relabel` (then relabelled, journaled). `label`: only
        the rows of that label. `dry_run`: the report of what would be done, nothing written. The import is
        journaled as an "add" naming the file and its sha256. Vectors are read `batch_size` rows at a time
        (never all in RAM), and `progress` is told each batch's rows.

        The memory shows thumbnails of, and sends the re-ranker, only images under its image folders
        (`source_roots`), and a file's sources are its writer's: by default they add no folder, and the report
        counts the points whose images are files here outside them (`outside_roots`). `source_roots`: folders
        of this machine to add (each must be a directory). `trust_sources`: add the folders of the file's
        sources that are files here, as a build of them would: for a file of your own, such as an export of
        a memory of this machine.

        Example:
            >>> mem = VisualMemory.open_for_import("./memory", read_points_file("dinov2.npz", "dinov2-small"))
            >>> print(mem.import_points("dinov2.npz", featurizer="dinov2-small").summary())

        Raises:
            PointsFileError: a file that cannot be imported as it is, a featurizer missing or not the file's, a
                label no row has, one point given two labels: nothing was written.
            FeaturizerMismatchError: vectors of another encoder than this memory's.
            ValueError: a label that is another label's name (as `add` refuses it), a batch_size outside 1..4096,
                a source root that is no folder here.
        """
        if not 1 <= batch_size <= SCROLL_PAGE:
            raise ValueError(f"batch_size must be 1 to {SCROLL_PAGE}, got {batch_size}")
        roots = []
        for root in source_roots:
            if not Path(root).expanduser().is_dir():
                raise ValueError(f"source root {root} is no folder on this machine: name the folder the file's "
                                 "images are in")
            roots.append(str(Path(root).expanduser().resolve()))
        points = path if isinstance(path, PointsFile) else read_points_file(path, featurizer)
        check_featurizer(self.store.meta.featurizer, points)
        started = time.perf_counter()
        report = ImportReport(file=points.name, sha256=points.sha256, format=points.format,
                              featurizer=points.featurizer, dim=points.dim, rows=points.n, dry_run=dry_run)
        plan = plan_rows(points, report, self.stored_labels, label)
        chosen_labels = sorted(set(plan.labels[plan.usable].tolist()))
        self.check_added_labels(chosen_labels)  # before anything is written
        # Vectors made elsewhere of ImageNet's WordNet ids are named as an add names them; an export names its own
        new_classes = self._new_imagenet_classes(set(chosen_labels)) if not points.is_export else {}
        # Asked first: a memory made before vmem recorded folders records its own points', not the file's (a dry
        # run records nothing: it says what would be)
        if dry_run and "source_roots" not in self.store.meta.settings:
            before = _source_roots_of(self._all_sources())[1]
        else:
            before = self.source_roots
        sources = points.sources[plan.usable].tolist() if points.sources is not None else None
        wanted = [*roots, *(_source_roots_of(sources)[1] if trust_sources and sources is not None else [])]
        report.source_roots = [r for r in dict.fromkeys(wanted) if r not in before]
        if not dry_run:
            self._add_source_roots(report.source_roots)
        if sources is not None:
            report.outside_roots = _files_outside(sources, [*before, *report.source_roots])
        added_at = datetime.now(UTC).isoformat()
        selector = {"import": points.path.name, **({"label": label} if label is not None else {})}
        entries = _AddEntries(self._journal, selector)  # as a build journals its adds
        relabel_to: dict[str, list[str]] = {}

        file_detail = {"file": points.path.name, "sha256": points.sha256, "format": points.format,
                       "featurizer": points.featurizer, "rows": points.n}

        def journal_the_adds(**more: Any) -> None:
            entries.journal(report.added_per_label, {"import": {
                **file_detail, "chosen": report.chosen, "already_in_memory": report.already_in_memory,
                "skipped": sum(report.skipped.values()), **more}, **add_note_detail(note)})

        # Noted before its first point, as a build is (`build`): a kill before the entry is journaled at the next
        # opening, as far as the memory holds the points listed
        with contextlib.ExitStack() as noting:
            note = None if dry_run else noting.enter_context(self._noted("add", {}, selector=selector, detail={
                "import": {**file_detail, "killed": True}}))
            noting.enter_context(self.store.adding(note))
            try:
                for batch in usable_batches(points, plan, report, batch_size, progress):
                    with self._edit_lock:  # checked and written at once: another thread's add counts
                        stored = self.store.existing_labels(batch.ids)
                        new = [j for j, pid in enumerate(batch.ids) if pid not in stored]
                        if new and not dry_run:
                            fresh = ImportBatch(rows=batch.rows[new], ids=[batch.ids[j] for j in new],
                                                labels=[batch.labels[j] for j in new], vectors=batch.vectors[new])
                            self.store.put(fresh.points(payloads(points, fresh, added_at)))
                        for j in new:
                            lab = batch.labels[j]
                            report.added_per_label[lab] = report.added_per_label.get(lab, 0) + 1
                        report.added += len(new)
                    for row, pid, lab in zip(batch.rows, batch.ids, batch.labels, strict=True):
                        if pid not in stored:
                            continue
                        if stored[pid] == lab:
                            report.already_in_memory += 1
                        else:
                            report.other_label.append((points.source_of(int(row)), stored[pid], lab))
                            if relabel:
                                relabel_to.setdefault(lab, []).append(pid)
                    if not dry_run and entries.due():
                        journal_the_adds(running=True)
            except BaseException as exc:
                if not dry_run:  # stopped (Ctrl-C, the server gone): what was added is journaled now or never
                    journal_the_adds(interrupted=True)
                    if isinstance(exc, PointsFileError) and report.added:  # found corrupt part-way: not "nothing"
                        were, they = ("was", "it is") if report.added == 1 else ("were", "they are")
                        raise PointsFileError(
                            f"{exc}; the {counted(report.added, 'point')} read before it {were} added (journaled): "
                            f"import the file again once it is mended, and {they} skipped", exc.option) from None
                raise
            report.added_per_label = most_first(report.added_per_label)
            if not dry_run:
                journal_the_adds()
                if entries.all_journaled:
                    self.store.journal.settled(note)
        if not dry_run:
            self._name_imagenet_classes(new_classes if report.added else {})
        imported = set(chosen_labels)
        report.names = {lab: name for lab, name in points.label_names.items()
                        if lab in imported and self.store.meta.label_names.get(lab) != name}
        vote = points.meta.get("vote") if points.is_export else None
        if isinstance(vote, dict) and vote.get("origin") == "memory" and "vote" not in self.store.meta.settings:
            tuned = {k: vote[k] for k in ("rule", "k", "alpha", "tau", "soft_pruning") if k in vote}
            try:
                VoteSettings(**tuned)
                report.vote = tuned
            except ValueError:  # settings this vmem would not take: the defaults stay
                log.warning("the tuned vote settings of %s are not valid here: not carried", points.path)
        if relabel and report.other_label:
            report.relabel_applied = True
        if dry_run:
            report.memory_points = self.store.count()
            return report
        if report.names:  # the file's win, as a copy's source's names do
            self.set_label_names(report.names)
        if report.vote:
            self.store_vote_settings(report.vote)
        for to, ids in relabel_to.items():
            self._relabel_points(ids, to, selector)
        # Also where nothing was added: a run killed while it built the index had added every point, and run
        # again, it left them searched in full, exactly, for good
        if report.added or ((upkeep := self.store.index_upkeep()) is not None and upkeep.unindexed):
            self.store.optimize()
        report.memory_points = self.store.count()
        report.seconds = time.perf_counter() - started
        return report

    def point(self, point_id: str) -> MemoryPoint | None:
        """One point by id (None if the memory does not hold it); ValueError if `point_id` is no point id."""
        found = self.store.retrieve([parse_point_id(point_id)])
        return self._memory_point(found[0]) if found else None

    def _memory_point(self, p: StoredPoint) -> MemoryPoint:
        pay = p.payload
        return MemoryPoint(id=p.id, label=pay["label"], label_name=self.store.meta.label_names.get(pay["label"]),
                           source=pay["source"], added_at=pay.get("added_at"), tags=pay.get("tags") or {},
                           excluded=bool(pay.get(EXCLUDED_KEY)), reliability=float(pay.get(RELIABILITY_KEY, 1.0)),
                           prune_count=pay.get(PRUNE_COUNT_KEY), relabelled_from=pay.get(RELABELLED_FROM_KEY),
                           relabelled_at=pay.get(RELABELLED_AT_KEY))

    def stats(self) -> dict[str, Any]:
        """What the memory holds: points, labels, encoder, settings, disk, and `index_upkeep`: how far an embedded
        memory's index has drifted from its points, with `advice` where an erase is due (`IndexUpkeep`; None on a
        Qdrant server, which keeps its index itself)."""
        self._refresh_for_reading()
        counts = self.store.label_counts()
        upkeep = self.store.index_upkeep()
        return _stats(self.store.location, self.store.count(), counts, self.store.meta, self.disk_usage(),
                      self.few_point_labels(counts=counts), upkeep.as_dict() if upkeep is not None else None)

    def few_point_labels(self, labels: Sequence[str] | None = None, counts: Mapping[str, int] | None = None,
                         settings: VoteSettings | None = None) -> list[FewPoints]:
        """The labels (of `labels`, else all) too few to win the memory's vote (its tuned rule and k, else the
        defaults; or `settings`) against the fullest other label, even as a query's nearest neighbours
        (`retrieval.voting.wins_nearest`), fewest points first. None with distance or softmax voting, whose
        weights depend on how similar the points are. Measured on real images: docs/results/eval.md, "Adding a
        class with a few images".

        Example:
            >>> for few in mem.few_point_labels(): print(few.note)
        """
        try:
            settings = settings or self.vote_settings()
        except ValueError:
            # Tuned settings this vmem cannot read (a rule of a newer vmem's, a vmem.json edited): no vote to
            # judge, and vmem info, which shows them, had ended in a traceback
            return []
        if counts is None and labels is not None:
            # Counting every label takes ~1 s at 50,000 labels after each write: only where a label asked about
            # has fewer points than win against a label filling all the k is the fullest other label needed, and
            # the counts as last made serve for it (a class being added an image at a time counted them each add)
            worst = fewest_to_win(settings.k, settings.rule, settings.alpha)
            own = {lab: n for lab in dict.fromkeys(labels) if (n := self.store.count(label=lab))}
            if worst is None or all(n >= worst for n in own.values()):
                return []
            kept = self.store.label_counts_kept()
            counts = {**kept, **own} if kept is not None else None
        counts = self.store.label_counts() if counts is None else counts
        return _few_points(counts, settings, self.store.meta.label_names, labels)

    def disk_usage(self) -> dict[str, int] | None:
        """Bytes on disk of an embedded memory's folder, by what holds them (the engine's `shard`, `thumbnails`,
        `journal.jsonl`, DMN streams, ...) and in `total`; None for a memory on a server or in RAM. The shard
        keeps forgotten points' vectors until they are erased (`erase_forgotten`), so its figure says what an
        erase could give back."""
        return disk_usage_of(folder) if (folder := local_folder(self.store.location)) is not None else None



def _few_points(counts: Mapping[str, int], settings: VoteSettings, names: Mapping[str, str],
                labels: Sequence[str] | None = None) -> list[FewPoints]:
    """`VisualMemory.few_point_labels` of a memory holding `counts` (label -> points), under vote `settings`."""
    if len(counts) < 2:
        return []
    fullest = sorted(counts.values(), reverse=True)[:2]
    k, rule, alpha = settings.k, settings.rule, settings.alpha

    def few(n: int, rival: int) -> FewPoints | None:
        needed = fewest_to_win(k, rule, alpha, rival)  # None: a rule without a threshold
        if needed is None or n >= needed:
            return None
        fits = n  # n points fill a vote of n: from there up, the vote only grows harder to win
        while wins_nearest(n, fits + 1, rule, alpha, rival):
            fits += 1
        return FewPoints(label="", points=n, needed=needed, k=k, rule=str(rule), k_that_fits=fits)

    known: dict[tuple[int, int], FewPoints | None] = {}  # by (points, rival): a memory may have 50,000 labels
    flagged = []
    for lab in counts if labels is None else [lab for lab in dict.fromkeys(labels) if lab in counts]:
        n = counts[lab]
        rival = fullest[1] if n == fullest[0] else fullest[0]
        if (n, rival) not in known:
            known[n, rival] = few(n, rival)
        if (found := known[n, rival]) is not None:
            flagged.append(found.model_copy(update={"label": lab, "label_name": names.get(lab)}))
    return sorted(flagged, key=lambda f: (f.points, f.label))


def stats_from_files(location: str | Path) -> dict[str, Any] | None:
    """`VisualMemory.stats` of an embedded memory at rest, without opening it: from the counts its last close kept
    beside it (`retrieval.kept_counts`) and its files, in a few milliseconds where opening takes seconds on a large
    memory. None where no sound answer is in the files: it is open in a process (this one too), or edited since
    those counts were kept (by a process killed before its close, or a vmem that keeps none), or none were.

    Example:
        >>> stats = stats_from_files("./memory") or VisualMemory.open("./memory").stats()
    """
    read = _kept_counts(location)
    if read is None:
        return None
    kept, meta, disk = read
    try:
        few = _few_points(kept.per_label, _tuned_vote(meta), meta.label_names)
    except ValueError:  # tuned settings this vmem cannot read, as `few_point_labels` says
        few = []
    return _stats(str(Path(location)), kept.points, dict(kept.per_label), meta, disk, few, kept.index_upkeep)


def _stats(location: str, points: int, per_label: dict[str, int], meta: MemoryMeta, disk: Any,
           few: Sequence[FewPoints], upkeep: dict[str, Any] | None) -> dict[str, Any]:
    """`VisualMemory.stats`' answer, as an opened memory and the counts kept at rest (`stats_from_files`) both give
    it: one shape, so that `vmem info` shows the same either way."""
    return {
        "location": without_secrets(location),
        "points": points,
        "labels": len(per_label),
        "per_label": per_label,
        "label_names": dict(meta.label_names),
        "featurizer": meta.featurizer.model_dump(),
        "index": meta.index.model_dump(),
        "settings": meta.settings,
        "disk_bytes": disk,
        "few_points": [f.model_dump() for f in few],
        "index_upkeep": upkeep,
    }


def label_counts_from_files(location: str | Path) -> tuple[dict[str, int], dict[str, int], dict[str, str]] | None:
    """An embedded memory's points per label (most first), those of them searchable (not excluded by pruning) and
    its label names, from the counts its last close kept, without opening it; None where they may not stand for
    it (as `stats_from_files`)."""
    read = _kept_counts(location, disk=False)
    if read is None:
        return None
    kept, meta, _ = read
    return dict(kept.per_label), dict(kept.searchable_per_label), dict(meta.label_names)


def _kept_counts(location: str | Path,
                 disk: bool = True) -> tuple[KeptCounts, MemoryMeta, dict[str, int] | None] | None:
    """The kept counts, metadata and disk use of the embedded memory at `location`, read at rest (no process
    opens it meanwhile), where the counts stand for its files."""
    if not is_embedded_location(location):
        return None
    with at_rest(location) as folder:
        if folder is None or (kept := read_kept_counts(folder)) is None:
            return None
        try:
            meta = read_meta_file(folder)
        except (MemoryStoreError, OSError, ValueError):  # the opening says what is wrong with it
            return None
        return kept, meta, disk_usage_of(folder) if disk else None


def disk_usage_of(folder: str | Path) -> dict[str, int] | None:
    """`VisualMemory.disk_usage` of the memory in `folder`, read without opening it; None where it is no folder."""
    if not os.path.isdir(folder):
        return None
    usage = {entry.name: _bytes_on_disk(Path(entry.path)) for entry in os.scandir(folder)}
    return {"total": sum(usage.values()), **dict(sorted(usage.items(), key=lambda kv: -kv[1]))}


def _bytes_on_disk(path: Path) -> int:
    """Blocks a file or folder takes (not its apparent size: the engine's files are sparse), links not followed."""
    try:
        st = path.lstat()
    except OSError:  # removed while counted
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_blocks * 512
    return st.st_blocks * 512 + sum(_bytes_on_disk(Path(e.path)) for e in os.scandir(path))


_IMAGE_TYPES = (str, Path, bytes, bytearray, Image.Image, np.ndarray)


def _exported_index(index: Any, location: str | Path) -> IndexSettings | None:
    """A new memory's index settings from an export's meta: the exported memory's (None: the defaults, where
    they are not valid here). A server rescores by its original vectors, as a copy to one does."""
    try:
        settings = IndexSettings.model_validate(index)
    except ValueError:
        return None
    if settings.rescore_doubtful and not is_embedded_location(location):
        settings = settings.model_copy(update={"rescore_doubtful": False, "doubt_margin": None, "rescore": True})
    return settings


def _judged(results: list[Classification], min_confidence: float | None) -> list[Classification]:
    """The answers marked unsure under `min_confidence` (None: as they are)."""
    return results if min_confidence is None else [r.judged(min_confidence) for r in results]


def _image_list(images: Any, method: str) -> list[Any]:
    """`images` as a list; TypeError for one image, which a loop would take apart (a path into characters,
    bytes into integers, an array into rows) into as many wrong "images", and for what is no image at all.
    A 4-d array is a batch of images, [n, height, width, channels]; a 1-d array of text or objects a list of them
    (a DataFrame's column of paths, `df.path.values`), which no image is."""
    if isinstance(images, np.ndarray) and (images.ndim == 4 or (images.ndim == 1 and images.dtype.kind in "UO")):
        return [str(image) if isinstance(image, np.str_) else image for image in images]
    if isinstance(images, _IMAGE_TYPES):
        raise TypeError(f"{method} takes a list of images, not one {type(images).__name__}: "
                        f"pass [image] (the answer is a list too)")
    listed = list(images)
    for i, image in enumerate(listed):
        if not isinstance(image, _IMAGE_TYPES):  # before any image is embedded, not midway
            raise TypeError(f"image {i} is a {type(image).__name__}: an image is a path, bytes, a PIL image or a "
                            "numpy array")
    return listed


def _label_list(labels: Any, n: int, method: str) -> list[str]:
    """`labels` as one label per image: one str for them all, or one each; TypeError for what is no label, before any
    image is embedded. Class indices (a dataset's 0, 1, 2) had failed as "'int' object is not iterable", and None as
    "object of type 'NoneType' has no len()"."""
    if isinstance(labels, str):  # one label for them all (a loop would give each a letter of it)
        return [labels] * n
    if labels is None or isinstance(labels, bytes | AbstractSet | Mapping) or not isinstance(labels, Iterable):
        raise TypeError(f"{method} takes one label (a str) for every image, or a list of labels, one per image; "
                        f"not {type(labels).__name__}")
    listed = list(labels)
    if len(listed) != n:
        raise ValueError(f"got {counted(len(listed), 'label')} for {counted(n, 'image')}: give one label, or one "
                         "per image")
    if (bad := next((i for i, label in enumerate(listed) if not isinstance(label, str)), None)) is not None:
        raise TypeError(f"label {bad} is {type(listed[bad]).__name__} {listed[bad]!r}: a label is text (for a "
                        "class index, its class's name or str(index))")
    return listed


def _how_to_make(location: str | Path, featurizer: str | None, read_only: bool) -> str:
    """What `VisualMemory.open` says to do where there is no memory: make one from Python (`create=True`, its
    encoder chosen with `featurizer=`), or build one from a dataset with the CLI."""
    # repr: the location as the caller would type it again, a control character in it escaped
    make = f"VisualMemory.open({str(location)!r}, create=True, featurizer={featurizer or DEFAULT_FEATURIZER!r})"
    if read_only:
        return f"build one first ({make}, then add images; or vmem build), then open it read-only"
    return (f"build one first, from Python with {make} (featurizer: the encoder that embeds its images, "
            f"{DEFAULT_FEATURIZER!r} by default) and then add images, or from a dataset with vmem build")


def _source_list(sources: Sequence[Any] | None, n: int, method: str) -> list[Any] | None:
    """`sources` as a list of one per image (None: none given); ValueError otherwise, before any image is
    embedded."""
    if sources is None:
        return None
    if isinstance(sources, str | Path):
        raise TypeError(f"{method} takes a list of sources, one per image, not one {type(sources).__name__}")
    listed = list(sources)
    if len(listed) != n:
        raise ValueError(f"got {counted(len(listed), 'source')} for {counted(n, 'image')}: give one per image")
    return listed


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _utc_iso(when: str, end_of_day: bool = False) -> str:
    """An ISO 8601 time or date as the journal writes times (UTC), for comparing; ValueError if it is neither. A date
    is its first instant, or with `end_of_day` its last (an `until`: the day it names is in)."""
    try:
        parsed = datetime.fromisoformat(when.strip())
    except ValueError:
        raise ValueError(f"{when!r} is not a date or time: give it as 2026-12-05 or 2026-12-05T14:30") from None
    if end_of_day:
        with contextlib.suppress(ValueError):  # a time as well is not a date alone
            parsed = datetime.combine(date.fromisoformat(when.strip()), dt_time.max)
    try:
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC, before datetime's first
        raise ValueError(f"{when!r} is out of range once in UTC: give a time between years 1 and 9999") from None


def _selector(ids: Sequence[str] | None, label: str | None, source_prefix: str | None) -> dict[str, Any]:
    """How an edit chose its points, for the journal."""
    if label is not None:
        return {"label": label}
    if source_prefix is not None:
        # Made absolute, as it chose files: a relative prefix means nothing without the folder it was given in
        absolute = local_source_prefix(source_prefix)
        return {"source_prefix": absolute, **({"as_given": source_prefix} if _relative_name(source_prefix) else {})}
    # not `ids or []`: a numpy array of ids (a DataFrame's column) has no truth value
    return {"ids": 1 if isinstance(ids, str) else 0 if ids is None else len(ids)}


def _with_slack(min_similarity: float) -> float:
    """The similarity compared with: `min_similarity` less SIMILARITY_SLACK (float16 vectors' rounding)."""
    return max(min_similarity - SIMILARITY_SLACK, 0.0)


def _check_copy_search(min_similarity: float, limit: int) -> None:
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, numbers.Real) or not (
            0 < min_similarity <= 1):
        raise ValueError(f"min_similarity must be a number above 0 and at most 1 (a cosine similarity), "
                         f"not {min_similarity!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def _image_sha256(image: ImageInput) -> str:
    """What the journal records of an image a forget was asked for by likeness: the sha256 of its bytes (a file's,
    or those given), or of its pixels (a PIL image, an array); never the image."""
    if isinstance(image, bytes | bytearray):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, str | Path):
        return file_sha256(Path(image).expanduser())
    return hashlib.sha256(load_image(image).tobytes()).hexdigest()


def _relative_name(source: str) -> bool:
    """A local source given relative to the current folder (not `/...`, `~...`, a URI or an upload id)."""
    return is_local_source(source) and not source.startswith(("/", "~"))


def _links_under(source_prefix: str) -> tuple[list[str], list[str]]:
    """`linked_sources` of a (normalised) prefix that is a local folder; none for anything else. "/" already
    holds every local file a link could lead to: no walk of the whole disk for nothing."""
    if not is_local_source(source_prefix) or source_prefix == "/" or not Path(source_prefix).is_dir():
        return [], []
    return linked_sources(source_prefix)


def name_hints(named: Mapping[str, str], texts: Sequence[str]) -> str:
    """`VisualMemory.name_hints` of a memory whose label names are `named`."""
    by_name: dict[str, list[str]] = {}
    # In either Unicode form: a name from a Mac's file names is decomposed, one typed composed
    for label, name in named.items():
        by_name.setdefault(canonical_label(name).casefold(), []).append(label)
    # A label the memory names is a label, even named as itself ("cat" named "Cat"), and even with no points
    # yet (names may come before the images).
    hints = [f"{quoted(text)} is the name of label{'s' if len(found) > 1 else ''} "
             f"{', '.join(map(visible, sorted(found)))}"
             for text in dict.fromkeys(texts)
             if text not in named and (found := by_name.get(canonical_label(text).casefold()))]
    return "; ".join(hints)


def _source_ids(source: str) -> tuple[str, list[str]]:
    """The id of a source's absolute path, and those of its other spellings a memory may hold it under (the path in
    the other Unicode form, a relative name as `add(sources=...)` stored it): see `point_id_of_source`."""
    absolute = normalize_source(source)
    made_absolute = point_id_for(absolute)
    others = [point_id_for(unicodedata.normalize(form, absolute)) for form in ("NFC", "NFD")
              if not absolute.isascii()]
    if _relative_name(source):
        others.append(point_id_for(source))
    return made_absolute, [pid for pid in dict.fromkeys(others) if pid != made_absolute]


def _journal_query(op: JournalOp | None, point_id: str | None, label: str | None, since: str | None,
                   by: str | None = None, until: str | None = None) -> JournalQuery:
    """A history's filters as a JournalQuery; ValueError for an op or a time that is none, or a `since` after the
    `until`."""
    if op is not None and op not in get_args(JournalOp):  # the CLI and HTTP refuse it too: not an empty list
        raise ValueError(f"unknown op {op!r}: one of {', '.join(get_args(JournalOp))}")
    query = JournalQuery(op=op, point_id=point_id, label=label, since=_utc_iso(since) if since is not None else None,
                         by=by, until=_utc_iso(until, end_of_day=True) if until is not None else None)
    if query.since is not None and query.until is not None and (
            datetime.fromisoformat(query.since) > datetime.fromisoformat(query.until)):
        # Nothing is both: an empty history read as "no edits then", for two dates given the wrong way round
        raise ValueError(f"since {since!r} is after until {until!r}: no edit is both; give the earlier time as since")
    return query


def history_from_files(location: str | Path, point_id: str | None = None, source: str | Path | None = None,
                       op: JournalOp | None = None, limit: int | None = None, label: str | None = None,
                       since: str | None = None, by: str | None = None, until: str | None = None,
                       cursor: str | None = None) -> tuple[HistoryPage, MemoryMeta]:
    """`VisualMemory.history_page` of an embedded memory read from its files, without opening it, and the memory's
    metadata (its label names, featurizer, settings).

    An embedded memory is open in one process at a time: one a running `vmem serve` holds cannot be opened
    beside it, but its journal is a file that is only appended to, so it is read as it is (a line being appended
    meanwhile is left out). What needs the points is not known from the files: a source is looked up as its
    path's id, or as another spelling of it the journal names; a label as given, or in the spelling the journal
    names.

    Raises:
        MemoryStoreError: the folder holds no memory. ValueError: a filter that is none (an op, a time, an id), a
        `since` after `until`, or a cursor that is none.
    """
    if point_id is not None and source is not None:
        raise ValueError("give a point id or a source, not both")
    folder = Path(location).expanduser()
    return _history_in(folder, read_meta_file(folder), point_id, source, op, limit, label, since, by, until, cursor)


def _history_in(folder: Path, meta: MemoryMeta, point_id: str | None = None, source: str | Path | None = None,
                op: JournalOp | None = None, limit: int | None = None, label: str | None = None,
                since: str | None = None, by: str | None = None, until: str | None = None,
                cursor: str | None = None) -> tuple[HistoryPage, MemoryMeta]:
    """`history_from_files` of the memory in `folder`, whose metadata `meta` has been read."""
    journal = FileJournal(folder / JOURNAL_FILE)

    def in_journal(query: JournalQuery) -> bool:
        return bool(journal.newest(query, 1)[0])

    if source is not None:
        made_absolute, others = _source_ids(str(source))
        point_id = next((pid for pid in others if in_journal(JournalQuery(point_id=pid))), made_absolute)
    elif point_id is not None:
        point_id = parse_point_id(point_id)
    if label is not None:
        forms = label_forms(label)
        spellings = list(dict.fromkeys([label, *forms]))
        if len(spellings) > 1:  # as `stored_labels`, by the journal's labels rather than the points'
            label = next((f for f in spellings if in_journal(JournalQuery(label=f))), forms[0])
    query = _journal_query(op, point_id, label, since, by, until)
    return HistoryPage(**journal.page(query, limit, cursor)._asdict()), meta


def history_at_rest(location: str | Path, op: JournalOp | None = None, limit: int | None = None,
                    since: str | None = None, by: str | None = None, until: str | None = None,
                    cursor: str | None = None) -> tuple[HistoryPage, MemoryMeta] | None:
    """`history_from_files` of an embedded memory at rest, which is what opening it would answer: no process has it
    open (none opens it meanwhile), and no edit of a process killed before journaling it is left noted (opening
    journals those first). None where either is not so, its metadata cannot be read, or it is no embedded memory:
    open it (which says what is wrong).

    Raises:
        ValueError: a filter that is none (an op, a time), a `since` after `until`, or a cursor that is none.
    """
    if not is_embedded_location(location):
        return None
    with at_rest(location) as folder:
        if folder is None or any((folder / PENDING_DIR).glob("*.json")):
            return None
        try:
            meta = read_meta_file(folder)
        except MemoryStoreError:  # its vmem.json unreadable (corrupt, a newer vmem's): the opening says what to do
            return None
    # The journal is read with the lock let go: its read (0.8 s at 100,000 entries, unloaded) had refused every
    # opening meanwhile. What needs the lock was checked under it (no process holds the memory, no edit of a killed
    # one is left unjournaled); the journal is only appended to, in whole lines, so a process that opens the memory
    # and edits it meanwhile adds entries this read sees or not, never half of one (a line without its newline is
    # skipped, as a crash's; one that does not parse too, should its first append cut a crash's torn line as this
    # reads it): what opening it would have answered as the read began, or since
    return _history_in(folder, meta, op=op, limit=limit, since=since, by=by, until=until, cursor=cursor)


def parse_point_id(text: str) -> str:
    """A point id as the memory stores it (a UUID); ValueError if `text` is not one."""
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise ValueError(f"{text!r} is not a point id (a UUID, as a classification's neighbours give it)") from None


def _dmn_options(options: Any) -> Any:
    """Rule dmn's options (`DmnOptions`, a dict of them, or None for the defaults); a one-line ValueError naming the
    option and the value given ("dmn static_k=0: Input should be greater than or equal to 1"), not pydantic's lines
    and link about a model, as a vote option is refused (`VoteOptionError`)."""
    from .dmn_classifier import DmnOptions

    if isinstance(options, DmnOptions):
        return options
    try:
        return DmnOptions(**(options or {}))
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = ".".join(map(str, problem["loc"]))
        if problem["type"] == "extra_forbidden":
            raise ValueError(f"dmn {name}={problem['input']!r}: rule dmn takes no option {name} (it takes "
                             f"{', '.join(DmnOptions.model_fields)})") from None
        raise ValueError(f"dmn {name}={problem.get('input')!r}: {problem['msg']}") from None
    except TypeError:  # not a mapping of options
        raise ValueError(f"dmn={options!r}: give rule dmn's options as a dict or a DmnOptions") from None


def _uses_dmn(rule: VoteRule | str | None, k: int | None, alpha: float | None, tau: float | None,
              dmn_stream: str | None, dmn: Any) -> bool:
    """Whether a classify call means rule dmn; raises ValueError for a setting its rule would not read."""
    use_dmn = rule == "dmn" or (rule is None and (dmn_stream is not None or dmn is not None))
    if use_dmn and (unused := [n for n, v in (("k", k), ("alpha", alpha), ("tau", tau)) if v is not None]):
        raise ValueError(f"{', '.join(unused)} {'sets' if len(unused) == 1 else 'set'} the neighbour vote; "
                         "rule dmn does not use it")
    if not use_dmn and (dmn_stream is not None or dmn is not None):
        raise ValueError(f"dmn_stream and dmn options are for rule dmn, not {getattr(rule, 'value', rule)}")
    return use_dmn
