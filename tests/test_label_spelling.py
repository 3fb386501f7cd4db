"""One label, however a person or a file system spells it: Unicode NFC or NFD, with or without outer spaces."""

from __future__ import annotations

import json
import unicodedata

import pytest
from typer.testing import CliRunner

from reranker._prompt import ShownLabels
from retrieval import open_store, scan_imagefolder
from retrieval.text import canonical_label
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests.conftest import make_image
from vmem import VisualMemory
from vmem.cli import app

COMPOSED = unicodedata.normalize("NFC", "café")  # keyboards, browsers, most editors
DECOMPOSED = unicodedata.normalize("NFD", "café")  # macOS file names: e + a combining accent


def test_the_two_spellings_read_the_same_and_are_different_strings():
    assert COMPOSED != DECOMPOSED and canonical_label(DECOMPOSED) == canonical_label(f" {COMPOSED} ") == COMPOSED


@pytest.fixture
def dataset(tmp_path):
    """A folder from a Mac (NFD) and one with outer spaces, each holding two images."""
    for folder, colour in ((DECOMPOSED, (120, 70, 30)), (" padded ", (30, 40, 220))):
        (tmp_path / "train" / folder).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "train" / folder / f"{i}.png").write_bytes(make_image((colour[0] - 9 * i, *colour[1:]),
                                                                              fmt="PNG"))
    return tmp_path


def test_folders_become_canonical_labels(dataset):
    assert sorted({it.label for it in scan_imagefolder(dataset / "train")}) == [COMPOSED, "padded"]


def test_a_built_memory_answers_to_either_spelling(dataset, tmp_path):
    memory = tmp_path / "memory"
    built = CliRunner().invoke(app, ["build", str(dataset / "train"), "--memory", str(memory),
                                     "--featurizer", "efficientnet-lite0", "--workers", "0"])
    assert built.exit_code == 0, built.output
    # A query folder typed on Linux (NFC) holds the truth for images of the Mac's folder
    (dataset / "query" / COMPOSED).mkdir(parents=True)
    (dataset / "query" / COMPOSED / "q.png").write_bytes(make_image((120, 70, 30), fmt="PNG"))
    scored = CliRunner().invoke(app, ["classify", str(dataset / "query"), "--memory", str(memory), "--k", "3",
                                      "--truth-from-dirs"])
    assert scored.exit_code == 0, scored.output
    assert "accuracy 100.00% (1/1)" in scored.output
    relabelled = CliRunner().invoke(app, ["relabel", "--memory", str(memory), "--label", " padded ",
                                          "--to", DECOMPOSED])
    assert relabelled.exit_code == 0, relabelled.output
    assert "(a new label)" not in relabelled.output and "it now has 4" in relabelled.output  # one class, merged


