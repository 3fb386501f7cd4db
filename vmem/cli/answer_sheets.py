"""`vmem classify --csv` and `--review-csv`: the answers as a spreadsheet, and the unsure ones as a queue for a
person to correct and give back to `vmem build`."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import typer

from retrieval.files import write_atomically

ANSWERS_HEADER = ("path", "label", "label_name", "confidence", "unsure", "reason")
# path,label first, as vmem build reads a manifest; the rest are there for the person (build ignores them)
REVIEW_HEADER = ("path", "label", "suggested_name", "confidence")


def absolute(source: str) -> str:
    """A file given by a relative path (`vmem classify new/`) as an absolute one, links kept: vmem build reads a
    manifest's relative paths from the manifest's folder, where the queue's images are not."""
    return source if not source or "://" in source or os.path.isabs(source) else os.path.abspath(source)


class AnswerSheets:
    """The CSV files a classify run writes. Each part's rows are appended, flushed, after the part (the first after
    a batch): a run stopped or killed leaves every answer of the parts done before, and a run still going can be
    read (`tail -f` follows it). Appended, not rewritten: a sheet written again whole after each part cost a long
    run writes growing with the square of its images (100,000: 220 MB for a 16 MB pair of sheets,
    docs/benchmarks/answer-sheets.jsonl), and held every row in memory. Each part is one write of whole rows; a
    reader that reads while it is written may find the last row not yet whole."""

    def __init__(self, answers: Path | None, review: Path | None) -> None:
        self.answers, self.review = answers, review
        self.answered = self.unsure = 0  # counts, not rows: a run's memory does not grow with its sheets

    @staticmethod
    def checked(answers: Path | None, review: Path | None, min_confidence: float | None) -> AnswerSheets | None:
        """The sheets asked for (None: neither), refused (BadParameter) before any image is embedded where they
        cannot be written or the queue would be empty by design."""
        if review is not None and min_confidence is None:
            raise typer.BadParameter("the queue holds the answers under --min-confidence: give --min-confidence "
                                     "SHARE too", param_hint="--review-csv")
        if answers is not None and review is not None and answers.expanduser().resolve() == \
                review.expanduser().resolve():
            raise typer.BadParameter("it is the file given to --csv: give the queue a file of its own",
                                     param_hint="--review-csv")
        sheets = AnswerSheets(answers and answers.expanduser(), review and review.expanduser())
        for path, hint in ((sheets.answers, "--csv"), (sheets.review, "--review-csv")):
            if path is not None:
                try:  # the empty sheet: a folder missing or read-only is said now, not after an hour of embedding
                    # With a byte-order mark: Excel reads the file as UTF-8 only so (a non-ASCII path came out
                    # garbled, and was saved back so), and vmem build, eval and utf-8-sig read it as the header's
                    # first character.
                    write_atomically(path, "\ufeff" + rows_text([ANSWERS_HEADER if hint == "--csv" else
                                                                  REVIEW_HEADER]), durable=False)
                except OSError as exc:
                    raise typer.BadParameter(f"cannot write {path} ({exc.strerror or exc})", param_hint=hint) from None
        return sheets if (answers or review) else None

    def add(self, results: list) -> None:
        """Record a part's answers: append them to the sheets."""
        answer_rows: list[tuple[str, ...]] = []
        review_rows: list[tuple[str, ...]] = []
        for r in results:
            confidence = "" if r.confidence is None else f"{r.confidence:.6f}"
            path = absolute(r.source or "")
            answer_rows.append((path, r.label or "", r.label_name or "", confidence,
                                "true" if r.unsure else "false", r.unsure_reason or ""))
            if r.unsure:  # the suggestion as the label: a person corrects it, or empties it to skip the image
                review_rows.append((path, r.label or "", r.label_name or "", confidence))
        if self.answers is not None:
            append_rows(self.answers, answer_rows)
        if self.review is not None:
            append_rows(self.review, review_rows)
        self.answered += len(answer_rows)
        self.unsure += len(review_rows)

    def summary(self) -> str:
        """Where the answers went, for stderr."""
        n, m = self.answered, self.unsure
        said = [f"{n:,} answer{'s' if n != 1 else ''} written to {self.answers}"] if self.answers else []
        if self.review is not None:
            said.append(f"{m:,} unsure one{'s' if m != 1 else ''} to {self.review} for a person to check: correct a "
                        f"label or empty it to skip the image, then `vmem build {self.review}` adds them")
        return "; ".join(said)


def rows_text(rows: list[tuple[str, ...]]) -> str:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)  # RFC 4180: CRLF, a cell holding a comma, quote or line break quoted
    return text.getvalue()


def append_rows(path: Path, rows: list[tuple[str, ...]]) -> None:
    """`rows` at the end of the sheet at `path`, in one write (the part's rows land whole, or a kill during the
    write cuts at most its last row), flushed to the system: another process reads them at
    once, and a kill of this one loses none."""
    if not rows:
        return
    data = rows_text(rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it in one write; a short write goes on where it stopped
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
