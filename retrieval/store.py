"""The memory: labelled feature vectors in a Qdrant collection, behind one small interface.

Two backends share every behaviour (tests/test_store.py runs one suite over both):

* `EdgeMemoryStore`: the embedded default, Qdrant's own engine in-process (`qdrant-edge-py`):
  HNSW index, write-ahead log, data on disk at a path. No server.
* `QdrantServerStore`: `qdrant-client` against a URL, or its local modes (":memory:" or a
  path) which run the same client code without a server.

`open_store("./memory")`, `open_store("http://host:6333")` and `open_store(":memory:")` pick one.

Each point's id is a UUIDv5 of its source, so adding the same image twice is idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import gc
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from pydantic import BaseModel, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from .doubtful import ROW_KEY, OriginalRows, rescore_doubtful
from .files import (
    DISK_FULL_ERRNOS,
    OPEN_LOCK_FILE,
    SERVED_FILE,
    NotASmallFile,
    copy_folder_sparse,
    error_line,
    holder_note,
    is_under,
    lock_openers,
    make_private_folder,
    note_holder,
    os_error_reason,
    read_small_file,
    remove_dead_private_folders,
    remove_stale_temporaries,
    served_by,
    write_atomically,
)
from .journal import JOURNAL_FILE, CollectionJournal, FileJournal, Journal, NotedOp, PendingEdit
from .kept_counts import KeptCounts, forget_kept_counts, keep_counts, read_kept_counts
from .preprocessing import FeaturizerError, FeaturizerSpec
from .text import counted, visible, without_secrets

DEFAULT_COLLECTION = "vmem"
LOCAL_MODE_PREFIX = "qdrant-local:"  # qdrant-client's on-disk local mode in a folder: `qdrant-local:PATH`
log = logging.getLogger(__name__)
META_FILE = "vmem.json"
# The engine's segments as they were before it rewrote them (an index built, an erase), until the rewrite is
# flushed: see EdgeMemoryStore._rewriting_segments.
REWRITING_FILE = ".vmem-rewriting-segments"
SHARD_DIR = "shard"
# Where the embedded engine keeps each segment's original vectors (mapped; with int8 read only to rescore).
ORIGINAL_VECTORS_FILE = "/vector_storage/matrix.dat"
# Where a segment's quantized codes are stored. The engine reads them into its own memory when it opens the
# memory (Memory.Pinned, bypassing the page cache) and never reads the file again.
LOADED_CODES_FILE = "/vector_storage/quantized.data"
# A segment's map from point ids to its own offsets (searches map offsets back to ids with another file).
ID_TO_OFFSET_FILE = "id_tracker.e2i"
# Payload key that takes a point out of every search while keeping it stored (hard pruning, reversible):
# any non-empty value excludes. (A string, not a bool: qdrant-edge's filters do not match bool payloads.)
EXCLUDED_KEY = "excluded"
PRUNE_COUNT_KEY = "prune_count"  # how many leave-one-out decisions a point misled (vmem prune)
RELIABILITY_KEY = "reliability"  # soft pruning's factor on a point's vote weight (absent: 1)
# What a relabel records: the label a point held before its latest relabel, and when that was.
RELABELLED_FROM_KEY = "relabelled_from"
RELABELLED_AT_KEY = "relabelled_at"
# Keys of a Qdrant server collection's metadata that change (to a new random token) with every edit of its
# points, and of vmem's metadata: how a process sharing the memory sees that another one edited it.
POINTS_EDIT_KEY = "vmem_points_edit"
META_EDIT_KEY = "vmem_meta_edit"
# Where the service keeps thumbnails of an embedded memory's points (uploads: their only copy), in its folder.
THUMBNAILS_DIR = "thumbnails"


def thumbnail_file(folder: Path, point_id: str) -> Path:
    """A point's thumbnail in a thumbnail folder (the service writes it; any forget deletes it)."""
    return folder / f"{point_id}.jpg"


# Where a service told to keep uploads (VMEM_KEEP_UPLOADS) keeps each uploaded image's bytes, as sent, by point id,
# in an embedded memory's folder: what `reembed_to` embeds it again from (a thumbnail is too small to).
UPLOADS_DIR = "uploads"


def upload_file(memory_folder: Path, point_id: str) -> Path:
    """An uploaded point's original bytes in a memory's folder (the service writes them before the point; any
    forget deletes them)."""
    return memory_folder / UPLOADS_DIR / point_id


def kept_upload(memory_folder: Path, point_id: str) -> Path | None:
    """The image a service kept of an uploaded point as sent (VMEM_KEEP_UPLOADS), or None where none is kept (kept
    off, the file gone, or a link there leading out of the folder). What re-embeds an upload and what shows it to
    the re-ranker both ask here; read it under `memory_folder / UPLOADS_DIR` (`open_under`): the name checked here
    may lead elsewhere by the time it is opened."""
    path = upload_file(memory_folder, point_id)
    return path if path.is_file() and is_under(path, [memory_folder / UPLOADS_DIR]) else None

# The collection beside a server memory's that holds its journal (`vmem` -> `vmem-journal`).
JOURNAL_COLLECTION_SUFFIX = "-journal"
# Point ids per request when many points are read, deleted or edited by id (a Qdrant server refuses a request
# over 32 MB; the embedded engine takes the same chunks), and points per page when ids are listed by filter.
SERVER_REQUEST_IDS = 4096
SCROLL_PAGE = 4096
# vmem's own copy of the original vectors, beside the shard, in a memory that rescores doubtful candidates.
ORIGINAL_ROWS_FILE = "original-rows.bin"
# Candidates fetched beyond k to re-rank the doubtful ones: those below the k-th best by less than the margin.
DOUBTFUL_EXTRA = 16
# The payload keys a search returns with each neighbour (the rest stays in the store: `retrieve` has it).
SEARCH_PAYLOAD = ("label", "source", RELIABILITY_KEY)
# Queries per qdrant-edge query_batch call: the engine plans a batch as one pass over its segments.
EDGE_QUERY_BATCH = 64
# The embedded engine's own configuration, beside its segments.
EDGE_CONFIG_FILE = "edge_config.json"
# Vacuum thresholds of an embedded memory: the engine rewrites a segment without its deleted points when at
# least this fraction of it is deleted, and it has at least this many vectors. Its defaults (0.2 and 1,000)
# kept a forgotten point's vector in the segment files until a fifth of the segment had been forgotten; with
# these, every `optimize` (and `erase_forgotten`) rewrites each segment that holds one. Cheap next to indexing:
# 9 s for a 640k-point segment that takes ~2 minutes to index, recall unchanged (docs/benchmarks.md,
# "Forgetting").
# The share of an embedded memory's index deleted (forgotten or edited points) from which `vmem info` and the
# service advise an erase. A year of a service's edits (docs/benchmarks.md, "A memory that lives for months"):
# at 31 % recall@50 was a fresh memory's and every answer exact search's; at 51 % 0.990-0.991, 1-2 of 200
# answers changed (two runs).
ERASE_ADVISED_DELETED_SHARE = 0.5
VACUUM_THRESHOLDS: dict[str, Any] = {"deleted_threshold": 1e-9, "vacuum_min_vector_number": 1}
# qdrant-client asks a server's version on a thread of its own and warns when it gets none, before every
# unreachable server's error, which vmem gives itself (MemoryUnavailableError) and a user can act on. vmem's own
# clients ask no more (`check_compatibility=False`: `_check_server_version` asks instead); a client a caller gives
# (`QdrantServerStore(client=...)`) may.
warnings.filterwarnings("ignore", message="Failed to obtain server version", category=UserWarning)
_ID_NAMESPACE = uuid.UUID("6f1c1e4a-3a0c-5b8e-9d47-76d6e2b1a0f1")


_NO_POINT_ID = str(uuid.UUID(int=0))  # no source's: see point_id_for
# The add this thread is making (`MemoryStore.adding`): its note lists each point `add` or `put` writes, first.
_ADDING: ContextVar[tuple[int, PendingEdit] | None] = ContextVar("vmem_adding", default=None)


def point_id_for(source: str) -> str:
    """The point id of an image source: stable across runs, so re-adding is idempotent."""
    return str(uuid.uuid5(_ID_NAMESPACE, source))


def is_local_source(source: str) -> bool:
    """A path on this machine, not a URI (`scheme://...`) nor an `upload:`/`mem:` id."""
    return "://" not in source and not source.startswith(("upload:", "mem:"))


def normalize_source(source: str | Path) -> str:
    """Absolute path for local files, unchanged for URIs (`scheme://...`) and `upload:` ids."""
    s = str(source)
    if not is_local_source(s):
        return s
    # pathlib's expanduser: `~user` with no such user raises, and a --source prefix so given is refused rather
    # than read as a folder of the current one that forgets nothing
    path = Path(s).expanduser()
    try:
        return str(path.resolve())
    except RuntimeError:  # a link that loops (before Python 3.13): as named, to fail as a file that is not there
        return os.path.abspath(path)


class IndexSettings(BaseModel):
    """How the vectors are indexed and searched; fixed at creation, stored with the memory.

    The defaults come from `vmem bench search` (docs/benchmarks.md has the recall/QPS table).
    """

    m: int = Field(default=16, ge=4, le=128, description="HNSW edges per node")
    ef_construct: int = Field(default=128, ge=8, description="HNSW candidates while building")
    # 128, per segment (segment_points below bounds a segment at 640k points): on a 639k-point segment ef 128
    # gave recall@50 0.998 (ef 100: 0.994); over 1.28M in two such segments 0.998. One unbounded segment of
    # 1.28M needed ef 384 for 0.994 (docs/benchmarks.md).
    hnsw_ef: int = Field(default=128, ge=8, description="HNSW candidates while searching (at least 2k is used)")
    # int8 against float32, same run, 200k x 384 (docs/benchmarks.md): build 48 s vs 85, single queries
    # 870/s vs 519, batched 824/s vs 567, recall@50 0.9999 vs 0.9998 (rescored by the originals).
    # turboquant8: the engine's TurboQuant (random rotation, then 8-bit codes; as many bytes as int8) scores
    # closer to the true similarities than int8 does (sd 0.00028 against 0.0014), which matters only without
    # rescoring. Codes alone, recall@50 against exact search (docs/benchmarks.md): 200k x 384 synthetic 0.983
    # against int8's 0.953 (rescored 0.993 and 0.994); Tiny-ImageNet Lite0 features 0.992 against 0.983.
    quantization: Literal["none", "int8", "turboquant8"] = Field(
        default="int8", description="quantization of the index: int8 scalar, or TurboQuant 8-bit codes")
    oversampling: float = Field(default=2.0, ge=1.0, description="quantized: fetch this many times k, then rescore")
    # Off: a query never reads the original vectors, so a server needs RAM only for the codes, graph and
    # payload (no page cache of originals), at the codes' recall.
    rescore: bool = Field(default=True, description="quantized: re-rank candidates by the original float vectors")
    # Codes alone miss the neighbours whose codes score is within the codes' error of the k-th best (recall@50
    # 0.985 on 1.28M synthetic vectors with turboquant8). With this, the memory keeps its own copy of the
    # original vectors (retrieval/doubtful.py) and, while `rescore` is off, reads only those candidates' rows:
    # the server still needs RAM only for the codes, graph and payload. Fixed at creation (every point needs
    # its row).
    rescore_doubtful: bool = Field(
        default=False, description="quantized, embedded: while rescore is off, re-rank the candidates too close to the "
                           "k-th best to call by the original vectors, kept in a file of vmem's own")
    # ~1.8 times the codes' error at 384-d (docs/benchmarks/int8_error.py: sd 0.00028 turboquant8, 0.0014
    # int8) either side of the k-th best codes score. 1.28M x 384 turboquant8 inside 0.5x the raw vectors
    # (docs/benchmarks.md): margin 0.0004 recall@50 0.9953 at 4.8 rows a query and 1,237 batched queries/s;
    # 0.0006 0.9969, 6.7 rows, 1,093/s; 0.0008 0.9973, 8.6 rows, 961/s; the codes alone 0.985.
    doubt_margin: float | None = Field(
        default=None, gt=0, description="rescore_doubtful: similarity either side of the k-th best codes score within "
                                "which candidates are re-ranked (default 0.0005 turboquant8, 0.0025 int8)")
    # On disk (mapped, read as needed) rather than loaded: with int8 the originals are read only to rescore a
    # query's candidates. 1.28M x 384, two runs in one machine state (docs/benchmarks.md): serving RAM 0.65x
    # the raw vectors against 1.41x loaded, batched 1,951 against 1,883 queries/s, single 1,706 against 1,874.
    vectors_on_disk: bool = Field(default=True,
                                  description="keep original vectors on disk (mmap) instead of loading them")
    # float16 halves the originals' disk and the page cache a server needs to rescore at full speed; their
    # values are rounded to 11 significant bits. 1.28M x 384, same run (docs/benchmarks.md): recall@50 0.9962
    # against 0.9978 (graphs built twice differ by that much); inside a hard RAM limit of 1.0x the raw float32
    # bytes 1,569 batched queries/s against 377 (float32 needs 1.5x).
    vectors_dtype: Literal["float32", "float16"] = Field(
        default="float16", description="storage type of the original vectors (float16: half the bytes, rounded values)")
    # The embedded engine searches its segments in parallel, one thread each, but a batch within one segment
    # on one thread (and holds the GIL, so Python threads cannot help). Indexing every `segment_points` new
    # points as a segment of their own splits an ImageNet-size memory (1.28M) into two, one per core of the
    # 2-core machines. None: one growing segment (memories made before this setting).
    segment_points: int | None = Field(
        default=640_000, ge=10_000,
        description="embedded memory: index every this many new points as a segment of its own")

    @property
    def quantized(self) -> bool:
        """Searches walk the graph on codes (and read the originals only to rescore)."""
        return self.quantization != "none"

    @property
    def codes_only(self) -> bool:
        """The engine's searches never read its original vectors (vmem may read its own copy: `doubtful`)."""
        return self.quantized and not self.rescore

    @property
    def doubtful(self) -> bool:
        """Searches rank by the codes and re-rank only the doubtful candidates from vmem's copy of the originals."""
        return self.codes_only and self.rescore_doubtful

    @property
    def margin(self) -> float:
        """`doubt_margin`, or the default of this quantization."""
        return self.doubt_margin or (0.0005 if self.quantization == "turboquant8" else 0.0025)

    @model_validator(mode="after")
    def _doubtful_needs_codes(self) -> IndexSettings:
        if self.rescore_doubtful and not self.quantized:
            raise ValueError("rescore_doubtful re-ranks candidates found by quantized codes: choose a quantization "
                             "(turboquant8 or int8)")
        return self


class MemoryMeta(BaseModel):
    """Stored with the collection: which encoder made the vectors, and memory-level settings."""

    featurizer: FeaturizerSpec
    index: IndexSettings = Field(default_factory=IndexSettings)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    format_version: int = 1
    settings: dict[str, Any] = Field(default_factory=dict, description="e.g. tuned vote defaults")
    label_names: dict[str, str] = Field(
        default_factory=dict, description="label -> the name people and the re-ranking VLM read (for WordNet ids)")

    @model_validator(mode="before")
    @classmethod
    def _stored_before_later_settings(cls, data: Any) -> Any:
        # A memory stored before `segment_points` existed has one segment whose size the engine never bounded;
        # cutting new points into segments there would let the engine merge them into it (a full re-index).
        # One stored before `vectors_dtype` existed holds float32 originals.
        if isinstance(data, dict) and isinstance(data.get("index"), dict):
            before = {"segment_points": None, "vectors_dtype": "float32"}
            data = {**data, "index": {**before, **data["index"]}}  # what was stored wins
        return data


def merge_meta(base: MemoryMeta, mine: MemoryMeta, theirs: MemoryMeta) -> MemoryMeta:
    """The metadata another process stored (`theirs`) with what this one changed since it read `base`.

    A field, or a key of `label_names` or `settings`, that this process changed (or removed) is its own;
    everything else is theirs. So a `vmem prune` that read the metadata minutes ago does not undo the names a
    service set meanwhile.
    """
    merged: dict[str, Any] = {}
    for name in MemoryMeta.model_fields:
        b, m, t = getattr(base, name), getattr(mine, name), getattr(theirs, name)
        if isinstance(m, dict) and isinstance(b, dict) and isinstance(t, dict):
            keys = dict(t)
            for key in b.keys() | m.keys():
                if key not in m:
                    keys.pop(key, None)
                elif key not in b or b[key] != m[key]:
                    keys[key] = m[key]
            merged[name] = keys
        else:
            merged[name] = m if m != b else t
    return theirs.model_copy(update=copy.deepcopy(merged))


class MemoryStoreError(RuntimeError):
    """The memory could not be opened or used as asked."""


class MemoryMetadataError(MemoryStoreError, ValueError):
    """The memory's vmem.json is there but is no plain file (a FIFO, a device, a folder): a ValueError, as a
    corrupt one's (pydantic's ValidationError) is, and refused by the CLI as that one is (exit 2), where it had
    exited 1 as a memory that could not be opened."""


# The name it had first, kept for code that imports it. Not the class's own name: a traceback reading
# "MemoryError: the memory at ... is closed" looked like Python's out-of-RAM MemoryError.
MemoryError = MemoryStoreError


class WaitInterrupted(KeyboardInterrupt):
    """Ctrl-C while an opening waited for another process to let go of the memory in `folder`: nothing had been done
    to it yet, which the CLI says (not "what was done before it stopped is kept"). `interrupt`: the interrupt itself,
    for a caller that raises its own for a signal (the CLI's SIGTERM, `Terminated`) and tells them apart."""

    def __init__(self, folder: Path, interrupt: KeyboardInterrupt | None = None) -> None:
        super().__init__(f"interrupted while waiting for the memory at {_shown(folder)}")
        self.folder, self.interrupt = folder, interrupt


