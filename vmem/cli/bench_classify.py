"""`vmem bench classify`: single-image latency, in-process and over HTTP on loopback, re-ranking off.

Requests go one at a time (latency, not throughput: `vmem bench load` measures that), over the
same images in both modes, after a warm-up. The HTTP service's answer cache is off, so every
request decodes, embeds and searches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ._common import DEFAULT_MEMORY, MemoryOpt, expand_images, open_memory
from .bench_load import start_service, stop_service
from .bench_search import machine_info


def _summary(latencies: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(latencies)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def classify(
    images: Annotated[list[Path], typer.Argument(help="query images or directories")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    requests: Annotated[int, typer.Option(min=1, max=5000, help="timed requests per mode")] = 200,
    k: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="untimed requests first")] = 10,
    http: Annotated[bool, typer.Option(help="also measure over HTTP (vmem serve on 127.0.0.1)")] = True,
) -> None:
    """Single-image classify latency p50/p99, in-process and over HTTP."""
    import httpx

    paths = expand_images(images, sample=requests, seed=0)
    if not paths:
        raise typer.BadParameter("no images found", param_hint="IMAGES")
    seq = [paths[i % len(paths)] for i in range(requests)]
    machine = machine_info()
    typer.echo(f"machine: {json.dumps(machine)}", err=True)
    typer.echo(f"settings: memory={memory} requests={requests} (p99 is the slowest 1%: read it beside that count) "
               f"k={k} warmup={warmup} http={http}", err=True)
    result: dict = {"machine": machine, "memory": str(memory), "requests": requests, "k": k}
    mem = open_memory(memory, None)
    with mem:
        result["memory_points"] = mem.store.count()
        result["featurizer"] = mem.store.meta.featurizer.name
        mem.featurizer.warm_up()  # as `vmem serve` readies it, not as a one-off command
        for p in seq[:warmup]:
            mem.classify([p], k=k, rule="rank")
        lat = []
        for p in seq:
            t = time.perf_counter()
            mem.classify([p], k=k, rule="rank")
            lat.append(time.perf_counter() - t)
    result["in_process"] = _summary(lat)
    typer.echo(f"in-process: {result['in_process']}", err=True)
    if http:
        proc, url = start_service(memory, None, None, cache=False, timeout=180)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                def post(p: Path) -> None:
                    r = client.post("/v1/classify", params={"k": k, "vote": "rank"},
                                    files={"image": (p.name, p.read_bytes(), "image/jpeg")})
                    r.raise_for_status()
                for p in seq[:warmup]:
                    post(p)
                lat = []
                for p in seq:
                    t = time.perf_counter()
                    post(p)
                    lat.append(time.perf_counter() - t)
            result["http"] = _summary(lat)
            typer.echo(f"http: {result['http']}", err=True)
        finally:
            stop_service(proc)
    typer.echo(json.dumps(result))
