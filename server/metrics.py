"""Prometheus metrics, one registry per app (so tests can build many apps in one process).

Route labels are the route *templates* (`/v1/memory/points/{point_id}`), never raw paths, so a
scan of random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval.store import ERASE_ADVISED_DELETED_SHARE, IndexUpkeep
from vmem import __version__

from .problems import HTTP_METHODS

# Up to two minutes: a re-ranked request waits up to the Gemini deadline (60 s by default) and its queue.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A fallback's `reason` label is the error class behind it (reranker/_errors.py), or one of the service's own.
FALLBACK_REASONS = ("NoApiKeyError", "DeadlineExceededError", "QuotaExceededError", "UpstreamError",
                    "AttemptsTimedOutError", "ConnectionFailedError", "RequestRejectedError", "KeyRefusedError",
                    "InvalidAnswerError",
                    "NonCandidateAnswerError",
                    "StepBudgetError", "CircuitOpenError", "NothingToRerankError", "UnexpectedError", "NotConfigured",
                    "Other")
EDIT_OPS = ("add", "relabel", "forget", "name")
GEMINI_TOKEN_KINDS = ("prompt", "output", "thinking")  # the re-ranker's Usage.<kind>_tokens
POOLS = ("embedding", "edit", "rerank", "read", "import", "backup")
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vmem_http_requests_total", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        # Requests being received or answered: a client trickling an upload shows here, not among the answered
        self.in_progress = Gauge("vmem_http_requests_in_progress", "HTTP requests begun and not yet answered",
                                 registry=r)
        # The process's own (RSS, open files against their limit, start time) and which vmem and Python: a registry
        # of its own has none of the default one's
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("vmem_build", "The vmem version serving", registry=r).info({"version": __version__})
        self.latency = Histogram("vmem_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.classified = Counter("vmem_images_classified_total", "Images classified", registry=r)
        self.out_of_distribution = Counter("vmem_out_of_distribution_total",
                                           "Classified images flagged out of distribution", registry=r)
        self.rerank_fallbacks = Counter("vmem_rerank_fallbacks_total",
                                        "Re-ranking asked for but the vote was used, by reason", ["reason"],
                                        registry=r)
        self.cache = Counter("vmem_result_cache_total", "Classify answer cache lookups", ["result"], registry=r)
        self.answer_log_failures = Counter("vmem_answer_log_failures",
                                           "Answers that VMEM_ANSWER_LOG could not log (a full or read-only disk)",
                                           registry=r)
        self.rerank_cache = Counter("vmem_rerank_cache_total", "Re-ranker answer cache lookups", ["result"],
                                    registry=r)
        # /readyz's answer, for an alert from the scrape alone: a memory folder moved away (every edit a 503) or a
        # Qdrant server gone left classify, /healthz and the size gauges as they were
        self.ready = Gauge("vmem_ready", "1 while the service is ready (/readyz): the memory answers and its folder is "
                           "the one opened; 0 otherwise", registry=r)
        self.memory_points = Gauge("vmem_memory_points", "Points in the memory", registry=r)
        self.memory_labels = Gauge("vmem_memory_labels", "Distinct labels in the memory", registry=r)
        self.edits = Counter("vmem_memory_edits_total",
                             "Points added, forgotten or relabelled, and labels named, through the API", ["op"],
                             registry=r)
        self.rerank_seconds = Histogram("vmem_rerank_duration_seconds",
                                        "Time the re-ranker took for one image (Gemini's calls and retries, or "
                                        "its cache), fallbacks included", buckets=LATENCY_BUCKETS, registry=r)
        self.gemini_tokens = Counter("vmem_gemini_tokens_total", "Tokens Gemini counted for re-ranking requests "
                                     "(answers from a cache cost none)", ["kind"], registry=r)
        self.gemini_requests = Counter("vmem_gemini_requests_total", "Requests sent to Gemini, retries included",
                                       registry=r)
        pools = ("embedding: classify; edit: adds, forgets, relabels and names; rerank: classify with rerank=true; "
                 "read: history and point listings; import: imports; backup: backups")
        self.work_queued = Gauge("vmem_work_queued", f"Requests waiting for a thread of the pool ({pools})", ["pool"],
                                 registry=r)
        self.work_running = Gauge("vmem_work_running", f"Requests running on a thread of the pool ({pools})", ["pool"],
                                  registry=r)
        # Every series from the start: a counter first seen at its first event makes that event invisible to
        # increase() and to alerts.
        for reason in FALLBACK_REASONS:
            self.rerank_fallbacks.labels(reason)
        for counter in (self.cache, self.rerank_cache):
            for result in ("hit", "miss"):
                counter.labels(result)
        for op in EDIT_OPS:
            self.edits.labels(op)
        for kind in GEMINI_TOKEN_KINDS:
            self.gemini_tokens.labels(kind)
        for pool in POOLS:
            self.work_queued.labels(pool)
            self.work_running.labels(pool)
        # Seconds at 200k points, ~9 at 1.28M (one 640k-point segment rewritten): buckets up to minutes.
        # Backups over HTTP (POST /v1/memory/backup), for an alert on one failing or none made for a day: no edit,
        # the journal records none. `failed`: any refused once its key was taken (no VMEM_BACKUP_DIR, a name taken,
        # a full or unwritable disk). The time is this process's: 0 until its first backup.
        self.backups = Counter("vmem_backups", "Backups asked for over HTTP, by result (ok, failed)", ["result"],
                               registry=r)
        for result in ("ok", "failed"):
            self.backups.labels(result)
        self.backup_last_success = Gauge("vmem_backup_last_success_timestamp_seconds",
                                         "When this process last made a backup (Unix time; 0: none yet)", registry=r)
        self.erase_seconds = Histogram("vmem_erase_duration_seconds",
                                       "Time to rewrite the memory's files without the forgotten points (erase=true)",
                                       buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160), registry=r)

    def count_rows_read(self, rows_read: Callable[[], int]) -> None:
        """Export the memory's own count of original vectors read to re-rank doubtful candidates (0 unless it
        does): an operator divides it by the searches to see how many disk reads a query costs."""
        self.registry.register(_RowsRead(rows_read))


    def report_index_upkeep(self, upkeep: Callable[[], IndexUpkeep | None]) -> None:
        """Export how far an embedded memory's index has drifted from its points, as last counted (`upkeep()`;
        None: not known, a Qdrant server's, and no series rather than a wrong 0)."""
        self.registry.register(_IndexUpkeep(upkeep))

    def report_circuit(self, state: Callable[[], str | None]) -> None:
        """Export the re-ranker's circuit breaker state (`state()`: closed, half-open, open; None: no re-ranker)."""
        self.registry.register(_CircuitState(state))


