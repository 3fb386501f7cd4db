"""Importing points with their vectors from an .npz file (`VisualMemory.import_points`, `vmem import`): a file
`vmem export` wrote, into another memory or another backend, or vectors made elsewhere by a named encoder.

A memory exported and imported answers as the memory did (real data); what cannot be imported is refused before
anything is written, and rows that cannot be points are skipped and said.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerMismatchError, FeaturizerSpec, Preprocessing, open_store
from retrieval.store import EXCLUDED_KEY, RELIABILITY_KEY, point_id_for
from tests.conftest import FEATURE_CACHE, random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app
from vmem.import_points import PointsFileError, read_points_file

SPEC = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))
BACKENDS = ["edge", "qdrant-client"]


def where(backend: str, tmp_path, name: str = "memory") -> str:
    """A memory's location: an embedded one's folder, or qdrant-client's on-disk local mode (a server's API)."""
    return str(tmp_path / name) if backend == "edge" else f"qdrant-local:{tmp_path / name}"


def cli_where(backend: str, tmp_path, name: str = "memory") -> list:
    return ["--memory", tmp_path / name] if backend == "edge" else ["--qdrant-url", where(backend, tmp_path, name)]


def exported_memory(tmp_path) -> str:
    """25 points (10 cat, 15 dog, tagged) with one hard-pruned, one down-weighted, cat named, exported: the file's
    path."""
    with VisualMemory(open_store(tmp_path / "source", SPEC), reranker=None) as mem:
        mem.store.add(random_unit_vectors(10, 8, seed=1), ["cat"] * 10, [f"/data/cats/{i}.jpg" for i in range(10)])
        mem.store.add(random_unit_vectors(15, 8, seed=2), ["dog"] * 15, [f"/data/dogs/{i}.jpg" for i in range(15)],
                      {"camera": "garden", "shot": {"iso": 200}})
        [a, b] = mem.points(label="dog", limit=2).points
        mem.store.set_payload([a.id], {EXCLUDED_KEY: "pruned"})
        mem.store.set_payload([b.id], {RELIABILITY_KEY: 0.25})
        mem.set_label_names({"cat": "house cat"})
        mem.export_points(tmp_path / "points.npz")
    return str(tmp_path / "points.npz")


def listing(mem: VisualMemory) -> dict:
    """Each point as `vmem points` shows it: id -> (label, source, excluded, reliability, tags, when added)."""
    return {p.id: (p.label, p.source, p.excluded, p.reliability, p.tags, p.added_at)
            for p in mem.points(limit=1000).points}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def said(result) -> str:
    """A command's output as one line: an error's box and its line breaks taken out."""
    return " ".join(result.output.replace("│", " ").split())


# ------------------------------------------------------------------ a vmem export


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_export_imported_into_a_new_memory_holds_its_points_as_stored(backend, tmp_path):
    path = exported_memory(tmp_path)
    with VisualMemory(open_store(tmp_path / "source"), reranker=None) as source:
        before = listing(source)
        vectors = {p.id: p.vector for p in source.store.retrieve(list(before), with_vectors=True)}
    points = read_points_file(path)  # its meta names the encoder: no --featurizer
    with VisualMemory.open_for_import(where(backend, tmp_path), points) as mem:
        report = mem.import_points(points)
        assert (report.added, report.already_in_memory, sum(report.skipped.values())) == (25, 0, 0)
        assert mem.store.meta.featurizer == SPEC
        # Ids, labels, sources and pruning as stored; the vectors too; the label names with them.
        assert listing(mem) == before
        assert mem.store.count(searchable=True) == 24
        for p in mem.store.retrieve(list(before), with_vectors=True):
            np.testing.assert_allclose(p.vector, vectors[p.id], atol=1e-3)
        assert mem.label_names == {"cat": "house cat"}
        # Journaled as an add naming the file and its sha256 (and never its vectors).
        add = mem.history(op="add")[0]
        assert (add.points, add.labels, add.selector) == (25, {"dog": 15, "cat": 10}, {"import": "points.npz"})
        assert add.detail["import"]["sha256"] == points.sha256 and add.detail["import"]["format"] == "vmem-points"
        # Imported again: every point is there already, nothing is added or journaled.
        again = mem.import_points(path)
        assert (again.added, again.already_in_memory) == (0, 25) and mem.store.count() == 25
        assert len(mem.history(op="add")) == 1


def test_an_export_written_before_tags_and_times_were_in_it_still_imports(tmp_path):
    path = exported_memory(tmp_path)
    with np.load(path) as f:  # as vmem 's first exports wrote it: no tags, no added_at
        older = {name: f[name] for name in f.files if name not in ("tags", "added_at")}
    np.savez(tmp_path / "older.npz", **older)
    with VisualMemory.open_for_import(str(tmp_path / "memory"), read_points_file(tmp_path / "older.npz")) as mem:
        assert mem.import_points(tmp_path / "older.npz").added == 25
        points = mem.points(limit=1000).points
        assert all(p.tags == {} for p in points) and len({p.added_at for p in points}) == 1  # the import's time


def test_the_files_label_names_win_as_a_copys_do_and_a_point_under_another_label_keeps_it_unless_relabel(tmp_path):
    path = exported_memory(tmp_path)
    with VisualMemory(open_store(tmp_path / "dest", SPEC), reranker=None) as mem:
        mem.set_label_names({"cat": "kitty", "dog": "hound"})
        mem.store.add(random_unit_vectors(1, 8, seed=7), ["dog"], ["/data/cats/0.jpg"])  # the file says cat
        report = mem.import_points(path)
        assert report.added == 24 and report.other_label == [("/data/cats/0.jpg", "dog", "cat")]
        assert mem.point(point_id_for("/data/cats/0.jpg")).label == "dog"  # kept, and said
        assert mem.label_names == {"cat": "house cat", "dog": "hound"}  # as `vmem copy` carries names
        relabelled = mem.import_points(path, relabel=True)
        assert relabelled.relabel_applied and mem.point(point_id_for("/data/cats/0.jpg")).label == "cat"
        assert mem.history(op="relabel")[0].selector == {"import": "points.npz"}


@pytest.mark.realdata
def test_a_memory_exported_and_imported_answers_as_it_did_in_either_backend(tiny_imagenet, lite0, tmp_path):
    """Five Tiny-ImageNet classes (30 images each, from the realdata tests' subset, as test_export's) with some
    points pruned hard and soft and a label named, exported, and imported into a new embedded memory: the val
    images of those classes get the same labels and the same neighbours, in the same order. Imported into a Qdrant
    server's memory (qdrant-client's local mode), they get what a `vmem copy` of the memory there gives: that
    engine computes similarities of its own (1e-5 apart from the embedded one's, enough to swap near ties)."""
    from tests.realdata import cached_features, train_subset, val_sample

    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir() if p.is_dir())[:5]
    train = cached_features(FEATURE_CACHE, lite0, [it for it in train_subset(tiny_imagenet) if it.label in classes])
    queries = cached_features(FEATURE_CACHE, lite0,
                              [it for it in val_sample(tiny_imagenet, 1000, seed=0) if it.label in classes])
    expected = {}
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:  # default index: int8, float16
        mem.store.add(train.features, train.labels, [it.source for it in train.items])
        mem.store.optimize()
        ids = [p.id for p in mem.points(limit=12).points]
        mem.store.set_payload(ids[:4], {EXCLUDED_KEY: "pruned"})
        mem.store.set_payload(ids[4:12], {RELIABILITY_KEY: 0.3})
        mem.set_label_names({classes[0]: "first class"})
        mem.export_points(tmp_path / "memory.npz")
        expected["edge"] = mem.classify_vectors(queries.features, exact=True)
        points_before, index = listing(mem), mem.store.meta.index
        copied, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'copied'}")
        with VisualMemory(copied, reranker=None) as server_copy:
            expected["server"] = server_copy.classify_vectors(queries.features, exact=True)
    for backend, location in (("edge", str(tmp_path / "edge")), ("server", f"qdrant-local:{tmp_path / 'server'}")):
        points = read_points_file(tmp_path / "memory.npz")
        with VisualMemory.open_for_import(location, points, reranker=None) as imported:
            assert imported.import_points(points).added == len(train.items)
            assert imported.store.meta.index == index  # the exported memory's settings
            assert listing(imported) == points_before and imported.label_names == {classes[0]: "first class"}
            answers = imported.classify_vectors(queries.features, exact=True)
        assert [a.label for a in answers] == [a.label for a in expected[backend]]
        assert [[n.id for n in a.neighbors] for a in answers] == [[n.id for n in a.neighbors]
                                                                   for a in expected[backend]]
    assert [a.label for a in expected["server"]] == [a.label for a in expected["edge"]]
    assert len(expected["edge"]) >= 10 and len({a.label for a in expected["edge"]}) > 1


