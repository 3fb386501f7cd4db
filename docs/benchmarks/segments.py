"""Same run: one unbounded segment (before) against segments of `segment_points` (now), originals on disk.

    python docs/benchmarks/segments.py [N] [SEGMENT_POINTS]      # defaults: 1280000 640000

Builds two int8 memories on the same synthetic vectors, one growing a single segment (segment_points=None,
as memories made before the setting) and one cut into segments, then times batched (100 per call) and single
queries at several search ef, alternating the two over 4 rounds; prints a markdown table of medians.
At 1.28M each build takes 8-9 minutes on 2 cores. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from eval.scoring import exact_search
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem.cli.bench_search import add_synthetic, recall_at, sgemm_gflops, synthetic_features, synthetic_indices

n_queries, k = 1000, 50


def main(n: int, segment_points: int) -> None:
    allv, labels, _ = synthetic_features(n + n_queries, 384, max(2, n // 1000), 0)
    vecs, queries = allv[:n], allv[n:]
    truth = exact_search(queries, vecs, k)[0]
    spec = FeaturizerSpec(name="synthetic", dim=384, preprocessing=Preprocessing(resize=1, crop=1))
    layouts = {"one segment (before)": (None, (256, 384)), "segments (now)": (segment_points, (100, 128, 192))}

    with tempfile.TemporaryDirectory(prefix="vmem-segments-") as tmp:
        stores = {}
        for name, (points, _) in layouts.items():
            t0 = time.perf_counter()
            store = open_store(Path(tmp) / str(points), spec, index=IndexSettings(segment_points=points,
                                                                                   vectors_on_disk=True))
            add_synthetic(store, vecs, labels)
            store.optimize()
            print(f"{name}: built in {time.perf_counter() - t0:.0f} s, {store.shard.info().segments_count} segments",
                  file=sys.stderr, flush=True)
            stores[name] = store

        rows: dict[tuple[str, int], dict] = {}
        print(f"sgemm {sgemm_gflops():.0f} GFLOP/s", file=sys.stderr)
        for _ in range(4):
            for name, (_, efs) in layouts.items():
                store = stores[name]
                for ef in efs:
                    store.meta.index = store.meta.index.model_copy(update={"hnsw_ef": ef})
                    row = rows.setdefault((name, ef), {"batch": [], "single": []})
                    t = time.perf_counter()
                    found = [h for s in range(0, n_queries, 100) for h in store.query_batch(queries[s : s + 100], k)]
                    row["batch"].append(n_queries / (time.perf_counter() - t))
                    t = time.perf_counter()
                    for q in queries[:500]:
                        store.query(q, k)
                    row["single"].append(500 / (time.perf_counter() - t))
                    row["recall"] = recall_at([synthetic_indices(hits) for hits in found], truth, k)
        print("| layout | search ef | single QPS | batched QPS | recall@50 |\n|---|---|---|---|---|")
        for (name, ef), row in rows.items():
            print(f"| {name} | {ef} | {statistics.median(row['single']):,.0f} | {statistics.median(row['batch']):,.0f} "
                  f"| {row['recall']:.4f} |")
        for store in stores.values():
            store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=1_280_000, metavar="N",
                        help="synthetic 384-d points in each memory (default 1280000)")
    parser.add_argument("segment_points", type=int, nargs="?", default=640_000, metavar="SEGMENT_POINTS",
                        help="points a segment of the segmented memory holds (default 640000)")
    args = parser.parse_args()
    main(args.n, args.segment_points)
