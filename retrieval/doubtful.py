"""Rescoring only the doubtful candidates of a search on codes, from vmem's own copy of the original vectors.

A quantized memory that answers from its codes alone never reads the original vectors, so a server needs RAM
only for the codes, graph and payload. Its recall is the codes' (turboquant8: 0.985 on 1.28M synthetic
vectors): the neighbours it gets wrong are the ones whose codes score lies within the codes' error of the k-th
best. Reading the originals of just those (~6-9 a query against the engine's ~100 when it rescores its whole
search) settles them (docs/benchmarks/int8_error.py: recall 0.9986-0.9995 from the same candidates).

The engine has no way to read a chosen point's original vector without faulting its pages in one by one while
it holds the GIL, and does not expose where a point's vector lies in its files. So the memory keeps a copy of
its own: `OriginalRows`, one fixed-size row a point in one file, the row number stored in the point's payload,
read with `os.pread` from a few threads at once (the disk answers several random reads at a time).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Payload key holding a point's row in the memory's `OriginalRows`.
ROW_KEY = "row"
# Threads reading rows at once: the benchmark disk served ~8,000 random 4 KiB reads a second from one thread,
# ~21,000 from 4 and no more from 16 (docs/benchmarks/random-reads.json).
READ_THREADS = 4
# Fewer rows than this are read by the calling thread: handing them to the pool costs more than it saves.
INLINE_READS = 3


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as the engine stores them for cosine similarity (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class OriginalRows:
    """Unit-length vectors of a memory's points, one `dtype` row each, appended to one file and read by row.

    A row is written before its point goes into the engine, so a point a search can find always has its row.
    Rows are never rewritten: a re-added point gets a new one, and a deleted point's row is left unused.
    """

    def __init__(self, path: Path, dim: int, dtype: str):
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # A row cut short (a write that died midway) was never referenced by a point: the next append overwrites it.
        self.rows = os.fstat(self._fd).st_size // self.row_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.rows_read = 0  # since opening, for benchmarks and metrics

    def append(self, vectors: np.ndarray) -> range:
        """Write these vectors (unit-scaled) as new rows; returns their row numbers. Callers serialise appends."""
        data = memoryview(np.ascontiguousarray(unit_rows(vectors), dtype=self.dtype).tobytes())
        start = self.rows
        offset, done = start * self.row_bytes, 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], offset + done)
        self.rows = start + len(vectors)
        return range(start, self.rows)

    def _read_into(self, out: np.ndarray, rows: Sequence[int], positions: Sequence[int]) -> None:
        raw = out.view(np.uint8).reshape(len(out), self.row_bytes)
        for row, pos in zip(rows, positions, strict=True):
            got = os.preadv(self._fd, [raw[pos]], row * self.row_bytes)
            if got != self.row_bytes:
                raise OSError(f"{self.path}: row {row} is missing ({got} of {self.row_bytes} bytes)")

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """The rows asked for, as float32, in that order; many rows are read by several threads at once."""
        out = np.empty((len(rows), self.dim), self.dtype)
        self.rows_read += len(rows)
        if len(rows) < INLINE_READS:
            self._read_into(out, rows, range(len(rows)))
            return out.astype(np.float32)
        # In row order, so that rows sharing a page or neighbouring pages are read one after the other.
        order = np.argsort(np.asarray(rows))
        parts = [order[i::READ_THREADS] for i in range(READ_THREADS)]
        pool = self._thread_pool()
        done = [pool.submit(self._read_into, out, [rows[p] for p in part], part) for part in parts if len(part)]
        for f in done:
            f.result()
        return out.astype(np.float32)

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="vmem-rows")
            return self._pool

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def doubtful_block(scores: np.ndarray, k: int, margin: float) -> tuple[int, int]:
    """For one query's candidates in descending codes-score order: [start, end) of those that need their
    originals read. Those before `start` are in the k best whatever the codes' error (score above the k-th
    best + margin); those from `end` on are out (below the k-th best - margin)."""
    if len(scores) <= k:
        return len(scores), len(scores)
    kth = scores[k - 1]
    start = int(np.searchsorted(-scores, -(kth + margin), side="left"))
    end = int(np.searchsorted(-scores, -(kth - margin), side="right"))
    return start, end


def rescore_doubtful(queries: np.ndarray, results: list[list[Any]], k: int, margin: float,
                     originals: OriginalRows, score_of: Callable[[Any], float],
                     row_of: Callable[[Any], int | None]) -> list[list[tuple[Any, float]]]:
    """The k best of each query's candidates (in descending codes-score order) with their similarities, the
    doubtful ones re-ranked by their original vectors.

    `score_of(hit)` is a candidate's codes score and `row_of(hit)` its row (None: it has none, and keeps its
    codes score); only the doubtful candidates are asked for their rows. The rows of the whole batch are read
    at once.
    """
    q = unit_rows(np.asarray(queries, np.float32))
    blocks, wanted = [], []
    for hits in results:
        scores = [score_of(h) for h in hits]
        start, end = doubtful_block(np.asarray(scores), k, margin)
        rows = [row_of(h) for h in hits[start:end]]
        blocks.append((scores, start, end, rows))
        wanted += [r for r in rows if r is not None]
    vectors = originals.read(wanted) if wanted else np.empty((0, originals.dim), np.float32)
    out, at = [], 0
    for qi, (hits, (scores, start, end, rows)) in enumerate(zip(results, blocks, strict=True)):
        doubtful = []
        for h, s, row in zip(hits[start:end], scores[start:end], rows, strict=True):
            if row is not None:
                s = float(vectors[at] @ q[qi])
                at += 1
            doubtful.append((h, s))
        # The sure ones keep their places; the best of the doubtful fill the rest, in order of true similarity.
        doubtful.sort(key=lambda hs: -hs[1])
        best = list(zip(hits[:start], scores[:start], strict=True)) + doubtful[: max(0, k - start)]
        best.sort(key=lambda hs: -hs[1])
        out.append(best)
    return out
