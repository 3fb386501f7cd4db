"""Exporting a memory's points with their vectors to one .npz file (`VisualMemory.export_points`, `vmem export`),
to analyse elsewhere with numpy alone.

The file holds what the memory decides with: on real data, plain numpy over it (cosine kNN, the memory's vote)
gives every query the label, and the neighbours, that the memory itself gives.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, Preprocessing, open_store
from retrieval.store import EXCLUDED_KEY, RELIABILITY_KEY
from tests.conftest import FEATURE_CACHE, random_unit_vectors
from vmem import VisualMemory, __version__
from vmem.cli import app
from vmem.export import EXPORT_ARRAYS

SPEC = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))


def read(path) -> dict:
    """An export as plain numpy reads it (no pickle), its meta parsed."""
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files}
    arrays["meta"] = json.loads(arrays["meta"].item())
    return arrays


def fill(store) -> None:
    """25 points: 10 labelled cat under /data/cats/, 15 dog under /data/dogs/ (tagged)."""
    store.add(random_unit_vectors(10, 8, seed=1) * 3, ["cat"] * 10, [f"/data/cats/{i}.jpg" for i in range(10)])
    store.add(random_unit_vectors(15, 8, seed=2), ["dog"] * 15, [f"/data/dogs/{i}.jpg" for i in range(15)],
              {"camera": "garden"})


@pytest.fixture(params=["edge", "qdrant-client"])
def memory(request, tmp_path):
    """The 25 points in an embedded memory, or in qdrant-client's (a Qdrant server's API, in this process)."""
    store = open_store(str(tmp_path / "memory") if request.param == "edge" else ":memory:", SPEC)
    fill(store)
    mem = VisualMemory(store, reranker=None)
    mem.set_label_names({"cat": "house cat"})
    yield mem
    mem.close()


def test_an_export_holds_every_point_with_its_vector_label_and_source(memory, tmp_path):
    assert memory.export_points(tmp_path / "points.npz") == 25
    f = read(tmp_path / "points.npz")
    assert set(f) == set(EXPORT_ARRAYS)
    assert f["vectors"].dtype == np.float32 and f["vectors"].shape == (25, 8)
    # One row per point, in id order, as `vmem points` lists them.
    listed = memory.points(limit=1000).points
    assert list(f["ids"]) == [p.id for p in listed] == sorted(f["ids"], key=uuid.UUID)
    assert list(f["labels"]) == [p.label for p in listed] and list(f["sources"]) == [p.source for p in listed]
    assert not f["excluded"].any() and (f["reliability"] == 1).all()
    # Each point's tags (JSON text, no pickle) and when it was added
    assert [json.loads(t) for t in f["tags"]] == [p.tags for p in listed]
    assert [json.loads(t) for t in f["tags"]].count({"camera": "garden"}) == 15
    assert list(f["added_at"]) == [p.added_at for p in listed] and all(f["added_at"])
    # The vectors as stored: cosine memories keep them unit length (the cats were added 3x longer).
    stored = {p.id: p.vector for p in memory.store.retrieve(list(f["ids"]), with_vectors=True)}
    np.testing.assert_array_equal(f["vectors"], np.stack([stored[i] for i in f["ids"]]))
    np.testing.assert_allclose(np.linalg.norm(f["vectors"], axis=1), 1, atol=1e-3)
    meta = f["meta"]
    assert (meta["format"], meta["vmem_version"], meta["points"]) == ("vmem-points", __version__, 25)
    assert (meta["featurizer"]["name"], meta["dim"], meta["featurizer"]["dim"]) == ("dummy", 8, 8)
    assert meta["label_names"] == {"cat": "house cat"} and meta["vote"]["rule"] == "rank"
    assert meta["index"]["vectors_dtype"] == memory.store.meta.index.vectors_dtype


def test_an_export_takes_the_filters_vmem_points_takes(memory, tmp_path):
    [a, b] = memory.points(label="dog", limit=2).points
    memory.store.set_payload([a.id], {EXCLUDED_KEY: "pruned"})  # hard pruning: no search returns it
    memory.store.set_payload([b.id], {RELIABILITY_KEY: 0.25})  # soft pruning: its vote counts a quarter
    assert memory.export_points(tmp_path / "dogs.npz", label="dog") == 15
    dogs = read(tmp_path / "dogs.npz")
    assert set(dogs["labels"]) == {"dog"} and dogs["meta"]["filter"]["label"] == "dog"
    row = {i: r for r, i in enumerate(dogs["ids"])}
    assert dogs["excluded"][row[a.id]] and dogs["excluded"].sum() == 1
    assert dogs["reliability"][row[b.id]] == 0.25
    assert memory.export_points(tmp_path / "cats.npz", source_prefix="/data/cats/") == 10
    assert all(s.startswith("/data/cats/") for s in read(tmp_path / "cats.npz")["sources"])
    assert memory.export_points(tmp_path / "pruned.npz", excluded=True) == 1
    assert list(read(tmp_path / "pruned.npz")["ids"]) == [a.id]
    assert memory.export_points(tmp_path / "searchable.npz", excluded=False) == 24
    # The batches behind it, for Python without a file.
    batches = list(memory.point_batches(label="dog", excluded=False, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 4, 2] and a.id not in {i for b in batches for i in b.ids}


def test_an_export_never_replaces_a_file_unless_asked(memory, tmp_path):
    path = tmp_path / "points.npz"
    path.write_bytes(b"my results")
    with pytest.raises(FileExistsError, match="exists"):
        memory.export_points(path)
    assert path.read_bytes() == b"my results"
    assert memory.export_points(path, label="cat", overwrite=True) == 10
    assert len(read(path)["ids"]) == 10
    assert sorted(set(os.listdir(tmp_path)) - {"memory", "vmem-home"}) == ["points.npz"]  # no temporary file left
    with pytest.raises(IsADirectoryError):
        memory.export_points(tmp_path, overwrite=True)
    with pytest.raises(FileNotFoundError):
        memory.export_points(tmp_path / "no-such-folder" / "points.npz")


def test_a_file_made_at_the_path_while_the_export_runs_is_kept(memory, tmp_path):
    path = tmp_path / "points.npz"

    def someone_else_writes_it(n: int) -> None:  # the path was free when the export began
        path.write_bytes(b"someone else's results")

    with pytest.raises(FileExistsError, match="made while this was written"):
        memory.export_points(path, progress=someone_else_writes_it)
    assert path.read_bytes() == b"someone else's results"
    assert sorted(set(os.listdir(tmp_path)) - {"memory", "vmem-home"}) == ["points.npz"]  # no temporary file left


def test_an_empty_memory_exports_an_empty_file_of_its_dim(tmp_path):
    with VisualMemory(open_store(tmp_path / "memory", SPEC), reranker=None) as mem:
        assert mem.export_points(tmp_path / "empty.npz") == 0
    f = read(tmp_path / "empty.npz")
    assert f["vectors"].shape == (0, 8) and f["vectors"].dtype == np.float32
    assert f["ids"].shape == f["labels"].shape == f["excluded"].shape == (0,) and f["meta"]["points"] == 0


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


@pytest.mark.parametrize("backend", ["edge", "qdrant-client"])
def test_vmem_export_writes_the_file_and_refuses_to_overwrite_it(backend, tmp_path):
    folder = tmp_path / "memory"
    where = ["--memory", folder] if backend == "edge" else ["--qdrant-url", f"qdrant-local:{folder}"]
    with open_store(str(folder) if backend == "edge" else f"qdrant-local:{folder}", SPEC) as store:
        fill(store)
    path = tmp_path / "points.npz"
    done = run("export", path, *where)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("wrote 25 points (8-d vectors) to ")
    assert read(path)["vectors"].shape == (25, 8)
    again = run("export", path, *where, "--label", "cat")
    assert again.exit_code == 2 and "exists: give --force to replace it" in again.output
    assert len(read(path)["ids"]) == 25
    forced = run("export", path, *where, "--label", "cat", "--force")
    assert forced.exit_code == 0, forced.output
    assert set(read(path)["labels"]) == {"cat"} and "wrote 10 points" in forced.stdout
    assert run("export", tmp_path / "none.npz", *where, "--excluded").stdout.startswith("wrote 0 points")
    unknown = run("export", tmp_path / "bird.npz", *where, "--label", "bird")
    assert unknown.exit_code == 2 and "no label 'bird'" in unknown.output
    assert not (tmp_path / "bird.npz").exists()
    nowhere = run("export", tmp_path / "missing" / "points.npz", *where)
    assert nowhere.exit_code == 2 and "is not a folder" in nowhere.output


def test_vmem_export_on_a_full_disk_says_so_and_keeps_the_file_there(tmp_path, monkeypatch):
    import errno

    from vmem import export as export_module

    with open_store(tmp_path / "memory", SPEC) as store:
        fill(store)
    path = tmp_path / "points.npz"
    path.write_bytes(b"my results")

    def no_room(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "write_atomically", no_room)
    full = run("export", path, "--memory", tmp_path / "memory", "--force")
    assert full.exit_code == 1
    assert "could not be written (No space left on device): nothing was written, the file there is as it was" \
        in full.stderr
    assert path.read_bytes() == b"my results"


@pytest.mark.realdata
def test_numpy_over_the_export_classifies_as_the_memory_does(tiny_imagenet, lite0, tmp_path):
    """Five Tiny-ImageNet classes (30 images each, from the realdata tests' subset) as a memory with some points
    pruned hard and soft; the val images of those classes as queries. Cosine kNN and rank voting over the export
    alone give each query the memory's own label and its neighbours in the same order."""
    from tests.realdata import cached_features, train_subset, val_sample

    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir() if p.is_dir())[:5]
    train = cached_features(FEATURE_CACHE, lite0, [it for it in train_subset(tiny_imagenet) if it.label in classes])
    queries = cached_features(FEATURE_CACHE, lite0,
                              [it for it in val_sample(tiny_imagenet, 1000, seed=0) if it.label in classes])
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:  # default index: int8, float16
        mem.store.add(train.features, train.labels, [it.source for it in train.items])
        mem.store.optimize()
        ids = [p.id for p in mem.points(limit=12).points]
        mem.store.set_payload(ids[:4], {EXCLUDED_KEY: "pruned"})
        mem.store.set_payload(ids[4:12], {RELIABILITY_KEY: 0.3})
        mem.export_points(tmp_path / "memory.npz")
        answers = mem.classify_vectors(queries.features, exact=True)

    f = read(tmp_path / "memory.npz")
    meta, searchable = f["meta"], ~f["excluded"]
    vectors, labels, point_ids = f["vectors"][searchable], f["labels"][searchable], f["ids"][searchable]
    reliability = f["reliability"][searchable]
    k, alpha = meta["vote"]["k"], meta["vote"]["alpha"]
    assert meta["vote"]["rule"] == "rank" and meta["vote"]["soft_pruning"]
    q = queries.features / np.linalg.norm(queries.features, axis=1, keepdims=True)
    if meta["index"]["vectors_dtype"] == "float16":  # the memory compares the query rounded as its vectors are
        q = q.astype(np.float16).astype(np.float32)
    sims = q @ vectors.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # rows are in id order: ties go by id, as searches'
    for answer, row in zip(answers, nearest, strict=True):
        assert [n.id for n in answer.neighbors] == list(point_ids[row])
        weights = reliability[row] / (alpha + np.arange(k))  # rank voting, soft pruning's factors
        totals: dict[str, float] = {}
        for label, w in zip(labels[row], weights, strict=True):
            totals[label] = totals.get(label, 0.0) + w
        assert answer.label == max(totals, key=totals.__getitem__)  # a tie: the label ranked first (added first)
    assert len(answers) >= 10 and len({a.label for a in answers}) > 1


def test_vmem_export_stopped_by_sigterm_ends_as_ctrl_c_does_leaving_no_temporary_file(tmp_path, monkeypatch):
    import signal

    from vmem import export as export_module

    with open_store(tmp_path / "memory", SPEC) as store:
        fill(store)
    real = export_module.write_atomically

    def stopped_while_writing(path, write, **kwargs):  # `timeout`, `docker stop`: SIGTERM mid-write
        def write_then_stop(fh):
            write(fh)
            os.kill(os.getpid(), signal.SIGTERM)

        real(path, write_then_stop, **kwargs)

    monkeypatch.setattr(export_module, "write_atomically", stopped_while_writing)
    stopped = run("export", tmp_path / "points.npz", "--memory", tmp_path / "memory")
    assert stopped.exit_code == 130 and "interrupted: nothing was written" in stopped.output, stopped.output
    assert sorted(os.listdir(tmp_path)) == ["memory"]  # the temporary file beside it went too
