"""What an opening that waits for a held memory costs (`VisualMemory.open(..., wait=)`, `vmem ... --wait`).

    python docs/benchmarks/wait_for_memory.py [SECONDS] [ROUNDS]      # default 10 5

A holder process opens a small memory; a waiter process opens it with a wait and, once it has it, says when. Each
round, the holder lets go after SECONDS. Printed, as medians over the rounds: the waiter's CPU time while it
waited (user + system, from /proc, read just before the holder lets go) against a process that only sleeps as
long, and the handoff (from the holder's close returning to the waiter's opening returning). The waiter tries the
lock again after pauses doubling from 0.05 s to 0.5 s: no busy spinning, a handoff of up to half a second.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from retrieval import open_store; store = open_store(sys.argv[1]); print('held', "
        "flush=True); sys.stdin.readline(); store.close(); print(time.time(), flush=True)")
WAIT = ("import sys, time; from vmem import VisualMemory; print('ready', flush=True); "
        "mem = VisualMemory.open(sys.argv[1], reranker=None, wait=600); print(time.time(), flush=True); mem.close()")
SLEEP = "import sys, time; from vmem import VisualMemory; print('ready', flush=True); time.sleep(float(sys.argv[1]))"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)


def one_round(memory: Path, seconds: float) -> dict[str, float]:
    holder = spawn(HOLD, str(memory))
    assert holder.stdout.readline().strip() == "held"
    waiter, sleeper = spawn(WAIT, str(memory)), spawn(SLEEP, str(seconds + 5))
    assert waiter.stdout.readline().strip() == "ready" and sleeper.stdout.readline().strip() == "ready"
    start_waiter, start_sleeper = cpu_seconds(waiter.pid), cpu_seconds(sleeper.pid)
    time.sleep(seconds)
    waited = cpu_seconds(waiter.pid) - start_waiter
    slept = cpu_seconds(sleeper.pid) - start_sleeper
    holder.stdin.write("go\n")
    holder.stdin.close()
    let_go = float(holder.stdout.readline())
    opened = float(waiter.stdout.readline())
    for proc in (holder, waiter):
        proc.wait(timeout=60)
    sleeper.kill()
    sleeper.wait()
    return {"waiter_cpu_s": waited, "sleeper_cpu_s": slept, "handoff_s": opened - let_go}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sys.path.insert(0, str(REPO))
    import numpy as np

    from retrieval import FeaturizerSpec, Preprocessing, open_store

    with tempfile.TemporaryDirectory() as tmp:
        memory = Path(tmp) / "memory"
        spec = FeaturizerSpec(name="bench", dim=16, preprocessing=Preprocessing(resize=256, crop=224))
        with open_store(memory, spec) as store:
            vectors = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
            store.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ["a"] * 100,
                      [f"/x/{i}.jpg" for i in range(100)])
        results = [one_round(memory, seconds) for _ in range(rounds)]
    summary = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(json.dumps({"held_for_s": seconds, "rounds": rounds, "median": summary, "rounds_seen": results}, indent=1))


if __name__ == "__main__":
    main()
