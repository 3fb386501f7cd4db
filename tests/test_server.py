"""The HTTP service through FastAPI's TestClient: classify, edit the memory, errors, limits, metrics.

Real parts throughout: EfficientNet-Lite0 features of small generated images, a real Qdrant memory
(embedded Qdrant Edge, and qdrant-client's in-process mode for the backend-agnostic flow).
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from reranker import GeminiReranker
from reranker.testing import FakeGemini
from server import Settings, create_app
from tests._server_fixtures import API_KEY, COLORS, checkerboard, fill_memory, texture
from tests.conftest import make_scene, reencoded

PROBLEM = "application/problem+json"
AUTH = {"X-API-Key": API_KEY}


def settings(tmp_path, **overrides) -> Settings:
    return Settings(**{"memory": str(tmp_path / "memory"), "api_key": API_KEY,
                       "thumbnail_dir": tmp_path / "thumbs", **overrides})


@pytest.fixture(params=["edge"])
def backend(request):
    """The memory backend: embedded Qdrant Edge by default; the editing tests also run on qdrant-client."""
    return request.param


BOTH_BACKENDS = pytest.mark.parametrize("backend", ["edge", "qdrant"], indirect=True)


@pytest.fixture
def make_client(tmp_path, lite0, memory_images, backend):
    """make_client(**settings) -> a TestClient over a fresh copy of the test memory."""
    opened = []

    def make(**overrides) -> TestClient:
        location = str(tmp_path / f"memory{len(opened)}") if backend == "edge" else ":memory:"
        mem = fill_memory(location, lite0, memory_images)
        client = TestClient(create_app(settings(tmp_path, **overrides), memory=mem))
        client.__enter__()  # runs the lifespan: warm-up and novelty calibration
        opened.append((client, mem))
        return client

    yield make
    for client, mem in opened:
        client.__exit__(None, None, None)
        mem.close()


@pytest.fixture
def client(request, make_client):
    if getattr(request, "param", None) == "shared":
        return request.getfixturevalue("shared_client")
    return make_client()


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory, lite0, memory_images):
    """One service over one embedded memory for the tests whose requests are refused or only read (`SHARED`):
    a fresh memory per test, filled, warmed up and calibrated (0.4 s), is for the tests that edit. Those of
    them whose refused requests would have edited check that the memory still holds its 12 points."""
    tmp = tmp_path_factory.mktemp("shared")
    mem = fill_memory(str(tmp / "memory"), lite0, memory_images)
    with TestClient(create_app(settings(tmp), memory=mem)) as client:
        yield client
    mem.close()


SHARED = pytest.mark.parametrize("client", ["shared"], indirect=True)


def upload(data: bytes, name: str = "query.png") -> dict:
    return {"image": (name, data, "image/png")}


def assert_problem(resp, status: int, kind: str | None = None, says: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["status"] == status and body["title"]
    if kind:
        assert body["type"] == f"urn:vmem:problem:{kind}"
    if says:
        assert says in body["detail"], body["detail"]
    return body


# ------------------------------------------------------------------ classify


@pytest.mark.parametrize("label", list(COLORS))
def test_classify_upload_predicts_the_label_and_shows_the_neighbours(client, label):
    resp = client.post("/v1/classify?k=5", files=upload(texture(COLORS[label], seed=999)))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["label"] == label
    assert body["scores"][label] == max(body["scores"].values())
    assert abs(sum(body["scores"].values()) - 1) < 1e-6
    assert (body["vote"]["rule"], body["vote"]["k"], body["vote"]["origin"]) == ("rank", 5, "explicit")
    assert len(body["neighbors"]) == 5
    first = body["neighbors"][0]
    assert first["label"] == label and first["rank"] == 0 and first["weight"] > 0
    assert first["thumbnail_url"] == f"/v1/memory/points/{first['id']}/thumbnail"
    sims = [n["similarity"] for n in body["neighbors"]]
    assert sims == sorted(sims, reverse=True)
    assert body["novelty"] == pytest.approx(sum(1 - s for s in sims) / 5, abs=1e-5)
    assert body["reranked"] is False and body["fallback_reason"] is None
    assert body["source"] == "query.png"


def test_an_answer_under_min_confidence_is_unsure_and_the_cached_one_is_judged_again(client):
    # k=12, plurality: the whole memory of 3 colours x 4 votes, so the red answer's share is exactly 4/12.
    data = texture(COLORS["red"], seed=998)
    plain = client.post("/v1/classify?k=12&vote=plurality", files=upload(data)).json()
    assert plain["label"] == "red" and plain["confidence"] == pytest.approx(4 / 12)
    assert (plain["min_confidence"], plain["unsure"], plain["unsure_reason"]) == (None, False, None)
    # The same image again (from the service's cache of answers) under a threshold above its share, then below it.
    body = client.post("/v1/classify?k=12&vote=plurality&min_confidence=0.5", files=upload(data)).json()
    assert body["cached"] and body["label"] == "red" and body["unsure"] is True and body["min_confidence"] == 0.5
    assert body["unsure_reason"] == ("confidence 0.333 (the vote share of 'red') is under min_confidence 0.5: the "
                                     "label is a suggestion, for a person to check")
    below = client.post("/v1/classify?k=12&vote=plurality&min_confidence=0.3", files=upload(data)).json()
    assert (below["unsure"], below["unsure_reason"]) == (False, None)
    batch = client.post("/v1/classify/batch?k=12&vote=plurality&min_confidence=0.5",
                        files=[("images", ("a.png", data, "image/png"))]).json()
    assert batch["items"][0]["result"]["unsure"] is True
    assert_problem(client.post("/v1/classify?min_confidence=1.5", files=upload(data)), 422, says="min_confidence")


def test_an_uploaded_file_name_with_quotes_is_its_name(client):
    # A browser writes a file name's " as %22 in the upload (the HTML standard's form encoding; httpx does too)
    body = client.post("/v1/classify", files=upload(texture(COLORS["red"], 1), '猫 "Tom", 2.png')).json()
    assert body["source"] == '猫 "Tom", 2.png'


def test_default_k_comes_from_the_memory(client):
    body = client.post("/v1/classify", files=upload(texture(COLORS["red"], 1))).json()
    assert body["vote"]["k"] == 50 and body["vote"]["origin"] == "default"
    assert len(body["neighbors"]) == 12  # the whole memory: fewer points than k


def test_json_base64_and_data_url_answer_like_an_upload(client):
    data = texture(COLORS["green"], seed=5)
    by_upload = client.post("/v1/classify?k=4", files=upload(data, "g.png")).json()
    for image in (base64.b64encode(data).decode(), "data:image/png;base64," + base64.b64encode(data).decode()):
        by_json = client.post("/v1/classify?k=4", json={"image": image, "filename": "g.png"}).json()
        assert by_json["label"] == "green"
        assert [n["id"] for n in by_json["neighbors"]] == [n["id"] for n in by_upload["neighbors"]]
        assert by_json["scores"] == pytest.approx(by_upload["scores"])


def test_label_filter_keeps_only_those_labels(client):
    resp = client.post("/v1/classify?k=6&label=blue&label=green", files=upload(texture(COLORS["red"], 3)))
    labels = {n["label"] for n in resp.json()["neighbors"]}
    assert labels <= {"blue", "green"} and resp.json()["label"] in {"blue", "green"}


@pytest.mark.parametrize("rule", ["plurality", "distance", "softmax", "rank"])
def test_every_vote_rule(client, rule):
    body = client.post(f"/v1/classify?k=4&vote={rule}", files=upload(texture(COLORS["blue"], 7))).json()
    assert body["label"] == "blue" and body["vote"]["rule"] == rule


def test_the_service_reads_an_embedded_memory_before_taking_traffic(make_client, caplog):
    with caplog.at_level(logging.INFO, logger="server.service"):
        client = make_client()  # start-up returns once the memory has been read
        assert any("of the memory ahead of queries" in r.getMessage() for r in caplog.records)
        assert client.get("/healthz").status_code == 200
        caplog.clear()
        make_client(prefetch_memory=False)
        assert not any("ahead of queries" in r.getMessage() for r in caplog.records)


def test_rerank_with_gemini_and_forgetting_drops_its_cached_answers(tmp_path, lite0, memory_images):
    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=tmp_path / "rerank.sqlite",
                            backoff_initial_s=0.01, backoff_max_s=0.05, deadline_s=10, attempt_timeout_s=5)
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
        query = texture(COLORS["red"], 61)
        try:
            with TestClient(create_app(settings(tmp_path), memory=mem), headers=AUTH) as client:
                fake.enqueue(fake.answer("green"))  # the VLM disagrees with the vote
                url = "/v1/classify?k=12&rerank=true&template=neighbors-v1"
                first = client.post(url, files=upload(query, "a.png")).json()
                assert (first["label"], first["reranked"], first["fallback_reason"]) == ("green", True, None)
                assert first["template"].startswith("neighbors-v1") and first["model"]
                assert first["scores"]["red"] == max(first["scores"].values())  # the vote is still shown

                # Another upload name misses the service's cache but hits the re-ranker's.
                second = client.post(url, files=upload(query, "b.png")).json()
                assert second["label"] == "green" and second["usage"]["cached"] is True and fake.count == 1

                victim = first["neighbors"][0]["id"]
                assert client.delete(f"/v1/memory/points/{victim}", headers=AUTH).status_code == 200
                fake.enqueue(fake.answer("red"))
                third = client.post(url, files=upload(query, "c.png")).json()
                assert victim not in {n["id"] for n in third["neighbors"]}
                assert third["label"] == "red" and third["usage"]["cached"] is False and fake.count == 2

                # One neighbour, one candidate label: a fallback that never looked in the cache is no miss.
                lone = client.post("/v1/classify?k=1&rerank=true", files=upload(query, "d.png")).json()
                assert lone["fallback_reason"].startswith("only one candidate") and fake.count == 2

                metrics = client.get("/metrics").text
                assert 'vmem_rerank_cache_total{result="hit"} 1.0' in metrics
                assert 'vmem_rerank_cache_total{result="miss"} 2.0' in metrics
        finally:
            mem.close()  # closes its re-ranker too


def test_a_hung_gemini_holds_up_no_plain_classify(tmp_path, lite0, memory_images):
    from concurrent.futures import ThreadPoolExecutor

    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=None, deadline_s=120,
                            attempt_timeout_s=120)
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
        fake.enqueue(fake.hang(120), fake.hang(120))  # as many hung re-ranks as there are embedding threads
        try:
            with TestClient(create_app(settings(tmp_path, featurize_threads=2), memory=mem), headers=AUTH) as client, \
                    ThreadPoolExecutor(2) as pool:
                reranks = [pool.submit(client.post, "/v1/classify?k=12&rerank=true",
                                       files=upload(texture(COLORS["red"], 70 + i), f"r{i}.png")) for i in range(2)]
                for _ in range(1200):  # until both wait on Gemini
                    if fake.count == 2:
                        break
                    time.sleep(0.05)
                assert fake.count == 2
                plain = client.post("/v1/classify?k=3", files=upload(texture(COLORS["blue"], 80)))
                assert plain.status_code == 200 and plain.json()["label"] == "blue"
                assert not any(r.done() for r in reranks)  # answered while both re-ranks still wait on Gemini
                metrics = client.get("/metrics").text  # where an operator sees them waiting
                assert 'vmem_work_running{pool="rerank"} 2.0' in metrics
                assert 'vmem_work_running{pool="embedding"} 0.0' in metrics
                assert "vmem_rerank_circuit_state 0.0" in metrics
                fake.release_hangs()
                assert all(r.result().json()["reranked"] for r in reranks)
                metrics = client.get("/metrics").text
                assert 'vmem_work_running{pool="rerank"} 0.0' in metrics
                assert 'vmem_work_queued{pool="rerank"} 0.0' in metrics
                assert "vmem_rerank_duration_seconds_count 2.0" in metrics
                assert "vmem_gemini_requests_total 2.0" in metrics
        finally:
            mem.close()


@contextmanager
def reranking_service(tmp_path, lite0, memory_images, **reranker_options) -> Iterator[tuple[TestClient, FakeGemini]]:
    """A client of the service over the test memory, re-ranking with the real SDK against the fake Gemini."""
    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=None, **reranker_options)
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
        try:
            with TestClient(create_app(settings(tmp_path), memory=mem), headers=AUTH) as client:
                yield client, fake
        finally:
            mem.close()  # closes its re-ranker too


def test_an_answer_from_the_service_cache_reports_no_gemini_usage_and_tokens_are_counted_once(
        tmp_path, lite0, memory_images):
    with reranking_service(tmp_path, lite0, memory_images) as (client, fake):
        query, url = upload(texture(COLORS["red"], 61), "a.png"), "/v1/classify?k=12&rerank=true"
        first, again = (client.post(url, files=query).json() for _ in range(2))
        assert (first["cached"], again["cached"]) == (False, True) and fake.count == 1
        assert first["usage"]["requests"] == 1 and first["usage"]["total_tokens"] > 0
        # A client adding up `usage` to follow its Gemini bill counted the first request twice.
        assert again["usage"]["requests"] == again["usage"]["total_tokens"] == 0
        assert again["usage"]["cached"] is True
        metrics = client.get("/metrics").text
        assert f'vmem_gemini_tokens_total{{kind="prompt"}} {float(first["usage"]["prompt_tokens"])}' in metrics
        assert "vmem_gemini_requests_total 1.0" in metrics


def test_an_agentic_re_rank_over_http_answers_with_its_tool_calls(tmp_path, lite0, memory_images):
    # `trace` was dropped between the Python result and the HTTP answer.
    with reranking_service(tmp_path, lite0, memory_images) as (client, fake):
        fake.enqueue(fake.call("more_neighbors", k=12), fake.answer("red"))
        answer = client.post("/v1/classify?k=6&rerank=true&template=agentic-v1",
                             files=upload(texture(COLORS["red"], 61), "a.png")).json()
        assert answer["reranked"] is True, answer
        assert [t["tool"] for t in answer["trace"]] == ["more_neighbors", "answer"]


def test_a_template_edited_while_the_service_runs_is_not_answered_from_the_cache(tmp_path, lite0, memory_images,
                                                                                  monkeypatch):
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "templates"))
    (tmp_path / "templates").mkdir()
    mine = tmp_path / "templates" / "mine.yaml"
    mine.write_text("name: mine\nversion: 1\nsystem: Classify the image.\n")
    with reranking_service(tmp_path, lite0, memory_images) as (client, fake):
        query, url = upload(texture(COLORS["red"], 61), "a.png"), "/v1/classify?k=12&rerank=true&template=mine"
        first, cached = (client.post(url, files=query).json() for _ in range(2))
        assert (first["cached"], cached["cached"]) == (False, True)
        listed = {t["name"]: t["hash"] for t in client.get("/v1/templates").json()["templates"]}
        mine.write_text("name: mine\nversion: 1\nsystem: Name the bird in the image.\n")  # same version
        again = client.post(url, files=query).json()
        assert again["cached"] is False and fake.count == 2
        assert "Name the bird" in str(fake.requests[-1].body["systemInstruction"])
        # The answers say which text was sent: one name and version, two hashes, as GET /v1/templates gives them.
        assert first["template"] == again["template"] == "mine@1"
        assert first["template_hash"] == cached["template_hash"] == listed["mine"]
        edited = {t["name"]: t["hash"] for t in client.get("/v1/templates").json()["templates"]}
        assert again["template_hash"] == edited["mine"] != first["template_hash"]


def test_the_service_lists_and_checks_templates_by_its_re_rankers_own_registry(tmp_path, lite0, memory_images,
                                                                               monkeypatch):
    from prompts import TemplateRegistry

    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "terse.yaml").write_text("name: terse\nversion: 1\nsystem: Name the colour.\n")
    (tmp_path / "elsewhere").mkdir()  # $VMEM_TEMPLATES_DIR: read by the default registry, not by this re-ranker
    (tmp_path / "elsewhere" / "stray.yaml").write_text("name: stray\nversion: 1\nsystem: Classify.\n")
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "elsewhere"))
    with reranking_service(tmp_path, lite0, memory_images,
                           registry=TemplateRegistry(tmp_path / "ours")) as (client, fake):
        listed = client.get("/v1/templates").json()
        assert [t["name"] for t in listed["templates"]] == ["agentic-v1", "labels-only", "neighbors-v1", "terse"]
        query = upload(texture(COLORS["red"], 61), "a.png")
        # The re-ranker's own template is taken (it had been a 422, unknown to the default registry)...
        answer = client.post("/v1/classify?k=12&rerank=true&template=terse", files=query).json()
        assert answer["reranked"] and answer["template"] == "terse@1" and fake.count == 1
        assert "Name the colour." in str(fake.requests[0].body["systemInstruction"])
        # ... and a name only the default registry knows is a 422 naming the re-ranker's (it had been a 500).
        refused = client.post("/v1/classify?k=12&rerank=true&template=stray", files=query)
        body = assert_problem(refused, 422, "unknown-template", "unknown template 'stray'; available: agentic-v1, "
                              "labels-only, neighbors-v1, terse")
        assert "stray" not in body["detail"].split("available:")[1]
        batch = client.post("/v1/classify/batch?k=12&rerank=true&template=stray", files=[("images", query["image"])])
        assert_problem(batch, 422, "unknown-template", "'stray'")
        # A file removed after the check, before the re-ranker reads it: the same 422, not a 500.
        monkeypatch.setattr("server.routes.classify.check_template", lambda service, q: None)
        (tmp_path / "ours" / "terse.yaml").unlink()
        assert_problem(client.post("/v1/classify?k=12&rerank=true&template=terse", files=query), 422,
                       "unknown-template", "unknown template 'terse'; available: agentic-v1, labels-only, neighbors-v1")


def test_a_label_filtered_query_is_judged_against_those_labels_points(client):
    # "mixed": one image of each colour, so its points lie far apart; every other label is one tight colour.
    mixed = [("images", (f"m{i}.png", texture(c, 40 + i), "image/png")) for i, c in enumerate(COLORS.values())]
    assert client.post("/v1/memory", headers=AUTH, files=mixed, data={"label": "mixed"}).status_code == 201
    query = upload(texture(COLORS["red"], 99))
    whole = client.post("/v1/classify?k=2", files=query).json()
    among = client.post("/v1/classify?k=2&label=mixed", files=query).json()
    # Among "mixed" the query's second neighbour is another colour: far, by the whole memory's bar...
    assert among["novelty"] > whole["ood_threshold"]
    # ...and typical of those points, which are each that far from the others: not out of distribution.
    assert among["ood_threshold"] > among["novelty"] and among["out_of_distribution"] is False
    assert client.post("/v1/classify?k=2&label=mixed", files=query).json()["ood_threshold"] == among["ood_threshold"]


def test_a_new_label_sets_calibration_does_not_hold_up_answers_whose_threshold_is_known(client, monkeypatch):
    import threading

    service = client.app.state.service
    known = service.ood_threshold(3)
    started, release = threading.Event(), threading.Event()
    calibrate = service._calibrate

    def slow_for_labels(k, labels=None):
        if labels:
            started.set()
            release.wait(30)
        return calibrate(k, labels)

    monkeypatch.setattr(service, "_calibrate", slow_for_labels)
    new_set = threading.Thread(target=service.ood_threshold, args=(3, ["red"]))
    new_set.start()
    assert started.wait(30)
    answered: list[float | None] = []
    cached = threading.Thread(target=lambda: answered.append(service.ood_threshold(3)))
    cached.start()
    cached.join(10)  # with the calibration under the lock, this waited for `release`
    before_release = list(answered)
    release.set()
    new_set.join(30)
    assert before_release == [known]


def hold_calibrations(service, monkeypatch):
    """Novelty calibrations wait for `release`; `started` is set when one begins."""
    import threading

    started, release = threading.Event(), threading.Event()
    calibrate = service._calibrate

    def held(k, labels=None):
        started.set()
        assert release.wait(30)
        return calibrate(k, labels)

    monkeypatch.setattr(service, "_calibrate", held)
    return started, release


def test_after_an_edit_answers_use_the_earlier_threshold_until_the_new_one_is_ready(client, monkeypatch):
    import time

    service = client.app.state.service
    earlier = client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 11))).json()["ood_threshold"]
    started, release = hold_calibrations(service, monkeypatch)
    # An unusual image added: the memory's points changed, so the threshold is computed anew, in the background.
    added = client.post("/v1/memory", headers=AUTH, data={"label": "odd"},
                        files={"images": ("odd.png", checkerboard(32, 3), "image/png")})
    assert added.status_code == 201
    answer = client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 12))).json()
    assert answer["ood_threshold"] == earlier and started.wait(30)  # answered without waiting for it
    release.set()
    deadline = time.monotonic() + 30
    while service._recalibrating and time.monotonic() < deadline:
        time.sleep(0.02)
    fresh = service.ood_threshold(3)
    assert fresh == service.ood_threshold(3, fresh=True) != earlier  # the new one, computed once
    assert client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 12))).json()["ood_threshold"] == fresh


def test_after_an_edit_the_thresholds_in_use_are_calibrated_again_one_at_a_time(client, monkeypatch):
    # A thread each had run them all at once: 30 at k near 1000 took the service from 0.9 to 8 GB
    import time

    service = client.app.state.service
    for k in (2, 3, 4, 5):
        service.ood_threshold(k)
    running, most, done = [0], [0], []
    real = service._calibrate

    def counted(*args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.1)
        try:
            return real(*args)
        finally:
            running[0] -= 1
            done.append(args[0])

    monkeypatch.setattr(service, "_calibrate", counted)
    added = client.post("/v1/memory", headers=AUTH, data={"label": "odd"},
                        files={"images": ("odd.png", checkerboard(32, 3), "image/png")})
    assert added.status_code == 201
    for k in (2, 3, 4, 5):
        service.ood_threshold(k)  # the threshold from before the edit, at once
    deadline = time.monotonic() + 30
    while service._recalibrating and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(done) == [2, 3, 4, 5] and most[0] == 1


def test_a_recalibration_cut_short_by_shutdown_is_no_warning(client, monkeypatch, caplog):
    import time

    service = client.app.state.service
    client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 11)))
    started, release = hold_calibrations(service, monkeypatch)
    client.post("/v1/memory", headers=AUTH, data={"label": "odd"},
                files={"images": ("odd.png", checkerboard(32, 3), "image/png")})
    client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 12)))
    assert started.wait(30)
    service.owns_memory = True  # as `vmem serve`'s service does
    service.close()  # the service shuts down, its memory closed under the recalibration
    release.set()
    deadline = time.monotonic() + 30
    while service._recalibrating and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not service._recalibrating and "recalibrating the novelty threshold failed" not in caplog.text


def test_rerank_without_a_configured_reranker_falls_back_with_a_reason(client):
    body = client.post("/v1/classify?k=4&rerank=true", files=upload(texture(COLORS["red"], 8)),
                       headers=AUTH).json()
    assert body["label"] == "red" and body["reranked"] is False
    assert body["fallback_reason"]
    metrics = client.get("/metrics").text
    assert "vmem_rerank_fallbacks_total{reason=" in metrics
    # A client branches on usage.error, the fallback's kind (fallback_reason is for a person): the OpenAPI declares
    # it, and each field usage has, where it had typed usage as any object
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    declared = spec[spec["ClassificationOut"]["properties"]["usage"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]]
    assert set(body["usage"]) == set(declared["properties"]) == set(declared["required"])
    assert body["usage"]["error"] == "NotConfigured" and "docs/reranking.md" in declared["properties"]["error"][
        "description"]


def test_rerank_asks_gemini_and_so_needs_the_key_though_classifying_does_not(make_client):
    # A page on any site can make a browser post this form: without the key it would spend Gemini calls.
    client = make_client()
    query = {"image": ("r.png", texture(COLORS["red"], 8))}
    assert client.post("/v1/classify", files=query).status_code == 200
    for endpoint, field in [("/v1/classify", "image"), ("/v1/classify/batch", "images")]:
        files = {field: query["image"]}
        assert_problem(client.post(f"{endpoint}?rerank=true", files=files), 401, "missing-api-key",
                       "rerank=true asks Gemini, which is paid per call: send the API key in the X-API-Key header")
        assert_problem(client.post(f"{endpoint}?rerank=1", files=files, headers={"X-API-Key": "w" * 24}), 403)
        assert client.post(f"{endpoint}?rerank=true", files=files, headers=AUTH).status_code == 200
    open_service = make_client(auth_disabled=True, api_key=None)
    assert open_service.post("/v1/classify?rerank=true", files=query).status_code == 200


def test_out_of_distribution_flag_is_calibrated_on_the_memory(client, memory_images):
    seen = client.post("/v1/classify?k=3", files=upload(memory_images.paths[0].read_bytes())).json()
    novel = client.post("/v1/classify?k=3", files=upload(checkerboard())).json()
    assert seen["ood_threshold"] == novel["ood_threshold"] > 0
    assert seen["out_of_distribution"] is False and seen["novelty"] < seen["ood_threshold"]
    assert novel["out_of_distribution"] is True and novel["novelty"] > novel["ood_threshold"]


def test_while_one_new_label_set_is_calibrated_others_are_answered_without_a_threshold(client):
    # Each new k and label set costs a calibration (seconds at k=1000 among many labels); made-up ones, sent
    # without a key, must not queue up: a second is answered at once, with no threshold yet.
    service = client.app.state.service
    with service._new_calibration:  # another request's calibration, running
        busy = client.post("/v1/classify?k=2&label=red&label=blue", files=upload(texture(COLORS["red"], 4))).json()
    assert (busy["label"], busy["ood_threshold"], busy["out_of_distribution"]) == ("red", None, None)
    later = client.post("/v1/classify?k=2&label=red&label=blue", files=upload(texture(COLORS["red"], 5))).json()
    assert later["ood_threshold"] > 0 and later["out_of_distribution"] is False
    too_many = "&".join(f"label=l{i}" for i in range(1001))
    assert_problem(client.post(f"/v1/classify?{too_many}", files=upload(texture(COLORS["red"], 4))), 422,
                   "invalid-parameters", "at most 1000 items")


@BOTH_BACKENDS
def test_repeated_query_is_answered_from_the_cache_until_the_memory_changes(client):
    data = texture(COLORS["green"], 11)
    first = client.post("/v1/classify?k=3", files=upload(data)).json()
    again = client.post("/v1/classify?k=3", files=upload(data)).json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["neighbors"] == first["neighbors"]
    assert 'vmem_result_cache_total{result="hit"} 1.0' in client.get("/metrics").text
    client.post("/v1/memory", headers=AUTH, files={"images": ("x.png", texture((9, 9, 9), 1))}, data={"label": "x"})
    assert client.post("/v1/classify?k=3", files=upload(data)).json()["cached"] is False


def test_the_answer_cache_holds_as_many_neighbours_as_its_size_at_the_default_k(make_client, monkeypatch):
    # Counted by answers alone, 1,024 answers at k = 1000 (anyone may ask) had held 1.4 GB
    import server.service

    monkeypatch.setattr(server.service, "DEFAULT_K", 4)  # 3 answers x 4: room for 12 neighbours
    client = make_client(result_cache_size=3)
    a, b, c = (texture(COLORS["green"], seed) for seed in (11, 12, 13))
    for data in (a, b, c):
        client.post("/v1/classify?k=2", files=upload(data))
    assert all(client.post("/v1/classify?k=2", files=upload(d)).json()["cached"] for d in (a, b, c))
    for data in (a, b):  # 12 neighbours each: the second pushes out the first, and every small one
        assert client.post("/v1/classify?k=12", files=upload(data)).json()["cached"] is False
    assert client.post("/v1/classify?k=12", files=upload(b)).json()["cached"] is True
    assert client.post("/v1/classify?k=12", files=upload(a)).json()["cached"] is False
    assert client.post("/v1/classify?k=2", files=upload(c)).json()["cached"] is False


def test_without_a_result_cache_no_lookup_is_counted_and_an_upload_is_hashed_once(make_client, monkeypatch):
    client = make_client(result_cache_size=0)
    data = texture(COLORS["green"], 11)
    assert [client.post("/v1/classify?k=3", files=upload(data)).json()["cached"] for _ in range(2)] == [False, False]
    metrics = client.get("/metrics").text  # neither hits nor misses
    assert 'vmem_result_cache_total{result="hit"} 0.0' in metrics
    assert 'vmem_result_cache_total{result="miss"} 0.0' in metrics

    # An upload is hashed once, for its source (it was hashed again for a cache key, and again for the source).
    import hashlib

    real, hashed = hashlib.sha256, []

    def counted(payload=b"", *args, **kwargs):
        if bytes(payload) == data:
            hashed.append(1)
        return real(payload, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counted)
    assert client.post("/v1/classify?k=3", json={"image": base64.b64encode(data).decode()}).status_code == 200
    assert len(hashed) == 1


def test_batch_answers_each_image_and_reports_the_bad_one(client):
    files = [("images", ("r.png", texture(COLORS["red"], 21), "image/png")),
             ("images", ("bad.png", b"not an image", "image/png")),
             ("images", ("b.png", texture(COLORS["blue"], 22), "image/png"))]
    body = client.post("/v1/classify/batch?k=4", files=files).json()
    assert body["failed"] == 1
    assert [i["index"] for i in body["items"]] == [0, 1, 2]
    assert body["items"][0]["result"]["label"] == "red" and body["items"][2]["result"]["label"] == "blue"
    assert body["items"][1]["result"] is None and "not a recognised image" in body["items"][1]["error"]
    assert body["items"][1]["error_type"] == "urn:vmem:problem:bad-image" and body["items"][0]["error_type"] is None
    # Two lookups the cache could have answered: junk uploads do not drag its hit ratio down.
    assert 'vmem_result_cache_total{result="miss"} 2.0' in client.get("/metrics").text

    # As JSON, an empty image is that image's failure too, not the whole request's.
    as_json = client.post("/v1/classify/batch?k=4", json={"images": [
        {"image": base64.b64encode(texture(COLORS["green"], 23)).decode()}, {"image": "", "filename": "e.png"}]}).json()
    assert as_json["items"][0]["result"]["label"] == "green" and as_json["failed"] == 1
    assert as_json["items"][1]["filename"] == "e.png" and "empty" in as_json["items"][1]["error"]
    one = client.post("/v1/classify", json={"image": ""})
    assert one.status_code == 400 and one.json()["type"].endswith("bad-image")


def test_a_batch_slot_whose_text_is_no_base64_is_that_image_s_error_and_the_others_are_answered(client):
    green = base64.b64encode(texture(COLORS["green"], 24)).decode()
    answer = client.post("/v1/classify/batch?k=4", json={"images": [
        {"image": green[:-3], "filename": "cut.png"}, {"image": green}, {"image": "data:image/png,raw"}]})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert answer.json()["failed"] == 2 and items[1]["result"]["label"] == "green"
    assert items[0]["filename"] == "cut.png" and items[0]["error"] == "not valid base64"
    assert items[0]["error_type"] == "urn:vmem:problem:bad-image" and "base64-encoded" in items[2]["error"]
    # A slot that holds no string at all is the client's code at fault: the whole request's 422, naming it.
    wrong = client.post("/v1/classify/batch", json={"images": [{"image": green}, {"image": 7}]})
    assert wrong.status_code == 422 and "images.1.image" in wrong.text


def test_an_add_slot_whose_text_is_no_base64_is_reported_and_the_others_are_added(client):
    blue = base64.b64encode(texture(COLORS["blue"], 91)).decode()
    answer = client.post("/v1/memory", headers=AUTH, json={"items": [
        {"image": "%%%", "label": "blue", "filename": "a.png"}, {"image": blue, "label": "blue", "filename": "b.png"},
        {"image": "%%%", "label": "red", "filename": "a.png"}]})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert [(p["label"], p["new"]) for p in body["added"]] == [("blue", True)]
    assert [(f["index"], f["reason"]) for f in body["failed"]] == [(0, "not valid base64"), (2, "not valid base64")]
    try:
        nothing = client.post("/v1/memory", headers=AUTH,
                              json={"items": [{"image": "%%%", "label": "blue"}]})
        assert nothing.status_code == 400 and "not valid base64" in nothing.json()["detail"]
    finally:
        client.delete(f"/v1/memory/points/{body['added'][0]['id']}", headers=AUTH)


def test_a_batch_of_huge_images_is_decoded_and_embedded_a_few_at_a_time(client, monkeypatch):
    # 8 solid 4000 x 4000 PNGs are 8 x 60 kB sent but 8 x 48 MB decoded: a 64-megapixel step holds 4. Shown
    # at a 16th of the scale (1000 x 1000, a 4-megapixel step): the same steps, and 16 fewer seconds of decoding.
    monkeypatch.setattr("server.service.DECODED_PIXELS_PER_STEP", 4_000_000)
    service = client.app.state.service
    steps: list[int] = []
    for method in ("classify", "add_images"):
        real = getattr(service.memory, method)
        monkeypatch.setattr(service.memory, method,
                            lambda images, *a, _real=real, **kw: steps.append(len(images)) or _real(images, *a, **kw))
    huge = io.BytesIO()
    Image.new("RGB", (1000, 1000), COLORS["red"]).save(huge, "PNG")
    files = [("images", (f"h{i}.png", huge.getvalue() + bytes(i), "image/png")) for i in range(8)]
    files.insert(5, ("images", ("bad.png", b"not an image", "image/png")))
    body = client.post("/v1/classify/batch?k=3", files=files).json()
    assert steps == [4, 4]
    assert [i["error"] is not None for i in body["items"]] == [False] * 5 + [True] + [False] * 3
    assert {i["result"]["label"] for i in body["items"] if i["result"]} == {"red"}

    steps.clear()
    added = client.post("/v1/memory", headers=AUTH, files=files, data={"label": "scarlet"}).json()
    assert steps == [4, 4] and [f["index"] for f in added["failed"]] == [5]
    assert len({a["id"] for a in added["added"]}) == 8 and all(a["new"] for a in added["added"])
    assert added["points"] == 12 + 8


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("query", "says"), [
    ("k=0", "query.k"),
    ("k=1001", "query.k"),
    ("k=ten", "query.k"),
    ("vote=majority", "query.vote"),
    ("tau=-1", "query.tau"),
    ("rerank=maybe", "query.rerank"),
    ("colour=red", "query.colour"),  # a typo is an error, not silently ignored
])
@SHARED
def test_out_of_range_parameters_are_422_problems(client, query, says):
    resp = client.post(f"/v1/classify?{query}", files=upload(texture(COLORS["red"], 1)))
    body = assert_problem(resp, 422, "invalid-parameters", says)
    assert body["errors"][0]["loc"][0] == "query"


@SHARED
@pytest.mark.parametrize("endpoint", ["/v1/classify", "/v1/classify/batch"])
def test_a_vote_option_the_rule_does_not_read_is_a_422_not_an_echo(client, endpoint):
    field = "image" if endpoint == "/v1/classify" else "images"
    resp = client.post(f"{endpoint}?vote=plurality&alpha=2", files={field: ("r.png", texture(COLORS["red"], 1))})
    assert_problem(resp, 422, "unused-vote-option", "alpha applies to rank voting only")
    ok = client.post(f"{endpoint}?vote=softmax&tau=0.5", files={field: ("r.png", texture(COLORS["red"], 1))})
    vote = ok.json()["vote"] if endpoint == "/v1/classify" else ok.json()["items"][0]["result"]["vote"]
    assert (vote["rule"], vote["tau"]) == ("softmax", 0.5)


@BOTH_BACKENDS
def test_a_label_filter_naming_a_label_the_memory_lacks_is_a_422_not_an_empty_answer(client):
    resp = client.post("/v1/classify?label=red&label=purple", files=upload(texture(COLORS["red"], 1)))
    body = assert_problem(resp, 422, "unknown-label", "no label 'purple'")
    assert "'red'" not in body["detail"]
    batch = client.post("/v1/classify/batch?label=purple", files={"images": ("r.png", texture(COLORS["red"], 1))})
    assert_problem(batch, 422, "unknown-label", "GET /v1/memory/stats")
    ok = client.post("/v1/classify?label=red&label=blue", files=upload(texture(COLORS["red"], 1))).json()
    assert ok["label"] == "red" and {n["label"] for n in ok["neighbors"]} <= {"red", "blue"}


def test_a_label_forgotten_while_a_classify_filtered_by_it_is_under_way_is_a_422(client, monkeypatch):
    # The route checks the filter first, then embeds on a worker thread: a forget can land in between.
    import server.routes.classify as routes

    async def checked_before_the_forget(service, q):
        await service.run(service.memory.forget, label="red")  # another client's forget

    monkeypatch.setattr(routes, "check_labels", checked_before_the_forget)
    assert client.get("/v1/memory/stats").json()["per_label"]["red"] > 0
    for endpoint, field in [("/v1/classify", "image"), ("/v1/classify/batch", "images")]:
        resp = client.post(f"{endpoint}?label=red", files={field: ("r.png", texture(COLORS["red"], 1))})
        assert_problem(resp, 422, "unknown-label", "'red'")


@SHARED
def test_unknown_template_is_a_422_listing_the_available_ones(client):
    from prompts import default_registry

    resp = client.post("/v1/classify?rerank=true&template=no-such", files=upload(texture(COLORS["red"], 1)),
                       headers=AUTH)
    body = assert_problem(resp, 422, "unknown-template", "'no-such'")
    for name in default_registry().names():
        assert name in body["detail"]


def test_a_broken_template_is_refused_with_its_error_and_a_mended_one_is_used(client, tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "templates"))
    (tmp_path / "templates").mkdir()
    # A broken override of the default, and a template of the user's that arrives after the start.
    (tmp_path / "templates" / "neighbors-v1.yaml").write_text("name: neighbors-v1\nversion: 9\n")
    query = upload(texture(COLORS["red"], 1))
    named = client.post("/v1/classify?rerank=true&template=neighbors-v1", files=query, headers=AUTH)
    body = assert_problem(named, 422, "invalid-template", "'neighbors-v1' could not be loaded: invalid template")
    assert "system: Field required" in body["detail"] and str(tmp_path) not in body["detail"]
    assert_problem(client.post("/v1/classify?rerank=true", files=query, headers=AUTH), 500, "invalid-template",
                   "the service's default template 'neighbors-v1' could not be loaded")
    assert client.post("/v1/classify", files=query).status_code == 200  # no re-ranking: no template needed

    (tmp_path / "templates" / "later.yaml").write_text("name: later\nversion: 1\nsystem: Classify the image.\n")
    (tmp_path / "templates" / "neighbors-v1.yaml").unlink()
    for template in ("later", "neighbors-v1"):  # both taken without a restart (no API key here: a fallback)
        resp = client.post(f"/v1/classify?rerank=true&template={template}", files=query, headers=AUTH)
        assert resp.status_code == 200 and resp.json()["fallback_reason"], (template, resp.text)


@SHARED
@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"GIF89a-but-not-really", "not a recognised image format"),
    (texture((1, 2, 3), 0)[:80], "corrupt or truncated"),
], ids=["empty", "not-an-image", "truncated"])
def test_an_image_that_does_not_decode_is_a_400(client, data, says):
    assert_problem(client.post("/v1/classify", files=upload(data)), 400, "bad-image", says)


@SHARED
@pytest.mark.parametrize(("body", "says"), [
    ({"image": "%%%not base64%%%"}, "not valid base64"),
    # what a client sends that reads as base64 at a glance: each says what to send instead
    ({"image": "https://example.com/cat.jpg"}, "it is a URL, and the service fetches none: send the image's bytes"),
    ({"image": base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode()}, "URL-safe alphabet (- and _): send standard"),
    ({"img": "AAAA"}, "body.image"),
    ({"image": "data:image/png,raw"}, "base64-encoded"),
])
def test_bad_json_bodies_are_422(client, body, says):
    assert_problem(client.post("/v1/classify", json=body), 422, "invalid-parameters", says)


@SHARED
def test_a_decompression_bomb_is_refused(client):
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG")  # 81 Mpx of zeros compress to a few KB
    assert_problem(client.post("/v1/classify", files=upload(buf.getvalue())), 400, "bad-image", "64,000,000 pixels")


@SHARED
@pytest.mark.parametrize(("content_type", "data"), [
    ("text/plain", b"hello"),
    ("image/png", texture(COLORS["red"], 1)),
    (None, b""),
])
def test_other_content_types_are_415(client, content_type, data):
    headers = {"content-type": content_type} if content_type else {}
    assert_problem(client.post("/v1/classify", content=data, headers=headers), 415, "unsupported-media-type")


@SHARED
def test_multipart_without_the_image_field_is_422(client):
    assert_problem(client.post("/v1/classify", data={"image": "text"}, files={"x": ("a", b"b")}), 422,
                   "invalid-parameters")


@SHARED
def test_options_sent_as_form_fields_are_refused_not_ignored(client):
    # `curl -F image=@q.png -F k=1 -F vote=bogus` looks like it sets options; it must not be ignored.
    image = texture(COLORS["red"], 1)
    for url, field in [("/v1/classify", "image"), ("/v1/classify/batch", "images")]:
        resp = client.post(url, files={field: ("q.png", image, "image/png")}, data={"k": "1", "vote": "bogus"})
        body = assert_problem(resp, 422, "invalid-parameters", "unexpected form field 'k'")
        assert "query string (e.g. `?k=5" in body["detail"] and body["errors"][0]["loc"] == ["body", "k"]
    assert client.post("/v1/classify?k=1", files=upload(image)).json()["vote"]["k"] == 1  # where options go

    # Adding reads its `label` fields, and nothing else.
    resp = client.post("/v1/memory", headers=AUTH, files={"images": ("a.png", image)},
                       data={"label": "red", "tags": "shiny"})
    assert_problem(resp, 422, "invalid-parameters", "unexpected form field 'tags'")
    assert client.get("/v1/memory/stats").json()["points"] == 12


def test_uploads_over_the_size_limit_are_413(make_client):
    client = make_client(max_upload_bytes=4096)
    big = texture(COLORS["red"], 1, size=96)
    assert len(big) > 4096
    assert_problem(client.post("/v1/classify", files=upload(big)), 413, "upload-too-large", "4,096 bytes")

    def chunks():  # no Content-Length: the limit is enforced as the body streams in
        yield b'{"image": "'
        for _ in range(100):
            yield b"A" * 100

    resp = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(resp, 413, "upload-too-large")

    # Routes whose JSON body FastAPI reads itself say so too (they answered 400, "error parsing the body").
    names = {"names": {f"label{i}": "x" * 50 for i in range(200)}}
    assert_problem(client.put("/v1/memory/label-names", json=names, headers=AUTH), 413, "upload-too-large",
                   "4,096 bytes")
    relabel = {"to": "red", "ids": [str(uuid.uuid4()) for _ in range(200)]}
    assert_problem(client.post("/v1/memory/relabel", json=relabel, headers=AUTH), 413, "upload-too-large")
    assert_problem(client.post("/v1/memory/relabel", content=(b"x" * 100 for _ in range(100)), headers={
        **AUTH, "content-type": "application/json"}), 413, "upload-too-large")


def test_too_many_images_in_a_batch_is_413(make_client):
    client = make_client(max_batch_images=2)
    imgs = [{"image": base64.b64encode(texture(COLORS["red"], i)).decode()} for i in range(3)]
    assert_problem(client.post("/v1/classify/batch", json={"images": imgs}), 413, "too-many-images",
                   "3 images in one request: the limit is 2 per request")
    # Past what any setting allows, a JSON list is refused as it is parsed (1.2M tiny images: 10 s on the loop).
    tiny = {"image": base64.b64encode(texture(COLORS["red"], 0)).decode()}
    for url, body in [("/v1/classify/batch", {"images": [tiny] * 1025}),
                      ("/v1/memory", {"items": [{**tiny, "label": "red"}] * 1025})]:
        assert_problem(client.post(url, json=body, headers=AUTH), 422, "invalid-parameters", "at most 1024 items")

    # As uploads, the same answer: the parser stops at the file past the limit, so none is buffered.
    files = [("images", (f"{i}.png", texture(COLORS["red"], i), "image/png")) for i in range(3)]
    for url in ("/v1/classify/batch", "/v1/memory"):
        resp = client.post(url, files=files, data={"label": "red"} if url == "/v1/memory" else None, headers=AUTH)
        assert_problem(resp, 413, "too-many-images", "more than 2 images in one request: the limit is 2")
    assert client.get("/v1/memory/stats").json()["points"] == 12

    # `/v1/classify` takes one image, and says where several go.
    two = [("image", (f"{i}.png", texture(COLORS["red"], i), "image/png")) for i in range(2)]
    assert_problem(client.post("/v1/classify", files=two), 413, "too-many-images",
                   "more than one image in one request: the limit is 1 per request; "
                   "send several to POST /v1/classify/batch (up to 2 per request)")


@SHARED
def test_unknown_routes_and_methods_are_problems_too(client):
    assert_problem(client.get("/v1/nothing"), 404)
    assert_problem(client.get("/v1/classify"), 405)


@SHARED
def test_405_says_which_methods_the_path_takes(client):
    for method, path, allow in [
        ("GET", "/v1/classify", "POST"),
        ("PUT", "/v1/memory", "DELETE, POST"),  # two routes share the path: both are named
        ("POST", "/v1/memory/stats", "GET, HEAD"),  # every GET answers HEAD too
        ("POST", "/v1/memory/points/00000000-0000-0000-0000-000000000000", "DELETE, GET, HEAD, PATCH"),
        ("POST", "/static/app.js", "GET, HEAD"),
    ]:
        resp = client.request(method, path)
        assert_problem(resp, 405)
        assert resp.headers["allow"] == allow, (method, path)



@SHARED
def test_a_key_sent_as_a_bearer_token_is_refused_saying_where_it_goes(client):
    # openapi-python-client's AuthenticatedClient sends `Authorization: Bearer KEY` unless told otherwise
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    body = assert_problem(client.delete("/v1/memory?label=red", headers=bearer), 401, "missing-api-key")
    assert "Authorization header, which is not read here: send X-API-Key: KEY" in body["detail"]
    assert API_KEY not in body["detail"]
    rerank = client.post("/v1/classify?rerank=true", headers=bearer, files=upload(texture(COLORS["red"], 1)))
    assert "not Authorization: Bearer KEY" in assert_problem(rerank, 401, "missing-api-key")["detail"]
    plain = assert_problem(client.delete("/v1/memory?label=red"), 401, "missing-api-key")  # no header: as before
    assert plain["detail"] == "this endpoint edits the memory: send the API key in the X-API-Key header"
    # A proxy's own login (nginx's auth_basic passes its Authorization: Basic on) is no key sent in the wrong place
    proxied = client.delete("/v1/memory?label=red", headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="})
    assert assert_problem(proxied, 401, "missing-api-key")["detail"] == plain["detail"]
    assert client.get("/v1/memory/stats").json()["points"] == 12


@SHARED
@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/v1/memory", {"files": {"images": ("a.png", texture((1, 1, 1), 1))}, "data": {"label": "x"}}),
    ("POST", "/v1/memory/relabel", {"json": {"to": "crimson", "label": "red"}}),
    ("PATCH", "/v1/memory/points/{id}", {"json": {"label": "crimson"}}),
    ("PUT", "/v1/memory/label-names", {"json": {"names": {"red": "Red"}}}),
    ("POST", "/v1/memory/erase", {}),
])
def test_an_edit_given_an_option_it_does_not_take_is_refused_not_made(client, method, path, kwargs):
    # forget-like and import take `dry_run`, so a client may well try it on an add or a relabel: ignored, the edit
    # had been made for real
    point = client.get("/v1/memory/points?limit=1").json()["points"][0]["id"]
    resp = client.request(method, path.format(id=point) + "?dry_run=true", headers=AUTH, **kwargs)
    body = assert_problem(resp, 422, "invalid-parameters", "query.dry_run")
    assert body["errors"][0]["loc"] == ["query", "dry_run"]
    stats = client.get("/v1/memory/stats").json()
    assert stats["points"] == 12 and "crimson" not in stats["per_label"] and "red" not in stats["label_names"]

# ------------------------------------------------------------------ editing the memory


@SHARED
@pytest.mark.parametrize(("headers", "status", "kind"), [
    ({}, 401, "missing-api-key"),
    ({"X-API-Key": "wrong-key-0123456789"}, 403, "invalid-api-key"),
])
def test_editing_needs_the_api_key(client, headers, status, kind):
    calls = [
        lambda: client.post("/v1/memory", headers=headers, files={"images": ("a.png", texture((1, 1, 1), 1))},
                            data={"label": "x"}),
        lambda: client.delete("/v1/memory?label=red", headers=headers),
        lambda: client.delete("/v1/memory/points/00000000-0000-0000-0000-000000000000", headers=headers),
        # The key is checked before a JSON body is read: FastAPI had parsed a declared body first (20 MB without a
        # key held the event loop a second), and a malformed one was a 422 to a client with no key
        lambda: client.put("/v1/memory/label-names", headers={**headers, "Content-Type": "application/json"},
                           content=b'{"names": {"red": '),
        lambda: client.post("/v1/memory/relabel", headers={**headers, "Content-Type": "application/json"},
                            content=b"[" * 10),
        lambda: client.patch("/v1/memory/points/00000000-0000-0000-0000-000000000000",
                             headers={**headers, "Content-Type": "application/json"}, content=b"{"),
    ]
    for call in calls:
        assert_problem(call(), status, kind)
    assert client.get("/v1/memory/stats").json()["points"] == 12


def test_edits_with_json_bodies_take_json_only(make_client):
    # A text/plain POST needs no CORS preflight: with --no-auth, a page elsewhere had relabelled points with one
    client = make_client(auth_disabled=True, api_key=None)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        resp = client.post("/v1/memory/relabel", content=b'{"to": "pwned", "label": "red"}',
                           headers={"Content-Type": content_type} if content_type else {})
        assert_problem(resp, 415, "unsupported-media-type", "send application/json")
    assert client.get("/v1/memory/stats").json()["per_label"]["red"] == 4
    assert client.post("/v1/memory/relabel", json={"to": "crimson", "label": "red"}).json()["relabelled"] == 4


def test_without_authentication_another_sites_page_cannot_edit(make_client):
    # A multipart POST needs no CORS preflight: any page a user of a --no-auth service opened could add points
    client = make_client(auth_disabled=True, api_key=None, cors_origins=["http://ui.example"])
    add = {"files": {"images": ("a.png", texture((250, 250, 0), 1))}, "data": {"label": "yellow"}}
    for headers in ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://evil.example"}):  # an older browser, without Sec-Fetch-Site
        assert_problem(client.post("/v1/memory", headers=headers, **add), 403, "cross-site-edit", "VMEM_CORS_ORIGINS")
        assert_problem(client.post("/v1/memory/erase", headers=headers), 403, "cross-site-edit")
    # The service's own page, an origin named, and clients that are no browser (no Origin) edit as before
    for headers in ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, {"Origin": "http://testserver"},
                    {"Origin": "http://ui.example", "Sec-Fetch-Site": "cross-site"}, {}):
        assert client.post("/v1/memory", headers=headers, **add).status_code == 201, headers


def test_auth_disabled_is_explicit(make_client):
    client = make_client(auth_disabled=True, api_key=None)
    resp = client.post("/v1/memory", files={"images": ("a.png", texture((250, 250, 0), 1))}, data={"label": "yellow"})
    assert resp.status_code == 201


@pytest.mark.parametrize(("overrides", "says"), [
    ({"api_key": None}, "no API key"),
    ({"api_key": "short"}, "too short"),
    ({"ood_percentile": 100}, "ood_percentile"),
])
def test_unsafe_or_invalid_settings_refuse_to_start(tmp_path, overrides, says):
    with pytest.raises(ValidationError, match=says):
        settings(tmp_path, **overrides)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VMEM_API_KEY", API_KEY)
    monkeypatch.setenv("VMEM_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("VMEM_QDRANT_URL", "http://127.0.0.1:6333")
    s = Settings(_env_file=None)
    assert s.api_key.get_secret_value() == API_KEY and API_KEY not in repr(s)
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    monkeypatch.setenv("VMEM_CORS_ORIGINS", '["http://a.example", "http://b.example"]')  # JSON, as lists go
    assert Settings(_env_file=None).cors_origins == ["http://a.example", "http://b.example"]
    assert s.location == "http://127.0.0.1:6333"
    env_file = tmp_path / "vmem.env"
    env_file.write_text("VMEM_MEMORY=/srv/memory\nVMEM_AUTH_DISABLED=true\n")
    monkeypatch.delenv("VMEM_QDRANT_URL")
    assert Settings(_env_file=env_file).location == "/srv/memory"


def test_a_home_relative_path_in_an_env_file_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    env_file = tmp_path / "vmem.env"  # no shell reads this file, so nothing expanded `~` before vmem did
    env_file.write_text("VMEM_MEMORY=~/memory\nVMEM_THUMBNAIL_DIR=~/thumbs\nVMEM_SOURCE_ROOTS=~/a, /b\n"
                        "VMEM_AUTH_DISABLED=true\n")
    s = Settings(_env_file=env_file)
    assert s.location == str(tmp_path / "memory") and s.thumbnail_dir == tmp_path / "thumbs"
    assert s.source_roots == [tmp_path / "a", Path("/b")]
    assert Settings(_env_file=None, memory=":memory:", auth_disabled=True).location == ":memory:"


@BOTH_BACKENDS
def test_add_a_new_label_then_classify_it(client):
    files = [("images", (f"y{i}.png", texture((240, 230, 20), 50 + i), "image/png")) for i in range(3)]
    files.append(("images", ("junk.png", b"junk", "image/png")))
    resp = client.post("/v1/memory", headers=AUTH, files=files, data={"label": "yellow"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert [a["label"] for a in body["added"]] == ["yellow"] * 3 and body["points"] == 15
    assert body["failed"] == [{"index": 3, "filename": "junk.png", "reason": body["failed"][0]["reason"]}]
    assert body["added"][0]["source"].startswith("upload:sha256:") and body["added"][0]["source"].endswith("y0.png")

    answer = client.post("/v1/classify?k=3", files=upload(texture((240, 230, 20), 99))).json()
    assert answer["label"] == "yellow"
    assert {n["id"] for n in answer["neighbors"]} <= {a["id"] for a in body["added"]}

    thumb = client.get(body["added"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)

    stats = client.get("/v1/memory/stats").json()
    assert stats["per_label"]["yellow"] == 3 and stats["labels"] == 4 and stats["points"] == 15


def test_adding_a_class_of_too_few_images_says_it_is_outvoted_and_what_to_do(client):
    # One image of a new class beside classes of 4: at k = 50 a fuller class near it outvotes it even where it is
    # a query's nearest neighbour (README, "A class of a few images"); the answer says so, and stats list it.
    def add_yellow(seed: int):
        return client.post("/v1/memory", headers=AUTH, data={"label": "yellow"},
                           files=[("images", ("y.png", texture((240, 230, 20), seed), "image/png"))])

    one = add_yellow(50)
    assert one.status_code == 201, one.text
    [few] = one.json()["few_points"]
    assert (few["label"], few["points"], few["needed"], few["k"], few["rule"], few["k_that_fits"]) == (
        "yellow", 1, 2, 50, "rank", 2)
    assert few["note"].startswith("label 'yellow' has 1 point, fewer than the 2 it takes to win a rank vote")
    stats = client.get("/v1/memory/stats").json()
    assert stats["few_points"] == [few] and stats["few_points_total"] == 1
    # A named label is called by its name too, as answers call it
    assert client.put("/v1/memory/label-names", headers=AUTH, json={"names": {"yellow": "canary"}}).status_code == 200
    [named] = client.get("/v1/memory/stats").json()["few_points"]
    assert named["label_name"] == "canary" and named["note"].startswith("label 'yellow' (canary) has 1 point")
    two = add_yellow(51)
    assert two.json()["few_points"] == [] and client.get("/v1/memory/stats").json()["few_points"] == []


def test_edits_on_a_nearly_full_disk_are_refused_before_the_engine_writes(client, monkeypatch):
    # The engine writes through mapped files: a write that found the disk full killed the service (SIGBUS), with
    # no answer sent. Measured on a 300 MB loop volume; here the disk's free space is what the store is told.
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (50 << 20), 50 << 20))
    files = [("images", ("y.png", texture((240, 230, 20), 50), "image/png"))]
    refused = client.post("/v1/memory", headers=AUTH, files=files, data={"label": "yellow"})
    assert_problem(refused, 507, "memory-disk-full", "has 50 MB free")
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).json()["neighbors"][0]["id"]
    assert_problem(client.patch(f"/v1/memory/points/{victim}", headers=AUTH, json={"label": "red"}), 507,
                   "memory-disk-full")
    assert client.get("/v1/memory/stats").json()["points"] == 12  # nothing added; classify goes on
    assert client.delete(f"/v1/memory/points/{victim}", headers=AUTH).status_code == 200  # and forget
    # An erase rewrites segments: refused too (on a nearly full tmpfs the engine's rewrite died of SIGBUS)
    assert_problem(client.post("/v1/memory/erase", headers=AUTH), 507, "memory-disk-full",
                   "forgotten points stay forgotten")
    # The thumbnail folder's disk, checked on its own (VMEM_THUMBNAIL_DIR may be elsewhere): an upload's thumbnail
    # is its only copy of the image, and on a full disk uploads had been taken with thumbnails that were 404s.
    thumbs = client.app.state.service.thumbnails.root
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, (4 << 20) if Path(path) == thumbs
                                                                 else (10 << 30)))
    full = assert_problem(client.post("/v1/memory", headers=AUTH, files=files, data={"label": "yellow"}), 507,
                          "memory-disk-full", "thumbnail folder")
    assert "nothing was added" in full["detail"] and client.get("/v1/memory/stats").json()["points"] == 11
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (50 << 20), 50 << 20))
    # Below 40 MB a forget is refused too: the engine's next write-ahead-log file takes 32 MB, and on a full disk
    # the 17th one-point forget killed the service.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (30 << 20), 30 << 20))
    assert_problem(client.delete("/v1/memory?label=red", headers=AUTH), 507, "memory-disk-full", "searches go on")
    assert client.get("/v1/memory/stats").json()["points"] == 11


def test_names_the_disk_has_no_room_for_are_a_507_and_a_failing_listener_leaves_a_forget_made(client, monkeypatch):
    # vmem.json on a full disk: a 500 "unexpected error"; a forget whose cache could not drop its answers (a full
    # disk under the re-ranker's cache): a 500 for a forget that was made, and its erase skipped.
    import errno

    import retrieval.store

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(retrieval.store, "write_atomically", disk_full)
        refused = client.put("/v1/memory/label-names", headers=AUTH, json={"names": {"red": "crimson"}})
        assert_problem(refused, 507, "memory-disk-full", "nothing was changed")
    assert client.get("/v1/memory/stats").json()["label_names"] == {}

    def failing(ids):
        raise OSError(errno.ENOSPC, "database or disk is full")

    client.app.state.service.memory.on_forget(failing)
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).json()["neighbors"][0]["id"]
    assert client.delete(f"/v1/memory/points/{victim}?erase=true", headers=AUTH).status_code == 200
    assert client.get(f"/v1/memory/points/{victim}").status_code == 404


def test_names_on_a_memory_folder_that_cannot_be_written_are_a_503_that_says_so(client, monkeypatch, caplog):
    # A read-only mount: a 500 "unexpected error" with a traceback at each request; the journal's failure to
    # record an edit a traceback too
    import errno

    import retrieval.store

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/memory/vmem.json")

    with monkeypatch.context() as patched:
        patched.setattr(retrieval.store, "write_atomically", read_only)
        refused = client.put("/v1/memory/label-names", headers=AUTH, json={"names": {"red": "crimson"}})
        assert_problem(refused, 503, "memory-read-only", "cannot be written (Read-only file system)")
        assert "Retry-After" not in refused.headers
    assert client.get("/v1/memory/stats").json()["label_names"] == {}
    journal = client.app.state.service.memory.store.journal
    monkeypatch.setattr(journal, "append", read_only)
    caplog.clear()
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).json()["neighbors"][0]["id"]
    assert client.delete(f"/v1/memory/points/{victim}", headers=AUTH).status_code == 200
    [line] = [r for r in caplog.records if "journal could not record" in r.getMessage()]
    assert "Read-only file system" in line.getMessage() and line.exc_info is None


def test_a_read_only_replica_classifies_refuses_edits_with_a_503_and_says_it_is_read_only(tmp_path, lite0,
                                                                                         memory_images, caplog):
    # Horizontal scaling of classify: each replica serves the memory with VMEM_READ_ONLY=true (a read-only mount,
    # or a folder another service holds). Without it, the engine's write lock refused every replica but the first.
    from retrieval import open_store
    from vmem import VisualMemory

    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    replicas = [VisualMemory(open_store(tmp_path / "memory", read_only=True), lite0) for _ in range(2)]
    with TestClient(create_app(settings(tmp_path, read_only=True), memory=replicas[0])) as client:
        assert client.get("/readyz").json() == {"status": "ready", "points": 12, "featurizer": "efficientnet-lite0",
                                                "read_only": True, "detail": None}
        assert client.get("/v1/memory/stats").json()["read_only"] is True
        answer = client.post("/v1/classify?k=3", files=upload(texture(COLORS["red"], 7)))
        assert answer.status_code == 200 and answer.json()["label"] == "red"
        victim = answer.json()["neighbors"][0]["id"]
        caplog.clear()
        for refused in (
            client.post("/v1/memory", headers=AUTH, data={"label": "red"},
                        files=[("images", ("new.png", texture(COLORS["red"], 77), "image/png"))]),
            client.delete(f"/v1/memory/points/{victim}", headers=AUTH),
            client.patch(f"/v1/memory/points/{victim}", headers=AUTH, json={"label": "blue"}),
            client.put("/v1/memory/label-names", headers=AUTH, json={"names": {"red": "crimson"}}),
        ):
            # in the service's words, though the memory it serves was opened read-only from Python
            body = assert_problem(refused, 503, "memory-read-only", "served read-only (VMEM_READ_ONLY): nothing was")
            assert body["title"] == "The memory is served read-only" and "Retry-After" not in refused.headers
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # refused as asked: nothing to alert on
        assert client.get(f"/v1/memory/points/{victim}").json()["label"] == "red"
        assert client.get("/v1/memory/stats").json()["points"] == 12
    for replica in replicas:
        replica.close()
    assert Settings(memory=str(tmp_path / "memory"), auth_disabled=True, read_only=True).read_only
    with pytest.raises(ValidationError, match="VMEM_READ_ONLY serves an embedded memory"):
        Settings(qdrant_url="http://localhost:6333", auth_disabled=True, read_only=True)


def test_a_read_only_replica_refuses_an_add_or_import_before_any_work_for_it(tmp_path, lite0, memory_images,
                                                                             monkeypatch):
    # An add had been decoded, embedded and its thumbnail kept before the store refused it: in a VMEM_THUMBNAIL_DIR
    # shared with the service that edits the memory (the same memory key), a thumbnail with no point. An import had
    # been received whole (up to VMEM_MAX_IMPORT_BYTES) and read, a file that was no .npz a 422 about the file.
    from retrieval import MemoryReadOnlyError, open_store
    from vmem import VisualMemory

    fill_memory(str(tmp_path / "memory"), lite0, memory_images).close()
    replica = VisualMemory(open_store(tmp_path / "memory", read_only=True), lite0)
    embedded, embed = [], lite0.embed
    monkeypatch.setattr(lite0, "embed", lambda images, *a, **k: embedded.append(len(images)) or embed(images, *a, **k))
    with TestClient(create_app(settings(tmp_path, read_only=True), memory=replica)) as client:
        embedded.clear()  # the encoder's warm-up
        added = client.post("/v1/memory", headers=AUTH, data={"label": "red"},
                            files=[("images", ("new.png", texture(COLORS["red"], 77), "image/png"))])
        assert_problem(added, 503, "memory-read-only", "served read-only")
        imported = client.post("/v1/memory/import", headers={**AUTH, "Content-Type": "application/octet-stream"},
                               content=b"no npz")
        assert_problem(imported, 503, "memory-read-only", "served read-only")
    assert embedded == [] and not [p for p in (tmp_path / "thumbs").rglob("*") if p.is_file()]
    with pytest.raises(MemoryReadOnlyError):  # the Python API's add: nothing embedded either
        replica.add([texture(COLORS["red"], 78)], "red")
    assert embedded == []
    replica.close()


def test_a_service_whose_thumbnail_folder_cannot_be_recorded_still_starts(make_client, monkeypatch):
    # Recording VMEM_THUMBNAIL_DIR in vmem.json on a full disk had stopped the service from starting.
    import errno

    import retrieval.store
    from server.service import ClassifierService

    writes, full = retrieval.store.write_atomically, []

    def disk_full(*args, **kwargs):  # once the memory is made, as the service starts
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return writes(*args, **kwargs)

    def starting(self, *args, **kwargs):
        full.append(True)
        starts(self, *args, **kwargs)

    starts = ClassifierService.__init__
    monkeypatch.setattr(retrieval.store, "write_atomically", disk_full)
    monkeypatch.setattr(ClassifierService, "__init__", starting)
    client = make_client()
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).status_code == 200


def engine_raises(client, method: str, message: str) -> None:
    """Make the service's embedded engine raise `message` from `method`, as the engine raises its errors (the
    engine itself is a compiled object: its methods cannot be patched)."""
    store = client.app.state.service.memory.store

    class Failing:
        def __init__(self, shard):
            self.shard = shard

        def __getattr__(self, name):
            return getattr(self.shard, name)

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    engine = Failing(store.shard)
    setattr(engine, method, fail)
    store.shard = engine


def test_an_erase_with_no_room_to_rewrite_is_a_507_that_says_the_points_stay_forgotten(client):
    # The engine checks the room a rewrite needs, and refuses: a 500 "an unexpected error occurred" before.
    engine_raises(client, "optimize", "Service internal error: Not enough space available for optimization, "
                                      "needed: 182.67 MiB, available: 44.00 MiB")
    assert client.delete("/v1/memory?label=red", headers=AUTH).json()["deleted"] == 4
    refused = client.post("/v1/memory/erase", headers=AUTH)
    assert_problem(refused, 507, "memory-disk-full", "the points stay forgotten")
    assert client.get("/readyz").status_code == 200  # nothing stuck: it wrote nothing


def test_an_engine_that_failed_a_write_turns_the_service_unready_and_says_why(client):
    # After a write failed midway (a file it could not create), the engine answered every later write with
    # "Not recovered from previous error": 500s while /readyz said ready, until a restart.
    engine_raises(client, "update", "Service internal error: Not recovered from previous error: IO Error: failed to "
                                    "open file chunk_0.tmp: Permission denied")
    files = [("images", ("y.png", texture((240, 230, 20), 50), "image/png"))]
    refused = client.post("/v1/memory", headers=AUTH, files=files, data={"label": "yellow"})
    assert_problem(refused, 503, "memory-write-failed", "takes no more edits")
    assert "Permission denied" in refused.json()["detail"] and "restart" in refused.json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "takes no more edits" in ready.json()["detail"]
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31)))
    assert victim.status_code == 200  # searches go on
    relabel = client.patch(f"/v1/memory/points/{victim.json()['neighbors'][0]['id']}", headers=AUTH,
                           json={"label": "red"})
    assert_problem(relabel, 503, "memory-write-failed")


def test_add_with_json_and_one_label_per_image(client):
    items = [{"image": base64.b64encode(texture(COLORS["red"], 70 + i)).decode(), "label": lab}
             for i, lab in enumerate(["red", "crimson"])]
    body = client.post("/v1/memory", headers=AUTH, json={"items": items}).json()
    assert [a["label"] for a in body["added"]] == ["red", "crimson"] and body["failed"] == []
    again = client.post("/v1/memory", headers=AUTH, json={"items": items}).json()
    assert again["points"] == body["points"]  # the same upload is the same point


@pytest.mark.parametrize(("labels", "says"), [([], "0 labels for 2 images"), (["a", "b", "c"], "3 labels"),
                                              (["  "], "label 0 is blank"), (["ok", "x" * 1025], "label 1 is 1025")])
def test_add_multipart_needs_one_label_per_image_or_one_for_all(client, labels, says):
    files = [("images", (f"{i}.png", texture((5, 5, 5), i), "image/png")) for i in range(2)]
    resp = client.post("/v1/memory", headers=AUTH, files=files, data={"label": labels})
    assert_problem(resp, 422, "invalid-parameters", says)


def test_the_same_image_twice_in_one_add_is_one_point_and_two_labels_are_refused(client):
    same = texture((90, 200, 10), 3)
    twice = [("images", ("lime.png", same, "image/png"))] * 2
    body = client.post("/v1/memory", headers=AUTH, files=twice, data={"label": "lime"}).json()
    assert len(body["added"]) == 1 and body["added"][0]["label"] == "lime"
    resp = client.post("/v1/memory", headers=AUTH, files=twice, data={"label": ["lime", "olive"]})
    assert_problem(resp, 422, "invalid-parameters", "images 0 and 1 are the same image")
    assert client.get("/v1/memory/stats").json()["points"] == body["points"]


def test_a_refusal_quotes_the_labels_it_names_as_they_are_shown(client):
    # As the CLI and Python quote them (retrieval.text.quoted): repr had escaped a Persian label's joiner that shows
    # ('\\u200c') and doubled a backslash, so the page's error named labels other than those sent
    persian = "نیم\u200cرخ"
    twice = [("images", ("same.png", texture((90, 200, 10), 4), "image/png"))] * 2
    resp = client.post("/v1/memory", headers=AUTH, files=twice, data={"label": [persian, "C:\\cats"]})
    assert_problem(resp, 422, "invalid-parameters", f"labelled '{persian}' and 'C:\\cats': an image is one point")
    same = client.post("/v1/memory/relabel", headers=AUTH, json={"label": persian, "to": persian})
    assert_problem(same, 422, "invalid-parameters", f"the points already have the label '{persian}'")


def test_add_where_nothing_decodes_is_400(client):
    resp = client.post("/v1/memory", headers=AUTH, files={"images": ("a.png", b"nope")}, data={"label": "x"})
    assert_problem(resp, 400, "bad-image", "no image could be decoded")


@BOTH_BACKENDS
def test_forget_a_neighbour_and_it_is_never_cited_again(client):
    data = texture(COLORS["blue"], 31)
    before = client.post("/v1/classify?k=3", files=upload(data)).json()
    victim = before["neighbors"][0]["id"]
    assert client.get(f"/v1/memory/points/{victim}/thumbnail").status_code == 200

    resp = client.delete(f"/v1/memory/points/{victim}", headers=AUTH)
    assert resp.json() == {"deleted": 1, "points": 11, "erased": False, "note": None}

    after = client.post("/v1/classify?k=3", files=upload(data)).json()  # same query: must not come from cache
    assert after["cached"] is False and victim not in {n["id"] for n in after["neighbors"]}
    assert_problem(client.get(f"/v1/memory/points/{victim}/thumbnail"), 404, "no-thumbnail", "no point")
    assert_problem(client.delete(f"/v1/memory/points/{victim}", headers=AUTH), 404, "unknown-point")
    assert_problem(client.delete("/v1/memory/points/not-a-uuid", headers=AUTH), 422)


def test_a_forget_whose_thumbnails_cannot_be_deleted_is_made_and_never_cited_again(client, monkeypatch, caplog):
    # A thumbnail folder made read-only: the delete had raised after the points went, before the cached answers
    # citing them were dropped: a 500 "unexpected error", and the cached answer went on citing the point
    import errno

    data = texture(COLORS["blue"], 31)
    victim = client.post("/v1/classify?k=3", files=upload(data)).json()["neighbors"][0]["id"]
    assert client.get(f"/v1/memory/points/{victim}/thumbnail").status_code == 200  # one kept to delete
    real_unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path.suffix == ".jpg":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    resp = client.delete(f"/v1/memory/points/{victim}", headers=AUTH)
    assert resp.status_code == 200 and resp.json()["deleted"] == 1
    after = client.post("/v1/classify?k=3", files=upload(data)).json()
    assert after["cached"] is False and victim not in {n["id"] for n in after["neighbors"]}
    assert any("1 thumbnail of forgotten points could not be deleted" in r.getMessage() for r in caplog.records)


@BOTH_BACKENDS
def test_forget_by_label_and_by_source_prefix(client, memory_images):
    resp = client.delete("/v1/memory?label=red", headers=AUTH)
    assert resp.json() == {"deleted": 4, "points": 8, "erased": False, "note": None}
    body = client.post("/v1/classify", files=upload(texture(COLORS["red"], 41))).json()
    assert "red" not in {n["label"] for n in body["neighbors"]} and "red" not in body["scores"]

    green_dir = str(memory_images.paths[0].parent.parent / "green") + "/"
    resp = client.delete("/v1/memory", params={"source_prefix": green_dir}, headers=AUTH)
    assert resp.json() == {"deleted": 4, "points": 4, "erased": False, "note": None}
    assert client.get("/v1/memory/stats").json()["per_label"] == {"blue": 4}


def test_a_forget_whose_erase_fails_says_the_points_are_forgotten_not_erased(client, monkeypatch):
    # A full or read-only disk: the erase failed after the forget, and the 500 read as nothing done.
    import errno

    from vmem import VisualMemory

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    erase_forgotten = VisualMemory.erase_forgotten
    monkeypatch.setattr(VisualMemory, "erase_forgotten", disk_full)
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).json()["neighbors"][0]["id"]
    resp = client.delete(f"/v1/memory/points/{victim}?erase=true", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["deleted"], body["points"], body["erased"]) == (1, 11, False)
    assert "could not be erased" in body["note"] and "No space left on device" in body["note"]
    by_label = client.delete("/v1/memory?label=red&erase=true", headers=AUTH).json()
    assert (by_label["deleted"], by_label["erased"]) == (4, False) and "could not be erased" in by_label["note"]
    assert_problem(client.delete(f"/v1/memory/points/{victim}", headers=AUTH), 404, "unknown-point")
    assert "POST /v1/memory/erase" in body["note"]
    # Once the disk has room again, what was forgotten is erased without a forget (the page's Forget has none)
    monkeypatch.setattr(VisualMemory, "erase_forgotten", erase_forgotten)
    assert client.post("/v1/memory/erase").status_code == 401
    erased = client.post("/v1/memory/erase", headers=AUTH)
    assert erased.status_code == 200 and erased.json()["erased"] is True, erased.text
    assert client.get("/v1/memory/history", params={"op": "erase"}).json()["entries"]


@BOTH_BACKENDS
def test_forget_and_erase_rewrites_the_embedded_memory_and_is_refused_on_a_server(client, backend):
    victim = client.post("/v1/classify?k=1", files=upload(texture(COLORS["blue"], 31))).json()["neighbors"][0]["id"]
    resp = client.delete(f"/v1/memory/points/{victim}?erase=true", headers=AUTH)
    if backend == "edge":
        assert resp.json() == {"deleted": 1, "points": 11, "erased": True, "note": None}
        assert client.delete("/v1/memory?label=red&erase=true", headers=AUTH).json()["erased"] is True
        assert "vmem_erase_duration_seconds_count 2.0" in client.get("/metrics").text
        # A misspelt option is refused before anything is forgotten, not ignored.
        typo = client.delete(f"/v1/memory/points/{victim}?eraes=true", headers=AUTH)
        assert_problem(typo, 422, "invalid-parameters", "eraes")
        # A point that is not there: a 404, and nothing rewritten or journaled.
        edits = client.get("/v1/memory/history").json()["entries"]
        assert_problem(client.delete(f"/v1/memory/points/{victim}?erase=true", headers=AUTH), 404, "unknown-point")
        assert client.delete("/v1/memory?label=red&erase=true", headers=AUTH).json() == {
            "deleted": 0, "points": 7, "erased": False,
            "note": "no point has label 'red' any more: its points were relabelled or forgotten "
                    "(GET /v1/memory/history?label=red)"}
        assert client.get("/v1/memory/history").json()["entries"] == edits
        assert "vmem_erase_duration_seconds_count 2.0" in client.get("/metrics").text
    else:  # refused before anything is deleted
        assert_problem(resp, 422, "invalid-parameters", "forget without `erase`")
        assert_problem(client.delete("/v1/memory?label=red&erase=true", headers=AUTH), 422, "invalid-parameters")
        # The erase on its own says what it is refused for, not "forget without erase" (it forgets nothing)
        alone = assert_problem(client.post("/v1/memory/erase", headers=AUTH), 422, "invalid-parameters",
                               "a Qdrant server erases forgotten points itself")
        assert "forget without" not in alone["detail"]
        assert client.get("/v1/memory/stats").json()["points"] == 12


def test_forget_several_points_by_id_in_one_request(client):
    # Relabel took ids; forgetting N points by id took N requests, and N erases.
    answer = client.post("/v1/classify?k=3", files=upload(texture(COLORS["blue"], 31))).json()
    ids = [n["id"] for n in answer["neighbors"]]
    gone = client.delete("/v1/memory", params={"ids": [*ids, "00000000-0000-4000-8000-000000000000"]},
                         headers=AUTH)
    assert gone.status_code == 200, gone.text
    assert (gone.json()["deleted"], gone.json()["points"]) == (3, 9)  # the id not in the memory is not counted
    assert gone.json()["note"].startswith("1 of the 4 ids named no point in the memory: forgotten before")
    # The same forget sent again (its answer lost on the way): nothing goes, and the answer says why
    again = client.delete("/v1/memory", params={"ids": ids}, headers=AUTH).json()
    assert (again["deleted"], again["note"]) == (0, "3 of the 3 ids named no point in the memory: forgotten before, "
                                                    "or never in it (GET /v1/memory/history?point_id=ID says when one "
                                                    "was forgotten)")
    assert client.delete("/v1/memory", params={"ids": ids[:1]}, headers=AUTH).json()["note"].startswith(
        "the id named no point")
    assert client.get("/v1/memory/history", params={"point_id": ids[0]}).json()["entries"][0]["op"] == "forget"
    assert all(client.get(f"/v1/memory/points/{i}").status_code == 404 for i in ids)
    assert_problem(client.delete("/v1/memory", params={"ids": ["not-an-id"]}, headers=AUTH), 422,
                   "invalid-parameters")


@BOTH_BACKENDS
def test_forget_like_a_photo_forgets_it_and_its_copies_uploaded_under_other_names(client, backend, monkeypatch):
    # "Remove this photo, and any copy of it": it was uploaded, and so was a JPEG re-save of it under another name;
    # the client holds the photo, not the points' ids.
    import hashlib

    photo = make_scene(3)
    added = client.post("/v1/memory", headers=AUTH, data={"label": "shapes"}, files=[
        ("images", ("holiday.png", photo, "image/png")),
        ("images", ("IMG_0042.jpg", reencoded(photo, "JPEG", quality=90), "image/jpeg")),
        ("images", ("another.png", make_scene(0), "image/png"))])
    ids = [p["id"] for p in added.json()["added"]]
    assert_problem(client.post("/v1/memory/forget-like", files=upload(photo)), 401, "missing-api-key")

    preview = client.post("/v1/memory/forget-like?dry_run=true", headers=AUTH, files=upload(photo))
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["dry_run"], body["deleted"], body["points"], body["min_similarity"]) == (True, 0, 15, 0.93)
    assert [m["id"] for m in body["matched"]] == ids[:2]
    assert body["matched"][0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert body["matched"][1]["source"].endswith(":IMG_0042.jpg") and body["matched"][1]["label"] == "shapes"
    assert client.get("/v1/memory/stats").json()["points"] == 15  # a dry run forgets nothing

    # The image as JSON base64, as classify takes it: the same points go, and the answer says which
    gone = client.post("/v1/memory/forget-like", headers=AUTH, json={"image": base64.b64encode(photo).decode()})
    assert gone.json() == {**body, "dry_run": False, "deleted": 2, "points": 13}
    assert [client.get(f"/v1/memory/points/{i}").status_code for i in ids] == [404, 404, 200]
    entry = client.get("/v1/memory/history", params={"op": "forget"}).json()["entries"][0]
    assert entry["selector"] == {"like_sha256": hashlib.sha256(photo).hexdigest(), "min_similarity": 0.93}
    assert sorted(entry["ids"]) == sorted(ids[:2]) and entry["via"] == "http"
    again = client.post("/v1/memory/forget-like", headers=AUTH, files=upload(photo)).json()
    assert (again["deleted"], again["matched"]) == (0, [])
    assert again["note"] == "no point of the memory is at least 0.93 similar to the image"

    assert_problem(client.post("/v1/memory/forget-like?min_similarity=0", headers=AUTH, files=upload(photo)), 422,
                   "invalid-parameters")
    assert_problem(client.post("/v1/memory/forget-like", headers=AUTH, files=upload(photo),
                               data={"min_similarity": "0.5"}), 422, "invalid-parameters", "query string")
    assert_problem(client.post("/v1/memory/forget-like", headers=AUTH, files=upload(b"nope")), 400, "bad-image")
    monkeypatch.setattr("vmem.visual_memory.MOST_COPIES", 3)  # a threshold that takes more than copies: refused
    assert_problem(client.post("/v1/memory/forget-like?min_similarity=0.01", headers=AUTH, files=upload(photo)), 422,
                   "invalid-parameters", "more than 3 points")
    assert client.get("/v1/memory/stats").json()["points"] == 13
    erase = client.post("/v1/memory/forget-like?erase=true", headers=AUTH, files=upload(make_scene(0)))
    if backend == "edge":
        assert (erase.json()["deleted"], erase.json()["erased"]) == (1, True)
    else:  # refused before anything is forgotten, as the other forgets' erase
        assert_problem(erase, 422, "invalid-parameters", "forget without `erase`")


@BOTH_BACKENDS
def test_a_cited_point_and_its_copies_are_forgotten_by_its_id(client, backend):
    # The page holds a neighbour's id, not its image: the point's stored vector finds its copies.
    photo = make_scene(3)
    added = client.post("/v1/memory", headers=AUTH, data={"label": "shapes"}, files=[
        ("images", ("holiday.png", photo, "image/png")),
        ("images", ("IMG_0042.jpg", reencoded(photo, "JPEG", quality=90), "image/jpeg")),
        ("images", ("another.png", make_scene(0), "image/png"))])
    ids = [p["id"] for p in added.json()["added"]]
    assert_problem(client.post(f"/v1/memory/points/{ids[1]}/forget-like"), 401, "missing-api-key")
    preview = client.post(f"/v1/memory/points/{ids[1]}/forget-like?dry_run=true", headers=AUTH)
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["dry_run"], body["deleted"], [m["id"] for m in body["matched"]]) == (True, 0, [ids[1], ids[0]])
    gone = client.post(f"/v1/memory/points/{ids[1]}/forget-like", headers=AUTH).json()
    assert (gone["deleted"], gone["points"], gone["matched"][0]["id"]) == (2, body["points"] - 2, ids[1])
    assert [client.get(f"/v1/memory/points/{i}").status_code for i in ids] == [404, 404, 200]
    entry = client.get("/v1/memory/history", params={"op": "forget"}).json()["entries"][0]
    assert entry["selector"] == {"like_point": ids[1], "min_similarity": 0.93} and entry["via"] == "http"
    assert_problem(client.post(f"/v1/memory/points/{ids[1]}/forget-like", headers=AUTH), 404, "unknown-point",
                   f"no point with id {ids[1]}")
    assert_problem(client.post(f"/v1/memory/points/{ids[2]}/forget-like?min_similarity=2", headers=AUTH), 422,
                   "invalid-parameters")
    assert client.get(f"/v1/memory/points/{ids[2]}").status_code == 200


@BOTH_BACKENDS
def test_the_points_and_their_vectors_download_as_one_npz_file(client, backend, tmp_path, monkeypatch):
    import io
    import json
    import tempfile

    import numpy as np

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the service writes it first
    (tmp_path / "tmp").mkdir()
    assert_problem(client.get("/v1/memory/export"), 401, "missing-api-key",  # vectors say much of their images
                   "this endpoint hands out the memory's points with their vectors: send the API key")
    resp = client.get("/v1/memory/export", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream" and "points.npz" in resp.headers[
        "content-disposition"]
    with np.load(io.BytesIO(resp.content)) as f:  # numpy alone reads it: no pickle
        vectors, ids, labels = f["vectors"], f["ids"], f["labels"]
        meta = json.loads(f["meta"].item())
    store = client.app.state.service.memory.store
    assert int(resp.headers["x-vmem-points"]) == len(ids) == store.count() and vectors.shape == (len(ids), store.dim)
    assert sorted(ids.tolist()) == sorted(store.ids_where())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert meta["featurizer"]["name"] == store.meta.featurizer.name
    [one] = store.retrieve([str(ids[0])], with_vectors=True)
    assert labels[0] == one.payload["label"] and np.allclose(vectors[0], one.vector, atol=1e-6)
    red = client.get("/v1/memory/export", params={"label": "red"}, headers=AUTH)
    with np.load(io.BytesIO(red.content)) as f:
        assert set(f["labels"].tolist()) == {"red"} and len(f["ids"]) == store.count(label="red")
    assert_problem(client.get("/v1/memory/export", params={"label": "purple"}, headers=AUTH), 422, "unknown-label",
                   "the memory has no label 'purple'")
    assert_problem(client.get("/v1/memory/export", params={"colour": "red"}, headers=AUTH), 422, "invalid-parameters")
    assert list((tmp_path / "tmp").iterdir()) == []  # sent, then deleted


def test_forgetting_or_relabelling_a_misspelt_label_names_the_labels_spelled_like_it(client):
    # 0 points and a note, as before; the note had listed some labels only (10 of Tiny-ImageNet's 200), not the one
    # meant, which the error Python raises names
    forgot = client.delete("/v1/memory", params={"label": "bleu"}, headers=AUTH).json()
    assert forgot["deleted"] == 0 and forgot["note"].startswith("the memory has no label 'bleu': it has 3 labels (")
    assert forgot["note"].endswith("GET /v1/memory/stats lists them); spelled or named like it: 'blue'"), forgot
    relabelled = client.post("/v1/memory/relabel", json={"label": "bleu", "to": "navy"}, headers=AUTH).json()
    assert relabelled["relabelled"] == 0 and relabelled["note"] == forgot["note"]


@BOTH_BACKENDS
def test_relabelling_or_forgetting_a_label_whose_points_all_went_says_so_not_that_the_memory_never_had_it(client):
    # A rename sent again (its first answer lost) had been told "the memory has no label 'red'", as a misspelt
    # label is: the label was the memory's, and its history says where its points went
    moved = client.post("/v1/memory/relabel", json={"label": "red", "to": "navy"}, headers=AUTH).json()
    assert moved["relabelled"] == 4 and moved["note"] is None
    gone = ("no point has label 'red' any more: its points were relabelled or forgotten "
            "(GET /v1/memory/history?label=red)")
    again = client.post("/v1/memory/relabel", json={"label": "red", "to": "navy"}, headers=AUTH).json()
    assert (again["relabelled"], again["note"]) == (0, gone)
    forgot = client.delete("/v1/memory", params={"label": "red"}, headers=AUTH).json()
    assert (forgot["deleted"], forgot["note"]) == (0, gone)
    [edit] = client.get("/v1/memory/history", params={"label": "red"}).json()["entries"]
    assert (edit["op"], edit["to"]) == ("relabel", "navy")
    # A label the memory never had is still said to be none of its labels
    never = client.post("/v1/memory/relabel", json={"label": "purple", "to": "navy"}, headers=AUTH).json()
    assert never["relabelled"] == 0 and never["note"].startswith("the memory has no label 'purple'")


def test_listing_a_label_whose_points_were_all_forgotten_is_an_empty_page_and_an_unknown_label_still_a_422(client):
    # A client that forgot a label, then lists it to check nothing is left (or pages it as another client
    # forgets), had been told "the memory has no label 'red'": a 422 it reads as a misspelt label.
    forgot = client.delete("/v1/memory", params={"label": "red"}, headers=AUTH)
    assert forgot.status_code == 200 and forgot.json()["deleted"] > 0
    listed = client.get("/v1/memory/points", params={"label": "red"})
    assert listed.status_code == 200, listed.text
    assert listed.json()["points"] == [] and listed.json()["next_cursor"] is None
    exported = client.get("/v1/memory/export", params={"label": "red"}, headers=AUTH)  # as points lists it
    assert exported.status_code == 200 and exported.headers["X-Vmem-Points"] == "0", exported.text
    assert_problem(client.get("/v1/memory/export", params={"label": "purple"}, headers=AUTH), 422, "unknown-label",
                   "the memory has no label 'purple'")
    # A label no edit ever touched is still refused: an empty page would read as an empty class.
    assert_problem(client.get("/v1/memory/points", params={"label": "purple"}), 422, "unknown-label",
                   "the memory has no label 'purple'")


@pytest.mark.parametrize("no_room", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG], ids=errno.errorcode.get)
def test_an_export_the_temporary_folder_has_no_room_for_is_a_507_saying_what_to_do(client, tmp_path, monkeypatch,
                                                                                   no_room):
    # A full disk, the user's quota and a file-size limit (`ulimit -f`) alike: EFBIG had been a 500
    import os
    import tempfile

    from vmem import VisualMemory

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # what a write cut short leaves: it goes too
        raise OSError(no_room, os.strerror(no_room))

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(VisualMemory, "export_points", disk_full)
    assert_problem(client.get("/v1/memory/export", headers=AUTH), 507, "export-disk-full",
                   "export a label or a source prefix at a time")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_forget_like_whose_erase_fails_says_which_points_are_forgotten_not_erased(client, monkeypatch):
    import errno

    from vmem import VisualMemory

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VisualMemory, "erase_forgotten", disk_full)
    [added] = client.post("/v1/memory", headers=AUTH, data={"label": "shapes"},
                          files={"images": ("holiday.png", make_scene(3), "image/png")}).json()["added"]
    resp = client.post("/v1/memory/forget-like?erase=true", headers=AUTH, files=upload(make_scene(3)))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["deleted"], body["erased"], [m["id"] for m in body["matched"]]) == (1, False, [added["id"]])
    assert "could not be erased" in body["note"] and "POST /v1/memory/erase" in body["note"]


@SHARED
@pytest.mark.parametrize("query", ["", "?label=red&source_prefix=/x",
                                   "?label=red&ids=00000000-0000-4000-8000-000000000000"])
def test_forget_needs_exactly_one_selector(client, query):
    assert_problem(client.delete(f"/v1/memory{query}", headers=AUTH), 422, "invalid-parameters", "exactly one")


@SHARED
@pytest.mark.parametrize("prefix", ["~no-such-user-here/photos/", "~root/photos/", "~/photos", "/data/cats\x00/"],
                         ids=["unknown-user", "known-user", "home", "nul-byte"])
def test_forget_by_a_source_prefix_that_names_no_path_here_is_a_422(client, prefix):
    # Local prefixes are resolved like stored sources (~ expanded, links followed); one that cannot be is the
    # client's mistake to fix, not a 500.
    resp = client.delete("/v1/memory", params={"source_prefix": prefix}, headers=AUTH)
    assert_problem(resp, 422, "invalid-parameters", "source_prefix")
    assert client.get("/v1/memory/stats").json()["points"] == 12
    # Nor does a listing, open to all, tell which accounts the server has (~root answered, ~nobody-such did not).
    assert client.get("/v1/memory/points", params={"source_prefix": prefix}).status_code == 422


def test_behind_a_path_prefix_thumbnail_urls_carry_it_and_work_as_given(client):
    # A proxy serving the app at /vmem sets root_path: links the service hands out include it.
    behind_proxy = TestClient(client.app, root_path="/vmem")
    body = behind_proxy.post("/v1/classify?k=2", files=upload(texture(COLORS["green"], 3))).json()
    url = body["neighbors"][0]["thumbnail_url"]
    assert url == f"/vmem/v1/memory/points/{body['neighbors'][0]['id']}/thumbnail"
    thumb = behind_proxy.get(url)  # exactly as given, as the page's <img src> uses it
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_thumbnail_404_says_why(client, memory_images, tmp_path):
    ok = client.post("/v1/classify?k=1", files=upload(memory_images.paths[5].read_bytes())).json()["neighbors"][0]
    resp = client.get(ok["thumbnail_url"])
    assert resp.status_code == 200 and Image.open(io.BytesIO(resp.content)).format == "JPEG"
    assert_problem(client.get("/v1/memory/points/00000000-0000-0000-0000-000000000000/thumbnail"), 404,
                   "no-thumbnail", "no point with id")


def test_a_thumbnail_made_while_its_point_is_forgotten_does_not_outlive_the_forget(client, memory_images,
                                                                                   monkeypatch):
    service = client.app.state.service
    point = client.post("/v1/classify?k=1", files=upload(memory_images.paths[5].read_bytes())).json()["neighbors"][0]
    real_save = service.thumbnails.save

    def forgotten_meanwhile(point_id, image):  # the forget lands after the point was found, before the save
        service.memory.forget(ids=[point_id])
        return real_save(point_id, image)

    monkeypatch.setattr(service.thumbnails, "save", forgotten_meanwhile)
    assert_problem(client.get(point["thumbnail_url"]), 404, "no-thumbnail", "forgotten just now")
    assert service.thumbnails.load(point["id"]) is None


def test_thumbnails_come_only_from_the_memorys_own_image_roots(make_client, lite0, tmp_path):
    # A point's source is data: one written straight into the store must not make any host file servable.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "private.png"
    secret.write_bytes(texture(COLORS["red"], 9))
    client = make_client()
    store = client.app.state.service.memory.store
    [pid] = store.add(lite0.embed([secret]), ["red"], [str(secret)])
    assert_problem(client.get(f"/v1/memory/points/{pid}/thumbnail"), 404, "no-thumbnail", "outside the directories")
    allowed = make_client(source_roots=str(elsewhere))
    [pid] = allowed.app.state.service.memory.store.add(lite0.embed([secret]), ["red"], [str(secret)])
    assert allowed.get(f"/v1/memory/points/{pid}/thumbnail").status_code == 200


def test_a_refusal_names_a_source_or_template_escaped_as_the_page_shows_it(make_client, lite0, tmp_path):
    # A 4xx detail is read by a person (the page shows it): a source holding U+202E RIGHT-TO-LEFT OVERRIDE had
    # turned the rest of "no longer at ..." backwards, and repr had escaped a Persian template name's joiner
    gone = tmp_path / "gone.png"
    gone.write_bytes(texture(COLORS["red"], 9))
    client = make_client()
    service = client.app.state.service
    [root] = service.memory.shown_roots
    [pid] = service.memory.store.add(lite0.embed([gone]), ["red"], [str(Path(root) / "cat\u202egnp.png")])
    body = assert_problem(client.get(f"/v1/memory/points/{pid}/thumbnail"), 404, "no-thumbnail", "no longer at")
    assert body["detail"].endswith("cat\\u202egnp.png") and "\u202e" not in body["detail"]
    refused = client.post("/v1/classify?template=نیم\u200cرخ", files=upload(texture(COLORS["red"], 61), "a.png"))
    assert_problem(refused, 422, "unused-vote-option", "template 'نیم\u200cرخ' chooses the re-ranker's prompt")


def test_a_thumbnail_is_never_of_a_file_a_link_in_an_image_folder_leads_out_to(make_client, lite0, tmp_path):
    secret = tmp_path / "private.png"
    secret.write_bytes(texture(COLORS["red"], 9))
    client = make_client()
    service = client.app.state.service
    [root] = service.memory.shown_roots
    link, loop = Path(root) / "private-link.png", Path(root) / "loop.png"
    link.symlink_to(secret)
    loop.symlink_to(loop.name)
    try:
        [out, looped] = service.memory.store.add(lite0.embed([secret, secret]), ["red", "red"], [str(link), str(loop)])
        assert_problem(client.get(f"/v1/memory/points/{out}/thumbnail"), 404, "no-thumbnail", "outside the directories")
        # A link loop was a 500 (Path.resolve's RuntimeError): it leads to no file
        assert_problem(client.get(f"/v1/memory/points/{looped}/thumbnail"), 404, "no-thumbnail", "no longer at")
    finally:
        link.unlink()
        loop.unlink()


def test_the_re_ranker_sends_gemini_only_images_the_service_may_show(tmp_path, lite0, memory_images):
    # VMEM_SOURCE_ROOTS narrows the folders whose images the service shows: an operator who narrowed it expects
    # no image outside them to leave the machine either, yet the re-ranker kept to the memory's own folders
    narrowed = tmp_path / "shown"
    narrowed.mkdir()
    url = "/v1/classify?k=12&rerank=true&template=neighbors-v1"
    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=None)
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
        try:
            # the query and its 12 neighbours; the query alone (another: the re-ranker's answer is cached)
            for seed, roots, images in ((61, {}, 13), (62, {"source_roots": str(narrowed)}, 1)):
                fake.reset()
                fake.enqueue(fake.answer("red"))
                with TestClient(create_app(settings(tmp_path, **roots), memory=mem), headers=AUTH) as client:
                    answer = client.post(url, files=upload(texture(COLORS["red"], seed), "a.png")).json()
                    thumb = client.get(answer["neighbors"][0]["thumbnail_url"]).status_code
                assert answer["reranked"] is True and fake.requests[0].images == images
                assert thumb == (404 if roots else 200)  # the page keeps to the same folders
        finally:
            mem.close()


def test_a_link_planted_in_a_shared_thumbnail_folder_is_not_served(make_client, memory_images, tmp_path):
    # Services share VMEM_THUMBNAIL_DIR: a link there under a point's id had served any file the service could
    # read (its env file with the keys), to a client without a key, and copied it into the memory's folder.
    secret = tmp_path / "service.env"
    secret.write_text("VMEM_API_KEY=the-real-one\n")
    client = make_client(thumbnail_dir=tmp_path / "shared")
    up = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"},
                     files=[("images", ("l.png", texture((120, 230, 60), 71)))]).json()["added"][0]["id"]
    built = client.post("/v1/classify?k=1", files=upload(memory_images.paths[5].read_bytes())).json()["neighbors"][0]
    folder = client.app.state.service.thumbnails.root
    for point_id in (up, built["id"]):
        (folder / f"{point_id}.jpg").unlink(missing_ok=True)
        (folder / f"{point_id}.jpg").symlink_to(secret)
    (tmp_path / "shared" / f"{up}.jpg").symlink_to(secret)  # where earlier versions kept them
    resp = client.get(f"/v1/memory/points/{up}/thumbnail")
    assert resp.status_code == 404 and b"the-real-one" not in resp.content  # the upload's own thumbnail is gone
    resp = client.get(built["thumbnail_url"])  # a built image's is made again from its file
    assert resp.status_code == 200 and Image.open(io.BytesIO(resp.content)).format == "JPEG"
    assert not (folder / f"{built['id']}.jpg").is_symlink()
    # A FIFO planted so had held every thread that opened it, for good
    import os
    from concurrent.futures import ThreadPoolExecutor

    (folder / f"{built['id']}.jpg").unlink()
    os.mkfifo(folder / f"{built['id']}.jpg")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(client.get, built["thumbnail_url"]).result(timeout=20).status_code == 200


def test_a_thumbnail_of_a_big_photo_is_decoded_at_the_scale_it_needs(make_client, memory_images, monkeypatch):
    # Decoded whole, 15 thumbnails of 24 MP photos asked at once (no key needed) had taken 2.6 GB
    import server.service

    scales = []

    def load_image(source, min_side=None, **more):
        scales.append(min_side)
        return real_load_image(source, min_side, **more)

    real_load_image = server.service.load_image
    monkeypatch.setattr(server.service, "load_image", load_image)
    client = make_client()
    point = client.post("/v1/classify?k=1", files=upload(memory_images.paths[5].read_bytes())).json()["neighbors"][0]
    assert client.get(point["thumbnail_url"]).status_code == 200
    assert scales == [client.app.state.service.thumbnails.size]


def test_listing_by_folder_walks_for_links_only_inside_the_folders_served(make_client, memory_images, tmp_path,
                                                                          monkeypatch):
    # Anyone may list points: a source_prefix of any folder on the host (/usr, an NFS mount) had been walked
    import vmem.visual_memory

    walked = []
    real = vmem.visual_memory.linked_sources
    monkeypatch.setattr(vmem.visual_memory, "linked_sources", lambda folder: walked.append(folder) or real(folder))
    client = make_client()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked").symlink_to(memory_images.paths[0].parent)
    assert client.get("/v1/memory/points", params={"source_prefix": str(elsewhere)}).json()["points"] == []
    assert walked == []
    served = memory_images.paths[0].parent
    listed = client.get("/v1/memory/points", params={"source_prefix": str(served)}).json()["points"]
    assert listed and walked == [f"{served}/"]
    # With the key, as a forget of the folder chooses them: a listing before a forget shows what it would take
    keyed = client.get("/v1/memory/points", params={"source_prefix": str(elsewhere)}, headers=AUTH).json()["points"]
    assert {p["id"] for p in keyed} == {p["id"] for p in listed} and walked[-1] == f"{elsewhere}/"


# ------------------------------------------------------------------ ops


@BOTH_BACKENDS
def test_stats_describe_the_memory(client, backend):
    body = client.get("/v1/memory/stats").json()
    assert body["backend"] == {"edge": "embedded", "qdrant": "qdrant"}[backend]
    assert body["points"] == 12 and body["labels"] == 3
    assert body["per_label"] == {"blue": 4, "green": 4, "red": 4}
    assert body["featurizer"]["name"] == "efficientnet-lite0" and body["featurizer"]["dim"] == 1280
    assert body["default_vote"]["k"] == 50 and body["ood_threshold"] > 0


def test_a_broken_template_in_a_folder_whose_path_holds_a_colon_is_refused_without_the_path(client, tmp_path,
                                                                                             monkeypatch):
    # The reason was cut from the message at its first ": ", so a folder "2024: templates" gave part of its path.
    folder = tmp_path / "2024: templates"
    folder.mkdir()
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(folder))
    (folder / "mine.yaml").write_text("name: mine\nversion: 1\n")
    resp = client.post("/v1/classify?rerank=true&template=mine", files=upload(texture(COLORS["red"], 1)),
                       headers=AUTH)
    body = assert_problem(resp, 422, "invalid-template", "the template 'mine' could not be loaded: invalid template")
    assert "templates" not in body["detail"] and "system: Field required" in body["detail"]


def test_templates_list_the_registry(client):
    from prompts import default_registry

    body = client.get("/v1/templates").json()
    assert [t["name"] for t in body["templates"]] == default_registry().names()
    assert body["default"] in default_registry().names()
    assert all(t["description"] and t["ref"].startswith(t["name"] + "@") for t in body["templates"])
    assert body["errors"] == {}


def test_a_template_that_does_not_load_is_listed_with_why(client, tmp_path, monkeypatch):
    # `vmem templates list` said it; the service left it out, then refused it as "could not be loaded".
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "broken-v1.yaml").write_text("name: broken-v1\nversion: [not a number]\n")
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "templates"))
    body = client.get("/v1/templates").json()
    assert "broken-v1" not in [t["name"] for t in body["templates"]]
    assert list(body["errors"]) == ["broken-v1"] and body["errors"]["broken-v1"]


def test_the_templates_that_do_not_load_are_said_without_the_servers_path(client, tmp_path, monkeypatch):
    # The list gave each error after the server's path to the file (or to $VMEM_TEMPLATES_DIR): the name says which.
    folder = tmp_path / "2024: templates"
    folder.mkdir()
    (folder / "broken-v1.yaml").write_text("name: broken-v1\nversion: 1\n")
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(folder))
    errors = client.get("/v1/templates").json()["errors"]
    assert errors == {"broken-v1": "invalid template:\n  system: Field required"}
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "tempaltes"))
    errors = client.get("/v1/templates").json()["errors"]
    assert errors == {"$VMEM_TEMPLATES_DIR": "not a directory: none of your templates were loaded"}


@pytest.mark.parametrize("folder", ["templates", "2024: templates"])
def test_a_broken_template_is_listed_without_the_server_s_path_to_it(client, tmp_path, monkeypatch, folder):
    # A classify asking for it is refused without the path (dea1736); the list anyone may read gave it whole, and
    # the page cut it off again only where it began with "/" (not under a relative VMEM_TEMPLATES_DIR).
    monkeypatch.chdir(tmp_path)
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "broken-v1.yaml").write_text("name: broken-v1\nversion: 1\n")
    for given in (str(tmp_path / folder), folder):
        monkeypatch.setenv("VMEM_TEMPLATES_DIR", given)
        body = client.get("/v1/templates").json()
        assert body["errors"] == {"broken-v1": "invalid template:\n  system: Field required"}, body["errors"]


def test_a_memory_folder_removed_under_the_service_is_not_ready_and_takes_no_edit(client, tmp_path, caplog):
    # The engine answers from the files it holds open: the service said "ready" and "201 added" for points
    # written into deleted files, lost at its restart.
    import shutil

    shutil.rmtree(tmp_path / "memory0")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "was removed or replaced" in ready.json()["detail"]
    assert client.get("/readyz").status_code == 503
    # Said in the log once, when it turned (nothing had been logged), not at every probe
    [turned] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ready:")]
    assert "was removed or replaced" in turned
    add = client.post("/v1/memory", headers=AUTH, data={"label": "red"},
                      files={"images": ("r.png", texture(COLORS["red"], 5), "image/png")})
    assert_problem(add, 503, "memory-gone", "restart the service")
    assert "retry-after" not in add.headers  # no outage: no retry brings the folder back
    forget = client.delete("/v1/memory?label=red", headers=AUTH)
    assert forget.status_code == 503


def test_the_size_gauges_are_counted_at_a_scrape_after_an_edit_not_at_every_edit(client, monkeypatch):
    # A label count reads every point (90 ms at 250,000): each add and forget paid it on an embedding thread.
    store = client.app.state.service.memory.store
    counted = []
    real = store.label_counts
    monkeypatch.setattr(store, "label_counts", lambda: counted.append(1) or real())
    for seed in (1, 2):
        add = client.post("/v1/memory", headers=AUTH, data={"label": "teal"},
                          files={"images": ("t.png", texture((20, 160, 160), seed), "image/png")})
        assert add.status_code == 201
    assert counted == []
    text = client.get("/metrics").text
    assert "vmem_memory_points 14.0" in text and "vmem_memory_labels 4.0" in text and len(counted) == 1
    client.get("/metrics")
    assert len(counted) == 1  # nothing edited since: the same counts
    client.delete("/v1/memory?label=teal", headers=AUTH)
    assert "vmem_memory_labels 3.0" in client.get("/metrics").text and len(counted) == 2


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["points"] == 12 and ready["featurizer"] == "efficientnet-lite0"
    client.post("/v1/classify", files=upload(texture(COLORS["red"], 1)))
    text = client.get("/metrics").text
    assert 'vmem_http_requests_total{method="POST",route="/v1/classify",status="200"} 1.0' in text
    assert 'vmem_http_request_duration_seconds_count{method="POST",route="/v1/classify"} 1.0' in text
    assert "vmem_memory_points 12.0" in text and "vmem_images_classified_total 1.0" in text
    # What an operator graphs beside them: the process (RSS, open files against the limit), which vmem, and the
    # requests begun and not yet answered (this scrape's own)
    from vmem import __version__

    assert "process_resident_memory_bytes" in text and "process_open_fds" in text and "process_max_fds" in text
    assert f'vmem_build_info{{version="{__version__}"}} 1.0' in text and "python_info{" in text
    assert "vmem_http_requests_in_progress 1.0" in text


def test_metrics_name_the_route_of_every_answer(make_client):
    client = make_client(max_upload_bytes=4096)
    big = texture(COLORS["red"], 1, size=96)
    assert client.post("/v1/classify", files=upload(big)).status_code == 413  # refused on its Content-Length
    for path in ("/openapi.json", "/static/app.js", "/v1/nothing"):
        client.get(path)
    text = client.get("/metrics").text
    assert 'vmem_http_requests_total{method="POST",route="/v1/classify",status="413"} 1.0' in text
    assert 'vmem_http_requests_total{method="GET",route="/openapi.json",status="200"} 1.0' in text
    assert 'vmem_http_requests_total{method="GET",route="/static",status="200"} 1.0' in text
    assert 'vmem_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text  # only that one
    assert 'route="<unmatched>",status="200"' not in text


def test_cached_answers_are_counted_as_classified_as_well_as_out_of_distribution(client):
    for _ in range(2):
        body = client.post("/v1/classify?k=3", files=upload(checkerboard())).json()
    assert body["cached"] is True and body["out_of_distribution"] is True
    text = client.get("/metrics").text
    # Two images answered, both flagged: the flagged share is 1, never more.
    assert "vmem_images_classified_total 2.0" in text and "vmem_out_of_distribution_total 2.0" in text


def test_metrics_count_the_original_vectors_read_to_re_rank_doubtful_candidates(tmp_path, lite0, memory_images):
    from retrieval import IndexSettings, open_store
    from vmem import VisualMemory

    # A margin so wide that every candidate is in doubt: each search reads all its candidates' rows.
    index = IndexSettings(quantization="turboquant8", rescore=False, rescore_doubtful=True, doubt_margin=1.0)
    store = open_store(tmp_path / "doubtful", lite0.spec, index=index)
    store.add(memory_images.vectors, memory_images.labels, [str(p) for p in memory_images.paths])
    with VisualMemory(store, lite0) as mem, TestClient(create_app(settings(tmp_path), memory=mem)) as client:
        def rows_read() -> float:
            line = next(x for x in client.get("/metrics").text.splitlines()
                        if x.startswith("vmem_original_rows_read_total "))
            return float(line.split()[1])

        before = rows_read()  # the warm-up's searches read some already
        assert client.post("/v1/classify?k=5", files=upload(texture(COLORS["red"], 1))).status_code == 200
        assert rows_read() >= before + 5


def test_health_stays_fast_while_every_embedding_thread_is_busy(client):
    service = client.app.state.service
    release = threading.Event()
    busy = [service.executor.submit(release.wait, 30) for _ in range(service.settings.featurize_threads)]
    try:
        assert client.get("/healthz").status_code == 200
        assert not any(f.done() for f in busy)  # answered while every embedding thread still waits
    finally:
        release.set()
    assert all(f.result(timeout=5) for f in busy)


def test_reads_anyone_may_make_answer_while_every_embedding_thread_is_busy(client):
    # The journal read whole (a label filter parses every line) on the embedding threads: a few clients without a
    # key asking for history had slowed classify from 0.08 s to 5 s
    from concurrent.futures import ThreadPoolExecutor

    service = client.app.state.service
    release = threading.Event()
    busy = [service.executor.submit(release.wait, 30) for _ in range(service.settings.featurize_threads)]
    try:
        with ThreadPoolExecutor(2) as pool:
            history = pool.submit(client.get, "/v1/memory/history?label=red")
            points = pool.submit(client.get, "/v1/memory/points?limit=2")
            assert history.result(timeout=20).status_code == 200 and points.result(timeout=20).status_code == 200
            assert not release.is_set()
    finally:
        release.set()
    assert all(f.result(timeout=5) for f in busy)


def test_a_service_named_its_hosts_answers_no_other_host(make_client):
    # Reads need no key: a service on loopback was readable by any web page through a name it made resolve to
    # 127.0.0.1 (DNS rebinding)
    client = make_client(allowed_hosts="localhost,127.0.0.1,testserver,*.example.org")
    assert client.get("/v1/memory/stats").status_code == 200  # Host: testserver
    for host in ("localhost:8000", "127.0.0.1", "vmem.example.org", "VMEM.example.org:443"):
        assert client.get("/v1/memory/stats", headers={"Host": host}).status_code == 200, host
    refused = client.get("/v1/memory/history", headers={"Host": "evil.example:8000"})
    assert_problem(refused, 400, "host-not-allowed", "not evil.example (VMEM_ALLOWED_HOSTS)")
    # An orchestrator's probes name the pod by its address; they read nothing of the memory's. Under a proxy's
    # prefix too
    assert client.get("/readyz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    prefixed = TestClient(client.app, root_path="/vmem")
    assert prefixed.get("/vmem/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert make_client().get("/v1/memory/stats", headers={"Host": "evil.example"}).status_code == 200  # by default
    # As people write them: with a port (which had matched nothing), an IPv6 address with or without brackets
    # (a list starting "[::1]" had been refused as broken JSON)
    ipv6 = make_client(allowed_hosts="[::1]:8000,localhost:8000,::2")
    for host in ("[::1]:8000", "localhost", "[::2]"):
        assert ipv6.get("/v1/memory/stats", headers={"Host": host}).status_code == 200, host


def test_readiness_answers_while_the_slow_reads_anyone_may_ask_are_all_busy(client):
    # History and listings had run on the request threads /readyz answers on: 60 history reads took it to 8.8 s
    from concurrent.futures import ThreadPoolExecutor

    service = client.app.state.service
    release = threading.Event()
    busy = [service.read_executor.submit(release.wait, 30) for _ in range(2)]
    try:
        with ThreadPoolExecutor(3) as pool:
            history = pool.submit(client.get, "/v1/memory/history")
            ready = pool.submit(client.get, "/readyz")
            listing = pool.submit(client.get, "/v1/memory/points?limit=2")  # no walk: not queued behind them
            assert ready.result(timeout=20).status_code == 200 and listing.result(timeout=20).status_code == 200
            # Its client's thread may only now be sending it (a loaded machine): once it is queued, it stays there
            deadline = time.monotonic() + 60
            while 'vmem_work_queued{pool="read"} 1.0' not in client.get("/metrics").text:
                assert time.monotonic() < deadline and not history.done(), "the history read never queued"
                time.sleep(0.02)
            assert not history.done()  # waits its turn on the read threads
            release.set()
            assert history.result(timeout=20).status_code == 200
    finally:
        release.set()
    assert all(f.result(timeout=5) for f in busy)


def test_the_pool_gauges_say_what_each_pool_runs(client):
    # The help had named embedding and rerank only, though read's series were there beside them
    metrics = client.get("/metrics").text
    for gauge in ("vmem_work_queued", "vmem_work_running"):
        help_line = next(line for line in metrics.splitlines() if line.startswith(f"# HELP {gauge} "))
        for pool in ("embedding", "edit", "rerank", "read", "import", "backup"):
            assert f'{gauge}{{pool="{pool}"}}' in metrics and f"{pool}: " in help_line, (gauge, pool)


def test_cors_is_closed_unless_origins_are_named(make_client):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    closed = make_client()
    assert "access-control-allow-origin" not in closed.options("/v1/classify", headers=preflight).headers
    opened = make_client(cors_origins=["http://ui.example"])
    resp = opened.options("/v1/classify", headers={**preflight, "Origin": "http://ui.example"})
    assert resp.headers["access-control-allow-origin"] == "http://ui.example"
    resp = opened.options("/v1/classify", headers=preflight)
    assert "access-control-allow-origin" not in resp.headers
    # Every method the API takes, relabelling (PATCH) and naming (PUT) too.
    for method, path in [("PATCH", f"/v1/memory/points/{uuid.uuid4()}"), ("PUT", "/v1/memory/label-names"),
                         ("DELETE", "/v1/memory")]:
        resp = opened.options(path, headers={"Origin": "http://ui.example", "Access-Control-Request-Method": method,
                                             "Access-Control-Request-Headers": "x-api-key,content-type"})
        assert resp.status_code == 200 and method in resp.headers["access-control-allow-methods"], method
    # A page may send its own request id, and read the one answered
    resp = opened.options("/v1/classify", headers={"Origin": "http://ui.example", "Access-Control-Request-Method":
                                                   "POST", "Access-Control-Request-Headers": "x-request-id"})
    assert resp.status_code == 200
    resp = opened.get("/v1/memory/stats", headers={"Origin": "http://ui.example"})
    assert "x-request-id" in resp.headers["access-control-expose-headers"].lower()


def test_a_page_of_a_named_origin_may_read_the_headers_the_api_documents(make_client):
    # A browser hides every answer header from another origin's page but a safelisted few unless the service
    # exposes it: the page could not read when to ask the label audit again, nor how many points an export holds.
    client = make_client(cors_origins=["http://ui.example"])
    page = {"Origin": "http://ui.example"}
    export = client.get("/v1/memory/export", headers={**page, **AUTH})
    assert export.status_code == 200 and int(export.headers["x-vmem-points"]) == 12
    for resp in (export, client.get("/v1/memory/stats", headers=page)):  # the audit's 202 and a 503: Retry-After
        exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "x-vmem-points", "content-disposition", "x-request-id"} <= exposed


@SHARED
def test_openapi_describes_every_field(client):
    spec = client.get("/openapi.json").json()
    undocumented = [f"{name}.{field}" for name, schema in spec["components"]["schemas"].items()
                    for field, prop in schema.get("properties", {}).items()
                    if not prop.get("description") and "$ref" not in prop]
    assert undocumented == []
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    for path in spec["paths"].values():
        for op in path.values():
            assert op.get("summary") and op.get("description"), op.get("operationId")



@SHARED
def test_openapi_gives_a_generated_client_what_it_needs(client):
    # From a review with openapi-python-client against a running service.
    spec = client.get("/openapi.json").json()
    ops = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    # Operation ids name the operation (a client's functions and modules are named after them), not
    # FastAPI's classify_v1_classify_post.
    assert ops["/v1/classify", "post"]["operationId"] == "classify"
    assert ops["/v1/memory/points/{point_id}", "delete"]["operationId"] == "forget_point"
    assert len({op["operationId"] for op in ops.values()}) == len(ops)
    # One label per image in a multipart add is repeated `label` parts: untyped, a generated client sent a list
    # as one part, and both images were stored under the label "['la', 'lb']".
    form = ops["/v1/memory", "post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["label"]["type"] == "array"
    # Classify takes the key when it re-ranks: the key is optional there, not absent.
    assert {"APIKeyHeader": []} in ops["/v1/classify", "post"]["security"] and {} in ops["/v1/classify", "post"][
        "security"]
    # Any body may be too large, and any route may fail of its own.
    for key in (("/v1/memory/relabel", "post"), ("/v1/memory/label-names", "put")):
        assert "413" in ops[key]["responses"], key
    assert all("500" in op["responses"] for op in ops.values() if "422" in op["responses"])
    assert "507" in ops["/v1/memory/erase", "post"]["responses"]  # a disk with no room to rewrite
    # Ids and times say their shape: a generated client passes an id it got back where a UUID is asked for
    schemas = spec["components"]["schemas"]
    assert schemas["NeighborOut"]["properties"]["id"]["format"] == "uuid"
    assert schemas["JournalEntry"]["properties"]["at"]["format"] == "date-time"
    # Every field of an answer is always sent: required, not `X | None | Unset` in a generated client
    answer = spec["components"]["schemas"]["ClassificationOut"]
    assert set(answer["required"]) == set(answer["properties"])
    assert set(spec["components"]["schemas"]["PointOut"]["required"]) >= {"added_at", "relabelled_from"}


@SHARED
def test_operation_ids_stay_what_generated_clients_call(client):
    # An operation's id is its handler's name (create_app's generate_unique_id_function), and a generated client's
    # function: renaming a handler renames the function in every client generated after it. Change one here
    # only on purpose, and say so in docs/service.md.
    spec = client.get("/openapi.json").json()
    ops = {f"{method.upper()} {path}": op["operationId"] for path, item in spec["paths"].items()
           for method, op in item.items()}
    assert ops == {
        "POST /v1/classify": "classify", "POST /v1/classify/batch": "classify_batch",
        "POST /v1/memory": "add", "DELETE /v1/memory": "forget_where",
        "DELETE /v1/memory/points/{point_id}": "forget_point", "PATCH /v1/memory/points/{point_id}": "relabel_point",
        "GET /v1/memory/points/{point_id}": "get_point", "POST /v1/memory/forget-like": "forget_like",
        "POST /v1/memory/points/{point_id}/forget-like": "forget_point_like", "POST /v1/memory/erase": "erase",
        "POST /v1/memory/backup": "backup", "POST /v1/memory/relabel": "relabel", "GET /v1/memory/stats": "stats",
        "PUT /v1/memory/label-names": "set_label_names", "GET /v1/memory/history": "history",
        "GET /v1/memory/suspects": "suspects", "GET /v1/memory/points": "list_points",
        "GET /v1/memory/export": "export_points", "POST /v1/memory/import": "import_points",
        "GET /v1/memory/points/{point_id}/thumbnail": "thumbnail", "GET /v1/templates": "list_templates",
        "GET /healthz": "healthz", "GET /readyz": "readyz", "GET /metrics": "metrics",
    }


@SHARED
def test_point_ids_sent_are_uuids_as_those_answered(client):
    # A generated client parses every id it is given as a UUID: it passes them back to forget and relabel
    # without turning each into a string, and the service refuses an id that is no UUID (a 422), as it says.
    spec = client.get("/openapi.json").json()
    forget = next(p for p in spec["paths"]["/v1/memory"]["delete"]["parameters"] if p["name"] == "ids")
    [ids, _null] = forget["schema"]["anyOf"]
    assert ids["items"]["format"] == "uuid"
    [ids, _null] = spec["components"]["schemas"]["RelabelIn"]["properties"]["ids"]["anyOf"]
    assert ids["items"]["format"] == "uuid"
    resp = client.delete("/v1/memory", params={"ids": "abc"}, headers=AUTH)
    assert_problem(resp, 422, "invalid-parameters", "is not a point id")


@SHARED
def test_the_headers_an_answer_is_read_by_are_in_the_spec(client):
    # An export's count is only in its header (the body is the .npz), and a running audit says when to ask again:
    # a client generated from the spec types the headers it declares (openapi-typescript's `headers`).
    spec = client.get("/openapi.json").json()
    export = spec["paths"]["/v1/memory/export"]["get"]["responses"]["200"]["headers"]
    assert export["X-Vmem-Points"]["schema"] == {"type": "integer", "minimum": 0}
    running = spec["paths"]["/v1/memory/suspects"]["get"]["responses"]["202"]["headers"]
    assert running["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    resp = client.get("/v1/memory/export", headers=AUTH)
    assert int(resp.headers["X-Vmem-Points"]) == 12


@SHARED
def test_an_edits_kind_is_one_named_type_in_the_spec(client):
    # An entry's `op` and the history's `op` filter are one enum, JournalOp: inline twice, a generated client made
    # two (JournalEntryOp and HistoryOpType0), and an entry's op could not be passed back as the filter.
    spec = client.get("/openapi.json").json()
    ref = "#/components/schemas/JournalOp"
    assert spec["components"]["schemas"]["JournalEntry"]["properties"]["op"]["$ref"] == ref
    [op] = [p for p in spec["paths"]["/v1/memory/history"]["get"]["parameters"] if p["name"] == "op"]
    assert {"$ref": ref} in op["schema"]["anyOf"]
    assert spec["components"]["schemas"]["JournalOp"]["enum"][:3] == ["add", "forget", "relabel"]
    resp = client.get("/v1/memory/history", params={"op": "add"})
    assert resp.status_code == 200 and {e["op"] for e in resp.json()["entries"]} <= {"add"}
    assert_problem(client.get("/v1/memory/history", params={"op": "added"}), 422, "invalid-parameters")


@SHARED
def test_the_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>vmem" in page.text
    assert client.get("/static/app.js").status_code == 200
    # It keeps the API key in the tab: only its own script runs there, and no other site may frame it.
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers scripts
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert (page.headers["x-frame-options"], page.headers["x-content-type-options"]) == ("DENY", "nosniff")


def test_hard_pruned_points_do_not_set_the_novelty_threshold(client):
    from retrieval.store import EXCLUDED_KEY

    service = client.app.state.service
    before = service.ood_threshold(3)
    # Three images unlike anything else, then hard-pruned (as `vmem prune --mode hard` flags points): out of
    # every search, they must not raise the bar that typical queries are measured against either.
    odd = [("images", (f"o{i}.png", data, "image/png"))
           for i, data in enumerate([checkerboard(32, 4), checkerboard(32, 8), texture((250, 250, 250), 5)])]
    added = client.post("/v1/memory", headers=AUTH, files=odd, data={"label": "odd"})
    assert added.status_code == 201
    service.memory.store.set_payload([p["id"] for p in added.json()["added"]], {EXCLUDED_KEY: "pruned"})
    assert service.ood_threshold(3, fresh=True) == pytest.approx(before)


@SHARED
def test_a_template_without_rerank_is_refused_as_an_option_nothing_reads(client):
    resp = client.post("/v1/classify?template=labels-only", files=upload(texture(COLORS["red"], 1)))
    assert_problem(resp, 422, "unused-vote-option", "send rerank=true too")


def test_exact_search_is_asked_for_and_answered_apart_from_the_indexed_one(client, monkeypatch):
    from retrieval.store import EdgeMemoryStore

    asked = []
    query_batch = EdgeMemoryStore.query_batch

    def recording(self, vectors, k, labels=None, exact=False):
        asked.append(exact)
        return query_batch(self, vectors, k, labels, exact)

    monkeypatch.setattr(EdgeMemoryStore, "query_batch", recording)
    image = upload(texture(COLORS["red"], 1))
    indexed = client.post("/v1/classify?k=3", files=image).json()
    assert True not in asked
    exact = client.post("/v1/classify?k=3&exact=true", files=image).json()
    assert asked[-1] is True  # searched, not the indexed answer from the cache
    assert exact["label"] == indexed["label"] == "red"


def test_gemini_requests_count_every_attempt_failed_ones_too(tmp_path, lite0, memory_images):
    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=None, backoff_initial_s=0.01,
                            backoff_max_s=0.02, max_attempts=3)
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
        try:
            with TestClient(create_app(settings(tmp_path), memory=mem), headers=AUTH) as client:
                fake.enqueue(fake.status(503), fake.status(503), fake.answer("red"))
                body = client.post("/v1/classify?k=12&rerank=true", files=upload(texture(COLORS["red"], 62))).json()
                assert body["reranked"] and fake.count == 3
                assert "vmem_gemini_requests_total 3.0" in client.get("/metrics").text
        finally:
            mem.close()


@SHARED
@pytest.mark.parametrize("prefix", ["u", "data/cats", "cam1:"])
def test_a_relative_source_prefix_is_refused_over_http(client, prefix):
    # The server's working folder means nothing to a client, and "u" chose every upload:... point
    resp = client.delete("/v1/memory", params={"source_prefix": prefix}, headers=AUTH)
    assert_problem(resp, 422, "invalid-parameters", "is relative: give an absolute path on the server")
    assert client.get("/v1/memory/points", params={"source_prefix": prefix}).status_code == 422


def test_classifying_with_a_memory_that_has_nothing_to_search_is_a_409_saying_what_to_do(client):
    from retrieval.store import EXCLUDED_KEY

    store = client.app.state.service.memory.store
    query = upload(texture(COLORS["red"], 2))
    # Every point hard-pruned: no search can return one (it had answered 200, a null label and no neighbours).
    store.set_payload(store.ids_where(), {EXCLUDED_KEY: "pruned"})
    assert_problem(client.post("/v1/classify", files=query), 409, "nothing-to-search", "vmem prune --undo")
    for label in COLORS:
        assert client.delete(f"/v1/memory?label={label}", headers=AUTH).status_code == 200
    assert_problem(client.post("/v1/classify", files=query), 409, "nothing-to-search",
                   "holds no points: add labelled images first (POST /v1/memory")
    batch = client.post("/v1/classify/batch", files=[("images", ("a.png", texture(COLORS["red"], 3)))])
    assert_problem(batch, 409, "nothing-to-search", "holds no points")
    reranked = client.post("/v1/classify?rerank=true", files=query, headers=AUTH)
    assert_problem(reranked, 409, "nothing-to-search", "holds no points")
    # No answer went out: none is counted as an image classified, nor as a re-rank that fell back.
    counted = client.get("/metrics").text
    fallbacks = [line for line in counted.splitlines() if line.startswith("vmem_rerank_fallbacks_total{")]
    assert "vmem_images_classified_total 0.0" in counted and all(line.endswith(" 0.0") for line in fallbacks)
    # Points again: answered as before.
    added = client.post("/v1/memory", headers=AUTH, data={"label": "red"},
                        files=[("images", ("r.png", texture(COLORS["red"], 4), "image/png"))])
    assert added.status_code == 201
    assert client.post("/v1/classify?k=1", files=query).json()["label"] == "red"
