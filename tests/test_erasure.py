"""Forgetting leaves no copy of a vector behind: not in vmem's own files, and not in the engine's segments once
erased (`erase_forgotten`, `forget(erase=True)`, `vmem forget --erase`).

The bytes are looked for as they are stored: float16 (the default), float32 and vmem's float16 rows. The
engine's write-ahead log is left out: it keeps recent writes until later ones fill its file (README).
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from retrieval.doubtful import OriginalRows
from retrieval.journal import FileJournal
from retrieval.store import EDGE_CONFIG_FILE, ORIGINAL_ROWS_FILE, VACUUM_THRESHOLDS
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests.conftest import random_unit_vectors
from vmem.cli.bench_search import copies_in_files

SPEC = FeaturizerSpec(name="test-encoder", dim=384, preprocessing=Preprocessing(resize=256, crop=224))
DOUBTFUL = IndexSettings(quantization="turboquant8", rescore=False, rescore_doubtful=True)
N = 3000


@pytest.mark.parametrize("index", [IndexSettings(), DOUBTFUL], ids=["int8", "doubtful"])
def test_forgotten_vectors_leave_the_files_when_erased_and_the_rest_stays_searchable(tmp_path, index):
    vecs = random_unit_vectors(N, 384, seed=1)
    memory = tmp_path / "memory"
    with open_store(memory, SPEC, index=index) as store:
        ids = store.add(vecs, [f"c{i % 7}" for i in range(N)], [f"/v/{i}" for i in range(N)])
        store.optimize()
    with open_store(memory) as store:
        store.delete_ids(ids[:5])
        store.delete_where(label="c3")
        gone = [*range(5), *(i for i in range(5, N) if i % 7 == 3)]
        store.flush()
        assert copies_in_files(memory, vecs[gone[:20]]) == 20  # unreachable, but still in the engine's segments
        store.erase_forgotten()
        assert copies_in_files(memory, vecs[gone[:5] + gone[5::20]]) == 0  # a sample: each search reads all files
        kept = [i for i in range(N) if i not in set(gone)]
        assert copies_in_files(memory, vecs[kept[:20]]) == 20
        assert store.count() == len(kept)
        found = store.query_batch(vecs[kept[:50]], 1)
        assert [hits[0].source for hits in found] == [f"/v/{i}" for i in kept[:50]]


def test_vmem_own_copy_is_erased_at_the_delete_and_at_a_re_add(tmp_path):
    """With rescore_doubtful, vmem's row of a forgotten or replaced vector is zeroed before the engine forgets it."""
    vecs = random_unit_vectors(300, 384, seed=2)
    rows_file = tmp_path / "memory" / ORIGINAL_ROWS_FILE
    with open_store(tmp_path / "memory", SPEC, index=DOUBTFUL) as store:
        ids = store.add(vecs, ["a"] * 150 + ["b"] * 150, [f"/v/{i}" for i in range(300)])
        store.delete_ids(ids[:2])
        store.add(vecs[10:11] * -1, ["a"], ["/v/10"])  # point 10 re-added with another vector
        store.delete_where(label="b")
        assert copies_in_files(rows_file.parent, vecs[[0, 1, 10, 150, 299]]) > 0  # still in the engine ...
        rows = np.fromfile(rows_file, np.float16).reshape(-1, 384)
        assert len(rows) == 301
        assert not rows[[0, 1, 10, *range(150, 300)]].any()  # ... but not in vmem's copy
        assert np.allclose(rows[300], -vecs[10], atol=1e-3) and np.allclose(rows[2:10], vecs[2:10], atol=1e-3)
        assert store.query(-vecs[10], 1)[0].source == "/v/10"