class MemoryInUseError(MemoryStoreError):
    """The embedded memory is open in another process (a service, a build): worth a retry once that ends."""

    def __init__(self, message: str, folder: Path | None = None) -> None:
        super().__init__(message)
        # The memory's folder: where a service that holds it says so (`served_by`). None where it is open in this
        # process, or is being created by another (no files to read yet)
        self.folder = folder
        # What is so, without the advice after it: said alone where a service that holds the memory answers for
        # it, its route being the advice that helps
        said = message.find(_IN_USE)
        self.fact = message[:said + len(_IN_USE)] if said >= 0 else message


_IN_USE = "is open in another process"


class NoMemoryError(MemoryStoreError):
    """No memory at the location, and none made: `fact` says so, `advice` what to do (for the command line by
    default; `VisualMemory.open` says it for a Python caller, who makes one with `create=True`)."""

    def __init__(self, fact: str, advice: str = "build one first (vmem build)") -> None:
        super().__init__(f"{fact}: {advice}")
        self.fact = fact


class MemoryUnavailableError(MemoryStoreError):
    """The memory's Qdrant server did not answer: unreachable, timed out, overloaded or failing. Worth a retry."""


class MemoryGoneError(MemoryStoreError):
    """The embedded memory's folder was removed or replaced while it was open: no retry will bring it back."""


class MemoryWriteFailedError(MemoryGoneError):
    """The embedded engine failed a write and takes no more ("Not recovered from previous error") until the
    memory is opened again. Searches go on; on reopening, the engine replays its write-ahead log, so the write
    that failed may then be in the memory, unjournaled."""


# What the embedded engine says to every write once one has failed midway (a file it could not create).
ENGINE_STUCK_MESSAGE = "Not recovered from previous error"
# What it says when a rewrite (an erase) would not fit on the disk: it checks, and writes nothing.
ENGINE_NO_ROOM_MESSAGE = "Not enough space available"


class MemoryDamagedError(MemoryStoreError):
    """The embedded memory's engine files do not load (a file cut short, overwritten, or of another build), or fail
    when a search or an edit reads them after it opened: no retry will read them; a backup restored, or a build
    again, will."""


# How the embedded engine says, loading a memory, that a file of it does not read as its own (each seen on a damaged
# segment: segment.json garbled, a payload page overwritten, a compressed value cut short, version.info overwritten
# with text or with bytes that are none). Not these: a file it may not open, a full disk, the WAL lock, which are the
# user's or another process's to settle.
_ENGINE_DAMAGE_WORDS = ("failed to load segment", "Failed to deserialize", "Failed to decompress",
                        "Failed to read segment state", "corrupt", "Corrupt", "Can't parse version from",
                        "invalid utf-8 sequence")


# How the embedded engine's errors say it may not open a file (the CLI says these as the user's to fix).
ENGINE_ACCESS_ERRORS = ("Permission denied", "Operation not permitted", "Read-only file system")


def _engine_read_failure(exc: BaseException) -> bool:
    text = str(exc)
    return (any(words in text for words in _ENGINE_DAMAGE_WORDS)
            and not any(words in text for words in (*ENGINE_ACCESS_ERRORS, "No space left on device")))


def _engine_damage_said(exc: BaseException) -> str:
    """The engine's innermost words of a failed load, escaped: it nests them ("failed to load segment S: ... Failed to
    read segment state S error: Failed to deserialize F: expected value at line 1 column 1"), and the last names the
    file."""
    line = error_line(exc).replace("Service runtime error: ", "")
    at = line.rfind("Failed to ")
    return line[at:] if at > 0 else line


def _damaged(shown: str, said: str) -> MemoryDamagedError:
    return MemoryDamagedError(f"the memory at {shown} cannot be read: its engine's files are damaged ({said}); "
                              "restore a backup of it (README, Backups), or build it again")


def _engine_panic(exc: BaseException) -> bool:
    """A Rust panic in the engine, which pyo3 raises as its `pyo3_runtime.PanicException`: a BaseException, made at
    run time and importable from no module, so known by its class's module and name."""
    return type(exc).__module__ == "pyo3_runtime" and type(exc).__name__ == "PanicException"


class MemoryReadOnlyError(MemoryStoreError):
    """The embedded memory's folder cannot be written (a read-only mount, another user's folder): an edit is refused,
    searches go on."""


# `MemoryStore.read_only_reason` of a memory a service serves read-only (VMEM_READ_ONLY, vmem serve --read-only)
SERVED_READ_ONLY = ("served read-only (VMEM_READ_ONLY): nothing was changed; searches go on. Edit it where it is "
                    "served for writing, then restart this service to serve the edit")


READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class MemoryFullError(MemoryStoreError):
    """The disk holding an embedded memory has too little room for an edit: refused before the engine writes, as
    a write that finds the disk full kills the process (SIGBUS). Searches go on, and forgets until FORGET_HEADROOM_BYTES
    are left; retry once there is room."""


# Free space an edit of an embedded memory leaves untouched, besides 8 bytes a dimension for each new point: the
# engine writes through mapped files, and one that finds the disk full dies of SIGBUS, no error raised. Measured
# on a 300 MB ext4 volume, adding 64 points of 1,280 dimensions at a time: the bus error came once the free space
# had reached 0; a new write-ahead-log file takes 32 MB at once.
EDIT_HEADROOM_BYTES = 64 << 20
EDIT_BYTES_PER_DIMENSION = 8
# A forget's floor: a delete writes little, but the engine starts a new 32 MB write-ahead-log file when one fills,
# and on a full disk that killed the service (SIGBUS) on the 17th one-point forget.
FORGET_HEADROOM_BYTES = 40 << 20
EDIT_GOES_ON = f"searches go on, and forgets until {FORGET_HEADROOM_BYTES >> 20} MB are left"


def _no_room_to_index(exc: Exception) -> str:
    """The engine's refusal to index for want of room, said with what to do."""
    return (f"the disk has too little room for the index ({error_line(exc)}); searches find them unindexed, more "
            "slowly. Free some space, then index them: vmem erase (POST /v1/memory/erase to a service), or "
            "store.optimize()")


class ServerClient:
    """A `QdrantClient` whose failures to reach a working server are `MemoryUnavailableError`s that name the
    server; the rest (a 4xx: a request it refuses) passes as the client raised it."""

    def __init__(self, client: Any, location: str) -> None:
        self.client = client
        self.location = without_secrets(location)  # as its messages show it: no user, password or ?api_key=

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

            try:
                return attr(*args, **kwargs)
            except ResponseHandlingException as exc:  # no answer: refused, reset, timed out, no such host
                raise MemoryUnavailableError(
                    f"could not reach the Qdrant server at {self.location} ({without_secrets(str(exc.source or exc))}):"
                    " check the URL and that the server is running") from exc
            except UnexpectedResponse as exc:
                if exc.status_code is None or not (exc.status_code >= 500 or exc.status_code == 429):
                    raise
                status = f"{exc.status_code} {exc.reason_phrase or ''}".strip()
                raise MemoryUnavailableError(f"the Qdrant server at {self.location} answered {status}: it is "
                                             "failing or overloaded; try again shortly") from exc
            except (json.JSONDecodeError, AssertionError, PydanticValidationError) as exc:
                # 200s the client cannot read (an HTML page, JSON of another API): a traceback before. Its first
                # line escaped (a bare assert has none: that had been an IndexError)
                said = error_line(exc)
                error = said if said == type(exc).__name__ else f"{type(exc).__name__}: {said}"
                raise MemoryError(f"{self.location} does not answer as a Qdrant server does ({error}): check the URL "
                                  "(Qdrant's REST port is 6333)") from exc

        return call


def _name_folder(exc: Exception, opened_as: str, named: str) -> None:
    """Have the engine's error `exc` say `named` where it says `opened_as` (the path it was given for the shard)."""
    exc.args = tuple(a.replace(opened_as, named) if isinstance(a, str) else a for a in exc.args)


class EngineShard:
    """The engine's shard, opened through the memory folder's descriptor (`EdgeMemoryStore._engine_path`), whose
    errors name its files by the memory's folder ("failed to load segment /srv/memory/shard/segments/..."), not
    by /proc/self/fd/N, which means nothing to whoever reads them.

    A file damaged after the memory opened is met only when a search or an edit reads it: the engine says so
    ("Failed to decompress LZ4 value", a payload page overwritten) or panics (a graph's links overwritten), which
    reached the user as the raw error, or a PanicException past every `except Exception`. Both are a
    `MemoryDamagedError` naming the memory (`shown`), as a damaged file found at load is."""

    def __init__(self, shard: Any, opened_as: str, named: str, shown: str) -> None:
        self.shard, self.opened_as, self.named, self.shown = shard, opened_as, named, shown

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.shard, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                _name_folder(exc, self.opened_as, self.named)
                # Not an argument it refused (a ValueError or TypeError of pyo3's conversion), which quotes the
                # argument: an id "corrupted-scan-7" had called the files damaged. Its own failures are Exceptions.
                if not isinstance(exc, (ValueError, TypeError)) and _engine_read_failure(exc):
                    raise _damaged(self.shown, _engine_damage_said(exc)) from exc
                raise
            except BaseException as exc:  # re-raised at once unless the engine's panic (KeyboardInterrupt...)
                if not _engine_panic(exc):
                    raise
                raise _damaged(self.shown, f"the engine failed reading them: {error_line(exc)}") from exc

        return call


class ClosedClient:
    """Where a closed store's client was: every use says the memory is closed (the client's own errors say
    "QdrantLocal instance is closed" or that an HTTP client was)."""

    def __init__(self, location: str) -> None:
        self.location = location

    def __getattr__(self, name: str) -> Any:
        raise MemoryError(f"the memory at {without_secrets(self.location)} is closed: open it again to use it")


class FeaturizerMismatchError(FeaturizerError):
    """Vectors from one encoder were about to meet a memory built with another."""


class Neighbor(NamedTuple):
    """One memory point returned by a search, best first.

    A named tuple rather than a frozen dataclass: a batch of 1,000 queries makes 50,000 of them, and a frozen
    dataclass's constructor cost a tenth of a batched query at 1.28M points.
    """

    id: str
    label: str
    source: str
    similarity: float
    payload: dict[str, Any] = {}  # noqa: RUF012 - shared empty default, never mutated

    @property
    def reliability(self) -> float:
        return float(self.payload.get(RELIABILITY_KEY, 1.0))


@dataclass(frozen=True)
class IndexUpkeep:
    """How far an embedded memory's index has drifted from its points (README, "Upkeep"), read from the engine.

    The engine indexes points when a build, import, copy or erase ends, and a forget or an edit of a point's
    payload (a relabel, a prune mark) leaves the copy the index held there, marked deleted: searches through an
    index most of which is deleted drift from exact ones. `vmem erase` gives it back.
    """

    points: int  # in the memory
    indexed: int  # of them, in the engine's HNSW index
    unindexed: int  # searched in full (exactly, more slowly): added or edited since, or too few to index
    deleted_in_index: int  # copies the index still holds of points forgotten or edited since it was built

    @property
    def deleted_share(self) -> float:
        """The share of the index's vectors that are deleted: what searches through it drift with."""
        held = self.indexed + self.deleted_in_index
        return self.deleted_in_index / held if held else 0.0

    @property
    def advice(self) -> str | None:
        """One line saying to erase, where the index is deleted enough for searches to have drifted; else None."""
        if self.deleted_share < ERASE_ADVISED_DELETED_SHARE:
            return None
        return (f"{self.deleted_share:.0%} of the index is points forgotten or edited since it was built "
                f"({self.deleted_in_index:,} of {self.indexed + self.deleted_in_index:,}): searches drift from exact "
                "ones; run vmem erase (POST /v1/memory/erase to a service)")

    def as_dict(self) -> dict[str, Any]:
        return {"points": self.points, "indexed": self.indexed, "unindexed": self.unindexed,
                "deleted_in_index": self.deleted_in_index, "deleted_share": round(self.deleted_share, 4),
                "advice": self.advice}


def _hnsw_segments_from_files(segments: Path) -> tuple[int, int] | None:
    """(vectors, deleted) over the engine's HNSW-indexed segments, read from their files: its API counts the
    indexed vectors, deleted ones included, but not those deleted. None where the files are not as this engine
    version writes them (each segment's point versions, 8 bytes a point, and a bit a point set where deleted)."""
    vectors = deleted = 0
    try:
        for segment in segments.iterdir():
            config = json.loads((segment / "segment.json").read_text(encoding="utf-8"))["config"]["vector_data"]
            if not any(v.get("index", {}).get("type") == "hnsw" for v in config.values()):
                continue  # appendable, or too small to index: searched in full
            vectors += (segment / "id_tracker.versions").stat().st_size // 8
            deleted += int.from_bytes((segment / "id_tracker.deleted").read_bytes(), "little").bit_count()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return vectors, deleted


def check_tags(tags: dict[str, Any] | None) -> dict[str, Any]:
    """A point's tags as both backends store them alike: JSON values, finite numbers, 64-bit integers.

    ValueError otherwise: the embedded engine refused NaN with an opaque TypeError (the whole add lost), stored
    2**64 as a float and bytes as a list of ints, where a server kept each as given.
    """
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"tag {where} = {value} is outside 64-bit integers: store it as a string")
        elif isinstance(value, float):
            if not np.isfinite(value):
                raise ValueError(f"tag {where} = {value} is not a finite number")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"tag {where} has a key {key!r} that is not a string")
                check(item, f"{where}.{key}")
        else:
            raise ValueError(f"tag {where} is a {type(value).__name__}: tags hold strings, numbers, booleans, "
                             "lists and objects (JSON)")

    out = dict(tags or {})
    for key, value in out.items():
        check(value, repr(key))
    return out


def _nearest_then_id(hit: Neighbor) -> tuple[float, str]:
    return -hit.similarity, hit.id


# Points asked for beyond k when the k-th place is tied: room for that many copies of one image.
TIES_ASKED_FOR = 16


@dataclass(frozen=True)
class StoredPoint:
    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None

    @property
    def label(self) -> str:
        return self.payload["label"]

    @property
    def source(self) -> str:
        return self.payload["source"]


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim:
        raise FeaturizerMismatchError(
            f"vectors of shape {tuple(np.shape(vectors))} do not fit this memory's {dim}-d features"
        )
    if not np.isfinite(v).all():
        # The embedded engine stored such a point and never returned it; a Qdrant server refuses it.
        bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
        hold = "holds" if len(bad) == 1 else "hold"
        raise ValueError(f"{len(bad)} of the {counted(len(v), 'vector')} {hold} NaN or infinite values (the first: row "
                         f"{bad[0]}): no search could ever find them")
    return v


# The most a vmem.json is read to: its label names are most of it (a million of 100 bytes fit)
_MOST_META_BYTES = 256 << 20


def _meta_bytes(path: Path) -> bytes:
    """The bytes of a memory's vmem.json, `path`, read only where it is a plain file (`read_small_file`; through a
    link, which a memory put together by hand may hold): every command reads it, and a FIFO of its name had each
    wait for a writer forever, a link to /dev/zero read until memory ran out. MemoryStoreError saying so where it
    is not (MemoryMetadataError); OSError where it cannot be opened."""
    try:
        return read_small_file(path, _MOST_META_BYTES, follow_links=True)
    except NotASmallFile as exc:
        raise MemoryMetadataError(f"{_shown(path)}, the memory's metadata, is {exc}: restore it from a backup, or "
                               "build the memory again in a new directory") from None


