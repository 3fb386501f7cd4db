"""vmem's tie-break against the paper's code's, on real images: how often plurality and rank voting answer otherwise.

    python docs/benchmarks/vote_ties.py [--featurizer efficientnet-lite0] [--queries 1000]

vmem gives a tie to the label whose best neighbour ranks first (`retrieval.voting`), the rule the docstring of the
paper's PluralityVoting states (google-deepmind/visual-memory, main_analysis_plots.ipynb); its loop instead keeps
the first label whose running total exceeds the top one so far, so the neighbours a, b, b, a answer b there and a
here. Memory: the real-data tests' (the first 30 Tiny-ImageNet train images of each class, 6,060 points); queries: a
seeded sample of val (seed 0); exact search, k = 1..100. Features from the shared feature cache (.cache/features, or
$VMEM_FEATURE_CACHE; computed on first use). Prints one JSON line per rule.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np

from eval.scoring import exact_search, predictions, table_from_hits
from retrieval import load_featurizer, scan_imagefolder
from retrieval.feature_cache import FeatureCache

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--queries", type=int, default=1000, help="val images sampled (seed 0, as the tests sample)")
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
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
train_feats, _, failures = cache.features_for([it.source for it in train])
query_feats, _, more = cache.features_for([it.source for it in val])
assert not failures and not more, (failures + more)[:3]
labels = [it.label for it in train]
classes = sorted(set(labels))
truth = np.array([classes.index(it.label) for it in val])
idx, sims = exact_search(query_feats, train_feats, 100)
table = table_from_hits(idx, sims, labels, classes)
for rule, weight in (("plurality", lambda i: 1.0), ("rank", lambda i: 1 / (2 + i))):
    ours = predictions(table, rule)
    theirs = np.empty_like(ours)
    for q in range(len(val)):
        totals: dict[int, float] = {}
        top, best = -np.inf, -1
        for i, c in enumerate(table.label_ids[q].tolist()):
            totals[c] = totals.get(c, 0.0) + weight(i)
            if totals[c] > top:
                top, best = totals[c], c
            theirs[q, i] = best
    differ = (ours != theirs).mean(axis=0)
    ours_acc, theirs_acc = (ours == truth[:, None]).mean(axis=0), (theirs == truth[:, None]).mean(axis=0)
    print(json.dumps({"rule": rule, "queries": len(val), "most_answers_differing": round(100 * float(differ.max()), 2),
                      "at_k": int(differ.argmax()) + 1,
                      "best_accuracy": {"vmem": round(100 * float(ours_acc.max()), 2),
                                        "papers_loop": round(100 * float(theirs_acc.max()), 2)},
                      "accuracy_at_k50": {"vmem": round(100 * float(ours_acc[49]), 2),
                                          "papers_loop": round(100 * float(theirs_acc[49]), 2)}}))