def test_a_source_given_twice_in_one_add_leaves_no_row_behind_once_forgotten(tmp_path):
    vecs = random_unit_vectors(3, 384, seed=5)
    rows_file = tmp_path / "memory" / ORIGINAL_ROWS_FILE
    with open_store(tmp_path / "memory", SPEC, index=DOUBTFUL) as store:
        ids = store.add(vecs, ["a", "a", "a"], ["/v/x", "/v/x", "/v/y"])  # /v/x twice: its last version stays
        assert ids[0] == ids[1] and store.count() == 2
        assert store.query(vecs[1], 1)[0].source == "/v/x"
        store.delete_ids([ids[0]])
        rows = np.fromfile(rows_file, np.float16).reshape(-1, 384)
        kept = rows[rows.any(axis=1)]  # neither version of /v/x is left in vmem's own copy: /v/y's row only
        assert len(kept) == 1 and np.allclose(kept[0], vecs[2], atol=1e-3)


def test_an_erased_row_reads_as_missing(tmp_path):
    rows = OriginalRows(tmp_path / "rows.bin", 8, "float32")
    vecs = random_unit_vectors(10, 8, seed=3)
    rows.append(vecs)
    rows.erase([7, 1, 2, 3, 99])  # out of range: ignored
    got = rows.read(range(10))
    assert np.isnan(got[[1, 2, 3, 7]]).all() and rows.rows_missing == 4
    assert np.allclose(got[[0, 4, 5, 6, 8, 9]], vecs[[0, 4, 5, 6, 8, 9]])
    rows.close()


def file_system_punches_holes(folder) -> bool:
    """Whether fallocate(PUNCH_HOLE) frees blocks here, probed on a file of its own with the system call itself:
    the test's decision must not rest on the code it tests."""
    import ctypes

    probe = folder / "probe.bin"
    probe.write_bytes(os.urandom(1 << 20))
    fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if fallocate is None:
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(probe, os.O_RDWR)
    try:
        before = os.fstat(fd).st_blocks
        fallocate(fd, 0x02 | 0x01, 0, 1 << 19)  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        return os.fstat(fd).st_blocks < before
    finally:
        os.close(fd)


def test_erasing_a_run_of_rows_gives_its_disk_blocks_back_and_keeps_its_neighbours(tmp_path):
    (tmp_path / "probe").mkdir()
    if not file_system_punches_holes(tmp_path / "probe"):
        pytest.skip("this file system does not punch holes: the rows are zeroed only")
    rows = OriginalRows(tmp_path / "rows.bin", 384, "float16")  # 768-byte rows: 5.3 to a 4 KiB block
    vecs = random_unit_vectors(2000, 384, seed=7)
    rows.append(vecs)
    allocated = os.stat(tmp_path / "rows.bin").st_blocks
    rows.erase(range(101, 1901))  # a label added together
    freed = allocated - os.stat(tmp_path / "rows.bin").st_blocks
    assert freed * 512 >= 1800 * 768 - 2 * 4096  # all but the blocks shared with kept rows
    assert os.stat(tmp_path / "rows.bin").st_size == 2000 * 768
    got = rows.read(range(2000))
    assert np.isnan(got[101:1901]).all()
    assert np.allclose(got[:101], vecs[:101], atol=1e-3) and np.allclose(got[1901:], vecs[1901:], atol=1e-3)
    rows.close()


def test_an_indexing_killed_midway_leaves_no_segment_build_behind_once_reopened(tmp_path, caplog):
    # What a kill -9 during an optimize leaves (a relabel or prune of many points): the engine never loads it,
    # nor removes it.
    vecs = random_unit_vectors(N, 384, seed=5)
    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(vecs, ["a"] * N, [f"/v/{i}" for i in range(N)])
    dead = tmp_path / "memory" / "shard" / "temp_segments" / "segment_builder_0d2e"
    (dead / "vector_storage").mkdir(parents=True)
    (dead / "vector_storage" / "vectors.dat").write_bytes(vecs.tobytes())
    with open_store(tmp_path / "memory") as store:
        assert not dead.exists() and store.count() == N
        assert store.query(vecs[7], 1)[0].source == "/v/7"
    assert any("left by an indexing that did not finish" in r.getMessage() for r in caplog.records)


