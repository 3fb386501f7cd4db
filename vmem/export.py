"""A memory's points with their vectors, as one `.npz` file to analyse elsewhere (numpy, UMAP, a linear probe,
another index): `VisualMemory.export_points` and `vmem export` write it, numpy alone reads it.

    >>> import json, numpy as np
    >>> with np.load("points.npz") as f:
    ...     vectors, labels, meta = f["vectors"], f["labels"], json.loads(f["meta"].item())

The arrays, one row per point, in id order (the order in which the memory breaks ties between equally near
points; a stable sort by similarity breaks them alike). Cosine kNN over the rows not `excluded`, with the vote
of meta["vote"] weighted by `reliability`, answers as the memory does (tests/test_export.py); in a memory that
stores float16 vectors, round the normalised query to float16 first: the engine compares it so.

    vectors      float32 [n, dim]  as stored: unit length (cosine); float16-rounded in a memory that stores its
                                   vectors as float16 (meta["index"]["vectors_dtype"])
    ids          str [n]           point ids, as `vmem points`, `classify --json` and `forget --id` show them
    labels       str [n]
    sources      str [n]           the image's path or URI
    excluded     bool [n]          hard-pruned (vmem prune --mode hard): searches never return the point
    reliability  float32 [n]       soft pruning's factor on the point's vote weight (1 where unset)
    tags         str [n]           the point's tags, a JSON object each ("{}" where none)
    added_at     str [n]           when the point was added (ISO 8601; "" where the memory did not record it)
    meta         str (0-d)         JSON: `format`, `format_version`, `vmem_version`, `exported_at`, `featurizer`
                                   (name, dim, preprocessing), `dim`, `index`, `vote` (the memory's vote settings:
                                   rule, k, alpha, tau, soft_pruning), `label_names`, `memory` (location, key),
                                   `filter` (the label, source prefix and excluded asked for), `points`

No array holds Python objects: `np.load` needs no `allow_pickle` (tags are JSON text: `json.loads(f["tags"][i])`).
`vmem import` takes the file into another memory with its tags and times; pruning's counts, relabelling marks, the
journal and DMN streams are not in it (`vmem copy` moves a memory whole).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from retrieval.files import write_atomically
from retrieval.store import EXCLUDED_KEY, RELIABILITY_KEY, StoredPoint
from retrieval.text import visible

EXPORT_FORMAT = "vmem-points"
EXPORT_FORMAT_VERSION = 1
# The arrays of an export, in the order they are written (the vectors first: the biggest, stored uncompressed).
EXPORT_ARRAYS = ("vectors", "ids", "labels", "sources", "excluded", "reliability", "tags", "added_at", "meta")
_COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class PointBatch:
    """Points with their vectors, as arrays of one row per point (`VisualMemory.point_batches`)."""

    ids: list[str]
    labels: list[str]
    sources: list[str]
    excluded: np.ndarray  # bool [n]: hard-pruned
    reliability: np.ndarray  # float32 [n]: soft pruning's weight factor
    vectors: np.ndarray  # float32 [n, dim], as stored
    tags: list[str]  # a JSON object each
    added_at: list[str]  # ISO 8601, "" where not recorded

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, points: Sequence[StoredPoint], dim: int) -> PointBatch:
        vectors = np.empty((len(points), dim), dtype=np.float32)
        for row, p in enumerate(points):
            vectors[row] = p.vector
        return cls(ids=[p.id for p in points], labels=[p.label for p in points],
                   sources=[p.source for p in points],
                   excluded=np.array([bool(p.payload.get(EXCLUDED_KEY)) for p in points], dtype=bool),
                   reliability=np.array([float(p.payload.get(RELIABILITY_KEY, 1.0)) for p in points],
                                        dtype=np.float32),
                   vectors=vectors,
                   tags=[json.dumps(p.payload.get("tags") or {}, ensure_ascii=False, sort_keys=True) for p in points],
                   added_at=[str(p.payload.get("added_at") or "") for p in points])


def check_export_path(path: str | Path, overwrite: bool = False) -> Path:
    """`path` if an export may be written there: FileExistsError if a file is there (unless `overwrite`),
    IsADirectoryError for a folder, FileNotFoundError if its folder is missing. Checked before the points are
    read, so that a long export does not fail at its end."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{visible(str(path))} is a folder: give the name of the .npz file to write")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{visible(str(path))} exists: give another name, or replace it (overwrite=True, "
                              "vmem export --force)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{visible(str(path.parent))} is not a folder: make it first, or write the export "
                                "elsewhere")
    return path


