"""Same run: the embedded store's graph with payload-aware links (before) against payload_m=0 (now).

    python docs/benchmarks/payload_links.py [N]

Builds two int8 memories on the same synthetic vectors, the first with the engine's default payload_m
(extra links per indexed payload value), then sweeps the search ef on both. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import qdrant_edge as qe

from eval.scoring import exact_search
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem.cli.bench_search import add_synthetic, recall_at, synthetic_features, synthetic_indices

n_queries, k = 500, 50


def main(n: int) -> None:
    allv, labels, _ = synthetic_features(n + n_queries, 384, max(2, n // 1000), 0)
    vecs, queries = allv[:n], allv[n:]
    truth = exact_search(queries, vecs, k)[0]
    spec = FeaturizerSpec(name="synthetic", dim=384, preprocessing=Preprocessing(resize=1, crop=1))
    engine_config = qe.HnswIndexConfig
    stores = {}
    for name, payload_m in (("payload links (before)", None), ("payload_m=0 (now)", 0)):
        # The store passes payload_m=0; swap in the engine default for the "before" memory only.
        def with_payload_m(*args, _payload_m=payload_m, **kw):
            return engine_config(*args, **{**kw, "payload_m": _payload_m})
        qe.HnswIndexConfig = with_payload_m
        t = time.perf_counter()
        store = open_store(tempfile.mkdtemp() + "/memory", spec, index=IndexSettings(quantization="int8"))
        add_synthetic(store, vecs, labels)
        store.optimize()
        print(f"{name}: build {time.perf_counter() - t:.1f} s", flush=True)
        stores[name] = store
    qe.HnswIndexConfig = engine_config

    rows: dict = {}
    for _ in range(3):  # alternate the two memories, medians of 3
        for name, store in stores.items():
            for ef in (100, 128, 192, 256):
                store.meta.index = IndexSettings(quantization="int8", hnsw_ef=ef)
                t = time.perf_counter()
                found = [synthetic_indices(store.query(q, k)) for q in queries]
                t_single = time.perf_counter() - t
                t = time.perf_counter()
                store.query_batch(queries, k)
                t_batch = time.perf_counter() - t
                row = rows.setdefault((name, ef), {"single": [], "batch": []})
                row["single"].append(n_queries / t_single)
                row["batch"].append(n_queries / t_batch)
                row["recall"] = recall_at(found, truth, k)
    for (name, ef), row in rows.items():
        print(f"{name:24s} ef {ef:3d}  single {statistics.median(row['single']):6.0f} QPS  "
              f"batched {statistics.median(row['batch']):6.0f} QPS  recall@50 {row['recall']:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=200_000, metavar="N",
                        help="synthetic 384-d points in each memory (default 200000)")
    main(parser.parse_args().n)