def test_a_memory_made_with_the_engine_default_thresholds_gets_vmem_ones_when_opened(tmp_path):
    vecs = random_unit_vectors(N, 384, seed=4)
    memory = tmp_path / "memory"
    with open_store(memory, SPEC) as store:
        ids = store.add(vecs, ["a"] * N, [f"/v/{i}" for i in range(N)])
    config_file = memory / "shard" / EDGE_CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["optimizers"] = None  # as vmem made them before: the engine's 0.2 of a segment and 1,000 vectors
    config_file.write_text(json.dumps(config))
    with open_store(memory) as store:
        assert {k: json.loads(config_file.read_text())["optimizers"][k] for k in VACUUM_THRESHOLDS} == VACUUM_THRESHOLDS
        store.delete_ids(ids[:3])
        store.erase_forgotten()
        assert copies_in_files(memory, vecs[:3]) == 0 and store.count() == N - 3


def test_a_memory_on_a_qdrant_server_refuses_to_erase_on_demand():
    with open_store(":memory:", SPEC) as store:
        assert not store.erases_on_demand
        with pytest.raises(Exception, match="deleted_threshold"):
            store.erase_forgotten()


def test_forget_with_erase_on_a_qdrant_server_is_refused_before_anything_is_forgotten():
    from vmem import VisualMemory

    store = open_store(":memory:", SPEC)
    store.add(random_unit_vectors(2, 384, seed=1), ["a", "b"], ["/v/0", "/v/1"])
    mem = VisualMemory(store)
    with pytest.raises(ValueError, match="cannot erase forgotten points on demand"):
        mem.forget(label="a", erase=True)
    assert store.count() == 2
    mem.close()


def test_searches_beside_an_erase_find_kept_points_only(tmp_path):
    vecs = random_unit_vectors(20_000, 384, seed=6)
    # Three segments, one of them indexed, each with deleted points to rewrite. The default graph: one built with
    # ef_construct 32 (to save CPU) let a stored vector miss itself as first neighbour in a CI rehearsal.
    index = IndexSettings(segment_points=10_000)
    with open_store(tmp_path / "memory", SPEC, index=index) as store:
        ids = store.add(vecs, ["a"] * 20_000, [f"/v/{i}" for i in range(20_000)])
        store.optimize()
        store.delete_ids(ids[::3])
        answers, failures, done = [], [], threading.Event()

        def search() -> None:
            while not done.is_set():
                try:
                    answers.append(store.query_batch(vecs[1:200:3], 5))
                except Exception as exc:  # any failure is what this test looks for
                    failures.append(exc)

        searcher = threading.Thread(target=search)
        searcher.start()
        store.erase_forgotten()
        done.set()
        searcher.join()
        assert not failures and answers
        for found in answers:  # every answer, during the rewrite or after: kept points, never a forgotten one
            assert [hits[0].source for hits in found] == [f"/v/{i}" for i in range(1, 200, 3)]
            assert not {h.id for hits in found for h in hits} & set(ids[::3])


def test_a_forget_outside_the_service_deletes_the_thumbnails_it_kept_of_uploads(tmp_path, lite0):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY, fill_memory, make_memory_images, texture
    from vmem.cli import app

    location = tmp_path / "memory"
    mem = fill_memory(str(location), lite0, make_memory_images(tmp_path / "images", lite0))
    with TestClient(create_app(Settings(memory=str(location), api_key=API_KEY), memory=mem)) as client:
        added = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"},
                            files=[("images", (f"l{i}.png", texture((120, 230, 60), 50 + i))) for i in range(2)])
        ids = [p["id"] for p in added.json()["added"]]
    mem.close()
    thumbs = location / "thumbnails"
    assert {p.stem for p in thumbs.glob("*.jpg")} >= set(ids)  # an upload's thumbnail: its only copy
    out = CliRunner().invoke(app, ["forget", "--memory", str(location), "--label", "lime", "--erase"])
    assert out.exit_code == 0, out.output
    assert not {p.stem for p in thumbs.rglob("*.jpg")} & set(ids)


