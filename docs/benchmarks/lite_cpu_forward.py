"""EfficientNet-Lite's CPU forward: eager, a frozen trace, BatchNorm fused by hand, and torch.compile.

    python docs/benchmarks/lite_cpu_forward.py [--variants efficientnet-lite0] [--batch-sizes 1,16,32,128]
        [--repeats 7] [--chunk 16] [--compile] [--threads N]

torch 2.13 deprecates torch.jit.trace / freeze / optimize_for_inference, which the featurizer had used on the
CPU to fold BatchNorm into the convolutions. This times the pooled-feature forward (what `Featurizer.forward`
runs, channels_last, under inference_mode) each way, on the shipped ImageNet weights and random input at the
variant's own resolution, a batch in forwards of at most --chunk images as `Featurizer.embed_tensors` runs
it on the CPU (16; 0: the whole batch in one forward):

    eager    the model as loaded (BatchNorm as its own op)
    traced   torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(...)))   (the old CPU path)
    fused    each conv/BatchNorm pair fused by torch.nn.utils.fusion.fuse_conv_bn_eval, run eagerly
    compiled torch.compile of the fused model (with --compile; needs a C compiler, minutes of CPU)

Each repeat runs every way once in turn (alternated, so the machine's load falls on them alike) after untimed
warm-up calls; figures are the medians of the repeats, in ms per batch (wall and the process's CPU time) and
images/s. On a loaded machine run it with --threads 1: OpenMP's two threads on two busy cores wait on each
other (a 2-core machine at load 9 took 0.6-1 s a forward of one image, against 50-60 ms on one thread).
The one-off costs (trace, fuse, compile with its first call) are timed once each. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from retrieval.featurizers import _LITE_PARAMS, _PooledFeatures, build_efficientnet_lite, fuse_batchnorm
from vmem.cli.bench_search import machine_info


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def in_chunks(f: Callable[[torch.Tensor], torch.Tensor], chunk: int, x: torch.Tensor) -> list[torch.Tensor]:
    return [f(x[i : i + chunk]) for i in range(0, len(x), chunk)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="efficientnet-lite0")
    ap.add_argument("--batch-sizes", default="1,16,32,128")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    out: dict = {"machine": machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "repeats": args.repeats, "results": []}
    torch.manual_seed(0)
    for variant in args.variants.split(","):
        res = _LITE_PARAMS[variant][2]
        eager = _PooledFeatures(build_efficientnet_lite(variant).to(memory_format=torch.channels_last)).eval()
        fused_net = build_efficientnet_lite(variant)
        one_off: dict[str, float] = {"fuse_s": timed(lambda: fuse_batchnorm(fused_net))}  # noqa: B023
        fused = _PooledFeatures(fused_net.to(memory_format=torch.channels_last)).eval()
        for bs in batch_sizes:
            x = torch.randn(bs, 3, res, res).contiguous(memory_format=torch.channels_last)
            ways: dict[str, Callable[[torch.Tensor], Any]] = {"eager": eager, "fused": fused}
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the very calls this compares
                t0 = time.perf_counter()
                ways["traced"] = torch.jit.optimize_for_inference(
                    torch.jit.freeze(torch.jit.trace(eager, x[:1], check_trace=False)))
                one_off[f"trace_s_bs{bs}"] = time.perf_counter() - t0
                chunk = args.chunk or bs
                if args.compile:
                    compiled = torch.compile(fused)
                    one_off[f"compile_first_call_s_bs{bs}"] = timed(lambda: compiled(x[:chunk]))  # noqa: B023
                    ways["compiled"] = compiled
                ways = {name: functools.partial(in_chunks, f, chunk) for name, f in ways.items()}
                ref = torch.cat(in_chunks(eager, chunk, x))
                agree = {name: float(torch.nn.functional.cosine_similarity(torch.cat(f(x)), ref).min())
                         for name, f in ways.items()}
                for _ in range(args.warmup):
                    for f in ways.values():
                        f(x)
                times: dict[str, list[float]] = {name: [] for name in ways}
                cpu: dict[str, list[float]] = {name: [] for name in ways}
                for _ in range(args.repeats):
                    for name, f in ways.items():
                        t0, c0 = time.perf_counter(), time.process_time()
                        f(x)
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
            row = {"variant": variant, "resolution": res, "batch": bs, "chunk": min(chunk, bs),
                   "min_cosine_vs_eager": agree,
                   "ms": {n: round(1e3 * statistics.median(t), 2) for n, t in times.items()},
                   "images_per_s": {n: round(bs / statistics.median(t), 1) for n, t in times.items()},
                   "cpu_ms": {n: round(1e3 * statistics.median(t), 2) for n, t in cpu.items()}}
            row["fused_vs_traced"] = round(statistics.median(times["traced"]) / statistics.median(times["fused"]), 3)
            row["fused_vs_eager"] = round(statistics.median(times["eager"]) / statistics.median(times["fused"]), 3)
            row["cpu_fused_vs_traced"] = round(statistics.median(cpu["traced"]) / statistics.median(cpu["fused"]), 3)
            out["results"].append(row)
            print(json.dumps(row), flush=True)
        out.setdefault("one_off_s", {})[variant] = {k: round(v, 3) for k, v in one_off.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
