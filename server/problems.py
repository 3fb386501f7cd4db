"""Errors as RFC 9457 (formerly 7807) problem details: `application/problem+json` with a stable `type`.

Handlers turn every failure (our `ProblemError`, FastAPI's validation errors, Starlette's HTTP
errors, an undecodable image, an unknown template, anything unexpected) into the same shape, so a
client reads one format and the page shows `detail` as is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval.images import ImageDecodeError
from retrieval.store import (
    MemoryDamagedError,
    MemoryFullError,
    MemoryGoneError,
    MemoryReadOnlyError,
    MemoryUnavailableError,
    MemoryWriteFailedError,
)

# Seconds a client is asked to wait before retrying while the memory's Qdrant server does not answer.
RETRY_AFTER_UNAVAILABLE_S = 5

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
UNEXPECTED = "an unexpected error occurred; the server log has the details"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before it was answered
TYPE_BASE = "urn:vmem:problem:"


class ValidationIssue(BaseModel):
    """One invalid input."""

    loc: list[str | int] = Field(description="where: e.g. [\"query\", \"k\"] or [\"body\", \"image\"]")
    msg: str = Field(description="what is wrong, for a person")
    type: str = Field(description="machine-readable kind of error")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(description="URI naming the kind of problem (`about:blank` for plain HTTP errors)")
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str | None = Field(default=None, description="what went wrong this time, for a person")
    instance: str | None = Field(default=None, description="the request path")
    errors: list[ValidationIssue] | None = Field(default=None, description="each invalid input, for validation errors")
    request_id: str | None = Field(default=None, description="the request's id (its X-Request-ID, given or made "
                                   "here): the server log's lines about this request name it")


class ProblemError(Exception):
    """Raise in a handler to answer with a problem document."""

    def __init__(self, status: int, detail: str, kind: str | None = None, title: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title
        self.headers = headers


REQUEST_ID_HEADER = "X-Request-ID"
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def described(request: Request) -> str:
    """`METHOD PATH [request id]`, as a log line names the request a client's answer came from."""
    rid = request_id(request.scope)
    return f"{request.method} {request.url.path}" + (f" [{rid}]" if rid else "")