def test_thumbnails_a_forget_killed_midway_left_are_removed_by_the_next_forget_or_service_start(tmp_path, lite0):
    # A forget killed between deleting its points and deleting their thumbnails: run again, it finds no points, and
    # an upload's thumbnail is its only copy.
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY, fill_memory, make_memory_images, texture
    from vmem import VisualMemory
    from vmem.cli import app

    location = tmp_path / "memory"
    mem = fill_memory(str(location), lite0, make_memory_images(tmp_path / "images", lite0))

    def add_two_uploads(seed: int) -> list[str]:
        with TestClient(create_app(Settings(memory=str(location), api_key=API_KEY), memory=mem)) as client:
            added = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"}, files=[
                ("images", (f"l{i}.png", texture((120, 230, 60), seed + i))) for i in range(2)])
        return [p["id"] for p in added.json()["added"]]

    thumbs = location / "thumbnails"
    ids = add_two_uploads(50)
    mem.store.delete_ids(ids)  # the points went; the process died before their thumbnails did
    mem.close()
    assert {p.stem for p in thumbs.rglob("*.jpg")} >= set(ids)
    out = CliRunner().invoke(app, ["forget", "--memory", str(location), "--label", "lime"])  # run again
    assert out.exit_code == 0 and "removed 2 thumbnails of points forgotten earlier" in out.output, out.output
    assert not {p.stem for p in thumbs.rglob("*.jpg")} & set(ids)

    mem = VisualMemory(open_store(location), lite0, reranker=None)  # the same memory, opened again
    ids = add_two_uploads(60)
    mem.store.delete_ids(ids)
    with TestClient(create_app(Settings(memory=str(location), api_key=API_KEY), memory=mem)):
        assert not {p.stem for p in thumbs.glob("*.jpg")} & set(ids)  # gone before the service takes traffic
    mem.close()


def test_a_forget_outside_the_service_deletes_the_thumbnails_kept_in_its_thumbnail_folder(tmp_path, lite0):
    # VMEM_THUMBNAIL_DIR: the CLI's forget had left them there (an upload's thumbnail is its only copy) until the
    # service's next start, and for a memory on a Qdrant server for good.
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY, fill_memory, make_memory_images, texture
    from vmem import VisualMemory
    from vmem.cli import app

    location, thumbs = tmp_path / "memory", tmp_path / "thumbs"
    mem = fill_memory(str(location), lite0, make_memory_images(tmp_path / "images", lite0))
    settings = Settings(memory=str(location), api_key=API_KEY, thumbnail_dir=thumbs)
    with TestClient(create_app(settings, memory=mem)) as client:
        added = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"},
                            files=[("images", (f"l{i}.png", texture((120, 230, 60), 60 + i))) for i in range(2)])
        ids = [p["id"] for p in added.json()["added"]]
    copy, _ = mem.copy_to(tmp_path / "copy")  # a copy's forget is none of this service's business
    with VisualMemory(copy, lite0) as copied:
        copied.forget(ids=ids[:1])
    assert {p.stem for p in thumbs.rglob("*.jpg")} >= set(ids)
    mem.close()
    out = CliRunner().invoke(app, ["forget", "--memory", str(location), "--label", "lime"])
    assert out.exit_code == 0, out.output
    assert not {p.stem for p in thumbs.rglob("*.jpg")} & set(ids)


def test_an_index_the_disk_has_no_room_for_says_the_edit_is_made_and_how_to_index_later(tmp_path):
    # The engine checks the room its segments need and refuses: after a large relabel (made, journaled) the raw
    # engine error had ended the command with a traceback.
    from retrieval.store import MemoryFullError

    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(random_unit_vectors(10, 384, seed=1), ["a"] * 10, [f"/v/{i}" for i in range(10)])

        class NoRoom:  # the engine is a compiled object: its methods cannot be patched
            def __init__(self, shard, says):
                self.shard, self.says = shard, says

            def __getattr__(self, name):
                return getattr(self.shard, name)

            def optimize(self):
                raise RuntimeError(self.says)

        engine = store.shard
        store.shard = NoRoom(engine, "Service internal error: Not enough space available for optimization, needed: "
                                     "231.00 MiB, available: 96.00 MiB")
        with pytest.raises(MemoryFullError, match=r"edit is made, but its index could not be built: .*needed: 231"):
            store.optimize()
        # Its first line as shown: escaped, and not cut at a lone \r or \x1c (`splitlines` had cut there)
        store.shard = NoRoom(engine, "Service internal error: Not enough space available\x1b[31m, needed:\r "
                                     "231.00 MiB\x1c, available: 96\nsecond line")
        with pytest.raises(MemoryFullError) as raised:
            store.optimize()
        assert ("(Service internal error: Not enough space available\\x1b[31m, needed:\\r 231.00 MiB\\x1c, "
                "available: 96); searches find them unindexed") in str(raised.value)
        store.shard = engine
        assert store.count() == 10


