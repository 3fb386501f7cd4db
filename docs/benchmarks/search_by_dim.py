"""Same run: what the feature dimension costs the memory, at vmem's defaults (int8, float16 originals on disk).

    python docs/benchmarks/search_by_dim.py [N] [DIMS]      # defaults: 200000 384,768,1280

384 is DINOv2-S, 768 DINOv2-B and CLIP ViT-B, 1280 EfficientNet-Lite. Builds one memory per dimension on
synthetic class-clustered vectors (as `vmem bench search`), then times batched (100 per call) and single
queries and the exact search, alternating the memories over 3 rounds; prints one JSON object (medians)
on stdout and a markdown table on stderr. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from eval.exact import exact_search, product_for
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem.cli.bench_search import (
    add_synthetic,
    dir_mb,
    machine_info,
    recall_at,
    sgemm_gflops,
    synthetic_features,
    synthetic_indices,
    timed,
)

n_queries, n_single, k, batch, rounds = 1000, 500, 50, 100, 3


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def batched(store, queries):
    """`query_batch` in calls of `batch` queries, as a server batching requests would make them."""
    return [hits for s in range(0, len(queries), batch) for hits in store.query_batch(queries[s : s + batch], k)]


def one_by_one(store, queries):
    return [store.query(q, k) for q in queries]


def main(n: int, dims: list[int]) -> None:
    say(f"machine: {json.dumps(machine_info())}")
    data, stores, rows = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="vmem-dims-") as tmp:
        for dim in dims:
            allv, labels, _ = synthetic_features(n + n_queries, dim, max(2, n // 1000), 0)
            vecs, queries = allv[:n], allv[n:]
            truth = exact_search(queries, vecs, k)[0]
            spec = FeaturizerSpec(name="synthetic", dim=dim, preprocessing=Preprocessing(resize=1, crop=1))
            t0 = time.perf_counter()
            store = open_store(Path(tmp) / str(dim), spec, index=IndexSettings())
            add_synthetic(store, vecs, labels)
            store.optimize()
            build_s = time.perf_counter() - t0
            store.flush()
            found = [synthetic_indices(hits) for hits in batched(store, queries)]
            single = [synthetic_indices(hits) for hits in one_by_one(store, queries[:n_single])]
            rows[dim] = {"dim": dim, "build_s": round(build_s, 1), "disk_mb": round(dir_mb(Path(tmp) / str(dim)), 1),
                         "raw_vector_mb": round(vecs.nbytes / 2**20, 1),
                         "recall_at_50": round(recall_at(found, truth, k), 4),
                         "recall_at_50_single": round(recall_at(single, truth[:n_single], k), 4),
                         "batch_s": [], "single_s": [], "exact_s": []}
            data[dim], stores[dim] = (vecs, queries), store
            say(f"dim {dim}: built in {build_s:.0f} s, recall@50 {rows[dim]['recall_at_50']}")

        gflops = sgemm_gflops()
        for _ in range(rounds):
            for dim in dims:
                (vecs, queries), store, row = data[dim], stores[dim], rows[dim]
                row["batch_s"].append(timed(partial(batched, store, queries), 1))
                row["single_s"].append(timed(partial(one_by_one, store, queries[:n_single]), 1))
                row["exact_s"].append(timed(partial(exact_search, queries, vecs, k), 1))
        for store in stores.values():
            store.close()

    out = []
    for dim in dims:
        row = rows[dim]
        row["qps_batch"] = round(n_queries / statistics.median(row.pop("batch_s")), 1)
        row["qps_single"] = round(n_single / statistics.median(row.pop("single_s")), 1)
        row["exact_qps_batch"] = round(n_queries / statistics.median(row.pop("exact_s")), 1)
        out.append(row)
    say("\n| dim | build | disk | batched QPS | single QPS | recall@50 | exact search QPS |")
    say("|---|---|---|---|---|---|---|")
    for r in out:
        say(f"| {r['dim']} | {r['build_s']:.0f} s | {r['disk_mb']:,.0f} MB | {r['qps_batch']:,.0f} | "
            f"{r['qps_single']:,.0f} | {r['recall_at_50']} | {r['exact_qps_batch']:,.0f} |")
    print(json.dumps({"machine": machine_info(), "n": n, "queries": n_queries, "k": k, "rounds": rounds,
                      "sgemm_gflops": round(gflops, 1), "exact_product": product_for(n), "results": out}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=200_000, metavar="N",
                        help="synthetic points in each memory (default 200000)")
    parser.add_argument("dims", nargs="?", default="384,768,1280", metavar="DIMS",
                        help="feature dimensions, comma-separated, one memory each (default 384,768,1280)")
    args = parser.parse_args()
    main(args.n, [int(d) for d in args.dims.split(",")])
