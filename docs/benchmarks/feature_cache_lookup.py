"""Finding cached features for the real-data tests' files: `FeatureCache.features_for` whole, and its reading of
the rows from the map, row by row (as before) against one gather (as now), on the same map in one run.

    python docs/benchmarks/feature_cache_lookup.py [--featurizer efficientnet-lite0] [--repeats 5]

Files: the first 30 Tiny-ImageNet train images of each class and a 600-image val sample (tests/realdata.py),
6,660; their features must be in the cache (.cache/features, or $VMEM_FEATURE_CACHE) already. Prints one JSON
object: medians in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from retrieval import load_featurizer, scan_imagefolder
from retrieval.feature_cache import FeatureCache
from vmem.cli.bench_search import machine_info

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
args = parser.parse_args()
featurizer = load_featurizer(args.featurizer, device="cpu")
root = Path(os.environ.get("VMEM_FEATURE_CACHE", ".cache/features"))
taken: Counter[str] = Counter()
paths = []
for it in scan_imagefolder(args.data / "train"):
    taken[it.label] += 1
    if taken[it.label] <= 30:
        paths.append(it.source)
paths += sorted(it.source for it in random.Random(0).sample(scan_imagefolder(args.data / "val"), 600))

cache = FeatureCache(root, featurizer)
first, ok, failures = cache.features_for(paths)  # hashes the files not seen before: a fresh copy of the data
assert not failures and len(ok) == len(paths), failures[:3]
hashes = cache._content_hashes(paths, {})
rows = [cache.index[h] for h in hashes]
timed: dict[str, list[float]] = {"features_for": [], "rows one by one": [], "rows in one gather": []}
for _ in range(args.repeats):
    start = time.perf_counter()
    feats, _, _ = FeatureCache(root, featurizer).features_for(paths)  # a new cache object, as each test run opens
    timed["features_for"].append(time.perf_counter() - start)
    start = time.perf_counter()
    by_row = np.stack([cache.features[r] for r in rows])
    timed["rows one by one"].append(time.perf_counter() - start)
    start = time.perf_counter()
    gathered = np.asarray(cache.features[rows])
    timed["rows in one gather"].append(time.perf_counter() - start)
    assert np.array_equal(by_row, gathered) and np.array_equal(feats, gathered)
print(json.dumps({"machine": machine_info(), "files": len(paths), "repeats": args.repeats,
                  "median_s": {way: round(statistics.median(t), 4) for way, t in timed.items()}}))
