"""The commands other than classify on a memory of N points: each one's wall time, peak RSS and temporary disk.

    python docs/benchmarks/big_memory.py WORKDIR [--n 300000] [--queries 2000] [--journal 100000] [--skip suspects]

Builds, in WORKDIR, memory A with `vmem import` from a synthetic .npz of N class-clustered unit vectors (384
dims, as `vmem bench search` makes them, labelled with Tiny-ImageNet's class ids so that its val images can be
scored against them) under a tiny random DINOv2 saved in WORKDIR (dim 384, so that `vmem eval` embeds real
images into the memory's space: its accuracy means nothing here, its cost does). B is `vmem backup` of A with a
class forgotten and one relabelled, then a journal of --journal one-image adds appended (a service's uploads).
Each command then runs as its own process with TMPDIR pointed at an empty folder, watched from outside twice
a second: wall seconds, peak RSS from wait4 (which counts the memory's mapped files as they are read), the
peak of the anonymous (heap) part, RssAnon, sampled, and the peak bytes allocated under TMPDIR. Repeated
commands (--repeat) print the medians. Needs ~3x the vectors' bytes of disk in WORKDIR (a 300,000-point
memory: 0.5 GB of vectors, ~1.1 GB a memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VMEM = [sys.executable, "-m", "vmem"]
VAL = REPO.parent / "shared" / "data" / "tiny-imagenet-200" / "val"


def allocated(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while walked
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def watch(args: list[str], tmp: Path, ready=None) -> dict:
    """Run `args` with TMPDIR=tmp; `ready`: a callable polled until true, then the process is sent SIGTERM."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "VMEM_AUTH_DISABLED": "true"}
    peaks = {"anon": 0, "tmp": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp.parent)
    stop = threading.Event()
    ready_at: list[float] = []

    def sample() -> None:
        while not stop.is_set():
            peaks["anon"] = max(peaks["anon"], rss_anon(proc.pid))
            peaks["tmp"] = max(peaks["tmp"], allocated(tmp))
            if ready is not None and not ready_at and ready():
                ready_at.append(time.perf_counter() - start)
                proc.send_signal(signal.SIGTERM)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    err = proc.stderr.read()  # type: ignore[union-attr]
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    reader.join()
    left = allocated(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    out = {"rc": proc.returncode, "wall_s": round(ready_at[0] if ready_at else wall, 2),
           "max_rss_mb": round(usage.ru_maxrss / 1024), "peak_anon_mb": round(peaks["anon"] / 2**20),
           "tmp_peak_mb": round(peaks["tmp"] / 2**20), "tmp_left_mb": round(left / 2**20)}
    if proc.returncode not in (0, 1) and not ready_at:
        out["stderr"] = err.decode(errors="replace")[-600:]
    return out


def tiny_dinov2(folder: Path) -> str:
    from transformers import Dinov2Config, Dinov2Model

    if not (folder / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        config = Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, intermediate_size=384,
                              image_size=224, patch_size=14)
        Dinov2Model(config).save_pretrained(folder)
    return f"dinov2:{folder}"


def build(work: Path, n: int, journal: int) -> tuple[Path, Path, str]:
    sys.path.insert(0, str(REPO))
    from vmem.cli.bench_search import synthetic_features

    featurizer = tiny_dinov2(work / "dinov2")
    a, b = work / "a", work / "b"
    if not a.exists():
        wnids = sorted(p.name for p in VAL.iterdir() if p.is_dir())
        vectors, classes, _ = synthetic_features(n, 384, len(wnids), seed=0)
        npz = work / "points.npz"
        np.savez(npz, vectors=vectors, labels=np.array([wnids[c] for c in classes]))
        del vectors
        started = time.perf_counter()
        subprocess.run([*VMEM, "import", str(npz), "-m", str(a), "--featurizer", featurizer], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"import of {n:,} points: {time.perf_counter() - started:.1f} s", flush=True)
        npz.unlink()
    if not b.exists():
        subprocess.run([*VMEM, "backup", "-m", str(a), "--to", str(b)], check=True, stdout=subprocess.DEVNULL)
        wnids = sorted(p.name for p in VAL.iterdir() if p.is_dir())
        subprocess.run([*VMEM, "forget", "-m", str(b), "--label", wnids[0]], check=True, stdout=subprocess.DEVNULL,
                       input=b"y\n")
        subprocess.run([*VMEM, "relabel", "-m", str(b), "--label", wnids[1], "--to", "renamed"], check=True,
                       stdout=subprocess.DEVNULL, input=b"y\n")
        from retrieval.journal import JournalEntry, now

        line = JournalEntry(at=now(), op="add", points=1, labels={wnids[2]: 1}, via="http").model_dump_json() + "\n"
        with open(b / "journal.jsonl", "a", encoding="utf-8") as f:
            f.writelines(line for _ in range(journal))
    return a, b, featurizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_ready(port: int):
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--journal", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip", action="append", default=[])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if opts.build_only:
        build(work, opts.n, opts.journal)
        return
    # Built in another process: a child's peak RSS (wait4) starts from its parent's at the fork, and torch's
    # import would make every command's at least ~500 MB
    subprocess.run([sys.executable, __file__, str(work), "--n", str(opts.n), "--journal", str(opts.journal),
                    "--build-only"], check=True)
    a, b = work / "a", work / "b"
    port = free_port()
    commands: dict[str, tuple[list[str], object]] = {
        "info": ([*VMEM, "info", "-m", str(b)], None),
        "labels": ([*VMEM, "labels", "-m", str(b)], None),
        "history": ([*VMEM, "history", "-m", str(b)], None),
        "history --op forget": ([*VMEM, "history", "-m", str(b), "--op", "forget"], None),
        "points": ([*VMEM, "points", "-m", str(b)], None),
        "export": ([*VMEM, "export", str(work / "export.npz"), "-m", str(a), "--force"], None),
        "diff": ([*VMEM, "diff", str(a), str(b)], None),
        "serve --read-only": ([*VMEM, "serve", "--read-only", "-m", str(a), "--port", str(port), "--log-level",
                               "warning"], serve_ready(port)),
        "eval": ([*VMEM, "eval", "-m", str(a), "--dataset", str(VAL), "--limit", str(opts.queries), "--out",
                  str(work / "eval-out"), "--cache", str(work / "features"), "--k-max", "50"], None),
        "suspects": ([*VMEM, "suspects", "-m", str(a)], None),
        "prune": ([*VMEM, "prune", "-m", str(b), "--mode", "soft"], None),
    }
    sizes = {"a_mb": round(allocated(a) / 2**20), "b_mb": round(allocated(b) / 2**20),
             "journal_b_mb": round((b / "journal.jsonl").stat().st_size / 2**20)}
    print(json.dumps({"n": opts.n, "featurizer": "tiny random dinov2 (384)", **sizes}), flush=True)
    results = {}
    for name, (args, ready) in commands.items():
        if name.split()[0] in opts.skip or (opts.only and name.split()[0] not in opts.only):
            continue
        runs = [watch(args, work / "tmp", ready) for _ in range(opts.repeat if name != "prune" else 1)]
        row = {key: (statistics.median(r[key] for r in runs) if isinstance(runs[0][key], float | int) else runs[0][key])
               for key in runs[0]}
        results[name] = row
        print(json.dumps({"command": name, **row}), flush=True)
        (work / "export.npz").unlink(missing_ok=True)
    if opts.json:
        opts.json.write_text(json.dumps({"n": opts.n, **sizes, "commands": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
