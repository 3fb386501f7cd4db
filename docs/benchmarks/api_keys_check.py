"""What checking a request's API key costs (`server.keys.KeyRing.find`): VMEM_API_KEY alone, and with a keys file of
N named keys (the file's stat per request, to see whether it changed, and every key's hash compared), against the
single constant-time comparison of the key as it was before named keys. Each way is timed in turn, `--rounds`
times, over `--checks` checks a round. Prints one JSON object: each way's median microseconds per check.

    python docs/benchmarks/api_keys_check.py [--keys 1,10,100] [--rounds 15] [--checks 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from server.keys import KeyRing

KEY = "bench-key-0123456789abcdef"


def per_check_us(check: Callable[[], object], checks: int) -> float:
    start = time.perf_counter()
    for _ in range(checks):
        check()
    return (time.perf_counter() - start) / checks * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="1,10,100", help="sizes of keys file to time, comma-separated")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--checks", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ways: dict[str, Callable[[], object]] = {
            "before: one key, hmac.compare_digest": lambda: hmac.compare_digest(KEY.encode(), KEY.encode()),
            "VMEM_API_KEY alone": lambda ring=KeyRing(KEY): ring.find(KEY),
        }
        for n in map(int, args.keys.split(",")):
            path = Path(tmp) / f"keys-{n}"
            path.write_text("".join(f"k{i} {hashlib.sha256(f'{KEY}{i}'.encode()).hexdigest()}\n" for i in range(n)))
            os.utime(path, (time.time() - 60, time.time() - 60))  # settled: read once, then only its stat checked
            ring = KeyRing(None, path)
            last = f"{KEY}{n - 1}"  # the file's last key: every hash compared whichever matches
            ways[f"keys file of {n}"] = lambda ring=ring, last=last: ring.find(last)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.rounds):
            for way, check in ways.items():
                seconds[way].append(per_check_us(check, args.checks))
    print(json.dumps({"median_us_per_check": {w: round(statistics.median(s), 3) for w, s in seconds.items()},
                      "rounds": args.rounds, "checks_per_round": args.checks, "python": platform.python_version(),
                      "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
