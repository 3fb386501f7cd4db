"""A kept 1.28M benchmark memory served inside hard RAM limits, each limit several times, interleaved.

    python docs/benchmarks/serve_limits.py KEPT_MEMORY [--limits 0.5,4] [--repeats 3] [--warmups prefetch]
        [--codes-only-too]

KEPT_MEMORY is a memory `vmem bench search --n 1280000 --keep` left behind (its path is in the log; seed 0).
One limited run is a fresh process in a memory cgroup (needs root), as in `vmem bench search --ram-limit`;
runs of one limit vary by tens of percent on this machine, so this repeats each limit, alternating them,
and reports every run and the medians. Limits are multiples of the raw float32 vector bytes. --warmups
prefetch,whole-files also alternates how the memory is warmed before the queries: `store.prefetch()`, or its
files read whole as prefetch did up to vmem 7dac189. --codes-only-too (a memory built with --rescore-doubtful)
also alternates re-ranking the doubtful candidates with answering from the codes alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from eval.exact import exact_search
from retrieval import open_store
from vmem.cli.bench_ram_limit import fresh_queries_needed, serve_within_limit
from vmem.cli.bench_search import fresh_queries, machine_info, synthetic_features

parser = argparse.ArgumentParser()
parser.add_argument("memory", type=Path)
parser.add_argument("--limits", default="0.5,4")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--warmups", default="prefetch")
parser.add_argument("--codes-only-too", action="store_true",
                    help="a memory that re-ranks doubtful candidates: also serve it from its codes alone, alternating")
parser.add_argument("--n", type=int, default=1_280_000)
parser.add_argument("--queries", type=int, default=1000)
args = parser.parse_args()
k, limits, warmups = 50, [float(x) for x in args.limits.split(",")], args.warmups.split(",")
doubtful = [True, False] if args.codes_only_too else [None]
with open_store(args.memory) as store:
    index, dim = store.meta.index, store.dim
# The same vectors and queries as the benchmark that built the memory (seed 0).
allv, _, centres = synthetic_features(args.n + args.queries, dim, max(2, args.n // 1000), 0)
vecs, queries = allv[: args.n], allv[args.n :]
truth = exact_search(queries, vecs, k)[0]
fresh = fresh_queries(centres, fresh_queries_needed(args.queries), 0)
res: dict = {"machine": machine_info(), "memory": str(args.memory), "index": index.model_dump(), "n": args.n,
             "raw_vector_mb": round(vecs.nbytes / 2**20, 1), "runs": [], "medians": []}
for r in range(args.repeats):
    for x in limits:
        for warmup in warmups:
            for doubt in doubtful:
                search = {} if doubt is None else {"rescore_doubtful": doubt}
                run = {"ram_limit_x": x, "warmup": warmup, "rescore_doubtful": doubt, "repeat": r,
                       **serve_within_limit(args.memory, queries, truth, fresh, k, int(x * vecs.nbytes),
                                            warmup=warmup, search=search)}
                res["runs"].append(run)
                print(json.dumps(run), file=sys.stderr)
for x in limits:
    for warmup in warmups:
        for doubt in doubtful:
            runs = [run for run in res["runs"] if (run["ram_limit_x"], run["warmup"], run["rescore_doubtful"])
                    == (x, warmup, doubt) and "qps_batch" in run]
            keys = ("qps_batch", "qps_single", "recall_at_50", "major_faults_per_query", "peak_mb") if runs else ()
            if runs and "rows_read_per_query" in runs[0]:
                keys = (*keys, "rows_read_per_query")
            res["medians"].append({"ram_limit_x": x, "warmup": warmup, "rescore_doubtful": doubt, "runs": len(runs),
                                   **{key: statistics.median(run[key] for run in runs) for key in keys}})
print(json.dumps(res))
