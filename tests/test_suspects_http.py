"""Probable mislabels over HTTP: the label audit runs beside the service, once per version of the memory.

The memory holds 4 red, 4 green and 4 blue textures (real EfficientNet-Lite0 features); one red image is
labelled blue by mistake, and the audit should point at it, suggesting red.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from eval.label_audit import audit_labels
from server import Settings, create_app
from tests._server_fixtures import API_KEY, fill_memory, make_memory_images

KEY = {"X-API-Key": API_KEY}


def auditor(store, progress):
    # k = 3: each colour's 3 other images (with k = 50 every point votes, and the mislabelled red point's own
    # vote tips its red neighbours' shares near the 0.5 bar).
    return audit_labels(store, k=3, progress=progress)


def finished(client: TestClient, **params) -> dict:
    """Ask until the audit is done (it runs in a thread of the service's own)."""
    deadline = time.monotonic() + 60
    while True:
        resp = client.get("/v1/memory/suspects", params=params)
        if resp.status_code == 200:
            return resp.json()
        assert resp.status_code == 202 and resp.headers["retry-after"] == "2", resp.text
        assert resp.json()["status"] == "running" and time.monotonic() < deadline
        time.sleep(0.1)


def test_the_audit_points_at_the_mislabelled_image_and_runs_again_after_an_edit(tmp_path, lite0):
    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    wrong = mem.store.ids_where(label="red")[0]
    mem.relabel("blue", ids=[wrong])  # the mistake
    mem.set_label_names({"red": "crimson"})
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(create_app(settings, memory=mem, auditor=auditor)) as client:
        audit = finished(client)
        assert (audit["status"], audit["points"], audit["current"]) == ("done", 12, True)
        [suspect] = audit["suspects"]
        assert (suspect["id"], suspect["label"], suspect["suggested"], suspect["suggested_name"]) == (
            wrong, "blue", "red", "crimson")
        assert suspect["share"] == 1.0 and suspect["own_share"] == 0.0
        assert client.get(suspect["thumbnail_url"]).status_code == 200
        seconds = audit["seconds"]
        again = client.get("/v1/memory/suspects", params={"label": "red"})  # kept: no new audit
        assert again.status_code == 200 and again.json()["seconds"] == seconds
        assert [s["id"] for s in again.json()["suspects"]] == [wrong]
        assert client.get("/v1/memory/suspects", params={"label": "green"}).json()["suspects"] == []
        assert client.get("/v1/memory/suspects", params={"min_share": 1.0}).json()["total_suspects"] == 1

        # Corrected: the memory changed, so the next request audits it again, and finds nothing.
        assert client.patch(f"/v1/memory/points/{wrong}", json={"label": "red"}, headers=KEY).status_code == 200
        assert finished(client)["suspects"] == []

        unknown = client.get("/v1/memory/suspects", params={"label": "mauve"})
        assert unknown.status_code == 422  # said as classify and the CLI say it
        assert unknown.json()["detail"] == ("the memory has no label 'mauve': it has 3 labels (blue, green, red; "
                                            "GET /v1/memory/stats lists them)")
        assert client.get("/v1/memory/suspects", params={"min_share": 2}).status_code == 422
    mem.close()


def test_suspects_of_a_memory_whose_points_are_all_hard_pruned_say_so(tmp_path, lite0):
    # The audit counts the points a search can return: it failed on such a memory, and the service answered
    # 500 "ask again to retry", forever.
    from retrieval.store import EXCLUDED_KEY

    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    mem.store.set_payload(mem.store.ids_where(), {EXCLUDED_KEY: "pruned"})
    with TestClient(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem, auditor=auditor)) as client:
        resp = client.get("/v1/memory/suspects")
        assert resp.status_code == 422, resp.text
        assert "12 of its 12 are hard-pruned" in resp.json()["detail"] and "vmem prune --undo" in resp.json()["detail"]
    mem.close()


def test_a_service_built_without_an_auditor_says_so(tmp_path, lite0):
    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    with TestClient(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem)) as client:
        resp = client.get("/v1/memory/suspects")
        assert resp.status_code == 404 and "without a label auditor" in resp.json()["detail"]
    mem.close()


def test_the_app_for_another_asgi_server_is_vmem_serves_with_its_checks_and_audit(tmp_path, lite0, monkeypatch):
    # `uvicorn --factory server:create_app` had been called "the same app" in the docs: it had no label audit
    # (404 behind the page's "Probable mislabels") and none of vmem serve's start-up checks.
    from vmem.cli.serve import create_service_app

    location = tmp_path / "memory"
    fill_memory(str(location), lite0, make_memory_images(tmp_path / "images", lite0)).close()
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("VMEM_MEMORY", str(location))
    monkeypatch.setenv("VMEM_API_KEY", API_KEY)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("VMEM_THUMBNAIL_DIR", str(tmp_path / "a-file" / "thumbs"))
    with pytest.raises(SystemExit, match=r"VMEM_THUMBNAIL_DIR: .* cannot be made"):
        create_service_app()
    monkeypatch.delenv("VMEM_THUMBNAIL_DIR")
    with TestClient(create_service_app()) as client:
        assert client.get("/v1/memory/suspects").status_code in (200, 202)


def test_while_the_audit_runs_the_service_answers_202_and_keeps_classifying(tmp_path, lite0):
    import threading

    from tests._server_fixtures import COLORS, texture

    release = threading.Event()

    def slow_auditor(store, progress):
        progress(5)
        assert release.wait(30)
        return audit_labels(store, progress=progress)

    mem = fill_memory(":memory:", lite0, make_memory_images(tmp_path / "images", lite0))
    with TestClient(create_app(Settings(memory=":memory:", api_key=API_KEY), memory=mem,
                               auditor=slow_auditor)) as client:
        running = client.get("/v1/memory/suspects")
        assert running.status_code == 202 and running.headers["retry-after"] == "2"
        assert running.json() == {"status": "running", "points": 12, "searched": 5, "current": True, "seconds": None,
                                  "suspects": [], "total_suspects": 0}
        classified = client.post("/v1/classify?k=3", files={"image": ("q.png", texture(COLORS["red"], seed=7))})
        assert classified.json()["label"] == "red"  # not queued behind the audit
        assert client.get("/v1/memory/suspects").status_code == 202  # the same audit, not a second one
        release.set()
        assert finished(client)["suspects"] == []
    mem.close()
