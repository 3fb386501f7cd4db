"""What `vmem classify --csv --review-csv` spends on its sheets over a long run: wall time and bytes written
(wchar, every write()), the parts as classify makes them (64, 128, ... up to 4,096 images), 1 answer in 4 unsure.

Compared in the same run: `AnswerSheets` as it is, and each sheet rewritten whole (atomically) after each part, as
it was until the sheets were appended to (what "rewrite" reproduces).

    python docs/benchmarks/answer_sheets.py [N_IMAGES ...]   # default 10000 100000 300000; prints JSON lines
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from vmem.cli.answer_sheets import ANSWERS_HEADER, REVIEW_HEADER, AnswerSheets, absolute
from vmem.cli.memory import CLASSIFY_PART_MAX, growing_parts

REPEATS = 3


def wchar() -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/io").read_text(encoding="utf-8").splitlines()
                if line.startswith("wchar:"))


def answers(n: int) -> list[SimpleNamespace]:
    """Answers shaped like a camera trap's season: a long absolute path, a WordNet label and its name."""
    return [SimpleNamespace(source=f"/data/camera-traps/site-{i % 37:02d}/2026-{i % 12 + 1:02d}/IMG_{i:07d}.JPG",
                            label="n01443537", label_name="goldfish, Carassius auratus", confidence=0.4 + (i % 7) / 10,
                            unsure=i % 4 == 0, unsure_reason="confidence 0.400 (the vote share of 'n01443537') is "
                            "under min_confidence 0.5: the label is a suggestion, for a person to check"
                            if i % 4 == 0 else None) for i in range(n)]


class Rewrite(AnswerSheets):
    """The sheets as they were: every row kept, each sheet written again whole after each part."""

    def __init__(self, answers: Path, review: Path) -> None:
        super().__init__(answers, review)
        self.rows: list[tuple[str, ...]] = []
        self.queue: list[tuple[str, ...]] = []

    def add(self, results: list) -> None:
        for r in results:
            row = (absolute(r.source), r.label, r.label_name, f"{r.confidence:.6f}", "true" if r.unsure else "false",
                   r.unsure_reason or "")
            self.rows.append(row)
            if r.unsure:
                self.queue.append(row[:4])
        self._rewrite(self.answers, ANSWERS_HEADER, self.rows)
        self._rewrite(self.review, REVIEW_HEADER, self.queue)

    @staticmethod
    def _rewrite(path, header, rows) -> None:
        import csv
        import io

        from retrieval.files import write_atomically

        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(header)
        w.writerows(rows)
        write_atomically(path, "\ufeff" + text.getvalue(), durable=False)


def one_run(kind: str, results: list, folder: Path) -> tuple[float, int, int]:
    answers_csv, queue_csv = folder / f"{kind}-answers.csv", folder / f"{kind}-queue.csv"
    for p in (answers_csv, queue_csv):
        p.unlink(missing_ok=True)
    written, start = wchar(), time.perf_counter()
    sheets = (Rewrite(answers_csv, queue_csv) if kind == "rewrite"
              else AnswerSheets.checked(answers_csv, queue_csv, 0.5))
    assert sheets is not None
    for part in growing_parts(results, first=64, largest=CLASSIFY_PART_MAX):
        sheets.add(part)
    sheets.close()  # as the run ends: the --csv sheet let go of
    return time.perf_counter() - start, wchar() - written, answers_csv.stat().st_size + queue_csv.stat().st_size


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 300_000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            results = answers(n)
            for kind in ("rewrite", "as-is"):
                runs = [one_run(kind, results, Path(tmp)) for _ in range(REPEATS)]
                print(json.dumps({"images": n, "sheets": kind, "parts": sum(1 for _ in growing_parts(
                    results, 64, CLASSIFY_PART_MAX)), "median_s": round(statistics.median(r[0] for r in runs), 3),
                    "written_mb": round(runs[0][1] / 1e6, 1), "sheets_mb": round(runs[0][2] / 1e6, 1)}), flush=True)


if __name__ == "__main__":
    main()
