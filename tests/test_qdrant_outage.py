"""A memory on a Qdrant server that stops answering: a 503 that says so, and service as soon as it is back.

The outage is real: the store's client is pointed at a loopback port where nothing listens, as happens
when the server is stopped or its host goes away.
"""

from __future__ import annotations

import socket

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from retrieval import MemoryError, MemoryUnavailableError, open_store, point_id_for
from retrieval.store import ServerClient
from server import Settings, create_app
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests._server_fixtures import API_KEY, COLORS, fill_memory, make_memory_images, texture

KEY = {"X-API-Key": API_KEY}


def dead_url() -> str:
    """A loopback address where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_the_service_answers_503_while_the_server_is_down_and_recovers_after(tmp_path, lite0):
    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    query = {"image": ("q.png", texture(COLORS["green"], seed=7))}
    with TestClient(create_app(settings, memory=mem)) as client:
        assert client.post("/v1/classify?k=3", files=query).json()["label"] == "green"
        working = mem.store.client
        url = dead_url()
        mem.store.client = ServerClient(QdrantClient(url=url, timeout=5, check_compatibility=False), url)

        down = client.post("/v1/classify?k=3", files={"image": ("other.png", texture(COLORS["red"], seed=8))})
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        problem = down.json()
        assert problem["type"] == "urn:vmem:problem:memory-unavailable"
        assert f"could not reach the Qdrant server at {url}" in problem["detail"]
        assert client.get("/v1/memory/stats").status_code == 503
        assert client.delete("/v1/memory", params={"label": "red"}, headers=KEY).status_code == 503
        assert client.get("/readyz").status_code == 503

        mem.store.client = working  # the server is back: no restart needed, and nothing was forgotten
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/classify?k=3", files=query).json()["label"] == "green"
        assert client.get("/v1/memory/stats").json()["per_label"]["red"] == 4
    mem.close()


def test_opening_a_memory_on_a_server_that_does_not_answer_says_where(lite0):
    url = dead_url()
    with pytest.raises(MemoryUnavailableError, match=f"could not reach the Qdrant server at {url}"):
        open_store(url, lite0.spec)


class FailingServerClient:
    """Stands in for a QdrantClient whose server answers with this HTTP status (a real one cannot be made to)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def count(self, *args, **kwargs):
        raise UnexpectedResponse(self.status, "Service Unavailable" if self.status == 503 else "Not Found",
                                 b"{}", httpx.Headers())


def test_a_failing_server_is_unavailable_and_a_refused_request_is_not():
    with pytest.raises(MemoryUnavailableError, match="answered 503 Service Unavailable: it is failing"):
        ServerClient(FailingServerClient(503), "http://qdrant:6333").count("vmem")
    with pytest.raises(UnexpectedResponse):  # a request the server refuses: the caller's mistake, raised as is
        ServerClient(FailingServerClient(404), "http://qdrant:6333").count("vmem")


class UnreadableServerClient:
    """Stands in for a QdrantClient that cannot read the server's 200: its own check fails, with these words."""

    def __init__(self, words: str) -> None:
        self.words = words

    def count(self, *args, **kwargs):
        raise AssertionError(self.words) if self.words else AssertionError


@pytest.mark.parametrize(("words", "said"), [
    ("Count returned None\x1b[2J\nsecond line", "(AssertionError: Count returned None\\x1b[2J)"),
    ("", "(AssertionError)"),  # a bare assert: the first line of nothing had been an IndexError
])
def test_a_server_the_client_cannot_read_is_said_so_in_one_line_escaped(words, said):
    with pytest.raises(MemoryError) as raised:
        ServerClient(UnreadableServerClient(words), "http://qdrant:6333").count("vmem")
    assert str(raised.value) == (f"http://qdrant:6333 does not answer as a Qdrant server does {said}: check the URL "
                                 "(Qdrant's REST port is 6333)")