# ------------------------------------------------------------------ vectors made elsewhere


def vectors_file(path, vectors, labels, sources=None, **more) -> str:
    """An .npz as a script elsewhere would save its features: plain numpy arrays."""
    arrays = {"vectors": vectors, "labels": np.array(labels, dtype=str), **more}
    if sources is not None:
        arrays["sources"] = np.array(sources, dtype=str)
    np.savez(path, **arrays)
    return str(path)


def test_vectors_made_elsewhere_are_imported_under_the_encoder_named_and_found_again(encoder, tmp_path):
    # 32-d vectors, as the tiny DINOv2 of the `encoder` fixture makes: a new memory is made with it, its weights
    # not loaded (its config says the dim).
    vectors = random_unit_vectors(12, 32, seed=5) * 7  # any length: stored unit length
    path = vectors_file(tmp_path / "features.npz", vectors, ["cat"] * 6 + ["dog"] * 6)
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", encoder)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"imported 12 points from {path} ({encoder} vectors, 32-d; 12 rows)")
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.store.meta.featurizer.name == encoder and mem.store.dim == 32
        # No sources in the file: each row is known by the file's sha256 and its row, so ids are stable.
        sha = read_points_file(path, encoder).sha256
        listed = listing(mem)
        assert {src for _, src, *_ in listed.values()} == {f"import://{sha[:16]}/{row}" for row in range(12)}
        # Searchable: each vector finds its own point first.
        hits = mem.search(vectors, k=1, exact=True)
        assert [h[0].source for h in hits] == [f"import://{sha[:16]}/{row}" for row in range(12)]
        assert [h[0].label for h in hits] == ["cat"] * 6 + ["dog"] * 6
        np.testing.assert_allclose([h[0].similarity for h in hits], 1, atol=1e-3)
    again = run("import", path, "--memory", tmp_path / "memory", "--featurizer", encoder)
    assert again.exit_code == 0 and "imported 0 points" in again.stdout and "12 already in memory" in again.stdout
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert listing(mem).keys() == listed.keys()  # the same ids, none twice


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_with_sources_go_into_an_existing_memory_of_their_encoder(backend, tmp_path):
    with open_store(where(backend, tmp_path), SPEC) as store:
        store.add(random_unit_vectors(3, 8, seed=1), ["cat"] * 3, ["/a/0.jpg", "/a/1.jpg", "/a/2.jpg"])
    path = vectors_file(tmp_path / "more.npz", random_unit_vectors(4, 8, seed=9).astype(np.float64),
                        ["cat", "cat", "dog", "dog"], ["/a/2.jpg", "/b/0.jpg", "/b/1.jpg", "/b/2.jpg"])
    done = run("import", path, *cli_where(backend, tmp_path), "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert "imported 3 points" in done.stdout and "1 already in memory" in done.stdout
    with VisualMemory(open_store(where(backend, tmp_path)), reranker=None) as mem:
        assert mem.store.count() == 6 and mem.point(point_id_for("/b/2.jpg")).label == "dog"


def test_sources_that_are_files_here_are_stored_as_a_build_stores_them(tmp_path, monkeypatch):
    # Features made of a folder of links (class folders linked in from a dataset), saved with the paths as the
    # script read them: a build stores the links' targets, and forget --source, history --source, the service's
    # thumbnails and a later build of the same images all look for them there. Stored as given, a forget of the
    # very path printed found nothing, and a build of the same images added each one again.
    (tmp_path / "dataset" / "cats").mkdir(parents=True)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "cats").symlink_to(tmp_path / "dataset" / "cats", target_is_directory=True)
    for i in range(2):
        (tmp_path / "dataset" / "cats" / f"{i}.jpg").write_bytes(b"an image")
    monkeypatch.chdir(tmp_path)
    given = [str(tmp_path / "linked" / "cats" / "0.jpg"), "linked/cats/../cats/1.jpg", "/elsewhere/2.jpg"]
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(3, 8, seed=4), ["cat"] * 3, given)
    with open_store(tmp_path / "memory", SPEC):
        pass
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    real = [str((tmp_path / "dataset" / "cats" / f"{i}.jpg").resolve()) for i in range(2)]
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        # A path of another machine (no such file here) is kept as given
        assert {src for _, src, *_ in listing(mem).values()} == {*real, "/elsewhere/2.jpg"}
        assert mem.point(point_id_for(real[0])) is not None
        # forget --source of the folder the script read (links) reaches them, as it reaches a build's
        assert set(mem.chosen_points(source_prefix=str(tmp_path / "linked" / "cats"))) == {point_id_for(r)
                                                                                          for r in real}
    again = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert "imported 0 points" in again.stdout and "3 already in memory" in again.stdout


