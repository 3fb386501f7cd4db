"""Accuracy of memories of the same points under different encoders (a memory and its `vmem copy --featurizer`
moves), on the val images of the classes they hold. Prints one JSON object.

    python docs/benchmarks/reembed_accuracy.py --val VAL_DIR MEMORY [MEMORY ...]

VAL_DIR is an ImageFolder (`VAL/<label>/*.JPEG`); only its classes the memories hold are scored. Each memory
embeds the images with its own encoder and answers with its stored vote (rank, k = 50 unless tuned) and 1-NN.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from retrieval import scan_imagefolder
from vmem import VisualMemory, VoteSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True)
    ap.add_argument("memories", nargs="+")
    args = ap.parse_args()
    rows = []
    embedded: dict[str, tuple] = {}  # the val images' features per encoder: memories of one encoder share them
    for location in args.memories:
        with VisualMemory.open(location, reranker=None) as mem:
            held = set(mem.store.label_counts())
            items = [it for it in scan_imagefolder(args.val) if it.label in held]
            name = mem.store.meta.featurizer.name
            if name not in embedded:
                t0 = time.perf_counter()
                embedded[name] = (mem.featurizer.embed_many([it.source for it in items]), time.perf_counter() - t0)
            res, seconds = embedded[name]
            truth = np.array([items[i].label for i in res.indices])
            row = {"memory": location, "featurizer": name, "points": mem.store.count(),
                   "searchable": mem.store.count(searchable=True), "queries": len(truth),
                   "embed_seconds": round(seconds, 1)}
            for rule, settings in (("vote", mem.vote_settings()), ("1-NN", VoteSettings(rule="plurality", k=1))):
                answers = np.array([r.label for r in mem.classify_vectors(res.features, settings, exact=True)])
                row[f"{rule} ({settings.rule}, k={settings.k})"] = round(100 * float((answers == truth).mean()), 2)
            rows.append(row)
    print(json.dumps({"machine": platform.node(), "val": args.val, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
