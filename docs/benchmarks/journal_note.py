"""What noting a forget, relabel or erase before it is made costs (retrieval/journal.py, `FileJournal.intend`).

One-point forgets and relabels of a 5,000-point embedded memory (64-d random vectors), alternately with the note
(as vmem makes them) and without it (`intend` answering None: the entry written after the edit alone, as before),
in the same run; medians and p99 of each. The note is a small file written and synced before the edit and
removed after its entry, and a relabel reads its points' labels once more. Erases (each after a one-point forget,
so that each rewrites a segment) alternate likewise, fewer: each rewrites the memory's segment.

    python docs/benchmarks/journal_note.py [--edits 300] [--erases 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retrieval import FeaturizerSpec, Preprocessing, open_store
from vmem import VisualMemory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=300, help="edits of each kind, with and without the note")
    parser.add_argument("--erases", type=int, default=40, help="erases, with and without the note")
    args = parser.parse_args()
    spec = FeaturizerSpec(name="t", dim=64, preprocessing=Preprocessing(resize=8, crop=8))
    n = 5000
    vectors = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    times: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(Path(tmp) / "memory", spec) as store:
            store.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [f"c{i % 50}" for i in range(n)],
                      [f"/data/{i}.jpg" for i in range(n)])
        with VisualMemory.open(Path(tmp) / "memory") as mem:
            ids = mem.store.ids_where()
            journal, intend = mem.store.journal, mem.store.journal.intend
            for i in range(2 * args.edits):
                noted = i % 2 == 0
                journal.intend = intend if noted else (lambda *a, **k: None)  # type: ignore[method-assign]
                t = time.perf_counter()
                mem.relabel("moved", ids=[ids[i]])
                times.setdefault(("relabel", noted), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                mem.forget(ids=[ids[i]])
                times.setdefault(("forget", noted), []).append(time.perf_counter() - t)
            for i in range(2 * args.erases):
                noted = i % 2 == 0
                mem.forget(ids=[ids[2 * args.edits + i]])
                journal.intend = intend if noted else (lambda *a, **k: None)  # type: ignore[method-assign]
                t = time.perf_counter()
                mem.erase_forgotten()
                times.setdefault(("erase", noted), []).append(time.perf_counter() - t)
                journal.intend = intend  # type: ignore[method-assign]
    for (op, noted), ts in sorted(times.items()):
        ms = sorted(1000 * x for x in ts)
        print(f"{op:8} {'noted' if noted else 'not noted':10} median {statistics.median(ms):6.2f} ms   "
              f"p99 {ms[int(0.99 * (len(ms) - 1))]:6.2f} ms   ({len(ms)} edits)")


if __name__ == "__main__":
    main()