def test_a_files_sources_make_no_folder_of_this_machine_shown_unless_the_user_says_so(tmp_path):
    # Someone else's file may name any folder here: recorded as the memory's image folders, ~/Photos was served as
    # thumbnails to anyone who could reach the service, key or not, and its images sent to Gemini
    photos = tmp_path / "home" / "Photos"
    photos.mkdir(parents=True)
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(b"an image")
    path = vectors_file(tmp_path / "theirs.npz", random_unit_vectors(3, 8, seed=4), ["cat"] * 3,
                        [str(photos / "0.jpg"), str(photos / "1.jpg"), "/elsewhere/2.jpg"])
    open_store(tmp_path / "memory", SPEC).close()
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert ("the images of 2 points are files on this machine outside the memory's image folders (source_roots, "
            "vmem info): none is shown as a thumbnail or sent to the re-ranker, since a file's sources are its "
            "writer's; for a file of your own (a vmem export of a memory here), import it again with "
            "--trust-sources; else name the folders whose images may be shown: --source-root DIR") in said(done)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.source_roots == []

    # The user's word: the same import again records the folders of its files here, as a build of them would
    trusted = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy", "--trust-sources")
    assert trusted.exit_code == 0, trusted.output
    assert ("image folders recorded (thumbnails shown and images sent to the re-ranker from under them): "
            f"{photos.resolve()}") in said(trusted) and "outside the memory's image folders" not in said(trusted)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.source_roots == [str(photos.resolve())]


