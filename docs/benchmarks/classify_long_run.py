"""A long `vmem classify --csv --review-csv` run, watched from outside: its resident memory (VmRSS) and the bytes it
has written (wchar: every write(), the sheets, stdout and stderr) sampled twice a second, and its wall time.

    python docs/benchmarks/classify_long_run.py OUT.json -- vmem classify IMAGES... --memory M --csv a.csv ...

Whether RSS grows with the run shows in the samples at each tenth of it; the peak is the last column's largest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def sample(pid: int) -> tuple[int, int] | None:
    """(VmRSS bytes, wchar bytes) of a running process, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        io = Path(f"/proc/{pid}/io").read_text(encoding="utf-8")
    except OSError:
        return None
    rss = [int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")]
    wchar = [int(line.split()[1]) for line in io.splitlines() if line.startswith("wchar:")]
    return (rss[0], wchar[0]) if rss and wchar else None  # an exiting process has neither


def main() -> None:
    out, command = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    start = time.perf_counter()
    with open(out.with_suffix(".stdout"), "wb") as stdout, open(out.with_suffix(".stderr"), "wb") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        samples: list[tuple[float, int, int]] = []
        while proc.poll() is None:
            if (s := sample(proc.pid)) is not None:
                samples.append((time.perf_counter() - start, *s))
            time.sleep(0.5)
    wall = time.perf_counter() - start
    tenths = [samples[min(len(samples) - 1, len(samples) * i // 10)] for i in range(1, 11)] if samples else []
    result = {
        "command": command, "exit_code": proc.returncode, "wall_s": round(wall, 1),
        "peak_rss_mb": round(max(s[1] for s in samples) / 2**20, 1) if samples else None,
        "written_mb_last_sample": round(samples[-1][2] / 2**20, 1) if samples else None,
        "rss_mb_at_each_tenth": [round(s[1] / 2**20, 1) for s in tenths],
        "written_mb_at_each_tenth": [round(s[2] / 2**20, 1) for s in tenths],
        "stdout_mb": round(out.with_suffix(".stdout").stat().st_size / 2**20, 1),
    }
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
