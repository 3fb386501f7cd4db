"""Rescoring only the doubtful candidates of a search on codes, from vmem's own copy of the original vectors.

A quantized memory that answers from its codes alone never reads the original vectors, so a server needs RAM
only for the codes, graph and payload. Its recall is the codes' (turboquant8: 0.985 on 1.28M synthetic
vectors): the neighbours it gets wrong are the ones whose codes score lies within the codes' error of the k-th
best. Reading the originals of just those (~6-9 a query against the engine's ~100 when it rescores its whole
search) settles them (docs/benchmarks/int8_error.py: recall 0.9986-0.9995 from the same candidates).

The engine has no way to read a chosen point's original vector without faulting its pages in one by one while
it holds the GIL, and does not expose where a point's vector lies in its files. So the memory keeps a copy of
its own: `OriginalRows`, one fixed-size row a point in one file, the row number stored in the point's payload,
read around the page cache by several threads at once.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Payload key holding a point's row in the memory's `OriginalRows`.
ROW_KEY = "row"
# O_DIRECT reads whole aligned blocks into an aligned buffer; 4 KiB suits 512-byte and 4 KiB sector disks.
DIRECT_ALIGN = 4096
# Threads reading rows at once: 8 rows-wide uncached reads of a 1 GB file on the benchmark disk came at ~13,000
# rows a second from one thread and ~48,000 from 8.
READ_THREADS = 8
# Up to this many rows are read by the calling thread.
INLINE_READS = 2
# macOS's Python has no fdatasync; fsync does its work there (and more: the file's times too).
_fdatasync = getattr(os, "fdatasync", os.fsync)
# fallocate(2) modes (linux/falloc.h): free a range's blocks, leaving the file's size as it is.
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


@functools.cache
def _fallocate() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = getattr(libc, "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fallocate


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a byte range of a file, keeping its size (it then reads as zeros). Skipped quietly where
    the system or file system cannot: the range was written with zeros already."""
    fallocate = _fallocate()
    if fallocate is not None:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as the engine stores them for cosine similarity (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class OriginalRows:
    """Unit-length vectors of a memory's points, one `dtype` row each, appended to one file and read by row.

    A row is written before its point goes into the engine, so a point a search can find always has its row.
    A re-added point gets a new row. The old row, and a deleted point's, is overwritten with zeros before the
    engine forgets the point (`erase`): forgetting must not leave the vector in vmem's own files. A zero row
    reads as missing, so a point whose row was erased and that a crash left in the engine keeps its codes score.
    """

    def __init__(self, path: Path, dim: int, dtype: str):
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # A row cut short (a write that died midway) was never referenced by a point: the next append overwrites it.
        self.rows = os.fstat(self._fd).st_size // self.row_bytes
        try:
            self._read_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        except OSError:  # a file system without direct I/O: buffered reads
            self._read_fd = os.open(path, os.O_RDONLY)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.rows_read = 0  # since opening, for benchmarks and metrics
        self.rows_missing = 0  # asked for but not in the file (damaged from outside) or erased

    def append(self, vectors: np.ndarray) -> range:
        """Write these vectors (unit-scaled) as new rows; returns their row numbers. Callers serialise appends."""
        data = memoryview(np.ascontiguousarray(unit_rows(vectors), dtype=self.dtype).tobytes())
        start = self.rows
        offset, done = start * self.row_bytes, 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], offset + done)
        # On disk before the points that refer to them reach the engine's log: after a machine crash no point
        # can refer to a row the file lost, which the next append would then hand to another point.
        _fdatasync(self._fd)
        self.rows = start + len(vectors)
        return range(start, self.rows)

    def erase(self, rows: Sequence[int]) -> None:
        """Overwrite these rows with zeros, in place, then give whole disk blocks of erased rows back to the
        file system. Zeros first: a block handed back unwritten would keep the vectors on the device."""
        ordered = sorted({r for r in rows if 0 <= r < self.rows})
        runs: list[tuple[int, int]] = []  # [first byte, end byte) of consecutive rows (a label added together)
        for row in ordered:
            if runs and runs[-1][1] == row * self.row_bytes:
                runs[-1] = (runs[-1][0], (row + 1) * self.row_bytes)
            else:
                runs.append((row * self.row_bytes, (row + 1) * self.row_bytes))
        if not runs:
            return
        zeros = memoryview(bytes(1 << 20))
        for start, end in runs:
            while start < end:
                start += os.pwrite(self._fd, zeros[: min(end - start, len(zeros))], start)
        _fdatasync(self._fd)
        for start, end in runs:
            first, last = -(-start // DIRECT_ALIGN) * DIRECT_ALIGN, end // DIRECT_ALIGN * DIRECT_ALIGN
            if last > first:
                _punch_hole(self._fd, first, last - first)

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """The rows asked for, as float32, in that order; NaN for a row the file does not have or erased.

        Read around the page cache (O_DIRECT, where the file system has it): in a server whose RAM holds
        little more than the index, every page a buffered read cached made the kernel reclaim pages of the
        engine's graph and payload to make room (1.28M points inside 0.5x the raw vectors: 14-23 disk reads a
        query for those pages instead of 1.7, whether or not the rows' pages were dropped after reading).
        More than a couple of rows are read by several threads at once, as the disk serves them in parallel.
        """
        spans = []  # (aligned offset, aligned length, where the row starts in that span)
        for row in rows:
            offset = row * self.row_bytes
            first = offset // DIRECT_ALIGN * DIRECT_ALIGN
            spans.append((first, -(-(offset + self.row_bytes) // DIRECT_ALIGN) * DIRECT_ALIGN - first,
                          offset - first))
        starts = np.cumsum([0] + [length for _, length, _ in spans]).tolist()
        buffer = mmap.mmap(-1, max(starts[-1], 1))  # page-aligned, as O_DIRECT needs
        view = memoryview(buffer)
        missing: list[int] = []

        def read_some(indices: Sequence[int]) -> None:
            for i in indices:
                first, length, _ = spans[i]
                got = os.preadv(self._read_fd, [view[starts[i] : starts[i] + length]], first)
                if got < spans[i][2] + self.row_bytes:
                    missing.append(i)

        try:
            if len(rows) <= INLINE_READS:
                read_some(range(len(rows)))
            else:
                parts = [range(t, len(rows), READ_THREADS) for t in range(min(READ_THREADS, len(rows)))]
                for done in [self._thread_pool().submit(read_some, part) for part in parts]:
                    done.result()
            raw = np.frombuffer(view, np.uint8)
            at = np.asarray(starts[:-1], np.int64) + np.asarray([a for _, _, a in spans], np.int64)
            out = raw[at[:, None] + np.arange(self.row_bytes)]  # a copy: the buffer is unmapped below
            del raw
        finally:
            view.release()
            buffer.close()
        self.rows_read += len(rows)
        vectors = out.view(self.dtype).astype(np.float32)
        # Erased rows are zeros (a stored row has unit length); so is a row read short past the end of the file.
        missing = sorted(set(missing) | set(np.flatnonzero(~out.any(axis=1)).tolist()))
        if missing:
            self.rows_missing += len(missing)
            vectors[missing] = np.nan
        return vectors

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="vmem-rows")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._fd >= 0:
            os.close(self._read_fd)
            os.close(self._fd)  # nothing to sync: every append was
            self._fd = -1


def doubtful_block(scores: Sequence[float], k: int, margin: float) -> tuple[int, int]:
    """For one query's candidates in descending codes-score order: [start, end) of those that need their
    originals read. Those before `start` are in the k best whatever the codes' error (score above the k-th
    best + margin); those from `end` on are out (below the k-th best - margin)."""
    n = len(scores)
    if n <= k:
        return n, n
    kth = scores[k - 1]
    # A scan out from the k-th: the block is a handful of candidates, a search of the whole list costs more.
    start, end = k - 1, k
    while start > 0 and scores[start - 1] <= kth + margin:
        start -= 1
    while end < n and scores[end] >= kth - margin:
        end += 1
    return start, end


def rescore_doubtful(queries: np.ndarray, results: list[list[Any]], k: int, margin: float,
                     originals: OriginalRows, score_of: Callable[[Any], float],
                     row_of: Callable[[Any], int | None]) -> list[list[tuple[Any, float]]]:
    """The k best of each query's candidates (in descending codes-score order) with their similarities, the
    doubtful ones re-ranked by their original vectors.

    `score_of(hit)` is a candidate's codes score and `row_of(hit)` its row (None, or a row the file lost: it
    keeps its codes score); only the doubtful candidates are asked for their rows. The rows of the whole batch are read
    at once.
    """
    blocks, wanted, asking = [], [], []
    for qi, hits in enumerate(results):
        scores = [score_of(h) for h in hits]
        start, end = doubtful_block(scores, k, margin)
        rows = [row_of(h) for h in hits[start:end]]
        blocks.append((scores, start, end, rows))
        for row in rows:
            if row is not None:
                wanted.append(row)
                asking.append(qi)
    true: list[float] = []
    if wanted:
        q = unit_rows(np.asarray(queries, np.float32))
        true = np.einsum("ij,ij->i", originals.read(wanted), q[asking]).tolist()
    out, at = [], 0
    for hits, (scores, start, end, rows) in zip(results, blocks, strict=True):
        doubtful = []
        for h, s, row in zip(hits[start:end], scores[start:end], rows, strict=True):
            if row is not None:
                if true[at] == true[at]:  # not NaN: the row was there
                    s = true[at]
                at += 1
            doubtful.append((h, s))
        # The sure ones keep their places; the best of the doubtful fill the rest, in order of true similarity.
        doubtful.sort(key=lambda hs: -hs[1])
        best = list(zip(hits[:start], scores[:start], strict=True)) + doubtful[: max(0, k - start)]
        best.sort(key=lambda hs: -hs[1])
        out.append(best)
    return out