def test_files_of_an_image_folder_recorded_as_a_link_are_not_said_to_be_outside_it(tmp_path):
    # ~/Photos a link to the disk the photos are on, recorded as it was given: the service shows its images (both
    # sides resolved), yet an import said they were outside every image folder, shown nowhere
    disk = tmp_path / "disk" / "Photos"
    disk.mkdir(parents=True)
    for i in range(2):
        (disk / f"{i}.jpg").write_bytes(b"an image")
    (tmp_path / "Photos").symlink_to(disk)
    path = vectors_file(tmp_path / "mine.npz", random_unit_vectors(2, 8, seed=4), ["cat"] * 2,
                        [str(tmp_path / "Photos" / "0.jpg"), str(disk / "1.jpg")])
    store = open_store(tmp_path / "memory", SPEC)
    with store.meta_edit() as meta:
        meta.settings["source_roots"] = [str(tmp_path / "Photos")]
    store.close()
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert "imported 2 points" in done.stdout and "outside the memory's image folders" not in said(done)


def test_a_dry_run_says_which_image_folders_a_real_run_would_record(tmp_path):
    photos = tmp_path / "Photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(b"an image")
    path = vectors_file(tmp_path / "theirs.npz", random_unit_vectors(2, 8, seed=4), ["cat"] * 2,
                        [str(photos / "0.jpg"), str(photos / "1.jpg")])
    open_store(tmp_path / "memory", SPEC).close()
    plain = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy", "--dry-run")
    assert plain.exit_code == 0, plain.output
    assert "the images of 2 points are files on this machine outside the memory's image folders" in said(plain)
    recorded = ("image folders would be recorded (thumbnails shown and images sent to the re-ranker from under "
                f"them): {photos.resolve()}")
    for choice in (["--trust-sources"], ["--source-root", photos]):
        dry = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy", "--dry-run", *choice)
        assert dry.exit_code == 0, dry.output
        assert recorded in said(dry) and "outside the memory's image folders" not in said(dry)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.source_roots == [] and mem.store.count() == 0