class _CircuitState(Collector):
    def __init__(self, state: Callable[[], str | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.state()
        if now is not None:
            yield GaugeMetricFamily("vmem_rerank_circuit_state", "The re-ranker's circuit: 0 closed (Gemini asked), "
                                    "1 half-open (one trial request), 2 open (the vote, Gemini not asked)",
                                    value=CIRCUIT_STATES.get(now, 2))


class _IndexUpkeep(Collector):
    def __init__(self, upkeep: Callable[[], IndexUpkeep | None]) -> None:
        self.upkeep = upkeep

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.upkeep()
        if now is None:
            return
        yield GaugeMetricFamily("vmem_memory_unindexed_points", "Points searched without the index, in full (added or "
                                "edited since it was built, or too few to index)", value=now.unindexed)
        yield GaugeMetricFamily("vmem_memory_index_deleted_points", "Copies the index still holds, marked deleted, of "
                                "points forgotten or edited since it was built", value=now.deleted_in_index)
        yield GaugeMetricFamily("vmem_memory_index_deleted_ratio", "Share of the index's vectors deleted: searches "
                                "drift from exact ones as it grows (README, \"Upkeep\")", value=now.deleted_share)
        yield GaugeMetricFamily("vmem_memory_erase_advised", f"1 where the index is {ERASE_ADVISED_DELETED_SHARE:.0%} "
                                "deleted or more: time for POST /v1/memory/erase", value=float(now.advice is not None))


class _RowsRead(Collector):
    def __init__(self, rows_read: Callable[[], int]) -> None:
        self.rows_read = rows_read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("vmem_original_rows_read", "Original vectors read from the memory's own copy "
                                  "to re-rank doubtful candidates", value=self.rows_read())


def route_name(scope: Scope, request_scope: Scope | None = None) -> str:
    """The template of the route that answered; `request_scope` is the scope as it came in, before routing."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Starlette's own routes (/openapi.json, /docs, the /static mount) leave no `route` in the scope: match
    # them here, on the scope as it came in (a mount rewrites `root_path`).
    if request_scope is not None:
        for candidate in getattr(request_scope.get("app"), "routes", ()):
            path = getattr(candidate, "path", None)
            if isinstance(path, str) and candidate.matches(request_scope)[0] != Match.NONE:
                return path
    return "<unmatched>"


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()
        request_scope = dict(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m = self.metrics
            m.in_progress.dec()
            route = route_name(scope, request_scope)
            # A client names the method: any other word would be a new time series, kept until the process ends.
            method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
            m.requests.labels(method, route, str(status)).inc()
            m.latency.labels(method, route).observe(time.perf_counter() - start)
