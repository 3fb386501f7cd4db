"""The per-query numpy products vmem does, through OpenBLAS at 1 thread and at its default, quiet and beside torch.

    python docs/benchmarks/blas_threads.py [--reps 200] [--rounds 2] > docs/benchmarks/blas-threads.json

numpy reads OPENBLAS_NUM_THREADS when it is first imported, so each setting runs in a child process of its own:
the variable unset (OpenBLAS's default, one thread a core) or 1. Each child times, in one process, the products
as the code does them (shapes of EfficientNet-Lite0's 1280-d features) and the same products by einsum, which
runs on the calling thread and never wakes BLAS's threads:

- DMN static readout (`retrieval.dmn.readout`): keys @ q over a query's kept neighbours (float64), then the
  class prototypes @ q; the whole readout as well.
- DMN dynamic memory (`DynamicMemory.probabilities` on a full stream, 200 classes x 50 slots): feats @ q over
  10,000 x 1280 float32, and the whole readout (as the code now does it); a young stream's used rows (600 x 1280
  float32); `_update_gram`'s 50 x 1280 float64 product of an update.
- Exact search (eval/exact.py, product="numpy"): a 256-query block against 8,192 memory rows, float32: the large
  product that needs BLAS's threads.

"busy" runs a torch forward (EfficientNet-Lite0 on one 224 x 224 image, as a service thread embedding) in a loop
on another thread while the products are timed, as `vmem serve` embeds and classifies at once. Settings
alternate round by round; the figures are the medians over rounds of each round's median (and p99), in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--reps", type=int, default=200, help="timed calls of each product in each child")
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--child", default="", help=argparse.SUPPRESS)
args = parser.parse_args()


def child(state: str) -> dict:
    import numpy as np

    from retrieval.dmn import DynamicMemory, readout

    rng = np.random.default_rng(0)

    def unit(*shape: int, dtype=np.float32) -> np.ndarray:
        x = rng.standard_normal(shape).astype(dtype)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    d = 1280
    q64, q32 = unit(d, dtype=np.float64), unit(d)
    keys50, keys200 = unit(50, d, dtype=np.float64), unit(200, d, dtype=np.float64)
    ids50, ids200 = rng.integers(0, 20, 50), rng.integers(0, 60, 200)
    protos = unit(20, d, dtype=np.float64)
    full = unit(10_000, d)
    young = full[:600].copy()
    slot = unit(50, d, dtype=np.float64)
    dyn = DynamicMemory(d, slots=50)
    labels = [f"c{i}" for i in range(200)]
    for i, lab in enumerate(labels):
        for j in range(50):
            dyn.write(full[i * 50 + j], lab, 1.0)
    block_q, block_m = unit(256, d), unit(8192, d)
    out = np.empty((256, 8192), np.float32)

    cases = {
        "readout keys@q 50x1280 f64": lambda: keys50 @ q64,
        "readout keys@q 50x1280 f64 einsum": lambda: np.einsum("nd,d->n", keys50, q64),
        "readout keys@q 200x1280 f64": lambda: keys200 @ q64,
        "readout keys@q 200x1280 f64 einsum": lambda: np.einsum("nd,d->n", keys200, q64),
        "readout protos@q 20x1280 f64": lambda: protos @ q64,
        "readout protos@q 20x1280 f64 einsum": lambda: np.einsum("nd,d->n", protos, q64),
        "readout() whole, 50 neighbours": lambda: readout(q64, keys50, ids50, 200),
        "readout() whole, 200 neighbours": lambda: readout(q64, keys200, ids200, 200),
        "dynamic update_gram 50x1280 f64": lambda: slot @ slot[3],
        "dynamic update_gram 50x1280 f64 einsum": lambda: np.einsum("nd,d->n", slot, slot[3]),
        "dynamic used rows@q 600x1280 f32": lambda: young @ q32,
        "dynamic used rows@q 600x1280 f32 einsum": lambda: np.einsum("nd,d->n", young, q32),
        "dynamic feats@q 10000x1280 f32": lambda: full @ q32,
        "dynamic feats@q 10000x1280 f32 einsum": lambda: np.einsum("nd,d->n", full, q32),
        "dynamic probabilities() full stream": lambda: dyn.probabilities(q32, labels),
        "exact block 256x1280 @ 1280x8192 f32": lambda: np.matmul(block_q, block_m.T, out=out),
    }
    stop = threading.Event()
    forwards = [0]
    if state == "busy":
        import torch

        from retrieval import load_featurizer

        feat = load_featurizer("efficientnet-lite0")
        feat.warm_up()
        x = torch.rand(1, 3, 224, 224)

        def loop() -> None:
            with torch.inference_mode():
                while not stop.is_set():
                    feat.forward(x)
                    forwards[0] += 1

        busy = threading.Thread(target=loop, daemon=True)
        busy.start()
        time.sleep(1.0)
    result = {}
    start = time.perf_counter()
    for name, fn in cases.items():
        for _ in range(5):
            fn()
        reps = args.reps if "exact" not in name and "10000" not in name and "full" not in name else args.reps // 4
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        ms = 1000 * np.asarray(times)
        result[name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    stop.set()
    if state == "busy":
        busy.join()  # torch's threads torn down mid-forward at exit abort the process
    result["_torch_forwards_per_s"] = forwards[0] / (time.perf_counter() - start) if state == "busy" else 0.0
    return result


if args.child:
    print(json.dumps(child(args.child)))
    sys.exit(0)

import numpy as np  # noqa: E402 - the parent never multiplies; imported after the child's early exit

from vmem.cli.bench_search import machine_info  # noqa: E402

settings = {"default": None, "1": "1"}
runs: dict[tuple[str, str], list[dict]] = {}
loads = []
for r in range(args.rounds):
    for state in ("quiet", "busy"):
        for label, value in (settings.items() if r % 2 == 0 else reversed(settings.items())):
            env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
            if value is not None:
                env["OPENBLAS_NUM_THREADS"] = value
            loads.append(os.getloadavg()[0])
            done = subprocess.run([sys.executable, __file__, "--child", state, "--reps", str(args.reps)], env=env,
                                  capture_output=True, text=True, check=True)
            runs.setdefault((state, label), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r} {state} threads={label} load {loads[-1]:.1f}", file=sys.stderr)

table: dict[str, dict] = {}
for (state, label), rs in runs.items():
    for name in rs[0]:
        if name.startswith("_"):
            table.setdefault("torch forwards/s", {})[f"{state} threads={label}"] = round(
                float(np.median([x[name] for x in rs])), 1)
            continue
        cell = {s: round(float(np.median([x[name][s] for x in rs])), 3) for s in ("p50", "p99")}
        table.setdefault(name, {})[f"{state} threads={label}"] = cell
cols = [f"{s} threads={t}" for s in ("quiet", "busy") for t in settings]
print("| product (ms, p50 / p99) | " + " | ".join(cols) + " |", file=sys.stderr)
for name, row in table.items():
    cells = [f"{row[c]['p50']:.3f} / {row[c]['p99']:.3f}" if isinstance(row.get(c), dict) else str(row.get(c, ""))
             for c in cols]
    print(f"| {name} | " + " | ".join(cells) + " |", file=sys.stderr)
print(json.dumps({"machine": machine_info(), "loadavg_1min_at_each_child": loads, "reps": args.reps,
                  "rounds": args.rounds, "ms": table}, indent=1))
