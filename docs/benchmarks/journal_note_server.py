"""What noting an edit before it is made costs a memory on a Qdrant server (retrieval/journal.py,
`CollectionJournal.intend`): the note and the list of its points written to `vmem-journal-pending` before the edit,
removed after its entry (two or three more requests an edit).

One-point forgets and relabels, and one-point adds (as an HTTP add makes them: a note, its list, the point, the
entry), of a 5,000-point memory (64-d random vectors), alternately with the note (as vmem makes them) and without it
(`intend` answering None: the entry written after the edit alone, as before), in the same run; medians and p99 of
each. By default in qdrant-client's local mode (`qdrant-local:` in a temporary folder), whose requests are calls in
this process: against a server (`--url http://localhost:6333`, a collection `vmem-bench` made and dropped), each
request is a round trip too.

    python docs/benchmarks/journal_note_server.py [--edits 200] [--url URL]
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

from retrieval import FeaturizerSpec, Preprocessing
from retrieval.store import MemoryMeta, QdrantServerStore
from vmem import VisualMemory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=200, help="edits of each kind, with and without the note")
    parser.add_argument("--url", help="a Qdrant server (default: qdrant-client's local mode in a temporary folder)")
    args = parser.parse_args()
    spec = FeaturizerSpec(name="t", dim=64, preprocessing=Preprocessing(resize=8, crop=8))
    n = 5000
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n + 2 * args.edits, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    times: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        location = args.url or f"qdrant-local:{tmp}/memory"
        collection = "vmem-bench" if args.url else "vmem"
        store = QdrantServerStore(location, MemoryMeta(featurizer=spec), collection=collection)
        try:
            store.add(vectors[:n], [f"c{i % 50}" for i in range(n)], [f"/data/{i}.jpg" for i in range(n)])
            mem = VisualMemory(store, reranker=None)
            ids = store.ids_where()
            journal, intend = store.journal, store.journal.intend
            for i in range(2 * args.edits):
                noted = i % 2 == 0
                journal.intend = intend if noted else (lambda *a, **k: None)  # type: ignore[method-assign]
                t = time.perf_counter()
                mem.relabel("moved", ids=[ids[i]])
                times.setdefault(("relabel", noted), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                mem.forget(ids=[ids[i]])
                times.setdefault(("forget", noted), []).append(time.perf_counter() - t)
                # An add as `VisualMemory.add` journals one (its note, the points listed, the point, the entry)
                t = time.perf_counter()
                with store.noted("add", {}) as note, store.adding(note):
                    store.add(vectors[n + i : n + i + 1], ["new"], [f"/new/{i}.jpg"])
                    journal.record("add", points=1, labels={"new": 1},
                                   detail={"note": note.token} if note is not None else {})
                    journal.settled(note)
                times.setdefault(("add", noted), []).append(time.perf_counter() - t)
                journal.intend = intend  # type: ignore[method-assign]
        finally:
            if args.url:
                for name in (collection, f"{collection}-journal", f"{collection}-journal-pending"):
                    store.client.delete_collection(name)
            store.close()
    print(f"{'local mode' if not args.url else args.url}, {n} points")
    for (op, noted), ts in sorted(times.items()):
        ms = sorted(1000 * x for x in ts)
        print(f"{op:8} {'noted' if noted else 'not noted':10} median {statistics.median(ms):6.2f} ms   "
              f"p99 {ms[int(0.99 * (len(ms) - 1))]:6.2f} ms   ({len(ms)} edits)")


if __name__ == "__main__":
    main()
