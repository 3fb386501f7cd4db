"""What a new user reads: messages that count say '1 image', not '1 images' (a walkthrough's leftovers)."""

from __future__ import annotations

import pytest
from fake_gemini import FakeGemini
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from reranker import GeminiReranker
from retrieval import open_store
from retrieval.text import counted
from server.app import create_app, open_memory
from server.settings import Settings
from tests._server_fixtures import API_KEY, COLORS, fill_memory, texture
from tests.conftest import random_unit_vectors
from tests.test_copy import SPEC, make_memory
from vmem import NoMemoryError, VisualMemory
from vmem.cli import app

AUTH = {"X-API-Key": API_KEY}


def service(tmp_path, mem) -> TestClient:
    return TestClient(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY,
                                          thumbnail_dir=tmp_path / "thumbs"), memory=mem), headers=AUTH)


def test_counted_says_one_of_a_thing_in_the_singular():
    assert [counted(n, "image") for n in (0, 1, 2, 1200)] == ["0 images", "1 image", "2 images", "1,200 images"]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"


def test_one_image_added_over_http_without_a_label_is_refused_as_one_image(tmp_path, lite0, memory_images):
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    try:
        with service(tmp_path, mem) as client:
            resp = client.post("/v1/memory", files=[("images", ("red.png", texture(COLORS["red"], 90), "image/png"))])
            assert resp.status_code == 422
            assert resp.json()["detail"].endswith("or one for all: got 0 labels for 1 image"), resp.json()["detail"]
    finally:
        mem.close()


def test_python_add_counts_one_image_in_the_singular(tmp_path, lite0, memory_images):
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    try:
        with pytest.raises(ValueError, match=r"^got 2 labels for 1 image: give one label, or one per image$"):
            mem.add([texture(COLORS["red"], 91)], ["red", "crimson"])
    finally:
        mem.close()


def test_a_gemini_not_reached_on_its_one_attempt_is_said_so_in_the_fallback_reason(tmp_path, lite0, memory_images):
    closed = FakeGemini()  # bound, never started, then closed: the port refuses connections
    url = closed.url
    closed._server.server_close()
    rr = GeminiReranker(api_key="test-key", base_url=url, cache_path=None, max_attempts=1, deadline_s=10,
                        attempt_timeout_s=5)
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images, reranker=rr)
    try:
        with service(tmp_path, mem) as client:
            body = client.post("/v1/classify?k=12&rerank=true",
                               files={"image": ("q.png", texture(COLORS["red"], 92), "image/png")}).json()
        assert body["reranked"] is False and body["label"] == "red"
        assert body["fallback_reason"].startswith(f"could not reach Gemini at {url} after 1 attempt ("), body
    finally:
        mem.close()  # closes its re-ranker too


def test_a_memory_of_thousands_of_labels_counts_them_as_every_count_is_written(tmp_path):
    labels = [f"class{i:04d}" for i in range(1200)]
    store = open_store(tmp_path / "memory", SPEC)
    store.add(random_unit_vectors(1200, 16, seed=1), labels, [f"/data/{label}.jpg" for label in labels])
    with VisualMemory(store, reranker=None) as mem:
        said = mem.unknown_labels_message(["okapi"], "vmem labels")
    assert said.startswith("the memory has no label 'okapi': it has 1,200 labels (class0000, class0001,"), said


def test_vmem_backup_makes_the_folders_above_its_backup_as_the_service_makes_its_backup_dir(tmp_path):
    make_memory(tmp_path / "memory").close()
    to = tmp_path / "backups" / "daily" / "first"  # backups/ is not there yet
    done = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(to)])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("backed up 60 points (")
    with VisualMemory.open(to) as backup:
        assert backup.store.count() == 60


def test_a_refused_vmem_backup_leaves_no_folder_it_made(tmp_path):
    make_memory(tmp_path / "memory").close()
    inside = tmp_path / "memory" / "backups" / "first"  # inside the memory's folder: refused after the folders
    done = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(inside)])
    assert done.exit_code == 2 and "inside the memory's folder" in " ".join(done.output.split())
    assert not (tmp_path / "memory" / "backups").exists()
    # A file where a folder above it would be: said, and the folders made up to there removed
    (tmp_path / "a file").write_text("")
    blocked = tmp_path / "a file" / "backups" / "first"
    done = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(blocked)])
    assert done.exit_code == 2 and "could not make the folders above" in done.output, done.output
    assert "(Not a directory: " in " ".join(done.output.split()) and "Errno" not in done.output, done.output
    # A memory that does not open makes no folder either
    gone = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "nomem"), "--to", str(tmp_path / "b" / "x")])
    assert gone.exit_code != 0 and not (tmp_path / "b").exists()


def test_opening_no_memory_from_python_says_how_to_make_one_there(tmp_path):
    nomem = tmp_path / "nomem"
    with pytest.raises(NoMemoryError, match=r"^no memory at .*nomem: build one first, from Python with "
                                            r"VisualMemory\.open\(.*nomem', create=True, featurizer='dinov2-small'\)") \
            as refused:
        VisualMemory.open(nomem)
    assert "featurizer: the encoder" in str(refused.value) and "vmem build" in str(refused.value)
    with pytest.raises(NoMemoryError, match=r"create=True, featurizer='efficientnet-lite0'\)"):
        VisualMemory.open(nomem, featurizer="efficientnet-lite0")  # the encoder asked for is the one to make it with
    with pytest.raises(NoMemoryError, match=r"build one first \(VisualMemory\.open\(.*, then open it read-only$"):
        VisualMemory.open(nomem, read_only=True)
    assert not nomem.exists()


def test_the_cli_and_the_service_still_say_vmem_build(tmp_path):
    nomem = tmp_path / "nomem"
    said = CliRunner().invoke(app, ["info", "--memory", str(nomem)])
    assert said.exit_code == 1 and said.output.strip() == f"Error: no memory at {nomem}: build one first (vmem build)"
    with pytest.raises(NoMemoryError, match=r"^no memory at .*nomem: build one first \(vmem build\)$"):
        open_memory(Settings(memory=str(nomem), api_key=API_KEY))
