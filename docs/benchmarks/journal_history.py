"""A journal's history, newest first: every line parsed against only those that may match, in the same run.

    python docs/benchmarks/journal_history.py [N]      # default 100000

Writes a journal of N one-image adds (a service taking uploads) and one forget of 4-5 ids every 100 adds,
then times the 20 newest edits (the page's list), one point's edits, and the forgets: through
`Journal.newest` (read and parse every entry) and `FileJournal.newest`. Medians of 3.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from retrieval.journal import FileJournal, Journal, JournalEntry, JournalQuery, now


def median_seconds(read, repeats: int = 3) -> tuple[float, tuple[list[JournalEntry], int]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = read()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(n: int) -> None:
    path = Path(tempfile.mkdtemp()) / "journal.jsonl"
    add = JournalEntry(at=now(), op="add", points=1, labels={"n02124075": 1}, via="http").model_dump_json() + "\n"
    target = str(uuid.uuid4())
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(add)
            if i % 100 == 0:
                ids = [str(uuid.uuid4()) for _ in range(4)] + ([target] if i == n // 2 else [])
                f.write(JournalEntry(at=now(), op="forget", points=len(ids), labels={"n02124075": len(ids)},
                                     ids=ids).model_dump_json() + "\n")
    journal = FileJournal(path)
    print(f"{n:,} adds + {n // 100:,} forgets, {path.stat().st_size / 1e6:.0f} MB")
    for name, query in [("recent 20", JournalQuery()), ("one point", JournalQuery(point_id=target)),
                        ("forgets", JournalQuery(op="forget"))]:
        row = []
        for how, read in [("every line parsed", lambda q=query: Journal.newest(journal, q, 20)),
                          ("FileJournal.newest", lambda q=query: journal.newest(q, 20))]:
            seconds, (shown, earlier) = median_seconds(read)
            row.append(f"{how} {seconds:.3f} s ({len(shown)} shown, {earlier} earlier)")
        print(f"{name}: " + "; ".join(row))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=100_000, metavar="N",
                        help="one-image adds written to the journal (default 100000)")
    main(parser.parse_args().n)
