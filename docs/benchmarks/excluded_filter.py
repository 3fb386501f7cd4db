"""Batched queries with and without the "not excluded" filter, alternating on one open memory.

The embedded store adds the filter (payload key `excluded` is empty) to every search only while some point
is excluded by hard pruning. This script times the same queries both ways, in alternating rounds, to show
what the filter costs when it matches every point:

    python docs/benchmarks/excluded_filter.py MEMORY_DIR [--queries 1000] [--rounds 5] [--bench-n N]

MEMORY_DIR is an embedded memory (e.g. one kept by `vmem bench search --keep`). The queries are random unit
vectors, or with `--bench-n N` the class-clustered queries of `vmem bench search --n N` (seed 0), which
built the memory. Only speed is reported; both ways must return the same neighbours (checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from retrieval import open_store
from vmem.cli.bench_search import synthetic_features


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("memory")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bench-n", type=int, help="the memory was built by vmem bench search --n N: use its queries")
    args = ap.parse_args()
    store = open_store(args.memory)
    if store._count_excluded():
        raise SystemExit("this memory has excluded points: its searches must filter")
    if args.bench_n:
        n = args.bench_n
        q = synthetic_features(n + args.queries, store.dim, max(2, n // 1000), 0)[0][n:]
    else:
        q = np.random.default_rng(1).standard_normal((args.queries, store.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    seconds: dict[str, list[float]] = {"filtered": [], "unfiltered": []}
    answers: dict[str, list] = {}
    for _ in range(args.rounds + 1):  # the first round warms up
        for way in seconds:
            store._any_excluded = way == "filtered"
            t = time.perf_counter()
            answers[way] = store.query_batch(q, 50)
            seconds[way].append(time.perf_counter() - t)
    same = np.mean([[h.id for h in a] == [h.id for h in b]
                    for a, b in zip(answers["filtered"], answers["unfiltered"], strict=True)])
    res = {"points": store.count(), "queries": args.queries, "rounds": args.rounds,
           "query_kind": "bench search" if args.bench_n else "random unit",
           **{f"{way}_qps_batch": round(args.queries / statistics.median(s[1:]), 1) for way, s in seconds.items()},
           "same_neighbours": round(float(same), 4)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
