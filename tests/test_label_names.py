"""Label names: a memory whose labels are ids (ImageNet's WordNet folders) says what they are.

`vmem build` finds the dataset's names file (classes.tsv, words.txt, LOC_synset_mapping.txt) or takes one,
stores the names with the memory, and every answer carries them as `label_name`: the Python API, the CLI,
HTTP and the page. The re-ranker shows Gemini the names (tests/test_reranker.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eval.datasets import imagenet_wnids
from retrieval import DatasetError, find_label_names_file, imagenet_label_names, open_store, read_label_names
from server import Settings, create_app
from tests._server_fixtures import COLORS, fill_memory, make_memory_images, texture
from tests.conftest import make_image
from vmem import NoSuchLabelsError, VisualMemory
from vmem.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


# ------------------------------------------------------------------ names files


@pytest.mark.parametrize(("file_name", "text"), [
    ("classes.tsv", "n02124075\tEgyptian cat\nn04067472\treel, spool\n"),
    ("LOC_synset_mapping.txt", "n02124075 Egyptian cat\nn04067472 reel, spool\n"),
    ("names.csv", "label,name\nn02124075,Egyptian cat\nn04067472,\"reel, spool\"\n"),
])
def test_names_files_in_the_usual_layouts(tmp_path, file_name, text):
    (tmp_path / file_name).write_text(text, encoding="utf-8")
    # A text file's commas list synonyms, the first kept; a CSV cell is one name, its commas quoted on purpose
    # (a catalogue's "Shirt, blue, XL" had become "Shirt", as had thousands of others).
    second = "reel, spool" if file_name.endswith(".csv") else "reel"
    assert read_label_names(tmp_path / file_name) == {"n02124075": "Egyptian cat", "n04067472": second}


def test_a_names_file_that_is_not_one_is_refused_with_the_line(tmp_path):
    bad = tmp_path / "classes.tsv"
    bad.write_text("n02124075\tEgyptian cat\nn04067472\n")
    with pytest.raises(DatasetError, match=r"classes.tsv:2: expected a label and its name"):
        read_label_names(bad)
    (tmp_path / "latin1.tsv").write_bytes("n1\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_label_names(tmp_path / "latin1.tsv")


def test_the_names_file_is_found_beside_the_dataset_or_above_it(tmp_path):
    (tmp_path / "train" / "n1").mkdir(parents=True)
    assert find_label_names_file(tmp_path / "train") is None
    (tmp_path / "words.txt").write_text("n1\tone\n")
    assert find_label_names_file(tmp_path / "train") == tmp_path / "words.txt"
    (tmp_path / "train" / "classes.tsv").write_text("n1\tuno\n")
    assert find_label_names_file(tmp_path / "train") == tmp_path / "train" / "classes.tsv"
    assert find_label_names_file(tmp_path / "manifest.csv") is None


def test_vmem_names_the_imagenet_1k_classes_itself_telling_the_two_cranes_apart():
    names = imagenet_label_names()
    assert list(names) == imagenet_wnids()  # every class, in the class-index order
    assert names["n01440764"] == "tench" and names["n02012849"] == "crane bird"
    assert names["n03126707"] == "construction crane"


def test_build_of_imagenet_folders_without_a_names_file_uses_vmems_names(tmp_path):
    for wnid, color in (("n01440764", COLORS["red"]), ("n01443537", COLORS["green"])):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "train" / wnid / f"{i}.png").write_bytes(texture(color, seed=i))
    res = run("build", tmp_path / "train", "--memory", tmp_path / "memory", "--featurizer", "efficientnet-lite0",
              "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "label names: 2 of 2 labels named by vmem's ImageNet-1k names" in res.output
    assert "n01443537  goldfish" in run("info", "--memory", tmp_path / "memory").output
    (tmp_path / "train" / "okapi").mkdir()  # a label that is no ImageNet-1k id: not ImageNet, no guessing
    (tmp_path / "train" / "okapi" / "0.png").write_bytes(texture(COLORS["blue"], seed=0))
    again = run("build", tmp_path / "train", "--memory", tmp_path / "memory2", "--featurizer", "efficientnet-lite0",
                "--workers", "0")
    assert again.exit_code == 0 and "label names" not in again.output


def test_vmems_own_names_never_replace_names_a_memory_was_given(tmp_path):
    # Built with curated names, then built again from a list without a names file beside it.
    train = tmp_path / "train" / "n01440764"
    train.mkdir(parents=True)
    for i in range(3):
        (train / f"{i}.png").write_bytes(texture(COLORS["red"], seed=i))
    (tmp_path / "train" / "classes.tsv").write_text("n01440764\tTinca tinca, the tench\n")
    memory = ["--memory", tmp_path / "memory", "--featurizer", "efficientnet-lite0", "--workers", "0"]
    assert run("build", tmp_path / "train", *memory).exit_code == 0
    (tmp_path / "more.csv").write_text(f"path,label\n{train / '0.png'},n01440764\n")
    again = run("build", tmp_path / "more.csv", *memory)
    assert again.exit_code == 0 and "label names" not in again.output
    assert "n01440764  Tinca tinca\n" in run("info", "--memory", tmp_path / "memory").output  # not "tench"
    # Renamed on purpose, then the build run again (a resume): the classes.tsv beside it renames nothing back.
    (tmp_path / "mine.tsv").write_text("n01440764\tMY TENCH\n")
    assert "1 new or changed" not in run("build", tmp_path / "train", *memory, "--label-names",
                                          tmp_path / "mine.tsv").output
    resumed = run("build", tmp_path / "train", *memory)
    assert resumed.exit_code == 0 and "label names" not in resumed.output
    assert "n01440764  MY TENCH\n" in run("info", "--memory", tmp_path / "memory").output


def test_vmem_names_names_labels_from_a_file_without_a_build(tmp_path):
    # Only a build had named labels, and only its dataset's: a class added over HTTP or made by a relabel could
    # not be named from the command line.
    train = tmp_path / "train"
    for label in ("n01440764", "n01443537"):
        (train / label).mkdir(parents=True)
        (train / label / "0.png").write_bytes(make_image((10, 200, 30) if label == "n01440764" else (200, 10, 30),
                                                         fmt="PNG"))
    memory = ("--memory", tmp_path / "memory")
    built = run("build", train, *memory, "--featurizer", "efficientnet-lite0")
    assert built.exit_code == 0
    (tmp_path / "mine.tsv").write_text("n01440764\tMY TENCH\nn99999999\tlater\n")
    named = run("names", tmp_path / "mine.tsv", *memory)
    assert named.exit_code == 0, named.output
    assert "2 names new or changed; the memory names 3 labels, 1 of them not in it yet" in named.output
    assert "n01440764  MY TENCH\n" in run("info", *memory).output
    (tmp_path / "only.tsv").write_text("n01443537\tgoldfish, Carassius auratus\n")
    assert run("names", tmp_path / "only.tsv", *memory, "--replace").exit_code == 0
    listed = run("labels", *memory, "--json").output
    assert '"name": "goldfish"' in listed and "MY TENCH" not in listed
    assert '"label_name": "goldfish"' in listed  # the key every other answer gives it
    (tmp_path / "empty.tsv").write_text("# nothing\n")
    assert run("names", tmp_path / "empty.tsv", *memory).exit_code == 2


# ------------------------------------------------------------------ the Python API


@pytest.fixture
def memory(lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    for label, color in COLORS.items():
        mem.add([texture(color, seed=s) for s in range(3)], [label] * 3)
    yield mem
    mem.close()


def test_forgetting_by_a_name_is_refused_and_says_which_label_it_names(memory):
    # forget takes labels: an unlearning script told "0 points forgotten" reads it as "none left" (in Python it
    # had been a 0 and a logged warning, over HTTP a 200 with a note; the CLI refused it).
    memory.set_label_names({"red": "crimson"})
    with pytest.raises(ValueError, match="has no label 'crimson' \\('crimson' is the name of label red\\): give the"):
        memory.forget(label="crimson")
    assert memory.store.count(label="red") == 3
    with pytest.raises(NoSuchLabelsError, match=r"^the memory has no label 'purple': it has 3 labels"):
        memory.forget(label="purple")  # neither a label nor a name, nor one the memory had: a misspelling


def test_a_name_typed_in_the_other_unicode_form_is_still_a_name(memory):
    # A names file written from a Mac's file names holds "crème" decomposed; a keyboard types it composed, and a
    # relabel to it had made a new class that reads the same as red's name
    import unicodedata

    memory.set_label_names({"red": unicodedata.normalize("NFD", "crème")})
    typed = unicodedata.normalize("NFC", "crème")
    with pytest.raises(ValueError, match="'crème' is the name of label red, not a label of this memory: relabel"):
        memory.relabel(typed, label="green")
    with pytest.raises(ValueError, match="'crème' is the name of label red\\): give the label"):
        memory.forget(label=typed)
    assert memory.store.label_counts() == {"red": 3, "green": 3, "blue": 3}


def test_images_added_under_a_labels_name_are_refused_and_told_the_label(memory):
    # They had made a second, unnamed class "crimson" beside red, and split its votes.
    memory.set_label_names({"red": "crimson"})
    with pytest.raises(ValueError, match="'crimson' is the name of label red, not a label of this memory: add the"):
        memory.add([texture(COLORS["red"], seed=9)], "crimson")
    assert "crimson" not in memory.store.label_counts()
    memory.add([texture(COLORS["red"], seed=9)], "red")  # the label itself, and a new label, are taken
    memory.add([texture((200, 120, 0), seed=1)], "orange")
    # A label named as itself, or named before it has images (a classes.tsv with "cat<TAB>Cat"), is a label.
    memory.set_label_names({"cat": "Cat", "dog": "Dog"})
    memory.add([texture((90, 90, 90), seed=2)], "cat")
    memory.forget(label="cat")
    memory.add([texture((90, 90, 90), seed=2)], "cat")
    assert memory.forget(label="dog") == 0


def test_names_given_again_as_they_are_are_no_edit_and_the_journal_keeps_what_changed(memory):
    # A nightly catalogue sync sends every name each time: each had rewritten vmem.json and journaled every name
    # given (a megabyte an entry at 21,000 names), changed or not.
    names = {f"label{i}": f"name {i}" for i in range(500)} | {"red": "crimson"}
    memory.set_label_names(names)
    journal = memory.store.path / "journal.jsonl"
    size = journal.stat().st_size
    memory.set_label_names(names)
    assert journal.stat().st_size == size and [e.op for e in memory.history()].count("name") == 1
    memory.set_label_names({**names, "red": "scarlet"})
    last = memory.history()[0]
    assert last.op == "name" and last.detail["names"] == {"red": "scarlet"}
    memory.set_label_names({"red": "scarlet", "blue": "navy"}, replace=True)
    last = memory.history()[0]
    assert last.detail["names"] == {"blue": "navy"} and len(last.detail["dropped"]) == 500
    assert memory.history(label="label7")[0] == last  # a dropped name is an edit of its label
    assert memory.label_names == {"red": "scarlet", "blue": "navy"}


def test_classify_names_the_label_and_every_neighbour(memory, tmp_path, lite0):
    memory.set_label_names({"red": "crimson", "green": "emerald"})  # blue stays unnamed
    [res] = memory.classify([texture(COLORS["red"], seed=99)], k=9)
    assert (res.label, res.label_name) == ("red", "crimson")
    named = {n.label: n.label_name for n in res.neighbors}
    assert named == {"red": "crimson", "green": "emerald", "blue": None}
    memory.close()
    with VisualMemory(open_store(tmp_path / "memory"), lite0) as again:  # stored with the memory
        assert again.label_names == {"red": "crimson", "green": "emerald"}
        assert again.stats()["label_names"] == {"red": "crimson", "green": "emerald"}
        again.set_label_names({"blue": "navy"}, replace=True)
        assert again.label_names == {"blue": "navy"}
        with pytest.raises(ValueError, match="empty name for label 'red'"):
            again.set_label_names({"red": "  "})


def test_names_that_could_not_be_saved_are_not_shown_as_set(memory, monkeypatch):
    # A full disk: the service answered 500 for the names, then showed them as set until a restart lost them.
    import errno

    from retrieval.store import EdgeMemoryStore

    memory.set_label_names({"red": "crimson"})

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EdgeMemoryStore, "save_meta", disk_full)
    with pytest.raises(OSError, match="No space left"):
        memory.set_label_names({"red": "scarlet", "blue": "navy"})
    assert memory.label_names == {"red": "crimson"}


def test_a_memory_without_names_answers_as_before(memory):
    [res] = memory.classify([texture(COLORS["blue"], seed=99)], k=3)
    assert res.label == "blue" and res.label_name is None
    assert "label_name" not in res.model_dump(exclude_none=True)


# ------------------------------------------------------------------ vmem build, info, classify


@pytest.fixture
def dataset(tmp_path) -> Path:
    """ImageNet's layout: train/<wnid>/<image>, the wnids' names in classes.tsv beside train/."""
    wnids = {"n01": COLORS["red"], "n02": COLORS["green"], "n03": COLORS["blue"]}
    for wnid, color in wnids.items():
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "train" / wnid / f"{i}.png").write_bytes(texture(color, seed=i))
        (tmp_path / "val" / wnid / "q.jpg").write_bytes(make_image(color, size=(40, 30)))
    (tmp_path / "classes.tsv").write_text("n01\tred fox\nn02\tgreen mamba\nn03\tblue jay\nn99\tnot in the data\n")
    return tmp_path


def test_build_finds_the_names_and_every_command_shows_them(dataset, tmp_path):
    memory = tmp_path / "memory"
    built = run("build", dataset / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
                "--workers", "0")
    assert built.exit_code == 0, built.output
    assert f"label names: 3 of 3 labels named by {dataset / 'classes.tsv'}" in built.output
    info = run("info", "--memory", memory)
    assert "n01  red fox" in info.output and "n99" not in info.output  # only the memory's labels are kept
    assert "labels     3 (3 named)" in info.output
    assert json.loads(run("info", "--memory", memory, "--json").output)["label_names"] == {
        "n01": "red fox", "n02": "green mamba", "n03": "blue jay"}
    out = run("classify", dataset / "val", "--memory", memory, "--k", "3", "--json")
    answers = {Path(a["source"]).parent.name: a for a in map(json.loads, out.output.splitlines())}
    assert answers["n02"]["label"] == "n02" and answers["n02"]["label_name"] == "green mamba"
    assert {n["label_name"] for n in answers["n02"]["neighbors"]} <= {"red fox", "green mamba", "blue jay"}
    text = run("classify", dataset / "val" / "n03" / "q.jpg", "--memory", memory, "--k", "3")
    assert "\tn03 (blue jay)\t(blue jay 0." in text.output  # the vote's shares by name


def test_a_label_filter_given_a_name_says_which_label_it_names(dataset, tmp_path):
    memory = tmp_path / "memory"
    assert run("build", dataset / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
               "--workers", "0").exit_code == 0
    # A manifest labelled by name, built into the memory: refused before anything is added.
    (tmp_path / "by-name.csv").write_text(f"path,label\n{dataset / 'val' / 'n03' / 'q.jpg'},blue jay\n")
    by_name = run("build", tmp_path / "by-name.csv", "--memory", memory)
    assert by_name.exit_code == 2 and "'blue jay' is the name of label n03" in by_name.output, by_name.output
    # A name for a label is a mistake in the command (an unlearning script had been told "forgot 0", exit 0);
    # a label no longer there is still nothing to do.
    forgot = run("forget", "--memory", memory, "--label", "blue jay")
    assert forgot.exit_code == 2 and "forgot" not in forgot.output
    assert "the memory has no label 'blue jay' ('blue jay' is the name of label n03): give the label" in forgot.output
    gone = run("forget", "--memory", memory, "--label", "n07")
    assert gone.exit_code == 0 and "forgot 0 points" in gone.output
    history = run("history", "--memory", memory, "--label", "blue jay")
    assert history.exit_code == 2 and "'blue jay' is the name of label n03" in history.output
    res = run("classify", dataset / "val", "--memory", memory, "--label", "Blue Jay")
    assert res.exit_code == 2
    assert "the memory has no label 'Blue Jay' ('Blue Jay' is the name of label n03): it has 3 labels" in res.output
    assert run("classify", dataset / "val", "--memory", memory, "--label", "n03").exit_code == 0


def test_names_given_later_rename_without_re_embedding(dataset, tmp_path):
    memory = tmp_path / "memory"
    (dataset / "classes.tsv").unlink()
    assert run("build", dataset / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
               "--workers", "0").exit_code == 0
    assert json.loads(run("info", "--memory", memory, "--json").output)["label_names"] == {}
    names = tmp_path / "names.csv"
    names.write_text("label,name\nn01,fox\nn02,mamba\n")
    again = run("build", dataset / "train", "--memory", memory, "--label-names", names)
    assert again.exit_code == 0, again.output
    assert "0 added, 9 already in memory" in again.output and "label names: 2 of 3 labels named" in again.output
    assert "n02  mamba" in run("info", "--memory", memory).output


def test_a_names_file_given_must_name_the_datasets_labels(dataset, tmp_path):
    other = tmp_path / "other.tsv"
    other.write_text("cat\tkitty\n")
    res = run("build", dataset / "train", "--memory", tmp_path / "memory", "--label-names", other)
    assert res.exit_code == 2 and "names none of the dataset's 3 labels (e.g. 'n01'; it names 'cat'" in res.output
    assert not (tmp_path / "memory").exists()  # refused before a memory was made


def test_a_found_file_that_is_no_names_file_is_skipped_with_a_note(dataset, tmp_path):
    (dataset / "classes.tsv").write_text("just one word per line\nn01\n")
    res = run("build", dataset / "train", "--memory", tmp_path / "memory", "--featurizer", "efficientnet-lite0",
              "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "is not readable as one" in res.output and "labels stay unnamed" in res.output


# ------------------------------------------------------------------ HTTP and the page


def test_http_answers_and_stats_carry_the_names(tmp_path, lite0):
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names({"red": "crimson", "green": "emerald", "blue": "navy"})
    app_ = create_app(Settings(memory=":memory:", auth_disabled=True, thumbnail_dir=tmp_path / "thumbs"), memory=mem)
    with TestClient(app_) as client:
        resp = client.post("/v1/classify?k=6", files={"image": ("q.png", texture(COLORS["green"], seed=7))})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["label"], body["label_name"]) == ("green", "emerald")
        assert body["label_names"] == {lab: {"red": "crimson", "green": "emerald", "blue": "navy"}[lab]
                                       for lab in body["scores"]}
        assert all(n["label_name"] for n in body["neighbors"])
        assert client.get("/v1/memory/stats").json()["label_names"] == {
            "red": "crimson", "green": "emerald", "blue": "navy"}
        by_name = client.post("/v1/classify?label=navy", files={"image": ("q.png", texture(COLORS["blue"], seed=7))})
        assert by_name.status_code == 422
        assert "'navy' is the name of label blue" in by_name.json()["detail"]
        added = client.post("/v1/memory", data={"label": "navy"},
                            files=[("images", ("b.png", texture(COLORS["blue"], seed=8), "image/png"))])
        assert added.status_code == 422 and "'navy' is the name of label blue" in added.json()["detail"]
        assert not list((tmp_path / "thumbs").rglob("*.jpg"))  # refused before a thumbnail was kept
        taken = client.post("/v1/memory", data={"label": "blue"},
                            files=[("images", ("b.png", texture(COLORS["blue"], seed=8), "image/png"))])
        assert taken.status_code == 201 and taken.json()["added"][0]["label_name"] == "navy"


def test_a_class_added_over_http_or_from_python_as_an_imagenet_id_is_named_as_a_build_names_it(tmp_path, lite0):
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    mem.set_label_names({"n01440764": "Tinca tinca"})  # named on purpose before its images come: kept
    mem.add([texture(COLORS["red"], seed=30)], "n01440764")
    mem.add([texture(COLORS["red"], seed=31)], "okapi")  # no ImageNet-1k id: no guessing
    assert mem.label_names == {"n01440764": "Tinca tinca"}
    app_ = create_app(Settings(memory=":memory:", auth_disabled=True, thumbnail_dir=tmp_path / "thumbs"), memory=mem)
    with TestClient(app_) as client:
        added = client.post("/v1/memory", data={"label": "n02123045"},
                            files=[("images", ("cat.png", texture(COLORS["green"], seed=40), "image/png"))])
        assert added.status_code == 201 and added.json()["added"][0]["label_name"] == "tabby cat"
        answer = client.post("/v1/classify?k=1", files={"image": ("q.png", texture(COLORS["green"], seed=40))})
        assert (answer.json()["label"], answer.json()["label_name"]) == ("n02123045", "tabby cat")
        assert 'vmem_memory_edits_total{op="name"} 1.0' in client.get("/metrics").text  # an edit, counted
    assert [e.op for e in mem.history(limit=2)] == ["name", "add"]  # the naming is an edit of its own, journaled
    assert mem.history(limit=1)[0].detail["names"] == {"n02123045": "tabby cat"}
    # A class made by a relabel is named so too; one the memory held unnamed (a build that left it so) stays so.
    mem.relabel("n01443537", label="okapi")
    assert mem.label_names["n01443537"] == "goldfish"
    mem.add([texture(COLORS["blue"], seed=32)], "n01530575")  # as a build of a mixed folder leaves it: unnamed
    mem.set_label_names({}, replace=True)
    mem.add([texture(COLORS["blue"], seed=33)], "n01530575")
    assert mem.label_names == {}


# ------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_tiny_imagenet_names_every_class_by_its_classes_tsv(tiny_imagenet):
    found = find_label_names_file(tiny_imagenet / "train")
    assert found == tiny_imagenet / "classes.tsv"
    names = read_label_names(found)
    wnids = [p.name for p in (tiny_imagenet / "train").iterdir() if p.is_dir()]
    assert len(wnids) == 202 and all(names.get(w) for w in wnids)
    assert names["n02124075"] == "Egyptian cat"


def test_http_names_labels_with_the_key_and_answers_follow_at_once(tmp_path, lite0):
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    settings = Settings(memory=":memory:", api_key="secret-key-for-tests-123", thumbnail_dir=tmp_path / "thumbs")
    app_ = create_app(settings, memory=mem)
    query = {"image": ("q.png", texture(COLORS["green"], seed=7))}
    with TestClient(app_) as client:
        assert client.post("/v1/classify?k=3", files=query).json()["label_name"] is None  # now cached
        names = {"names": {"green": "emerald", "red": "crimson"}}
        assert client.put("/v1/memory/label-names", json=names).status_code == 401
        key = {"X-API-Key": "secret-key-for-tests-123"}
        done = client.put("/v1/memory/label-names", json=names, headers=key)
        assert done.status_code == 200 and done.json()["label_names"] == {"green": "emerald", "red": "crimson"}
        again = client.post("/v1/classify?k=3", files=query).json()
        assert (again["label_name"], again["cached"]) == ("emerald", False)  # no cached answer with old names
        assert 'vmem_memory_edits_total{op="name"} 2.0' in client.get("/metrics").text
        assert client.put("/v1/memory/label-names", json=names, headers=key).status_code == 200  # sent again
        assert 'vmem_memory_edits_total{op="name"} 2.0' in client.get("/metrics").text  # as they were: no edit
        replaced = client.put("/v1/memory/label-names", json={"names": {"blue": "navy"}, "replace": True},
                              headers=key).json()
        assert replaced["label_names"] == {"blue": "navy"}
        assert 'vmem_memory_edits_total{op="name"} 5.0' in client.get("/metrics").text  # blue named, two unnamed
        blank = client.put("/v1/memory/label-names", json={"names": {"blue": " "}}, headers=key)
        assert blank.status_code == 422
        # A separator control character: no space to the schema's pattern (Python strips it as one), and a
        # control character all the same.
        blank = client.put("/v1/memory/label-names", json={"names": {"blue": "\x1c"}}, headers=key)
        assert blank.status_code == 422 and "control character '\\x1c'" in blank.json()["detail"]


def test_naming_labels_keeps_the_novelty_thresholds_and_relabelling_recalibrates(tmp_path, lite0, caplog):
    images = make_memory_images(tmp_path / "images", lite0)
    mem = fill_memory(":memory:", lite0, images)
    settings = Settings(memory=":memory:", api_key="secret-key-for-tests-123", thumbnail_dir=tmp_path / "thumbs")
    key = {"X-API-Key": "secret-key-for-tests-123"}
    query = {"image": ("q.png", texture(COLORS["green"], seed=7))}

    def calibrations() -> int:
        return sum("novelty threshold at k=" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="server.service"), TestClient(create_app(settings, memory=mem)) as client:
        client.post("/v1/classify?k=3", files=query)
        before = calibrations()
        client.put("/v1/memory/label-names", json={"names": {"green": "emerald"}}, headers=key)
        named = client.post("/v1/classify?k=3", files=query).json()
        assert named["label_name"] == "emerald" and calibrations() == before  # names change no novelty
        client.post("/v1/memory/relabel", json={"label": "red", "to": "blue"}, headers=key)
        client.post("/v1/classify?k=3", files=query)
        deadline = time.monotonic() + 30  # recalibrated in the background, the earlier threshold answered meanwhile
        while calibrations() == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calibrations() > before  # the points changed: calibrated again
    mem.close()


def test_a_label_starting_with_a_hash_is_named_and_a_comment_line_is_skipped(tmp_path):
    names = tmp_path / "classes.tsv"
    names.write_text("# labels of the hashtag dataset\n#cats\tcats on the internet\ndogs\tdogs\n", encoding="utf-8")
    assert read_label_names(names) == {"#cats": "cats on the internet", "dogs": "dogs"}


def test_a_names_file_that_cannot_be_read_is_said_so_under_its_own_option(tmp_path):
    # Refused as Python's text, "[Errno 2] No such file or directory: '/data/classes.tsv'", and by vmem eval under
    # --dataset: a user checked the dataset's folder for a file that was the --classes one. Now each names its
    # option and says why in words: "cannot read FILE (No such file or directory)"
    dataset = tmp_path / "val"
    (dataset / "n01443537").mkdir(parents=True)
    (dataset / "n01443537" / "a.png").write_bytes(make_image(fmt="PNG"))
    missing = tmp_path / "classes.tsv"
    for args, option, why in [
            (["names", missing, "--memory", tmp_path / "memory"], "FILE", "No such file or directory"),
            (["eval", "--dataset", dataset, "--classes", missing, "--memory", tmp_path / "memory"], "--classes",
             "No such file or directory"),
            (["build", dataset, "--memory", tmp_path / "memory", "--label-names", tmp_path], "--label-names",
             "Is a directory")]:
        refused = run(*args)
        said = " ".join(refused.output.replace("│", " ").split())
        name = missing if option != "--label-names" else tmp_path
        assert refused.exit_code == 2 and f"Invalid value for {option}: cannot read {name} ({why})" in said, said
        assert "Errno" not in said
    assert not (tmp_path / "memory").exists()


def test_names_by_the_thousand_are_counted_as_every_other_count_is(tmp_path):
    # "1200 names new or changed; the memory names 1202 labels" and a history line of "1200 names", where every
    # other count vmem says reads "1,200"
    from tests.test_copy import make_memory

    make_memory(tmp_path / "memory").close()  # names cat and fox
    (tmp_path / "many.tsv").write_text("".join(f"n{i:08d}\tclass {i}\n" for i in range(1200)))
    named = run("names", tmp_path / "many.tsv", "--memory", tmp_path / "memory")
    assert named.exit_code == 0, named.output
    assert ("1,200 names new or changed; the memory names 1,202 labels, 1,200 of them not in it yet"
            in named.output), named.output
    assert "\tname\t1,200 names\t" in run("history", "--memory", tmp_path / "memory").output
