"""The Gemini re-ranker: show Gemini the query and its labelled neighbours, let it pick the label.

One request per query (or a few, in agentic mode), through the `google-genai` SDK:

* inline JPEG parts (neighbour thumbnails, the query), temperature 0, `media_resolution` as configured;
* the answer constrained to the candidate labels by an enum schema (`text/x.enum`), or in agentic mode
  by the enum parameter of the `answer` function, so free text can never pass for a label;
* retries with tenacity on 429, 5xx, timeouts and connection errors, exponential backoff with jitter,
  at least the server's `retryDelay`, all inside one total deadline per query;
* a fallback to the vote, with a reason, on every failure (`RerankError` and subclasses);
* a persistent answer cache that `invalidate(ids)` empties of every answer citing a deleted point.

All network work runs on one private event loop thread, so the synchronous `rerank_many` can be
called from any thread (the CLI, a FastAPI worker) and `arerank_many` from any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import importlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import tenacity
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from prompts import PromptTemplate, TemplateRegistry, default_registry
from retrieval import MemoryStore
from retrieval.files import NoHomeError
from retrieval.text import counted, quoted, visible, without_secrets

from ._breaker import CircuitBreaker
from ._cache import AnswerCache, cache_key, default_cache_path
from ._errors import (
    AttemptsTimedOutError,
    CircuitOpenError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidAnswerError,
    KeyRefusedError,
    NoApiKeyError,
    NonCandidateAnswerError,
    NothingToRerankError,
    QuotaExceededError,
    RequestRejectedError,
    RerankError,
    StepBudgetError,
    UnexpectedError,
    UpstreamError,
)
from ._prompt import (
    BuiltPrompt,
    QueryImage,
    ShownLabels,
    _fmt,
    _weight,
    build_prompt,
    candidate_labels,
    encode_query,
    shown_neighbors,
)
from ._settings import GeminiSettings
from ._thumbs import ThumbnailCache, ThumbnailError
from ._types import RerankBatch, RerankNeighbor, RerankOutcome, RerankRequest, Usage

log = logging.getLogger(__name__)

# A fallback is a WARNING, once a minute per kind (the first at once; the next says how many came between): at
# INFO, a service whose key was revoked answered every re-rank with the vote and logged nothing by default.
FALLBACK_WARNING_EVERY_S = 60.0


def _answer_cache_or_none(path: Any, max_entries: int) -> AnswerCache | None:
    """The answer cache, or None (re-ranking without one, with a warning) where its file cannot be made: a
    read-only home, or VMEM_GEMINI_CACHE_PATH naming a folder, stopped every re-rank with a traceback (a 500 in
    the service) where a cache is only a saving."""
    try:
        return AnswerCache(path, max_entries)
    except (OSError, sqlite3.Error) as exc:
        try:
            where = path if path is not None else default_cache_path()
        except NoHomeError:  # the reason itself: no home to keep it in
            where = "the default folder"
        log.warning("re-ranking without an answer cache: it cannot be kept at %s (%s); set "
                    "VMEM_GEMINI_CACHE_PATH to a writable file, or VMEM_GEMINI_CACHE=false", where, exc)
        return None


class _FallbackLog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def __call__(self, exc: RerankError) -> None:
        kind = type(exc).__name__
        if isinstance(exc, NothingToRerankError):  # the vote was unanimous: nothing went wrong
            log.info("re-ranking not needed: %s", exc)
            return
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < FALLBACK_WARNING_EVERY_S:
                self._unsaid[kind] = self._unsaid.get(kind, 0) + 1
                unsaid = -1
            else:
                self._last[kind] = now
                unsaid = self._unsaid.pop(kind, 0)
        if unsaid < 0:
            log.info("re-ranking fell back to the vote: %s", exc)
        else:
            log.warning("re-ranking fell back to the vote: %s%s", exc,
                        f" ({unsaid} more {kind} since the last such warning)" if unsaid else "")
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Failures that say Gemini cannot answer now, and so count towards opening the circuit.
_OUTAGE = (QuotaExceededError, UpstreamError, DeadlineExceededError)
# Bumped when the request layout changes in a way no template or setting captures.
CACHE_FORMAT = 1
GOOGLE_ENDPOINT = "https://generativelanguage.googleapis.com"
DEFAULT_EXEMPLARS = 4  # what the exemplars tool returns when Gemini names no n
_MEDIA_RESOLUTION = {
    "low": types.MediaResolution.MEDIA_RESOLUTION_LOW,
    "medium": types.MediaResolution.MEDIA_RESOLUTION_MEDIUM,
    "high": types.MediaResolution.MEDIA_RESOLUTION_HIGH,
}


def api_key_from_env() -> str | None:
    """`GEMINI_API_KEY`, else `GOOGLE_API_KEY` (empty counts as unset)."""
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


@dataclass
class _Ctx:
    """What one query's calls accumulate, kept even when they end in a fallback."""

    deadline: float
    deadline_s: float
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    cited: set[str] = field(default_factory=set)
    server_delay: float | None = None
    stopped_for_deadline: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def _retry_delay(exc: BaseException | None) -> float | None:
    """The server's requested wait: google.rpc.RetryInfo `retryDelay` ("17s"), else `Retry-After`."""
    if not isinstance(exc, genai_errors.APIError):
        return None
    for d in _error_details(exc, "retryDelay"):
        m = re.fullmatch(r"\s*([0-9.]+)s\s*", str(d["retryDelay"]))
        if m:
            return float(m.group(1))
    headers = getattr(getattr(exc, "response", None), "headers", None)
    after = headers.get("retry-after") if headers is not None else None
    if after is None:
        return None
    try:
        return float(after)
    except (TypeError, ValueError):
        pass
    try:  # the other form HTTP allows: a date
        return max(0.0, (email.utils.parsedate_to_datetime(str(after)) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


def _http_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """The class `name` from httpx and from httpx2 (the fork the SDK prefers when installed)."""
    mods = [httpx]
    with contextlib.suppress(ImportError):
        mods.append(importlib.import_module("httpx2"))
    return tuple(getattr(m, name) for m in mods if hasattr(m, name))


_TIMEOUTS: tuple[type[BaseException], ...] = (*_http_exceptions("TimeoutException"), TimeoutError)
_TRANSPORT = _http_exceptions("TransportError")
with contextlib.suppress(ImportError):  # the SDK sends async requests through aiohttp whenever it is installed
    import aiohttp

    _TRANSPORT = (*_TRANSPORT, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def _no_candidate(response: types.GenerateContentResponse) -> InvalidAnswerError:
    """The error for a reply with no candidate: a prompt Gemini refused says why (`promptFeedback.blockReason`, as
    Gemini names it: "SAFETY", not the SDK's "BlockedReason.SAFETY")."""
    feedback = response.prompt_feedback
    block = feedback.block_reason if feedback else None
    if block is None:
        return InvalidAnswerError("Gemini returned no answer")
    said = f": {feedback.block_reason_message}" if feedback and feedback.block_reason_message else ""
    return InvalidAnswerError(f"Gemini returned no answer (blocked: {getattr(block, 'value', block)}{said})")


def _finish(cand: types.Candidate) -> str:
    """How a candidate ended, as Gemini says it: "finish reason MALFORMED_FUNCTION_CALL"."""
    return f"finish reason {cand.finish_reason.value if cand.finish_reason else 'unknown'}"


def _error_details(exc: genai_errors.APIError, having: str) -> list[dict[str, Any]]:
    """The entries of Google's error body's `details` (RetryInfo, QuotaFailure, ErrorInfo...) that have this field."""
    details = exc.details if isinstance(exc.details, dict) else {}
    found = (details.get("error", details) or {}).get("details", []) or []
    return [d for d in found if isinstance(d, dict) and having in d]


def _page_text(page: str, limit: int = 120) -> str:
    """A reply that is no JSON (a proxy's HTML page) in one short line: its <title>, else its text without tags."""
    title = re.search(r"<title[^>]*>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    text = title[1] if title else re.sub(r"<[^>]*>", " ", re.sub(
        r"<(style|script)\b.*?</\1\s*>", " ", page, flags=re.IGNORECASE | re.DOTALL))
    text = " ".join(html.unescape(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, genai_errors.APIError):
        return exc.code in RETRYABLE_STATUS
    return isinstance(exc, _TIMEOUTS + _TRANSPORT)


def _status(exc: genai_errors.APIError) -> str:
    return f"{exc.code} {exc.status}" if exc.status else str(exc.code)


class _LoopThread:
    """A private asyncio loop on a daemon thread: every Gemini call runs here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vmem-rerank-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("rerank_many() called from the re-ranker's own loop; use arerank_many()")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C or a notebook's interrupt: stop the batch's calls too (cancelling the future cancels the
            # task on the loop), or every remaining request is still sent, and billed, in the background.
            future.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


class GeminiReranker:
    """Re-rank a query's neighbours with Gemini, falling back to the vote with a reason.

    >>> rr = GeminiReranker(model="gemini-3.6-flash", deadline_s=30)
    >>> batch = rr.rerank_many([RerankRequest(image=img, neighbors=nbrs, scores=scores, vote_label="cat")])
    >>> batch.outcomes[0].label, batch.outcomes[0].reranked, batch.outcomes[0].fallback_reason

    Args:
        settings: a `GeminiSettings`; keyword overrides (`model=`, `deadline_s=`, ...) apply on top.
        api_key: default `$GEMINI_API_KEY`, else `$GOOGLE_API_KEY`, read at each call.
        registry: where templates are looked up (default: built-ins plus `$VMEM_TEMPLATES_DIR`).
    """

    id = "gemini"
    Options = GeminiSettings

    def __init__(self, settings: GeminiSettings | None = None, *, api_key: str | None = None,
                 registry: TemplateRegistry | None = None, answer_cache: AnswerCache | None = None,
                 thumbnails: ThumbnailCache | None = None, **overrides: Any) -> None:
        base = settings or GeminiSettings()
        # Keywords win over the given settings (and, being init arguments, over the environment).
        self.settings = GeminiSettings(**{**base.model_dump(), **overrides}) if overrides else base
        self._api_key = api_key
        self._registry = registry
        self.thumbnails = thumbnails if thumbnails is not None else ThumbnailCache(self.settings.thumb_size)
        self.cache = answer_cache if answer_cache is not None else (
            _answer_cache_or_none(self.settings.cache_path, self.settings.cache_max_entries)
            if self.settings.cache else None)
        self._loop = _LoopThread()
        self._clients: dict[str, genai.Client] = {}
        # One breaker per re-ranker, shared by every thread and batch that uses it.
        self.breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_cooldown_s)
        self._log_fallback = _FallbackLog()

    # ------------------------------------------------------------------ configuration

    @property
    def registry(self) -> TemplateRegistry:
        return self._registry or default_registry()

    @property
    def model(self) -> str:
        return self.settings.model

    def api_key(self) -> str | None:
        return self._api_key or api_key_from_env()

    def template(self, name: str | None) -> PromptTemplate:
        """Raises `prompts.UnknownTemplateError` (listing the available ones) for an unknown name."""
        return self.registry.get(name)

    def _client(self, key: str) -> genai.Client:
        # Created on the loop thread; the SDK's own retries are off (attempts=1): tenacity owns them here.
        client = self._clients.get(key)
        if client is None:
            http = types.HttpOptions(base_url=self.settings.base_url,
                                     retry_options=types.HttpRetryOptions(attempts=1))
            client = self._clients[key] = genai.Client(api_key=key, http_options=http)
        return client

    def endpoint(self) -> str:
        """Where requests go, as said in messages: a proxy's user and password, and a query (`?key=`), left
        out, for messages reach answers and logs."""
        url = self.settings.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GOOGLE_ENDPOINT
        return without_secrets(url)

    # ------------------------------------------------------------------ public API

    def rerank_many(self, requests: Sequence[RerankRequest], store: MemoryStore | None = None) -> RerankBatch:
        """Re-rank a batch, at most `settings.concurrency` requests in flight; outcomes in order.

        Args:
            requests: one per query.
            store: the memory, for the agentic tools (`exemplars`, `more_neighbors`).

        Raises:
            prompts.UnknownTemplateError: a request names a template that does not exist
                (checked before any call is made).
        """
        return self._loop.run(self._batch(list(requests), store))

    async def arerank_many(self, requests: Sequence[RerankRequest],
                           store: MemoryStore | None = None) -> RerankBatch:
        """`rerank_many` for callers already on an event loop."""
        return await self._loop.arun(self._batch(list(requests), store))

    def rerank_one(self, request: RerankRequest, store: MemoryStore | None = None) -> RerankOutcome:
        return self.rerank_many([request], store).outcomes[0]

    def invalidate(self, point_ids: Sequence[str]) -> int:
        """Drop cached answers citing any of these points (wire to `VisualMemory.on_forget`)."""
        return self.cache.invalidate(point_ids) if self.cache is not None and point_ids else 0

    def close(self) -> None:
        """Release the HTTP clients, the background loop and the cache; safe to call more than once."""
        if getattr(self, "_closed", False):
            return  # the loop is stopped: running on it again would wait forever
        self._closed = True

        async def _close() -> None:
            for c in self._clients.values():
                await c.aio.aclose()
        try:
            self._loop.run(_close())
        finally:
            self._loop.stop()
            if self.cache is not None:
                self.cache.close()

    # ------------------------------------------------------------------ one query

    async def _batch(self, requests: list[RerankRequest], store: MemoryStore | None) -> RerankBatch:
        templates = {r.template: self.template(r.template) for r in requests}  # fail fast on a bad name
        sem = asyncio.Semaphore(self.settings.concurrency)

        async def one(req: RerankRequest) -> RerankOutcome:
            async with sem:
                return await self._one(req, templates[req.template], store)

        outcomes = list(await asyncio.gather(*(one(r) for r in requests)))
        total = Usage()
        fallbacks: dict[str, int] = {}
        for o in outcomes:
            total = total.add(o.usage)
            if not o.reranked:
                fallbacks[o.error or "unknown"] = fallbacks.get(o.error or "unknown", 0) + 1
        return RerankBatch(outcomes=outcomes, usage=total, reranked=sum(o.reranked for o in outcomes),
                           cached=sum(o.cached for o in outcomes), fallbacks=fallbacks)

    async def _one(self, req: RerankRequest, template: PromptTemplate, store: MemoryStore | None) -> RerankOutcome:
        t0 = time.monotonic()
        ctx = _Ctx(deadline=t0 + self.settings.deadline_s, deadline_s=self.settings.deadline_s)
        candidates = candidate_labels(req)
        base = {"template": template.ref, "template_hash": template.content_hash, "model": self.model,
                "candidates": candidates}

        cache_checked = False

        def fallback(exc: RerankError) -> RerankOutcome:
            self._log_fallback(exc)
            return RerankOutcome(label=req.vote_label, reranked=False, fallback_reason=exc.reason,
                                 error=type(exc).__name__, usage=ctx.usage, attempts=ctx.attempts,
                                 cache_checked=cache_checked,
                                 latency_s=time.monotonic() - t0, trace=ctx.trace, **base)

        if not req.neighbors:
            return fallback(NothingToRerankError("the memory returned no neighbours to re-rank"))
        if len(candidates) < 2:
            only = candidates[0] if candidates else "none"
            # With its name where the memory names it: a WordNet id alone says nothing to the reader
            # Escaped: the reason is shown as it is (the page's badge, the CLI's line), and a label of the memory
            # holding U+202E turned the rest of it backwards
            named = visible(only) + (f" {quoted(name)}" if (name := (req.label_names or {}).get(only)) else "")
            return fallback(NothingToRerankError(f"only one candidate label ({named}): nothing to re-rank"))

        query = await asyncio.to_thread(encode_query, req, self.settings.query_size)
        key = self._key(req, template, query, candidates)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            cache_checked = True
            if hit is not None and not await self._tools_would_show_the_same(hit, req, template, store):
                hit = None  # the memory changed under the tools' searches: ask again (the new answer replaces it)
            if hit is not None:
                return hit.model_copy(update={"cached": True, "cache_checked": True, "attempts": 0, "usage": Usage(),
                                              "latency_s": time.monotonic() - t0})
        key_value = self.api_key()
        if key_value is None:
            return fallback(NoApiKeyError("no Gemini API key (set GEMINI_API_KEY or GOOGLE_API_KEY)"))

        permit = self.breaker.acquire()
        if isinstance(permit, str):  # checked before any thumbnail is made: an open circuit costs nothing
            return fallback(CircuitOpenError(permit))
        try:
            prompt = await asyncio.to_thread(build_prompt, template, req, candidates, query, self.thumbnails)
            ctx.trace.extend(prompt.notes)
            ctx.cited.update(n.id for n in req.neighbors)
            ctx.usage = ctx.usage.model_copy(update={"images": prompt.images})
            client = self._client(key_value)
            if template.agentic:
                label = await self._agentic(ctx, client, template, req, prompt, store)
            else:
                label = await self._classify(ctx, client, template, prompt)
        except RerankError as exc:
            if isinstance(exc, KeyRefusedError):  # every call with this key would be refused: stop uploading
                self.breaker.trip(permit, exc.reason)
            elif isinstance(exc, _OUTAGE):
                self.breaker.failure(permit, exc.reason)
            else:  # Gemini replied (a refusal or an unreadable answer): it is up
                self.breaker.success(permit)
            return fallback(exc)
        except Exception as exc:  # not foreseen here (e.g. a transport's own error): still a fallback, said why
            log.warning("re-ranking failed unexpectedly", exc_info=True)
            self.breaker.failure(permit, type(exc).__name__)
            return fallback(UnexpectedError(
                f"re-ranking failed unexpectedly ({type(exc).__name__}: {without_secrets(str(exc))})"))
        except BaseException:  # cancelled: neither a success nor a failure of Gemini's
            self.breaker.release(permit)
            raise
        self.breaker.success(permit)
        outcome = RerankOutcome(label=label, reranked=True, usage=ctx.usage, attempts=ctx.attempts,
                                cache_checked=cache_checked,
                                latency_s=time.monotonic() - t0, trace=ctx.trace,
                                **{**base, "candidates": prompt.candidates})
        # An answer to a prompt that lost neighbour images (a file moved, a mount down) is not kept: the key
        # cannot tell it from the full prompt's, and it would be served after the images are back.
        lost_images = any(note.get("event") == "neighbor_label_only" for note in prompt.notes)
        if self.cache is not None and not lost_images:
            try:
                await asyncio.to_thread(self.cache.put, key, outcome, ctx.cited)
            except (sqlite3.Error, OSError) as exc:  # a full disk: Gemini's answer stands, asked again next time
                log.warning("the re-ranker's answer could not be cached (%s): it is answered, not kept", exc)
        return outcome

    async def _tools_would_show_the_same(self, hit: RerankOutcome, req: RerankRequest, template: PromptTemplate,
                                         store: MemoryStore | None) -> bool:
        """Whether every tool call behind a cached agentic answer would show Gemini the same points today.

        The key holds the prompt (neighbours, labels, scores), but not what `exemplars` and `more_neighbors`
        returned: points added, forgotten or relabelled since, by this process or another (`vmem forget` never
        builds a re-ranker, so no `invalidate` reaches the cache), change those replies and so maybe the answer.
        Each search is run again (milliseconds, against Gemini's seconds) and compared, ids and labels.
        """
        steps = [t for t in hit.trace if t.get("tool") in ("exemplars", "more_neighbors") and "ids" in t]
        if not steps:
            return True
        if store is None or req.vector is None:
            return False  # cannot be checked: not served
        names = ShownLabels(req.label_names, list(hit.candidates))
        seen = {n.id for n in shown_neighbors(template, req)}
        for step in steps:
            args = step.get("args") or {}
            if step["tool"] == "exemplars":
                label = names.label(str(args.get("label")))
                if label is None:
                    return False
                n = step.get("n") or self._exemplars(int(args.get("n") or DEFAULT_EXEMPLARS))
                hits = await asyncio.to_thread(store.query, req.vector, n, [label])
            else:
                hits = [h for h in await asyncio.to_thread(store.query, req.vector, step["k"], req.labels)
                        if h.id not in seen]
                seen.update(h.id for h in hits)
            if [h.id for h in hits] != step["ids"]:
                return False
            if "labels" in step and [h.label for h in hits] != step["labels"]:  # older cached answers lack labels
                return False
        return True

    def _exemplars(self, wanted: int) -> int:
        """How many exemplars a call asking for `wanted` gets (at least 1, at most the setting)."""
        return min(max(wanted, 1), self.settings.max_exemplars)

    def _key(self, req: RerankRequest, template: PromptTemplate, query: QueryImage, candidates: list[str]) -> str:
        # The names Gemini reads for the labels are part of the prompt (a key without names stays as it was).
        names = {"names": ShownLabels(req.label_names, candidates).texts(candidates)} if req.label_names else {}
        # Another endpoint (a proxy, a compatible server) may answer to the model's name with another model; Google's
        # own is left out so that keys made before the endpoint counted still match.
        endpoint = self.endpoint()
        return cache_key({
            **names,
            **({"endpoint": endpoint} if endpoint != GOOGLE_ENDPOINT else {}),
            "format": CACHE_FORMAT,
            "query": query.sha256,
            # The numbers as the prompt prints them: another vote rule (alpha, tau) gives the same neighbours
            # other weights and scores, and so another prompt (labels-only shows the scores; they order the
            # candidates), without making every float's last bit a new key.
            "neighbors": [[n.id, n.label, _fmt(n.similarity), _fmt(n.weight)] for n in req.neighbors],
            # ... and the weights as `$weight` prints them, to 3 significant digits (the softmax vote's are all 0.000
            # to 3 decimals), where the template prints them: a key of a template that does not stays as it was.
            **({"weights": [_weight(n.weight) for n in req.neighbors]} if template.uses("weight") else {}),
            # more_neighbors' rows captioned as neighbours, no longer as exemplars: a new prompt (a key of a
            # template without the tool stays as it was)
            **({"more_neighbors": "neighbor"} if "more_neighbors" in template.tools else {}),
            "candidates": [[lab, _fmt(req.scores.get(lab, 0.0), 2)] for lab in candidates],
            "labels": sorted(req.labels) if req.labels else None,
            "template": template.ref,
            "template_hash": template.content_hash,
            "model": self.model,
            "settings": self.settings.key_settings(),
        })

    def _config(self, template: PromptTemplate, system: str, **extra: Any) -> types.GenerateContentConfig:
        res = _MEDIA_RESOLUTION.get(self.settings.media_resolution)
        level = self.settings.thinking_level
        # Sent only when set: a model without thinking levels (Gemini 2.5) refuses the field
        thinking = types.ThinkingConfig(thinking_level=types.ThinkingLevel(level.upper())) if level != "unspecified" \
            else None
        return types.GenerateContentConfig(system_instruction=system, temperature=self.settings.temperature,
                                           media_resolution=res, thinking_config=thinking, candidate_count=1, **extra)

    # ------------------------------------------------------------------ plain mode

    async def _classify(self, ctx: _Ctx, client: genai.Client, template: PromptTemplate,
                        prompt: BuiltPrompt) -> str:
        shown = prompt.names.texts(prompt.candidates)
        config = self._config(template, prompt.system, response_mime_type="text/x.enum",
                              response_schema=types.Schema(type=types.Type.STRING, enum=shown))
        contents = [types.Content(role="user", parts=prompt.parts)]
        response = await self._generate(ctx, client, contents, config)
        text = self._answer_text(response)
        if text.startswith('"') and text not in shown:  # an enum answer sometimes comes JSON-quoted
            with contextlib.suppress(json.JSONDecodeError):  # (a label that is itself in quotes stays as written)
                text = str(json.loads(text)).strip()
        return self._check_label(text, prompt.candidates, prompt.names)

    @staticmethod
    def _answer_text(response: types.GenerateContentResponse) -> str:
        if not response.candidates:
            raise _no_candidate(response)
        cand = response.candidates[0]
        texts = [p.text for p in (cand.content.parts if cand.content and cand.content.parts else [])
                 if p.text and not p.thought]
        text = "".join(texts).strip()
        reason = cand.finish_reason.value if cand.finish_reason else None
        if not text:
            raise InvalidAnswerError(f"Gemini's answer was empty ({_finish(cand)})")
        if reason not in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
            # Cut off (MAX_TOKENS) or stopped (SAFETY): "cliff" may be the start of "cliff dwelling".
            raise InvalidAnswerError(f"Gemini's answer {text[:40]!r} was not finished ({_finish(cand)})")
        return text

    @staticmethod
    def _check_label(answer: Any, candidates: list[str], names: ShownLabels) -> str:
        """The candidate label Gemini's answer (a label as shown to it) names."""
        label = names.label(answer) if isinstance(answer, str) else None
        if label is None or label not in candidates:
            shown = answer if not isinstance(answer, str) or len(answer) < 80 else answer[:77] + "..."
            raise NonCandidateAnswerError(
                f"Gemini answered {shown!r}, which is not one of the {len(candidates)} candidate labels")
        return label

    # ------------------------------------------------------------------ HTTP with retries

    async def _generate(self, ctx: _Ctx, client: genai.Client, contents: list[types.Content],
                        config: types.GenerateContentConfig) -> types.GenerateContentResponse:
        s = self.settings
        exp = tenacity.wait_exponential_jitter(initial=s.backoff_initial_s, max=s.backoff_max_s,
                                               jitter=s.backoff_initial_s)

        failed: list[BaseException] = []  # the last attempt's error
        errors: list[BaseException] = []  # every failed attempt's, to tell "all timed out" from "some failed"

        def wait(rs: tenacity.RetryCallState) -> float:
            if rs.outcome and (exc := rs.outcome.exception()):
                failed[:] = [exc]
                errors.append(exc)
            server = _retry_delay(rs.outcome.exception() if rs.outcome else None)
            ctx.server_delay = server
            return max(exp(rs), server or 0.0)

        def stop(rs: tenacity.RetryCallState) -> bool:
            # Once other queries' failures have opened the circuit, this one's retries would be as wasted as theirs.
            if rs.attempt_number >= s.max_attempts or self.breaker.state == "open":
                return True
            ctx.stopped_for_deadline = ctx.remaining() <= rs.upcoming_sleep
            return ctx.stopped_for_deadline

        retrying = tenacity.AsyncRetrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception(_transient),
                                          reraise=True)
        attempts_before = ctx.attempts
        try:
            async for attempt in retrying:
                with attempt:
                    remaining = ctx.remaining()
                    if remaining <= 0:
                        raise DeadlineExceededError(self._deadline_message(ctx))
                    if failed and self.breaker.state == "open":  # opened while this query waited to retry
                        raise failed[0]
                    timeout = min(s.attempt_timeout_s, remaining)
                    cfg = config.model_copy(update={"http_options": types.HttpOptions(
                        timeout=max(1, int(timeout * 1000)), retry_options=types.HttpRetryOptions(attempts=1))})
                    ctx.attempts += 1
                    # httpx's timeout is per read; wait_for bounds the whole call, trickling replies included.
                    response = await asyncio.wait_for(
                        client.aio.models.generate_content(model=self.model, contents=contents, config=cfg),
                        timeout=timeout)
        except DeadlineExceededError:
            raise
        except genai_errors.APIError as exc:
            raise self._api_error(ctx, exc, ctx.attempts - attempts_before) from exc
        except _TIMEOUTS as exc:
            if ctx.remaining() <= 0.05 or ctx.stopped_for_deadline:
                raise DeadlineExceededError(self._deadline_message(ctx)) from exc
            tried = ctx.attempts - attempts_before
            if all(isinstance(e, _TIMEOUTS) for e in errors):  # slow, not failing: counted apart
                every = "all " if tried != 1 else ""
                raise AttemptsTimedOutError(f"Gemini timed out on {every}{counted(tried, 'attempt')}") from exc
            timed_out = sum(isinstance(e, _TIMEOUTS) for e in errors)
            raise UpstreamError(f"Gemini failed on {counted(tried, 'attempt')} ({timed_out} timed out, the last among "
                                f"them; {len(errors) - timed_out} failed)") from exc
        except _TRANSPORT as exc:
            raise ConnectionFailedError(
                f"could not reach Gemini at {self.endpoint()} after "
                f"{counted(ctx.attempts - attempts_before, 'attempt')} "
                f"({type(exc).__name__}: {without_secrets(str(exc))})") from exc
        except genai_errors.UnknownApiResponseError as exc:
            raise InvalidAnswerError("Gemini's reply could not be parsed (not valid JSON)") from exc
        except json.JSONDecodeError as exc:
            page = exc.doc.lstrip()
            why = str(exc) if page.startswith(("{", "[")) or not page else f"not JSON: {_page_text(page)!r}"
            raise InvalidAnswerError(f"Gemini's reply could not be parsed ({why})") from exc
        except (ValueError, TypeError) as exc:  # a 200 whose JSON does not fit the response schema
            raise InvalidAnswerError(f"Gemini's reply could not be parsed ({exc})") from exc
        ctx.usage = ctx.usage.add(self._usage(response))
        return response

    def _deadline_message(self, ctx: _Ctx) -> str:
        return f"no answer within the {ctx.deadline_s:g} s deadline ({counted(ctx.attempts, 'attempt')})"

    def _api_error(self, ctx: _Ctx, exc: genai_errors.APIError, attempts: int) -> RerankError:
        after = f"after {counted(attempts, 'attempt')}"
        if ctx.stopped_for_deadline and exc.code in RETRYABLE_STATUS:
            wait = f"the server asked to retry in {ctx.server_delay:g} s, " if ctx.server_delay else ""
            after += f"; {wait}which would pass the {ctx.deadline_s:g} s deadline"
        if exc.code == 429:  # which quota: per minute or per day, of requests or input tokens, and its limit
            quotas = [f"quota {v['quotaId']}" + (f", limit {v['quotaValue']}" if v.get("quotaValue") else "")
                      for d in _error_details(exc, "violations") for v in d["violations"]
                      if isinstance(v, dict) and v.get("quotaId")]
            said = "".join(f"; {q}" for q in quotas)
            return QuotaExceededError(f"Gemini quota exceeded ({_status(exc)}{said}) {after}")
        msg = f": {exc.message}" if exc.message else ""
        googles = isinstance(exc.details, dict) and "error" in exc.details
        if not googles and exc.message:  # not Google's JSON error but a page (the SDK passes its whole text on)
            msg = f": the reply is not Gemini's (a proxy on the way?): {_page_text(exc.message)!r}"
        if exc.code in RETRYABLE_STATUS:  # what the server said of its failure ("overloaded", "internal error")
            return UpstreamError(f"Gemini unavailable ({_status(exc)}{msg}) {after}")
        if googles and (exc.code in (401, 403) or any(str(d["reason"]).startswith("API_KEY")
                                                      for d in _error_details(exc, "reason"))):
            # A bad key is a 400 (API_KEY_INVALID); a leaked or blocked one, or a project without the API, a 403
            msg = f"{msg.rstrip('.')}. Check the key {self._key_source()}"
            return KeyRefusedError(f"Gemini rejected the request ({_status(exc)}){msg}")
        return RequestRejectedError(f"Gemini rejected the request ({_status(exc)}){msg}")

    def _key_source(self) -> str:
        """Where the key came from, as a person would go and check it."""
        if self._api_key:
            return "given as api_key"
        if os.environ.get("GEMINI_API_KEY"):
            # The SDK alone would take GOOGLE_API_KEY when both are set: say which one this was
            if os.environ.get("GOOGLE_API_KEY"):
                return "in GEMINI_API_KEY (GOOGLE_API_KEY is set too, but GEMINI_API_KEY comes first)"
            return "in GEMINI_API_KEY"
        return "in GOOGLE_API_KEY"

    @staticmethod
    def _usage(response: types.GenerateContentResponse) -> Usage:
        u = response.usage_metadata
        if u is None:
            return Usage(requests=1)
        return Usage(requests=1, prompt_tokens=u.prompt_token_count or 0, output_tokens=u.candidates_token_count or 0,
                     thinking_tokens=u.thoughts_token_count or 0, total_tokens=u.total_token_count or 0)

    # ------------------------------------------------------------------ agentic mode

    def _declarations(self, template: PromptTemplate, candidates: list[str], final: bool) -> list[types.Tool]:
        answer = types.FunctionDeclaration(
            name="answer", description="Give the final label of the query image.",
            parameters=types.Schema(type=types.Type.OBJECT, required=["label"], properties={
                "label": types.Schema(type=types.Type.STRING, enum=candidates)}))
        decls = [answer]
        if not final and "exemplars" in template.tools:
            decls.append(types.FunctionDeclaration(
                name="exemplars",
                description="Memory images of one candidate label that are most similar to the query, "
                            "with their similarity.",
                parameters=types.Schema(type=types.Type.OBJECT, required=["label"], properties={
                    "label": types.Schema(type=types.Type.STRING, enum=candidates),
                    "n": types.Schema(type=types.Type.INTEGER, minimum=1, maximum=self.settings.max_exemplars,
                                      description=f"how many images (default {DEFAULT_EXEMPLARS})")})))
        if not final and "more_neighbors" in template.tools:
            decls.append(types.FunctionDeclaration(
                name="more_neighbors",
                description="Widen the nearest-neighbour list to the k nearest memory images; returns the ones "
                            "not shown yet. Their labels become candidates.",
                parameters=types.Schema(type=types.Type.OBJECT, required=["k"], properties={
                    "k": types.Schema(type=types.Type.INTEGER, minimum=1,
                                      maximum=self.settings.max_neighbors_total)})))
        return [types.Tool(function_declarations=decls)]

    async def _agentic(self, ctx: _Ctx, client: genai.Client, template: PromptTemplate, req: RerankRequest,
                       prompt: BuiltPrompt, store: MemoryStore | None) -> str:
        candidates = prompt.candidates  # more_neighbors extends it in place: the outcome lists them all
        # What the prompt showed, not every neighbour searched: agentic-v1 shows 20 of the default k=50, and
        # more_neighbors(k=30), asking for the 21st to the 30th, had returned none of them as seen already
        seen = {n.id for n in prompt.shown}
        contents = [types.Content(role="user", parts=prompt.parts)]
        steps = 0
        while True:
            final = steps >= template.max_steps
            config = self._config(
                template, prompt.system, tools=self._declarations(template, prompt.names.texts(candidates), final),
                tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["answer"] if final else None)),
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
            response = await self._generate(ctx, client, contents, config)
            calls = response.function_calls or []
            if not calls:  # refused, stopped (SAFETY) or a call Gemini could not write (MALFORMED_FUNCTION_CALL)
                if not response.candidates:
                    raise _no_candidate(response)
                raise InvalidAnswerError("Gemini replied without calling a function (an answer or a tool; "
                                         f"{_finish(response.candidates[0])})")
            for call in calls:
                if call.name == "answer":
                    label = (call.args or {}).get("label")
                    ctx.trace.append({"step": steps, "tool": "answer", "args": dict(call.args or {})})
                    if label is None:  # had read "Gemini answered None, which is not one of the candidate labels"
                        given = ", ".join(visible(str(a)) for a in (call.args or {})) or "none"
                        raise InvalidAnswerError(f"Gemini called answer without a label (its arguments: {given})")
                    return self._check_label(label, candidates, prompt.names)
            if final:
                raise StepBudgetError(f"no answer within the agentic step budget of {template.max_steps} "
                                      f"(Gemini kept calling {', '.join(sorted({c.name or '?' for c in calls}))})")
            steps += 1
            assert response.candidates and response.candidates[0].content is not None
            contents.append(response.candidates[0].content)  # keeps Gemini 3's thought signatures
            replies = []
            for call in calls:
                reply, entry = await self._run_tool(call, steps, req, store, candidates, prompt.names, seen, template)
                ctx.trace.append(entry)
                ctx.cited.update(entry.get("ids", []))
                ctx.usage = ctx.usage.model_copy(update={"images": ctx.usage.images + entry.get("images", 0)})
                replies.append(types.Part(function_response=reply))
            contents.append(types.Content(role="user", parts=replies))

    async def _run_tool(self, call: types.FunctionCall, step: int, req: RerankRequest, store: MemoryStore | None,
                        candidates: list[str], names: ShownLabels, seen: set[str],
                        template: PromptTemplate) -> tuple[types.FunctionResponse, dict[str, Any]]:
        args = dict(call.args or {})
        entry: dict[str, Any] = {"step": step, "tool": call.name, "args": args}

        def error(msg: str) -> tuple[types.FunctionResponse, dict[str, Any]]:
            entry["error"] = msg
            return types.FunctionResponse(id=call.id, name=call.name, response={"error": msg}), entry

        if call.name not in template.tools:
            return error(f"unknown tool {call.name!r}")
        if store is None or req.vector is None:
            return error("the memory cannot be searched from here")
        count = "n" if call.name == "exemplars" else "k"
        most = self.settings.max_exemplars if count == "n" else self.settings.max_neighbors_total
        given: Any = args.get(count)
        if given is None and count == "n":  # n is optional (k is required): only a missing one is the default
            given = DEFAULT_EXEMPLARS
        try:  # the schema says integer, but a reply is data: a bad one is Gemini's error to read, not a crash
            wanted = int(given)
        except (TypeError, ValueError, OverflowError):
            return error(f"{count} must be an integer from 1 to {most}, got {given!r}")
        if wanted < 1:  # `or` had read n=0 as no n (4 exemplars), and k=0 as k=1: what was asked is none
            return error(f"{count} must be from 1 to {most}, got {wanted}")
        if call.name == "exemplars":
            asked = args.get("label")
            label = names.label(asked) if isinstance(asked, str) else None
            if label is None or label not in candidates:
                return error(f"{asked!r} is not a candidate label")
            n = self._exemplars(wanted)
            hits = await asyncio.to_thread(store.query, req.vector, n, [label])
            items = [RerankNeighbor(id=h.id, label=h.label, source=h.source, similarity=h.similarity, rank=i)
                     for i, h in enumerate(hits)]
            entry["n"] = n
            key = "exemplars"
        else:
            k = min(max(wanted, 1), self.settings.max_neighbors_total)
            hits = await asyncio.to_thread(store.query, req.vector, k, req.labels)
            items = [RerankNeighbor(id=h.id, label=h.label, source=h.source, similarity=h.similarity, rank=i)
                     for i, h in enumerate(hits) if h.id not in seen]
            seen.update(h.id for h in hits)
            entry["k"] = k
            allowed = set(req.labels) if req.labels else None
            for it in items:  # a label first seen here becomes a candidate
                if it.label not in candidates and (allowed is None or it.label in allowed):
                    candidates.append(it.label)
            key = "neighbors"
        parts: list[types.FunctionResponsePart] = []
        listed, missing = [], []
        voted = {n.id: n.weight for n in req.neighbors}
        for i, it in enumerate(items):
            if call.name == "exemplars":
                caption = template.render("exemplar_line", index=i + 1, label=names.show(it.label),
                                          similarity=f"{it.similarity:.3f}", id=it.id)
            else:  # the query's next nearest, captioned as the prompt's list of them (not "Exemplar N of X")
                caption = template.render("neighbor", rank=it.rank + 1, label=names.show(it.label),
                                          similarity=_fmt(it.similarity), weight=_weight(voted.get(it.id, 0.0)),
                                          id=it.id)
            row: dict[str, Any] = {"index": i + 1, "label": names.show(it.label),
                                   "similarity": round(it.similarity, 3), "rank": it.rank + 1, "caption": caption}
            if len(parts) >= self.settings.max_tool_images:  # bound the tokens one tool call can add
                row["image"] = None
                listed.append(row)
                continue
            try:
                jpeg = await asyncio.to_thread(self.thumbnails.get, it.source, req.source_roots, point_id=it.id,
                                               keep_uploads_in=req.keep_uploads_in)
                row["image"] = len(parts) + 1
                parts.append(types.FunctionResponsePart.from_bytes(data=jpeg, mime_type="image/jpeg"))
            except ThumbnailError as exc:
                row["image"] = None
                missing.append({"id": it.id, "source": it.source, "reason": str(exc)})
            listed.append(row)
        entry.update({"returned": len(items), "ids": [it.id for it in items], "labels": [it.label for it in items],
                      "images": len(parts)})
        if missing:
            entry["label_only"] = missing
        body: dict[str, Any] = {key: listed, "note": "row['image'] is the 1-based index of its image part"}
        if call.name == "more_neighbors":
            body["candidates"] = names.texts(candidates)
        return types.FunctionResponse(id=call.id, name=call.name, response=body, parts=parts or None), entry


RERANKERS: dict[str, type[GeminiReranker]] = {GeminiReranker.id: GeminiReranker}


def make_reranker(name: str = "gemini", **options: Any) -> GeminiReranker:
    """A re-ranker backend by name (`gemini`), with its options as keywords."""
    try:
        cls = RERANKERS[name]
    except KeyError:
        raise ValueError(f"unknown re-ranker {name!r}; available: {', '.join(sorted(RERANKERS))}") from None
    return cls(**options)
