"""`vmem diff` on two memories of N points each: what it holds while it streams, against the vectors' size.

    python docs/benchmarks/diff_memory.py [N] [DIM]      # default 100000 384

Builds memory A (N random unit vectors, 100 labels, float16 originals on disk) and B (A's points with 1 % forgotten,
1 % relabelled, 1 % re-embedded, 1 % added), then, in a fresh process, diffs them as `vmem diff` does: opened
read-only (each folder copied into TMPDIR), paged through in id order together. Prints the seconds to open and to
diff (untraced), the peak of Python's and numpy's allocations during a second diff (tracemalloc) and the
process's RSS once both are open and its peak (which counts the memories' mapped files as they are read),
beside the bytes of one memory's vectors as float32 (n x dim x 4), which an approach reading both whole would hold
twice.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def build(folder: Path, n: int, dim: int) -> None:
    from retrieval import open_store
    from retrieval.preprocessing import FeaturizerSpec, Preprocessing

    spec = FeaturizerSpec(name="bench", dim=dim, preprocessing=Preprocessing(resize=32, crop=32))
    rng = np.random.default_rng(0)
    labels = [f"c{i % 100:03d}" for i in range(n)]
    sources = [f"/data/{lab}/{i}.jpg" for i, lab in enumerate(labels)]
    a = open_store(folder / "a", spec)
    for start in range(0, n, 10_000):
        v = rng.standard_normal((min(10_000, n - start), dim)).astype(np.float32)
        a.add(v / np.linalg.norm(v, axis=1, keepdims=True), labels[start : start + len(v)],
              sources[start : start + len(v)])
    a.flush()
    a.close()
    b = open_store(folder / "b", spec)
    rng = np.random.default_rng(0)  # the same vectors as A's
    for start in range(0, n, 10_000):
        v = rng.standard_normal((min(10_000, n - start), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows = np.arange(start, start + len(v))
        v[rows % 100 == 2] = np.roll(v[rows % 100 == 2], 1, axis=1)  # re-embedded: another vector
        keep = rows % 100 != 1  # forgotten
        labs = [("c999" if i % 100 == 3 else labels[i]) for i in rows]  # relabelled
        b.add(v[keep], [labs[j] for j in np.flatnonzero(keep)], [sources[i] for i in rows[keep]])
    extra = n // 100
    v = np.random.default_rng(1).standard_normal((extra, dim)).astype(np.float32)
    b.add(v / np.linalg.norm(v, axis=1, keepdims=True), ["new"] * extra, [f"/new/{i}.jpg" for i in range(extra)])
    b.flush()
    b.close()


def diff(folder: Path) -> dict:
    import tracemalloc

    from vmem.diff import open_to_compare

    started = time.perf_counter()
    with open_to_compare(folder / "a") as a, open_to_compare(folder / "b") as b:
        opened = time.perf_counter() - started
        rss_open = _rss_mb()
        started = time.perf_counter()
        d = a.diff(b)
        seconds = time.perf_counter() - started
        tracemalloc.start()  # a second diff, traced (several times slower): what it allocates at most
        a.diff(b)
        peak = tracemalloc.get_traced_memory()[1]
    return {"open_s": round(opened, 2), "diff_s": round(seconds, 2), "points_a": d.points_a, "points_b": d.points_b,
            "counts": d.counts, "peak_allocated_mb": round(peak / 1e6, 1), "rss_after_open_mb": rss_open,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)}


def _rss_mb() -> float:
    """The process's resident memory now (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return round(int(f.read().split()[1]) * resource.getpagesize() / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=100_000)
    parser.add_argument("dim", nargs="?", type=int, default=384)
    parser.add_argument("--diff-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diff_only:
        print(json.dumps(diff(args.diff_only)))
        return
    folder = Path(tempfile.mkdtemp(prefix="vmem-diff-bench-"))
    started = time.perf_counter()
    build(folder, args.n, args.dim)
    built = time.perf_counter() - started
    try:
        out = subprocess.run([sys.executable, __file__, "--diff-only", str(folder)], check=True,
                             capture_output=True, text=True, cwd=REPO).stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"n": args.n, "dim": args.dim, "build_s": round(built, 1),
              "vectors_float32_mb": round(args.n * args.dim * 4 / 1e6, 1), **json.loads(out.strip().splitlines()[-1])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