def test_a_copy_takes_the_thumbnails_of_uploads_along_their_only_image(tmp_path, lite0):
    # A memory moved with vmem copy had lost every uploaded image: the copy's thumbnails were 404s.
    from fastapi.testclient import TestClient

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY, fill_memory, make_memory_images, texture
    from vmem import VisualMemory

    location = tmp_path / "memory"
    mem = fill_memory(str(location), lite0, make_memory_images(tmp_path / "images", lite0))
    settings = Settings(memory=str(location), api_key=API_KEY, thumbnail_dir=tmp_path / "shared")
    with TestClient(create_app(settings, memory=mem)) as client:
        added = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"},
                            files=[("images", ("l.png", texture((120, 230, 60), 70)))]).json()["added"][0]
    copy, notes = mem.copy_to(tmp_path / "copy")
    mem.close()
    assert "1 thumbnail of uploaded points (their only images) copied along" in notes
    with VisualMemory(copy, lite0) as copied:
        for shared in (None, tmp_path / "shared"):  # served from its own folder, or from the shared one's
            app = create_app(Settings(memory=str(tmp_path / "copy"), api_key=API_KEY, thumbnail_dir=shared),
                             memory=copied)
            with TestClient(app) as client:
                thumb = client.get(f"/v1/memory/points/{added['id']}/thumbnail")
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_thumbnails_kept_in_a_shared_folder_before_stay_each_memorys_after_the_upgrade(tmp_path, lite0):
    # Before each memory had a folder in VMEM_THUMBNAIL_DIR, services kept thumbnails directly in it. Taken in on
    # a GET, they had been moved before the point was looked up: a GET on one memory's service took or deleted
    # another's, for good; and a forget left them there.
    import shutil

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from server import Settings, create_app
    from tests._server_fixtures import API_KEY, fill_memory, make_memory_images, texture
    from vmem.cli import app

    shared = tmp_path / "shared"
    mem = fill_memory(str(tmp_path / "a"), lite0, make_memory_images(tmp_path / "images", lite0))
    with TestClient(create_app(Settings(memory=str(tmp_path / "a"), api_key=API_KEY, thumbnail_dir=shared),
                               memory=mem)) as client:
        up = client.post("/v1/memory", headers={"X-API-Key": API_KEY}, data={"label": "lime"},
                         files=[("images", ("l.png", texture((120, 230, 60), 71)))]).json()["added"][0]["id"]
        copy, _ = mem.copy_to(tmp_path / "b")  # both hold the upload
        copy.close()
        # As the services kept them before: directly in the shared folder (and not in the copy's own folder)
        (folder,) = [f for f in shared.iterdir() if f.is_dir()]
        shutil.move(folder / f"{up}.jpg", shared / f"{up}.jpg")
        shutil.rmtree(tmp_path / "b" / "thumbnails")
        other = shared / "6f1c3d1e-0000-5000-8000-000000000000.jpg"  # another memory's point
        other.write_bytes(b"jpeg of another memory")
        assert client.get(f"/v1/memory/points/{other.stem}/thumbnail").status_code == 404
        assert other.read_bytes() == b"jpeg of another memory"  # not taken, not deleted
        assert client.get(f"/v1/memory/points/{up}/thumbnail").status_code == 200
    mem.close()
    with TestClient(create_app(Settings(memory=str(tmp_path / "b"), api_key=API_KEY, thumbnail_dir=shared))) as b:
        assert b.get(f"/v1/memory/points/{up}/thumbnail").status_code == 200  # the copy gets it too
    out = CliRunner().invoke(app, ["forget", "--memory", str(tmp_path / "a"), "--id", up])
    assert out.exit_code == 0 and not (shared / f"{up}.jpg").exists()  # a forget deletes the old file too


