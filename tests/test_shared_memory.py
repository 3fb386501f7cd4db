"""Several processes sharing one memory on a Qdrant server: each sees the others' edits.

Searches always read the server, but a process keeps things of its own: the service's cached answers and
novelty thresholds, and the label names and tuned settings read at opening. Here two views of one collection
stand for two processes (two `vmem serve` replicas, or a service and the CLI): they share a qdrant-client
local-mode client, as two processes share a server, and nothing else.
"""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from retrieval import open_store
from retrieval.store import QdrantServerStore
from server import Settings, create_app
from tests._server_fixtures import API_KEY, COLORS, fill_memory, make_memory_images, texture
from tests.conftest import random_unit_vectors
from vmem import VisualMemory

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def images(tmp_path, lite0):
    return make_memory_images(tmp_path / "images", lite0)


def two_views(images, lite0) -> tuple[VisualMemory, VisualMemory]:
    """The memory as a first process built it, and a second process's view of it."""
    client = QdrantClient(":memory:")
    first = fill_memory(":memory:", lite0, images)  # a store of its own: closed, then its collection re-made
    first.close()
    store_a = QdrantServerStore(":memory:", first.store.meta, client=client)
    store_a.add(images.vectors, images.labels, [str(p) for p in images.paths])
    store_a.meta.settings["source_roots"] = first.store.meta.settings["source_roots"]
    store_a.save_meta()
    store_b = QdrantServerStore(":memory:", client=client)
    return VisualMemory(store_a, lite0, reranker=None), VisualMemory(store_b, lite0, reranker=None)


def test_a_store_sees_what_another_process_changed_and_not_its_own_edits(lite0):
    client = QdrantClient(":memory:")
    a = QdrantServerStore(":memory:", open_store(":memory:", lite0.spec).meta, client=client)
    b = QdrantServerStore(":memory:", client=client)
    vectors = random_unit_vectors(3, lite0.spec.dim)
    assert a.edits_elsewhere() == b.edits_elsewhere() == frozenset()

    ids = a.add(vectors, ["x", "x", "y"], ["/d/1.jpg", "/d/2.jpg", "/d/3.jpg"])
    assert (a.edits_elsewhere(), b.edits_elsewhere(), b.edits_elsewhere()) == (frozenset(), {"points"}, frozenset())
    for edit in (lambda: a.delete_ids(ids[:1]), lambda: a.relabel(ids[1:2], "z"),
                 lambda: a.set_payload(ids[2:], {"reliability": 0.5}), lambda: a.delete_where(label="z")):
        edit()
        assert b.edits_elsewhere() == {"points"}
    assert a.delete_ids(ids[:1]) == 0 and b.edits_elsewhere() == frozenset()  # nothing deleted: nothing to see

    a.meta.label_names = {"y": "yak"}
    a.save_meta()
    assert b.meta.label_names == {}
    assert b.edits_elsewhere() == {"meta"} and b.meta.label_names == {"y": "yak"}
    assert a.edits_elsewhere() == frozenset()


def test_a_long_job_saving_its_settings_keeps_the_names_set_meanwhile(lite0):
    client = QdrantClient(":memory:")
    service = QdrantServerStore(":memory:", open_store(":memory:", lite0.spec).meta, client=client)
    service.meta.label_names = {"x": "ex", "y": "why"}
    service.meta.settings["vote"] = {"rule": "rank", "k": 30}
    service.save_meta()
    prune = QdrantServerStore(":memory:", client=client)  # e.g. `vmem prune`, minutes of work from here

    service.meta.label_names = {"x": "ex", "z": "zed"}  # renamed meanwhile: y's name gone, z's added
    service.save_meta()
    prune.meta.settings["pruning"] = {"mode": "soft"}
    prune.meta.settings.pop("vote")  # and a setting it removes
    prune.save_meta()

    assert prune.meta.label_names == {"x": "ex", "z": "zed"}
    assert prune.meta.settings == {"pruning": {"mode": "soft"}}
    assert service.edits_elsewhere() == {"meta"}
    assert (service.meta.label_names, service.meta.settings) == (prune.meta.label_names, prune.meta.settings)
    assert prune.edits_elsewhere() == {"meta"}  # the names it took in while saving are news to its user too


