"""`vmem bench rerank`: what the re-ranker costs besides Gemini's own time.

1. Overhead per request without the network: building one `neighbors-v1` request for 50 neighbours
   (query encoding, neighbour thumbnails, parts), with a cold thumbnail cache (every neighbour decoded
   and re-encoded) and a warm one (a neighbour shared with an earlier query).
2. Throughput: 32 requests in flight against the fake Gemini server on loopback, through the real
   google-genai client, cache off, so every request goes over HTTP.

Neighbour images are synthetic 500x375 JPEGs (ImageNet's typical size) unless `--images` points at
a directory of real ones.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image

from .bench_search import machine_info


def _synthetic_images(root: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = np.linspace(0, 255, 500, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
        noise = rng.normal(0, 25, (375, 500, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        p = root / f"n{i:03d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def rerank(
    neighbors: Annotated[int, typer.Option(min=2, max=200, help="neighbours per request")] = 50,
    images: Annotated[Path | None, typer.Option(help="directory of real neighbour images (default synthetic)")] = None,
    thumb_size: Annotated[int, typer.Option(help="neighbour thumbnails' longest side")] = 224,
    cold_reps: Annotated[int, typer.Option(min=1)] = 5,
    warm_reps: Annotated[int, typer.Option(min=1)] = 30,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 32,
    requests: Annotated[int, typer.Option(min=1, help="requests in the throughput run")] = 128,
    server_latency: Annotated[float, typer.Option(help="seconds the fake server waits before answering")] = 0.0,
) -> None:
    """Re-ranker overhead per request (prompt + thumbnails, cold/warm) and throughput against a fake Gemini."""
    from prompts import TemplateRegistry
    from reranker import (
        GeminiReranker,
        RerankNeighbor,
        RerankRequest,
        ThumbnailCache,
        build_prompt,
        candidate_labels,
        encode_query,
    )
    from reranker.testing import FakeGemini

    labels = ["tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if images is not None:
            files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:neighbors]
            if len(files) < neighbors:
                raise typer.BadParameter(f"{images} holds {len(files)} images, fewer than {neighbors}")
        else:
            files = _synthetic_images(root, neighbors)
        nbrs = [RerankNeighbor(id=f"p{i}", label=labels[i % len(labels)], source=str(f), similarity=0.8 - i / 500,
                               weight=1 / (2 + i), rank=i) for i, f in enumerate(files)]
        scores = {lab: 1 / len(labels) for lab in labels}

        def make_request(i: int) -> RerankRequest:
            q = Image.fromarray(np.full((375, 500, 3), i % 255, np.uint8))
            return RerankRequest(image=q, neighbors=nbrs, scores=scores, vote_label=labels[0])

        template = TemplateRegistry().get("neighbors-v1")

        def build(thumbs: ThumbnailCache, i: int) -> tuple[float, Any]:
            t0 = time.perf_counter()
            req = make_request(i)
            prompt = build_prompt(template, req, candidate_labels(req), encode_query(req, 512), thumbs)
            return time.perf_counter() - t0, prompt

        cold = [build(ThumbnailCache(thumb_size), i)[0] for i in range(cold_reps)]
        warm_cache = ThumbnailCache(thumb_size)
        _, prompt = build(warm_cache, 0)
        warm = [build(warm_cache, i)[0] for i in range(warm_reps)]
        inline = sum(len(p.inline_data.data) for p in prompt.parts if p.inline_data)
        text_chars = sum(len(p.text) for p in prompt.parts if p.text) + len(prompt.system)

        with FakeGemini() as fake:
            fake.latency_s = server_latency
            rr = GeminiReranker(api_key="bench", base_url=fake.url, cache=False, concurrency=concurrency,
                                thumb_size=thumb_size, deadline_s=120, attempt_timeout_s=60)
            try:
                rr.rerank_many([make_request(0)])  # warm the thumbnails and the connection pool
                batch_reqs = [make_request(i) for i in range(requests)]
                t0 = time.perf_counter()
                batch = rr.rerank_many(batch_reqs)
                wall = time.perf_counter() - t0
            finally:
                rr.close()
            max_in_flight = fake.max_in_flight
        lat = [o.latency_s for o in batch.outcomes]

    result = {
        "bench": "rerank",
        "machine": machine_info(),
        "settings": {"neighbors": neighbors, "thumb_size": thumb_size, "template": template.ref,
                     "images": str(images) if images else "synthetic 500x375 JPEG", "concurrency": concurrency,
                     "requests": requests, "server_latency_s": server_latency},
        "prompt": {"images": prompt.images, "inline_bytes": inline, "text_chars": text_chars,
                   "est_prompt_tokens_default_res": prompt.images * 258 + text_chars // 4},
        "overhead_ms": {
            "cold_median": round(1000 * statistics.median(cold), 2),
            "cold_p95": round(1000 * _pct(cold, 95), 2),
            "warm_median": round(1000 * statistics.median(warm), 2),
            "warm_p95": round(1000 * _pct(warm, 95), 2),
        },
        "throughput": {
            "requests_per_s": round(requests / wall, 1),
            "wall_s": round(wall, 3),
            "latency_ms_p50": round(1000 * _pct(lat, 50), 1),
            "latency_ms_p95": round(1000 * _pct(lat, 95), 1),
            "max_in_flight_at_server": max_in_flight,
            "reranked": batch.reranked,
            "fallbacks": batch.fallbacks,
        },
    }
    typer.echo(f"machine: {json.dumps(result['machine'])}", err=True)
    typer.echo(f"settings: {json.dumps(result['settings'])}", err=True)
    typer.echo(json.dumps(result))  # one line, as every bench writes it
