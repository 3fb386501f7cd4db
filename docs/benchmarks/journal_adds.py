"""What noting an add costs a build and an import (retrieval/journal.py: `FileJournal.intend` and `note_adds`).

An add is noted as it begins, and each batch's ids and labels are appended beside the note before the batch is
written, so that a process killed before its entry leaves its points journaled at the next opening. This runs,
alternately in the same run, each add with the note (as vmem makes them) and without it (`intend` answering None
for an add: its entries written as before, alone), each into a fresh memory, and prints the medians:

1. `VisualMemory.build` of N real Tiny-ImageNet images (efficientnet-lite0, batches of 64). With `--cached`
   (the default) its features come from a feature cache warmed first, so that a build costs the store's writes
   and the journal's rather than the encoder's, where the note's share is largest; `--embedded` embeds them.
2. `VisualMemory.import_points` of a file of 100,000 synthetic 384-d vectors with sources (batches of 1,024).

    python docs/benchmarks/journal_adds.py [--images 2000] [--points 100000] [--repeats 3] [--embedded]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retrieval import FeaturizerSpec, LabelledImage, Preprocessing, open_store
from retrieval.journal import FileJournal
from vmem import VisualMemory

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiny-imagenet-200" / "train"
_INTEND = FileJournal.intend


def noting(on: bool) -> None:
    """With the note (vmem as it is) or without it (an add's `intend` answers None: nothing listed either)."""
    def intend(self: FileJournal, op: Any, *args: Any, **kwargs: Any) -> Any:
        return None if op == "add" and not on else _INTEND(self, op, *args, **kwargs)

    FileJournal.intend = intend  # type: ignore[method-assign]


def images(n: int, per_class: int = 100) -> list[LabelledImage]:
    items = []
    for folder in sorted(DATA.iterdir()):
        files = sorted((folder / "images" if (folder / "images").is_dir() else folder).glob("*.JPEG"))[:per_class]
        items += [LabelledImage(str(f), folder.name) for f in files]
        if len(items) >= n:
            return items[:n]
    return items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000, help="real images per build")
    parser.add_argument("--points", type=int, default=100_000, help="points per import (0: no import)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, with and without the note")
    parser.add_argument("--embedded", action="store_true", help="builds embed their images (no feature cache)")
    args = parser.parse_args()
    times: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = images(args.images) if args.images else []
        cache = None if args.embedded else root / "cache"
        if items and cache is not None:  # warmed once, not timed
            with VisualMemory.open(root / "warm", "efficientnet-lite0", create=True, reranker=None) as mem:
                mem.build(items, feature_cache=cache)
        for i in range(2 * args.repeats if items else 0):
            on = i % 2 == 1
            noting(on)
            with VisualMemory.open(root / f"build-{i}", "efficientnet-lite0", create=True, reranker=None) as mem:
                t = time.perf_counter()
                report = mem.build(items, feature_cache=cache)
                times.setdefault(("build", on), []).append(time.perf_counter() - t)
                assert report.added == len(items) and len(mem.history(op="add")) == 1
        if args.points:
            dim = 384
            vectors = np.random.default_rng(0).standard_normal((args.points, dim)).astype(np.float32)
            np.savez(root / "points.npz", vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                     labels=np.array([f"c{i % 200}" for i in range(args.points)]),
                     sources=np.array([f"/data/{i}.jpg" for i in range(args.points)]))
            spec = FeaturizerSpec(name="t", dim=dim, preprocessing=Preprocessing(resize=8, crop=8))
            for i in range(2 * args.repeats):
                on = i % 2 == 1
                noting(on)
                open_store(root / f"import-{i}", spec).close()
                with VisualMemory.open(root / f"import-{i}", reranker=None) as mem:
                    t = time.perf_counter()
                    report = mem.import_points(root / "points.npz", featurizer="t")
                    times.setdefault(("import", on), []).append(time.perf_counter() - t)
                    assert report.added == args.points
    noting(True)
    what = {"build": f"build of {args.images:,} images ({'embedded' if args.embedded else 'cached features'})",
            "import": f"import of {args.points:,} points"}
    for (op, on), ts in sorted(times.items()):
        print(f"{what[op]:45} {'noted' if on else 'not noted':10} median {statistics.median(ts):7.2f} s   "
              f"runs {', '.join(f'{t:.2f}' for t in ts)}")


if __name__ == "__main__":
    main()
