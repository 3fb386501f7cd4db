"""The service's API key and the Gemini key never show up in logs, errors, problem responses or metrics.

Both keys are set to recognisable fakes; the service is driven through successes and every kind of
failure (bad keys, Gemini refusing, Gemini down, the circuit opening, an unreachable endpoint, bad
input); then every response body and header, every log record (all loggers at DEBUG), the metrics
and the settings' printable forms are searched for any 12-character piece of either key.
"""

from __future__ import annotations

import logging

import pytest
from fake_gemini import FakeGemini
from fastapi.testclient import TestClient

from server import Settings
from tests._listeners import HeadersListener  # test_server_version imports it from here too
from tests._reliability_fixtures import noise_png, tiny_app, tiny_memory

API_KEY = "vmem-SECRET-apikey-7f3a9c1e5b"
GEMINI_KEY = "AIzaFAKE-gemini-SECRET-4d2b8e6f0a"


def pieces(secret: str, n: int = 12) -> list[str]:
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def assert_no_secret(where: str, text: str) -> None:
    for secret in (API_KEY, GEMINI_KEY):
        leaked = [p for p in pieces(secret) if p in text]
        assert not leaked, f"{where} contains part of a key: {leaked[0]!r}"


@pytest.fixture
def fake():
    with FakeGemini() as server:
        yield server


