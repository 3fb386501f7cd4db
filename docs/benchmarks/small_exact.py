"""Small exact searches: numpy alone against the blocked search through torch, and what importing torch costs.

`eval.exact.exact_search` answers a search of up to `_NUMPY_ONLY_SIMILARITIES` (queries x memory rows) with the
numpy product in numpy alone, never importing torch. This prints, for self-searches (`vmem prune`, `vmem suspects`)
and for a few queries against a wider memory, the median time of each way (torch already imported, so the blocked
search pays nothing for it), then the median time a fresh process takes to import torch: what a small search
saves by not needing it.

    .venv/bin/python docs/benchmarks/small_exact.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch

import eval.exact as exact

REPEATS = 5


def median_time(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    exact.default_product_backend()  # its bfloat16 trial, once, outside the timings
    torch.empty(1)
    rng = np.random.default_rng(0)
    shapes = [(300, 300, 1280, 100), (1_000, 1_000, 1280, 100), (2_000, 2_000, 1280, 100), (2_000, 2_000, 384, 100),
              (5_000, 5_000, 384, 100), (100, 40_000, 384, 10), (20, 200_000, 384, 10), (1_000, 4_000, 1280, 10)]
    for n_q, n_mem, dim, k in shapes:
        memory = rng.standard_normal((n_mem, dim)).astype(np.float32)
        memory /= np.linalg.norm(memory, axis=1, keepdims=True)
        self_search = n_q == n_mem
        queries = memory if self_search else rng.standard_normal((n_q, dim)).astype(np.float32)
        exclude = np.arange(n_mem) if self_search else None
        row = {}
        for name, bound in (("numpy alone", 10**12), ("blocked, torch", 0)):
            exact._NUMPY_ONLY_SIMILARITIES = bound
            search = partial(exact.exact_search, queries, memory, k, exclude, product="numpy")
            row[name] = round(median_time(search), 3)
        print(f"{n_q:,} x {n_mem:,} x {dim} ({n_q * n_mem / 1e6:.1f}M similarities), k = {k}: {row}", flush=True)
    fresh = [subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], capture_output=True, text=True)
             for _ in range(REPEATS)]
    imports = [int(r.stderr.strip().splitlines()[-1].split("|")[1]) / 1e6 for r in fresh]
    print(f"import torch in a fresh process: {statistics.median(imports):.2f} s (median of {REPEATS})")


if __name__ == "__main__":
    main()
