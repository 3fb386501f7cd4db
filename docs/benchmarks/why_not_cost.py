"""What `classify(why_not=LABEL)` costs: one query at a time (as the service answers), with and without it.

    python docs/benchmarks/why_not_cost.py MEMORY_DIR QUERIES_DIR [--k 50] [--rounds 5]

QUERIES_DIR is an ImageFolder (`QUERIES_DIR/<label>/*.jpg`) of images whose folders are labels of the memory:
each query asks why not its own folder's label, the question a user asks when the answer is wrong. The queries
are embedded once, before timing (what is timed is the vote and the searches `why_not` adds: one among the
label's points, and, where they lie past the k, one deeper of the memory, up to 1,000 neighbours). The two
ways alternate, query by query, in each round; the first round warms up. Prints one JSON object: the median
milliseconds a query of each way over the rounds, and how many queries took the deeper search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from retrieval import scan_imagefolder
from vmem import VisualMemory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("memory")
    ap.add_argument("queries", type=Path)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with VisualMemory.open(args.memory, reranker=None) as mem:
        items = [it for it in scan_imagefolder(args.queries) if mem.store.count(label=it.label)]
        vectors = mem.featurizer.embed([it.source for it in items])
        settings = mem.vote_settings(k=args.k)
        ms: dict[str, list[float]] = {"plain": [], "why_not": []}
        for _ in range(args.rounds + 1):
            per_query: dict[str, float] = {"plain": 0.0, "why_not": 0.0}
            for i, it in enumerate(items):
                for way in ms:
                    t = time.perf_counter()
                    [res] = mem.classify_vectors(vectors[i : i + 1], settings,
                                                 why_not=it.label if way == "why_not" else None)
                    per_query[way] += time.perf_counter() - t
            for way in ms:
                ms[way].append(1000 * per_query[way] / len(items))
        answers = mem.classify_vectors(vectors, settings)
        whys = [mem.classify_vectors(vectors[i : i + 1], settings, why_not=it.label)[0].why_not
                for i, it in enumerate(items)]
        wrong = sum(r.label != it.label for r, it in zip(answers, items, strict=True))
        # A query took the deeper search where one of its label's nearest points did not vote
        deeper = sum(any(p.rank is None or p.rank >= args.k for p in w.nearest) for w in whys if w is not None)
        print(json.dumps({
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "points": mem.store.count(), "labels": len(mem.store.label_counts()), "queries": len(items),
            "k": args.k, "rounds": args.rounds, "wrong_answers": wrong, "queries_with_deeper_search": deeper,
            **{f"{way}_ms_median": round(statistics.median(v[1:]), 3) for way, v in ms.items()},
            **{f"{way}_ms_rounds": [round(x, 3) for x in v[1:]] for way, v in ms.items()},
        }))


if __name__ == "__main__":
    main()
