"""A request-body ceiling enforced while the body streams in, before any of it is parsed; and the Host names answered.

`Content-Length` over the limit is refused when the route first reads the body, before a byte of it
is read (after routing, so the 413 is counted under its route, and a route may have a limit of its own: an
import's file); a chunked body is counted as it arrives
and cut off as soon as it passes the limit, so a client cannot make the server buffer an unbounded upload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem_response


class BodyTooLarge(HTTPException):
    """An HTTP error, so that a route FastAPI reads the body of (a JSON model) passes it on: FastAPI answers any
    other exception raised while reading a body as a 400, "There was an error parsing the body"."""

    kind = "upload-too-large"
    title = "Upload too large"

    def __init__(self, max_bytes: int, detail: str | None = None) -> None:
        super().__init__(413, detail or f"the request body is over the limit of {max_bytes:,} bytes")


class BodySizeLimitMiddleware:
    """`max_bytes` for every route but those `route_limits` names by their path template: (their limit, what a
    413 of theirs says)."""

    def __init__(self, app: ASGIApp, max_bytes: int, route_limits: Mapping[str, tuple[int, str]] | None = None,
                 ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = dict(route_limits or {})

    def _limit(self, scope: Scope) -> tuple[int, str | None]:
        """The limit of the route that reads the body (routed by then: `scope["route"]`), and its 413's detail."""
        limit = self.route_limits.get(getattr(scope.get("route"), "path", None) or "")
        return limit if limit is not None else (self.max_bytes, None)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: BodyTooLarge) -> None:
        response = problem_response(Request(scope), 413, exc.detail, exc.kind, exc.title)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = 0
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            limit, detail = self._limit(scope)
            if declared > limit:
                raise BodyTooLarge(limit, detail)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if not started:
                await self._refuse(scope, receive, send, exc)


# Asked by an orchestrator or Prometheus by the pod's address, Host that address; none reads the memory's points
# (readiness and /metrics say counts, no label or source)
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _route_path(scope: Scope) -> str:
    """The path without the prefix a proxy serves the app under (`--root-path`)."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


class AllowedHostsMiddleware:
    """A request whose Host header names no host of `VMEM_ALLOWED_HOSTS` is a 400 problem, before anything else
    runs: reads need no key, and a service on loopback was readable by any web page through a name it made resolve
    to 127.0.0.1 (DNS rebinding). `*.example.org` allows a domain's names."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = [h.lower() for h in allowed_hosts]

    def _allows(self, host: str) -> bool:
        return any(host == a or (a.startswith("*.") and host.endswith(a[1:])) or a == "*" for a in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Not the probes and the scrape: an orchestrator's and Prometheus name the pod by its address (readiness
        # says the points' count and the encoder's name, /metrics counts). Their path under a proxy's prefix too.
        if scope["type"] == "http" and _route_path(scope) not in PROBE_PATHS:
            header = Headers(scope=scope).get("host", "")
            # The port goes; an IPv6 literal keeps its brackets, as it is named in the setting
            host = (header.split("]")[0] + "]" if header.startswith("[") else header.split(":")[0]).lower()
            if not self._allows(host):
                response = problem_response(
                    Request(scope), 400, f"this service answers requests for {', '.join(self.allowed)} only, not "
                    f"{host or 'a request without a Host header'} (VMEM_ALLOWED_HOSTS)", "host-not-allowed",
                    "Host not allowed")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
