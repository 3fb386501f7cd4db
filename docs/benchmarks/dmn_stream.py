"""`classify_dmn` with a dynamic stream against without, and the stream's readout (`DynamicMemory.probabilities`)
before and after it reads only its used slots, alternated in one run; the answers of both are compared.

    python docs/benchmarks/dmn_stream.py [--featurizer efficientnet-lite0] [--queries 600] [--repeats 3]

Memory: the real-data tests' (tests/realdata.py): the first 30 Tiny-ImageNet train images of each class, 6,060
points; queries: a seeded sample of val, classified in one call, in order, exact search, each run with a new
stream. Features from the shared feature cache (.cache/features, or $VMEM_FEATURE_CACHE; computed on first use).
Then the readout alone, before and now, on a young stream (600 entries) and a full one (10,000: 200 classes x 50
slots), random unit 1280-d features. Prints one JSON line per run, then one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval import load_featurizer, open_store, scan_imagefolder
from retrieval.dmn import DynamicMemory, softmax
from retrieval.feature_cache import FeatureCache
from vmem import VisualMemory
from vmem.cli.bench_search import machine_info

parser = argparse.ArgumentParser()
parser.add_argument("--featurizer", default="efficientnet-lite0")
parser.add_argument("--queries", type=int, default=600, help="val images sampled (seed 0, as the tests sample)")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--data", type=Path, default=Path(os.environ.get("VMEM_TINY_IMAGENET",
                                                                     "../shared/data/tiny-imagenet-200")))
args = parser.parse_args()
os.environ["VMEM_HOME"] = tempfile.mkdtemp(prefix="dmn-stream-")  # the streams written here go with it


def every_slot_probabilities(self: DynamicMemory, query: np.ndarray, classes: Sequence[str],
                             beta: float = 5.5, scale: float = 100.0) -> np.ndarray:
    """`DynamicMemory.probabilities` before this change (main at 6541f13): every slot of every held class read."""
    q = np.asarray(query, dtype=np.float32)
    with self.lock:
        held = len(self.labels)
        logits = np.full(len(classes), -np.inf)
        if not held:
            return np.zeros(len(classes))
        feats = self._feats[:held]
        used = np.arange(self.slots)[None, :] < self._n[:held, None]
        sims = (feats.reshape(-1, self.dim) @ q).reshape(held, self.slots).astype(np.float64)
        w = np.where(used, np.exp(-beta * (1.0 - sims)), 0.0)
        norm2 = np.einsum("cs,cst,ct->c", w, self._gram[:held], w)
        dots = (w * sims).sum(axis=1)
        pos = [(j, self._index[c]) for j, c in enumerate(classes) if c in self._index]
    for j, i in pos:
        if norm2[i] > 0:
            logits[j] = scale * dots[i] / np.sqrt(norm2[i])
    return softmax(logits)


featurizer = load_featurizer(args.featurizer, device="cpu")
featurizer.warm_up()
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
queries, ok, failures = cache.features_for([it.source for it in val])
assert not failures and len(ok) == len(val), failures[:3]

store = open_store(Path(tempfile.mkdtemp(prefix="dmn-stream-memory-")) / "memory", featurizer.spec)
store.add(train_feats, [it.label for it in train], [it.source for it in train])
store.optimize()
memory = VisualMemory(store, featurizer, reranker=None)
memory.classify_dmn(queries[:5], exact=True)  # first search and retrieve paid outside the timings

now = DynamicMemory.probabilities
ways = {"no stream": (None, now), "stream, before": ("before", every_slot_probabilities),
        "stream, now": ("now", now)}
times: dict[str, list[float]] = {way: [] for way in ways}
answers: dict[str, list] = {}
for repeat in range(args.repeats):
    for way, (stream, readout) in ways.items():
        DynamicMemory.probabilities = readout  # type: ignore[method-assign]
        start = time.perf_counter()
        results = memory.classify_dmn(queries, stream=None if stream is None else f"{stream}-{repeat}", exact=True)
        times[way].append(time.perf_counter() - start)
        answers.setdefault(way, results)
        print(json.dumps({"way": way, "repeat": repeat, "s": round(times[way][-1], 3),
                          "queries_per_s": round(len(queries) / times[way][-1], 1)}), flush=True)
DynamicMemory.probabilities = now  # type: ignore[method-assign]

# The readout alone, on a young stream and a full one (random unit features, 200 classes x 50 slots, 1280-d).
rng = np.random.default_rng(0)
classes = [f"c{i}" for i in range(200)]
readout_ms: dict[str, dict[str, float]] = {}
for entries in (600, 10_000):
    stream = DynamicMemory(1280, 50)
    for i, f in enumerate(rng.normal(size=(entries, 1280)).astype(np.float32)):
        stream.write(f / np.linalg.norm(f), classes[i % 200], 1.0)
    probes = rng.normal(size=(40, 1280)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    took: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.repeats):
        for way, readout in (("before", every_slot_probabilities), ("now", now)):
            start = time.perf_counter()
            for q in probes:
                readout(stream, q, classes)
            took[way].append((time.perf_counter() - start) / len(probes) * 1e3)
    gap = max(float(np.abs(every_slot_probabilities(stream, q, classes) - now(stream, q, classes)).max())
              for q in probes)
    readout_ms[f"{entries} entries"] = {**{way: round(statistics.median(t), 2) for way, t in took.items()},
                                        "max_probability_difference": gap}

before, after = answers["stream, before"], answers["stream, now"]
labels_equal = [a.label for a in before] == [b.label for b in after]
score_gap = max(abs(a.scores.get(c, 0.0) - b.scores.get(c, 0.0)) for a, b in zip(before, after, strict=True)
                for c in a.scores.keys() | b.scores.keys())
print(json.dumps({
    "machine": machine_info(), "featurizer": args.featurizer, "memory_points": len(train), "queries": len(queries),
    "repeats": args.repeats,
    "queries_per_s_median": {way: round(len(queries) / statistics.median(t), 1) for way, t in times.items()},
    "readout_ms_per_query_median": readout_ms,
    "stream_answers_equal": labels_equal, "stream_max_score_difference": score_gap,
    "accuracy": {way: round(float(np.mean([r.label == it.label for r, it in zip(res, val, strict=True)])), 4)
                 for way, res in answers.items()},
}))
sys.exit(0 if labels_equal and score_gap < 1e-6 else 1)
