"""Exact search with its buffers made up front, against the way it was before, in one run.

`eval.exact.exact_search` writes its products into one similarity buffer per call (and, multiplying in
bfloat16, holds a bfloat16 copy of the memory and gathers candidates to rescore). Before, those came from
`torch.empty` and their pages were faulted in during the products, the buffer was 1 GiB and torch
products ran in slabs of 65,536 columns; now the kernel makes the pages when each buffer is mapped
(MAP_POPULATE, `eval.exact._populated_buffer`), the buffer is 512 MiB and slabs are 8,192 columns.
Each repeat measures the square float32 sgemm, then runs every (product, way) pair in turn on the same
vectors as `vmem bench search` (class-clustered, fixed seed), so a change in the machine's state falls on
all of them alike; results must be the same between the ways, except near-ties at the k-th place.

    python docs/benchmarks/exact_buffer.py [--n 1280000] [--queries 1000] [--repeats 5]

Prints one JSON object: per product and way, the median seconds and efficiency (search FLOP rate over the
repeat's sgemm rate), and every repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

import eval.exact as exact
from vmem.cli.bench_search import machine_info, sgemm_gflops, synthetic_features

WAYS = {
    "before (torch.empty, 1 GiB buffer, slabs of 65,536)": (lambda count, dtype: torch.empty(count, dtype=dtype),
                                                           1 << 30, 65_536),
    "now (populated, 512 MiB buffer, slabs of 8,192)": (exact._populated_buffer, 1 << 29, 8_192),
}


def differing_rows(reference, found, tie: float = 1e-6) -> int:
    """Rows whose neighbours differ from the reference's; exits unless every difference is a near-tie.

    Products summed in another order may round two similarities within 1e-7 of each other either way round,
    and equal similarities rank by row, so such a pair can swap at the k-th place (the module's caveat).
    """
    (ref_idx, ref_sims), (idx, sims) = reference, found
    if not np.allclose(sims, ref_sims, atol=tie):
        raise SystemExit("similarities differ beyond float rounding")
    rows = np.nonzero((idx != ref_idx).any(axis=1))[0]
    for row in rows:
        moved = idx[row] != ref_idx[row]
        if np.any(np.abs(sims[row][moved] - ref_sims[row, -1]) > tie):
            raise SystemExit(f"row {row}: neighbours differ away from the k-th similarity")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_280_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    allv, _, _ = synthetic_features(args.n + args.queries, args.dim, max(2, args.n // 1000), 0)
    memory, queries = allv[: args.n], allv[args.n:]
    flop = 2 * args.n * args.dim * args.queries
    products = exact.measured_products()[1:]  # torch and bfloat16 fill the buffer slab by slab; numpy does not
    runs: dict[str, dict[str, list[dict[str, float]]]] = {p: {w: [] for w in WAYS} for p in products}
    reference, near_tie_rows = None, 0
    for repeat in range(args.repeats):
        sgemm = sgemm_gflops(library="torch")
        for product in products:
            for way, (allocate, block_bytes, slab) in WAYS.items():
                exact._populated_buffer, exact._BLOCK_BYTES = allocate, block_bytes
                start = time.perf_counter()
                idx, sims = exact.exact_search(queries, memory, 50, product=product, slab=slab)
                seconds = time.perf_counter() - start
                reference = (idx, sims) if reference is None else reference
                near_tie_rows = max(near_tie_rows, differing_rows(reference, (idx, sims)))
                runs[product][way].append({"s": round(seconds, 3), "sgemm_gflops": round(sgemm),
                                           "efficiency": round(flop / seconds / 1e9 / sgemm, 3)})
                print(f"repeat {repeat} {product} {way}: {seconds:.2f} s", file=sys.stderr, flush=True)
    summary = {p: {w: {"median_s": statistics.median(r["s"] for r in rs),
                       "median_efficiency": statistics.median(r["efficiency"] for r in rs), "runs": rs}
                   for w, rs in ways.items()} for p, ways in runs.items()}
    print(json.dumps({"machine": machine_info(), "n": args.n, "dim": args.dim, "queries": args.queries, "k": 50,
                      "repeats": args.repeats, "most_rows_differing_at_near_ties": near_tie_rows,
                      "products": summary}, indent=1))


if __name__ == "__main__":
    main()
