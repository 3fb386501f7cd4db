"""Random 4 KiB reads per second from this machine's disk, one thread and many: what rescoring from disk can reach.

Inside a RAM limit too small to cache the original vectors, each candidate a query rescores is a random
read of one page. This writes a scratch file (1 GiB by default), drops it from the page cache
(posix_fadvise DONTNEED) before each measurement, and times uncached random page reads with 1 to 64
threads (os.pread releases the GIL, so threads overlap their reads).

    python docs/benchmarks/random_reads.py [--dir /tmp] [--mb 1024] [--reads 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

PAGE = 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--reads", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    fd_path = os.path.join(args.dir, "vmem-random-reads.bin")
    with open(fd_path, "wb") as f:
        for _ in range(args.mb // 4):
            f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(fd_path, os.O_RDONLY)
    pages = os.path.getsize(fd_path) // PAGE
    rng = random.Random(0)
    results = {}
    try:
        for threads in (1, 4, 16, 64):
            rates = []
            for _ in range(args.repeats):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                offsets = [rng.randrange(pages) * PAGE for _ in range(args.reads)]
                t = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda o: os.pread(fd, PAGE, o), offsets, chunksize=16))
                rates.append(args.reads / (time.perf_counter() - t))
            results[f"reads_per_s_{threads}_threads"] = round(statistics.median(rates))
    finally:
        os.close(fd)
        os.unlink(fd_path)
    print(json.dumps({"file_mb": args.mb, "reads": args.reads, **results}))


if __name__ == "__main__":
    main()
