"""A built memory served inside a hard RAM limit: does it still answer, how fast, and at what recall.

A process's RSS overstates what a memory needs: with the original vectors on disk, the pages read to rescore
stay resident as page cache for as long as nothing else wants the RAM. A Linux memory cgroup makes the
kernel reclaim them at a limit instead, so a run inside one measures what a server with that much RAM gets.
Only the memory is limited: the probe process joins the cgroup after its imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be created here (not Linux, not root, or no memory controller)."""


@dataclass
class MemoryCgroup:
    """A memory cgroup of our own (v2, or v1's memory hierarchy), removed again by `remove`."""

    path: Path
    version: int

    @classmethod
    def create(cls, limit_bytes: int, root: Path = CGROUP_ROOT) -> MemoryCgroup:
        name = f"vmem-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            controllers = root / "cgroup.controllers"
            if controllers.exists() and "memory" in controllers.read_text().split():
                (root / "cgroup.subtree_control").write_text("+memory")
                group = cls(root / name, 2)
                group.path.mkdir()
                group._write("memory.max", str(limit_bytes))
                if (group.path / "memory.swap.max").exists():
                    group._write("memory.swap.max", "0")
            elif (root / "memory" / "memory.limit_in_bytes").exists():
                group = cls(root / "memory" / name, 1)
                group.path.mkdir()
                group._write("memory.limit_in_bytes", str(limit_bytes))
                if (group.path / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no swapping out
                    group._write("memory.memsw.limit_in_bytes", str(limit_bytes))
            else:
                raise CgroupUnavailable(f"no memory controller under {root} (cgroup v2 or v1)")
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create a memory cgroup under {root} ({exc}); it needs root") from exc
        return group

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return int(self._read(name)) if (self.path / name).exists() else None

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in self._read(name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        for _ in range(50):  # the kernel frees an exited process's group a moment later
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def evict_from_page_cache(path: Path) -> None:
    """Drop the memory's files from the page cache, so that the pages the probe reads are charged to its cgroup.

    (Pages already cached stay charged to whoever read them first and would not count against the limit.)
    """
    os.sync()
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


_LIMITED_PROBE = """
import json, os, statistics, sys, time
from pathlib import Path
import numpy as np
import qdrant_edge  # noqa: F401 - loaded before joining: the library's pages are not the memory's
from retrieval import open_store
from retrieval.store import ORIGINAL_VECTORS_FILE
from vmem.cli.bench_search import recall_at, rss_mb, synthetic_indices
memory, query_file, truth_file, fresh_file, k, procs_file, warmup, search = sys.argv[1:9]
k, queries, truth, fresh = int(k), np.load(query_file), np.load(truth_file), np.load(fresh_file)
rss0 = rss_mb()
Path(procs_file).write_text(str(os.getpid()))
t = time.perf_counter()
store = open_store(memory)
res = {"open_s": round(time.perf_counter() - t, 2)}
store.meta.index = store.meta.index.model_copy(update=json.loads(search))  # search settings to try
# A long-running server ends up with as much of what its searches read cached as its RAM allows: read those
# files once (the original vectors first, so that the graph and payload are the most recently used), so that
# every limit is timed near that steady state rather than while its cache fills.
if warmup == "prefetch":
    store.prefetch()
else:  # "whole-files": what prefetch read up to vmem 7dac189, the codes file and preallocated holes included
    buffer = bytearray(8 << 20)
    for f in sorted((f for f in Path(memory, "shard").rglob("*") if f.is_file()
                     and not {"wal", "payload_index"} & set(f.parts)
                     and not (store.meta.index.codes_only and str(f).endswith(ORIGINAL_VECTORS_FILE))),
                    key=lambda f: not str(f).endswith(ORIGINAL_VECTORS_FILE)):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass
def batched(qs):
    return [h for s in range(0, len(qs), 100) for h in store.query_batch(qs[s : s + 100], k)]
found = batched(queries)
res["recall_at_50"] = round(recall_at([synthetic_indices(h) for h in found], truth, min(50, k)), 4)
# Timed on queries not asked before (each round its own), as a server sees them.
n = len(queries)
def major_faults():  # pages the process had to wait for the disk for (field 12 of /proc/self/stat)
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[9])
faults = major_faults()
times = []
for r in range(3):
    t = time.perf_counter()
    batched(fresh[r * n : (r + 1) * n])
    times.append(time.perf_counter() - t)
res["qps_batch"] = round(n / statistics.median(times), 1)
res["qps_batch_rounds"] = [round(n / t, 1) for t in times]
res["major_faults_per_query"] = round((major_faults() - faults) / (3 * n), 2)
rows = store.rows_read
singles = fresh[3 * n :]
t = time.perf_counter()
for q in singles:
    store.query(q, k)
res["qps_single"] = round(len(singles) / (time.perf_counter() - t), 1)
if store.meta.index.doubtful:  # rows of vmem's copy of the originals, read by os.pread (not faults)
    res["rows_read_per_query"] = round((store.rows_read - rows) / len(singles), 2)
res["rss_growth_mb"] = round(rss_mb() - rss0, 1)
print(json.dumps(res))
"""


def fresh_queries_needed(queries: int) -> int:
    """Never-asked queries `serve_within_limit` times for `queries` a round: three batched rounds, then up to
    500 one by one."""
    return 3 * queries + min(queries, 500)


def serve_within_limit(memory: Path, queries: np.ndarray, truth: np.ndarray, fresh: np.ndarray, k: int,
                       limit_bytes: int, timeout_s: float = 1800,
                       warmup: Literal["prefetch", "whole-files"] = "prefetch",
                       search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Open `memory` in a fresh process limited to `limit_bytes` of RAM and time its queries.

    `fresh` holds queries from the same distribution as `queries`, never asked before: three rounds of
    len(queries) batched, then the rest one by one. Returns the limit, the cgroup's peak usage, whether the
    kernel killed the process for memory, and (if it lived) recall@50 of `queries` against `truth` and the
    median batched (and each round's) and the single QPS on `fresh`. Before the queries the memory is warmed
    by `store.prefetch()`, or, to compare, by reading its files whole as prefetch did up to vmem 7dac189.
    `search` overrides the memory's search settings (e.g. {"rescore_doubtful": False}) in that process.
    """
    res: dict[str, Any] = {"limit_mb": round(limit_bytes / 2**20, 1)}
    try:
        group = MemoryCgroup.create(limit_bytes)
    except CgroupUnavailable as exc:
        return {**res, "skipped": str(exc)}
    files = {name: memory.parent / f"{memory.name}-limited-{name}.npy" for name in ("queries", "truth", "fresh")}
    for name, array in zip(files, (queries, truth, fresh), strict=True):
        np.save(files[name], array)
    try:
        evict_from_page_cache(memory)
        out = subprocess.run([sys.executable, "-c", _LIMITED_PROBE, str(memory), *map(str, files.values()), str(k),
                              str(group.procs_file), warmup, json.dumps(search or {})],
                             capture_output=True, text=True, timeout=timeout_s)
        peak = group.peak_bytes()
        res["peak_mb"] = None if peak is None else round(peak / 2**20, 1)
        res["oom_killed"] = group.oom_kills() > 0
        if out.returncode == 0:
            res.update(json.loads(out.stdout.strip().splitlines()[-1]))
        elif not res["oom_killed"]:
            raise RuntimeError(f"the limited probe failed (exit {out.returncode}): {out.stderr[-2000:]}")
    finally:
        group.remove()
        for f in files.values():
            f.unlink(missing_ok=True)
    return res