def write_export(path: str | Path, batches: Iterable[PointBatch], dim: int, meta: dict[str, Any],
                 overwrite: bool = False, progress: Callable[[int], None] | None = None) -> int:
    """Write the points of `batches` to the `.npz` file at `path`; returns how many.

    The vectors go, batch by batch, to an unnamed temporary file beside `path` (gone however the process ends),
    so that a memory larger than RAM is never held whole; the file is then written beside `path` and renamed over
    it (`write_atomically`): a reader, or a crash, sees the old file or the whole new one. Room needed on that disk
    meanwhile: twice the vectors' bytes (n x dim x 4). Ids, labels and sources are held in RAM until the end, as
    numpy string arrays (4 bytes a character, no Python object a point).
    """
    path = check_export_path(path, overwrite)
    # Each batch's strings as a numpy array of its own width (no Python string kept), widened as they are written.
    strings: dict[str, list[np.ndarray]] = {"ids": [], "labels": [], "sources": [], "tags": [], "added_at": []}
    flags: dict[str, list[np.ndarray]] = {"excluded": [np.zeros(0, dtype=bool)],
                                          "reliability": [np.zeros(0, dtype=np.float32)]}
    n = 0
    with tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".vectors.tmp") as raw:
        for batch in batches:
            vectors = np.ascontiguousarray(batch.vectors, dtype="<f4")
            if vectors.shape != (len(batch), dim):
                raise ValueError(f"a batch of {len(batch)} points holds vectors of shape {vectors.shape}, not "
                                 f"({len(batch)}, {dim})")
            raw.write(vectors.tobytes())  # one batch: a copy of a few MB
            for name in strings:
                strings[name].append(np.array(getattr(batch, name), dtype=str))
            flags["excluded"].append(np.asarray(batch.excluded, dtype=bool))
            flags["reliability"].append(np.asarray(batch.reliability, dtype=np.float32))
            n += len(batch)
            if progress is not None:
                progress(len(batch))
        raw.flush()
        meta = {**meta, "points": n}

        def write(fh: BinaryIO) -> None:
            with zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
                with _npy_entry(zf, "vectors", "<f4", (n, dim), compressed=False) as out:
                    raw.seek(0)
                    shutil.copyfileobj(raw, out, _COPY_CHUNK)
                for name, parts in strings.items():
                    descr = f"<U{max((p.dtype.itemsize // 4 for p in parts), default=1)}"
                    with _npy_entry(zf, name, descr, (n,)) as out:
                        for part in parts:
                            out.write(part.astype(descr).tobytes())
                for name, parts in flags.items():
                    with _npy_entry(zf, name, parts[0].dtype.str, (n,)) as out:
                        out.write(np.concatenate(parts).tobytes())
                with zf.open(_entry("meta", zipfile.ZIP_DEFLATED), "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.array(json.dumps(meta, ensure_ascii=False)),
                                              allow_pickle=False)

        write_atomically(path, write, replace=overwrite)
    return n


def export_meta(**fields: Any) -> dict[str, Any]:
    """An export's `meta`: the format, vmem's version and when, then `fields`."""
    from vmem import __version__

    return {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "vmem_version": __version__,
            "exported_at": datetime.now(UTC).isoformat(), **fields}


@contextmanager
def _npy_entry(zf: zipfile.ZipFile, name: str, descr: str, shape: tuple[int, ...],
               compressed: bool = True) -> Iterator[IO[bytes]]:
    """An `.npy` member of the archive, its header written: the caller writes the array's bytes, row by row."""
    with zf.open(_entry(name, zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED), "w",
                 force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
        yield out


def _entry(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{name}.npy", date_time=time.localtime()[:6])
    info.compress_type = compression
    return info
