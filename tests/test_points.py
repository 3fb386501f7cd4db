"""Inspecting the memory: its points a page at a time (Python, CLI, HTTP), and one point by id.

Pages are in id order and the cursor is a point id, so forgetting or adding points between pages neither
repeats nor skips the points after the cursor.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, Preprocessing, open_store
from retrieval.store import EXCLUDED_KEY, PRUNE_COUNT_KEY
from server import Settings, create_app
from tests.conftest import random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app
from vmem.visual_memory import linked_sources

SPEC = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))


@pytest.fixture(params=["edge", "qdrant-client"])
def memory(request, tmp_path):
    """25 points: 10 labelled cat under /data/cats/, 15 dog under /data/dogs/; cats named and tagged."""
    location = str(tmp_path / "memory") if request.param == "edge" else ":memory:"
    store = open_store(location, SPEC)
    store.add(random_unit_vectors(10, 8, seed=1), ["cat"] * 10, [f"/data/cats/{i}.jpg" for i in range(10)],
              tags={"batch": "first"})
    store.add(random_unit_vectors(15, 8, seed=2), ["dog"] * 15, [f"/data/dogs/{i}.jpg" for i in range(15)])
    mem = VisualMemory(store, reranker=None)
    mem.set_label_names({"cat": "house cat"})
    yield mem
    mem.close()


def every_page(mem: VisualMemory, **filters) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = mem.points(cursor=cursor, limit=4, **filters)
        pages.append([p.id for p in page.points])
        cursor = page.next_cursor
        if cursor is None:
            return pages


def test_paging_lists_every_point_once_in_id_order(memory):
    pages = every_page(memory)
    ids = [i for page in pages for i in page]
    assert len(ids) == 25 and ids == sorted(set(ids), key=uuid.UUID)
    assert [len(p) for p in pages[:-1]] == [4] * 6 and len(pages[-1]) == 1
    assert len([i for p in every_page(memory, label="dog") for i in p]) == 15
    assert len([i for p in every_page(memory, source_prefix="/data/cats/") for i in p]) == 10


def test_a_point_says_what_it_is_and_where_it_came_from(memory):
    [first] = memory.points(label="cat", limit=1).points
    assert (first.label, first.label_name, first.tags) == ("cat", "house cat", {"batch": "first"})
    assert first.source.startswith("/data/cats/") and first.added_at and not first.excluded
    assert memory.point(first.id) == first
    assert memory.point(str(uuid.uuid4())) is None
    memory.store.set_payload([first.id], {EXCLUDED_KEY: "pruned", "reliability": 0.5, PRUNE_COUNT_KEY: 7})
    pruned = memory.point(first.id)
    assert (pruned.excluded, pruned.reliability, pruned.prune_count) == (True, 0.5, 7)


def test_the_points_pruning_excluded_can_be_listed_apart(memory):
    [a, b] = memory.points(label="dog", limit=2).points
    memory.store.set_payload([a.id, b.id], {EXCLUDED_KEY: "pruned"})
    assert [p.id for p in memory.points(excluded=True).points] == [a.id, b.id]
    assert [p.id for p in memory.points(label="cat", excluded=True).points] == []
    searchable = [i for page in every_page(memory, excluded=False) for i in page]
    assert len(searchable) == 23 and a.id not in searchable
    assert len([i for page in every_page(memory, label="dog", excluded=False) for i in page]) == 13


def test_forgetting_between_pages_shifts_nothing_after_the_cursor(memory):
    expected = every_page(memory)
    first = memory.points(limit=4)
    memory.forget(ids=[p.id for p in first.points])  # the page just read goes
    assert memory.points(cursor=first.next_cursor, limit=4).points[0].id == expected[1][0]


def test_a_bad_cursor_or_limit_is_refused(memory):
    with pytest.raises(ValueError, match="not a point id"):
        memory.points(cursor="page-2")
    with pytest.raises(ValueError, match="limit must be 1 to 1000"):
        memory.points(limit=0)
    with pytest.raises(ValueError, match="source_prefix is empty"):
        memory.points(source_prefix=" ")


def test_cli_lists_a_labels_points_and_says_where_the_next_page_starts(tmp_path):
    location = tmp_path / "memory"
    with VisualMemory(open_store(location, SPEC), reranker=None) as mem:
        mem.store.add(random_unit_vectors(3, 8), ["cat"] * 3, [f"/data/cats/{i}.jpg" for i in range(3)])
        mem.set_label_names({"cat": "house cat"})
    runner = CliRunner(env={"COLUMNS": "250"})  # no wrapped error boxes
    first = runner.invoke(app, ["points", "--memory", str(location), "--label", "cat", "--limit", "2"])
    assert first.exit_code == 0, first.output
    rows = [line.split("\t") for line in first.stdout.splitlines()]
    assert len(rows) == 2 and all(r[1] == "cat (house cat)" and r[2].startswith("/data/cats/") for r in rows)
    cursor = first.stderr.split("--cursor ")[1].strip()
    rest = runner.invoke(app, ["points", "--memory", str(location), "--label", "cat", "--cursor", cursor, "--json"])
    [last] = [json.loads(line) for line in rest.stdout.splitlines()]
    assert last["id"] not in {r[0] for r in rows} and "next page" not in rest.stderr
    assert runner.invoke(app, ["points", "--memory", str(location), "--excluded"]).stdout == ""
    named = runner.invoke(app, ["points", "--memory", str(location), "--label", "house cat"])
    assert named.exit_code == 2 and "'house cat' is the name of label cat" in named.output


def test_cli_exports_every_point_page_after_page(tmp_path):
    location = tmp_path / "memory"
    with VisualMemory(open_store(location, SPEC), reranker=None) as mem:
        mem.store.add(random_unit_vectors(2500, 8), ["cat", "dog"] * 1250, [f"/data/{i}.jpg" for i in range(2500)])
        ids = sorted(mem.store.ids_where())
    export = CliRunner().invoke(app, ["points", "--memory", str(location), "--all", "--json"])
    assert export.exit_code == 0 and "next page" not in export.stderr
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [r["id"] for r in rows] == ids and {r["label"] for r in rows} == {"cat", "dog"}  # 3 pages of 1,000
    dogs = CliRunner().invoke(app, ["points", "--memory", str(location), "--all", "--label", "dog"])
    assert len(dogs.stdout.splitlines()) == 1250


def test_http_pages_and_single_points(tmp_path, lite0):
    store = open_store(":memory:", lite0.spec)  # the service loads the memory's encoder: a real one
    store.add(random_unit_vectors(10, lite0.dim), ["cat"] * 10, [f"/data/cats/{i}.jpg" for i in range(10)])
    memory = VisualMemory(store, lite0, reranker=None)
    memory.set_label_names({"cat": "house cat"})
    app_ = create_app(Settings(memory=":memory:", auth_disabled=True, thumbnail_dir=tmp_path / "thumbs"),
                      memory=memory)
    with TestClient(app_) as client:
        page = client.get("/v1/memory/points", params={"label": "cat", "limit": 6}).json()
        assert len(page["points"]) == 6 and page["next_cursor"]
        rest = client.get("/v1/memory/points", params={"label": "cat", "cursor": page["next_cursor"]}).json()
        assert len(rest["points"]) == 4 and rest["next_cursor"] is None
        one = page["points"][0]
        assert one["label_name"] == "house cat" and one["thumbnail_url"].endswith(f"/points/{one['id']}/thumbnail")
        assert client.get(f"/v1/memory/points/{one['id']}").json() == one
        missing = client.get(f"/v1/memory/points/{uuid.uuid4()}")
        assert missing.status_code == 404 and missing.json()["type"].endswith("unknown-point")
        assert client.get("/v1/memory/points", params={"excluded": "true"}).json()["points"] == []
        assert client.get("/v1/memory/points", params={"cursor": "page-2"}).status_code == 422
        assert client.get("/v1/memory/points", params={"limit": 0}).status_code == 422
        # A label the memory lacks, or given by its name, is said so, as the CLI says it (an empty page had read
        # as an empty class)
        for label, says in (("dog", "the memory has no label 'dog'"), ("house cat", "is the name of label cat")):
            refused = client.get("/v1/memory/points", params={"label": label})
            assert refused.status_code == 422 and refused.json()["type"].endswith("unknown-label"), label
            assert says in refused.json()["detail"], refused.json()

        # A listing walks a folder prefix for links: that must not wait for, nor hold up, the embedding pool.
        release = threading.Event()
        service = client.app.state.service
        busy = [service.executor.submit(release.wait, 30) for _ in range(service.executor._max_workers)]
        try:
            assert client.get("/v1/memory/points", params={"source_prefix": "/data/cats"}).json()["points"]
        finally:
            release.set()
        assert all(f.result() for f in busy)


def test_the_kernels_folders_are_never_walked_for_links():
    # /proc is every process's open files and cwd as links, again under each task: 49 s to walk, no images.
    assert linked_sources("/proc") == linked_sources("/sys") == ([], [])


def test_cli_lists_every_label_with_its_points_name_and_pruning(tmp_path):
    location = tmp_path / "memory"
    with VisualMemory(open_store(location, SPEC), reranker=None) as mem:
        ids = mem.store.add(random_unit_vectors(5, 8), ["cat"] * 3 + ["dog"] * 2, [f"/d/{i}.jpg" for i in range(5)])
        mem.store.set_payload(ids[:1], {EXCLUDED_KEY: "pruned"})
        mem.set_label_names({"cat": "house cat"})
    out = CliRunner().invoke(app, ["labels", "--memory", str(location)])
    assert out.stdout.splitlines() == ["3\tcat\thouse cat\t(1 excluded by pruning)", "2\tdog\t"]
    rows = [json.loads(line) for line in CliRunner().invoke(app, ["labels", "--memory", str(location),
                                                                  "--json"]).stdout.splitlines()]
    assert rows[0] == {"label": "cat", "label_name": "house cat", "name": "house cat", "points": 3, "searchable": 2}
