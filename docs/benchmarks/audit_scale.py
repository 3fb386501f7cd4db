"""The label audit's time by the memory's index, and by exact search where that is affordable, on synthetic
class-clustered 384-d vectors (as `vmem bench search` makes them) in an embedded memory with vmem's defaults.

    python docs/benchmarks/audit_scale.py N        # docs/results/eval.md: N = 50000 (both), 200000 (index)

Exact search runs only up to 60,000 points: its time grows with the square of the points.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from eval.label_audit import audit_labels
from retrieval import FeaturizerSpec, Preprocessing, open_store
from vmem.cli.bench_search import synthetic_features


def main(n: int) -> None:
    vectors, labels, _ = synthetic_features(n, 384, 1000, seed=0)
    spec = FeaturizerSpec(name="synthetic", dim=384, preprocessing=Preprocessing(resize=224, crop=224))
    store = open_store(tempfile.mkdtemp(), spec)
    start = time.perf_counter()
    for s in range(0, n, 20_000):
        end = min(n, s + 20_000)
        store.add(vectors[s:end], [str(label) for label in labels[s:end]], [f"synthetic:{i}" for i in range(s, end)])
    store.optimize()
    print(f"built {n:,} points in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    index = audit_labels(store, search="index")
    seconds = time.perf_counter() - start
    print(f"index: {seconds:.1f} s ({seconds / n * 1e3:.2f} ms a point), {len(index.suspects())} suspects",
          flush=True)
    if n <= 60_000:
        start = time.perf_counter()
        exact = audit_labels(store, search="exact")
        same = np.mean([a == b for a, b in zip(index.suggested, exact.suggested, strict=True)])
        print(f"exact: {time.perf_counter() - start:.1f} s, {len(exact.suspects())} suspects; same suggestion "
              f"for {same:.4f} of the points")
    store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, metavar="N", help="synthetic 384-d points in the memory")
    main(parser.parse_args().n)
