"""How far the int8 scores are from the true similarities, and how many originals a query would need to read.

    python docs/benchmarks/int8_error.py [N] [QUANTIZATION]     # default 200000 int8; or turboquant8

Inside 0.5x the raw vector bytes of RAM the original vectors mostly come from disk, ~100 reads a query as
the engine rescores its whole search ef. This asks whether rescoring only the doubtful candidates could
reach 1,000 QPS on this disk: it builds a default memory (int8, float16 originals) on synthetic vectors,
searches without rescoring, compares the int8 scores with float32 ones, and counts per query the candidates
whose int8 score lies within 2w of the 50th best (w a multiple of the error's standard deviation): only
those would need their originals read, the rest are in or out whatever the error. Prints one JSON object
(its int8_* keys hold the figures of the codes asked for: they were named when int8 was the only kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.exact import exact_search
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem.cli.bench_search import add_synthetic, machine_info, recall_at, synthetic_features, synthetic_indices

dim, n_queries, k, fetched = 384, 1000, 50, 128


def main(n: int, quantization: str) -> None:
    allv, labels, _ = synthetic_features(n + n_queries, dim, max(2, n // 1000), 0)
    vecs, queries = allv[:n], allv[n:]
    truth = exact_search(queries, vecs, k)[0]
    spec = FeaturizerSpec(name="synthetic", dim=dim, preprocessing=Preprocessing(resize=1, crop=1))
    res: dict = {"machine": machine_info(), "n": n, "dim": dim, "k": k, "quantization": quantization,
                 "fetched_without_rescoring": fetched}
    with tempfile.TemporaryDirectory(prefix="vmem-int8-") as tmp:
        store = open_store(Path(tmp) / "memory", spec, index=IndexSettings(quantization=quantization))
        add_synthetic(store, vecs, labels)
        store.optimize()
        t = time.perf_counter()
        rescored = [synthetic_indices(h) for h in store.query_batch(queries, k)]
        res["rescored_qps_batch"] = round(n_queries / (time.perf_counter() - t), 1)
        res["rescored_recall_at_50"] = round(recall_at(rescored, truth, k), 4)
        store.meta.index = store.meta.index.model_copy(update={"rescore": False})
        hits = store.query_batch(queries, fetched)
        store.close()

    found = [np.array(synthetic_indices(h)) for h in hits]
    approx = [np.array([h.similarity for h in hs]) for hs in hits]
    errors = np.concatenate([a - queries[i] @ vecs[ix].T for i, (a, ix) in enumerate(zip(approx, found, strict=True))])
    res["int8_recall_at_50"] = round(recall_at([ix[:k] for ix in found], truth, k), 4)
    res["int8_error"] = {"mean": float(errors.mean()), "std": float(errors.std()),
                         "p99_9_abs": float(np.quantile(np.abs(errors), 0.999)), "max_abs": float(np.abs(errors).max())}
    res["windows"] = []
    for sigmas in (1.0, 1.5, 2.0, 4.0):
        w = sigmas * errors.std()
        doubtful, final = [], []
        for i, (a, ix) in enumerate(zip(approx, found, strict=True)):
            a = a - errors.mean()
            kth = np.sort(a)[::-1][k - 1]
            sure = a > kth + 2 * w
            maybe = (a >= kth - 2 * w) & ~sure
            doubtful.append(int(maybe.sum()))
            # Read the doubtful ones' originals: the best of them fill the places the sure ones leave.
            picked = ix[maybe][np.argsort(-(queries[i] @ vecs[ix[maybe]].T))[: k - int(sure.sum())]]
            final.append(np.concatenate([ix[sure], picked]))
        res["windows"].append({"w_in_std": sigmas, "w": float(w), "reads_per_query_median": float(np.median(doubtful)),
                               "reads_per_query_p90": float(np.quantile(doubtful, 0.9)),
                               "recall_at_50": round(recall_at(final, truth, k), 4)})
        print(f"w = {sigmas} std: {np.median(doubtful):.0f} reads a query (median), recall@50 "
              f"{res['windows'][-1]['recall_at_50']}", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=200_000, metavar="N",
                        help="synthetic 384-d points in the memory (default 200000)")
    parser.add_argument("quantization", nargs="?", default="int8", metavar="QUANTIZATION",
                        help="the memory's codes: int8 (default) or turboquant8")
    args = parser.parse_args()
    main(args.n, args.quantization)