def test_a_build_whose_server_stops_answering_midway_says_so_and_resumes_when_run_again(tmp_path, lite0, monkeypatch,
                                                                                         caplog):
    from typer.testing import CliRunner

    from retrieval.store import QdrantServerStore
    from vmem.cli import app

    images = make_memory_images(tmp_path / "images", lite0)
    build = ["build", str(tmp_path / "images"), "--qdrant-url", f"qdrant-local:{tmp_path / 'q'}",
             "--featurizer", "efficientnet-lite0", "--batch-size", "4"]
    upsert = QdrantServerStore._upsert
    batches, working = [], []

    def server_goes_away_after_the_first_batch(store, ids, vectors, payloads):
        if batches and not working:
            working.append(store.client)
            url = dead_url()
            store.client = ServerClient(QdrantClient(url=url, timeout=5, check_compatibility=False), url)
        batches.append(len(ids))
        return upsert(store, ids, vectors, payloads)

    monkeypatch.setattr(QdrantServerStore, "_upsert", server_goes_away_after_the_first_batch)
    stopped = CliRunner().invoke(app, build, env={"COLUMNS": "250"})
    assert stopped.exit_code == 75, stopped.output  # EX_TEMPFAIL: worth a retry
    assert "could not reach the Qdrant server" in stopped.output and "run the command again" in stopped.output
    assert "Traceback" not in stopped.output and not isinstance(stopped.exception, MemoryUnavailableError)
    # The add's note could not be settled either (the server gone): said in one line, as the build's own error is,
    # where the suite's order had its handler print the whole trace
    [unsettled] = [r for r in caplog.records if "could not be journaled now" in r.getMessage()]
    assert unsettled.exc_info is None and "Connection refused" in unsettled.getMessage()

    working[0].close()  # as the process that held the local-mode files would have on exit
    monkeypatch.setattr(QdrantServerStore, "_upsert", upsert)  # the server is back
    resumed = CliRunner().invoke(app, build, env={"COLUMNS": "250"})
    assert resumed.exit_code == 0 and "8 added, 4 already in memory, 0 failed of 12 images" in resumed.output
    store = open_store(f"qdrant-local:{tmp_path / 'q'}", lite0.spec)
    assert store.count() == len(images.paths)  # the first batch was kept, the rest added now
    store.close()


def test_a_server_url_with_credentials_is_named_without_them():
    url = dead_url()
    host = url.removeprefix("http://")
    with pytest.raises(MemoryUnavailableError) as unreachable:
        open_store(f"http://admin:hunter2@{host}/?api_key=s3cret", None)
    assert f"could not reach the Qdrant server at http://{host}/" in str(unreachable.value)
    assert "hunter2" not in str(unreachable.value) and "s3cret" not in str(unreachable.value)
    with pytest.raises(MemoryUnavailableError) as failing:
        ServerClient(FailingServerClient(503), "https://admin:hunter2@qdrant:6333").count("vmem")
    assert "the Qdrant server at https://qdrant:6333 answered 503" in str(failing.value)
    assert "hunter2" not in str(failing.value)


def test_a_memory_on_a_server_named_with_credentials_shows_its_url_without_them(lite0):
    # Two views of one collection, as two processes sharing a server have: the second named by a URL with secrets
    from retrieval.store import MemoryMeta, QdrantServerStore
    from vmem import VisualMemory

    client = QdrantClient(":memory:")
    made = QdrantServerStore(":memory:", MemoryMeta(featurizer=lite0.spec), client=client)
    url = "https://admin:hunter2@qdrant.example:6333/?api_key=s3cret"
    mem = VisualMemory(QdrantServerStore(url, client=client), lite0, reranker=None)
    assert mem.stats()["location"] == "https://qdrant.example:6333/"  # vmem info, GET /v1/memory/stats
    assert "hunter2" not in repr(mem) and "s3cret" not in repr(mem)
    from vmem.cli._common import require_points

    with pytest.raises(typer.BadParameter) as empty:  # a command refusing a memory with nothing to search
        require_points(mem)
    assert "the memory at https://qdrant.example:6333/ holds no points" in str(empty.value), str(empty.value)
    mem.close()
    made.close()