def test_settings_not_saved_yet_survive_taking_in_another_process_edit(lite0):
    client = QdrantClient(":memory:")
    a = QdrantServerStore(":memory:", open_store(":memory:", lite0.spec).meta, client=client)
    b = QdrantServerStore(":memory:", client=client)
    b.meta.settings["vote"] = {"rule": "plurality", "k": 5}  # about to be saved
    a.meta.label_names = {"x": "ex"}
    a.save_meta()
    assert b.edits_elsewhere() == {"meta"}
    assert (b.meta.label_names, b.meta.settings["vote"]) == ({"x": "ex"}, {"rule": "plurality", "k": 5})
    b.save_meta()
    assert a.edits_elsewhere() == {"meta"} and a.meta.settings["vote"] == {"rule": "plurality", "k": 5}


def test_an_embedded_memory_is_edited_by_one_process_only(tmp_path, lite0):
    from retrieval import MemoryError

    store = open_store(tmp_path / "memory", lite0.spec)
    store.add(random_unit_vectors(2, lite0.spec.dim), ["x", "y"], ["/d/1.jpg", "/d/2.jpg"])
    # So there are no edits elsewhere to look for: a second opening of it is refused while this one holds it.
    with pytest.raises(MemoryError, match="already open in this process"):
        open_store(tmp_path / "memory")
    assert store.edits_elsewhere() == frozenset()
    store.close()


def test_a_refused_second_opening_leaves_the_holder_able_to_write_and_close(tmp_path, lite0):
    # A `vmem info` beside a Python session that holds the memory: refused, and the session goes on as before
    # (an opening that reached the engine's segments left the holder failing at every flush and close).
    from retrieval import MemoryError

    holder = open_store(tmp_path / "memory", lite0.spec)
    holder.add(random_unit_vectors(3, lite0.spec.dim, seed=1), ["x"] * 3, [f"/d/{i}.jpg" for i in range(3)])
    holder.flush()
    for _ in range(2):
        with pytest.raises(MemoryError, match=r"already open in this process: close the object that opened it"):
            open_store(tmp_path / "memory")
    holder.add(random_unit_vectors(3, lite0.spec.dim, seed=2), ["y"] * 3, [f"/d/{i}.jpg" for i in range(3, 6)])
    holder.flush()
    holder.close()
    with open_store(tmp_path / "memory") as again:
        assert again.count() == 6


def test_names_and_tuned_settings_set_elsewhere_are_used_and_kept(images, lite0):
    a, b = two_views(images, lite0)
    query = texture(COLORS["green"], seed=7)
    assert b.classify([query])[0].label_name is None and b.vote_settings().k == 50

    a.set_label_names({"green": "emerald"})
    a.store.meta.settings["vote"] = {"rule": "plurality", "k": 3}  # as `vmem tune` stores them
    a.store.save_meta()
    [res] = b.classify([query])
    assert (res.label_name, res.vote.rule, res.vote.k) == ("emerald", "plurality", 3)

    a.set_label_names({"blue": "navy"})
    b.set_label_names({"red": "crimson"})  # merged with the names stored now, not those b read before
    assert a.refresh() == {"meta"}
    assert a.label_names == b.label_names == {"green": "emerald", "blue": "navy", "red": "crimson"}
    assert a.stats()["settings"]["vote"] == {"rule": "plurality", "k": 3}


