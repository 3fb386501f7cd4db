"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from retrieval import MemoryGoneError

from ..schemas import HealthOut, ReadyOut

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)


@router.get("/healthz", summary="Liveness", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Answers as long as the event loop runs, even while images are being embedded."""
    return HealthOut(status="ok")


@router.get("/readyz", summary="Readiness", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "still loading, or the memory is unreachable"}})
async def readyz(request: Request) -> ReadyOut | JSONResponse:
    """Ready once the encoder is loaded and warmed up and the memory answers."""
    service = request.app.state.service
    if service is None or not service.ready:
        body = ReadyOut(status="not ready", detail="the encoder and memory are still loading")
        return JSONResponse(body.model_dump(), status_code=503)
    store = service.memory.store
    try:
        await run_in_threadpool(store.check_available)
    except MemoryGoneError as exc:
        return _not_ready(request, str(exc))
    try:
        points = await run_in_threadpool(store.count)
    except Exception as exc:  # readiness must report, not raise, whatever the backend throws
        return _not_ready(request, f"the memory does not answer: {type(exc).__name__}")
    if getattr(request.app.state, "unready_since", None) is not None:
        log.warning("ready again: the memory answers (%d points)", points)
        request.app.state.unready_since = None
    return ReadyOut(status="ready", points=points, featurizer=store.meta.featurizer.name, read_only=store.read_only)


def _not_ready(request: Request, detail: str) -> JSONResponse:
    """A 503 readiness answer, logged when the service turns unready (a moved memory folder had turned /readyz 503
    with nothing in the log), and not again at each probe until it is ready again."""
    if getattr(request.app.state, "unready_since", None) is None:
        log.error("not ready: %s", detail)
        request.app.state.unready_since = detail
    return JSONResponse(ReadyOut(status="not ready", detail=detail).model_dump(), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "metrics in the Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Requests and latency per route, re-rank fallbacks by reason, cache hits, memory size."""
    service = request.app.state.service
    ready = 0.0
    if service is not None:
        # A scrape still reports the request metrics when the memory is down.
        with contextlib.suppress(Exception):
            await run_in_threadpool(service.refresh_size_metrics)  # a Qdrant server's count: it answers
            if service.ready:
                await run_in_threadpool(service.memory.store.check_available)  # the folder is the one opened
                ready = 1.0
    request.app.state.metrics.ready.set(ready)
    text = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
