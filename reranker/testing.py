"""A fake Gemini REST server on loopback, for tests and benchmarks of code that uses `google-genai`.

The real SDK talks to it over real HTTP (`HttpOptions(base_url=fake.url)` or `GOOGLE_GEMINI_BASE_URL`);
nothing is mocked. It speaks `POST /v1beta/models/{model}:generateContent` and answers from a script:

    >>> with FakeGemini() as fake:
    ...     fake.enqueue(fake.status(429, retry_delay="0.05s"), fake.answer("cat"))
    ...     client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.url))
    ...     ...
    ...     fake.count            # requests received
    ...     fake.requests[-1].body

With the script empty it answers the first candidate label of each request (from the enum schema,
or from the `answer` function's enum in agentic mode), or what `fake.responder(body)` returns where one is set
(a VLM simulated per request: `lambda body: fake.answer(candidates_of(body)[-1])`, its choice made from what the
request holds, whatever order concurrent requests arrive in). Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^:/]+):generateContent$")
TOKENS_PER_IMAGE = 258  # what Gemini counts for a small image at the default media resolution


@dataclass
class Action:
    kind: str
    label: str | None = None
    status: int = 200
    retry_delay: str | None = None
    seconds: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    finish_reason: str = "STOP"
    retry_after: str | None = None  # a Retry-After header
    thoughts: str | None = None  # a thought part (a thinking model's summary) before the answer
    message: str | None = None  # an error's message, or a page's body
    reason: str | None = None  # an error's google.rpc.ErrorInfo reason, or a prompt's blockReason
    quota: tuple[str, str] | None = None  # a 429's google.rpc.QuotaFailure: (quotaId, quotaValue)


@dataclass
class Recorded:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float

    @property
    def images(self) -> int:
        """Inline images in the whole request, function-response parts included."""
        return _count(self.body)[0]

    @property
    def texts(self) -> list[str]:
        return [p["text"] for c in self.body.get("contents", []) for p in c.get("parts", []) if "text" in p]

    @property
    def function_names(self) -> list[str]:
        return [d["name"] for t in self.body.get("tools", []) for d in t.get("functionDeclarations", [])]


def _count(body: dict[str, Any]) -> tuple[int, int]:
    """(inline images, text characters) in a request: contents, function responses and system instruction."""
    images = chars = 0
    contents = [*body.get("contents", []), body.get("systemInstruction") or {}]
    for content in contents:
        for part in content.get("parts", []):
            if "inlineData" in part:
                images += 1
            chars += len(part.get("text", ""))
            # The SDK writes a tool result's images as `inline_data`, the request's own as `inlineData`.
            images += sum("inlineData" in p or "inline_data" in p
                          for p in part.get("functionResponse", {}).get("parts", []))
    return images, chars


def candidates_of(body: dict[str, Any]) -> list[str]:
    """The labels the request allows: the enum of the response schema or of the `answer` function."""
    gen = body.get("generationConfig", {})
    for key in ("responseSchema", "responseJsonSchema"):
        if gen.get(key, {}).get("enum"):
            return list(gen[key]["enum"])
    for tool in body.get("tools", []):
        for decl in tool.get("functionDeclarations", []):
            if decl.get("name") == "answer":
                props = (decl.get("parameters") or decl.get("parametersJsonSchema") or {}).get("properties", {})
                return list(props.get("label", {}).get("enum", []))
    return []


def _agentic(body: dict[str, Any]) -> bool:
    return any(d.get("name") == "answer" for t in body.get("tools", []) for d in t.get("functionDeclarations", []))


class FakeGemini:
    """The server, on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self) -> None:
        self.script: deque[Action] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hangs_released = threading.Event()
        self.latency_s = 0.0  # added to every answer (throughput benchmarks)
        # The answer to a request the script has none for: called with the request's body (module docstring)
        self.responder: Callable[[dict[str, Any]], Action] | None = None
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    fake._handle(self)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # Polled every 50 ms for a stop (not serve_forever's 0.5 s): stop() waits out one poll, and a test run
        # starts and stops a fake per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-gemini", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"  # type: ignore[str-bytes-safe]  # an AF_INET server's host is a str

    def start(self) -> FakeGemini:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ script

    @staticmethod
    def answer(label: str, thoughts: str | None = None) -> Action:
        """200 with this label (a text answer, or an `answer(label)` call in agentic mode); `thoughts` comes first
        as a part marked `thought`, as a thinking model sends its summary, and counts as `thoughtsTokenCount`."""
        return Action("answer", label=label, thoughts=thoughts)

    @staticmethod
    def text(text: str, finish_reason: str = "STOP") -> Action:
        """200 with this text as the answer, whatever the schema allowed (e.g. a non-candidate); `finish_reason`
        MAX_TOKENS or SAFETY says it was cut off."""
        return Action("text", text=text, finish_reason=finish_reason)

    @staticmethod
    def status(code: int, retry_delay: str | None = None, retry_after: str | None = None,
               message: str | None = None, reason: str | None = None, quota: tuple[str, str] | None = None,
               ) -> Action:
        """An error status with Google's error body; 429 can carry a RetryInfo `retryDelay` like "2s", or a
        `Retry-After` header (seconds, or an HTTP date), and the quota that ran out (a QuotaFailure's quotaId and
        quotaValue: `("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "20")`); `reason` adds a
        google.rpc.ErrorInfo, as Google says "API_KEY_INVALID" (with 400 and "API key not valid. Please pass a
        valid API key.")."""
        return Action("status", status=code, retry_delay=retry_delay, retry_after=retry_after, message=message,
                      reason=reason, quota=quota)

    @staticmethod
    def page(code: int, html: str) -> Action:
        """This status with an HTML page for a body, as a proxy or a load balancer in the way answers."""
        return Action("page", status=code, message=html)

    @staticmethod
    def blocked(reason: str = "SAFETY") -> Action:
        """200 with no candidates and `promptFeedback.blockReason`: Gemini refused the prompt itself."""
        return Action("blocked", reason=reason)

    @staticmethod
    def stopped(finish_reason: str) -> Action:
        """200 with a candidate that has no content, only its `finishReason` (SAFETY, MALFORMED_FUNCTION_CALL, ...)."""
        return Action("stopped", finish_reason=finish_reason)

    @staticmethod
    def hang(seconds: float) -> Action:
        """Say nothing for this long (released early by `release_hangs` or when the server stops), then answer."""
        return Action("hang", seconds=seconds)

    def release_hangs(self) -> None:
        """End every hang now and from now on: a test can hold requests in flight as long as it needs them."""
        self._hangs_released.set()

    @staticmethod
    def malformed() -> Action:
        """200 whose body is not JSON."""
        return Action("malformed")

    @staticmethod
    def empty() -> Action:
        """200 with no candidates at all."""
        return Action("empty")

    @staticmethod
    def call(name: str, **args: Any) -> Action:
        """200 with a function call (agentic mode)."""
        return Action("call", calls=[{"name": name, "args": args}])

    @staticmethod
    def calls(*calls: tuple[str, dict[str, Any]]) -> Action:
        """200 with several function calls in one turn."""
        return Action("call", calls=[{"name": n, "args": a} for n, a in calls])

    def enqueue(self, *actions: Action) -> None:
        with self._lock:
            self.script.extend(actions)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()

    # ------------------------------------------------------------------ serving

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        m = PATH.match(h.path.split("?")[0])
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        if not m:
            return self._send(h, 404, {"error": {"code": 404, "message": f"no route {h.path}", "status": "NOT_FOUND"}})
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._send(h, 400, {"error": {"code": 400, "message": "bad JSON", "status": "INVALID_ARGUMENT"}})
        with self._lock:
            self.requests.append(Recorded(m["model"], body, {k.lower(): v for k, v in h.headers.items()},
                                          time.monotonic()))
            action = self.script.popleft() if self.script else None
        if action is None:  # outside the lock: a responder may take its time, and requests are answered at once
            try:
                action = self.responder(body) if self.responder is not None else Action("answer")
            except Exception as exc:  # said to the client: a dropped connection was retried without a word
                action = Action("status", status=500, message=f"the fake's responder failed: {exc!r}")
        if not (h.headers.get("x-goog-api-key") or "key=" in h.path):
            return self._send(h, 401, {"error": {"code": 401, "message": "API key missing",
                                                 "status": "UNAUTHENTICATED"}})
        if self.latency_s:
            self._stop.wait(self.latency_s)
        if action.kind == "hang":
            deadline = time.monotonic() + action.seconds
            while not (self._stop.is_set() or self._hangs_released.is_set()) and time.monotonic() < deadline:
                self._hangs_released.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            action = Action("answer")
        if action.kind == "status":
            headers = {"retry-after": action.retry_after} if action.retry_after else {}
            return self._send(h, action.status, self._error_body(action), headers)
        if action.kind == "page":
            return self._send_raw(h, action.status, (action.message or "").encode(), {"content-type": "text/html"})
        if action.kind == "blocked":
            return self._send(h, 200, {"promptFeedback": {"blockReason": action.reason},
                                       "usageMetadata": self._usage(body, 0)})
        if action.kind == "stopped":
            return self._send(h, 200, {"candidates": [{"finishReason": action.finish_reason, "index": 0}],
                                       "usageMetadata": self._usage(body, 0)})
        if action.kind == "malformed":
            return self._send_raw(h, 200, b'{"candidates": [{"content": {"parts": [{"text": "cat"')
        if action.kind == "empty":
            return self._send(h, 200, {"candidates": [], "usageMetadata": self._usage(body, 0)})
        if action.kind == "call":
            parts: list[dict[str, Any]] = [{"functionCall": {"name": c["name"], "args": c["args"], "id": f"call-{i}"}}
                                           for i, c in enumerate(action.calls)]
            return self._send(h, 200, self._reply(body, parts))
        if action.kind == "text":
            return self._send(h, 200, self._reply(body, [{"text": action.text or ""}], action.finish_reason))
        label = action.label if action.label is not None else (candidates_of(body) or ["unknown"])[0]
        if _agentic(body):
            parts = [{"functionCall": {"name": "answer", "args": {"label": label}, "id": "call-answer"}}]
        else:
            parts = [{"text": label}]
        if action.thoughts:
            parts.insert(0, {"text": action.thoughts, "thought": True})
        reply = self._reply(body, parts)
        if action.thoughts:
            thinking = len(action.thoughts) // 4 + 1
            reply["usageMetadata"]["thoughtsTokenCount"] = thinking
            reply["usageMetadata"]["totalTokenCount"] += thinking
        return self._send(h, 200, reply)

    @staticmethod
    def _error_body(action: Action) -> dict[str, Any]:
        names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
                 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
        err: dict[str, Any] = {"code": action.status, "message": action.message or f"fake error {action.status}",
                               "status": names.get(action.status, "UNKNOWN")}
        details: list[dict[str, Any]] = []
        if action.reason:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": action.reason,
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"}})
        if action.quota:
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": action.quota[0], "quotaValue": action.quota[1],
                "quotaDimensions": {"location": "global", "model": "fake-gemini"}}]})
        if action.retry_delay:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": action.retry_delay})
        if details:
            err["details"] = details
        return {"error": err}

    @staticmethod
    def _usage(body: dict[str, Any], out_tokens: int) -> dict[str, int]:
        images, chars = _count(body)
        prompt = images * TOKENS_PER_IMAGE + chars // 4
        return {"promptTokenCount": prompt, "candidatesTokenCount": out_tokens, "totalTokenCount": prompt + out_tokens}

    def _reply(self, body: dict[str, Any], parts: list[dict[str, Any]], finish_reason: str = "STOP") -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish_reason,
                                "index": 0}],
                "usageMetadata": self._usage(body, 3), "modelVersion": "fake-gemini"}

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None,
              ) -> None:
        FakeGemini._send_raw(h, code, json.dumps(payload).encode(), headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(code)
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.send_header("content-type", "application/json; charset=UTF-8")
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline): nothing to do
            pass