def test_an_import_records_the_image_folders_the_user_names(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "0.jpg").write_bytes(b"an image")
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(1, 8, seed=4), ["cat"],
                        [str(tmp_path / "cats" / "0.jpg")])
    open_store(tmp_path / "memory", SPEC).close()
    refused = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy",
                  "--source-root", tmp_path / "dogs")
    assert refused.exit_code == 2 and "--source-root" in said(refused) and "does not exist" in said(refused)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.store.count() == 0
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy",
               "--source-root", tmp_path / "cats")
    assert done.exit_code == 0, done.output
    assert f"image folders recorded (thumbnails shown and images sent to the re-ranker from under them): " \
           f"{(tmp_path / 'cats').resolve()}" in said(done)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.source_roots == [str((tmp_path / "cats").resolve())]


def test_vectors_without_the_encoder_named_are_refused_naming_the_option(tmp_path):
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(3, 8), ["cat"] * 3)
    with pytest.raises(PointsFileError, match="does not say which encoder made them") as refused:
        read_points_file(path)
    assert refused.value.option == "featurizer"
    done = run("import", path, "--memory", tmp_path / "memory")
    assert done.exit_code == 2 and "Invalid value for --featurizer: " in said(done)
    assert f"{path} holds vectors and labels but does not say which encoder made them: name it (--featurizer NAME, " \
           "e.g. dinov2-small or dinov2:/path/to/model): the memory embeds its queries" in said(done)
    assert not (tmp_path / "memory").exists()


def test_vectors_of_another_dim_than_the_encoder_makes_are_refused(encoder, tmp_path):
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(3, 16), ["cat"] * 3)
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", encoder)
    assert done.exit_code == 2 and "16-d vectors" in said(done) and "makes 32-d features" in said(done)
    assert not (tmp_path / "memory").exists()


def test_vectors_of_another_encoder_than_the_memorys_are_refused_naming_both(tmp_path):
    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(random_unit_vectors(2, 8), ["cat"] * 2, ["/a/0.jpg", "/a/1.jpg"])
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(3, 8), ["cat"] * 3)
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "efficientnet-lite0")
    assert done.exit_code == 2
    assert "vectors of efficientnet-lite0 (8-d); this memory holds dummy features (8-d" in said(done)
    # An export of another encoder's memory: its meta and the memory's record compared.
    other = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=64, crop=56))
    with VisualMemory(open_store(tmp_path / "other", other), reranker=None) as mem:
        mem.store.add(random_unit_vectors(2, 8), ["cat"] * 2, ["/o/0.jpg", "/o/1.jpg"])
        mem.export_points(tmp_path / "other.npz")
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        with pytest.raises(FeaturizerMismatchError, match="other preprocessing or weights"):
            mem.import_points(tmp_path / "other.npz")
        assert mem.store.count() == 2 and not mem.history(op="add")


