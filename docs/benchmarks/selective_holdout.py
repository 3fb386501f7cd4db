"""Do the thresholds `vmem eval` reads off its risk-coverage curve hold on queries they were not chosen on? The
check behind docs/results/eval.md "When to trust an answer".

    python docs/benchmarks/selective_holdout.py RUN/predictions.csv [--splits 20] [--out FILE.json]

Reads each query's `correct` and `confidence` from a `vmem eval` run's predictions.csv (variant `all`), splits the
queries in two halves at random (`--splits` seeds), chooses on one half the threshold that keeps the most answers
at 90, 95 and 99 % accuracy (`eval.selective`, as `vmem eval` does), and measures on the other half the share of
answers it keeps and their accuracy. Prints the medians (and the range) over the splits as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np

from eval.selective import TARGET_ACCURACIES, selective_scores
from vmem.results import rounded_confidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", type=Path)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with args.predictions.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == "all"]
    conf = np.array([float(r["confidence"]) for r in rows])
    right = np.array([r["correct"] == "1" for r in rows])
    found: dict[float, list[tuple[float, float, float, float]]] = {t: [] for t in TARGET_ACCURACIES}
    for seed in range(args.splits):
        order = np.random.default_rng(seed).permutation(len(rows))
        for chosen, held in ((order[::2], order[1::2]), (order[1::2], order[::2])):
            sel = selective_scores(conf[chosen], right[chosen], rows[0]["rule"], int(rows[0]["k"]))
            for a in sel.at_accuracy:
                if a.min_confidence is None:
                    continue
                kept = rounded_confidence(conf[held]) >= a.min_confidence
                found[a.target].append((a.coverage, a.accuracy or 0.0, float(kept.mean()),
                                        float(right[held][kept].mean()) if kept.any() else float("nan")))
    print(f"{len(rows)} queries ({rows[0]['rule']}, k={rows[0]['k']}), {args.splits} random halvings, both ways\n")
    print("| target | kept where chosen | accuracy where chosen | kept on the other half | accuracy there |")
    print("|---|---|---|---|---|")
    summary = {}
    for target, runs in found.items():
        cols = list(zip(*runs, strict=True)) if runs else []

        def said(values: tuple[float, ...]) -> str:
            return f"{100 * statistics.median(values):.1f}% ({100 * min(values):.1f}–{100 * max(values):.1f})"

        print(f"| {100 * target:g}% | " + " | ".join(said(c) for c in cols) + " |")
        summary[str(target)] = [statistics.median(c) for c in cols]
    if args.out:
        args.out.write_text(json.dumps({"queries": len(rows), "splits": args.splits, "medians": summary}, indent=1))


if __name__ == "__main__":
    main()