def test_an_older_memory_s_decomposed_label_is_found_by_the_composed_one(lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    # As a build before labels were canonical stored a Mac's folder
    mem.store.add(lite0.embed([make_image((120, 70, 30)), make_image((30, 40, 220))]), [DECOMPOSED, "sea"],
                  ["/old/a.png", "/old/b.png"])
    assert mem.stored_label(COMPOSED) == DECOMPOSED and mem.unknown_labels([COMPOSED]) == []
    assert [p.label for p in mem.points(label=COMPOSED).points] == [DECOMPOSED]
    [res] = mem.classify([make_image((30, 40, 220))], k=2, labels=[COMPOSED])
    assert res.label == DECOMPOSED
    mem.add([make_image((110, 60, 30))], COMPOSED, sources=["/new/c.png"])  # joins the label it has
    assert mem.store.label_counts() == {DECOMPOSED: 2, "sea": 1}
    assert mem.forget(label=f"{COMPOSED} ") == 2
    mem.close()


def test_a_model_answering_in_the_other_spelling_names_the_label():
    shown = ShownLabels(None, [DECOMPOSED, "tea"])
    assert shown.label(COMPOSED) == shown.label(f" {DECOMPOSED}") == DECOMPOSED
    assert shown.label("coffee") is None


def test_a_build_into_an_older_memory_keeps_its_decomposed_label(dataset, lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    first = str((dataset / "train" / DECOMPOSED / "0.png").resolve())
    mem.store.add(lite0.embed([first]), [DECOMPOSED], [first])  # as an older build stored it
    mem.close()
    built = CliRunner().invoke(app, ["build", str(dataset / "train"), "--memory", str(tmp_path / "memory"),
                                     "--workers", "0"])
    assert built.exit_code == 0, built.output
    assert "another label" not in built.output  # the stored image is no relabel
    with VisualMemory.open(str(tmp_path / "memory")) as mem:
        assert mem.store.label_counts() == {DECOMPOSED: 2, "padded": 2}


def test_a_label_with_a_tab_or_newline_stays_in_its_field_of_the_text_outputs(lite0, tmp_path):
    # From folders so named (add and relabel refuse such labels, as HTTP does; a dataset may still hold them)
    for label, colour in (("tab\there", (200, 30, 30)), ("new\nline", (30, 40, 220))):
        (tmp_path / "train" / label).mkdir(parents=True)
        (tmp_path / "train" / label / "0.png").write_bytes(make_image(colour, fmt="PNG"))
    runner = CliRunner()
    built = runner.invoke(app, ["build", str(tmp_path / "train"), "--memory", str(tmp_path / "memory"),
                                "--featurizer", "efficientnet-lite0"])
    assert built.exit_code == 0, built.output
    for command in (["labels"], ["points"], ["history"]):
        out = runner.invoke(app, [*command, "--memory", str(tmp_path / "memory")])
        assert out.exit_code == 0, out.output
        lines = out.stdout.splitlines()
        assert "tab\\there" in out.stdout and "new\\nline" in out.stdout, out.stdout
        assert len({line.count("\t") for line in lines if "here" in line or "line" in line}) == 1, lines


def test_a_source_prefix_typed_in_the_other_spelling_finds_the_mac_s_files(dataset, tmp_path, lite0):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    files = sorted((dataset / "train" / DECOMPOSED).glob("*.png"))
    mem.add([str(f) for f in files], "coffee")  # stored under the decomposed folder's name
    typed = str(dataset / "train" / COMPOSED)  # as a keyboard writes it: another name on Linux
    assert len(mem.points(source_prefix=typed).points) == 2
    assert mem.relabel("espresso", source_prefix=typed) == 2
    assert [e.op for e in mem.history(source=f"{typed}/0.png")] == ["relabel"]
    assert mem.forget(source_prefix=typed) == 2
    assert [e.op for e in mem.history(source=f"{typed}/0.png")] == ["forget", "relabel"]  # gone, still found
    mem.close()


def test_a_memory_holding_both_spellings_chooses_each_by_its_own(lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    images = [make_image((120 - 5 * i, 70, 30)) for i in range(5)]
    # An older vmem split the class: two points decomposed (a Mac's folder), three composed
    mem.store.add(lite0.embed(images), [DECOMPOSED] * 2 + [COMPOSED] * 3, [f"/old/{i}.png" for i in range(5)])
    assert mem.stored_labels([DECOMPOSED, COMPOSED]) == [DECOMPOSED, COMPOSED]
    assert len(mem.points(label=DECOMPOSED).points) == 2 and len(mem.points(label=COMPOSED).points) == 3
    assert mem.relabel(COMPOSED, label=DECOMPOSED) == 2  # merged, as a user would mend the split
    assert mem.store.label_counts() == {COMPOSED: 5}
    mem.close()


def test_a_resumed_build_keeps_a_folder_label_stored_with_its_outer_spaces(dataset, lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    first = str((dataset / "train" / " padded " / "0.png").resolve())
    mem.store.add(lite0.embed([first]), [" padded "], [first])  # as a build before labels were stripped
    mem.close()
    built = CliRunner().invoke(app, ["build", str(dataset / "train"), "--memory", str(tmp_path / "memory"),
                                     "--workers", "0"])
    assert built.exit_code == 0, built.output
    assert "another label" not in built.output
    with VisualMemory.open(str(tmp_path / "memory")) as mem:
        assert mem.store.label_counts() == {COMPOSED: 2, " padded ": 2}


def test_an_older_decomposed_memory_is_scored_named_and_evaluated_by_either_spelling(lite0, tmp_path):
    from eval.datasets import EvalDataset, EvalImage, align_labels

    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.store.add(lite0.embed([make_image((120, 70, 30)), make_image((30, 40, 220))]), [DECOMPOSED, "sea"],
                  ["/old/a.png", "/old/b.png"])
    mem.set_label_names({COMPOSED: "coffee"})  # a names file read canonically
    assert mem.label_names == {DECOMPOSED: "coffee"}
    mem.close()
    # --truth-from-dirs: a query folder of either spelling is the class
    for folder in (COMPOSED, DECOMPOSED):
        (tmp_path / "q" / folder).mkdir(parents=True)
        (tmp_path / "q" / folder / "x.png").write_bytes(make_image((120, 70, 30), fmt="PNG"))
    scored = CliRunner().invoke(app, ["classify", str(tmp_path / "q"), "--memory", str(tmp_path / "memory"),
                                      "--k", "1", "--truth-from-dirs"])
    assert scored.exit_code == 0 and "accuracy 100.00% (2/2)" in scored.output, scored.output
    # eval: the dataset's canonical label is the memory's spelling
    data = EvalDataset("q", "imagefolder", [EvalImage("/q/x.png", COMPOSED, (COMPOSED,))], [COMPOSED])
    assert align_labels(data, [DECOMPOSED, "sea"], None).items[0].label == DECOMPOSED


def test_a_path_typed_in_another_case_is_spelled_as_a_case_insensitive_disk_lists_it(tmp_path, monkeypatch):
    # On a Mac `~/Data` opens `~/data`: a build resumed under the other spelling added every image again, and a
    # forget under it chose nothing (checked on a case-insensitive FUSE mount). Here the disk's lookups are made
    # case-insensitive, as APFS's are; the folder lists the names as they were made.
    import os

    from retrieval.files import on_disk_spelling

    (tmp_path / "Data" / "cats").mkdir(parents=True)
    real_lexists = os.path.lexists

    def case_insensitive(path) -> bool:
        here, parts = "/", os.path.abspath(path).split("/")[1:]
        for part in parts:
            names = os.listdir(here) if os.path.isdir(here) else []
            found = [n for n in names if n.casefold() == part.casefold()]
            if not found:
                return False
            here = os.path.join(here, found[0])
        return real_lexists(here)

    monkeypatch.setattr(os.path, "lexists", case_insensitive)
    assert on_disk_spelling(tmp_path / "data" / "CATS") == str(tmp_path / "Data" / "cats")
    assert on_disk_spelling(str(tmp_path / "Data" / "cats")) == str(tmp_path / "Data" / "cats")  # as given
    assert on_disk_spelling(tmp_path / "nowhere") == str(tmp_path / "nowhere")


def test_a_terminal_that_is_not_utf8_is_shown_every_label_escaped(lite0, tmp_path):
    # A Latin-1 terminal or pipe (LANG=de_DE.ISO-8859-1): a label it cannot show ended the command in a traceback.
    # It is written escaped as JSON escapes text, so that `--json` stays JSON; what Latin-1 holds is written so.
    import json
    import os
    import subprocess
    import sys

    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.add([make_image((200, 30, 30)), make_image((30, 200, 30)), make_image((120, 70, 30))],
            ["猫", "🐱", COMPOSED], sources=["/a.png", "/b.png", "/c.png"])
    mem.close()
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    for command in (["labels"], ["labels", "--json"]):
        out = subprocess.run([sys.executable, "-m", "vmem", *command, "--memory", str(tmp_path / "memory")],
                             capture_output=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr.decode("latin-1")
        text = out.stdout.decode("latin-1")
        if "--json" in command:
            assert {json.loads(line)["label"] for line in text.splitlines()} == {"猫", "🐱", COMPOSED}
        else:
            assert "\\u732b" in text and "\\ud83d\\udc31" in text and COMPOSED in text, text


def test_a_memory_whose_locale_is_not_utf8_reads_its_names_as_written(lite0, tmp_path):
    # vmem.json is written in UTF-8, and was read in the locale's encoding: under an ASCII locale (LC_ALL=C without
    # Python's UTF-8 mode) a memory naming a label 猫 was "corrupt (not UTF-8 text)", and under a Latin-1 one
    # (LANG=de_DE.ISO-8859-1) its names read as mojibake, written back so by the next edit of the metadata.
    import os
    import subprocess
    import sys

    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.add([make_image((200, 30, 30))], ["n02123045"], sources=["/a.png"])
    mem.set_label_names({"n02123045": f"猫 {COMPOSED}"}, replace=False)
    mem.close()
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    out = subprocess.run([sys.executable, "-m", "vmem", "labels", "--json", "--memory", str(tmp_path / "memory")],
                         capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr.decode("utf-8", "replace")
    assert json.loads(out.stdout)["name"] == f"猫 {COMPOSED}"


def test_info_and_suspects_write_labels_and_folders_as_the_other_outputs_do(lite0, tmp_path):
    # `vmem info` showed a folder 猫 the build read as /.../\u732b, and `suspects --json` escaped what
    # `classify --json`, `points --json` and `labels --json` write as it is.
    for label, colour in (("猫", (200, 30, 30)), ("🐱", (190, 40, 30)), (COMPOSED, (30, 40, 220))):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "train" / label / f"{i}.png").write_bytes(make_image((colour[0] - 9 * i, *colour[1:]),
                                                                             fmt="PNG"))
    runner, memory = CliRunner(), str(tmp_path / "memory")
    built = runner.invoke(app, ["build", str(tmp_path / "train" / "猫"), "--label", "猫", "--memory", memory,
                                "--featurizer", "efficientnet-lite0", "--workers", "0"])
    assert built.exit_code == 0, built.output
    for label in ("🐱", COMPOSED):
        assert runner.invoke(app, ["build", str(tmp_path / "train" / label), "--label", label, "--memory", memory,
                                   "--workers", "0"]).exit_code == 0
    info = runner.invoke(app, ["info", "--memory", memory])
    assert f'"{tmp_path / "train" / "猫"}"' in info.stdout, info.stdout
    as_json = runner.invoke(app, ["info", "--json", "--memory", memory])
    assert '"猫": 2' in as_json.stdout and '"🐱": 2' in as_json.stdout, as_json.stdout
    suspects = runner.invoke(app, ["suspects", "--json", "--min-share", "0", "--k", "3", "--memory", memory])
    assert suspects.exit_code == 0 and suspects.stdout, suspects.output
    assert all(line.count('"label": "') == 1 and "\\u" not in line for line in suspects.stdout.splitlines())