def test_a_replica_serves_no_cached_answer_another_replicas_edit_outdated(images, lite0, tmp_path, caplog):
    a, b = two_views(images, lite0)
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    query = {"image": ("q.png", texture(COLORS["green"], seed=7))}
    with (caplog.at_level(logging.INFO, logger="server.service"),
          TestClient(create_app(settings, memory=a)) as replica_a,
          TestClient(create_app(settings.model_copy(update={"thumbnail_dir": tmp_path / "thumbs-b"}), memory=b))
          as replica_b):
        first = replica_b.post("/v1/classify?k=3", files=query).json()
        assert replica_b.post("/v1/classify?k=3", files=query).json()["cached"]
        calibrated = sum("novelty threshold at k=" in r.getMessage() for r in caplog.records)

        # Forgotten through replica A: replica B's next answer no longer cites the point.
        nearest = first["neighbors"][0]["id"]
        assert replica_a.delete(f"/v1/memory/points/{nearest}", headers=KEY).status_code == 200
        after_forget = replica_b.post("/v1/classify?k=3", files=query).json()
        assert not after_forget["cached"]
        assert nearest not in {n["id"] for n in after_forget["neighbors"]}
        deadline = time.monotonic() + 30  # new points: recalibrated in the background
        while sum("novelty threshold at k=" in r.getMessage() for r in caplog.records) == calibrated:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        # A class added through replica A is found through replica B.
        added = replica_a.post("/v1/memory", headers=KEY, data={"label": "lime"}, files=[
            ("images", (f"lime{i}.png", texture((120, 230, 60), seed=900 + i), "image/png")) for i in range(3)])
        assert added.status_code == 201, added.text
        lime = replica_b.post("/v1/classify?k=3", files={"image": ("l.png", texture((120, 230, 60), seed=950))})
        assert lime.json()["label"] == "lime"

        # Relabelled and named through replica A: replica B answers with the new label and name at once.
        replica_b.post("/v1/classify?k=3", files=query)  # cached again
        assert replica_a.post("/v1/memory/relabel", json={"label": "green", "to": "verde"},
                              headers=KEY).status_code == 200
        assert replica_a.put("/v1/memory/label-names", json={"names": {"verde": "leaf green"}},
                             headers=KEY).status_code == 200
        renamed = replica_b.post("/v1/classify?k=3", files=query).json()
        assert (renamed["label"], renamed["label_name"], renamed["cached"]) == ("verde", "leaf green", False)
        assert replica_b.get("/v1/memory/stats").json()["label_names"]["verde"] == "leaf green"
    a.close()
    b.close()


def test_a_thumbnail_kept_for_a_point_forgotten_elsewhere_is_deleted_when_asked_for(images, lite0, tmp_path):
    a, b = two_views(images, lite0)
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs-b")
    with TestClient(create_app(settings, memory=b)) as replica_b:
        added = replica_b.post("/v1/memory", headers=KEY, data={"label": "lime"},
                               files=[("images", ("lime.png", texture((120, 230, 60), seed=900), "image/png"))])
        point = added.json()["added"][0]["id"]
        assert replica_b.get(f"/v1/memory/points/{point}/thumbnail").status_code == 200
        assert list((tmp_path / "thumbs-b").rglob("*.jpg"))

        a.forget(ids=[point])
        assert replica_b.get(f"/v1/memory/points/{point}/thumbnail").status_code == 404
        assert not list((tmp_path / "thumbs-b").rglob("*.jpg"))
    a.close()
    b.close()


def test_a_classify_request_reads_the_edit_marks_once(images, lite0, monkeypatch):
    """On a server every read of the marks is a request: one per classify, however many steps it takes."""
    replica_a, replica_b = two_views(images, lite0)
    reads = []
    edits_elsewhere = replica_b.store.edits_elsewhere
    monkeypatch.setattr(replica_b.store, "edits_elsewhere", lambda: reads.append(1) or edits_elsewhere())
    query = {"image": ("q.png", texture(COLORS["green"], seed=7))}
    settings = Settings(memory=":memory:", api_key=API_KEY, result_cache_size=0)
    with TestClient(create_app(settings, memory=replica_b)) as client:
        client.post("/v1/classify?k=3", files=query)  # novelty calibrated on the first one
        reads.clear()
        assert client.post("/v1/classify?k=3", files=query).json()["label"] == "green" and len(reads) == 1
        reads.clear()
        assert replica_b.classify([images.paths[0]], k=3)[0].label == "red" and len(reads) == 1

        replica_a.forget(label="green")  # and an edit elsewhere is still seen by the next request
        assert client.post("/v1/classify?k=3", files=query).json()["label"] != "green"
    replica_a.close()
    replica_b.close()
