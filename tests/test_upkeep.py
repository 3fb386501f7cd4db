"""How far an embedded memory's index has drifted from its points, as `vmem info`, `GET /v1/memory/stats` and
/metrics say it, and the advice to erase past the measured threshold (README, "Upkeep").

The engine indexes a segment from 10 MB of vectors up: 5,000 points of 1,280 dimensions (float16) are indexed.
"""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from retrieval import open_store
from tests.conftest import random_unit_vectors
from vmem.cli import app

DIM, N = 1280, 5000


def edited_memory(location, spec):
    """A memory built (indexed), then 2,000 points forgotten, 1,000 relabelled and 100 added a few at a time."""
    store = open_store(location, spec)
    ids = store.add(random_unit_vectors(N, DIM, seed=1), [f"c{i % 20}" for i in range(N)],
                    [f"/v/{i}" for i in range(N)])
    store.optimize()
    store.delete_ids(ids[:2000])
    store.relabel(ids[2000:3000], "corrected")
    for start in range(0, 100, 10):
        store.add(random_unit_vectors(10, DIM, seed=100 + start), ["new"] * 10,
                  [f"/new/{start + i}" for i in range(10)])
    return store


def upkeep(memory) -> dict:
    out = CliRunner().invoke(app, ["info", "--memory", str(memory), "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)["index_upkeep"]


def test_vmem_info_says_how_far_the_index_has_drifted_and_vmem_erase_gives_it_back(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing

    spec = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
    memory = tmp_path / "memory"
    edited_memory(memory, spec).close()

    # The index keeps the 5,000 it was built with: 2,000 of them still the memory's, 3,000 marked deleted (the
    # forgotten, and the old copies of the relabelled, now searched in full with the added ones)
    assert upkeep(memory) == {
        "points": 3100, "indexed": 2000, "unindexed": 1100, "deleted_in_index": 3000, "deleted_share": 0.6,
        "advice": "60% of the index is points forgotten or edited since it was built (3,000 of 5,000): searches "
                  "drift from exact ones; run vmem erase (POST /v1/memory/erase to a service)"}
    out = CliRunner().invoke(app, ["info", "--memory", str(memory)])
    assert ("upkeep     2,000 points indexed, 1,100 searched in full; the index holds 3,000 forgotten or edited "
            "(60% of it)\n           60% of the index is points forgotten") in out.output

    # Read from the engine's files: a backup (a copy of them) says the same
    out = CliRunner().invoke(app, ["backup", "--memory", str(memory), "--to", str(tmp_path / "backup")])
    assert out.exit_code == 0, out.output
    assert upkeep(tmp_path / "backup")["deleted_in_index"] == 3000

    out = CliRunner().invoke(app, ["erase", "--memory", str(memory)])
    assert out.exit_code == 0, out.output
    after = upkeep(memory)
    assert after["deleted_in_index"] == 0 and after["advice"] is None
    # The index rewritten without them; the 1,100 added or relabelled since are too few to index on their own
    # (under 10 MB of vectors): searched in full, exactly
    assert (after["indexed"], after["unindexed"]) == (2000, 1100)


def test_a_memory_freshly_built_and_indexed_holds_nothing_forgotten_or_edited(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing

    spec = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(N, DIM, seed=1), [f"c{i % 20}" for i in range(N)],
                  [f"/v/{i}" for i in range(N)])
        store.optimize()  # as a build ends
    # Closing wrote nothing to any point (it had rewritten the last point's label, leaving its indexed copy deleted)
    assert upkeep(tmp_path / "memory") == {"points": N, "indexed": N, "unindexed": 0, "deleted_in_index": 0,
                                           "deleted_share": 0.0, "advice": None}


def test_a_memory_too_small_to_index_says_it_is_searched_in_full(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing

    spec = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
    with open_store(tmp_path / "memory", spec) as store:
        ids = store.add(random_unit_vectors(300, DIM, seed=1), ["a"] * 300, [f"/v/{i}" for i in range(300)])
        store.optimize()
        store.delete_ids(ids[:100])
    out = CliRunner().invoke(app, ["info", "--memory", str(tmp_path / "memory")])
    assert ("upkeep     no index: all 200 points searched in full, exactly (too few to index, or added since the "
            "last build, import, copy or erase)\n") in out.output


def test_a_memory_on_a_qdrant_server_says_its_index_is_the_servers_own(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing

    spec = FeaturizerSpec(name="test-encoder", dim=8, preprocessing=Preprocessing(resize=256, crop=224))
    location = f"qdrant-local:{tmp_path / 'server'}"
    with open_store(location, spec) as store:
        store.add(np.eye(8, dtype=np.float32), ["a"] * 8, [f"/v/{i}" for i in range(8)])
    assert upkeep(location) is None  # not a number the server's own optimiser would make wrong
    out = CliRunner().invoke(app, ["info", "--memory", location])
    assert "upkeep     not tracked: a Qdrant server indexes and vacuums its collection itself" in out.output


def test_the_service_shows_the_drift_in_stats_and_metrics_and_an_erase_resets_it(tmp_path, lite0):
    from fastapi.testclient import TestClient

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY
    from vmem import VisualMemory

    location = tmp_path / "memory"
    mem = VisualMemory(edited_memory(location, lite0.spec), lite0)
    key = {"X-API-Key": API_KEY}
    with TestClient(create_app(Settings(memory=str(location), api_key=API_KEY), memory=mem)) as client:
        stats = client.get("/v1/memory/stats").json()["index_upkeep"]
        assert (stats["deleted_in_index"], stats["deleted_share"]) == (3000, 0.6)
        assert stats["advice"].endswith("run vmem erase (POST /v1/memory/erase to a service)")
        metrics = client.get("/metrics").text
        assert "vmem_memory_index_deleted_points 3000.0" in metrics
        assert "vmem_memory_index_deleted_ratio 0.6" in metrics and "vmem_memory_erase_advised 1.0" in metrics

        # A relabel through the service moves one more point out of the index: the next scrape counts it
        point = client.get("/v1/memory/points", params={"label": "c7", "limit": 1}).json()["points"][0]
        assert client.patch(f"/v1/memory/points/{point['id']}", json={"label": "c8"}, headers=key).status_code == 200
        assert "vmem_memory_index_deleted_points 3001.0" in client.get("/metrics").text

        assert client.post("/v1/memory/erase", headers=key).status_code == 200
        assert client.get("/v1/memory/stats").json()["index_upkeep"]["deleted_in_index"] == 0
        metrics = client.get("/metrics").text
        assert "vmem_memory_index_deleted_points 0.0" in metrics and "vmem_memory_erase_advised 0.0" in metrics
