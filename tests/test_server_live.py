"""The service under a real uvicorn on loopback: HTTP end to end, concurrency, and `vmem serve` itself."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from typer.testing import CliRunner

from retrieval.files import served_by
from server import Settings, create_app
from tests._server_fixtures import API_KEY, COLORS, fill_memory, live_server, texture
from tests.conftest import REPO
from vmem import VisualMemory
from vmem.cli import app

AUTH = {"X-API-Key": API_KEY}


@pytest.fixture
def served(tmp_path, lite0, memory_images):
    """(base URL, the memory it serves) under a real uvicorn."""
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)
    with live_server(app) as url:
        yield url, mem
    mem.close()


@pytest.fixture
def base_url(served):
    return served[0]


def test_classify_add_and_forget_over_http(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.get("/readyz").json()["status"] == "ready"
        query = texture((240, 230, 20), 1)
        before = http.post("/v1/classify", params={"k": 3}, files={"image": ("q.png", query)}).json()
        assert before["label"] != "yellow"

        added = http.post("/v1/memory", headers=AUTH, data={"label": "yellow"},
                          files=[("images", (f"y{i}.png", texture((240, 230, 20), 10 + i))) for i in range(3)])
        assert added.status_code == 201
        after = http.post("/v1/classify", params={"k": 3}, files={"image": ("q.png", query)}).json()
        assert after["label"] == "yellow"
        assert http.get(after["neighbors"][0]["thumbnail_url"]).headers["content-type"] == "image/jpeg"

        gone = http.delete("/v1/memory", params={"label": "yellow"}, headers=AUTH).json()
        assert gone == {"deleted": 3, "points": 12, "erased": False, "note": None}
        again = http.post("/v1/classify", params={"k": 3}, files={"image": ("q.png", query)}).json()
        assert "yellow" not in {n["label"] for n in again["neighbors"]}

        metrics = http.get("/metrics").text
        assert 'vmem_http_requests_total{method="POST",route="/v1/classify",status="200"} 3.0' in metrics
        assert 'vmem_memory_edits_total{op="forget"} 3.0' in metrics


def test_after_an_unexpected_error_the_connection_still_serves_the_next_request(served, monkeypatch, caplog):
    # uvicorn drops a connection whose request raised past the app: the next request sent on it (perhaps an
    # edit) would meet a reset, and its client could not tell whether it ran.
    url, mem = served

    def broken(**_):
        raise RuntimeError("a defect nobody foresaw")

    monkeypatch.setattr(mem, "history_page", broken)
    with httpx.Client(base_url=url, timeout=30) as http:
        resp = http.get("/v1/memory/history")
        assert resp.status_code == 500 and resp.json()["type"] == "urn:vmem:problem:internal"
        assert "a defect" not in resp.text  # the log has it, not the client
        assert http.get("/healthz").status_code == 200  # the same connection
        assert 'route="/v1/memory/history",status="500"} 1.0' in http.get("/metrics").text
        # The answer and the log's line name one request id, the client's own when it sends one
        again = http.get("/v1/memory/history", headers={"X-Request-ID": "proxy-7f3a"})
        assert again.headers["X-Request-ID"] == again.json()["request_id"] == "proxy-7f3a"
    rid = resp.headers["X-Request-ID"]
    assert resp.json()["request_id"] == rid and len(rid) == 32
    assert sum(f"unhandled error on GET /v1/memory/history [{rid}]" in r.getMessage() for r in caplog.records) == 1
    assert sum("[proxy-7f3a]" in r.getMessage() for r in caplog.records) == 1


def test_a_classify_whose_client_gave_up_while_it_waited_is_not_run_and_counts_as_499(tmp_path, lite0,
                                                                                      memory_images, caplog):
    # uvicorn cancels nothing when a client leaves: under overload, clients that had given up were still
    # classified (crowding out those waiting), counted as 200s, and logged nowhere
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY, featurize_threads=1), memory=mem)
    caplog.set_level(logging.INFO, logger="server.problems")
    with live_server(app) as url:
        service = app.state.service
        classified = []
        real = service.memory.classify
        service.memory.classify = lambda *a, **k: classified.append(1) or real(*a, **k)
        release = threading.Event()
        busy = service.executor.submit(release.wait, 30)  # the one embedding thread
        try:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/classify", files={"image": ("q.png", texture(COLORS["blue"], 5))}, timeout=0.5)
            deadline = time.monotonic() + 60  # the server notices the disconnect on its own time
            while 'route="/v1/classify",status="499"} 1.0' not in httpx.get(f"{url}/metrics", timeout=30).text:
                if time.monotonic() > deadline:
                    pytest.fail("the classify of a client gone was not counted as 499")
                time.sleep(0.05)
        finally:
            release.set()
        assert busy.result(timeout=5)
        body = httpx.post(f"{url}/v1/classify", files={"image": ("q.png", texture(COLORS["blue"], 6))}, timeout=30)
        assert body.status_code == 200 and classified == [1]  # the abandoned one never ran
    mem.close()
    assert any("client left POST /v1/classify" in r.getMessage() for r in caplog.records)


def test_a_request_a_stop_cuts_short_is_a_503_saying_so_not_a_bare_500(tmp_path, lite0, memory_images, caplog):
    # uvicorn cancels what is still running once a stop's graceful time is up: its client had got a plain-text
    # "Internal Server Error" and the log a CancelledError traceback
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY, featurize_threads=1), memory=mem)
    caplog.set_level(logging.INFO, logger="server.problems")
    release = threading.Event()
    answers: list[httpx.Response] = []
    with live_server(app, timeout_graceful_shutdown=1) as url:
        busy = app.state.service.executor.submit(release.wait, 30)  # the one embedding thread: the classify waits
        asking = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/v1/classify", files={"image": ("q.png", texture(COLORS["blue"], 7))}, timeout=30)))
        asking.start()
        # The stop begins once the classify waits for that thread (a stop before it arrived refuses its connection)
        deadline = time.monotonic() + 60
        while 'vmem_work_queued{pool="embedding"} 1.0' not in httpx.get(f"{url}/metrics", timeout=30).text:
            assert asking.is_alive() and time.monotonic() < deadline, answers
            time.sleep(0.05)
        threading.Timer(3, release.set).start()  # the stop itself may wait on the busy thread
    asking.join(timeout=30)
    assert busy.result(timeout=30)
    mem.close()
    [answer] = answers
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:vmem:problem:stopping" and answer.headers["retry-after"]
    assert "the service is stopping: send the request again" in answer.json()["detail"]
    assert any("the service is stopping: POST /v1/classify" in r.getMessage() and not r.exc_info
               for r in caplog.records)


def test_a_client_that_leaves_mid_upload_is_no_server_error(base_url):
    host, port = base_url.removeprefix("http://").split(":")
    body = b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + b"x" * 200_000
    for _ in range(2):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                         + f"Content-Length: {2 * len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.3)
    deadline = time.monotonic() + 60  # the server notices the disconnects on its own time
    while 'route="/v1/classify",status="499"} 2.0' not in (metrics := httpx.get(f"{base_url}/metrics").text):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 'route="/v1/classify",status="499"} 2.0' in metrics
    assert 'route="/v1/classify",status="500"' not in metrics


def test_a_made_up_method_is_one_metrics_series_not_one_each(base_url):
    host, port = base_url.removeprefix("http://").split(":")
    for word in ("FROB", "BLARGH", "X" * 200):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"{word} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert sock.recv(200).startswith(b"HTTP/1.1 405")
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'vmem_http_requests_total{method="OTHER",route="/healthz",status="405"} 3.0' in metrics
    assert "FROB" not in metrics


def test_head_answers_what_get_would_without_the_body(base_url):
    # Monitors and load balancers often check health with HEAD.
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for path in ("/healthz", "/readyz", "/", "/v1/memory/stats", "/static/app.js"):
            got, head = http.get(path), http.head(path)
            assert head.status_code == got.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
        assert http.head("/v1/classify").status_code == 405  # a POST route: no GET to answer for
        assert http.head("/v1/nothing").status_code == 404
        metrics = http.get("/metrics").text
        assert 'vmem_http_requests_total{method="HEAD",route="/healthz",status="200"} 1.0' in metrics


def test_concurrent_clients_all_get_answers_while_health_stays_fast(tmp_path, lite0, memory_images):
    # Health is answered while every classify still waits for an embedding thread: it queues behind none of them.
    # (Timed against a second instead, as it had been, it was answered in 0.4 to 0.6 s on a loaded machine.)
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)
    service = app.state.service

    def classify(url: str, i: int) -> bool:
        with httpx.Client(base_url=url, timeout=60) as http:
            label = list(COLORS)[i % 3]
            resp = http.post("/v1/classify", params={"k": 4}, files={"image": ("q.png", texture(COLORS[label], i))})
            resp.raise_for_status()
            return resp.json()["label"] == label

    release = threading.Event()
    with live_server(app) as url, ThreadPoolExecutor(8) as pool, httpx.Client(base_url=url, timeout=10) as http:
        busy = [service.executor.submit(release.wait, 60) for _ in range(service.settings.featurize_threads)]
        try:
            answers = [pool.submit(classify, url, i) for i in range(16)]
            deadline = time.monotonic() + 60  # the clients' threads send them on their own time
            while 'vmem_work_queued{pool="embedding"} 8.0' not in http.get("/metrics").text:
                assert time.monotonic() < deadline and not any(a.done() for a in answers), "the classifies never queued"
                time.sleep(0.05)
            for _ in range(5):
                assert http.get("/healthz").status_code == 200
            assert not any(a.done() for a in answers)
        finally:
            release.set()
        assert all(a.result(timeout=120) for a in answers)  # and, let go, all 16 answered right
        assert all(f.result(timeout=5) for f in busy)
    mem.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_vmem_serve_starts_serves_and_stops(tmp_path, lite0, memory_images, log_format):
    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    port = _free_port()
    env = {**os.environ, "VMEM_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--memory", str(tmp_path / "memory"),
           "--port", str(port), "--threads", "1"]
    (tmp_path / ".env").write_text(f"VMEM_LOG_FORMAT={log_format}\n")  # read from the env file as every VMEM_* is
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "vmem serve did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        body = httpx.post(f"{url}/v1/classify", params={"k": 3}, timeout=30,
                          files={"image": ("q.png", texture(COLORS["blue"], 5))}).json()
        assert body["label"] == "blue"
        assert httpx.get(f"{url}/v1/memory/stats").json()["points"] == 12
        # The CLI, refused the memory the service holds, says where to ask instead
        refused = CliRunner().invoke(app, ["points", "--memory", str(tmp_path / "memory")])
        assert refused.exit_code == 75
        assert (f"it is served by vmem serve (pid {proc.pid}) at {url}: ask it, GET {url}/v1/memory/points"
                in refused.stderr), refused.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert not (tmp_path / "memory" / ".vmem-served.json").exists()  # removed at the service's stop
    assert API_KEY not in out  # the key is never logged
    summary = (r"serving .*: 12 points, \S+ features; (re-rank with \S+|no Gemini key \(GEMINI_API_KEY\): "
               r"re-ranked requests fall back to the vote); edits need the API key")
    if log_format == "json":  # every line a JSON object, vmem serve's own first line too
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert re.fullmatch(summary, lines[0]["message"]) and lines[0]["logger"] == "vmem.serve", out
        assert any(e["logger"] == "uvicorn.access" and "POST /v1/classify?k=3" in e["message"] for e in lines)
        return
    # What an operator checks first: how many points, which encoder, whether re-ranking and edits can work
    assert re.search(f"^{summary}$", out, re.M), out
    # A service's log is read later: each line of uvicorn's, access lines included, says when
    stamped = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.search(stamped + r"INFO: +Application startup complete", out, re.M), out
    assert re.search(stamped + r"INFO: +127\.0\.0\.1:\d+ - \"POST /v1/classify\?k=3 HTTP/1\.1\" 200", out, re.M), out


@contextmanager
def vmem_serve(memory, *options, env=None):
    """`vmem serve` of `memory` in a child process, with `options` (and `env` added to the environment); yields (the
    process, the URL that `.vmem-served.json` names once it is ready). Stopped with SIGINT at the end."""
    env = {**os.environ, "VMEM_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--memory", str(memory), "--threads",
           "1", *options]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "vmem serve did not become ready"
            urls = (served_by(memory) or {}).get("urls")
            try:
                if urls and httpx.get(f"{'/'.join(urls[0].split('/')[:3])}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield proc, urls[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_the_route_a_refused_command_names_is_answered_by_a_service_behind_a_proxy(tmp_path, lite0, memory_images):
    # vmem serve --root-path /vmem serves at its own address what a proxy strips of /vmem: the route named to the
    # operator on the service's host is the service's own, without the proxy's prefix (which had been a 404)
    memory = tmp_path / "memory"
    fill_memory(str(memory), lite0, memory_images).close()
    port = _free_port()
    with vmem_serve(memory, "--port", str(port), "--root-path", "/vmem") as (proc, url):
        assert url == f"http://127.0.0.1:{port}"
        refused = CliRunner().invoke(app, ["points", "--memory", str(memory)])
        assert refused.exit_code == 75
        assert f"ask it, GET {url}/v1/memory/points" in refused.stderr, refused.stderr
        assert httpx.get(f"{url}/v1/memory/points").json()["points"]


def test_a_service_on_a_free_port_names_it_where_a_refused_command_is_told_to_ask(tmp_path, lite0, memory_images):
    # vmem serve --port 0 (a port the system chooses): the note had named no address, "ask it, GET /v1/memory/points"
    memory = tmp_path / "memory"
    fill_memory(str(memory), lite0, memory_images).close()
    with vmem_serve(memory, "--port", "0") as (proc, url):
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*", url), url
        refused = CliRunner().invoke(app, ["points", "--memory", str(memory)])
        assert f"it is served by vmem serve (pid {proc.pid}) at {url}: ask it, GET {url}/v1/memory/points" in (
            refused.stderr), refused.stderr
        assert httpx.get(f"{url}/v1/memory/points").json()["points"]


def test_a_second_ctrl_c_stops_vmem_serve_at_once_saying_so(tmp_path, lite0, memory_images):
    # A re-rank in flight waits on Gemini (here a fake that hangs) up to its 60 s deadline. The first Ctrl-C waits for
    # it; the second had printed uvicorn's CancelledError traceback, then waited for it all the same
    from tests.fake_gemini import FakeGemini

    memory = tmp_path / "memory"
    fill_memory(str(memory), lite0, memory_images).close()
    with FakeGemini() as fake:
        fake.enqueue(fake.hang(60))
        gemini = {"GEMINI_API_KEY": "fake-key", "VMEM_GEMINI_BASE_URL": fake.url, "VMEM_HOME": str(tmp_path)}
        with vmem_serve(memory, "--port", "0", env=gemini) as (proc, url), ThreadPoolExecutor(1) as client:
            asked = client.submit(httpx.post, f"{url}/v1/classify", params={"rerank": "true"}, headers=AUTH,
                                  files={"image": ("q.png", texture(COLORS["blue"], 5))}, timeout=90)
            deadline = time.monotonic() + 60
            while fake.count == 0:
                assert time.monotonic() < deadline, "the re-rank never reached Gemini"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            # Two Ctrl-Cs that arrive before the service's handler has run are one to Python: the second is sent once
            # the first is seen to have begun the stop (the port no longer taking connections), however loaded the
            # machine is
            host, port = url.split("//")[1].split(":")
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=5).close()
                except ConnectionRefusedError:
                    break
                assert time.monotonic() < deadline, "the first Ctrl-C did not stop the service taking connections"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)  # not the 60 s the hang would have held it
            assert asked.result().status_code == 503  # "the service is stopping: send the request again"
    assert proc.returncode == 130, out
    assert re.search(r"WARNING: +vmem.cli.serve: Ctrl-C again: stopping at once; 1 request in flight cut off$", out,
                     re.M), out
    assert "Traceback" not in out and "CancelledError" not in out
    assert not (memory / ".vmem-served.json").exists()  # closed as at any stop
    with VisualMemory.open(memory, reranker=None) as mem:
        assert mem.store.count() == 12


def test_vmem_serve_stopped_by_sigterm_closes_its_memory_and_exits_0(tmp_path, lite0, memory_images):
    # docker stop, Kubernetes and systemd stop a service with SIGTERM. uvicorn finishes the requests in flight, then
    # raises the signal again: that had killed vmem serve before its memory was closed, with exit 143, leaving a
    # read-only service's copy of the memory in TMPDIR at each stop (and a writable memory's last writes to the log).
    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    (tmp_path / "tmp").mkdir()
    port = _free_port()
    env = {**os.environ, "VMEM_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "VMEM_READ_ONLY": "true",
           "TMPDIR": str(tmp_path / "tmp")}
    cmd = [sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--memory", str(tmp_path / "memory"),
           "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "vmem serve did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert httpx.get(f"{url}/readyz").json()["read_only"] is True
        assert len(list((tmp_path / "tmp").iterdir())) == 1  # the memory's copy
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "Application shutdown complete" in out
    assert list((tmp_path / "tmp").iterdir()) == []  # closed: the copy removed


def test_the_temporary_files_of_a_killed_service_are_removed_when_it_starts_again(tmp_path, lite0, memory_images):
    # An import is written to the temporary folder as it arrives (up to VMEM_MAX_IMPORT_BYTES, gigabytes): a service
    # killed meanwhile (an OOM kill, kill -9) had left it there, and each restart under systemd one more.
    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with vmem_serve(tmp_path / "memory", env={"TMPDIR": str(tmp)}) as (proc, url):
        host, port = url.split("//")[1].split("/")[0].split(":")
        with socket.create_connection((host, int(port))) as upload:  # half of the file sent, the rest never
            upload.sendall(f"POST /v1/memory/import?filename=big.npz HTTP/1.1\r\nHost: {host}\r\nX-API-Key: "
                           f"{API_KEY}\r\nContent-Type: application/octet-stream\r\nContent-Length: {8 << 20}\r\n"
                           f"\r\n".encode() + b"\0" * (4 << 20))
            deadline = time.monotonic() + 30
            while sum(f.stat().st_size for f in tmp.rglob("big.npz")) < (4 << 20):
                assert time.monotonic() < deadline, "the import's file never reached the temporary folder"
                time.sleep(0.1)
            proc.kill()
            proc.wait()
    assert [f.name for f in tmp.rglob("*") if f.is_file()] == ["big.npz"]
    with vmem_serve(tmp_path / "memory", env={"TMPDIR": str(tmp)}):
        assert list(tmp.iterdir()) == []  # removed before it was ready


def test_a_connection_whose_request_never_ends_is_probed_so_a_vanished_client_lets_go(tmp_path, lite0, memory_images):
    # uvicorn waits for the rest of a request without end. A client gone without a word mid-request (its host off, a
    # NAT's mapping dropped, a network cut: no FIN ever comes) had held its connection, a file, for good: a service up
    # for weeks ran out of them. TCP keep-alive probes tell such a peer gone; loopback's peer answers them, so what is
    # checked is that the kernel probes each of the service's connections (`ss` shows its keepalive timer).
    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    with vmem_serve(tmp_path / "memory", "--port", str(_free_port())) as (_, url):
        host, port = url.split("//")[1].split("/")[0].split(":")
        stalled = []
        for begun in (b"", b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n",
                      b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\n--"):
            stalled.append(socket.create_connection((host, int(port))))
            stalled[-1].sendall(begun)
        ours = {f"{host}:{s.getsockname()[1]}" for s in stalled}
        # The kernel lists a connection as established once it is queued, before the service's event loop accepts
        # it and turns its probes on (a loaded machine: past the half second this waited once): asked until all three
        # are probed, or a minute has passed
        deadline = time.monotonic() + 60
        while True:
            listed = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
                                    capture_output=True, text=True, check=True).stdout.splitlines()
            timers = {line.split()[3]: line for line in listed if line.split()[3] in ours}
            probed = len(timers) == 3 and all("timer:(keepalive," in line for line in timers.values())
            if probed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for s in stalled:
            s.close()
    assert len(timers) == 3, listed
    assert all("timer:(keepalive," in line for line in timers.values()), timers


def test_bench_load_reports_latency_throughput_and_no_errors(tmp_path, lite0, memory_images):
    from typer.testing import CliRunner

    from vmem.cli import app

    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    result = CliRunner().invoke(app, [
        "bench", "load", "--memory", str(tmp_path / "memory"), "--images", str(memory_images.paths[0].parent),
        "--clients", "4", "--duration", "2", "--max-requests", "40", "--threads", "1", "--k", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    res = report["results"]
    assert res["errors"] == 0 and 0 < res["ok"] <= 40 + 4
    assert res["latency_ms"]["p50"] <= res["latency_ms"]["p99"] <= res["latency_ms"]["max"]
    assert res["memory"] == {"points": 12, "labels": 3, "featurizer": "efficientnet-lite0", "backend": "embedded"}
    assert report["settings"]["clients"] == 4 and report["settings"]["answer_cache"] is False


def test_bench_load_refuses_a_remote_url(tmp_path):
    from typer.testing import CliRunner

    from vmem.cli import app

    result = CliRunner().invoke(app, ["bench", "load", "--url", "http://example.com:8000", "--images", str(tmp_path)])
    assert result.exit_code == 2 and "not loopback" in result.output


def test_behind_a_proxy_that_strips_a_prefix_the_urls_handed_out_carry_it(tmp_path, lite0, memory_images):
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    app = create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)
    # As `vmem serve --root-path /vmem` behind nginx's `location /vmem/ { proxy_pass http://127.0.0.1:8000/; }`:
    # requests arrive without the prefix, and the page's browser asks for what the answers say.
    with live_server(app, root_path="/vmem") as url, httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/v1/classify", params={"k": 3}, files={"image": ("q.png", texture((220, 30, 30), 1))})
        thumb = answer.json()["neighbors"][0]["thumbnail_url"]
        assert thumb.startswith("/vmem/v1/memory/points/"), thumb
        assert http.get(thumb.removeprefix("/vmem")).headers["content-type"] == "image/jpeg"  # as the proxy sends it
    mem.close()


def test_vmem_serve_logs_vmem_s_own_lines_with_a_time_and_the_logger_s_name():
    script = ("import logging, logging.config; from vmem.cli.serve import _service_log_config; "
              "logging.getLogger().setLevel(logging.WARNING); logging.config.dictConfig(_service_log_config()); "
              "logging.getLogger('reranker.gemini').warning('re-ranking fell back to the vote'); "
              "logging.getLogger('retrieval.store').info('not shown without -v')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING: +reranker\.gemini: "
                        r"re-ranking fell back to the vote\n", out), out


def test_the_app_for_another_asgi_server_logs_as_vmem_serve_does(tmp_path):
    # Under `uvicorn --factory vmem.cli.serve:create_service_app`, vmem's warnings had come out bare (no time, no
    # level, no logger), through Python's last-resort handler
    script = ("import logging; from vmem.cli.serve import create_service_app; create_service_app(); "
              "logging.getLogger('reranker.gemini').warning('re-ranker circuit open')")
    env = {**os.environ, "VMEM_API_KEY": API_KEY, "VMEM_MEMORY": str(tmp_path / "memory")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING: +reranker\.gemini: "
                        r"re-ranker circuit open\n", out.stderr), out


def test_with_vmem_log_format_json_every_line_is_a_json_object():
    # For a log collector that parses fields; the time carries its offset, which the text lines lack
    script = ("import logging, logging.config; from vmem.cli.serve import _service_log_config; "
              "logging.getLogger().setLevel(logging.WARNING); logging.config.dictConfig(_service_log_config()); "
              "logging.getLogger('reranker.gemini').warning('re-ranking fell back to the vote'); "
              "logging.getLogger('uvicorn.access').info('%s - \"%s %s HTTP/%s\" %d', '127.0.0.1:5', 'GET', '/', '1.1', "
              "200)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "VMEM_LOG_FORMAT": "json"})
    lines = [json.loads(line) for line in (out.stderr + out.stdout).splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("WARNING", "reranker.gemini", "re-ranking fell back to the vote"),
        ("INFO", "uvicorn.access", '127.0.0.1:5 - "GET / HTTP/1.1" 200')]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", e["time"]) for e in lines)
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "VMEM_LOG_FORMAT": "xml"})
    assert refused.returncode != 0 and "VMEM_LOG_FORMAT is 'xml': give text or json" in refused.stderr
