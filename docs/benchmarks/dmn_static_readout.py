"""DMN's static readout as vmem computes it (per class its `static_cap` nearest among `static_k` neighbours)
against the readout over every entry of each class, as BACKGROUND.md writes it.

    python docs/benchmarks/dmn_static_readout.py [--featurizer efficientnet-lite0] [--queries 2000]

Memory: Tiny-ImageNet train (20,200 real ImageNet images); queries: a seeded sample of val; features from the
shared feature cache (.cache/features, or $VMEM_FEATURE_CACHE; computed on first use). Neighbours by exact
search, so only the readout differs between the rows. Prints, per (static_k, static_cap), top-1 accuracy of
P_static alone and the share of queries whose answer agrees with the full readout's, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from eval.exact import exact_search
from retrieval import load_featurizer, scan_imagefolder
from retrieval.dmn import DEFAULT_BETA, DEFAULT_SCALE, readout, static_entries
from retrieval.feature_cache import FeatureCache
from vmem.cli.bench_search import machine_info

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--queries", type=int, default=2000, help="val images sampled (seed 0); 10,100 is all")
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
args = parser.parse_args()
featurizer = load_featurizer(args.featurizer)
cache = FeatureCache(Path(os.environ.get("VMEM_FEATURE_CACHE", ".cache/features")), featurizer)


def features(split: str) -> tuple[list[str], np.ndarray]:
    items = scan_imagefolder(args.data / split)
    feats, ok, failures = cache.features_for([it.source for it in items])
    assert not failures, failures[:3]
    return [items[i].label for i in ok], feats


train_labels, keys = features("train")
val_labels, queries = features("val")
sample = np.sort(np.random.default_rng(0).choice(len(queries), min(args.queries, len(queries)), replace=False))
val_labels, queries = [val_labels[i] for i in sample], queries[sample]
classes = sorted(set(train_labels))
class_of = {c: i for i, c in enumerate(classes)}
key_class = np.array([class_of[lab] for lab in train_labels])
truth = np.array([class_of.get(lab, -1) for lab in val_labels])


def full_readout() -> np.ndarray:
    """Every entry of every class, batched: w = exp(-beta (1 - cos)), m_c = normalise(sum w k), softmax logits."""
    answers = []
    members = [np.flatnonzero(key_class == c) for c in range(len(classes))]
    for s in range(0, len(queries), 512):
        q = queries[s : s + 512].astype(np.float64)
        w = np.exp(-DEFAULT_BETA * (1.0 - q @ keys.T.astype(np.float64)))
        logits = np.empty((len(q), len(classes)))
        for c, idx in enumerate(members):
            proto = w[:, idx] @ keys[idx].astype(np.float64)  # [b, d]
            logits[:, c] = DEFAULT_SCALE * (proto * q).sum(1) / np.linalg.norm(proto, axis=1)
        answers.append(logits.argmax(1))
    return np.concatenate(answers)


full = full_readout()
widest = 1000
idx, _ = exact_search(queries, keys, widest)
res: dict = {"machine": machine_info(), "featurizer": featurizer.name, "memory": len(keys), "queries": len(queries),
             "full_readout_accuracy": round(float(np.mean(full == truth)), 4), "rows": []}
print(f"full readout (every entry of each class): accuracy {res['full_readout_accuracy']:.4f}", file=sys.stderr)
for static_k, cap in ((256, 16), (256, 256), (1000, 16), (1000, 1000)):
    answers = np.empty(len(queries), dtype=np.int64)
    for qi in range(len(queries)):
        near = idx[qi, :static_k]
        chosen = static_entries(keys[near], key_class[near], cap)
        answers[qi] = readout(queries[qi], chosen.keys, chosen.class_ids, len(classes)).argmax()
    row = {"static_k": static_k, "static_cap": cap, "accuracy": round(float(np.mean(answers == truth)), 4),
           "agrees_with_full": round(float(np.mean(answers == full)), 4)}
    res["rows"].append(row)
    print(json.dumps(row), file=sys.stderr)
print(json.dumps(res))
