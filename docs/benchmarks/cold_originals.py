"""Batched queries with the original vectors out of memory: what an int8 memory costs when only its index is resident.

With int8 quantization the original float32 vectors are read only to rescore each query's candidates. This
script opens a built memory, answers queries until warm, then evicts the originals' pages from the process
and the page cache (madvise MADV_PAGEOUT, posix_fadvise DONTNEED) and times the next queries, which read
their candidates' originals back from disk.

    python docs/benchmarks/cold_originals.py MEMORY_DIR [--queries 200]

MEMORY_DIR is an embedded memory of 384-d vectors (e.g. one kept by `vmem bench search --keep`); the
queries are random unit vectors, so only speed and resident memory are reported, not recall.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import time

import numpy as np

from retrieval import open_store
from retrieval.store import ORIGINAL_VECTORS_FILE as ORIGINALS
from vmem.cli.bench_search import mapped_rss_mb, rss_mb

MADV_PAGEOUT = 21


def evict_originals() -> float:
    """Drop the original vectors' pages from this process and from the page cache; returns MB mapped."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    mapped = 0
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            if line.rstrip().endswith(ORIGINALS):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                libc.madvise(start, end - start, MADV_PAGEOUT)
                fd = os.open(line.split()[-1], os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
                mapped += end - start
    return mapped / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("memory")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    store = open_store(args.memory)
    q = np.random.default_rng(1).standard_normal((args.queries, store.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for _ in range(3):
        store.query_batch(q, 50)
    t = time.perf_counter()
    store.query_batch(q, 50)
    res = {"queries": args.queries, "warm_qps_batch": round(args.queries / (time.perf_counter() - t), 1),
           "warm_originals_rss_mb": round(mapped_rss_mb(ORIGINALS), 1)}
    res["originals_mapped_mb"] = round(evict_originals(), 1)
    res["evicted_originals_rss_mb"] = round(mapped_rss_mb(ORIGINALS), 1)
    t = time.perf_counter()
    store.query_batch(q, 50)
    res["cold_qps_batch"] = round(args.queries / (time.perf_counter() - t), 1)
    res["after_cold_originals_rss_mb"] = round(mapped_rss_mb(ORIGINALS), 1)
    res["rss_anon_mb"] = round(rss_mb("RssAnon"), 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
