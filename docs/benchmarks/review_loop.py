"""A person in the loop, on real images: the README's "Sending the unsure ones to a person" figures.

    python docs/benchmarks/review_loop.py TINY_IMAGENET_ROOT [--classes 10] [--train 100] [--threshold 0.5]
        [--work DIR] [--out FILE.json]

Takes the first `--classes` Tiny-ImageNet classes: a memory of `--train` train images each (EfficientNet-Lite0),
and their 50 val images each split in two: batch A, the new photos (the first 25 of each class), and batch B, held
out (the last 25). Then, with the vmem CLI as a team would run it:

1. `vmem classify A --min-confidence T --csv answers.csv --review-csv queue.csv`;
2. the person: a script puts each queued image's true label (its folder) in the queue's label column;
3. `vmem build queue.csv`;
4. batch B classified before step 3 and after it (`--truth-from-dirs`), and batch A again.

Prints batch A's accuracy answered by the memory alone, the accuracy of what the team ends up with (the sure
answers, and the person's labels for the rest), and batch B's accuracy before and after the corrections were added
(B is not in the memory: the gain there is what the corrections teach about new images, not A's own answers
remembered). Searches are exact (`--exact`), so the figures are the same each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

VMEM = [sys.executable, "-m", "vmem"]


def vmem(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMEM, *map(str, args)], check=True, capture_output=True, text=True)


def accuracy(folder: Path, memory: Path) -> tuple[float, str]:
    out = vmem("classify", folder, "--memory", memory, "--exact", "--truth-from-dirs", "--json")
    line = next(s for s in out.stderr.splitlines() if s.startswith("accuracy "))
    return float(re.match(r"accuracy ([\d.]+)%", line).group(1)), line  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="vmem-review-"))
    classes = sorted(p.name for p in (a.root / "train").iterdir() if p.is_dir())[: a.classes]
    for c in classes:  # links, not copies
        for folder, files in (("train", sorted((a.root / "train" / c).iterdir())[: a.train]),
                              ("A", sorted((a.root / "val" / c).iterdir())[:25]),
                              ("B", sorted((a.root / "val" / c).iterdir())[25:50])):
            (work / folder / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                if not (work / folder / c / f.name).exists():
                    (work / folder / c / f.name).symlink_to(f.resolve())
    memory = work / "memory"
    vmem("build", work / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
         "--label-names", a.root / "classes.tsv")
    b_before, b_before_line = accuracy(work / "B", memory)

    answers, queue = work / "answers.csv", work / "queue.csv"
    vmem("classify", work / "A", "--memory", memory, "--exact", "--min-confidence", a.threshold,
         "--csv", answers, "--review-csv", queue)
    with answers.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    truth = {r["path"]: Path(r["path"]).parent.name for r in rows}
    sure = [r for r in rows if r["unsure"] == "false"]
    a_alone = sum(r["label"] == truth[r["path"]] for r in rows)
    sure_right = sum(r["label"] == truth[r["path"]] for r in sure)

    with queue.open(newline="", encoding="utf-8-sig") as f:  # the person
        queued = list(csv.DictReader(f))
    suggestions_right = sum(q["label"] == truth[q["path"]] for q in queued)
    for q in queued:
        q["label"] = truth[q["path"]]
    with queue.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=list(queued[0]))
        w.writeheader()
        w.writerows(queued)
    built = vmem("build", queue, "--memory", memory).stdout.strip().splitlines()[0]

    b_after, b_after_line = accuracy(work / "B", memory)
    a_again, _ = accuracy(work / "A", memory)
    n = len(rows)
    result = {
        "classes": len(classes), "train_per_class": a.train, "batch_a": n, "batch_b": 25 * len(classes),
        "min_confidence": a.threshold, "sure": len(sure), "sure_accuracy": 100 * sure_right / max(1, len(sure)),
        "queued": len(queued), "queued_suggestions_accuracy": 100 * suggestions_right / max(1, len(queued)),
        "a_memory_alone_accuracy": 100 * a_alone / n,
        "a_with_person_accuracy": 100 * (sure_right + len(queued)) / n,
        "b_accuracy_before": b_before, "b_accuracy_after": b_after, "a_accuracy_after": a_again,
        "build": built, "b_before": b_before_line, "b_after": b_after_line,
    }
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
