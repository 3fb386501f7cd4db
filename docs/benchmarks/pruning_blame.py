"""Memory pruning with each blame count (`eval.pruning`, `vmem prune --blame`) on real images: what each counts, and
soft and hard pruning's best accuracy over k with it, against no pruning, on the same queries.

    python docs/benchmarks/pruning_blame.py [--featurizer efficientnet-lite0] [--queries 1000] [--json FILE]

Memory: the real-data tests' (tests/realdata.py): the first 30 Tiny-ImageNet train images of each class, 6,060
points; queries: a seeded sample of val (seed 0, as the tests sample). Features from the shared feature cache
(.cache/features, or $VMEM_FEATURE_CACHE; computed on first use). Each blame is counted from one exact self-search
(each point's own hit dropped) at k = 10 and k = 100: the paper's authors counted soft pruning's "wrong neighbours"
at 10 and hard pruning's at 100 (threshold 128). Prints one JSON line per variant, then all of them as one object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np

from eval.experiments import LabelledArrays, _score
from eval.pruning import DEFAULT_THRESHOLD, soft_factors, wrong_decision_counts
from eval.scoring import K_MAX, Scores, self_search
from retrieval import load_featurizer, scan_imagefolder
from retrieval.feature_cache import FeatureCache

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--queries", type=int, default=1000, help="val images sampled (seed 0, as the tests sample)")
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
parser.add_argument("--json", type=Path, help="also write the result here")
args = parser.parse_args()

featurizer = load_featurizer(args.featurizer, device="cpu")
cache = FeatureCache(Path(os.environ.get("VMEM_FEATURE_CACHE", ".cache/features")), featurizer)
taken: Counter[str] = Counter()
train = []
for it in scan_imagefolder(args.data / "train"):  # the first 30 of each class, in file-name order
    taken[it.label] += 1
    if taken[it.label] <= 30:
        train.append(it)
val = sorted(random.Random(0).sample(scan_imagefolder(args.data / "val"), args.queries), key=lambda it: it.source)
train_feats, ok, failures = cache.features_for([it.source for it in train])
assert not failures and len(ok) == len(train), failures[:3]
query_feats, ok, failures = cache.features_for([it.source for it in val])
assert not failures and len(ok) == len(val), failures[:3]
memory = LabelledArrays(train_feats, [it.label for it in train])
queries = LabelledArrays(query_feats, [it.label for it in val])
hits = self_search(memory.features, K_MAX)


def best(s: Scores, rule: str) -> dict[str, float | int]:
    return {"accuracy": round(100 * s.best[rule].best_accuracy, 2), "k": s.best[rule].best_k}


none = _score(memory, queries)
rows = [{"variant": "none", "points": len(memory), "rank": best(none, "rank"), "softmax": best(none, "softmax")}]
print(json.dumps(rows[0]), flush=True)
for blame in ("label", "all", "voters"):
    for k in (10, K_MAX):
        counts, _ = wrong_decision_counts(None, memory.labels, k, blame=blame, hits=(hits[0][:, :k], hits[1][:, :k]))
        soft = _score(memory, queries, reliability=soft_factors(counts))
        row = {"variant": f"blame {blame}, counted at k = {k}", "count_mean": round(float(counts.mean()), 2),
               "count_max": int(counts.max()), "never_blamed": int((counts == 0).sum()),
               "soft rank": best(soft, "rank+soft"), "soft softmax": best(soft, "softmax+soft")}
        keep = counts < DEFAULT_THRESHOLD
        hard = _score(memory.take(np.flatnonzero(keep)), queries)
        row |= {f"hard >= {DEFAULT_THRESHOLD}: excluded": int((~keep).sum()), "hard rank": best(hard, "rank"),
                "hard softmax": best(hard, "softmax")}
        rows.append(row)
        print(json.dumps(row), flush=True)
result = {"memory": f"first 30 train images of each class ({len(memory)})", "queries": len(queries),
          "featurizer": featurizer.name, "rows": rows}
print(json.dumps(result, indent=1))
if args.json:
    args.json.write_text(json.dumps(result, indent=1) + "\n")