def test_rows_that_cannot_be_points_are_skipped_and_said_the_rest_imported(tmp_path):
    vectors = random_unit_vectors(8, 8, seed=3)
    vectors[1, 2] = np.nan
    vectors[2, 0] = np.inf
    vectors[3] = 0
    labels = ["cat", "cat", "cat", "cat", "bad\nlabel", "  ", "dog", "dog"]
    path = vectors_file(tmp_path / "features.npz", vectors, labels)
    open_store(tmp_path / "memory", SPEC).close()
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert "imported 3 points" in done.stdout and "5 skipped" in done.stdout
    assert "skipped 1 row: NaN or infinite values" not in done.stderr  # two rows, said once
    assert "skipped 2 rows: NaN or infinite values (rows 1, 2)" in done.stderr
    assert "skipped 1 row: a zero vector" in done.stderr and "(row 3)" in done.stderr
    assert "skipped 1 row: label 'bad\\nlabel' holds the control character" in done.stderr
    assert "skipped 1 row: an empty label (row 5)" in done.stderr
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert sorted(lab for lab, *_ in listing(mem).values()) == ["cat", "dog", "dog"]
    # Every row bad: nothing imported, and the exit status says so.
    nothing = vectors_file(tmp_path / "nan.npz", np.full((2, 8), np.nan), ["cat", "dog"])
    failed = run("import", nothing, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert failed.exit_code == 1 and "nothing could be imported: all 2 rows were skipped" in failed.stderr


class _Trap:
    """Unpickled, it would leave a file: proof that nothing was."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_of_python_objects_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    labels = np.empty(2, dtype=object)
    labels[:] = [_Trap(str(marker)), "cat"]
    np.savez(tmp_path / "objects.npz", vectors=random_unit_vectors(2, 8), labels=labels)
    assert pickle.dumps(labels)  # a real pickle is in the file
    done = run("import", tmp_path / "objects.npz", "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 2 and "holds Python objects" in said(done)
    assert not marker.exists() and not (tmp_path / "memory").exists()


@pytest.mark.parametrize("case", ["not a zip", "no vectors", "1-d vectors", "int vectors", "labels too few",
                                  "int labels", "cut short"])
def test_a_file_that_is_not_points_is_refused_with_nothing_written(case, tmp_path):
    path = tmp_path / "bad.npz"
    v, labels = random_unit_vectors(4, 8), np.array(["cat"] * 4)
    if case == "not a zip":
        np.save(tmp_path / "bad.npy", v)
        os.replace(tmp_path / "bad.npy", path)
    elif case == "no vectors":
        np.savez(path, features=v, labels=labels)
    elif case == "1-d vectors":
        np.savez(path, vectors=v[0], labels=labels[:1])
    elif case == "int vectors":
        np.savez(path, vectors=(v * 100).astype(np.int32), labels=labels)
    elif case == "labels too few":
        np.savez(path, vectors=v, labels=labels[:3])
    elif case == "int labels":
        np.savez(path, vectors=v, labels=np.arange(4))
    else:
        np.savez(path, vectors=random_unit_vectors(400, 8), labels=np.array(["cat"] * 400))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    open_store(tmp_path / "memory", SPEC).close()
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 2, done.output
    assert "Invalid value for FILE" in said(done)
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.store.count() == 0 and not mem.history()


def test_one_point_given_two_labels_is_refused(tmp_path):
    path = vectors_file(tmp_path / "features.npz", random_unit_vectors(3, 8), ["cat", "dog", "cat"],
                        ["/a/0.jpg", "/a/0.jpg", "/a/1.jpg"])
    open_store(tmp_path / "memory", SPEC).close()
    done = run("import", path, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 2 and "rows 0 and 1 are one point (/a/0.jpg), labelled 'cat' and 'dog'" in said(done)


def test_what_someone_elses_file_says_is_printed_one_line_each_its_control_characters_escaped(tmp_path):
    # A file's sources, its encoder's name and its writer's version are its writer's text: printed raw, a newline
    # forged a line of the report, and an escape sequence retitled the terminal or cleared the screen
    forged = "/a/0.jpg\nimported 0 points: all fine\x1b]0;pwned\x07"
    open_store(tmp_path / "memory", SPEC).close()
    first = vectors_file(tmp_path / "first.npz", random_unit_vectors(1, 8, seed=1), ["cat"], [forged])
    assert run("import", first, "--memory", tmp_path / "memory", "--featurizer", "dummy").exit_code == 0
    theirs = vectors_file(tmp_path / "theirs.npz", random_unit_vectors(1, 8, seed=2), ["dog"], [forged])
    done = run("import", theirs, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert "\x1b" not in done.output and "\nimported 0 points" not in done.output
    assert ("  /a/0.jpg\\nimported 0 points: all fine\\x1b]0;pwned\\x07: stored 'cat', file 'dog'"
            in done.stdout.splitlines())

    # A point given two labels, refused naming its source
    clash = vectors_file(tmp_path / "clash.npz", random_unit_vectors(2, 8, seed=3), ["cat", "dog"], [forged] * 2)
    refused = run("import", clash, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert refused.exit_code == 2 and "\x1b" not in refused.output
    assert "one point (/a/0.jpg\\nimported 0 points: all fine\\x1b]0;pwned\\x07)" in said(refused)

    # An export's meta: its encoder's name, said in the report, and the vmem that wrote a later format
    export = dict(np.load(exported_memory(tmp_path)))
    meta = json.loads(str(export["meta"]))
    meta["featurizer"]["name"] = "dummy\x1b[2J"
    np.savez(tmp_path / "renamed.npz", **{**export, "meta": np.array(json.dumps(meta))})
    dry = run("import", tmp_path / "renamed.npz", "--memory", tmp_path / "new", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "\x1b" not in dry.output and "(a vmem export of dummy\\x1b[2J, 8-d; 25 rows)" in dry.stdout
    other = run("import", tmp_path / "renamed.npz", "--memory", tmp_path / "memory")  # a memory of "dummy"
    assert other.exit_code != 0 and "\x1b" not in other.output and "vectors of dummy\\x1b[2J" in said(other)
    meta.update(format_version=99, vmem_version="9.0\x1b]0;pwned\x07")
    np.savez(tmp_path / "later.npz", **{**export, "meta": np.array(json.dumps(meta))})
    later = run("import", tmp_path / "later.npz", "--memory", tmp_path / "new")
    assert later.exit_code == 2 and "\x1b" not in later.output
    assert "written by vmem 9.0\\x1b]0;pwned\\x07" in said(later)


def test_the_report_names_a_file_s_labels_escaped_once(tmp_path):
    # A label of the file quoted in the report, and a row skipped for its label, read as `vmem labels` prints a
    # label: repr's escape, escaped again with the line, had read '\\\\u202etac' (a label typed with a backslash)
    open_store(tmp_path / "memory", SPEC).close()
    first = vectors_file(tmp_path / "first.npz", random_unit_vectors(1, 8, seed=1), ["cat"], ["/a/0.jpg"])
    assert run("import", first, "--memory", tmp_path / "memory", "--featurizer", "dummy").exit_code == 0
    theirs = vectors_file(tmp_path / "theirs.npz", random_unit_vectors(2, 8, seed=2), ["\u202etac", "a\nb"],
                          ["/a/0.jpg", "/a/1.jpg"])
    done = run("import", theirs, "--memory", tmp_path / "memory", "--featurizer", "dummy")
    assert done.exit_code == 0, done.output
    assert "  /a/0.jpg: stored 'cat', file '\\u202etac'" in done.stdout.splitlines()
    assert "skipped 1 row: label 'a\\nb' holds the control character '\\n': a label is one line of text" in said(done)
    assert "\\\\" not in done.output


# ------------------------------------------------------------------ choosing, and a dry run


def test_a_dry_run_says_what_would_be_imported_and_writes_nothing(tmp_path):
    path = exported_memory(tmp_path)
    new = run("import", path, "--memory", tmp_path / "new", "--dry-run")
    assert new.exit_code == 0, new.output
    assert new.stdout.startswith(f"would import 25 points from {path} (a vmem export of dummy, 8-d; 25 rows)")
    assert "dry run: nothing was written" in new.stdout and not (tmp_path / "new").exists()
    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(random_unit_vectors(1, 8), ["cat"], ["/data/cats/3.jpg"])
    old = run("import", path, "--memory", tmp_path / "memory", "--dry-run", "--label", "cat")
    assert old.exit_code == 0, old.output
    assert "would import 9 points" in old.stdout and "10 of 25 rows" in old.stdout and "1 already" in old.stdout
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.store.count() == 1 and [e.op for e in mem.history()] == [] and mem.label_names == {}


def test_label_chooses_the_rows_of_one_label(tmp_path):
    path = exported_memory(tmp_path)
    done = run("import", path, "--memory", tmp_path / "memory", "--label", "dog")
    assert done.exit_code == 0, done.output
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.store.label_counts() == {"dog": 15} and mem.label_names == {}  # cat's name stays with cat
    unknown = run("import", path, "--memory", tmp_path / "memory", "--label", "bird")
    assert unknown.exit_code == 2
    assert "Invalid value for --label" in said(unknown) and "no row labelled 'bird'" in said(unknown)


def test_the_encoder_record_is_known_without_its_weights_as_loading_it_gives_it(encoder, lite0):
    from retrieval import featurizer_spec, load_featurizer

    assert featurizer_spec(encoder) == load_featurizer(encoder, "cpu").spec  # a local folder's config, digest
    assert featurizer_spec("efficientnet-lite0") == lite0.spec
    assert featurizer_spec("dinov2-small").dim == 384  # its weights are not on this machine

