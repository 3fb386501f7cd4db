"""`vmem classify --csv --review-csv` on a long run: the sheets grow part by part, as a reader following them
(`tail -f`) sees, and hold every answer of the parts done."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

from vmem.cli.answer_sheets import AnswerSheets


def answer(i: int, unsure: bool = False) -> SimpleNamespace:
    return SimpleNamespace(source=f"/photos/IMG_{i:04d}.JPG", label="fox", label_name="red fox", confidence=0.4,
                           unsure=unsure, unsure_reason="under min_confidence 0.5" if unsure else None)


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def test_a_reader_following_the_sheets_sees_each_part_added(tmp_path: Path):
    answers, queue = tmp_path / "answers.csv", tmp_path / "queue.csv"
    sheets = AnswerSheets.checked(answers, queue, min_confidence=0.5)
    assert sheets is not None
    with answers.open(newline="", encoding="utf-8") as follower, queue.open(newline="", encoding="utf-8") as q:
        assert rows(follower.read()) == [["path", "label", "label_name", "confidence", "unsure", "reason"]]
        assert rows(q.read()) == [["path", "label", "suggested_name", "confidence"]]
        sheets.add([answer(0), answer(1, unsure=True)])
        # The same open file reads on where it stopped: the rows were added to it, not written to a new file
        assert [r[0] for r in rows(follower.read())] == ["/photos/IMG_0000.JPG", "/photos/IMG_0001.JPG"]
        sheets.add([answer(2, unsure=True)])
        assert rows(follower.read()) == [["/photos/IMG_0002.JPG", "fox", "red fox", "0.400000", "true",
                                          "under min_confidence 0.5"]]
        assert [r[0] for r in rows(q.read())] == ["/photos/IMG_0001.JPG", "/photos/IMG_0002.JPG"]
    assert sheets.summary().startswith(f"3 answers written to {answers}; 2 unsure ones to {queue}")
    with answers.open(newline="", encoding="utf-8-sig") as f:  # as vmem build and a spreadsheet read it
        assert [r["path"] for r in csv.DictReader(f)] == [f"/photos/IMG_{i:04d}.JPG" for i in range(3)]
