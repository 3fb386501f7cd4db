"""Does a memory built by the traced EfficientNet-Lite0 (vmem before BatchNorm was fused by hand) answer the same
when queried by the fused model? Real Tiny-ImageNet images; run its steps under each version of the code.

    # the version before (a git worktree of it first on PYTHONPATH): build, then classify
    PYTHONPATH=OLD python docs/benchmarks/lite_fused_old_memory.py build MEMORY DATASET
    PYTHONPATH=OLD python docs/benchmarks/lite_fused_old_memory.py classify MEMORY DATASET old.npz
    # this version: classify the same memory, then compare the two runs
    python docs/benchmarks/lite_fused_old_memory.py classify MEMORY DATASET new.npz
    python docs/benchmarks/lite_fused_old_memory.py compare old.npz new.npz

The memory holds --per-class train images of the first --classes WordNet classes; the queries are those classes'
val images. Both classify runs warm the featurizer up first (the old code then traced it, as `vmem serve` did),
so the old run's queries are all traced. `compare` prints one JSON object: answers agreeing, accuracy of each,
and the cosine between each query's two feature vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def items(dataset: Path, split: str, classes: int, per_class: int) -> list:
    from retrieval import scan_imagefolder

    found = scan_imagefolder(dataset / split)
    keep = sorted({it.label for it in scan_imagefolder(dataset / "train")})[:classes]
    out = []
    for label in keep:
        out += [it for it in found if it.label == label][:per_class]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["build", "classify", "compare"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=50)
    a = ap.parse_args()
    if a.step == "compare":
        old, new = (np.load(p) for p in a.args)
        cos = (old["features"] * new["features"]).sum(axis=1)
        truth = old["truth"]
        print(json.dumps({
            "queries": len(truth),
            "same_answer": round(float(np.mean(old["answers"] == new["answers"])), 4),
            "different_answers": int(np.sum(old["answers"] != new["answers"])),
            "accuracy_old": round(float(np.mean(old["answers"] == truth)), 4),
            "accuracy_new": round(float(np.mean(new["answers"] == truth)), 4),
            "same_top1_neighbour": round(float(np.mean(old["nearest"] == new["nearest"])), 4),
            "query_cosine_min": round(float(cos.min()), 6), "query_cosine_median": round(float(np.median(cos)), 6),
        }))
        return
    import retrieval
    from vmem import VisualMemory

    print("code:", retrieval.__file__, file=sys.stderr)
    memory, dataset = Path(a.args[0]), Path(a.args[1])
    if a.step == "build":
        with VisualMemory.open(memory, featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
            report = mem.build(items(dataset, "train", a.classes, a.per_class), num_workers=0)
            print(report.added if hasattr(report, "added") else report, file=sys.stderr)
        return
    queries = items(dataset, "val", a.classes, a.per_class)
    with VisualMemory.open(memory, reranker=None) as mem:
        mem.featurizer.warm_up()
        features = mem.featurizer.embed([it.source for it in queries])
        results, failed = mem.classify_many([it.source for it in queries])
        assert not failed, failed
    np.savez(a.args[2], features=features, answers=np.array([r.label for r in results]),
             truth=np.array([it.label for it in queries]),
             nearest=np.array([str(r.neighbors[0].id) if r.neighbors else "" for r in results]))


if __name__ == "__main__":
    main()