def read_meta_file(folder: Path) -> MemoryMeta:
    """An embedded memory's metadata read from its file, without opening the memory (one another process holds);
    MemoryStoreError where the folder holds none, or its vmem.json is no plain file (`_meta_bytes`)."""
    try:
        return MemoryMeta.model_validate_json(_meta_bytes(folder / META_FILE).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise MemoryStoreError(f"no vmem memory at {folder} ({META_FILE}: {exc})") from None


def memory_key(meta: MemoryMeta, collection: str = DEFAULT_COLLECTION) -> str:
    """`MemoryStore.key` of a memory made with this metadata, in this collection."""
    identity = f"{meta.created_at}#{collection}"
    return f"memory-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


class MemoryStore(ABC):
    """A Qdrant collection of (vector, label, source) points. Cosine similarity throughout."""

    # Called with the number of points about to be indexed as a segment, before an `add` stops for it
    # (minutes at 640k points), so a progress display can say why it paused.
    on_segment_indexing: Callable[[int], None] | None = None

    meta: MemoryMeta
    location: str
    journal: Journal  # one entry per edit (retrieval.journal), kept with the memory
    # Opened by `open_read_only`: searches and reads only, every edit refused (MemoryReadOnlyError)
    read_only = False
    # What an edit's refusal says of a memory opened read-only: who opened it so, and how to edit it. A service
    # serving it so says its own (`SERVED_READ_ONLY`); Python's and the CLI's opening, this.
    read_only_reason = ("opened read-only (read_only=True): nothing was changed. Open it without read_only to edit "
                        "it, in a process that holds it alone")

    @property
    def key(self) -> str:
        """A name for this memory that stays with it when its folder is moved or renamed and differs for any other
        memory (a copy, a new memory made where an old one was, another collection): `memory-` and a hash of when
        it was made and its collection. What vmem keeps of a memory outside it is filed under it (DMN streams,
        a shared thumbnail folder's thumbnails)."""
        return memory_key(self.meta, getattr(self, "collection", None) or DEFAULT_COLLECTION)

    @property
    def dim(self) -> int:
        return self.meta.featurizer.dim

    @property
    def compared_dtype(self) -> str:
        """The type a search compares the query and the points in: the originals' (`IndexSettings.vectors_dtype`;
        the engine rounds the query to float16 against float16 ones), which exact evaluation must compare in too."""
        return self.meta.index.vectors_dtype

    def check_writable(self) -> None:
        """Raise MemoryReadOnlyError where the memory was opened read-only (`open_read_only`), as every edit does:
        for a caller to ask before work only an edit would use (images decoded and embedded, thumbnails kept)."""
        if self.read_only:
            raise MemoryReadOnlyError(
                f"the memory {getattr(self, 'source', None) or self.location} is {self.read_only_reason}")

    def check_featurizer(self, spec: FeaturizerSpec) -> None:
        """Raise unless `spec` is the encoder this memory was built with."""
        mine = self.meta.featurizer
        if (spec.name, spec.dim, spec.preprocessing) != (mine.name, mine.dim, mine.preprocessing):
            raise FeaturizerMismatchError(
                f"this memory holds {mine.name} features ({mine.dim}-d, crop {mine.preprocessing.crop}); "
                f"{spec.name} ({spec.dim}-d, crop {spec.preprocessing.crop}) cannot be used with it. "
                "Use the memory's own featurizer, or build a new memory."
            )
        if mine.weights_sha256 and not spec.weights_sha256 and mine.name.startswith("python:"):
            raise FeaturizerMismatchError(
                f"this memory was built with {mine.name} when it gave a digest of its weights "
                f"({mine.weights_sha256[:12]}), and it gives none now, so whether its weights are the memory's "
                "is unknown: return a retrieval.own_encoders.ModuleFeaturizer from the plugin (or set "
                "weights_sha256 on its featurizer), or build a new memory.")
        if mine.weights_sha256 and not spec.weights_sha256:
            # Built from a folder, now no folder of that name here: a relative one (`hf:models/vit`, before vmem
            # recorded it absolute) read from another directory is a Hub id, another model under the same name.
            raise FeaturizerMismatchError(
                f"this memory was built from the model folder {mine.name} (files' digest "
                f"{mine.weights_sha256[:12]}), which is not a folder here (working directory {os.getcwd()}), so "
                "its name would load another model (a Hub id's). Open it from the directory it was built in (there, "
                "vmem copy --featurizer with the folder's absolute path makes a memory that opens anywhere).")
        if mine.weights_sha256 and spec.weights_sha256 and mine.weights_sha256 != spec.weights_sha256:
            raise FeaturizerMismatchError(
                f"the model at {spec.name} holds other weights than those this memory was built with (files' "
                f"digest {spec.weights_sha256[:12]}, built with {mine.weights_sha256[:12]}): their features "
                "cannot be compared. Put the memory's weights back there, or build a new memory."
            )

    def add(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str],
        tags: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
    ) -> list[str]:
        """Insert (or overwrite) points; returns their ids, which derive from the sources."""
        v = check_vectors(vectors, self.dim)
        if not (len(v) == len(labels) == len(sources)):
            raise ValueError("vectors, labels and sources differ in length")
        now = datetime.now(UTC).isoformat()
        per_point = tags if isinstance(tags, Sequence) else [tags or {}] * len(v)
        ids, payloads = [], []
        for label, source, t in zip(labels, sources, per_point, strict=True):
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"label must be a non-empty string, got {label!r}")
            ids.append(point_id_for(source))
            payloads.append({"label": label, "source": source, "tags": check_tags(t), "added_at": now})
        self._note_adds(ids, labels)
        if len(set(ids)) < len(ids):
            # A source twice in one call is one point, its last version (what the engine keeps): written once,
            # or the embedded memory's copy of the originals kept the earlier version's row past a forget.
            last = sorted({pid: i for i, pid in enumerate(ids)}.values())
            self._upsert([ids[i] for i in last], v[last], [payloads[i] for i in last])
        elif ids:
            self._upsert(ids, v, payloads)
        return ids

    @abstractmethod
    def _upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None: ...

    @contextmanager
    def adding(self, note: PendingEdit | None) -> Iterator[None]:
        """Within the block, each point this thread writes (`add`, `put`) is first listed beside the add's note
        (`Journal.note_adds`), so that the next opening journals what a process killed before its entry added."""
        token = _ADDING.set((id(self), note) if note is not None else None)
        try:
            yield
        finally:
            _ADDING.reset(token)

    def _note_adds(self, ids: Sequence[str], labels: Sequence[str]) -> None:
        if (adding := _ADDING.get()) is not None and adding[0] == id(self):
            self.journal.note_adds(adding[1], ids, labels)

    def put(self, points: Sequence[StoredPoint]) -> None:
        """Write points as another memory stored them, ids and payloads kept (copying a memory): unlike `add`,
        nothing is made anew (`added_at`, tags and pruning state stay). Each needs its vector."""
        if not points:
            return
        if any(p.vector is None or "label" not in p.payload or "source" not in p.payload for p in points):
            raise ValueError("each point needs its vector, label and source")
        vectors = check_vectors(np.stack([p.vector for p in points]), self.dim)  # type: ignore[misc]
        # The row of a copy of the originals is the source memory's own (rescore_doubtful): never carried over.
        payloads = [{k: v for k, v in p.payload.items() if k != ROW_KEY} for p in points]
        ids = [str(uuid.UUID(str(p.id))) for p in points]
        self._note_adds(ids, [str(p["label"]) for p in payloads])
        self._upsert(ids, vectors, payloads)

    @abstractmethod
    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete points by id; returns how many existed."""

    @abstractmethod
    def delete_where(self, label: str | None = None, source_prefix: str | None = None) -> int:
        """Delete every point with this label and/or whose source starts with the prefix."""

    @abstractmethod
    def ids_where(self, label: str | None = None, source_prefix: str | None = None) -> list[str]:
        """Ids of the points with this label and/or source prefix."""

    @abstractmethod
    def count(self, label: str | None = None, searchable: bool = False) -> int:
        """Points (with this label); with `searchable`, only those searches can return (not hard-pruned)."""

    @abstractmethod
    def label_counts(self) -> dict[str, int]:
        """Points per label, most frequent first."""

    def label_counts_kept(self) -> dict[str, int] | None:
        """`label_counts` as last counted, perhaps before the latest writes; None where none are kept."""
        return None

    def query_batch(
        self,
        vectors: np.ndarray,
        k: int,
        labels: Sequence[str] | None = None,
        exact: bool = False,
    ) -> list[list[Neighbor]]:
        """The k nearest points for each vector, optionally only among these labels.

        Points equally near (one image stored under several sources) come in id order, and the k-th place
        goes by it too: engines order ties as they please (the embedded one differently at k=1 and k=3, and
        differently from a server), and a vote's tie-break reads that order. One point more is asked for to
        see a tie at the k-th place; a query that has one is asked again with room for the tied points.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        v = check_vectors(vectors, self.dim)
        found = self._nearest(v, k + 1, labels, exact)
        tied = []
        for i, hits in enumerate(found):
            if len({h.similarity for h in hits}) < len(hits):  # rare: sorting every answer cost 4% of a query
                hits.sort(key=_nearest_then_id)
                if len(hits) > k and hits[k].similarity == hits[k - 1].similarity:
                    tied.append(i)
            del hits[k:]
        if tied:
            for i, hits in zip(tied, self._nearest(v[tied], k + TIES_ASKED_FOR, labels, exact), strict=True):
                hits.sort(key=_nearest_then_id)
                found[i] = hits[:k]
        return found

    @abstractmethod
    def _nearest(self, vectors: np.ndarray, limit: int, labels: Sequence[str] | None,
                 exact: bool) -> list[list[Neighbor]]:
        """Up to `limit` nearest points for each (checked) vector, best first, ties in any order."""

    def query(
        self, vector: np.ndarray, k: int, labels: Sequence[str] | None = None, exact: bool = False
    ) -> list[Neighbor]:
        return self.query_batch(check_vectors(vector, self.dim), k, labels, exact)[0]

    def similar(self, vector: np.ndarray, min_similarity: float, limit: int) -> list[Neighbor]:
        """The points whose cosine similarity to `vector` is at least `min_similarity`, most similar first (equally
        similar ones in id order), at most `limit` of them.

        By exact search over every point, with the original vectors (as `query_batch(exact=True)` searches, and
        never from quantized codes), and hard-pruned points included: what unlearning a copy of an image needs
        (`VisualMemory.near_duplicates`). A search that votes leaves the pruned points out and may go through
        the index; a forget must find a copy the graph or the codes would miss, and one pruning took out.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        v = check_vectors(vector, self.dim)
        if len(v) != 1:
            raise ValueError(f"similar takes one vector, not {len(v)}")
        hits = self._similar(v[0], float(min_similarity), limit)
        hits.sort(key=_nearest_then_id)
        return hits

    @abstractmethod
    def _similar(self, vector: np.ndarray, min_similarity: float, limit: int) -> list[Neighbor]:
        """Up to `limit` points at least `min_similarity` similar to the (checked) vector, by exact search over
        every point, hard-pruned ones included; in any order."""

    @abstractmethod
    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]: ...

    @property
    def journal_in_read_only_copy(self) -> bool:
        """Whether this memory is a read-only service's private copy (`open_read_only`), journal and notes too."""
        return False

    def settle_journal(self) -> int:
        """Journal the adds, forgets, relabels, namings, erasures, prunings, tunes and changes of search settings
        that a process killed before their entries made (`Journal.settle`: their notes, and what the points or names
        show now); returns the points (labels named) so journaled. Called as an embedded memory opens, when no
        other process edits it. A journal that cannot be written leaves its notes for the next opening (logged:
        the memory opens)."""
        n = 0
        try:
            for note in self.journal.pending():
                if made := self.settle_note(note):
                    what = {"erase": "an erase", "tune": "a tune", "settings": "a change of search settings",
                            "add": f"an add of {counted(made, 'point')}",
                            "name": f"a naming of {counted(made, 'label')}"}.get(
                                note.op, f"a {note.op} of {counted(made, 'point')}")
                    # A read-only service settles its private copy (`open_read_only`): the memory's own journal is
                    # untouched, and said so, or "journaled" read as done for good
                    where = (" (in this read-only copy only: the memory's own journal records it at its next opening "
                             "for edits)" if self.journal_in_read_only_copy else "")
                    log.warning("journaled %s that process %d on %s made at %s and was stopped before journaling%s",
                                what, note.pid, note.host, note.begun, where)
                n += made
        except OSError as exc:
            log.error("the memory's journal could not record the edits a stopped process left unjournaled "
                      "(%s: %s); the next opening tries again", os_error_reason(exc), getattr(exc, "filename", "")
                      or "")
        return n

    def settle_note(self, note: PendingEdit, at_open: bool = True, by_hand: bool = False) -> int:
        """`Journal.settle` of one note, with what this memory shows now of its edit (`by_hand`: an operator's)."""
        pruning = self.pruning_state() if note.op in ("prune", "unprune") else None
        if note.op == "add":  # the points it listed as it went
            note = note.model_copy(update={"before": self.journal.noted_adds(note)})
        shown = (self.holds_no_deleted_vectors() if note.op == "erase" else note.settings_made(
            self.meta.settings, self.meta.index.model_dump(mode="json")) if note.op in ("tune", "settings") else False)
        return self.journal.settle(note, self.existing_labels(list(note.before)), self.meta.label_names, at_open,
                                   erased=shown,
                                   pruning=(pruning[0], pruning[1]["marked"]) if pruning is not None else None,
                                   by_hand=by_hand)

    @contextmanager
    def noted(self, op: NotedOp, before: Mapping[str, str] = {},  # read, never changed
              begun_with: Mapping[str, Any] | None = None, **fields: Any) -> Iterator[PendingEdit | None]:
        """Note an edit in the journal before its first write (`Journal.intend`: a forget's or relabel's points
        {id: label before}, a prune's `begun_with`), for the block to make and journal and settle
        (`Journal.settled`) once journaled. A process killed in between leaves the note for the memory's next
        opening to journal what was made; an edit that raises midway (a full disk after some of a relabel's
        writes) is journaled here as far as it went. A note left by an entry that could not be written is settled
        at the next opening too."""
        # A memory gone (its folder moved away, a backup put there) first: the journal is written by the folder's
        # name, and a refused erase had journaled itself into the backup (its note settled as made: nothing to erase)
        self.check_available()
        note = (self.journal.intend(op, before, begun_with=begun_with, **fields)
                if before or op not in ("forget", "relabel") else None)
        try:
            yield note
        except BaseException:
            if note is not None:
                try:
                    self.settle_note(note, at_open=False)
                except Exception as exc:  # the store or the journal failing too: the next opening settles the note
                    # One line, as the edit's own error is (a Qdrant server gone midway fails both): the trace at debug
                    log.error("a %s that failed midway could not be journaled now (%s); the memory's next opening will "
                              "journal what it made", op, error_line(exc))
                    log.debug("the settling that failed", exc_info=True)
            raise

    def marked_by_pruning(self, batch_size: int = 1024) -> list[str]:
        """The points pruning marks: excluded, blamed or down-weighted (what `vmem prune --undo` clears)."""
        return [p.id for batch in self.scroll(batch_size, payload_keys=[EXCLUDED_KEY, PRUNE_COUNT_KEY, RELIABILITY_KEY])
                for p in batch if p.payload.get(EXCLUDED_KEY) or p.payload.get(PRUNE_COUNT_KEY) is not None
                or p.payload.get(RELIABILITY_KEY, 1.0) != 1.0]

    def pruning_state(self, marked: int | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The memory's pruning report (None: not pruned), and as a prune's note keeps it (`PendingEdit.begun_with`):
        the points pruning marks (`marked`, counted where not given) and the report's time."""
        report = self.meta.settings.get("pruning")
        return report, {"marked": len(self.marked_by_pruning()) if marked is None else marked,
                        "pruning_at": (report or {}).get("at")}

    def holds_no_deleted_vectors(self) -> bool:
        """Whether the memory's files hold no vector of a deleted point (what `erase_forgotten` leaves); False where
        that is not known here."""
        return False

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return set(self.existing_labels(ids))

    def existing_labels(self, ids: Sequence[str]) -> dict[str, str]:
        """The stored label of each of these points that exists."""
        out: dict[str, str] = {}
        for start in range(0, len(ids), SERVER_REQUEST_IDS):
            out |= {p.id: p.payload.get("label") for p in self.retrieve(ids[start : start + SERVER_REQUEST_IDS])}  # type: ignore[misc]  # every point has a label
        return out

    def relabel(self, ids: Sequence[str], label: str) -> dict[str, str]:
        """Give these points `label`, vectors untouched; returns {id: label before} of those that changed
        (points missing, or already labelled so, are left alone).

        Their pruning marks go (excluded, reliability, prune count): they judged the point under its old label.
        The label it held before and when it changed are kept in its payload.
        """
        if not isinstance(label, str) or not label:
            raise ValueError(f"label must be a non-empty string, got {label!r}")
        before = {pid: old for pid, old in self.existing_labels(list(ids)).items() if old != label}
        by_old: dict[str, list[str]] = {}
        for pid, old in before.items():
            by_old.setdefault(old, []).append(pid)
        now = datetime.now(UTC).isoformat()
        for old, group in by_old.items():
            for start in range(0, len(group), SERVER_REQUEST_IDS):
                chunk = group[start : start + SERVER_REQUEST_IDS]
                written = self.set_payload_of_existing(chunk, {
                    "label": label, RELABELLED_FROM_KEY: old, RELABELLED_AT_KEY: now,
                    EXCLUDED_KEY: None, PRUNE_COUNT_KEY: None, RELIABILITY_KEY: 1.0})
                for gone in set(chunk) - written:
                    del before[gone]
        return before

    def set_payload_of_existing(self, ids: Sequence[str], payload: dict[str, Any]) -> set[str]:
        """`set_payload` on those of these points that still exist; returns their ids.

        Both engines refuse the whole write when one id is missing, which a point forgotten since the caller
        read it (a concurrent forget) is: the others still take the payload.
        """
        try:
            self.set_payload(ids, payload)
            return set(ids)
        except Exception:
            still = {p.id for p in self.retrieve(list(ids))}
            if len(still) == len(set(ids)):
                raise
            if still:
                self.set_payload(sorted(still), payload)
            return still

    @abstractmethod
    def scroll(self, batch_size: int = 1024, with_vectors: bool = False,
               payload_keys: Sequence[str] | None = None) -> Iterator[list[StoredPoint]]:
        """Every point, in batches (order unspecified); with `payload_keys`, only those keys of its payload (a
        self-search of 1.28M points held every point's tags and times it never read)."""

    @abstractmethod
    def page(self, label: str | None = None, source_prefix: str | None = None, start: str | None = None,
             limit: int = 100, excluded: bool | None = None,
             with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        """Up to `limit` points (with this label and/or source prefix; only hard-pruned ones, or none, with
        `excluded`) in id order from id `start` on, and the id the next page starts at (None after the last):
        a cursor that edits between pages do not shift. With `with_vectors`, each with its stored vector."""

    @abstractmethod
    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge `payload` into these points' payloads (e.g. soft-pruning reliability)."""

    @abstractmethod
    def save_meta(self) -> None:
        """Persist `self.meta` (after changing its settings)."""

    @contextmanager
    def meta_edit(self) -> Iterator[MemoryMeta]:
        """Change `self.meta` inside the block; saved at its end, and put back as it was if saving fails. Changed
        first and saved after, a failed save (a full disk) left the change answered from memory until a restart
        lost it: names a client was told had failed showed as set."""
        before = self.meta.model_copy(deep=True)
        try:
            yield self.meta
            self.save_meta()
        except BaseException:
            self.meta = before
            raise

    def edits_elsewhere(self) -> frozenset[str]:
        """What other processes changed in this memory since the last call (or the opening): "points" (added,
        deleted, relabelled, pruned) and/or "meta" (label names, tuned settings), the latter read again.

        Only a memory several processes share (a Qdrant server's collection) has any: an embedded memory is
        open in one process at a time.
        """
        return frozenset()

    def check_available(self) -> None:  # noqa: B027 - nothing to check for most backends
        """Raise MemoryGoneError if the memory can no longer take edits that last (readiness checks)."""

    def prefetch(self) -> int:
        """Read what searches use once, so that the OS caches it; returns the bytes read (0 where there is
        nothing to read: a Qdrant server holds its own files)."""
        return 0

    def optimize(self) -> None:  # noqa: B027 - a no-op unless the backend has work to do
        """Build indexes now rather than at the first query."""

    # Whether `erase_forgotten` works here.
    erases_on_demand = False

    def erase_forgotten(self) -> None:
        """Rewrite the memory's files so that the vectors of deleted points are no longer in them.

        A delete makes a point unreachable at once; its bytes stay in the engine's segment files until the
        engine rewrites them. Raises MemoryError where the memory cannot do this on demand.
        """
        raise MemoryError(f"{type(self).__name__} cannot erase forgotten points on demand")

    def index_upkeep(self, wait: bool = True) -> IndexUpkeep | None:
        """How far the index has drifted from the points (`IndexUpkeep`); None where that is not known here (a
        Qdrant server indexes and vacuums its collection on its own). With `wait=False`, TimeoutError where the
        memory's writes are held (a backup copying, an edit): a service's stats and metrics, which must not wait
        minutes for a backup, show what they counted last."""
        return None

    backs_up_files = False  # whether `write_backup` can copy the memory's files (an embedded memory's)

    def size_on_disk(self) -> int:
        """The disk space the memory's files take, where it has files of its own (embedded memories)."""
        raise NotImplementedError

    def write_backup(self, folder: Path) -> int:
        """Copy the memory's files into the empty folder `folder` (embedded memories); returns the bytes written."""
        raise NotImplementedError

    def flush(self) -> None:  # noqa: B027
        """Make acknowledged writes durable."""

    def close(self) -> None:  # noqa: B027
        pass

    @property
    def closed(self) -> bool:
        """Whether `close()` has released it (every use then says so)."""
        return False

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _allocated_bytes(folder: Path, follow_links: bool = False) -> int:
    """Disk blocks the files under `folder` take (the engine preallocates sparse files: their sizes overstate); with
    `follow_links`, those in the folders linked from it too (each once), as a backup copies them."""
    total, seen = 0, set()
    for root, dirs, files in os.walk(folder, followlinks=follow_links):
        if follow_links:
            here = os.stat(root)
            if (here.st_dev, here.st_ino) in seen:  # a link back up: walked once
                dirs[:] = []
                continue
            seen.add((here.st_dev, here.st_ino))
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def _read_written_parts(path: Path, buffer: bytearray) -> int:
    """Read a file's data into the page cache, skipping holes (the engine preallocates its files sparse);
    returns the bytes read."""
    view, done = memoryview(buffer), 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < end and (n := os.preadv(fd, [view[: min(len(view), end - pos)]], pos)) > 0:
                pos, done = pos + n, done + n
            pos = max(pos, end)
    finally:
        os.close(fd)
    return done


def _set_vacuum_thresholds(config_path: Path) -> None:
    """Give an embedded memory made before VACUUM_THRESHOLDS existed those thresholds (before the engine loads).

    The engine takes new settings only with a whole configuration, which vmem would have to rebuild from what
    it stored; only the two vacuum settings are changed here, in its own file, replaced in one step.
    """
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    # Written by the engine with every key (null where unset), or null as a whole: written back the same way.
    optimizers = config.get("optimizers") or dict.fromkeys(
        ["default_segment_number", "max_segment_size", "indexing_threshold", "prevent_unoptimized"])
    if all(optimizers.get(key) == value for key, value in VACUUM_THRESHOLDS.items()):
        return
    config["optimizers"] = {**optimizers, **VACUUM_THRESHOLDS}
    write_atomically(config_path, json.dumps(config))


def _str_id(pid: Any) -> str:
    return str(pid)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic GC while a batch makes its objects (none of them cyclic).

    A batch of 1,000 queries makes some 200,000 objects; the collections they set off walk every live object,
    results of earlier batches included. Same run, 1.28M points: 702 -> 905 batched queries/s.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ------------------------------------------------------------------- embedded (qdrant-edge)


def _remove_dead_segment_builds(shard_path: Path) -> None:
    """Delete what an indexing killed midway left in the shard's `temp_segments`: the engine neither loads nor
    removes it (84 MB for a 20,000-point memory, gigabytes at ImageNet scale, kept for good). Safe once the shard
    is loaded under vmem's lock: the engine indexes only when asked (`optimize`), so nothing is being built."""
    temp = shard_path / "temp_segments"
    if not temp.is_dir():
        return
    for leftover in list(temp.iterdir()):
        log.warning("removing %s, left by an indexing that did not finish", leftover)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _deadline(wait: float) -> float:
    """The time (`time.monotonic`) until which an opening waits `wait` seconds for a memory's holder to let go."""
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:  # NaN too
        raise ValueError(f"wait is the seconds to wait for the process holding the memory to let go, 0 or more "
                         f"(math.inf: no limit): got {wait!r}")
    return time.monotonic() + wait


# How soon an opening that waits tries the lock again: the first pause, doubled up to the longest. Tried, not
# blocked on: a blocking flock cannot be given up at a deadline but by a signal (the main thread's only) or by a
# thread left behind to take the lock later.
WAIT_FIRST_PAUSE_S, WAIT_LONGEST_PAUSE_S = 0.05, 0.5


def _shown(folder: Path) -> str:
    """A memory's folder as its waits and refusals name it: absolute, `..` taken out (`/a/repo/../mem` read as
    another folder than `/a/mem`), and escaped by `visible` (a folder's name is of someone else's making)."""
    return visible(os.path.abspath(folder))


def _flock_within(open_lock: Callable[[], Any], how: int, folder: Path, deadline: float, held_here_says: str,
                  holding: str = _IN_USE, waiting: str = "waiting for it to let go") -> Any:
    """The lock file of the memory in `folder`, opened by `open_lock`, with the flock `how` (LOCK_EX, LOCK_SH)
    taken on it; while another process holds it and `deadline` is not past, tried again after a pause, having said
    once (a warning) who holds it and that this waits. None where it is held still at the deadline (at once where
    there is none). Opened anew for each try, and closed between: where the holder noted is gone, `holder_note`
    names the processes that have the file open, and a process waiting beside them was named as one to end.
    Refused at once, MemoryInUseError(`held_here_says`), where this process holds the memory: it would never let go.
    `waiting`: what the warning says it waits for."""
    import fcntl

    pause, said = WAIT_FIRST_PAUSE_S, False
    try:  # Ctrl-C anywhere in the wait (mostly its sleep): the memory was not touched
        while True:
            fh = open_lock()
            try:
                fcntl.flock(fh, how | fcntl.LOCK_NB)
                return fh
            except BlockingIOError:
                fh.close()
                if held_here(folder):
                    raise MemoryInUseError(held_here_says) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if not said:
                    readers = _readers(folder) if how == fcntl.LOCK_EX else None
                    holds, who = (holding, holder_note(folder).who) if readers is None else (_READ, readers)
                    limit = "no time limit" if left == float("inf") else f"up to {left:,.0f} s"
                    log.warning("the memory at %s %s%s: %s (%s)", _shown(folder), holds,
                                f": {who}" if who else "", waiting, limit)
                    said = True
                time.sleep(min(pause, left))
                pause = min(pause * 2, WAIT_LONGEST_PAUSE_S)
    except KeyboardInterrupt as exc:  # the CLI's SIGTERM (`Terminated`) too: it had said "what was done is kept"
        raise WaitInterrupted(folder, exc) from None


def held_here(location: str | Path) -> bool:
    """Whether this process (not a forked child's parent) has the embedded memory at `location` open."""
    return _open_folders.get(Path(os.path.realpath(os.path.expanduser(location)))) == os.getpid()


def _hold_open_lock(folder: Path, deadline: float = 0.0) -> Any:
    """An exclusive lock for as long as this store holds the memory, taken before any of its files is touched;
    waited for until `deadline` (`_deadline`) where another process holds it.

    The engine locks its write-ahead log only once it has opened the segments, and a second opening that got
    that far (a `vmem info` beside a Python session) left the first unable to flush or close ("tracker_journal.dat
    is shorter than expected"). Held on an open file (fcntl), so a process that dies releases it."""
    import fcntl

    def open_lock() -> Any:
        return open(folder / OPEN_LOCK_FILE, "a", encoding="utf-8")  # held for the store's lifetime

    # A notebook's cell run again: the earlier object still holds it, perhaps only through Out[n]
    here = (f"the memory at {_shown(folder)} is already open in this process: close the object that opened it "
            "(mem.close(); `with VisualMemory.open(...) as mem:` closes it at the block's end) or use that one. "
            "In a notebook, a memory shown as a cell's output is still held by Out[n] after `del`: Out[n].close()")
    fh = _flock_within(open_lock, fcntl.LOCK_EX, folder, deadline, here)
    if fh is None:
        raise MemoryInUseError(_held_elsewhere(folder), folder=folder)
    note_holder(fh)
    return fh


# Said of a memory whose open lock is held shared only (`_readers`)
_READ = "is being read by another process"


def _readers(folder: Path) -> str | None:
    """Who holds the open lock of the memory in `folder` shared, where no process holds it exclusive (open): a
    reader of its files at rest (vmem info, labels, history: `at_rest`), a read-only service copying it as it
    starts, a process waiting for its creation; each lets go once it has read what it reads. Named by the processes
    that have the lock file open (`lock_openers`; '' where unknown), not by the note, which is of the last process
    that held it open. None where it is held exclusive (or cannot be read); where no one holds it now (let go
meanwhile), as read: trying again is the advice there too.

    Told by taking the lock shared, and letting go at once: flock grants that beside shared holders only."""
    import fcntl

    try:
        with open(folder / OPEN_LOCK_FILE, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # held exclusive (BlockingIOError), or the file gone or unreadable: as a holder
        return None
    return lock_openers(folder)


def _held_elsewhere(folder: Path) -> str:
    """Why `folder`'s memory is refused: the process that holds it, as its lock file names it (`holder_note`), and
    what to do about that one; a guess at it where no note says (a process it started holds the lock). Where only
    readers of its files hold it (`_readers`, milliseconds), to try again: ending them was no advice."""
    if (readers := _readers(folder)) is not None:
        return (f"the memory at {_shown(folder)} {_READ}{f': {readers}' if readers else ''} (vmem info, labels or "
                "history reading its files, or a read-only vmem serve copying it as it starts), which lets go once "
                "it has read them: try again, or wait for it (--wait SECONDS; wait= in Python)")
    who, command, orphans = holder_note(folder)
    said = f"the memory at {_shown(folder)} {_IN_USE}"
    if orphans:
        ids = " ".join(str(p) for p in orphans)
        return (f"{said}: {who}. End it (kill {ids}) if it no longer uses the memory; it lets go as it exits")
    if not who:
        return (f"{said} (a running vmem serve or build?); stop it, or put the memory on a Qdrant server "
                "(--qdrant-url) to share it. A running vmem serve answers for it over HTTP: its points, an export, "
                "a backup (POST /v1/memory/backup)")
    served = served_by(folder)
    if command == "serve" or served is not None:
        urls = served.get("urls") if served is not None else None
        at = f" at {visible(str(urls[0]))}" if isinstance(urls, list) and urls else ""
        return (f"{said}: {who}, which serves it{at}. Ask the service over HTTP instead (POST /v1/classify; POST "
                "/v1/memory adds, DELETE /v1/memory forgets, POST /v1/memory/relabel, GET /v1/memory/points, POST "
                "/v1/memory/backup), or stop it")
    share = "; or put the memory on a Qdrant server (--qdrant-url) to share it"
    if command is not None:
        resumes = " (vmem build carries on where it stopped when run again)" if command == "build" else ""
        return f"{said}: {who}. Wait for it to end, or stop it{resumes}{share}"
    return f"{said}: {who}. Close the memory there (mem.close()), or end that process{share}"


@contextmanager
def _lock_shared(folder: Path, deadline: float, held_here_says: str, holding: str = _IN_USE) -> Iterator[bool | None]:
    """The open lock of the memory in `folder` taken shared for the block, waited for until `deadline` where a
    process holds it (open, or being created): True; False where it is held still then; None where there is no
    lock file (no memory, or one made by hand). The file is opened to be read: the folder may be a read-only mount,
    and nothing is made here."""
    import fcntl

    def open_lock() -> Any:
        return open(folder / OPEN_LOCK_FILE, "rb")  # closed below, which releases the lock

    try:
        fh = _flock_within(open_lock, fcntl.LOCK_SH, folder, deadline, held_here_says, holding)
    except FileNotFoundError:  # none, or removed meanwhile (a creation that failed removes its own)
        yield None
        return
    if fh is None:
        yield False
        return
    with fh:
        yield True


def _being_created(folder: Path, deadline: float = 0.0) -> str | None:
    """Why `folder`, which has no vmem.json, is refused where another process is creating a memory there: its open
    lock is taken before any file is made and vmem.json written last, so a second `vmem build` in between had been
    told "no memory ... build one first" and loaded an encoder to make one. None where no process holds the lock,
    or none does by `deadline` (no memory, a creation that died, or one that ended meanwhile: look again), or the
    memory was made meanwhile (its holder named by the opening, as of any memory open elsewhere)."""
    try:
        here = f"the memory at {_shown(folder)} is being created by this process: use the memory it makes"
        with _lock_shared(folder, deadline, here, "is being created by another process") as taken:
            if taken is not False:
                return None
    except OSError:  # a lock file this user cannot read: as before the lock, no memory said to be made there
        return None
    if (folder / META_FILE).is_file():  # made while this waited, and held still (a first build adds its images):
        return None  # the opening goes on to say it is open in another process
    who, command, _ = holder_note(folder)
    resumes = " (vmem build carries on where it stopped when run again)" if command == "build" else ""
    return (f"the memory at {_shown(folder)} is being created by another process"
            f"{f': {who}' if who else ' (a vmem build?)'}. Wait for it to end, or stop it{resumes}")


def wait_until_created(location: str | Path, wait: float) -> None:
    """Wait up to `wait` seconds for another process creating the embedded memory at `location` (a first vmem
    build, its lock taken and its vmem.json not written yet) to make it, said once as an opening's wait is: for a
    reader of its files (`vmem info`, `vmem history`), which needs the memory made, not let go. At once where it is
    made, where no process is creating it, and for a server."""
    import fcntl

    deadline = _deadline(wait)
    folder = local_folder(str(location))
    if folder is None:
        return

    class Made(Exception):
        pass

    def open_lock() -> Any:  # at each try: made, the wait is over, held still or not (a first build adds its images)
        if (folder / META_FILE).is_file():
            raise Made
        return open(folder / OPEN_LOCK_FILE, "rb")

    here = f"the memory at {_shown(folder)} is being created by this process: use the memory it makes"
    try:
        # Not "to let go": the wait ends once the memory is made, the files read beside its holder
        fh = _flock_within(open_lock, fcntl.LOCK_SH, folder, deadline, here, "is being created by another process",
                           "waiting for it to be made")
    except (Made, OSError):  # made, or no lock file (no memory, none being made): nothing to wait for
        return
    if fh is not None:
        fh.close()


@contextmanager
def _shared_open_lock(folder: Path, deadline: float = 0.0) -> Iterator[None]:
    """The open lock taken shared, for a copy of the memory at rest: refused while a process has it open to write
    (its files change under the copy), waited for until `deadline`, and taken beside other copies. A memory
    without one (made by hand) is copied unlocked."""
    here = (f"the memory at {_shown(folder)} is open in this process, to write: a read-only opening copies the memory, "
            "which needs it at rest. Use the object that holds it, or close that first (mem.close())")
    with _lock_shared(folder, deadline, here) as taken:
        if taken is False:
            # where a service that holds it says so, and where to ask it for that backup
            who = holder_note(folder).who
            raise MemoryInUseError(
                f"the memory at {_shown(folder)} {_IN_USE} ({who or 'a running vmem serve or build?'}): a "
                "read-only service copies the memory as it starts, which needs it at rest. Stop that process, or "
                "serve a backup of it (POST /v1/memory/backup) read-only", folder=folder) from None
        yield


@contextmanager
def at_rest(location: str | Path) -> Iterator[Path | None]:
    """The folder of the embedded memory at `location`, with its open lock taken shared for the block, where no
    process has it open (none opens it meanwhile), for what its files alone answer (`read_kept_counts`, its
    journal); None where one has it open (this process too), it is being created, or it has no lock file (no
    memory, or one never opened by vmem). Never waits."""
    folder = Path(os.path.expanduser(location)).absolute()
    here = f"the memory at {_shown(folder)} is open in this process"
    with contextlib.ExitStack() as stack:
        try:
            taken = stack.enter_context(_lock_shared(folder, _deadline(0.0), here))
        except (MemoryInUseError, OSError):  # open here (that object answers), a lock file this user cannot read
            taken = None
        yield folder if taken and (folder / META_FILE).is_file() else None


# A read-only service's copy of its memory: TMPDIR/vmem-read-only-RANDOM.PID.START@HOST (`make_private_folder`)
READ_ONLY_COPY_PREFIX = "vmem-read-only-"


def open_read_only(location: str | Path, wait: float = 0.0) -> EdgeMemoryStore:
    """Open the embedded memory at `location` for searches only, where its folder cannot be written (a read-only
    mount, files of another user) or while other services serve it the same way.

    The engine opens its files to write them even to search (it maps them writable and keeps a write-ahead log),
    so the memory's folder is copied into a private folder of the temporary folder (TMPDIR), which is opened and
    removed at close; the copies of processes gone without closing (killed) are removed here. Every edit is
    refused with MemoryReadOnlyError; an edit made to the memory meanwhile is seen after the next opening. Where a
    process has it open to write, or is creating it, this waits up to `wait` seconds for that one to let go.

    Raises:
        MemoryStoreError: no memory there; MemoryInUseError: a process has it open to write, or is creating it
        (past `wait`); MemoryFullError: the temporary folder has no room for the copy; ValueError: a negative wait.
    """
    deadline = _deadline(wait)
    # A link (a backup folder's `latest`) is followed once: the copy is of the one memory it named as it started
    source = Path(os.path.expanduser(location)).resolve()
    if not (source / META_FILE).is_file():
        if (creating := _being_created(source, deadline)) is not None:
            raise MemoryInUseError(creating)
        if not (source / META_FILE).is_file():  # looked at again: one may have been made while this waited
            raise NoMemoryError(f"no memory at {_shown(source)}")
    # The copies of services killed before their close (kill -9, the OOM killer) first: they take the room counted
    dead_copies = remove_dead_private_folders(READ_ONLY_COPY_PREFIX)
    for dead in dead_copies:
        log.info("removed %s, the copy of a memory a read-only service killed before its close had served", dead)
    private = make_private_folder(READ_ONLY_COPY_PREFIX)
    copy = private / "memory"
    try:
        with _shared_open_lock(source, deadline):
            # The kept uploads are left out: a read-only service embeds none again, and they may be most of the folder
            needed = _allocated_bytes(source, follow_links=True) - _allocated_bytes(source / UPLOADS_DIR, True)
            free = shutil.disk_usage(private).free
            if free < needed + EDIT_HEADROOM_BYTES:
                raise MemoryFullError(
                    f"a read-only service copies the memory ({needed / 1e6:,.1f} MB) into the temporary folder "
                    f"{private.parent}, which has {free / 1e6:,.1f} MB free: give it more room, or point TMPDIR at a "
                    "folder with room")
            copy.mkdir()
            try:
                copy_folder_sparse(source, copy,
                                   leave_out=lambda path: path in (OPEN_LOCK_FILE, SERVED_FILE, UPLOADS_DIR))
            except PermissionError as exc:
                raise MemoryError(f"the memory at {source} cannot be read by this user ({exc.strerror}: "
                                  f"{exc.filename}): a read-only service copies every file of it") from None
        for root, dirs, files in os.walk(copy):  # files the service may only read are copied as they are
            for name, owner_may in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | owner_may)
        store = EdgeMemoryStore(copy)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    store.source, store.read_only, store._read_only_copy = source, True, private
    store.dead_copies_removed = tuple(dead_copies)  # for vmem serve to say: its logging is not set up yet
    return store


# The folders of the embedded memories this process holds open, for `drop_inherited_memory_locks`.
_open_folders: dict[Path, int] = {}  # folder -> the process that opened it (a forked child inherits the map)


def drop_inherited_memory_locks() -> None:
    """In a forked child that will not use the memory (a build's decoding workers), let go of the memory locks
    inherited from the parent.

    vmem's open lock and the engine's log lock are `flock`s, which a fork shares: after a `kill -9` of a build
    with `--workers`, the memory stayed "open in another process" until its workers noticed and exited (~5 s).
    Each inherited descriptor is pointed at /dev/null rather than closed, so nothing the child still holds can
    later close or write a file that took its number. The parent's own descriptors, and locks, are untouched.
    Only for children that leave the memory alone: a child that goes on using it must keep the locks, or a
    second process could open it beside it.
    """
    if not _open_folders:
        return
    folders = [str(f) for f in _open_folders]
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: the locks stay until the children exit, as before
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if any(target == os.path.join(f, OPEN_LOCK_FILE) or target.startswith(os.path.join(f, SHARD_DIR, "wal"))
                   for f in folders):
                os.dup2(null, int(fd))
    finally:
        os.close(null)


class EdgeMemoryStore(MemoryStore):
    """Qdrant Edge shard at `path/shard`, with the memory's metadata in `path/vmem.json`."""

    _open_lock: Any = None
    # The memory's folder, opened for as long as the engine is (`_engine_path`); not inherited by a program run
    # (os.open's descriptors close on exec). A store dropped without its close leaves it open: closed before the
    # engine's own drop, the engine had written through a number another file may have taken.
    _folder_fd: int | None = None

    _shard: Any = None
    # Opened by `open_read_only`: the memory's folder, and the private copy that is opened instead (removed at close)
    source: Path | None = None
    _read_only_copy: Path | None = None
    # The copies of read-only services killed before their close that `open_read_only` removed as it opened this
    dead_copies_removed: tuple[Path, ...] = ()

    @property
    def shard(self) -> Any:
        """The engine's shard. A closed store says so, rather than "'NoneType' object has no attribute"."""
        if self._shard is None:
            raise MemoryError(f"the memory at {self.path} is closed: open it again to use it")
        return self._shard

    @shard.setter
    def shard(self, shard: Any) -> None:
        self._shard = shard

    def __init__(self, path: str | Path, meta: MemoryMeta | None = None, wait: float = 0.0):
        """Open the memory in the folder `path`, or make it there from `meta` where it has none; wait up to `wait`
        seconds for a process that holds it (open, or creating it) to let go (MemoryInUseError past that)."""
        import qdrant_edge as qe

        deadline = _deadline(wait)
        self._qe = qe
        # Absolute for the engine and vmem's own files, so that a chdir (a notebook's %cd) leaves it working;
        # the location as given, for messages.
        # ~ too: the Python API has no shell to expand it (os.path's: a `~name` that is no user stays as it is)
        self.path = Path(os.path.expanduser(path)).absolute()
        self.location = str(Path(path))
        self.source = self.path  # the memory's own folder (`open_read_only`: not the copy opened)
        self.journal = FileJournal(self.path / JOURNAL_FILE)
        self._write_lock = threading.Lock()
        # Held by a search, and by an edit made in several writes (a relabel) from its first to its last: a search
        # sees the edit whole or not at all. Not the write lock: a backup holds that while it copies, searches go on.
        self._whole_edit = threading.Lock()
        self._writes = 0  # writes begun: what a cached answer about the points was computed after
        self._label_counts: tuple[int, dict[str, int]] | None = None
        self._searchable_kept: tuple[int, dict[str, int]] | None = None  # per label, as the memory opened
        self._write_failed: str | None = None  # the engine's error, once it has failed a write and takes no more
        # Points written since the engine last indexed, counted here: the engine's count of indexed vectors holds
        # the forgotten ones too, so "points - indexed" fell short by every forget, and a memory forgotten from
        # indexed its new points late (after 16,000 of them, not 10,000). From the engine's figure at open.
        self._written_unindexed = 0
        self._left_unindexed = 0
        self._added = False  # since open: close ends the log with a write (_acknowledge_last_add)
        self._rows: OriginalRows | None = None
        meta_path = self.path / META_FILE
        shard_path = self.path / SHARD_DIR
        if not meta_path.exists() and meta is None:
            if (creating := _being_created(self.path, deadline)) is not None:
                raise MemoryInUseError(creating)
            if not meta_path.exists():  # looked at again: one may have been made while this waited
                raise NoMemoryError(f"no memory at {_shown(self.path)}")
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._open_lock = _hold_open_lock(self.path, deadline)
        # Read, then removed, before the engine touches a file: they stand for the memory as last closed, which
        # is as it opens (their fingerprint says), and from here until its close they may not
        kept = read_kept_counts(self.path)
        forget_kept_counts(self.path)
        self._folder = Path(os.path.realpath(self.path))  # as /proc names the descriptors in it
        _open_folders[self._folder] = os.getpid()
        try:
            # Held until the engine is closed, which opens the shard through it (`_engine_path`); the folder's
            # identity is the one of that descriptor, the folder the engine writes to.
            self._folder_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            folder = os.fstat(self._folder_fd)
            self._folder_identity = (folder.st_dev, folder.st_ino)
            self._open(meta, meta_path, shard_path)
            if kept is not None:  # counted until the first write, as `label_counts` keeps its own
                self._label_counts = (self._writes, dict(kept.per_label))
                self._searchable_kept = (self._writes, dict(kept.searchable_per_label))
        except BaseException:
            if self._shard is not None:  # the engine first: it writes through the folder's descriptor
                with contextlib.suppress(Exception):
                    self._shard.close()
                self._shard = None
            if made and not meta_path.exists():  # a memory this call began and never completed (a full disk)
                # Removed while the lock is held (another process that tried meanwhile was refused), and only what
                # this call made: rmdir refuses a folder that holds anything else.
                shutil.rmtree(shard_path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (self.path / OPEN_LOCK_FILE).unlink()
                    self.path.rmdir()
            self._close_folder_fd()
            self._release_open_lock()
            raise

    def _engine_path(self) -> str:
        """The path the engine is given for the memory's shard (at every load and create): through the memory's
        folder as this process opened it, /proc/self/fd/<its descriptor>/shard, not by its name. The engine writes
        its last state (id trackers, segment.json, its log's index) by the path it was given, at its close and at
        the process's exit: by name, a folder moved away and a backup put in its place under a running service had
        that service's last state written into the backup (its forgets, or no longer opening: "Failed to decompress
        LZ4 value"). Through the descriptor it writes to the folder it opened, wherever that is now. The engine
        keeps no path in its files, so the memory opens by its own name next time. Where /proc/self/fd is not there
        (macOS, BSD): by name, as before."""
        fd = self._folder_fd
        if fd is not None and os.path.isdir(f"/proc/self/fd/{fd}"):
            return f"/proc/self/fd/{fd}/{SHARD_DIR}"
        return str(self.path / SHARD_DIR)

    def _engine(self, load: Callable[[str], Any]) -> EngineShard:
        """The engine's shard, as `load` (EdgeShard.load, or its create) opens it by `_engine_path`."""
        opened_as, named = self._engine_path(), str(self.path / SHARD_DIR)
        try:
            return EngineShard(load(opened_as), opened_as, named, _shown(self.path))
        except Exception as exc:
            _name_folder(exc, opened_as, named)
            raise

    def _close_folder_fd(self) -> None:
        """After the engine's close: it may write through the descriptor up to then (`_engine_path`)."""
        if self._folder_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._folder_fd)
            self._folder_fd = None

    def _release_open_lock(self) -> None:
        if self._open_lock is not None:
            # The note names no process that has let go (`note_holder`); a forked child's close leaves its parent's
            if _open_folders.pop(self._folder, None) == os.getpid():
                with contextlib.suppress(OSError):
                    self._open_lock.truncate(0)
            self._open_lock.close()  # closing the file releases its lock
            self._open_lock = None

    def _open(self, meta: MemoryMeta | None, meta_path: Path, shard_path: Path) -> None:
        """Make the memory (a `meta` and no vmem.json) or load it, under the open lock: two processes making one
        new memory at once removed each other's half-made shard as a crashed creation's leftovers; now the second
        is refused while the first holds it."""
        qe = self._qe
        if meta is not None and not meta_path.exists():
            self._create(meta, shard_path)
        else:
            stored = MemoryMeta.model_validate_json(_meta_bytes(meta_path).decode("utf-8"))
            if meta is not None:
                probe = EdgeMemoryStore.__new__(EdgeMemoryStore)
                probe.meta = stored
                probe.check_featurizer(meta.featurizer)
            self.meta = stored
            _set_vacuum_thresholds(shard_path / EDGE_CONFIG_FILE)
            try:
                self.shard = self._engine(qe.EdgeShard.load)
            except Exception as exc:
                # The engine locks its write-ahead log: another program than vmem gets an opaque "WouldBlock".
                if "WouldBlock" in str(exc):
                    raise MemoryInUseError(
                        f"the memory at {_shown(self.path)} is open in another process (a running vmem serve or "
                        "build?); stop it first, or put the memory on a Qdrant server (--qdrant-url) to share it",
                        folder=self.path) from exc
                if not shard_path.is_dir():  # a vmem.json copied without its shard, or the shard removed
                    raise MemoryError(f"the memory at {self.path} has its {meta_path.name} but not its vectors "
                                      f"({shard_path.name}/ is missing): copy the whole folder (vmem copy), or "
                                      "build the memory again") from exc
                if _engine_read_failure(exc):
                    raise _damaged(_shown(self.path), _engine_damage_said(exc)) from exc
                raise
            _remove_dead_segment_builds(shard_path)
            self._drop_replaced_segments(shard_path)
            for folder in (self.path, self.path / THUMBNAILS_DIR, self.path / UPLOADS_DIR):
                for leftover in remove_stale_temporaries(folder):
                    log.warning("removed %s, left by a write that did not finish", leftover)
        self._any_excluded = self._count_excluded() > 0
        self._count_unindexed()
        ix = self.meta.index
        self._rows = (OriginalRows(self.path / ORIGINAL_ROWS_FILE, self.dim, ix.vectors_dtype)
                      if ix.rescore_doubtful else None)
        self.settle_journal()  # a new memory has no notes

    def _create(self, meta: MemoryMeta, shard_path: Path) -> None:
        """Make the shard and its indexes, then write vmem.json (last: a memory without it was never completed)."""
        qe = self._qe
        self.meta = meta
        if shard_path.exists():  # a creation that died before vmem.json was written (under the lock: no other)
            shutil.rmtree(shard_path)
        ix = meta.index
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(
                size=meta.featurizer.dim, distance=qe.Distance.Cosine,
                memory=qe.Memory.Cold if ix.vectors_on_disk else None,
                datatype=qe.VectorStorageDatatype.Float16 if ix.vectors_dtype == "float16" else None,
            ),
            # payload_m=0: no extra graph links per indexed payload value. With the source-prefix index
            # the engine added a second set of links over nearly every point. Same run, 200k x 384,
            # int8: build 65 -> 42 s, and faster at equal recall (807 single queries/s at recall 0.998
            # with the links, 1,039/s at 0.9987 without, search ef 128 vs 192). Labels of ~1,000
            # points are under full_scan_threshold and got no links anyway.
            hnsw_config=qe.HnswIndexConfig(m=ix.m, ef_construct=ix.ef_construct, full_scan_threshold=10_000,
                                           payload_m=0),
            quantization_config=(
                qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
                if ix.quantization == "int8" else
                qe.TurboQuantQuantizationConfig(bits=qe.TurboQuantBitSize.Bits8, memory=qe.Memory.Pinned)
                if ix.quantization == "turboquant8" else None),
            optimizers=self._optimizers(meta),
            # Point-id map and payload indexes memory-mapped rather than loaded: at 1.28M points they
            # held 840 MB of the serving process's anonymous memory (1,401 -> 564 MB), and batched
            # queries were as fast either way (same run: 903 vs 906 queries/s).
            id_tracker_memory=qe.Memory.Cold,
        )
        # The engine's first write-ahead-log file takes 32 MB at once: on a full disk the create died of SIGBUS.
        self._check_room(0, what="a new memory", goes_on="")
        self.shard = self._engine(lambda path: qe.EdgeShard.create(path, config))
        cold = qe.Memory.Cold
        self.shard.update(qe.UpdateOperation.create_field_index("label", qe.KeywordIndexParams(memory=cold)))
        self.shard.update(qe.UpdateOperation.create_field_index(
            "source", qe.KeywordIndexParams(prefix=True, memory=cold)))
        # Indexed, the "not excluded" condition on every search costs next to nothing.
        self.shard.update(qe.UpdateOperation.create_field_index(
            EXCLUDED_KEY, qe.KeywordIndexParams(memory=cold)))
        self.shard.flush()
        self.save_meta()  # written last: a memory without vmem.json was never completed

    def _optimizers(self, meta: MemoryMeta):
        """Bound segment size just above `segment_points`, so the engine never merges two full segments back."""
        points = meta.index.segment_points
        if points is None:
            return self._qe.EdgeOptimizersConfig(**VACUUM_THRESHOLDS)
        # The engine measures a segment by its stored vectors, in KB (2 bytes a value for float16). At exactly
        # `segment_points`, small leftovers still merge with each other, but nothing merges into a full segment:
        # that would re-index it (minutes at 640k points) for a few added points. A full segment over the bound
        # (the add batch that crossed it) is still indexed whole.
        value_bytes = 2 if meta.index.vectors_dtype == "float16" else 4
        return self._qe.EdgeOptimizersConfig(max_segment_size=points * meta.featurizer.dim * value_bytes // 1024,
                                             **VACUUM_THRESHOLDS)

    def save_meta(self) -> None:
        self.check_writable()
        self.check_available()
        try:
            write_atomically(self.path / META_FILE, self.meta.model_dump_json(indent=2))
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:  # a names PUT on a read-only mount had been a 500 and a traceback
                raise MemoryReadOnlyError(f"the memory's folder {self.path} cannot be written ({exc.strerror}): "
                                          "nothing was changed; searches go on. Make it writable for this user, "
                                          "then retry") from None
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            # Written atomically: the file as it was stays (a names PUT had been a 500, vmem names a traceback)
            raise MemoryFullError(f"the memory's {META_FILE} could not be saved ({exc.strerror}): nothing was changed; "
                                  "free some space, then retry") from None

    def check_available(self) -> None:
        """MemoryWriteFailedError once the engine has failed a write and takes no more.

        MemoryGoneError if the memory's folder was removed or replaced since it was opened: the engine
        goes on answering from the files it holds open, and would take edits into files nothing reads again (a
        service went on answering "201 added" for points lost at its restart)."""
        if self._write_failed is not None:
            raise MemoryWriteFailedError(self._write_failure_message())
        try:
            now = os.stat(self.path)
            shard_there = (self.path / SHARD_DIR).is_dir()
        except OSError:
            now, shard_there = None, False
        if now is None or (now.st_dev, now.st_ino) != self._folder_identity or not shard_there:
            if self._engine_path() != str(self.path / SHARD_DIR):
                written = ("nothing more is written to it (the engine's close writes its last state into the folder "
                           "it opened, wherever that is now)")
            else:  # no /proc/self/fd (macOS): the engine writes by the folder's name
                written = ("its edits are refused, but the engine's close writes its last state there, into "
                           "whatever folder is there then")
            raise MemoryGoneError(
                f"the memory's folder {self.path} was removed or replaced while this process had it open: {written}; "
                "restart the service, or open the memory again")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        self.check_writable()
        with self._write_lock:
            self.check_available()
            self._writes += 1  # before the write: a count read while it runs is not kept past it
            try:
                yield
            except MemoryError:
                raise
            except Exception as exc:
                if ENGINE_STUCK_MESSAGE in str(exc):
                    # Every later write would fail the same way (500s while /readyz said ready): say it once
                    # and for all, as a memory gone is said.
                    self._write_failed = str(exc)
                    raise MemoryWriteFailedError(self._write_failure_message()) from exc
                raise

    def _write_failure_message(self) -> str:
        return (f"the memory {self.path} takes no more edits: its engine failed a write ({self._write_failed}) "
                "and takes none until the memory is opened again. Fix the cause (disk space, permissions), then "
                "restart or reopen; the engine then replays its log, so an edit that failed may be in the "
                "memory after all (vmem points shows it)")

    def _count_excluded(self) -> int:
        return self.shard.count(self._qe.CountRequest(filter=self._filter(excluded_only=True), exact=True))

    @contextmanager
    def _excluded_may_change(self, touches_excluded: bool) -> Iterator[None]:
        """Around a write that may exclude points or bring them back (under the write lock): searches
        filter from before the write until the excluded points are counted again."""
        self._any_excluded |= touches_excluded
        yield
        if touches_excluded:
            self._any_excluded = self._count_excluded() > 0

    def _filter(self, label: str | None = None, source_prefix: str | None = None,
                labels: Sequence[str] | None = None, searchable: bool = False, excluded_only: bool = False):
        qe = self._qe
        # The "not excluded" condition only while some point is excluded (pruned): the engine checks a
        # filter on every point a search visits, even one that matches all. 1.28M points, alternating
        # rounds (docs/benchmarks/excluded_filter.py): 4-15 % more batched queries/s without it.
        must = [qe.IsEmptyCondition(key=EXCLUDED_KEY)] if searchable and self._any_excluded else []
        must_not = [qe.IsEmptyCondition(key=EXCLUDED_KEY)] if excluded_only else []
        if label is not None:
            must.append(qe.FieldCondition(key="label", match=qe.MatchValue(label)))
        if labels is not None:
            must.append(qe.FieldCondition(key="label", match=qe.MatchAny(list(labels))))
        if source_prefix is not None:
            must.append(qe.FieldCondition(key="source", match=qe.MatchPrefix(source_prefix)))
        return qe.Filter(must=must, must_not=must_not) if must or must_not else None

    def _check_room(self, new_points: int, rewriting: int = 0, what: str = "an edit",
                    headroom: int = EDIT_HEADROOM_BYTES, goes_on: str = EDIT_GOES_ON) -> None:
        """MemoryFullError where the disk has less room than an edit adding `new_points` (and rewriting that many
        bytes of segments) needs (see EDIT_HEADROOM_BYTES; a forget's floor is FORGET_HEADROOM_BYTES); `goes_on`:
        what still works, said in the error ("" for nothing to say)."""
        need = headroom + new_points * self.dim * EDIT_BYTES_PER_DIMENSION + rewriting
        free = self._free_bytes()
        if free is not None and free < need:
            went_on = goes_on + (", and forgotten points stay forgotten" if rewriting else "")
            raise MemoryFullError(
                f"the disk holding the memory {self.path} has {free / 2**20:.0f} MB free, and {what} needs "
                f"{need / 2**20:.0f} MB: refused before anything was written, since the engine dies when a write "
                "finds the disk full; free some space, then retry" + (f" ({went_on})" if went_on else ""))

    def _free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.path).free
        except OSError:  # gone: check_available says so
            return None

    def _upsert(self, ids, vectors, payloads) -> None:
        qe = self._qe
        with self._writing():
            self._check_room(len(ids))
            if self._rows is not None:  # the rows first: a point a search can find has its row
                self._rows.erase(self._rows_of(ids))  # of the versions this add replaces
                rows = self._rows.append(vectors)
                payloads = [{**p, ROW_KEY: row} for p, row in zip(payloads, rows, strict=True)]
            points = [qe.Point(i, v.tolist(), p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
            with self._excluded_may_change(any(EXCLUDED_KEY in p for p in payloads)):
                self.shard.update(qe.UpdateOperation.upsert_points(points))
            self._added = True
            self._written_unindexed += len(ids)
            segment_points = self.meta.index.segment_points
            if segment_points is not None:
                unindexed = self._written_unindexed
                if unindexed - self._left_unindexed >= segment_points:
                    if self.on_segment_indexing is not None:
                        self.on_segment_indexing(unindexed)
                    try:
                        with self._rewriting_segments():
                            self.shard.optimize()  # index these points now, as a segment of their own
                    except Exception as exc:
                        if ENGINE_NO_ROOM_MESSAGE not in str(exc):
                            raise
                        # The points are in (searched unindexed, more slowly): the add stands, said as such.
                        log.warning("%d points are stored but not indexed: %s", unindexed, _no_room_to_index(exc))
                    # The engine leaves segments below its indexing threshold (small vectors) as they are:
                    # wait for another segment's worth before asking again.
                    self._count_unindexed()

    @contextmanager
    def _rewriting_segments(self) -> Iterator[None]:
        """Around an optimize: the engine writes the segments that replace others at once, but removes the
        replaced ones' folders only at its next flush. A process killed in between left both, and the memory
        loaded them both for good: every point they held counted twice (`count`, `vmem info`), and an erase's
        forgotten vectors kept on disk until the next. So the segments before are named in a file until the
        flush after it (done here), and the next opening removes what replaced ones are left
        (`_drop_replaced_segments`). Left where the optimize fails: that opening checks."""
        segments = self.path / SHARD_DIR / "segments"
        write_atomically(self.path / REWRITING_FILE, json.dumps(sorted(os.listdir(segments))))
        yield
        self.shard.flush()
        (self.path / REWRITING_FILE).unlink(missing_ok=True)

    def _drop_replaced_segments(self, shard_path: Path) -> None:
        """After a process killed in an optimize (`_rewriting_segments`): remove each segment from before it whose
        points the segments that replaced it hold. Found by trying: one is set aside, and goes if the memory
        loaded without it holds the same points and counts fewer; otherwise it is put back."""
        marker = self.path / REWRITING_FILE
        if not marker.exists():
            return
        qe, segments = self._qe, shard_path / "segments"
        for aside in shard_path.glob("replaced-*"):  # a check killed midway: back, and checked again
            self.shard.close()
            os.rename(aside, segments / aside.name.removeprefix("replaced-"))
            self.shard = self._engine(qe.EdgeShard.load)
        try:
            named = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            named = []
        # Only the memory's own segments: a marker edited or planted (not a list, a name with a path in it) had
        # ended every open in a TypeError, or sent the repair outside segments/
        present = set(os.listdir(segments))
        before = [n for n in named if isinstance(n, str) and n in present] if isinstance(named, list) else []

        def counted() -> tuple[int, set[str]]:
            ids = {p.id for batch in self.scroll(batch_size=4096, payload_keys=()) for p in batch}
            return int(self.shard.info().points_count), ids

        total, ids = counted()
        for name in before:
            if total == len(ids) or not (segments / name).is_dir():
                continue
            aside = shard_path / f"replaced-{name}"  # outside segments/: not loaded
            self.shard.close()
            os.rename(segments / name, aside)
            self.shard = self._engine(qe.EdgeShard.load)
            now_total, now_ids = counted()
            if now_ids == ids and now_total < total:
                log.warning("removed the segment %s, which an optimize killed midway had replaced: its points "
                            "were counted twice", name)
                shutil.rmtree(aside)
                total = now_total
            else:
                self.shard.close()
                os.rename(aside, segments / name)
                self.shard = self._engine(qe.EdgeShard.load)
        if total != len(ids):
            log.warning("the memory counts %d points but holds %d", total, len(ids))
        marker.unlink(missing_ok=True)

    def _count_unindexed(self) -> None:
        """Points the engine left unindexed, from its own figures: right after an optimize, which vacuums the
        segments with deleted points (VACUUM_THRESHOLDS), or at open, where forgotten points may make it short."""
        info = self.shard.info()
        self._written_unindexed = self._left_unindexed = max(0, info.points_count - info.indexed_vectors_count)

    def relabel(self, ids: Sequence[str], label: str) -> dict[str, str]:
        # A write per old label and per 4,096 points: a search between two had seen a class renamed half done,
        # voting as two classes (24 of 488 searches during a 12,000-point rename). Searches wait for the whole:
        # the writes hold the GIL anyway, bar the Python between them.
        with self._whole_edit:
            return super().relabel(ids, label)

    def delete_ids(self, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))  # an id read in two chunks would be counted twice
        with self._writing():
            # Which exist (the whole payloads of a 250,000-point forget at once took 6 s and 420 MB). Deleted in
            # one operation, as before.
            present, rows = self._present_with_rows(ids)
            if present:
                self._check_room(0, what="a forget", headroom=FORGET_HEADROOM_BYTES, goes_on="searches go on")
                if self._rows is not None:  # erased first: no copy outlives the point
                    self._rows.erase(rows)
                self.shard.update(self._qe.UpdateOperation.delete_points(present))  # type: ignore[arg-type]  # list[str]: the stub's list is invariant
        return len(present)

    def existing_labels(self, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(ids), SERVER_REQUEST_IDS):  # the label only, not every payload
            recs = self.shard.retrieve(list(ids[start : start + SERVER_REQUEST_IDS]), with_vector=False,
                                       with_payload=self._qe.PayloadSelector.Include(["label"]))
            out |= {_str_id(r.id): (r.payload or {}).get("label") for r in recs}  # type: ignore[misc]  # every point has a label
        return out

    def _rows_of(self, ids: Sequence[str]) -> list[int]:
        """Rows in vmem's copy of the originals held by these points (those that exist)."""
        return self._present_with_rows(ids)[1]

    def _present_with_rows(self, ids: Sequence[str]) -> tuple[list[str], list[int]]:
        """The ids among these that exist, and their rows in vmem's copy of the originals: read in chunks, with
        no other payload."""
        present: list[str] = []
        rows: list[int] = []
        for start in range(0, len(ids), SERVER_REQUEST_IDS):
            recs = self.shard.retrieve(list(ids[start : start + SERVER_REQUEST_IDS]), with_vector=False,
                                       with_payload=self._qe.PayloadSelector.Include([ROW_KEY]))
            present += [r.id for r in recs]
            rows += [r.payload[ROW_KEY] for r in recs if r.payload and ROW_KEY in r.payload]
        return present, rows

    def delete_where(self, label: str | None = None, source_prefix: str | None = None) -> int:
        if label is None and source_prefix is None:
            raise ValueError("give a label or a source prefix")
        flt = self._filter(label=label, source_prefix=source_prefix)
        with self._writing():
            n = self.shard.count(self._qe.CountRequest(filter=flt, exact=True))
            if n:
                if self._rows is not None:  # their rows read in the same pass that finds them
                    self._rows.erase([r.payload[ROW_KEY] for r in self._records_where(flt, [ROW_KEY])
                                      if r.payload and ROW_KEY in r.payload])
                self.shard.update(self._qe.UpdateOperation.delete_points_by_filter(flt))
        return n

    def ids_where(self, label: str | None = None, source_prefix: str | None = None) -> list[str]:
        return [_str_id(r.id) for r in self._records_where(self._filter(label=label, source_prefix=source_prefix))]

    def _records_where(self, flt, payload_keys: Sequence[str] = ()) -> list[Any]:
        """The engine's records of the points matching `flt`, with these payload keys only (none: no payload)."""
        qe = self._qe
        with_payload = qe.PayloadSelector.Include(list(payload_keys)) if payload_keys else False
        records: list[Any] = []
        offset = None
        while True:
            recs, offset = self.shard.scroll(qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, filter=flt,
                                                              with_payload=with_payload, with_vector=False))
            records += recs
            if offset is None or not recs:
                return records

    def count(self, label: str | None = None, searchable: bool = False) -> int:
        flt = self._filter(label=label, searchable=searchable)
        if flt is None:  # the engine keeps the total: 0.1 ms, where an exact count visits every point (31 ms at 250k)
            return int(self.shard.info().points_count)
        return self.shard.count(self._qe.CountRequest(filter=flt, exact=True))

    def label_counts_kept(self) -> dict[str, int] | None:
        return None if self._label_counts is None else dict(self._label_counts[1])

    def label_counts(self) -> dict[str, int]:
        # Kept until the next write: the exact count holds the GIL about a second at 50,000 labels, and the page
        # asks for it on every load and edit (this process alone writes an embedded memory).
        writes, cached = self._writes, self._label_counts
        writing = self._write_lock.locked()  # after reading `writes`: a write begun before is seen here
        if cached is not None and cached[0] == writes and not writing:
            return dict(cached[1])
        n_labels = max(1, self.count())
        resp = self.shard.facet(self._qe.FacetRequest(key="label", limit=n_labels, exact=True))
        # The edge engine keeps reporting a label whose points were all deleted, with count 0.
        hits = [h for h in resp if h.count > 0]
        counts = {str(h.value): int(h.count) for h in sorted(hits, key=lambda h: (-h.count, str(h.value)))}
        # Kept only when no write ran during the count, begun before it (`writing`) or during it (`writes` moved):
        # a count read half-way through a write would otherwise stand until the next one
        if not writing and not self._write_lock.locked() and self._writes == writes:
            self._label_counts = (writes, counts)
        return dict(counts)

    def _search_params(self, k: int, exact: bool):
        qe, ix = self._qe, self.meta.index
        quant = (qe.QuantizationSearchParams(rescore=ix.rescore, oversampling=ix.oversampling)
                 if ix.quantized else None)
        return qe.SearchParams(hnsw_ef=max(ix.hnsw_ef, 2 * k), exact=exact, quantization=quant)

    def _nearest(self, v, k, labels, exact) -> list[list[Neighbor]]:
        qe = self._qe
        flt = self._filter(labels=labels, searchable=True)
        params = self._search_params(k, exact)
        doubtful = self.meta.index.doubtful and not exact and self._rows is not None
        # Only what voting and attribution need: converting whole payloads costs up to a third of a query.
        wanted = qe.PayloadSelector.Include([*SEARCH_PAYLOAD, ROW_KEY] if doubtful else list(SEARCH_PAYLOAD))
        limit = k + DOUBTFUL_EXTRA if doubtful else k
        requests = [qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row.tolist()), filter=flt,
                                    with_payload=wanted, params=params) for row in v]
        with _gc_paused():
            if len(requests) == 1:
                with self._whole_edit:  # costs a search nothing: the engine holds the GIL while it searches anyway
                    results = [self.shard.query(requests[0])]
            else:
                results = [res for s in range(0, len(requests), EDGE_QUERY_BATCH) for res in
                           self._query_batch(requests[s : s + EDGE_QUERY_BATCH])]
            if doubtful:
                # Only the doubtful candidates' payloads are read for their rows, only the k best made neighbours.
                results = [[(p, score, p.payload) for p, score in hits] for hits in rescore_doubtful(
                    v, results, k, self.meta.index.margin, self._rows, score_of=lambda p: p.score,  # type: ignore[arg-type]  # doubtful: _rows is not None
                    row_of=lambda p: p.payload.get(ROW_KEY))]
                for hits in results:
                    for _, _, payload in hits:
                        payload.pop(ROW_KEY, None)
                return [[Neighbor(_str_id(p.id), payload["label"], payload["source"], score, payload)
                         for p, score, payload in hits] for hits in results]
            # Each `.payload` access converts the engine's payload to a new dict: read it once per point.
            return [[Neighbor(_str_id(p.id), (payload := p.payload)["label"], payload["source"], p.score, payload)
                     for p in res] for res in results]

    def _query_batch(self, requests: list[Any]) -> list[Any]:
        # The lock a batch at a time: a classify waits for one batch of the audit's searches, not for all of a page
        with self._whole_edit:
            return self.shard.query_batch(self._qe.QueryBatchRequest(requests))

    def _similar(self, v, min_similarity, limit) -> list[Neighbor]:
        qe = self._qe
        # No filter (hard-pruned points too); exact, and the codes ignored: every point scored by its original vector
        params = qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))
        request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(v.tolist()), score_threshold=min_similarity,
                                  with_payload=qe.PayloadSelector.Include(list(SEARCH_PAYLOAD)), params=params)
        with _gc_paused():
            found = self.shard.query(request)
        return [Neighbor(_str_id(p.id), (payload := p.payload)["label"], payload["source"], p.score, payload)
                for p in found]

    @property
    def rows_read(self) -> int:
        """Original vectors read from vmem's own copy to re-rank doubtful candidates, since opening."""
        return self._rows.rows_read if self._rows is not None else 0

    def retrieve(self, ids, with_vectors=False) -> list[StoredPoint]:
        if not ids:
            return []
        recs = self.shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [StoredPoint(_str_id(r.id), r.payload or {},
                            np.asarray(r.vector, np.float32) if with_vectors else None) for r in recs]

    def page(self, label=None, source_prefix=None, start=None, limit=100, excluded=None,
             with_vectors=False) -> tuple[list[StoredPoint], str | None]:
        flt = self._filter(label=label, source_prefix=source_prefix, searchable=excluded is False,
                           excluded_only=excluded is True)
        recs, offset = self.shard.scroll(self._qe.ScrollRequest(offset=start, limit=limit, filter=flt,
                                                                with_payload=True, with_vector=with_vectors))
        return ([StoredPoint(_str_id(r.id), r.payload or {}, np.asarray(r.vector, np.float32) if with_vectors else None)
                 for r in recs], None if offset is None else _str_id(offset))

    def scroll(self, batch_size=1024, with_vectors=False, payload_keys=None) -> Iterator[list[StoredPoint]]:
        qe = self._qe
        offset = None
        wanted = True if payload_keys is None else qe.PayloadSelector.Include(list(payload_keys))
        while True:
            recs, offset = self.shard.scroll(qe.ScrollRequest(offset=offset, limit=batch_size,
                                                              with_payload=wanted, with_vector=with_vectors))
            if recs:
                yield [StoredPoint(_str_id(r.id), r.payload or {},
                                   np.asarray(r.vector, np.float32) if with_vectors else None) for r in recs]
            if offset is None or not recs:
                return

    def set_payload(self, ids, payload) -> None:
        with self._writing():
            self._check_room(0)
            with self._excluded_may_change(EXCLUDED_KEY in payload):
                self.shard.update(self._qe.UpdateOperation.set_payload(list(ids), payload))

    def optimize(self) -> None:
        """Index what is not indexed yet. MemoryFullError where the disk has no room for the segments it builds
        (the engine checks, and writes nothing): the points stay stored and searched, unindexed."""
        with self._write_lock:
            try:
                with self._rewriting_segments():
                    self.shard.optimize()
            except Exception as exc:
                if ENGINE_NO_ROOM_MESSAGE not in str(exc):
                    raise
                raise MemoryFullError(f"the memory's edit is made, but its index could not be built: "
                                      f"{_no_room_to_index(exc)}") from None
            self._count_unindexed()

    erases_on_demand = True

    @property
    def journal_in_read_only_copy(self) -> bool:
        # Settled as it opens, before `open_read_only` marks it read-only: told by its private folder's name
        return self.path.parent.name.startswith(READ_ONLY_COPY_PREFIX)

    def holds_no_deleted_vectors(self) -> bool:
        # Each segment's id tracker keeps 8 bytes of version per vector its files hold, deleted ones included (a
        # deleted point's vector stays until its segment is rewritten), so they hold none deleted where that
        # counts the points. Flushed first: the files may be behind the engine (a write-ahead log replayed).
        with self._write_lock:
            try:
                self.shard.flush()
            except Exception as exc:  # an OSError: the note is kept for the next opening (`settle_journal`)
                raise OSError(f"the memory's files could not be flushed to read whether an erase was made: {exc}") \
                    from exc
            held = sum((segment / name).stat().st_size // 8
                       for segment in (self.path / SHARD_DIR / "segments").iterdir()
                       for name in ("id_tracker.versions", "mutable_id_tracker.versions")
                       if (segment / name).exists())
            return held == self.shard.info().points_count

    def erase_forgotten(self) -> None:
        """Rewrite every segment that holds deleted points, without them (vmem's copy of the originals, with
        `rescore_doubtful`, is erased at the delete itself). Searches from other threads wait: the engine holds
        Python's lock while it rewrites, and they answer from the kept points once it is done.

        Not erased: the engine's write-ahead log, which keeps recent writes, vectors included, in 32 MB files
        it drops only once later writes have filled the next ones (README, "Forgetting").
        """
        # Through _writing: a stuck engine is said so (memory-write-failed), as for other writes.
        with self._writing():
            # A rewrite writes the segments anew beside the old: room for them all, at worst. The engine checks
            # too, but not on every file system: on a nearly full tmpfs its rewrite died of SIGBUS.
            self._check_room(0, rewriting=_allocated_bytes(self.path / SHARD_DIR / "segments"), what="an erase")
            try:
                with self._rewriting_segments():  # flushed at its end: until then the files held the vectors
                    self.shard.optimize()  # with VACUUM_THRESHOLDS: a rewrite of every segment with a deleted point
            except Exception as exc:
                if ENGINE_NO_ROOM_MESSAGE not in str(exc):
                    raise
                # The engine checks before rewriting, and refuses: the points stay forgotten, their vectors kept.
                raise MemoryFullError(f"erasing rewrites the memory's segments, and the disk holding {self.path} "
                                      f"has too little room ({exc}): the points stay forgotten, their vectors "
                                      "in the files; free some space, then erase again (vmem forget --erase, "
                                      "POST /v1/memory/erase)") from exc
            self._count_unindexed()

    def index_upkeep(self, wait: bool = True) -> IndexUpkeep | None:
        # Flushed first: the engine writes a delete to its segment's files only then. Under the write lock: no
        # erase rewrites the segments meanwhile. None where the files disagree with the engine's own count.
        if not self._write_lock.acquire(blocking=wait):
            raise TimeoutError("the memory's writes are held (a backup, an edit): its index is not counted now")
        try:
            try:
                self.shard.flush()
            except Exception:  # a full disk, files the user may not write: the files may be behind, not said
                return None
            info = self.shard.info()
            read = _hnsw_segments_from_files(self.path / SHARD_DIR / "segments")
        finally:
            self._write_lock.release()
        if read is None or read[0] != info.indexed_vectors_count or not 0 <= read[1] <= read[0]:
            return None
        indexed = read[0] - read[1]
        if indexed > info.points_count:
            return None
        return IndexUpkeep(points=info.points_count, indexed=indexed, unindexed=info.points_count - indexed,
                           deleted_in_index=read[1])

    def search_files(self) -> list[Path]:
        """The engine's files that searches read, the original vectors first.

        Not the write-ahead log or the payload indexes: searches never read them (no filter while nothing
        is excluded); nor the map from point ids to the engine's offsets, which only writes and lookups by
        id read. Nor the quantized codes, which the engine holds in its own memory; nor the indexed
        originals of a quantized memory that does not rescore; nor vmem's own copy of the originals
        (`rescore_doubtful`), whose few rows a query are read around the page cache.
        """
        codes_only = self.meta.index.codes_only
        files = [f for f in (self.path / SHARD_DIR).rglob("*")
                 if f.is_file() and not {"wal", "payload_index"} & set(f.parts)
                 and f.name != ID_TO_OFFSET_FILE and not str(f).endswith(LOADED_CODES_FILE)
                 and not (codes_only and str(f).endswith(ORIGINAL_VECTORS_FILE))]
        return sorted(files, key=lambda f: not str(f).endswith(ORIGINAL_VECTORS_FILE))

    def prefetch(self) -> int:
        """Read the search files once, so that the page cache holds them; returns the bytes read.

        A memory opened cold answers its first queries slowly: with int8 each query faults in its candidates'
        original vectors one page at a time (1.28M points: ~250 against ~1,400 batched queries a second at first).
        Read here, they come in large sequential requests instead (1.28M points: 1.2 GiB in ~2 s on the
        benchmark machine). posix_fadvise WILLNEED alone left a fifth of a file unread. `vmem serve` calls this before
        taking traffic: beside queries it hardly progresses, as the engine holds the GIL while it searches.

        Only what searches read is cached: not the codes file (the engine holds the codes in its own memory)
        nor the files' unwritten, preallocated parts. In a server with little RAM to spare, those pages
        crowd out the ones searches need until the kernel finds out they are never read again: 1.28M points,
        turboquant8 codes only, inside a hard limit of 0.5x the raw vectors, same run (docs/benchmarks.md):
        1,270 batched queries a second (median) when they were read, 1,821 now; the ~1,900 of no limit after
        the first 1,000 queries.
        """
        done = 0
        buffer = bytearray(8 << 20)
        for f in self.search_files():
            try:
                done += _read_written_parts(f, buffer)
            except FileNotFoundError:  # a segment merged away meanwhile
                continue
        return done

    def flush(self) -> None:
        with self._write_lock:
            self.shard.flush()

    backs_up_files = True

    def size_on_disk(self) -> int:
        """The disk blocks the memory's folder takes (its files are sparse: their sizes overstate), with those of the
        folders linked from it (a backup copies them)."""
        return _allocated_bytes(self.path, follow_links=True)

    def write_backup(self, folder: Path) -> int:
        """Copy the memory's files into the empty folder `folder`, as they are once the engine has flushed every
        write to its segments, with every write waiting meanwhile (searches go on); returns the bytes written.

        The engine writes its files only when asked (an update, a flush, an optimize: it has no threads of its
        own), and each of those takes the write lock: held, the files are still, and the copy opens as this memory
        was (the write-ahead log goes too, and what the segments already hold is not applied twice). The open
        lock is left out: the copy is a folder of its own, opened on its own.
        """
        with self._write_lock:
            self.check_available()
            self.shard.flush()  # vmem's own rows (`rescore_doubtful`) are written through, each write synced
            return copy_folder_sparse(self.path, folder, leave_out=lambda path: path in (OPEN_LOCK_FILE, SERVED_FILE))

    def edits_elsewhere(self) -> frozenset[str]:
        self.shard  # noqa: B018 - a closed store says so here, before its caller embeds a folder for nothing
        return frozenset()

    @property
    def closed(self) -> bool:
        return self._shard is None

    def close(self) -> None:
        shard = self._shard
        if shard is not None:
            try:
                self.check_available()
            except MemoryGoneError as exc:  # nothing to flush to: let go of the files, and say why
                log.warning("%s", exc)
                with contextlib.suppress(Exception):
                    shard.close()
            else:
                free = self._free_bytes()
                if free is None or free >= EDIT_HEADROOM_BYTES:  # a write: on a full disk it died of SIGBUS
                    self._acknowledge_last_add()
                if self._rows is not None:
                    self._rows.close()
                try:
                    shard.flush()
                except Exception as exc:  # e.g. no space left: what is not flushed is in the write-ahead log
                    log.warning("the memory's last writes could not be flushed to its segments at close (%s); the "
                                "engine applies them again from its log when the memory is next opened",
                                error_line(exc))
                # Not on a full disk: counting flushes (index_upkeep), and the file is a write
                counts = self._counts_to_keep() if free is None or free >= EDIT_HEADROOM_BYTES else None
                shard.close()
                if counts is not None:  # after the engine's close, which rewrites its files, and under the lock
                    keep_counts(self.path, counts)
            self.shard = None
        self._close_folder_fd()
        self._release_open_lock()
        if self._read_only_copy is not None:
            shutil.rmtree(self._read_only_copy, ignore_errors=True)
            self._read_only_copy = None

    def _counts_to_keep(self) -> KeptCounts | None:
        """The counts `vmem info` and `vmem labels` show, kept beside the memory at close (`retrieval.kept_counts`):
        the next of them reads them rather than opening the engine. None for a read-only service's copy (removed
        at close), or where the engine fails to count (its close says why, if it matters)."""
        if self._read_only_copy is not None:
            return None
        try:
            counts = self.label_counts()
            if self._searchable_kept is not None and self._searchable_kept[0] == self._writes:
                searchable = self._searchable_kept[1]  # no write since it opened
            elif self._any_excluded:
                resp = self.shard.facet(self._qe.FacetRequest(key="label", limit=max(1, len(counts)), exact=True,
                                                              filter=self._filter(searchable=True)))
                found = {str(h.value): int(h.count) for h in resp}
                searchable = {lab: found.get(lab, 0) for lab in counts}
            else:
                searchable = counts
            points, searchable_points = self.count(), self.count(searchable=True)
            upkeep = self.index_upkeep(wait=False)
        except Exception:  # a count is no reason to fail a close
            log.debug("the memory's counts were not kept at close", exc_info=True)
            return None
        return KeptCounts(points=points, searchable=searchable_points, per_label=counts,
                          searchable_per_label=searchable, index_upkeep=upkeep.as_dict() if upkeep else None)

    def _acknowledge_last_add(self) -> None:
        """End the write-ahead log with a write that changes a segment, so that opening the memory replays next to
        nothing.

        The engine replays the log from its last acknowledged operation on every open, and acknowledges only
        when a flush writes a changed segment. After an add and then indexing (which writes its segments
        itself) the flush at close finds nothing changed: every later open re-applied that last add. For an
        add of 20,000 points that cost 540 MB of heap in each serving process (1.28M memory: 1,350 against
        761 MB) and 0.2-1 s. Deleting a point no memory holds changes a segment and no point: rewriting the last
        point's label with itself had moved it out of the index just built, one point forgotten or edited in
        every fresh build's upkeep.
        """
        if not self._added:
            return
        self._added = False
        with self._write_lock:
            # Never a point's id: those are version-5 UUIDs (point_id_for), copied as they are (put). Looked up
            # all the same, since a delete of a point that is there would lose it.
            if not self.shard.retrieve([_NO_POINT_ID], with_payload=False, with_vector=False):
                self.shard.update(self._qe.UpdateOperation.delete_points([_NO_POINT_ID]))


