"""Would another of the engine's quantizers let a query skip reading the originals?

    python docs/benchmarks/quantizers.py [N]      # default 200000

Inside 0.5x the raw vector bytes of RAM, rescoring reads most candidates' originals from disk (~175 QPS at
1.28M). Without rescoring nothing reads them, but the engine's int8 scores alone give recall@50 ~0.95. This
asks whether a more precise code would reach 0.99 on its own: it builds memories on the same synthetic
vectors with the engine's int8 at several clipping quantiles (vmem uses 0.99) and with qdrant-edge's
TurboQuant (8 and 4 bits), and for each measures recall@50 and batched QPS with and without rescoring, how
far the codes' scores are from the true similarities, and the bytes of the codes on disk. vmem offers int8
and turboquant8; for the other variants the script swaps the engine's quantization config underneath the
store (nothing else about the memory changes). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from eval.exact import exact_search
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem.cli.bench_search import add_synthetic, machine_info, recall_at, synthetic_features, synthetic_indices, timed

dim, n_queries, k, repeats = 384, 1000, 50, 3
int8_config = qe.ScalarQuantizationConfig
# name -> (vmem's quantization setting, None or the engine config that replaces the store's int8 one)
QUANTIZERS = {
    "int8 (vmem, clipped at quantile 0.99)": ("int8", None),
    "int8 clipped at quantile 0.95": ("int8", lambda **kw: int8_config(**{**kw, "quantile": 0.95})),
    "int8 not clipped": ("int8", lambda **kw: int8_config(**{**kw, "quantile": None})),
    "turboquant 8 bits (vmem turboquant8)": ("turboquant8", None),
    "turboquant 4 bits": ("int8", lambda **kw: qe.TurboQuantQuantizationConfig(bits=qe.TurboQuantBitSize.Bits4,
                                                                               memory=kw["memory"])),
}


def measure(store, queries, truth, row: dict, rescore: bool, ef: int) -> list:
    store.meta.index = store.meta.index.model_copy(update={"rescore": rescore, "hnsw_ef": ef})
    hits = store.query_batch(queries, k)  # also the warm-up
    key = f"{'rescored' if rescore else 'codes_only'}_ef{ef}"
    row[f"{key}_recall_at_50"] = round(recall_at([synthetic_indices(h) for h in hits], truth, k), 4)
    row[f"{key}_qps_batch"] = round(n_queries / timed(lambda: store.query_batch(queries, k), repeats))
    return hits


def main(n: int) -> None:
    allv, labels, _ = synthetic_features(n + n_queries, dim, max(2, n // 1000), 0)
    vecs, queries = allv[:n], allv[n:]
    truth = exact_search(queries, vecs, k)[0]
    spec = FeaturizerSpec(name="synthetic", dim=dim, preprocessing=Preprocessing(resize=1, crop=1))
    res: dict = {"machine": machine_info(), "n": n, "dim": dim, "k": k, "queries": n_queries, "repeats": repeats,
                 "raw_float32_mb": round(vecs.nbytes / 2**20, 1), "quantizers": []}
    for name, (quantization, engine_config) in QUANTIZERS.items():
        qe.ScalarQuantizationConfig = engine_config or int8_config
        try:
            with tempfile.TemporaryDirectory(prefix="vmem-quantizers-") as tmp:
                store = open_store(Path(tmp) / "memory", spec, index=IndexSettings(quantization=quantization))
                t = time.perf_counter()
                add_synthetic(store, vecs, labels)
                store.optimize()
                row = {"quantizer": name, "build_s": round(time.perf_counter() - t, 1),
                       # The indexed segments' codes (not the empty appendable segment's preallocated file).
                       "codes_mb": round(sum(f.stat().st_size for f in Path(tmp).rglob("quantized.data")) / 2**20, 1)}
                for rescore in (True, False):
                    for ef in (128, 256):
                        hits = measure(store, queries, truth, row, rescore, ef)
                        if not rescore and ef == 128:  # the codes' scores against the true similarities
                            errors = np.concatenate([[h.similarity for h in hs]
                                                     - queries[i] @ vecs[synthetic_indices(hs)].T
                                                     for i, hs in enumerate(hits)])
                            row["codes_score_error_std"] = round(float(errors.std()), 5)
                            row["codes_score_error_max_abs"] = round(float(np.abs(errors).max()), 4)
                measure(store, queries, truth, row, False, 512)
                store.close()
        finally:
            qe.ScalarQuantizationConfig = int8_config
        res["quantizers"].append(row)
        print(f"{name}: codes {row['codes_mb']} MB, score error sd {row['codes_score_error_std']}; recall@50 rescored "
              f"{row['rescored_ef128_recall_at_50']}, codes only {row['codes_only_ef128_recall_at_50']} / "
              f"{row['codes_only_ef256_recall_at_50']} / {row['codes_only_ef512_recall_at_50']} (ef 128/256/512)",
              file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=200_000, metavar="N",
                        help="synthetic 384-d points in each memory (default 200000)")
    main(parser.parse_args().n)