def test_vmem_erase_gives_a_memory_edited_for_months_its_search_back(tmp_path):
    """Forgets and one-batch adds (a service's uploads) leave the index of the points first built ever more
    deleted, and the new points unindexed: searches drift from exact ones (docs/benchmarks.md, "A memory that
    lives for months"). `vmem erase` is the upkeep, with nothing to forget first."""
    from typer.testing import CliRunner

    from vmem.cli import app

    dim, n = 1280, 5000  # the engine indexes a segment from 10 MB of vectors up
    centres = random_unit_vectors(20, dim, seed=5)

    def photos(count, seed):
        rng = np.random.default_rng(seed)
        of = rng.integers(0, 20, count)
        v = centres[of] + rng.normal(0, 1.5 / np.sqrt(dim), (count, dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), [f"c{c}" for c in of]

    spec = FeaturizerSpec(name="test-encoder", dim=dim, preprocessing=Preprocessing(resize=256, crop=224))
    memory = tmp_path / "memory"
    with open_store(memory, spec) as store:
        first, labels = photos(n, 1)
        ids = store.add(first, labels, [f"/v/{i}" for i in range(n)])
        store.optimize()
        for start in range(0, 4000, 100):  # four in five of the first points forgotten, as many added
            store.delete_ids(ids[start : start + 100])
            new, new_labels = photos(100, 1000 + start)
            store.add(new, new_labels, [f"/new/{start + i}" for i in range(100)])
        assert store.shard.info().indexed_vectors_count == n  # the 5,000 first, 4,000 of them forgotten
    out = CliRunner().invoke(app, ["erase", "--memory", str(memory)])
    assert out.exit_code == 0, out.output
    assert "rewrote the memory's segments and index without the forgotten points (5,000 points kept" in out.output
    assert copies_in_files(memory, first[:4000:200]) == 0
    with open_store(memory) as store:
        assert store.shard.info().indexed_vectors_count == store.count() == n
        queries, _ = photos(50, 99)
        indexed, exact = store.query_batch(queries, 50), store.query_batch(queries, 50, exact=True)
        found = sum(len({h.id for h in a} & {h.id for h in e}) for a, e in zip(indexed, exact, strict=True))
        assert found / (50 * len(queries)) >= 0.99
    assert [e.op for e in FileJournal(memory / "journal.jsonl").read()][-1] == "erase"


def test_an_erase_the_disk_has_no_room_for_is_said_in_a_line_and_the_forget_stays_made(tmp_path, monkeypatch):
    # vmem forget --erase and vmem erase: the rewrite needs room for the segments anew, and a disk with 50 MB free
    # (here what the store is told) has too little; the points stay forgotten, their vectors in the files
    import shutil
    from collections import namedtuple

    from typer.testing import CliRunner

    from vmem.cli import app

    memory = tmp_path / "memory"
    with open_store(memory, SPEC) as store:
        store.add(random_unit_vectors(4, SPEC.dim, seed=1), ["a", "a", "b", "b"], [f"/v/{i}" for i in range(4)])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (50 << 20), 50 << 20))
    no_room = "Error: the disk holding the memory"
    forgot = CliRunner().invoke(app, ["forget", "--memory", str(memory), "--label", "b", "--erase"])
    assert forgot.exit_code == 1 and "forgot 2 points" in forgot.stdout, forgot.output
    assert forgot.stderr.count(no_room) == 1 and "an erase needs" in forgot.stderr, forgot.stderr
    erased = CliRunner().invoke(app, ["erase", "--memory", str(memory)])
    assert erased.exit_code == 1 and erased.stdout == "", erased.output
    assert erased.stderr.startswith(no_room) and "an erase needs" in erased.stderr, erased.stderr
    with open_store(memory) as store:
        assert store.count() == 2
