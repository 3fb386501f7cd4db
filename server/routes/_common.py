"""Helpers shared by the routers: OpenAPI request bodies for image uploads, result conversion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

from fastapi import Request
from starlette.requests import ClientDisconnect

from retrieval.text import quoted, visible
from vmem.results import unsure_of

from ..problems import ProblemError
from ..schemas import ClassificationOut, ClassifyQuery, NeighborOut, UsageOut, WhyNotOut, WhyNotPointOut
from ..service import RERANK_NOT_CONFIGURED, Answer, ClassifierService
from ..uploads import JSON, MULTIPART

T = TypeVar("T")

# Where an error about labels sends the user to see them all.
LISTED_BY = "GET /v1/memory/stats"


def label_history(label: str) -> str:
    """The route that lists a label's edits, as a note names it (`VisualMemory.no_label_note`)."""
    return f"GET /v1/memory/history?label={quote(label, safe='')}"


def image_body(json_model: str, file_field: str, many: bool, text_fields: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """`openapi_extra` declaring a body that is either multipart (files) or JSON (base64)."""
    file_schema = {"type": "string", "format": "binary", "description": "an encoded image file"}
    props: dict[str, Any] = {file_field: {"type": "array", "items": file_schema, "minItems": 1} if many
                             else file_schema}
    props.update(text_fields or {})
    return {"requestBody": {"required": True, "content": {
        # Closed: a form field the route does not read is refused (options go in the query string).
        MULTIPART: {"schema": {"type": "object", "properties": props, "required": [file_field, *(text_fields or {})],
                               "additionalProperties": False}},
        JSON: {"schema": {"$ref": f"#/components/schemas/{json_model}"}},
    }}}


def json_body(model: str) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body of `model`, for a route that reads it itself (`uploads.read_json`):
    after its key check, off the event loop. FastAPI parses a body it declares before any dependency runs, so
    20 MB sent without a key to an editing route had been parsed, holding the event loop a second, before its 401."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


async def unless_the_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client disconnects first: then the work is cancelled (a classify still queued for
    a thread never runs) and the request ends as a 499. uvicorn cancels nothing when a client leaves: under
    overload, clients that had given up were still classified, counted as 200s, and crowded out those waiting.
    Call it once the body is read: the next message is the client leaving."""
    task = asyncio.ensure_future(work)

    async def client_leaves() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_leaves())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the request itself cancelled (a stop's time limit): its work too
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientDisconnect()


def thumbnail_url(request: Request, point_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/v1/memory/points/{point_id}/thumbnail"


def check_template(service: ClassifierService, q: ClassifyQuery) -> None:
    """Refuse an unknown or broken template before any image is embedded (the default one too, when re-ranking:
    a broken override of it answered a bare 500), by the registry the memory's re-ranker reads."""
    from prompts import DEFAULT_TEMPLATE, TemplateError, UnknownTemplateError

    if q.template is None and not q.rerank:
        return
    if not q.rerank:  # as the CLI and Python refuse it: a template no re-rank reads is a mistake to tell
        raise ProblemError(422, f"template {quoted(q.template or '')} chooses the re-ranker's prompt: send "
                           "rerank=true too, or leave template out", "unused-vote-option",
                           "Option not used by this vote")
    registry = service.template_registry()
    name = q.template or DEFAULT_TEMPLATE
    try:
        if registry is None:
            raise UnknownTemplateError(name)
        registry.entry(name)
    except TemplateError as exc:
        raise template_problem(service, q, exc) from None


def template_problem(service: ClassifierService, q: ClassifyQuery, exc: Exception) -> ProblemError:
    """The problem for a template that is unknown (422) or does not load (422; 500 for the service's default)."""
    from prompts import DEFAULT_TEMPLATE, TemplateLoadError, UnknownTemplateError

    name = q.template or DEFAULT_TEMPLATE
    if isinstance(exc, UnknownTemplateError):
        registry = service.template_registry()
        available = ", ".join(map(visible, registry.names() if registry is not None else [])) or "none are installed"
        return ProblemError(422, f"unknown template {quoted(name)}; available: {available}", "unknown-template",
                            "Unknown template")
    # The file's own error, without the server's path to it (a path may hold ": " itself).
    reason = exc.reason if isinstance(exc, TemplateLoadError) else str(exc)
    if q.template is not None:
        return ProblemError(422, f"the template {quoted(name)} could not be loaded: {reason}", "invalid-template",
                            "Invalid template")
    return ProblemError(500, f"the service's default template {quoted(name)} could not be loaded: {reason}",
                        "invalid-template", "Invalid template")


def check_vote_options(service: ClassifierService, q: ClassifyQuery) -> None:
    """Refuse an alpha or tau the vote would not read (e.g. `vote=plurality&alpha=2`) before any image is embedded."""
    try:
        service.memory.vote_settings(q.vote, q.k, q.alpha, q.tau)
    except ValueError as exc:
        raise ProblemError(422, str(exc), "unused-vote-option", "Option not used by this vote") from None


async def check_labels(service: ClassifierService, q: ClassifyQuery) -> None:
    """Refuse a `label` filter naming a label the memory does not have: every answer would be empty."""
    if q.label and (unknown := await service.run(service.memory.unknown_labels, q.label)):
        await unknown_labels(service, unknown)


async def check_why_not(service: ClassifierService, q: ClassifyQuery) -> None:
    """Refuse a `why_not` label the vote cannot answer (one the memory lacks, naming those spelled or named like
    it, or one the `label` filter leaves out) before any image is embedded."""
    if q.why_not is None:
        return
    mem = service.memory
    try:
        await service.run(lambda: mem.check_why_not(q.why_not, mem.stored_labels(q.label) if q.label else None,
                                                     False, LISTED_BY))
    except ValueError as exc:
        raise ProblemError(422, str(exc), "unknown-label", "Unknown label") from None


async def unknown_labels(service: ClassifierService, unknown: list[str]) -> NoReturn:
    """The 422 for labels the memory lacks, said as the CLI says it."""
    detail = await service.run(service.memory.unknown_labels_message, unknown, LISTED_BY)
    raise ProblemError(422, detail, "unknown-label", "Unknown label")


def classification_out(request: Request, answer: Answer, min_confidence: float | None = None) -> ClassificationOut:
    r = answer.result
    # Judged here, not stored on the answer: a cached answer serves requests asking other thresholds.
    unsure, unsure_reason = unsure_of(r.label, r.confidence, min_confidence, r.vote.rule)
    names = {n.label: n.label_name for n in r.neighbors if n.label_name}
    # A re-rank asked of a memory with no re-ranker fell back before any re-ranker could say why: its kind all the same
    usage = UsageOut(error=RERANK_NOT_CONFIGURED) if r.usage is None and r.fallback_reason else r.usage
    return ClassificationOut(
        source=r.source, label=r.label, label_name=r.label_name, scores=r.scores,
        label_names={label: names[label] for label in r.scores if label in names},
        reranked=r.reranked, fallback_reason=r.fallback_reason,
        template=r.template, template_hash=r.template_hash, model=r.model, usage=usage, trace=r.trace, vote=r.vote,
        novelty=r.novelty, why_not=None if r.why_not is None else WhyNotOut(**dict(r.why_not, nearest=[
            WhyNotPointOut(**dict(p), thumbnail_url=thumbnail_url(request, p.id)) for p in r.why_not.nearest])),
        ood_threshold=answer.ood_threshold, out_of_distribution=answer.out_of_distribution,
        confidence=r.confidence, min_confidence=min_confidence, unsure=unsure, unsure_reason=unsure_reason,
        cached=answer.cached,
        neighbors=[NeighborOut(id=n.id, label=n.label, label_name=n.label_name, source=n.source,
                               similarity=n.similarity, weight=n.weight, rank=n.rank,
                               thumbnail_url=thumbnail_url(request, n.id)) for n in r.neighbors],
    )
