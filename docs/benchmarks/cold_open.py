"""Batched queries right after a memory opens cold, with and without reading it ahead (`MemoryStore.prefetch`).

For each mode, alternating, in a fresh process: drop the memory's files from the page cache (as after a
reboot), open the memory, then answer rounds of batched queries never asked before, each round timed and
stamped with the seconds since the open began. Modes: "plain" (queries read what they need from disk),
"prefetch" (the search files read in a background thread beside the queries), "prefetch-first" (read
before the first query, as `vmem serve` does).

    python docs/benchmarks/cold_open.py MEMORY_DIR [--queries 1000] [--rounds 6] [--repeats 2]

MEMORY_DIR: a memory kept by `vmem bench search --keep` (the queries are drawn around the same class
centres as its vectors: seed 0, --classes of them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MODES = ("plain", "prefetch", "prefetch-first")


def child(memory: Path, mode: str, queries: int, rounds: int, classes: int, seed: int) -> dict:
    from retrieval import open_store
    from vmem.cli.bench_ram_limit import evict_from_page_cache
    from vmem.cli.bench_search import fresh_queries, synthetic_features

    _, _, centres = synthetic_features(0, 384, classes, 0)  # the memory's class centres, no vectors
    qs = fresh_queries(centres, queries * rounds, seed)
    evict_from_page_cache(memory)
    t0 = time.perf_counter()
    store = open_store(memory)
    res: dict = {"mode": mode, "open_s": round(time.perf_counter() - t0, 2)}

    def read_ahead() -> None:
        res["prefetch_mb"] = round(store.prefetch() / 2**20, 1)
        res["prefetch_done_s"] = round(time.perf_counter() - t0, 2)

    if mode == "prefetch":  # beside the queries
        threading.Thread(target=read_ahead, daemon=True).start()
    elif mode == "prefetch-first":  # before them, as `vmem serve` does
        read_ahead()
    res["rounds"] = []
    for r in range(rounds):
        batch = qs[r * queries: (r + 1) * queries]
        t = time.perf_counter()
        for s in range(0, len(batch), 100):
            store.query_batch(batch[s: s + 100], 50)
        now = time.perf_counter()
        res["rounds"].append({"qps_batch": round(queries / (now - t), 1), "done_at_s": round(now - t0, 2)})
    store.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("memory", type=Path)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--classes", type=int, default=1280)
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.memory, args.child, args.queries, args.rounds, args.classes, args.seed)))
        return
    runs = []
    for i in range(args.repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, str(args.memory), "--child", mode, "--queries",
                                  str(args.queries), "--rounds", str(args.rounds), "--classes", str(args.classes),
                                  "--seed", str(100 + i)], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), file=sys.stderr)
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "first_round_qps_batch": statistics.median(r["rounds"][0]["qps_batch"] for r in mine),
            "last_round_qps_batch": statistics.median(r["rounds"][-1]["qps_batch"] for r in mine),
            "all_rounds_done_s": statistics.median(r["rounds"][-1]["done_at_s"] for r in mine),
        }
        done = [r["prefetch_done_s"] for r in mine if "prefetch_done_s" in r]  # absent: not done by the end
        if mode != "plain":
            summary[mode]["prefetch_done_s"] = statistics.median(done) if len(done) == len(mine) else None
    print(json.dumps({"queries_per_round": args.queries, "rounds": args.rounds, "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
