"""`vmem bench load`: many concurrent clients against the classify service on loopback.

Starts `vmem serve` on 127.0.0.1 (a free port) over the given memory, or uses an already running
service on loopback (`--url`), then keeps `--clients` requests in flight for `--duration` seconds,
re-ranking off. Bounded in time (at most 10 minutes) and in requests (`--max-requests`). Reports
p50/p90/p99 latency, throughput and errors. The service's answer cache is off unless `--cache`,
so every request decodes, embeds and searches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import numpy as np
import typer

from retrieval.images import is_image_path

from ._common import expand_images
from .bench_search import machine_info

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_DURATION_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(memory: Path | None, qdrant_url: str | None, threads: int | None, cache: bool,
                   timeout: float) -> tuple[subprocess.Popen[str], str]:
    """`vmem serve` in a child process (so client and server do not share a GIL); waits for /readyz."""
    import httpx

    port = _free_port()
    # A throwaway key: the benchmark never edits the memory, and the key is never printed.
    env = {**os.environ, "VMEM_API_KEY": secrets.token_urlsafe(24), "VMEM_RESULT_CACHE_SIZE": "1024" if cache else "0"}
    cmd = [sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    cmd += ["--qdrant-url", qdrant_url] if qdrant_url else (["--memory", str(memory)] if memory else [])
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise typer.BadParameter(f"vmem serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_service(proc)
    raise typer.BadParameter(f"vmem serve was not ready after {timeout:.0f} s")


def stop_service(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _query_images(images: list[Path] | None, sample: int, seed: int) -> list[tuple[str, bytes]]:
    """The query pool, read into memory once: a fixed sample of the given files and directories."""
    if not images:
        raise typer.BadParameter("give query images with --images (files or directories)", param_hint="--images")
    paths = [p for p in expand_images(images, sample=sample, seed=seed) if p.is_file() and is_image_path(p)]
    if not paths:
        raise typer.BadParameter("no image files found", param_hint="--images")
    return [(p.name, p.read_bytes()) for p in paths]


async def _run_load(url: str, pool: list[tuple[str, bytes]], clients: int, duration: float, max_requests: int,
                    params: dict[str, Any], timeout: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    order = itertools.cycle(random.Random(0).sample(range(len(pool)), len(pool)))
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:

        async def one(name: str, data: bytes) -> None:
            start = time.perf_counter()
            try:
                resp = await http.post("/v1/classify", params=params, files={"image": (name, data)})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                return
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[f"HTTP {resp.status_code}"] += 1

        # Warm-up, not counted: one request per client opens the connections.
        await asyncio.gather(*(http.get("/healthz") for _ in range(clients)))
        end = time.perf_counter() + duration

        async def client() -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                await one(*pool[next(order)])

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
        metrics = (await http.get("/metrics")).text
        stats = (await http.get("/v1/memory/stats")).json()
    lat_ms = np.asarray(latencies) * 1000
    pct = (lambda q: round(float(np.percentile(lat_ms, q)), 1)) if len(lat_ms) else (lambda q: None)
    return {
        "requests": len(latencies) + sum(errors.values()),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "elapsed_s": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2) if elapsed else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100),
                       "mean": round(float(lat_ms.mean()), 1) if len(lat_ms) else None},
        "memory": {"points": stats.get("points"), "labels": stats.get("labels"),
                   "featurizer": stats.get("featurizer", {}).get("name"), "backend": stats.get("backend")},
        "server_cache_hits": _metric(metrics, 'vmem_result_cache_total{result="hit"}'),
    }


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def load(
    images: Annotated[list[Path] | None, typer.Option("--images", "-i", help="query images or directories "
                                                      "(repeatable)")] = None,
    memory: Annotated[Path | None, typer.Option("--memory", "-m", help="serve this embedded memory")] = None,
    qdrant_url: Annotated[str | None, typer.Option("--qdrant-url", help="serve a memory on a Qdrant server")] = None,
    url: Annotated[str | None, typer.Option(help="use a service already running on loopback instead")] = None,
    clients: Annotated[int, typer.Option(min=1, max=256, help="concurrent clients")] = 16,
    duration: Annotated[float, typer.Option(min=1, max=MAX_DURATION_S, help="seconds of load")] = 60,
    max_requests: Annotated[int, typer.Option(min=1, max=1_000_000, help="stop after this many")] = 100_000,
    sample: Annotated[int, typer.Option(min=1, help="distinct query images, sampled from --images")] = 256,
    k: Annotated[int | None, typer.Option(min=1, max=1000, help="neighbours (default: the memory's)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, max=64, help="server embedding threads")] = None,
    cache: Annotated[bool, typer.Option(help="let the service answer repeats from its cache")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="per-request timeout, seconds")] = 60,
    seed: Annotated[int, typer.Option(help="seed of the image sample")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="also write the results here")] = None,
) -> None:
    """Load-test the classify service: concurrent clients on loopback, re-ranking off; p50/p99, throughput."""
    if url is not None:
        host = urlparse(url).hostname or ""
        if host not in LOOPBACK:
            raise typer.BadParameter(f"{host!r} is not loopback: this benchmark only talks to 127.0.0.1",
                                     param_hint="--url")
    pool = _query_images(images, sample, seed)
    proc = None
    if url is None:
        proc, url = start_service(memory, qdrant_url, threads, cache, timeout=300)
    try:
        params: dict[str, Any] = {"rerank": "false", **({"k": k} if k else {})}
        settings = {"clients": clients, "duration_s": duration, "max_requests": max_requests,
                    "query_images": len(pool), "k": k, "server_threads": threads, "answer_cache": cache,
                    "url": url, "started_server": proc is not None}
        typer.echo(f"machine: {json.dumps(machine_info())}", err=True)
        typer.echo(f"settings: {json.dumps(settings)}", err=True)
        results = asyncio.run(_run_load(url, pool, clients, duration, max_requests, params, timeout))
    finally:
        if proc is not None:
            stop_service(proc)
    lat = results["latency_ms"]
    typer.echo(f"{results['ok']} ok, {results['errors']} errors in {results['elapsed_s']} s: "
               f"{results['throughput_rps']} req/s; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms", err=True)
    out = {"benchmark": "load", "machine": machine_info(), "settings": settings, "results": results}
    typer.echo(json.dumps(out))
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
