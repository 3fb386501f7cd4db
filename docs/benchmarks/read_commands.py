"""`vmem info`, `labels` and `history` of a big memory at rest: an earlier vmem (a checkout) against this one.

    python docs/benchmarks/read_commands.py WORKDIR --baseline CHECKOUT [--n 300000] [--repeat 5] [--json OUT]

WORKDIR's memory B as docs/benchmarks/big_memory.py builds it (built there first if missing: N points, a class
forgotten, one relabelled, a journal of 100,000 adds). CHECKOUT: a worktree of the earlier vmem (`git worktree add
/tmp/base COMMIT`), run by the same interpreter with it first on PYTHONPATH. Each command is its own process,
watched as big_memory.py watches them (wall, peak RSS). For each command, in this order:

* baseline, --repeat times: it opens the engine, whose close rewrites its files (counts kept by this vmem no longer
  match them after it: the case of an older vmem writing the memory);
* this vmem once ("first"): the counts no longer match, so it opens the engine too, and its close keeps them;
* this vmem, --repeat times ("at rest"): it reads them.

Medians of each. `vmem points` (which still opens the memory) is run the same way as a control.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from big_memory import VMEM, watch  # beside this script


def runs(args: list[str], tmp: Path, times: int, pythonpath: str | None) -> dict:
    env_before = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        rows = [watch(args, tmp) for _ in range(times)]
    finally:
        if pythonpath is not None:
            if env_before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = env_before
    if any(r["rc"] != 0 for r in rows):
        raise SystemExit(f"{' '.join(args)} failed: {rows}")
    return {"wall_s": statistics.median(r["wall_s"] for r in rows),
            "max_rss_mb": statistics.median(r["max_rss_mb"] for r in rows), "runs": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the earlier vmem")
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    opts = parser.parse_args()
    work = opts.workdir.resolve()
    b = work / "b"
    if not b.exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("big_memory.py")), str(work), "--n",
                        str(opts.n), "--build-only"], check=True)
    baseline = str(opts.baseline.resolve())
    commands = {"info": ["info"], "labels": ["labels"], "history": ["history"],
                "history --op forget": ["history", "--op", "forget"], "points (control)": ["points"]}
    results = {}
    for name, command in commands.items():
        args = [*VMEM, *command, "-m", str(b)]
        row = {"baseline": runs(args, work / "tmp", opts.repeat, baseline),
               "first": runs(args, work / "tmp", 1, None),
               "at rest": runs(args, work / "tmp", opts.repeat, None)}
        results[name] = row
        print(json.dumps({"command": name, **row}), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps({"n": opts.n, "baseline": baseline, "commands": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
