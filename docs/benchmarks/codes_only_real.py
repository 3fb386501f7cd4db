"""Answering from the codes alone on real image features: recall and accuracy against rescoring.

    python docs/benchmarks/codes_only_real.py [--featurizer efficientnet-lite0]

Memory: Tiny-ImageNet train (20,200 real ImageNet images); queries: all 10,100 val images; features from the
shared feature cache (.cache/features, or $VMEM_FEATURE_CACHE; computed on first use). For int8 and
turboquant8 codes, with and without rescoring by the original vectors, on the same features: recall@50
against exact search and the top-1 accuracy of rank voting at k = 50 (the default rule), beside exact
search's. The synthetic benchmark (quantizers.py) has score gaps unlike real features'; this is the check
that matters for classification. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.exact import exact_search
from retrieval import IndexSettings, load_featurizer, open_store, scan_imagefolder
from retrieval.feature_cache import FeatureCache
from vmem import VisualMemory, VoteSettings
from vmem.cli.bench_search import machine_info

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
args = parser.parse_args()
k = 50
featurizer = load_featurizer(args.featurizer)
cache = FeatureCache(Path(os.environ.get("VMEM_FEATURE_CACHE", ".cache/features")), featurizer)


def features(split: str):
    items = scan_imagefolder(args.data / split)
    feats, ok, failures = cache.features_for([it.source for it in items])
    assert not failures, failures[:3]
    return [items[i] for i in ok], feats


train, train_vecs = features("train")
val, val_vecs = features("val")
truth = exact_search(val_vecs, train_vecs, k)[0]
source_row = {it.source: i for i, it in enumerate(train)}
settings = VoteSettings(rule="rank", k=k)


def accuracy(results) -> float:
    return round(float(np.mean([r.label == it.label for r, it in zip(results, val, strict=True)])), 4)


res: dict = {"machine": machine_info(), "featurizer": featurizer.name, "dim": int(train_vecs.shape[1]),
             "memory": len(train), "queries": len(val), "k": k, "runs": []}
for quantization in ("int8", "turboquant8"):
    with tempfile.TemporaryDirectory(prefix="vmem-codes-real-") as tmp:
        store = open_store(Path(tmp) / "memory", featurizer.spec, index=IndexSettings(quantization=quantization))
        for s in range(0, len(train), 2048):
            chunk = train[s : s + 2048]
            store.add(train_vecs[s : s + 2048], [it.label for it in chunk], [it.source for it in chunk])
        store.optimize()
        memory = VisualMemory(store, featurizer)
        if quantization == "int8":  # exact search through the same store: the reference accuracy
            exact = memory.classify_vectors(val_vecs, settings, exact=True)
            res["exact_accuracy"] = accuracy(exact)
        for rescore in (True, False):
            store.meta.index = store.meta.index.model_copy(update={"rescore": rescore})
            t = time.perf_counter()
            results = memory.classify_vectors(val_vecs, settings)
            seconds = time.perf_counter() - t
            found = [[source_row[n.source] for n in r.neighbors] for r in results]
            recall = float(np.mean([len(set(f) & set(t_.tolist())) / k for f, t_ in zip(found, truth, strict=True)]))
            run = {"quantization": quantization, "rescore": rescore, "recall_at_50": round(recall, 4),
                   "accuracy": accuracy(results),
                   "classify_per_s": round(len(val) / seconds, 1)}
            res["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
        store.close()
print(json.dumps(res))