def test_a_copy_and_an_export_of_a_memory_named_with_credentials_keep_its_url_without_them(lite0, tmp_path):
    # The copy's journal entry (vmem history) and the export's header are files kept and passed on
    import numpy as np

    from retrieval.journal import JournalQuery
    from retrieval.store import MemoryMeta, QdrantServerStore
    from vmem import VisualMemory

    client = QdrantClient(":memory:")
    made = QdrantServerStore(":memory:", MemoryMeta(featurizer=lite0.spec), client=client)
    url = "https://admin:hunter2@qdrant.example:6333/?api_key=s3cret"
    mem = VisualMemory(QdrantServerStore(url, client=client), lite0, reranker=None)
    vector = np.ones(lite0.spec.dim, dtype=np.float32) / np.sqrt(lite0.spec.dim)
    mem.store.add(vector[None, :], ["cat"], ["cat.jpg"])
    mem.copy_to(tmp_path / "copy")
    with open_store(tmp_path / "copy") as copy:
        entries, _ = copy.journal.newest(JournalQuery(op="copy"))
    said = str([e.model_dump(mode="json") for e in entries])
    assert "https://qdrant.example:6333/" in said and "hunter2" not in said and "s3cret" not in said
    mem.export_points(tmp_path / "points.npz")
    with np.load(tmp_path / "points.npz") as points:
        header = str(points["meta"])
    assert "qdrant.example" in header and "hunter2" not in header and "s3cret" not in header
    mem.close()
    made.close()


def test_the_thumbnails_an_add_left_while_the_server_was_down_are_settled_at_the_next_add(tmp_path, lite0,
                                                                                          monkeypatch):
    # The server went away as an add wrote: the memory could not say whether it held the new points, so their
    # thumbnails were kept (a point's only copy of its image), and stayed, files of no point, until a restart
    from retrieval.store import QdrantServerStore
    from server.service import Upload

    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    working, upsert = mem.store.client, QdrantServerStore._upsert
    url = dead_url()
    dead = ServerClient(QdrantClient(url=url, timeout=5, check_compatibility=False), url)

    def gone_before_the_write(store, ids, vectors, payloads):
        store.client = dead
        return upsert(store, ids, vectors, payloads)

    def gone_once_written(store, ids, vectors, payloads):  # the write landed, its answer was lost
        upsert(store, ids, vectors, payloads)
        store.client = dead
        return upsert(store, ids, vectors, payloads)

    photos = {name: texture(COLORS["red"], seed=seed) for name, seed in (("lost", 21), ("landed", 22), ("next", 23))}
    with TestClient(create_app(settings, memory=mem)) as client:
        service = client.app.state.service
        thumbnail = {name: service.thumbnails.path(point_id_for(Upload(data, f"{name}.png").source))
                     for name, data in photos.items()}
        for name, outage in (("lost", gone_before_the_write), ("landed", gone_once_written)):
            monkeypatch.setattr(QdrantServerStore, "_upsert", outage)
            resp = client.post("/v1/memory", headers=KEY, data={"label": "red"},
                               files=[("images", (f"{name}.png", photos[name], "image/png"))])
            assert resp.status_code == 503, resp.text
            assert thumbnail[name].exists()  # the memory could not say: kept, for now
            mem.store.client = working  # back
        monkeypatch.setattr(QdrantServerStore, "_upsert", upsert)
        resp = client.post("/v1/memory", headers=KEY, data={"label": "red"},
                           files=[("images", ("next.png", photos["next"], "image/png"))])
        assert resp.status_code == 201, resp.text
        # Asked again now that it answers: the point that was never written leaves no file, the one written keeps its
        assert not thumbnail["lost"].exists()
        assert thumbnail["landed"].exists() and thumbnail["next"].exists()
        assert client.get("/v1/memory/stats").json()["per_label"]["red"] == 6
        resp = client.post("/v1/memory", headers=KEY, data={"label": "red"},  # the client's retry, all well
                           files=[("images", ("lost.png", photos["lost"], "image/png"))])
        assert resp.status_code == 201 and thumbnail["lost"].exists()
    mem.close()