class RequestIdMiddleware:
    """Gives each request an id, its client's `X-Request-ID` when it sends a plain one (a proxy's), else a new one:
    answered in the `X-Request-ID` header and in every problem, and named by the log's lines about the request.
    A 500 had said "the server log has the details", and only its time tied the two together."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _GIVEN_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def problem_response(request: Request, status: int, detail: str | None, kind: str | None = None,
                     title: str | None = None, headers: dict[str, str] | None = None,
                     errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = Problem(
        type=TYPE_BASE + kind if kind else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=[ValidationIssue(**e) for e in errors] if errors is not None else None,
        request_id=request_id(request.scope),
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers,
                        media_type=PROBLEM_MEDIA_TYPE)


def _issues(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only where, what and which kind: echoing `input` back could return a whole base64 image.
    return [{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))} for e in exc.errors()]


# HTTP's own methods: every one a route could declare (HEAD and OPTIONS included, since a route may answer them),
# and the metrics' method labels (a client may send any word).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")


def _allowed_methods(request: Request, refused_by: str | None) -> str:
    """The `Allow` header of a 405: every method some route takes at this path.

    Starlette names only the methods of the first route that matched the path (/v1/memory has a POST
    and a DELETE route), so each method is tried against the app's routes, through their own
    `matches`: FastAPI keeps included routers as opaque routes whose methods only `matches` knows.
    What the refusing route said (`refused_by`) is kept: a mounted app (the static files) checks the
    method itself and is the only one that knows.
    """
    methods = {m.strip().upper() for m in (refused_by or "").split(",") if m.strip()}
    for method in HTTP_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL and not isinstance(route, Mount)
               for route in request.app.router.routes):
            methods.add(method)
    if "GET" in methods:  # HeadAsGetMiddleware answers HEAD wherever GET is served
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, exc.kind, exc.title, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = _issues(exc)
        summary = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues[:5])
        return problem_response(request, 422, summary or "invalid request", "invalid-parameters",
                                "Invalid parameters", errors=issues)

    @app.exception_handler(ImageDecodeError)
    async def _bad_image(request: Request, exc: ImageDecodeError) -> JSONResponse:
        return problem_response(request, 400, str(exc), "bad-image", "The image could not be decoded")

    @app.exception_handler(MemoryUnavailableError)
    async def _memory_unavailable(request: Request, exc: MemoryUnavailableError) -> JSONResponse:
        log.warning("%s: %s", described(request), exc)
        return problem_response(request, 503, str(exc), "memory-unavailable", "The memory does not answer",
                                headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)})

    @app.exception_handler(MemoryWriteFailedError)
    async def _memory_write_failed(request: Request, exc: MemoryWriteFailedError) -> JSONResponse:
        log.error("%s: %s", described(request), exc)
        # No Retry-After: only a restart (after the cause is fixed) brings edits back; /readyz says the same.
        return problem_response(request, 503, str(exc), "memory-write-failed", "The memory takes no more edits")

    @app.exception_handler(MemoryFullError)
    async def _memory_full(request: Request, exc: MemoryFullError) -> JSONResponse:
        log.error("%s: %s", described(request), exc)
        return problem_response(request, 507, str(exc), "memory-disk-full", "The memory's disk is full")

    @app.exception_handler(MemoryReadOnlyError)
    async def _memory_read_only(request: Request, exc: MemoryReadOnlyError) -> JSONResponse:
        served_read_only = request.app.state.settings.read_only  # refuses edits as asked: no fault to alert on
        log.log(logging.INFO if served_read_only else logging.ERROR, "%s: %s", described(request), exc)
        # No Retry-After: a mount or a folder's owner changes by a person's hand
        return problem_response(request, 503, str(exc), "memory-read-only", "The memory is served read-only"
                                if served_read_only else "The memory's folder cannot be written")

    @app.exception_handler(MemoryGoneError)
    async def _memory_gone(request: Request, exc: MemoryGoneError) -> JSONResponse:
        log.error("%s: %s", described(request), exc)
        # No Retry-After: it is no outage, and no retry brings the folder back.
        return problem_response(request, 503, str(exc), "memory-gone", "The memory's folder is gone")

    @app.exception_handler(MemoryDamagedError)
    async def _memory_damaged(request: Request, exc: MemoryDamagedError) -> JSONResponse:
        log.error("%s: %s", described(request), exc)
        # No Retry-After: the files stay damaged until a backup is restored or the memory is built again.
        return problem_response(request, 503, str(exc), "memory-damaged", "The memory's files are damaged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            refused_by = next((v for k, v in headers.items() if k.lower() == "allow"), None)
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = _allowed_methods(request, refused_by)
        # An HTTP error of vmem's own (a body over the size limit) names its kind; Starlette's are about:blank.
        return problem_response(request, exc.status_code, detail, getattr(exc, "kind", None),
                                getattr(exc, "title", None), headers=headers or None)

    @app.exception_handler(Exception)  # a middleware's own failure; the routes' are UnexpectedErrorMiddleware's
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", described(request))
        return problem_response(request, 500, UNEXPECTED, "internal")


class UnexpectedErrorMiddleware:
    """Answers an exception no handler took with the 500 problem, and keeps the connection.

    Starlette's handler for `Exception` sits in its outermost middleware, which re-raises once it has
    answered; uvicorn then drops the connection, and the client's next request on it (often an unrelated
    edit) meets a reset and cannot tell whether it ran. Added first, this runs inside every other middleware
    (the metrics count the 500). A client gone mid-upload is no server error: 499, as nginx counts it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_the_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_the_start)
        except ClientDisconnect:
            # Said by default: uvicorn writes no access line for a closed connection, and under overload these are
            # what an operator looks for
            log.warning("client left %s before its answer", described(Request(scope)))
            if not started:
                await Response(status_code=CLIENT_CLOSED_REQUEST)(scope, receive, send)
        except asyncio.CancelledError:
            # Only a stop cancels a request (uvicorn, once its graceful time is up): uvicorn answered it a plain-text
            # 500 and logged a traceback. A 503 says what happened and that sending it again (elsewhere) is safe to
            # try; the request's own work was cancelled with it (`unless_the_client_leaves`).
            if started:
                raise
            request = Request(scope)
            log.warning("the service is stopping: %s cancelled before its answer", described(request))
            await problem_response(request, 503, "the service is stopping: send the request again (it may have "
                                   "been done: an edit is in the memory's history)", "stopping",
                                   headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S), "Connection": "close"},
                                   )(scope, receive, send)
        except Exception:
            if started:  # half an answer is out: only dropping the connection can say it failed
                raise
            request = Request(scope)
            log.exception("unhandled error on %s", described(request))
            await problem_response(request, 500, UNEXPECTED, "internal")(scope, receive, send)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, and 500 (any route may meet a fault of its own), all
    documented as problem details."""
    return {s: {"description": HTTPStatus(s).phrase,
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for s in sorted({*statuses, 500})}
