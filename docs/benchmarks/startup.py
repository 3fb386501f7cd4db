"""Start-up of each `vmem` command as a shell loop runs it: wall time, CPU time and peak RSS of a fresh process.

Each command is run as `python -m vmem ...` in a fresh process, --repeats times, alternating between the code
trees given (a checkout of an older commit against this one: both in the same machine state), after one
untimed run of each (bytecode written, files in the page cache). Wall and CPU (user + system, all threads) are
medians; peak RSS is the largest of the runs (`ru_maxrss` of the process). `serve` is timed from its start
until `GET /readyz` answers 200 (the port opens once the encoder is warmed up), then stopped.

    python docs/benchmarks/startup.py MEMORY IMAGE [--trees OLD_CHECKOUT,.] [--repeats 5] [--only info,classify]

MEMORY: an embedded memory (e.g. built from a few Tiny-ImageNet classes with --featurizer efficientnet-lite0);
IMAGE: an image to classify. VMEM_HOME is pointed at a temporary folder, so that no answer log or DMN state of
the user's is read or written.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def commands(memory: str, image: str, log: str) -> dict[str, list[str]]:
    on = ["--memory", memory]
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        "info": ["info", *on],
        "labels --json": ["labels", "--json", *on],
        "history": ["history", "--limit", "10", *on],
        "points": ["points", "--limit", "10", *on],
        "answers": ["answers", "--log", log, "--forgotten", memory],
        "classify": ["classify", image, *on, "--answer-log", log],
        "serve": ["serve", *on, "--no-auth"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(tree: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    """One fresh process: wall seconds (to /readyz for serve), CPU seconds, peak RSS in MiB."""
    env = {**env, "PYTHONPATH": os.path.abspath(tree)}
    serving = args[0] == "serve"
    if serving:
        port = free_port()
        args = [*args, "--port", str(port)]
    t0 = time.perf_counter()
    # Run from VMEM_HOME: `python -m` puts its working directory ahead of PYTHONPATH on sys.path
    proc = subprocess.Popen([sys.executable, "-m", "vmem", *args], env=env, cwd=env["VMEM_HOME"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = None
    if serving:
        while wall is None and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        wall = time.perf_counter() - t0
            except OSError:  # refused until the encoder is warmed up and the port opens
                time.sleep(0.02)
        proc.terminate()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = wall if wall is not None else time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not serving:
        raise SystemExit(f"vmem {' '.join(args)} exited {code} ({tree}): {err[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("memory")
    ap.add_argument("image")
    ap.add_argument("--trees", default=".", help="code trees to compare, comma-separated (default: this one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="commands to time, comma-separated (default: all)")
    a = ap.parse_args()
    trees = a.trees.split(",")
    with tempfile.TemporaryDirectory(prefix="vmem-startup-") as home:
        log = str(Path(home) / "answers.jsonl")
        env = {**os.environ, "VMEM_HOME": home}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed vmem runs: from bytecode written once
        table = commands(str(Path(a.memory).resolve()), str(Path(a.image).resolve()), log)
        names = a.only.split(",") if a.only else list(table)
        if "answers" in names:  # its log needs an answer in it
            subprocess.run([sys.executable, "-m", "vmem", *table["classify"]], cwd=home, check=True,
                           env={**env, "PYTHONPATH": os.path.abspath(trees[-1])}, stdout=subprocess.DEVNULL)
        print(json.dumps({"load_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "repeats": a.repeats,
                          "trees": trees}), file=sys.stderr)
        results = []
        for name in names:
            for tree in trees:
                run_once(tree, table[name], env)  # untimed: bytecode, page cache
            runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
            for _ in range(a.repeats):
                for tree in trees:
                    runs[tree].append(run_once(tree, table[name], env))
            for tree in trees:
                r = runs[tree]
                row = {"command": name, "tree": tree,
                       "wall_s": round(statistics.median(x["wall_s"] for x in r), 3),
                       "cpu_s": round(statistics.median(x["cpu_s"] for x in r), 3),
                       "peak_rss_mib": round(max(x["peak_rss_mib"] for x in r), 1)}
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    print(json.dumps({"load_1min_after": os.getloadavg()[0], "results": results}))


if __name__ == "__main__":
    main()
