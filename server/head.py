"""HEAD on every GET route: the GET's status and headers, without its body (RFC 9110, 9.3.2).

FastAPI routes answer only the methods they declare, so a monitor or load balancer checking `/healthz` with
HEAD got a 405 and saw the service as down. Kept out of the OpenAPI document, which lists what a client does.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, without_body)
        finally:  # the route that answered, for the metrics, which count the request as the HEAD it was
            if "route" in as_get:
                scope["route"] = as_get["route"]