# ------------------------------------------------------------------- server (qdrant-client)


def server_quantization_config(index: IndexSettings) -> Any:
    """The Qdrant server's quantization config for a memory's index settings (None: not quantized)."""
    from qdrant_client import models as qm

    if index.quantization == "int8":
        return qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99,
                                                                         always_ram=True))
    if index.quantization == "turboquant8":
        return qm.TurboQuantization(turbo=qm.TurboQuantQuantizationConfig(bits=qm.TurboQuantBitSize.BITS8,
                                                                          always_ram=True))
    return None


# The Qdrant memories (location, collection) whose notes this process was refused the settling of, as a key that
# may only read is at each opening: said once.
_TOLD_READ_ONLY_UNSETTLED: set[tuple[str, str]] = set()


class QdrantServerStore(MemoryStore):
    """A collection on a Qdrant server (`url`), or in qdrant-client's local mode (":memory:")."""

    def __init__(self, location: str, meta: MemoryMeta | None = None, collection: str = DEFAULT_COLLECTION,
                 api_key: str | None = None, client: Any = None):
        """`client`: an open `QdrantClient` to use instead of one made for `location` (two views of one
        collection in one process, as two processes sharing a server have; the tests)."""
        from qdrant_client import QdrantClient
        from qdrant_client import models as qm

        self._qm = qm
        self.location = location
        self.collection = collection
        # The edit tokens last seen in the collection's metadata (see `edits_elsewhere`), and edits by others
        # taken in while saving ours, not yet reported.
        self._seen_edits: dict[str, Any] = {}
        self._unreported: set[str] = set()
        made_here = client is None
        if client is None and meta is None and (folder := local_folder(location)) is not None and not folder.exists():
            # Said before qdrant-client's local mode makes the folder: a mistyped path was left behind as a folder
            raise NoMemoryError(f"no collection {collection!r} at {without_secrets(location)}")
        if client is None:
            if location == ":memory:":
                client = QdrantClient(":memory:")
            elif "://" in location:
                url, key = server_url_and_key(location, api_key)
                # Its version check warned "Set check_compatibility=False", which no vmem user can set, and asked
                # again at every opening: `_check_server_version` asks once a process, and says it in vmem's words
                client = QdrantClient(url=url, api_key=key, check_compatibility=False)
            else:  # `qdrant-local:PATH`, as opened; the location keeps its prefix, so it reopens as it was
                client = _local_mode_client(location)
        self.client: ServerClient | ClosedClient = ServerClient(client, location)
        # qdrant-client's local modes keep and compare float32 vectors whatever datatype the collection asks for
        self._local_mode = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self.journal = CollectionJournal(self.client, f"{collection}{JOURNAL_COLLECTION_SUFFIX}", self._local_mode)
        existed = False
        try:
            existed = self.client.collection_exists(collection)
            if made_here and "://" in location:  # a server that answered: an unreachable one is said so already
                _check_server_version(client, location)
            if existed:
                raw = self.client.get_collection(collection).config.metadata or {}
                if "vmem" not in raw:
                    raise MemoryError(f"collection {collection!r} at {without_secrets(location)} was not made by vmem")
                stored = MemoryMeta.model_validate(raw["vmem"])
                self.meta = stored
                self._meta_read = stored.model_copy(deep=True)  # what `merge_meta` compares this process's edits to
                self._seen_edits = {key: raw.get(key) for key in (POINTS_EDIT_KEY, META_EDIT_KEY)}
                if meta is not None:
                    self.check_featurizer(meta.featurizer)
            else:
                if meta is None:
                    raise NoMemoryError(f"no collection {collection!r} at {without_secrets(location)}")
                if meta.index.rescore_doubtful:
                    raise MemoryError("rescore_doubtful keeps a file beside the embedded memory: a Qdrant server "
                                      "rescores on its own (rescore on, or off for the codes alone)")
                self.meta = meta
                self._meta_read = meta.model_copy(deep=True)
                self.client.create_collection(
                    collection,
                    vectors_config=qm.VectorParams(
                        size=meta.featurizer.dim, distance=qm.Distance.COSINE,
                        datatype=qm.Datatype.FLOAT16 if meta.index.vectors_dtype == "float16" else None),
                    hnsw_config=qm.HnswConfigDiff(m=meta.index.m, ef_construct=meta.index.ef_construct),
                    quantization_config=server_quantization_config(meta.index),
                    on_disk_payload=True,
                    metadata={"vmem": json.loads(meta.model_dump_json())},
                )
                # Not in qdrant-client's local modes (`:memory:`, `qdrant-local:`), which keep no payload index and
                # only warn of one asked for ("Payload indexes have no effect"), to a user with nothing to act on
                for key in () if self._local_mode else ("label", "source", EXCLUDED_KEY):
                    self.client.create_payload_index(collection, key, qm.PayloadSchemaType.KEYWORD)
        except BaseException:
            # Refused (no collection there, another encoder's): the client made here lets go of what it holds. A
            # local mode's folder stayed locked, and a second open of it in this process (to create the memory
            # after finding none, as `VisualMemory.open(create=True)` does) was refused.
            if made_here:
                self.client.close()
            raise
        if existed:  # the notes of edits its processes were stopped in before their entries (a new memory has none)
            self.index_journal()
            self.settle_journal()

    def index_journal(self) -> None:
        """The journal's lookups' indexes (`CollectionJournal.index_lookups`), on a journal a vmem before them made.
        They make lookups faster, never different: a server failing to make them (a 500, an odd reply) leaves the
        memory to open as before, logged; one not answering fails the opening, as any request of it would."""
        if not isinstance(self.journal, CollectionJournal):
            return
        try:
            self.journal.index_lookups()
        except MemoryStoreError:
            raise
        except Exception as exc:
            log.warning("the Qdrant server did not make the journal's payload indexes (%s): its lookups read every "
                        "point's payload, slower on a long journal; the next opening asks again",
                        without_secrets(error_line(exc)))

    def settle_journal(self) -> int:
        """As `MemoryStore.settle_journal`, of the notes of processes known to have ended (`CollectionJournal.pending`:
        others may be editing the memory now). A server refusing it (a key that may only read) or failing leaves the
        notes for a later opening, and the memory opens."""
        from qdrant_client.http.exceptions import UnexpectedResponse

        try:
            return super().settle_journal()
        except MemoryStoreError:
            raise  # the server unreachable: the opening fails as any request of it would
        except Exception as exc:
            if isinstance(exc, UnexpectedResponse) and exc.status_code == 403:
                # A key that may only read: refused so at every opening until one with a key that may write, an
                # ERROR each time in a service's log for what is no failure. Said once a process, with what to do.
                memory = (without_secrets(self.location), self.collection)
                if memory not in _TOLD_READ_ONLY_UNSETTLED:
                    _TOLD_READ_ONLY_UNSETTLED.add(memory)
                    log.warning("this memory's journal holds notes of edits that stopped processes made and never "
                                "journaled, and the server refuses this key their writing (403 Forbidden: a key that "
                                "may only read): they are missing from the memory's history until it is opened once "
                                "with a key that may write (any vmem command, e.g. vmem info)")
                return 0
            log.error("the memory's journal could not record the edits a stopped process left unjournaled (%s); a "
                      "later opening tries again", error_line(exc))
            return 0

    def _stored_metadata(self) -> dict[str, Any]:
        return self.client.get_collection(self.collection).config.metadata or {}

    def save_meta(self) -> None:
        # Written whole: merged first with what another process stored since this one read it. (No server
        # compares and sets metadata, so two saves within the same few milliseconds can still lose one.)
        raw = self._stored_metadata()
        if raw.get(META_EDIT_KEY) != self._seen_edits.get(META_EDIT_KEY) and "vmem" in raw:
            self.meta = merge_meta(self._meta_read, self.meta, MemoryMeta.model_validate(raw["vmem"]))
            self._unreported.add("meta")
        self._mark_edited(META_EDIT_KEY, vmem=json.loads(self.meta.model_dump_json()))
        self._meta_read = self.meta.model_copy(deep=True)

    def _mark_edited(self, key: str, **metadata: Any) -> None:
        """Tell the processes sharing this collection that it changed: a new token under `key`, written after
        the change itself, so one that sees the token sees the change. (Metadata updates merge key by key.)"""
        token = uuid.uuid4().hex
        self.client.update_collection(self.collection, metadata={**metadata, key: token})
        self._seen_edits[key] = token

    def edits_elsewhere(self) -> frozenset[str]:
        raw = self._stored_metadata()
        changed, self._unreported = self._unreported, set()
        for key, kind in ((POINTS_EDIT_KEY, "points"), (META_EDIT_KEY, "meta")):
            if raw.get(key) != self._seen_edits.get(key):
                self._seen_edits[key] = raw.get(key)
                changed.add(kind)
        if "meta" in changed and "vmem" in raw:
            stored = MemoryMeta.model_validate(raw["vmem"])
            self.meta = merge_meta(self._meta_read, self.meta, stored)  # changes not saved yet stay
            self._meta_read = stored
        return frozenset(changed)

    def _filter(self, label=None, source_prefix=None, labels=None, searchable=False, excluded_only=False):
        qm = self._qm
        empty = qm.IsEmptyCondition(is_empty=qm.PayloadField(key=EXCLUDED_KEY))
        must: list[Any] = [empty] if searchable else []
        must_not: list[Any] = [empty] if excluded_only else []
        if label is not None:
            must.append(qm.FieldCondition(key="label", match=qm.MatchValue(value=label)))
        if labels is not None:
            must.append(qm.FieldCondition(key="label", match=qm.MatchAny(any=list(labels))))
        if source_prefix is not None:
            must.append(qm.FieldCondition(key="source", match=qm.MatchPrefix(prefix=source_prefix)))
        return qm.Filter(must=must or None, must_not=must_not or None) if must or must_not else None

    def _upsert(self, ids, vectors, payloads) -> None:
        self.client.upsert(self.collection, wait=True, points=self._qm.Batch(
            ids=ids, vectors=vectors.tolist(), payloads=payloads))
        self._mark_edited(POINTS_EDIT_KEY)

    def erase_forgotten(self) -> None:
        raise MemoryError("a memory on a Qdrant server cannot erase forgotten points on demand: the server "
                          "rewrites a segment once its optimizers' deleted_threshold of it is deleted")

    def delete_ids(self, ids) -> int:
        ids, n = list(ids), 0
        # In chunks: a Qdrant server refuses a request over its size limit (32 MB by default), which the ids of
        # a forget by prefix reach at ~850,000 points.
        for start in range(0, len(ids), SERVER_REQUEST_IDS):
            present = [p.id for p in self.retrieve(ids[start : start + SERVER_REQUEST_IDS])]
            if present:
                self.client.delete(self.collection, points_selector=self._qm.PointIdsList(points=present),
                                   wait=True)
            n += len(present)
        if n:
            self._mark_edited(POINTS_EDIT_KEY)
        return n

    def delete_where(self, label=None, source_prefix=None) -> int:
        if label is None and source_prefix is None:
            raise ValueError("give a label or a source prefix")
        flt = self._filter(label=label, source_prefix=source_prefix)
        n = self.client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            self.client.delete(self.collection, points_selector=self._qm.FilterSelector(filter=flt), wait=True)
            self._mark_edited(POINTS_EDIT_KEY)
        return n

    def ids_where(self, label=None, source_prefix=None) -> list[str]:
        flt = self._filter(label=label, source_prefix=source_prefix)
        ids: list[str] = []
        offset = None
        while True:
            recs, offset = self.client.scroll(self.collection, scroll_filter=flt, limit=SCROLL_PAGE, offset=offset,
                                              with_payload=False, with_vectors=False)
            ids += [_str_id(r.id) for r in recs]
            if offset is None or not recs:
                return ids

    def count(self, label=None, searchable=False) -> int:
        flt = self._filter(label=label, searchable=searchable)
        return self.client.count(self.collection, count_filter=flt, exact=True).count

    def label_counts(self) -> dict[str, int]:
        resp = self.client.facet(self.collection, key="label", limit=max(1, self.count()), exact=True)
        counts = {str(h.value): int(h.count) for h in resp.hits}
        # qdrant-client's local mode gives a label that parses as a UUID (an MD5 hex digest) back re-spelt,
        # hyphenated: such a label, if its count does not hold, is counted from the payloads instead.
        if any(_parses_as_uuid(v) and self.count(label=v) != n for v, n in counts.items()):
            counts = {}
            for batch in self.scroll(with_vectors=False):
                for p in batch:
                    counts[p.label] = counts.get(p.label, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def compared_dtype(self) -> str:
        return "float32" if self._local_mode else self.meta.index.vectors_dtype

    def _nearest(self, v, k, labels, exact) -> list[list[Neighbor]]:
        qm = self._qm
        flt = self._filter(labels=labels, searchable=True)
        ix = self.meta.index
        quant = (qm.QuantizationSearchParams(rescore=ix.rescore, oversampling=ix.oversampling)
                 if ix.quantized else None)
        # None in a local mode, which searches every point exactly whatever it is asked, and warned ("search_params
        # has no effect") where asked for a graph's, a quantization's or an exact search
        params = None if self._local_mode else qm.SearchParams(hnsw_ef=max(ix.hnsw_ef, 2 * k), exact=exact,
                                                               quantization=quant)
        reqs = [qm.QueryRequest(query=row.tolist(), limit=k, filter=flt, params=params,
                                with_payload=list(SEARCH_PAYLOAD)) for row in v]
        out = []
        for start in range(0, len(reqs), 256):
            for res in self.client.query_batch_points(self.collection, reqs[start : start + 256]):
                out.append([Neighbor(_str_id(p.id), p.payload["label"], p.payload["source"], float(p.score),
                                     p.payload) for p in res.points])
        return out

    def _similar(self, v, min_similarity, limit) -> list[Neighbor]:
        qm = self._qm
        params = None if self._local_mode else qm.SearchParams(exact=True,  # (None: see query_batch)
                                                               quantization=qm.QuantizationSearchParams(ignore=True))
        found = self.client.query_points(self.collection, query=v.tolist(), limit=limit, search_params=params,
                                         score_threshold=min_similarity, with_payload=list(SEARCH_PAYLOAD)).points
        return [Neighbor(_str_id(p.id), p.payload["label"], p.payload["source"], float(p.score), p.payload)
                for p in found]

    def retrieve(self, ids, with_vectors=False) -> list[StoredPoint]:
        if not ids:
            return []
        # Each point once, as the embedded engine answers: qdrant-client repeats a point asked for twice, and
        # `delete_ids` counted it twice ("forgot 2 points" for one).
        recs = self.client.retrieve(self.collection, ids=list(dict.fromkeys(ids)), with_payload=True,
                                    with_vectors=with_vectors)
        return [StoredPoint(_str_id(r.id), r.payload or {},
                            np.asarray(r.vector, np.float32) if with_vectors else None) for r in recs]

    def page(self, label=None, source_prefix=None, start=None, limit=100, excluded=None,
             with_vectors=False) -> tuple[list[StoredPoint], str | None]:
        flt = self._filter(label=label, source_prefix=source_prefix, searchable=excluded is False,
                           excluded_only=excluded is True)
        recs, offset = self.client.scroll(self.collection, scroll_filter=flt, limit=limit, offset=start,
                                          with_payload=True, with_vectors=with_vectors)
        return ([StoredPoint(_str_id(r.id), r.payload or {}, np.asarray(r.vector, np.float32) if with_vectors else None)
                 for r in recs], None if offset is None else _str_id(offset))

    def scroll(self, batch_size=1024, with_vectors=False, payload_keys=None) -> Iterator[list[StoredPoint]]:
        offset = None
        while True:
            recs, offset = self.client.scroll(self.collection, limit=batch_size, offset=offset,
                                              with_payload=True if payload_keys is None else list(payload_keys),
                                              with_vectors=with_vectors)
            if recs:
                yield [StoredPoint(_str_id(r.id), r.payload or {},
                                   np.asarray(r.vector, np.float32) if with_vectors else None) for r in recs]
            if offset is None or not recs:
                return

    def set_payload(self, ids, payload) -> None:
        self.client.set_payload(self.collection, payload=payload, points=list(ids), wait=True)
        self._mark_edited(POINTS_EDIT_KEY)

    @property
    def closed(self) -> bool:
        return isinstance(self.client, ClosedClient)

    def close(self) -> None:
        if not isinstance(self.client, ClosedClient):
            self.client.close()
            self.client = ClosedClient(self.location)


def _local_mode_client(location: str) -> Any:
    """qdrant-client's local mode in the folder of a `qdrant-local:` location. It opens a folder in one process at a
    time, and one another process holds was its RuntimeError's traceback: MemoryInUseError, saying so."""
    from qdrant_client import QdrantClient

    folder = local_folder(location)
    try:
        return QdrantClient(path=str(folder))
    except RuntimeError as exc:
        if "already accessed by another instance" not in str(exc):
            raise
        raise MemoryInUseError(  # a folder's name is of someone else's making: escaped, as _shown does
            f"the memory at {visible(without_secrets(location))} is open in another process (a running vmem serve or "
            "build?): qdrant-client's local mode opens it in one process at a time, its journal included. Stop that "
            "process, or put the memory on a Qdrant server (--qdrant-url http://...) to share it", folder=folder
        ) from None


def open_store(
    location: str | Path,
    featurizer: FeaturizerSpec | None = None,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    index: IndexSettings | None = None,
    read_only: bool = False,
    wait: float = 0.0,
) -> MemoryStore:
    """Open the memory at `location`, creating it when `featurizer` is given and none exists.

    Args:
        location: a directory (embedded Qdrant Edge, the default), `http(s)://host:port`
            (a Qdrant server), `:memory:` (qdrant-client's in-process mode, for tests), or
            `qdrant-local:PATH` (qdrant-client's on-disk local mode).
        featurizer: the spec of the encoder about to be used; creates the memory if missing and
            raises `FeaturizerMismatchError` if the memory was built with another one.
        index: HNSW and quantization settings for a new memory (ignored for an existing one).
        read_only: an embedded memory for searches only, edits refused (`open_read_only`).
        wait: seconds an embedded memory that another process holds (open, or creating it) is waited for, tried
            again after pauses of up to half a second; refused with MemoryInUseError past that (0: at once;
            `math.inf`: no limit). A memory held by this same process is refused at once.

    Returns:
        A `MemoryStore`.
    """
    _deadline(wait)  # a wait that is no number of seconds is refused wherever the memory is
    if read_only:
        if not is_embedded_location(location):
            raise MemoryError(f"{location} cannot be opened read-only: only an embedded memory (a folder) can")
        return open_read_only(location, wait)
    meta = MemoryMeta(featurizer=featurizer, index=index or IndexSettings()) if featurizer is not None else None
    loc = str(location)
    if is_embedded_location(loc):
        return EdgeMemoryStore(loc, meta, wait)
    if loc.startswith(LOCAL_MODE_PREFIX):
        return QdrantServerStore(loc, meta, collection=collection)
    return QdrantServerStore(loc, meta, collection=collection, api_key=api_key)


def _parses_as_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# The environment variable Qdrant's own tools and Qdrant Cloud's examples read a server's API key from
QDRANT_API_KEY_ENV = "QDRANT_API_KEY"


# The Qdrant servers (locations, without secrets) whose version this process has asked (`_check_server_version`)
_VERSION_CHECKED: set[str] = set()


def _check_server_version(client: Any, location: str) -> None:
    """Warn where the Qdrant server at `location` runs a version qdrant-client is not made for: another major
    version, or a minor version more than one away from the client's (qdrant-client's own rule, which its check
    applied). Asked once a process for each server (GET /); a server that does not say is let be: what it answers
    to vmem's requests tells."""
    import importlib.metadata

    shown = without_secrets(location)
    if shown in _VERSION_CHECKED:
        return
    _VERSION_CHECKED.add(shown)
    try:
        server = str(client.info().version)
        s_major, s_minor = (int(part) for part in server.split(".")[:2])
        ours = importlib.metadata.version("qdrant-client")
        c_major, c_minor = (int(part) for part in ours.split(".")[:2])
    except Exception as exc:  # no version said, or one of another form
        log.debug("the Qdrant server at %s did not say its version (%s)", shown, error_line(exc))
        return
    if s_major == c_major and abs(s_minor - c_minor) <= 1:
        return
    if (s_major, s_minor) < (c_major, c_minor):
        advice = f"upgrade the server to Qdrant {c_major}.{max(c_minor - 1, 0)} or later"
    else:
        advice = (f"upgrade qdrant-client in vmem's environment to {s_major}.{max(s_minor - 1, 0)} or later "
                  "(pip install -U qdrant-client)")
    log.warning("the Qdrant server at %s runs Qdrant %s, and vmem's qdrant-client is %s, made for servers %d.%d to "
                "%d.%d: requests may be refused or misread; %s", shown, visible(server), ours, c_major,
                max(c_minor - 1, 0), c_major, c_minor + 1, advice)


def server_url_and_key(location: str, api_key: str | None = None) -> tuple[str, str | None]:
    """A Qdrant server's URL as qdrant-client is to be given it, and the API key to send (`api-key` header):
    `api_key` if given, else the URL's `?api_key=` (taken out of the URL: qdrant-client reads no key from a
    query, and sent none), else `$QDRANT_API_KEY` (empty: none). The location itself keeps its query, so that a
    memory reopened from it (a copy, a re-embedding) is sent the key again; it is shown `without_secrets`."""
    url = urlsplit(location)
    query = parse_qsl(url.query, keep_blank_values=True)
    in_url = [value for name, value in query if name == "api_key"]
    if in_url:
        if len(set(in_url)) > 1:
            raise MemoryError(f"{without_secrets(location)} names two API keys (?api_key=): give one")
        if not in_url[0]:  # `?api_key=$KEY` of a variable unset: no key at all had been refused as a wrong one
            raise MemoryError(f"{without_secrets(location)}'s ?api_key= is empty: give the key, or leave it out "
                              f"(${QDRANT_API_KEY_ENV} is read then)")
        location = urlunsplit(url._replace(query=urlencode([(n, v) for n, v in query if n != "api_key"])))
    return location, api_key or (in_url[0] if in_url else None) or os.environ.get(QDRANT_API_KEY_ENV) or None


def is_embedded_location(location: str | Path) -> bool:
    """Whether `open_store` makes an embedded (Qdrant Edge) memory there: a directory, not a URL or a
    qdrant-client mode."""
    loc = str(location)
    return not (loc == ":memory:" or "://" in loc or loc.startswith(LOCAL_MODE_PREFIX))


def local_folder(location: str) -> Path | None:
    """The folder a memory at `location` keeps its files in (embedded or `qdrant-local:`); None for a server
    or `:memory:`."""
    if location.startswith(LOCAL_MODE_PREFIX):
        return Path(os.path.expanduser(location.removeprefix(LOCAL_MODE_PREFIX)))
    return Path(os.path.expanduser(location)) if is_embedded_location(location) else None


def same_location(a: str | Path, b: str | Path) -> bool:
    """Whether two locations name one place: folders by their resolved paths, servers by scheme, host and path
    whatever their case or trailing slash. Two `:memory:` stores are two memories, so never the same."""
    def canonical(location: str | Path) -> str:
        loc = str(location)
        if (folder := local_folder(loc)) is not None:
            return f"{LOCAL_MODE_PREFIX if loc.startswith(LOCAL_MODE_PREFIX) else ''}{folder.resolve()}"
        if "://" in loc:
            url = urlsplit(server_url_and_key(loc)[0])  # two keys to one server: one place
            return urlunsplit((url.scheme.lower(), url.netloc.lower(), url.path.rstrip("/"), url.query, ""))
        return loc

    return str(a) != ":memory:" and canonical(a) == canonical(b)