def test_no_key_leaks_anywhere(encoder, fake, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
    for name, value in {"MAX_ATTEMPTS": "1", "CACHE": "false", "DEADLINE_S": "3", "BREAKER_FAILURES": "2",
                        "BREAKER_COOLDOWN_S": "60"}.items():
        monkeypatch.setenv(f"VMEM_GEMINI_{name}", value)
    mem = tiny_memory(encoder, reranker="auto")  # the re-ranker is built from the environment, as in production
    seen: list[tuple[str, str]] = []

    with TestClient(tiny_app(encoder, tmp_path, memory=mem, api_key=API_KEY)) as client:
        def record(resp, what: str):
            seen.append((what, resp.text + repr(dict(resp.headers))))
            return resp

        def classify(seed: int, query: str = "rerank=true"):
            return record(client.post(f"/v1/classify?{query}", files={"image": ("q.png", noise_png(seed))},
                                      headers={"X-API-Key": API_KEY}), f"classify {query}")

        assert classify(1).json()["reranked"]
        assert fake.requests[-1].headers["x-goog-api-key"] == GEMINI_KEY  # the key did go where it belongs
        fake.enqueue(fake.status(403))
        assert "403" in classify(2).json()["fallback_reason"]
        fake.enqueue(fake.status(400))
        classify(3)
        fake.enqueue(*[fake.status(503)] * 4)
        reasons = [classify(4 + i).json()["fallback_reason"] for i in range(3)]
        assert reasons[-1].startswith("circuit open")
        classify(9, "rerank=true&template=nope")
        classify(10, "k=0")
        record(client.post("/v1/classify", files={"image": ("x.jpg", b"not an image")}), "bad image")

        good = {"X-API-Key": API_KEY}
        for headers in ({}, {"X-API-Key": "wrong-key-but-long-enough"}, {"X-API-Key": API_KEY[:-1]},
                        {"X-API-Key": API_KEY + "x"}, {"Authorization": f"Bearer {API_KEY[:-2]}"}):
            resp = record(client.post("/v1/memory", headers=headers, data={"label": "ant"},
                                      files={"images": ("a.png", noise_png(50))}), f"add with {list(headers)}")
            assert resp.status_code in (401, 403)
        assert record(client.post("/v1/memory", headers=good, data={"label": "ant"},
                                  files={"images": ("a.png", noise_png(50))}), "add").status_code == 201
        record(client.delete("/v1/memory/points/00000000-0000-0000-0000-000000000000", headers=good), "404")
        metrics = record(client.get("/metrics"), "metrics").text
        assert 'reason="CircuitOpenError"' in metrics  # fallbacks are counted by error class, the circuit's included

    # An unreachable Gemini: the error names the endpoint, never the key.
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    mem2 = tiny_memory(encoder, reranker="auto")
    try:
        [res] = mem2.classify([noise_png(60)], rerank=True)
        assert "127.0.0.1:9" in res.fallback_reason
        seen.append(("unreachable", res.model_dump_json()))
    finally:
        mem2.close()
    mem.close()

    for what, text in seen:
        assert_no_secret(what, text)
    assert_no_secret("the log", caplog.text + "\n".join(repr(r.args) for r in caplog.records))
    settings = Settings(memory=":memory:", api_key=API_KEY)
    assert_no_secret("the settings", repr(settings) + str(settings) + settings.model_dump_json())


def test_verbose_cli_logs_no_credentials_of_the_gemini_endpoint(lite0, fake, tmp_path):
    # httpx logs every request's URL at INFO: `vmem -v` printed a base URL's password and a ?key= token.
    import subprocess

    from retrieval import open_store
    from tests._reliability_fixtures import LABELS, VMEM, subprocess_env

    # An EfficientNet-Lite0 memory (the session's model): the `vmem` process then loads no transformers, which
    # took half of its 10 s of CPU with the tiny DINOv2. The encoder plays no part in what is logged.
    memory = tmp_path / "memory"
    with open_store(str(memory), lite0.spec) as store:
        images = [noise_png(i) for i in range(6)]
        store.add(lite0.embed(images), [LABELS[i % 3] for i in range(6)], [f"mem:seed/{i}.png" for i in range(6)])
    query = tmp_path / "q.png"
    query.write_bytes(noise_png(99))
    password = "proxy-SECRET-password-91b7"
    host = fake.url.split("://", 1)[1]
    env = {**subprocess_env(), "GEMINI_API_KEY": GEMINI_KEY, "VMEM_GEMINI_MAX_ATTEMPTS": "1",
           "GOOGLE_GEMINI_BASE_URL": f"http://user:{password}@{host}"}
    ran = subprocess.run([*VMEM, "-v", "classify", str(query), "--memory", str(memory), "--rerank"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert fake.count == 1  # the request did go out, through the logged client
    assert password not in ran.stderr + ran.stdout
    assert_no_secret("vmem -v's output", ran.stderr + ran.stdout)


QDRANT_KEY = "qdrant-SECRET-cloudkey-5e8d2a"


@pytest.mark.parametrize("command", [["info"], ["serve", "--no-auth", "--port", "0"]])
@pytest.mark.parametrize("given", ["QDRANT_API_KEY", "?api_key="])
def test_a_qdrant_servers_api_key_is_sent_and_never_shown(command, given):
    # A secured Qdrant server (Qdrant Cloud) takes its key in an `api-key` header: no command could send one, and
    # a URL's ?api_key= was dropped by qdrant-client (it reads no key from a query).
    import subprocess

    from tests._reliability_fixtures import VMEM, subprocess_env

    listener = HeadersListener()
    try:
        env = subprocess_env(**({"QDRANT_API_KEY": QDRANT_KEY} if given == "QDRANT_API_KEY" else {}))
        if given != "QDRANT_API_KEY":
            env.pop("QDRANT_API_KEY", None)
        url = listener.url if given == "QDRANT_API_KEY" else f"{listener.url}/?api_key={QDRANT_KEY}"
        ran = subprocess.run([*VMEM, "-v", *command, "--qdrant-url", url], env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        listener.close()
    assert ran.returncode == 75, ran.stderr[-3000:]  # nobody answered: worth a retry
    assert "could not reach the Qdrant server" in ran.stderr, ran.stderr[-3000:]
    assert listener.heads and listener.api_keys() == {QDRANT_KEY}, listener.heads
    # sent as typed: plain http to a loopback server (qdrant-client turns to https for a key only without a scheme)
    assert all(head.startswith(("GET ", "POST ", "PUT ")) for head in listener.heads), listener.heads
    assert not any("api_key" in head.split("\r\n")[0] for head in listener.heads)  # out of the request's path
    assert QDRANT_KEY not in ran.stdout + ran.stderr
    assert_no_secret_of(QDRANT_KEY, "the command's output", ran.stdout + ran.stderr)


def assert_no_secret_of(secret: str, where: str, text: str) -> None:
    leaked = [p for p in pieces(secret) if p in text]
    assert not leaked, f"{where} contains part of a key: {leaked[0]!r}"


def test_an_empty_api_key_in_a_qdrant_url_is_refused_as_such():
    from retrieval import MemoryError
    from retrieval.store import same_location, server_url_and_key

    assert server_url_and_key(f"https://q.example:6333/?api_key={QDRANT_KEY}") == ("https://q.example:6333/",
                                                                                   QDRANT_KEY)
    assert same_location(f"https://q.example:6333?api_key={QDRANT_KEY}", "https://q.example:6333")
    with pytest.raises(MemoryError, match=r"\?api_key= is empty"):  # `?api_key=$KEY` with $KEY unset
        server_url_and_key("https://q.example:6333/?api_key=")


def test_the_service_logs_the_qdrant_server_it_opens_without_the_urls_api_key(caplog, monkeypatch):
    from retrieval import MemoryUnavailableError
    from server import Settings, create_app

    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    listener = HeadersListener()
    try:
        app = create_app(Settings(qdrant_url=f"{listener.url}?api_key={QDRANT_KEY}", auth_disabled=True))
        with pytest.raises(MemoryUnavailableError), TestClient(app):
            pass
    finally:
        listener.close()
    assert listener.api_keys() == {QDRANT_KEY}
    assert f"opening memory at {listener.url}" in caplog.text
    assert_no_secret_of(QDRANT_KEY, "the service's log", caplog.text)
