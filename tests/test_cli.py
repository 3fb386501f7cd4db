"""The `vmem` CLI end to end on a small ImageFolder: build, classify, forget, info."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, Preprocessing, open_store, point_id_for
from tests.conftest import make_image, make_scene, random_unit_vectors, reencoded
from vmem import VisualMemory
from vmem.cli import app

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """ROOT/<label>/<image>: 3 labels x 4 shades, one corrupt file, and held-out queries."""
    root = tmp_path_factory.mktemp("data")
    for label, (r, g, b) in COLOURS.items():
        (root / "train" / label).mkdir(parents=True)
        (root / "query" / label).mkdir(parents=True)
        for i in range(4):
            shade = (max(0, r - 12 * i), max(0, g - 12 * i), max(0, b - 12 * i))
            (root / "train" / label / f"{i}.png").write_bytes(make_image(shade, fmt="PNG"))
        (root / "query" / label / "q.jpg").write_bytes(make_image((r, g, b), size=(40, 30)))
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def built(image_folder, tmp_path_factory):
    memory = tmp_path_factory.mktemp("mem") / "memory"
    result = CliRunner().invoke(app, ["build", str(image_folder / "train"), "--memory", str(memory),
                                      "--featurizer", "efficientnet-lite0", "--batch-size", "8", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return memory, result


# What `vmem serve` serves with: replaced, it is asked what it would have served
RUN_UVICORN = "vmem.cli.serve.run_uvicorn"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})  # no wrapped error boxes


def test_build_reports_added_and_skipped_corrupt_images(built):
    _, result = built
    assert "12 added, 0 already in memory, 1 failed of 13 images" in result.output
    assert "broken.jpg: not a recognised image format" in result.output
    assert result.output.count("broken.jpg") == 1  # named once, not again inside the reason
    # the summary on stdout, the skipped image on stderr (as classify's): a script reads stdout alone
    assert "1 failed of 13 images" in result.stdout and "broken.jpg" in result.stderr
    assert "broken.jpg" not in result.stdout


def test_build_is_resumable_and_idempotent(built, image_folder):
    memory, _ = built
    again = run("build", image_folder / "train", "--memory", memory, "--workers", "0")
    assert again.exit_code == 0
    assert "0 added, 12 already in memory, 1 failed" in again.output
    assert "memory now holds 12 points" in again.output


def test_a_build_run_again_says_which_images_had_been_forgotten_and_can_leave_them_out(built, image_folder,
                                                                                      tmp_path):
    # An image forgotten (a person's photo, on request) came back with the next build of its folder, unsaid.
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    gone = image_folder / "train" / "red" / "0.png"
    assert run("forget", "--memory", memory, "--source", gone).exit_code == 0
    again = run("build", image_folder / "train", "--memory", memory, "--workers", "0")
    assert again.exit_code == 0, again.output
    assert "1 added, 11 already in memory" in again.stdout
    assert (f"1 listed image had been forgotten from this memory (vmem history --source PATH): added again; build "
            f"with --skip-forgotten to leave such images out:\n  {gone}\n") in again.stdout
    assert run("forget", "--memory", memory, "--source", gone).exit_code == 0
    left_out = run("build", image_folder / "train", "--memory", memory, "--workers", "0", "--skip-forgotten")
    assert "0 added, 11 already in memory" in left_out.stdout and "left out, as asked" in left_out.stdout
    assert "memory now holds 11 points" in left_out.stdout


def test_a_folder_of_one_class_is_added_under_the_label_given(built, image_folder, tmp_path):
    # A new class arrives as a folder of its images: there had been no way to add it but a parent folder or a CSV.
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    shutil.copytree(image_folder / "train" / "red", tmp_path / "arrived")  # other files: other points
    refused = run("build", tmp_path / "arrived", "--memory", memory)
    assert refused.exit_code == 2 and "vmem build FOLDER --label LABEL" in refused.output
    added = run("build", tmp_path / "arrived", "--memory", memory, "--label", "crimson", "--workers", "0")
    assert added.exit_code == 0, added.output
    assert "4 added, 0 already in memory, 1 failed of 5 images" in added.stdout  # broken.jpg is listed, as ever
    one = run("build", image_folder / "query" / "red" / "q.jpg", "--memory", memory, "--label", "scarlet")
    assert one.exit_code == 0 and "1 added" in one.stdout and "1 image in 1 label" in one.stderr
    assert "4\tcrimson\t\n" in run("labels", "--memory", memory).stdout


def test_a_new_class_of_too_few_images_beside_fuller_ones_is_said_to_be_outvoted(tiny_imagenet, tmp_path):
    # A memory of 100 images a class answered a class added with 1 image for 0.7 % of its queries at the default
    # k = 50 (docs/results/eval.md, "Adding a class with a few images"), and nothing had said so.
    train = tiny_imagenet / "train"
    old, new = "n01443537", "n01629819"
    (tmp_path / "set" / old).mkdir(parents=True)
    for image in sorted((train / old).iterdir())[:6]:
        (tmp_path / "set" / old / image.name).symlink_to(image)
    memory = tmp_path / "memory"
    built = run("build", tmp_path / "set", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0")
    assert built.exit_code == 0 and "note:" not in built.output  # one label alone wins every vote
    new_images = sorted((train / new).iterdir())[:3]
    one = run("build", new_images[0], "--memory", memory, "--label", new, "--workers", "0")
    # The label called by its name too (vmem's ImageNet names, here), as answers call it
    said = (f"note: label '{new}' (fire salamander) has 1 point, fewer than the 3 it takes to win a rank vote of "
            "k = 50 neighbours against a fuller class near it: add images of it, or classify with k = 2 or less")
    assert one.exit_code == 0 and said in one.stderr and "1 added" in one.stdout
    assert said in run("info", "--memory", memory).stderr
    [few] = json.loads(run("info", "--memory", memory, "--json").stdout)["few_points"]
    assert (few["label"], few["label_name"], few["points"], few["needed"], few["k"], few["rule"],
            few["k_that_fits"]) == (new, "fire salamander", 1, 3, 50, "rank", 2)
    with VisualMemory.open(memory) as mem:  # tuned to k = 2 (vmem tune), its 1 point wins: no note
        mem.store_vote_settings({"rule": "rank", "k": 2})
        assert mem.few_point_labels() == []
        mem.reset_vote_settings()
    # Two more images of it: enough to win against the 6 of the other label
    for image in new_images[1:]:
        (tmp_path / "more" / new).mkdir(parents=True, exist_ok=True)
        (tmp_path / "more" / new / image.name).symlink_to(image)
    grown = run("build", tmp_path / "more", "--memory", memory, "--workers", "0")
    assert grown.exit_code == 0 and "2 added" in grown.stdout and "note:" not in grown.output
    assert json.loads(run("info", "--memory", memory, "--json").stdout)["few_points"] == []


def test_info_shows_a_memory_whose_tuned_vote_this_vmem_cannot_read(tmp_path):
    # A memory tuned by a newer vmem, or handed over with its vmem.json edited: info is where to see its settings
    memory = tmp_path / "memory"
    store = open_store(memory, FeaturizerSpec(name="test-encoder", dim=16,
                                              preprocessing=Preprocessing(resize=256, crop=224)))
    store.add(random_unit_vectors(3, 16, seed=1), ["cat", "cat", "dog"], ["/a/1.jpg", "/a/2.jpg", "/a/3.jpg"])
    with store.meta_edit() as meta:
        meta.settings["vote"] = {"rule": "majority", "k": 7}
    store.close()
    shown = run("info", "--memory", memory)
    assert shown.exit_code == 0, shown.output
    assert '"vote": {"rule": "majority", "k": 7}' in shown.stdout
    assert json.loads(run("info", "--memory", memory, "--json").stdout)["few_points"] == []
    # Classify says what is wrong and how to mend it (it had blamed --rule, an option no one gave)
    unreadable = r"tuned vote settings .* cannot be read by this vmem: rule: .*vmem tune --reset"
    with VisualMemory(open_store(memory), reranker=None) as mem, pytest.raises(ValueError, match=unreadable):
        mem.vote_settings()
    assert run("tune", "--reset", "--memory", memory).exit_code == 0
    with VisualMemory(open_store(memory), reranker=None) as mem:
        assert mem.vote_settings().rule == "rank"


def test_classify_json_is_attributable_to_memory_points(built, image_folder):
    memory, _ = built
    result = run("classify", image_folder / "query", "--memory", memory, "--k", "5", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(lines) == 3
    for obj in lines:
        assert {"source", "label", "scores", "neighbors"} <= obj.keys()
        # Every key, every time (as over HTTP): an unnamed label's name and an answer's reason are null, not absent.
        assert (obj["label_name"], obj["fallback_reason"], obj["neighbors"][0]["label_name"]) == (None, None, None)
        assert obj["label"] == obj["source"].split("/")[-2]
        assert abs(sum(obj["scores"].values()) - 1) < 1e-6
        assert len(obj["neighbors"]) == 5
        first = obj["neighbors"][0]
        assert {"id", "label", "source", "similarity", "weight"} <= first.keys()
        assert first["id"] == point_id_for(first["source"])
        assert obj["vote"] == {"rule": "rank", "k": 5, "alpha": 2.0, "tau": 0.07, "soft_pruning": True,
                               "origin": "explicit"}


def test_classify_reports_accuracy_from_folder_names(built, image_folder):
    memory, _ = built
    result = run("classify", image_folder / "query", "--memory", memory, "--k", "3", "--vote", "plurality",
                 "--truth-from-dirs")
    assert result.exit_code == 0, result.output
    assert "accuracy 100.00% (3/3) with plurality voting, k=3" in result.output
    assert "no label of this memory" not in result.output


def test_classify_marks_answers_under_min_confidence_unsure_and_counts_both_sides(built, image_folder):
    # k=12, plurality: all 12 points vote, so each answer's share is its label's 4 of 12.
    memory, _ = built
    args = ("classify", image_folder / "query", "--memory", memory, "--k", "12", "--vote", "plurality",
            "--truth-from-dirs")
    unsure = run(*args, "--min-confidence", "0.5")
    assert unsure.exit_code == 0, unsure.output
    assert unsure.stdout.count("[unsure: confidence 0.333 < 0.5]") == 3
    assert ("unsure: 3 of 3 answers under min confidence 0.5 (for a person to check); 0 answered (0.0%): right "
            "none; the unsure ones' suggestions right 100.00% (3/3)") in unsure.stdout
    sure = run(*args, "--min-confidence", "0.3", "--json")
    answers = [json.loads(line) for line in sure.stdout.splitlines() if line.startswith("{")]
    assert [(a["confidence"], a["min_confidence"], a["unsure"]) for a in answers] == [(pytest.approx(1 / 3), 0.3,
                                                                                       False)] * 3
    assert "unsure: 0 of 3 answers under min confidence 0.3 (for a person to check); 3 answered (100.0%): right " \
           "100.00% (3/3); the unsure ones' suggestions right none" in sure.stderr
    bad = run(*args, "--min-confidence", "1.5")
    assert bad.exit_code == 2 and "--min-confidence" in bad.output


def test_the_python_api_marks_answers_under_min_confidence(built, image_folder):
    memory, _ = built
    queries = sorted((image_folder / "query").rglob("*.jpg"))
    with VisualMemory.open(str(memory)) as mem:
        answers = mem.classify(queries, k=12, rule="plurality", min_confidence=0.5)
        assert [(a.confidence, a.unsure) for a in answers] == [(pytest.approx(1 / 3), True)] * 3
        assert answers[0].unsure_reason.startswith("confidence 0.333 (the vote share of 'blue') is under")
        many, _ = mem.classify_many(queries, k=12, rule="plurality", min_confidence=1 / 3)  # at the share: kept
        assert [a.unsure for a in many] == [False] * 3
        assert not mem.classify(queries[:1], k=12, rule="plurality")[0].unsure  # none asked: never unsure
        with pytest.raises(ValueError, match="min_confidence is a confidence between 0 and 1: the vote share of the "
                           "label answered, or with the dmn rule its fused DMN probability"):
            mem.classify(queries, min_confidence=float("nan"))
        with pytest.raises(ValueError, match="with the dmn rule its fused DMN probability") as refused:
            mem.classify(queries, rule="dmn", min_confidence=1.5)  # dmn's confidence is no vote share
        assert "not 1.5" in str(refused.value)


def test_truth_from_dirs_says_which_folders_are_no_label_of_the_memory(built, image_folder, tmp_path):
    # Queries in folders named otherwise (a class forgotten, a folder named by the label's name) can never be
    # right: 0 % had come with no word why.
    memory, _ = built
    (tmp_path / "query" / "crimson").mkdir(parents=True)
    (tmp_path / "query" / "crimson" / "q.jpg").write_bytes((image_folder / "query" / "red" / "q.jpg").read_bytes())
    result = run("classify", tmp_path / "query", "--memory", memory, "--k", "3", "--truth-from-dirs")
    assert result.exit_code == 0, result.output
    assert "accuracy 0.00% (0/1)" in result.stdout
    assert ("note: 1 of the 1 image is in a folder that is no label of this memory, and is counted wrong: "
            "'crimson' (1) (vmem labels lists its labels)") in result.stderr


def test_truth_from_dirs_reads_labels_as_build_does_nested_folders_too(built, image_folder, tmp_path, monkeypatch):
    memory, _ = built
    for label, colour in COLOURS.items():  # query/<label>/day1/q.jpg: labelled <label> by vmem build too
        (tmp_path / "query" / label / "day1").mkdir(parents=True)
        (tmp_path / "query" / label / "day1" / "q.jpg").write_bytes(make_image(colour, size=(40, 30)))
    result = run("classify", tmp_path / "query", "--memory", memory, "--k", "3", "--truth-from-dirs")
    assert "accuracy 100.00% (3/3)" in result.output, result.output
    # Named by a relative path, or through a link to the folder: the same labels.
    (tmp_path / "linked").symlink_to(tmp_path / "query")
    monkeypatch.chdir(tmp_path)
    for given in ("query", "linked", "linked/../query"):
        result = run("classify", given, "--memory", memory, "--k", "3", "--truth-from-dirs")
        assert "accuracy 100.00% (3/3)" in result.output, (given, result.output)


def test_a_label_filter_must_name_a_label_of_the_memory_and_a_template_needs_rerank(built, image_folder):
    memory, _ = built
    out = run("classify", image_folder / "query", "--memory", memory, "--label", "red", "--label", "okapi")
    assert out.exit_code == 2
    assert "the memory has no label 'okapi': it has 3 labels (blue, green, red; vmem labels lists them)" in out.output
    out = run("classify", image_folder / "query", "--memory", memory, "--template", "default")
    assert out.exit_code == 2 and "give --rerank too" in out.output


def test_classify_skips_a_bad_query_and_says_so(built, image_folder, tmp_path):
    memory, _ = built
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    result = run("classify", image_folder / "query" / "red" / "q.jpg", bad, "--memory", memory)
    assert result.exit_code == 0
    [answer] = [line for line in result.stdout.splitlines() if line.startswith(str(image_folder))]
    assert answer.split("\t")[1] == "red"  # the answer's label (the path holds "red" too)
    assert "skipped" in result.output and "empty" in result.output


def test_classify_of_a_folder_names_its_links_to_no_file_and_loops(built, image_folder, tmp_path):
    memory, _ = built
    folder = tmp_path / "queries"
    folder.mkdir()
    (folder / "q.jpg").write_bytes((image_folder / "query" / "red" / "q.jpg").read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    result = run("classify", folder, "--memory", memory)
    assert result.exit_code == 0, result.output  # they had been dropped from the folder without a word
    assert "skipped" in result.output and "gone.jpg" in result.output and "loop.jpg" in result.output


def test_a_file_name_with_a_newline_stays_on_its_own_line(built, image_folder, tmp_path):
    memory, _ = built
    odd = tmp_path / "new\nline.jpg"
    odd.write_bytes((image_folder / "query" / "red" / "q.jpg").read_bytes())
    result = run("classify", odd, "--memory", memory)
    assert result.exit_code == 0
    [line] = result.stdout.splitlines()
    assert line.startswith(str(tmp_path / "new\\nline.jpg") + "\t") and line.split("\t")[1] == "red"


def test_labels_names_and_sources_that_would_read_as_other_text_are_printed_escaped(built, image_folder, tmp_path):
    # "\u202etac" shows as "cat" on a terminal (U+202E RIGHT-TO-LEFT OVERRIDE), "dog\u200b" as "dog": labels of
    # someone else's making (a memory handed over, points written to its collection) that read as others do
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    spoofed, name = "\u202etac", "\u2066dog\u200b\u2069"
    photo = tmp_path / "red\u202egpj.png"  # reads "red" + "png.jpg" reversed: a .jpg to the eye
    photo.write_bytes(make_image((200, 40, 220), fmt="PNG"))  # purple: nearer itself than any point there
    with VisualMemory.open(memory, reranker=None) as mem:
        mem.add([photo], [spoofed])
        mem.set_label_names({spoofed: name})
    shown = {"\u202e": "\\u202e", "\u2066": "\\u2066", "\u200b": "\\u200b", "\u2069": "\\u2069"}
    query = tmp_path / "query\u200b.jpg"  # the same pixels under another name
    shutil.copy(photo, query)
    outputs = {command[0]: run(*command, "--memory", memory) for command in (
        ["labels"], ["points", "--label", spoofed], ["history"], ["info"], ["classify", query, "--k", "1"])}
    for command, out in outputs.items():
        assert out.exit_code == 0, (command, out.output)
        assert not any(c in out.output for c in shown), command  # nothing a terminal shows other than it is
    assert "\\u202etac" in outputs["labels"].stdout and "\\u2066dog\\u200b\\u2069" in outputs["labels"].stdout
    assert "red\\u202egpj.png" in outputs["points"].stdout and "\\u202etac" in outputs["info"].stdout
    assert outputs["classify"].stdout.split("\t")[:2] == [str(query).replace("\u200b", "\\u200b"),
                                                         "\\u202etac (\\u2066dog\\u200b\\u2069)"]
    # JSON, for a program, is exact
    answer = json.loads(run("classify", query, "--k", "1", "--memory", memory, "--json").stdout)
    assert (answer["label"], answer["label_name"], answer["source"]) == (spoofed, name, str(query))
    # A refusal that lists the memory's labels (a label it lacks) lists them escaped too
    refused = run("relabel", "--label", "nosuch", "--to", "red", "--memory", memory)
    assert refused.exit_code == 1 and "the memory has no label 'nosuch'" in refused.stderr
    assert "\\u202etac" in refused.stderr and not any(c in refused.output for c in shown)


def test_what_a_message_names_is_escaped_once_as_a_label_is_printed(built, image_folder, tmp_path):
    # A message quotes a label, a name or a path as `vmem labels` prints it: repr escaped a Persian label's joiner
    # that shows, and text escaped twice (a label escaped, then its whole line) read as a label typed with a
    # backslash reads (\\\\u202etac), not as the override
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    persian = "نیم\u200cرخ"
    refused = run("relabel", "--label", persian, "--to", "red", "--memory", memory)
    assert refused.exit_code == 1 and f"the memory has no label '{persian}'" in refused.stderr
    refused = run("relabel", "--label", "\u202egod", "--to", "red", "--memory", memory)
    assert "no label '\\u202egod'" in refused.stderr
    nowhere = run("relabel", "--source", "/nowhere\u202e/", "--to", "red", "--memory", memory)
    assert nowhere.exit_code == 1 and "no point's source starts with /nowhere\\u202e/" in nowhere.stderr
    assert "\u202e" not in nowhere.output
    moved = run("relabel", "--label", "red", "--to", "\u202etac", "--memory", memory)
    assert moved.exit_code == 0 and "relabelled 4 points to '\\u202etac'" in moved.stdout
    [edit] = [line for line in run("history", "--memory", memory).stdout.splitlines() if "\trelabel\t" in line]
    assert "(red: 4) to \\u202etac\tby label 'red'\tvia cli" in edit and "\\\\u202e" not in edit
    # why not another label: the reason names the answer's label as the lines above do
    why = run("classify", image_folder / "query" / "red" / "q.jpg", "--why-not", "blue", "--memory", memory)
    [reason] = [line for line in why.stdout.splitlines() if line.startswith("  why not blue: ")]
    assert "'\\u202etac'" in reason and "\\\\u202e" not in reason


def test_labels_written_with_joiners_are_printed_as_they_are_written(built, image_folder, tmp_path):
    # A Persian word holds a ZERO WIDTH NON-JOINER, a Devanagari conjunct a joiner after its virama, a family emoji
    # joiners between its people: each shows, and is how the label is written. vmem printed them as they were
    # until it escaped every format character, which showed a memory's own labels as "نیم\u200cرخ" after an upgrade.
    # A joiner between Latin letters ("ca\u200ct" reads "cat") is still escaped.
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    labels = ["نیم\u200cرخ", "क्\u200dष", "👨\u200d👩\u200d👧", "ca\u200ct"]
    photos = []
    for i in range(len(labels)):
        photos.append(tmp_path / f"{i}.png")
        photos[-1].write_bytes(make_image((200, 40 * i, 220), fmt="PNG"))
    with VisualMemory.open(memory, reranker=None) as mem:
        mem.add(photos, labels)
    shown = run("labels", "--memory", memory).stdout
    for label in labels[:3]:
        assert f"\t{label}\t" in shown
    assert "\tca\\u200ct\t" in shown and "ca\u200ct" not in shown


def test_forget_by_source_label_and_id(built, image_folder, tmp_path):
    memory, _ = built
    import shutil

    copy = tmp_path / "memory"
    shutil.copytree(memory, copy)
    red0 = str((image_folder / "train" / "red" / "0.png").resolve())
    out = run("forget", "--memory", copy, "--id", point_id_for(red0))
    assert out.exit_code == 0 and "forgot 1 point; memory now holds 11" in out.output
    # A dry run first: which points, on stdout for a script; how many of which labels on stderr; nothing changed
    green = str(image_folder / "train" / "green") + "/"
    preview = run("forget", "--memory", copy, "--source", green, "--dry-run")
    assert preview.exit_code == 0 and len(preview.stdout.split()) == 4
    assert "dry run: would forget 4 points (green: 4); nothing changed" in preview.stderr
    relabel = run("relabel", "--memory", copy, "--label", "blue", "--to", "teal", "--dry-run")
    assert "dry run: would relabel to 'teal' 4 points (blue: 4); nothing changed" in relabel.stderr
    assert said(run("relabel", "--memory", copy, "--label", "blue", "--to", " ", "--dry-run"), "non-empty")
    # A misspelt label: the dry run says why nothing would go, as the forget or relabel itself would
    for command in (["forget"], ["relabel", "--to", "teal"]):
        typo = run(*command, "--memory", copy, "--label", "bleu", "--dry-run")
        assert "would" in typo.stderr and "0 points; nothing changed" in typo.stderr, typo.stderr
        assert ("note: the memory has no label 'bleu': it has 3 labels (blue, green, red; vmem labels lists them); "
                "spelled or named like it: 'blue'\n") in typo.stderr, typo.stderr
        done = run(*command, "--memory", copy, "--label", "bleu")  # and done: the label spelled like it named
        assert "no label 'bleu'" in done.stderr and "; spelled or named like it: 'blue'\n" in done.stderr, done.output
    out = run("forget", "--memory", copy, "--source", green)
    assert "forgot 4 points; memory now holds 7" in out.output
    out = run("forget", "--memory", copy, "--label", "blue")
    assert "forgot 4 points; memory now holds 3" in out.output
    # The forgotten labels can no longer be predicted: only red points remain.
    res = run("classify", image_folder / "query" / "blue" / "q.jpg", "--memory", copy, "--json")
    obj = json.loads(res.output)
    assert {n["label"] for n in obj["neighbors"]} == {"red"}
    assert red0 not in {n["source"] for n in obj["neighbors"]}


def test_a_dry_run_of_a_misspelt_label_says_what_the_forget_or_relabel_would(built):
    # A dry run had answered "would forget 0 points" and no more, where the real run names the labels there are
    # (and a relabel exits 1): a user checking first read it as "already gone"
    memory, _ = built
    unknown = "the memory has no label 'bleu': it has 3 labels (blue, green, red; vmem labels lists them)"
    for dry in (["--dry-run"], []):
        forget = run("forget", "--memory", memory, "--label", "bleu", *dry)
        assert forget.exit_code == 0 and f"note: {unknown}" in forget.stderr, (dry, forget.output)
        relabel = run("relabel", "--memory", memory, "--label", "bleu", "--to", "teal", *dry)
        assert relabel.exit_code == 1 and f"note: {unknown}" in relabel.stderr, (dry, relabel.output)
    assert "dry run: would forget 0 points; nothing changed" in run("forget", "--memory", memory, "--label", "bleu",
                                                                    "--dry-run").stderr
    # Nothing to change by ids either: the relabel's note and exit status, as it would run
    red = run("points", "--memory", memory, "--label", "red", "--json").stdout.splitlines()[0]
    done = run("relabel", "--memory", memory, "--id", json.loads(red)["id"], "--to", "red", "--dry-run")
    assert done.exit_code == 0 and "note: nothing to do: the point chosen has the label 'red' already" in done.stderr
    assert json.loads(run("info", "--memory", memory, "--json").stdout)["per_label"] == {"blue": 4, "green": 4,
                                                                                        "red": 4}


def test_a_relabel_or_forget_of_a_label_whose_points_all_went_says_so_and_a_relabel_asked_again_succeeds(built,
                                                                                                           tmp_path):
    # A rename run again (its first run's answer lost) had been told "the memory has no label 'blue'" and exit 1,
    # as a misspelt label is: the label was the memory's, and what was asked is done
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    assert run("relabel", "--memory", memory, "--label", "blue", "--to", "teal").exit_code == 0
    gone = ("note: no point has label 'blue' any more: its points were relabelled or forgotten "
            "(vmem history --label blue)\n")
    for dry in (["--dry-run"], []):
        again = run("relabel", "--memory", memory, "--label", "blue", "--to", "teal", *dry)
        assert again.exit_code == 0 and gone in again.stderr, (dry, again.output)
        forget = run("forget", "--memory", memory, "--label", "blue", *dry)
        assert forget.exit_code == 0 and gone in forget.stderr, (dry, forget.output)
    # The command the note names lists the relabel that took them
    [edit] = [line for line in run("history", "--memory", memory, "--label", "blue").stdout.splitlines()
              if "\trelabel\t" in line]
    assert "(blue: 4) to teal" in edit
    # A label the memory never had is still a mistake, named as one
    typo = run("relabel", "--memory", memory, "--label", "bleu", "--to", "teal")
    assert typo.exit_code == 1 and "note: the memory has no label 'bleu'" in typo.stderr, typo.output


def test_forget_and_erase_rewrites_the_memory_without_the_forgotten_vectors(built, tmp_path):
    memory, _ = built
    import shutil

    from vmem.cli.bench_search import copies_in_files

    copy = tmp_path / "memory"
    shutil.copytree(memory, copy)
    with open_store(copy) as store:
        blue = [p for batch in store.scroll(with_vectors=True) for p in batch if p.payload["label"] == "blue"]
    vectors = np.stack([p.vector for p in blue])
    assert copies_in_files(copy, vectors) == len(blue)
    out = run("forget", "--memory", copy, "--label", "blue", "--erase")
    assert out.exit_code == 0 and "forgot 4 points" in out.output and "erased the forgotten" in out.output
    assert copies_in_files(copy, vectors) == 0
    # Said as it is to whoever erases on request: the segments hold them no more, the engine's log may still
    assert "from the memory's segments" in out.output and "write-ahead log keeps" in out.output
    assert "vmem copy" in out.output
    wal = b"".join(f.read_bytes() for f in (copy / "shard" / "wal").iterdir())
    assert all(p.payload["source"].encode() in wal for p in blue)


def test_forget_refuses_an_id_that_is_not_a_point_id_and_forgets_nothing(built, tmp_path):
    memory, _ = built
    import shutil

    copy = tmp_path / "memory"
    shutil.copytree(memory, copy)
    out = run("forget", "--memory", copy, "--id", "not-a-uuid")
    assert out.exit_code == 2 and "--id" in out.output and "not a point id" in out.output
    assert "--erase" not in out.output
    with open_store(copy) as store:
        assert store.count() == 12


def test_forget_refuses_a_source_prefix_that_is_no_path_here_and_forgets_nothing(built, tmp_path):
    memory, _ = built
    import shutil

    copy = tmp_path / "memory"
    shutil.copytree(memory, copy)
    out = run("forget", "--memory", copy, "--source", "~no-such-user-vmem/photos/")
    assert out.exit_code == 2 and "--source" in out.output and "not a path on this host" in out.output
    with open_store(copy) as store:
        assert store.count() == 12


def test_forget_needs_exactly_one_selector(built):
    memory, _ = built
    out = run("forget", "--memory", memory)
    assert out.exit_code != 0 and "exactly one of --id, --label, --source" in out.output


def test_forget_like_a_photo_takes_its_copies_under_other_paths_and_journals_how(tmp_path):
    # "Remove this photo, and any copy of it": the person holds the photo; a copy of it was saved into another
    # folder under another name. --like finds both, by what they look like, and leaves the other pictures.
    import hashlib

    data = tmp_path / "data"
    (data / "shapes").mkdir(parents=True)
    for seed in range(6):
        (data / "shapes" / f"{seed}.png").write_bytes(make_scene(seed))
    (data / "downloads").mkdir()
    copy = (data / "downloads" / "IMG_0042.jpg").resolve()
    copy.write_bytes(reencoded(make_scene(3), "JPEG", quality=90))
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_scene(3))
    memory = tmp_path / "memory"
    assert run("build", data, "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0").exit_code == 0

    # A dry run lists what would go, as `vmem points` lists points (id, label, source), with each one's similarity
    preview = run("forget", "--memory", memory, "--like", photo, "--dry-run")
    assert preview.exit_code == 0, preview.output
    listed = [line.split("\t") for line in preview.stdout.splitlines()]
    original = str((data / "shapes" / "3.png").resolve())
    assert [row[:3] for row in listed] == [[point_id_for(original), "shapes", original],
                                           [point_id_for(str(copy)), "downloads", str(copy)]]
    assert float(listed[0][3]) == pytest.approx(1, abs=1e-3) and 0.93 <= float(listed[1][3]) < 1
    assert "dry run: would forget 2 points (shapes: 1, downloads: 1); nothing changed" in preview.stderr
    out = run("forget", "--memory", memory, "--like", photo)
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[:2] == preview.stdout.splitlines()
    assert f"forgot 2 points like {photo} (similarity at least 0.93); memory now holds 5" in out.stdout
    # Journaled with how the points were chosen: the photo's sha256 and the threshold, never the photo or its path
    history = run("history", "--memory", memory, "--op", "forget", "--json")
    entry = json.loads(history.stdout.splitlines()[0])
    assert entry["selector"] == {"like_sha256": hashlib.sha256(photo.read_bytes()).hexdigest(), "min_similarity": 0.93}
    assert sorted(entry["ids"]) == sorted(row[0] for row in listed) and entry["via"] == "cli"
    assert str(photo) not in history.stdout
    assert "\tby like_sha256 '" in run("history", "--memory", memory, "--limit", "1").stdout
    again = run("forget", "--memory", memory, "--like", photo)
    assert again.exit_code == 0 and "forgot 0 points" in again.stdout
    assert "no point is at least 0.93 similar to it; `vmem forget --like" in again.stderr
    assert "--dry-run --min-similarity 0.8` lists those nearer than 0.8" in again.stderr
    # Said on a dry run too, where it is most wanted
    assert "no point is at least 0.93 similar" in run("forget", "--memory", memory, "--like", photo, "--dry-run").stderr
    assert said(run("forget", "--memory", memory, "--like", data), "is a folder: give one image file")
    # A lower threshold reaches other pictures: what a dry run is for
    assert len(run("forget", "--memory", memory, "--like", photo, "--min-similarity", "0.3", "--dry-run")
               .stdout.splitlines()) == 5

    assert said(run("forget", "--memory", memory, "--like", photo, "--label", "shapes"),
                "exactly one of --id, --label, --source, --like")
    assert said(run("forget", "--memory", memory, "--label", "shapes", "--min-similarity", "0.5"), "--like IMAGE")
    assert said(run("forget", "--memory", memory, "--like", photo, "--min-similarity", "1.5"), "at most 1")
    assert said(run("forget", "--memory", memory, "--like", tmp_path / "none.jpg"), "no such file")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert said(run("forget", "--memory", memory, "--like", tmp_path / "broken.jpg"), "not a recognised image")
    assert run("points", "--memory", memory, "--json").stdout.count("\n") == 5  # nothing more went

    # A point's id where no such file is: that point and its copies (a neighbour `classify --json` cited)
    kept = str((data / "shapes" / "0.png").resolve())
    by_id = run("forget", "--memory", memory, "--like", point_id_for(kept))
    assert by_id.exit_code == 0, by_id.output
    assert by_id.stdout.split("\t")[:3] == [point_id_for(kept), "shapes", kept] and "memory now holds 4" in by_id.stdout
    assert "\tby like_point '" in run("history", "--memory", memory, "--limit", "1").stdout
    gone = point_id_for(kept)
    assert said(run("forget", "--memory", memory, "--like", gone), f"no point with id {gone}")


def test_info_shows_featurizer_and_label_counts(built):
    memory, _ = built
    out = run("info", "--memory", memory, "--json")
    stats = json.loads(out.output)
    assert stats["points"] == 12 and stats["labels"] == 3
    assert stats["per_label"] == {"blue": 4, "green": 4, "red": 4}
    assert stats["featurizer"]["name"] == "efficientnet-lite0" and stats["featurizer"]["dim"] == 1280
    # What the memory takes on disk, and where: the engine's files keep forgotten vectors until an erase
    disk = stats["disk_bytes"]
    assert disk["total"] == sum(n for name, n in disk.items() if name != "total") and disk["shard"] > 0
    assert "vmem.json" in disk
    assert re.search(r"^disk +[\d.]+ [kMG]?B \(shard [\d.]+ [kMG]?B", run("info", "--memory", memory).output, re.M)


def test_a_different_featurizer_is_refused(built, image_folder, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    memory, _ = built
    tiny = tmp_path / "dino"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(tiny)
    out = run("build", image_folder / "train", "--memory", memory, "--featurizer", f"dinov2:{tiny}")
    assert out.exit_code != 0
    assert "efficientnet-lite0" in out.output and "cannot be used with it" in out.output


def test_build_from_a_csv_manifest(image_folder, tmp_path):
    manifest = tmp_path / "set.csv"
    rows = ["path,label"] + [f"{image_folder}/train/{c}/{i}.png,{c}-shade" for c in COLOURS for i in range(2)]
    manifest.write_text("\n".join(rows) + "\n")
    out = run("build", manifest, "--memory", tmp_path / "m2", "--featurizer", "efficientnet-lite0", "--workers", "0")
    assert out.exit_code == 0, out.output
    assert "6 added" in out.output
    info = json.loads(run("info", "--memory", tmp_path / "m2", "--json").output)
    assert info["per_label"] == {"blue-shade": 2, "green-shade": 2, "red-shade": 2}


def test_missing_memory_and_dataset_are_clear_errors(tmp_path):
    out = run("classify", tmp_path, "--memory", tmp_path / "none")
    assert out.exit_code != 0
    out = run("info", "--memory", tmp_path / "none")
    assert out.exit_code != 0 and "vmem build" in out.output
    out = run("build", tmp_path / "nodata", "--memory", tmp_path / "m")
    assert out.exit_code != 0 and "not a directory" in out.output


def test_build_with_an_int8_index_on_disk_stores_the_choice_and_classifies(image_folder, tmp_path):
    memory = tmp_path / "int8"
    result = run("build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
                 "--workers", "0", "--quantization", "int8", "--vectors-on-disk")
    assert result.exit_code == 0, result.output
    meta = json.loads(run("info", "--memory", memory, "--json").output)
    assert meta["index"]["quantization"] == "int8" and meta["index"]["vectors_on_disk"] is True
    out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
    assert json.loads(out.output.splitlines()[0])["label"] == "blue"

    # Settings are fixed at creation: asking again says so and keeps the memory as it is.
    again = run("build", image_folder / "train", "--memory", memory, "--workers", "0", "--quantization", "none",
                "--vectors-on-disk")
    assert again.exit_code == 0 and "12 already in memory" in again.output
    assert "index settings are fixed" in again.output
    meta = json.loads(run("info", "--memory", memory, "--json").output)
    assert meta["index"]["quantization"] == "int8"


def test_original_vectors_stay_on_disk_unless_asked_to_load_them_into_ram(image_folder, tmp_path):
    for flag, on_disk in (None, True), ("--vectors-in-ram", False):
        memory = tmp_path / str(flag)
        args = ["build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
                "--workers", "0"]
        assert run(*args, *([flag] if flag else [])).exit_code == 0
        meta = json.loads(run("info", "--memory", memory, "--json").output)
        assert meta["index"]["vectors_on_disk"] is on_disk
        out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
        assert json.loads(out.output.splitlines()[0])["label"] == "blue"


def test_asking_for_the_default_index_on_a_float_memory_says_it_stays_float(image_folder, tmp_path):
    memory = tmp_path / "float"
    first = run("build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0",
                "--workers", "0", "--quantization", "none")
    assert first.exit_code == 0 and "index settings are fixed" not in first.output
    # int8 is the default, but asked for by name it is still a request the memory cannot honour.
    again = run("build", image_folder / "train", "--memory", memory, "--workers", "0", "--quantization", "int8")
    assert again.exit_code == 0 and "index settings are fixed" in again.output
    quiet = run("build", image_folder / "train", "--memory", memory, "--workers", "0")
    assert quiet.exit_code == 0 and "index settings are fixed" not in quiet.output
    assert json.loads(run("info", "--memory", memory, "--json").output)["index"]["quantization"] == "none"


def test_build_rejects_an_unknown_quantization(image_folder, tmp_path):
    result = run("build", image_folder / "train", "--memory", tmp_path / "m", "--quantization", "int4")
    assert result.exit_code == 2 and "int4" in result.output


def test_original_vectors_can_be_stored_as_float16(image_folder, tmp_path):
    memory = tmp_path / "f16"
    args = ["build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0"]
    assert run(*args, "--vectors-dtype", "float16").exit_code == 0
    meta = json.loads(run("info", "--memory", memory, "--json").output)
    assert meta["index"]["vectors_dtype"] == "float16"
    out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
    assert json.loads(out.output.splitlines()[0])["label"] == "blue"
    bad = run(*args, "--vectors-dtype", "int4")
    assert bad.exit_code == 2 and "int4" in bad.output


def test_search_ef_is_set_at_build_and_can_be_changed_on_an_existing_memory(image_folder, tmp_path):
    memory = tmp_path / "ef"
    args = ["build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0"]
    assert run(*args, "--hnsw-ef", "192").exit_code == 0
    assert json.loads(run("info", "--memory", memory, "--json").output)["index"]["hnsw_ef"] == 192
    # A search setting, not part of the built index: a later build changes it (and says so) instead of refusing.
    again = run(*args, "--hnsw-ef", "256")
    assert again.exit_code == 0 and "search ef of this memory: 192 -> 256" in again.output
    assert "index settings are fixed" not in again.output
    assert json.loads(run("info", "--memory", memory, "--json").output)["index"]["hnsw_ef"] == 256
    # The journal says who changed how the memory searches, and from what.
    [entry] = [json.loads(line) for line in run("history", "--memory", memory, "--op", "settings", "--json").stdout
               .splitlines()]
    assert entry["detail"] == {"search": {"hnsw_ef": 256}, "before": {"hnsw_ef": 192}} and entry["via"] == "cli"
    assert "search ef 192 -> 256" in run("history", "--memory", memory).output
    out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
    assert json.loads(out.output.splitlines()[0])["label"] == "blue"
    assert run(*args, "--hnsw-ef", "2").exit_code == 2  # below the minimum


def test_a_memory_can_be_told_to_answer_from_its_codes_alone(image_folder, tmp_path):
    memory = tmp_path / "codes"
    args = ["build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0"]
    assert run(*args, "--quantization", "turboquant8").exit_code == 0
    index = json.loads(run("info", "--memory", memory, "--json").output)["index"]
    assert index["quantization"] == "turboquant8" and index["rescore"]
    # Like the search ef, a search setting: an existing memory takes it (for a server short of RAM).
    again = run(*args, "--no-rescore")
    assert again.exit_code == 0 and "rescoring of this memory: on -> off" in again.output
    assert not json.loads(run("info", "--memory", memory, "--json").output)["index"]["rescore"]
    out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
    assert json.loads(out.output.splitlines()[0])["label"] == "blue"
    plain = run("build", image_folder / "train", "--memory", tmp_path / "plain", "--featurizer", "efficientnet-lite0",
                "--workers", "0", "--quantization", "none", "--no-rescore")
    assert plain.exit_code == 0 and "not quantized" in plain.output


def test_a_memory_can_re_rank_the_doubtful_candidates_of_its_codes(image_folder, tmp_path):
    memory = tmp_path / "doubtful"
    args = ["build", image_folder / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0",
            "--quantization", "turboquant8"]
    # It re-ranks what the codes alone found: rescoring must be off, and said so.
    refused = run(*args, "--rescore-doubtful")
    assert refused.exit_code == 2 and "--no-rescore" in refused.output
    assert run(*args[:-2], "--quantization", "none", "--no-rescore", "--rescore-doubtful").exit_code == 2
    assert run(*args, "--no-rescore", "--rescore-doubtful").exit_code == 0
    index = json.loads(run("info", "--memory", memory, "--json").output)["index"]
    assert index["rescore_doubtful"] and not index["rescore"]
    assert (memory / "original-rows.bin").stat().st_size > 0
    out = run("classify", image_folder / "query" / "blue", "--memory", memory, "--json")
    assert json.loads(out.output.splitlines()[0])["label"] == "blue"
    # Asked of a memory made without it: refused, and its rescoring is not switched off on the way.
    plain = tmp_path / "plain"
    assert run("build", image_folder / "train", "--memory", plain, "--featurizer", "efficientnet-lite0",
               "--workers", "0", "--quantization", "turboquant8").exit_code == 0
    late = run("build", image_folder / "train", "--memory", plain, "--no-rescore", "--rescore-doubtful")
    assert late.exit_code == 2 and "made without it" in " ".join(late.output.split())
    assert json.loads(run("info", "--memory", plain, "--json").output)["index"]["rescore"] is True


def test_a_build_where_every_image_fails_exits_1(tmp_path):
    (tmp_path / "set.csv").write_text("path,label\nnope1.jpg,a\nnope2.jpg,b\n")
    res = run("build", tmp_path / "set.csv", "--memory", tmp_path / "m", "--featurizer", "efficientnet-lite0")
    assert res.exit_code == 1 and "nothing could be added: all 2 images failed" in res.output
    # ... also into a memory that holds points already (a daily add from a mount gone bad)
    (tmp_path / "ok.png").write_bytes(make_image((200, 0, 0), fmt="PNG"))
    (tmp_path / "one.csv").write_text(f"path,label\n{tmp_path / 'ok.png'},a\n")
    assert run("build", tmp_path / "one.csv", "--memory", tmp_path / "m", "--featurizer",
               "efficientnet-lite0").exit_code == 0
    res = run("build", tmp_path / "set.csv", "--memory", tmp_path / "m")
    assert res.exit_code == 1 and "nothing could be added: all 2 images failed" in res.output


# ------------------------------------------------------------------ ordinary mistakes: one clear line, no traceback

def said(out, *words) -> bool:
    """A refusal as the CLI gives one (a non-zero exit, not a traceback) that says each of `words`."""
    assert out.exit_code != 0, out.output
    assert isinstance(out.exception, SystemExit), repr(out.exception)  # a traceback would be the exception itself
    missing = [w for w in words if w not in out.output]
    assert not missing, f"{missing} not in {out.output}"
    return True


def test_a_manifest_must_be_utf8_and_may_start_with_a_bom(image_folder, tmp_path):
    red = image_folder / "train" / "red" / "0.png"
    # Excel's "CSV UTF-8" starts with a byte-order mark; it is not part of the first column's name.
    excel = tmp_path / "excel.csv"
    excel.write_bytes(f"\ufeffpath,label\n{red},café\n".encode())
    out = run("build", excel, "--memory", tmp_path / "m", "--featurizer", "efficientnet-lite0", "--workers", "0")
    assert out.exit_code == 0 and "1 added" in out.output
    assert json.loads(run("info", "--memory", tmp_path / "m", "--json").output)["per_label"] == {"café": 1}
    # The same manifest saved as Latin-1: refused, naming the file, before any memory is made.
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(f"path,label\n{red},café\n".encode("latin-1"))
    out = run("build", latin1, "--memory", tmp_path / "m2")
    assert said(out, "latin1.csv is not UTF-8", "save the manifest as UTF-8") and out.exit_code == 2
    assert not (tmp_path / "m2").exists()


def test_an_empty_memory_is_a_clear_error_for_every_command_that_searches_it(built, image_folder, tmp_path):
    import shutil

    memory, _ = built
    empty = tmp_path / "empty"
    shutil.copytree(memory, empty)
    for label in COLOURS:
        run("forget", "--memory", empty, "--label", label)
    queries = image_folder / "query"
    for command in (["classify", queries], ["prune"], ["tune", "--dataset", queries],
                    ["eval", "--dataset", queries, "--out", tmp_path / "eval"],
                    ["experiment", "corruption", "--queries", queries]):
        out = run(*command, "--memory", empty)
        assert said(out, f"{empty} holds no points", "vmem build"), command
    assert run("prune", "--memory", empty, "--undo").exit_code == 0  # nothing to search: nothing to refuse


def test_a_memory_whose_points_are_all_hard_pruned_is_a_clear_error_naming_the_undo(built, image_folder, tmp_path):
    import shutil

    from eval.pruning import EXCLUDED_KEY, EXCLUDED_VALUE

    memory, _ = built
    pruned = tmp_path / "pruned"
    shutil.copytree(memory, pruned)
    with open_store(pruned) as store:
        store.set_payload(store.ids_where(), {EXCLUDED_KEY: EXCLUDED_VALUE})
        total = store.count()
    out = run("classify", image_folder / "query", "--memory", pruned)
    assert said(out, f"all {total} points", "hard-pruned", "vmem prune --undo") and out.exit_code == 2
    soft = run("prune", "--memory", pruned, "--mode", "soft", "--k", "3")  # pruning again starts from none
    assert soft.exit_code == 0, soft.output
    with open_store(pruned) as store:
        assert store.count(searchable=True) == total  # soft pruning excludes nothing
        one = store.ids_where(label="green")[:1]
    # The factors were computed with the forgotten point among the neighbours: said, with how to judge anew.
    forgot = run("forget", "--memory", pruned, "--id", one[0])
    assert forgot.exit_code == 0 and "note: the memory's soft pruning weighed its points with these among them; " \
        "vmem prune again (or --undo) to judge it without them" in forgot.stderr, forgot.output
    total -= 1
    assert run("prune", "--memory", pruned, "--undo").exit_code == 0
    assert run("classify", image_folder / "query", "--memory", pruned).exit_code == 0

    # One label's points all hard-pruned: a filter by it would leave every answer empty.
    with open_store(pruned) as store:
        store.set_payload(store.ids_where(label="red"), {EXCLUDED_KEY: EXCLUDED_VALUE})
    out = run("classify", image_folder / "query", "--memory", pruned, "--label", "red")
    assert out.exit_code == 2 and said(out, "every point of label 'red' (4 points) is excluded by hard pruning",
                                       "vmem prune --undo"), out.output
    assert run("classify", image_folder / "query", "--memory", pruned, "--label", "blue").exit_code == 0
    listed = run("points", "--memory", pruned, "--label", "red", "--excluded")  # what pruning took out is listed
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 4, listed.output


def test_a_qdrant_server_that_is_not_there_or_a_url_that_is_not_one(image_folder, monkeypatch):
    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    for command in ["info"], ["classify", image_folder / "query"], ["serve", "--no-auth"]:
        out = run(*command, "--qdrant-url", "http://127.0.0.1:1")
        assert said(out, "could not reach the Qdrant server at http://127.0.0.1:1"), command
        assert out.exit_code == 75, command  # EX_TEMPFAIL: worth a retry, unlike a wrong command (2)
    # qdrant-client's "Set check_compatibility=False" is nothing a user of vmem can act on (in a process of its
    # own: pytest records every warning, filtered or not)
    import subprocess
    import sys

    alone = subprocess.run([sys.executable, "-m", "vmem", "info", "--qdrant-url", "http://127.0.0.1:1"],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 75 and "could not reach the Qdrant server" in alone.stderr, alone.stderr
    assert "check_compatibility" not in alone.stderr, alone.stderr
    # Without a scheme it would have been taken for a directory's name.
    out = run("build", image_folder / "train", "--qdrant-url", "localhost:6333")
    assert said(out, "'localhost:6333' is not a Qdrant server URL", "http://host:6333")


def test_a_memory_path_that_cannot_be_a_directory(image_folder, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("not a memory")
    out = run("build", image_folder / "train", "--memory", file, "--featurizer", "efficientnet-lite0")
    assert said(out, "--memory", "notes.txt is a file, not a memory directory")
    out = run("build", image_folder / "train", "--memory", file / "memory", "--featurizer", "efficientnet-lite0")
    assert said(out, "--memory", "cannot open or create the memory directory", "Not a directory")
    assert file.read_text() == "not a memory"


def test_a_corrupt_memory_metadata_file_is_named(built, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    memory, _ = built
    for name, broken in ("truncated", lambda text: text[:40]), ("wrong-fields", lambda _: '{"featurizer": 3}'):
        copy = tmp_path / name
        shutil.copytree(memory, copy)
        (copy / "vmem.json").write_text(broken((memory / "vmem.json").read_text()))
        for command in ["info"], ["serve", "--no-auth"]:
            out = run(*command, "--memory", copy)
            assert said(out, f"{copy / 'vmem.json'}, the memory's metadata, is corrupt", "restore it from a backup")
    assert "featurizer: Input should be an object" in out.output


def test_classify_sample_must_be_at_least_one(built, image_folder):
    memory, _ = built
    for n in ("0", "-1"):
        out = run("classify", image_folder / "query", "--memory", memory, "--sample", n)
        assert said(out, "--sample") and out.exit_code == 2


def test_classify_fails_when_nothing_could_be_classified_and_names_each_file_once(built, tmp_path):
    memory, _ = built
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = run("classify", bad, tmp_path / "missing.jpg", "--memory", memory)
    assert said(out, "no image could be classified (2 skipped)") and out.exit_code == 1
    assert f"skipped {bad}: not a recognised image format" in out.output
    assert f"skipped {tmp_path / 'missing.jpg'}: no such file" in out.output
    assert out.output.count(str(bad)) == 1


def test_a_tag_must_be_key_equals_value(image_folder, tmp_path):
    out = run("build", image_folder / "train", "--memory", tmp_path / "m", "--tag", "split=train", "--tag", "bad")
    assert said(out, "--tag", "'bad' is not KEY=VALUE", "key=value") and out.exit_code == 2
    assert not (tmp_path / "m").exists()


def test_serve_memory_flag_wins_over_a_qdrant_url_from_the_environment(built, monkeypatch):
    # A .env for the production Qdrant server must not turn `vmem serve -m ./memory` into serving that server.
    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(location=app.state.settings.location))
    monkeypatch.setenv("VMEM_QDRANT_URL", "http://127.0.0.1:1")
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 0, out.output
    assert served["location"] == str(memory)


def test_serve_read_only_without_a_key_says_what_the_key_guards_there(built, monkeypatch):
    # A read-only service refuses every edit: asked for a key "memory-editing endpoints require", a replica has
    # none of them. What needs it there is a re-ranked classify (Gemini), the export of the vectors and backups.
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: pytest.fail("served"))
    monkeypatch.delenv("VMEM_API_KEY", raising=False)
    memory, _ = built
    out = run("serve", "--read-only", "--memory", memory)
    assert out.exit_code == 2 and said(out, "no API key", "refuses every edit; re-ranked classifies, the export")
    assert "memory-editing endpoints" not in out.output


@pytest.mark.parametrize(("host", "said"), [("::", "http://[::]:8123"), ("0.0.0.0", "http://0.0.0.0:8123")])
def test_serve_says_the_address_it_listens_on_as_a_url_writes_it(built, monkeypatch, host, said):
    # An IPv6 address in a URL is bracketed: "serving ... on http://:::8123" was no URL
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: None)
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory, "--host", host, "--port", "8123")
    assert out.exit_code == 0 and f" on {said} (page at /" in out.output, out.output


def test_serve_behind_a_proxy_hands_uvicorn_the_prefix(built, monkeypatch):
    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(kw))
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory, "--root-path", "/vmem/")
    assert out.exit_code == 0 and "behind a proxy at /vmem/" in out.output, out.output
    assert served["root_path"] == "/vmem"


def test_serve_read_only_without_a_key_warns_of_no_edits_it_refuses_anyway(built, monkeypatch):
    # --no-auth on a read-only service lets nobody edit: the warning that anyone may edit was untrue there, and
    # what it does leave open (the points' vectors, paid re-ranks) went unsaid
    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(read_only=app.state.settings.read_only))
    memory, _ = built
    out = run("serve", "--no-auth", "--read-only", "--memory", memory)
    assert out.exit_code == 0 and served == {"read_only": True}, out.output
    assert "can edit the memory" not in out.output
    assert f"read-only (a copy of {Path(memory).resolve()}): every edit is refused" in out.output
    assert "anyone who can reach the port can export the memory's points, re-rank" in out.output
    out = run("serve", "--no-auth", "--memory", memory)
    assert "authentication is disabled: anyone who can reach the port can edit the memory" in out.output


def test_serve_read_only_says_which_copies_of_killed_services_it_removed(built, tmp_path, monkeypatch):
    # The line was logged as the memory opened, before vmem serve's logging began: nobody saw it
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: None)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    made = "from retrieval.files import make_private_folder; print(make_private_folder('vmem-read-only-'))"
    killed = subprocess.run([sys.executable, "-c", made], capture_output=True, text=True, check=True).stdout.strip()
    memory, _ = built
    out = run("serve", "--no-auth", "--read-only", "--memory", memory)
    assert out.exit_code == 0, out.output
    assert f"removed {killed}: the copy of a memory a read-only service killed before its close had served" in (
        out.output)
    assert not os.path.exists(killed)


def test_serve_refuses_a_prefix_without_its_leading_slash(built, monkeypatch):
    # `--root-path vmem` made every thumbnail_url relative: the page under /vmem/ asked for /vmem/vmem/... (404s)
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: pytest.fail("served with a relative prefix"))
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory, "--root-path", "vmem")
    assert out.exit_code == 2 and said(out, "--root-path", "'vmem' lacks its leading /", "--root-path /vmem")


def test_serve_believes_the_forwarded_headers_of_the_proxies_it_is_told(built, monkeypatch):
    # A proxy on another host: uvicorn believes X-Forwarded-* from loopback only unless told its address.
    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(kw))
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory, "--forwarded-allow-ips", "10.0.0.7,10.0.0.8")
    assert out.exit_code == 0, out.output
    assert served["forwarded_allow_ips"] == "10.0.0.7,10.0.0.8"
    out = run("serve", "--no-auth", "--memory", memory)
    assert served["forwarded_allow_ips"] is None  # uvicorn's default: $FORWARDED_ALLOW_IPS, else loopback


def test_every_command_finds_the_memory_vmem_serve_is_given_by_vmem_memory(built, monkeypatch, tmp_path):
    # Only `vmem serve` read $VMEM_MEMORY: beside it, `vmem info` said "no memory at ./memory" and a build made one.
    memory, _ = built
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VMEM_MEMORY", str(memory))
    out = run("info", "--json")
    assert out.exit_code == 0 and json.loads(out.output)["points"] > 0, out.output
    assert not (tmp_path / "memory").exists()
    # An explicit --qdrant-url wins over it, as in vmem serve (no "give one, not both" for what was not given)
    out = run("info", "--qdrant-url", "http://127.0.0.1:1")
    assert out.exit_code == 75 and "127.0.0.1:1" in out.output and "not both" not in out.output, out.output


def test_serve_refuses_an_env_file_that_is_not_there(tmp_path):
    out = run("serve", "--env-file", tmp_path / "prod.env", "--no-auth")
    assert out.exit_code == 2 and "does not exist" in out.output


def test_flags_show_no_type_in_the_option_tables():
    for command in (["--help"], ["classify", "--help"], ["bench", "search", "--help"], ["dmn", "classify", "--help"]):
        shown = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "<bool>" not in shown.output, command
    classify = CliRunner().invoke(app, ["classify", "--help"], env={"COLUMNS": "200"}).output
    assert "<int range>" in classify  # options that take a value still say what


def test_the_command_lists_give_each_command_its_summary_on_one_line():
    listed = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert "and who (cli, http, python; host and process). A forget lists" in listed.output
    bench = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "400"})
    assert "ever returned afterwards, and the time to erase" in bench.output


def test_version_is_printed_as_installed():
    from importlib.metadata import version

    out = run("--version")
    assert out.exit_code == 0 and out.output.strip() == f"vmem {version('vmem')}"


def test_forget_by_a_relative_source_finds_names_added_as_given(tmp_path, lite0, monkeypatch):
    from vmem import VisualMemory

    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.add([make_image((200, 30, 30)), make_image((30, 30, 200))], ["red", "blue"],
            sources=["camera/a.jpg", "camera2/b.jpg"])  # names a notebook gave, kept as given
    mem.close()
    monkeypatch.chdir(tmp_path)
    forgot = run("forget", "--memory", "memory", "--source", "camera/")
    assert forgot.exit_code == 0, forgot.output
    assert "forgot 1 point; memory now holds 1" in forgot.output
    entry = json.loads(run("history", "--memory", "memory", "--json").stdout.splitlines()[0])
    # Recorded made absolute, as it chose files, and as given
    assert entry["selector"] == {"source_prefix": f"{tmp_path.resolve()}/camera/", "as_given": "camera/"}


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed_not_the_end_of_the_build(tmp_path):
    data = tmp_path / "data"
    for label, colour in (("red", (220, 20, 20)), ("blue", (30, 40, 220))):
        (data / label).mkdir(parents=True)
        (data / label / "ok.png").write_bytes(make_image(colour, fmt="PNG"))
    # Linux lets a name be any bytes: a Latin-1 "é" from an old archive
    (data / "red" / os.fsdecode(b"caf\xe9.png")).write_bytes(make_image((200, 40, 40), fmt="PNG"))
    memory = tmp_path / "memory"
    for _ in range(2):  # and a resumed build gets past it too
        result = run("build", data, "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0")
        assert result.exit_code == 0, result.output
        assert "1 failed of 3 images" in result.output
        assert "caf\\xe9.png: its path is not UTF-8 text" in result.output
    assert "memory now holds 2 points" in result.output


def test_classify_json_writes_a_name_that_is_not_utf8_with_its_bytes_escaped(built, tmp_path):
    memory, _ = built
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / os.fsdecode(b"caf\xe9.png")).write_bytes(make_image((220, 20, 20), fmt="PNG"))
    (queries / "z.png").write_bytes(make_image((30, 40, 220), fmt="PNG"))
    result = run("classify", queries, "--memory", memory, "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["source"].rsplit("/", 1)[1], a["label"]) for a in answers] == [("caf\\xe9.png", "red"),
                                                                             ("z.png", "blue")]


def test_serve_names_the_setting_that_does_not_parse_before_opening_anything(built, monkeypatch):
    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    memory, _ = built
    monkeypatch.setenv("VMEM_MAX_UPLOAD_BYTES", "20MB")
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2 and "VMEM_MAX_UPLOAD_BYTES: Input should be a valid integer" in out.output, out.output
    monkeypatch.delenv("VMEM_MAX_UPLOAD_BYTES")
    monkeypatch.setenv("VMEM_GEMINI_DEADLINE_S", "abc")  # found at the first re-rank before: ready, then 500s
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2 and "VMEM_GEMINI_DEADLINE_S: Input should be a valid number" in out.output, out.output
    out = run("classify", "--memory", memory, "--rerank", memory)
    assert out.exit_code == 2 and "VMEM_GEMINI_DEADLINE_S" in out.output, out.output


def test_serve_takes_the_gemini_settings_and_key_from_the_env_file_too(built, tmp_path, monkeypatch):
    import os

    from reranker import GeminiSettings, api_key_from_env

    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(
        model=GeminiSettings().model, key=api_key_from_env(), memory=app.state.settings.location))
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "VMEM_GEMINI_MODEL", "VMEM_MEMORY"):
        monkeypatch.delenv(key, raising=False)
    memory, _ = built
    env = tmp_path / "service.env"
    env.write_text(f"VMEM_MEMORY={memory}\nGEMINI_API_KEY=key-from-the-file\nVMEM_GEMINI_MODEL=gemini-from-file\n",
                   encoding="utf-8")
    monkeypatch.setenv("VMEM_GEMINI_MODEL", "gemini-from-the-environment")  # the environment still wins
    monkeypatch.setenv("GEMINI_API_KEY", "")  # ... but a blank one is unset, and the file's stands
    try:
        out = run("serve", "--no-auth", "--env-file", env)
        assert out.exit_code == 0, out.output
        assert served == {"model": "gemini-from-the-environment", "key": "key-from-the-file", "memory": str(memory)}
    finally:
        os.environ.pop("GEMINI_API_KEY", None)  # put there by serve, as a process's environment


def test_serve_takes_the_templates_folder_from_the_env_file_too(built, tmp_path, monkeypatch):
    from prompts import default_registry

    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(templates=default_registry().names()))
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", "")  # unset (blank), and as it was once the test is done
    memory, _ = built
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "fine-grained.yaml").write_text("name: fine-grained\nversion: 1\nsystem: Look.\n")
    env = tmp_path / "service.env"
    env.write_text(f"VMEM_MEMORY={memory}\nVMEM_TEMPLATES_DIR={tmp_path / 'templates'}\n", encoding="utf-8")
    out = run("serve", "--no-auth", "--env-file", env)
    assert out.exit_code == 0, out.output
    assert served["templates"] == ["agentic-v1", "fine-grained", "labels-only", "neighbors-v1"]


def test_serve_help_shows_its_defaults_and_refuses_an_unknown_log_level_at_once(monkeypatch):
    monkeypatch.setattr("server.app.open_memory", lambda *a: pytest.fail("opened the memory first"))
    shown = run("serve", "--help").output
    assert "[default: $VMEM_MEMORY or ./memory]" in shown and "[default: ./.env when present]" in shown
    assert "\\[" not in shown  # the escape read as markup, as every typer does (0.15.4-0.20.0 by being asked)
    out = run("serve", "--no-auth", "--log-level", "loud")
    assert out.exit_code == 2 and "'loud' is not one of" in out.output


def test_a_vote_setting_out_of_range_names_the_option_not_pydantic(built, image_folder):
    memory, _ = built
    out = run("classify", image_folder / "query", "--memory", memory, "--alpha", "nan")
    assert out.exit_code == 2 and "--alpha nan: takes a number from 0.001 to 1e+06" in out.output, out.output
    assert "errors.pydantic.dev" not in out.output
    # The bounds the service takes: the CLI and Python had taken what HTTP refused
    out = run("classify", image_folder / "query", "--memory", memory, "--alpha", "1e7")
    assert out.exit_code == 2 and "--alpha 10000000.0: takes a number from 0.001 to 1e+06" in out.output, out.output


@pytest.mark.parametrize("variable", ["VMEM_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"])
def test_a_gemini_url_without_a_scheme_is_a_setting_to_mend_not_retries(built, image_folder, monkeypatch, variable):
    memory, _ = built
    monkeypatch.setenv(variable, "127.0.0.1:9")
    out = run("classify", image_folder / "query", "--memory", memory, "--rerank")
    assert out.exit_code == 2 and f"{variable}: '127.0.0.1:9' is no http:// or https:// URL" in out.output


def test_serve_takes_a_blank_setting_as_unset(built, monkeypatch, tmp_path):
    served = {}
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: served.update(location=app.state.settings.location))
    memory, _ = built
    monkeypatch.chdir(memory.parent)
    monkeypatch.setenv("VMEM_QDRANT_URL", "")  # as a blank line of an env template leaves it
    monkeypatch.setenv("VMEM_MEMORY", "")
    monkeypatch.setenv("VMEM_GEMINI_MODEL", "")
    out = run("serve", "--no-auth")
    assert out.exit_code == 0, out.output
    assert served["location"] in ("memory", "./memory", str(memory))  # the default, not "" (the current folder)


def test_an_interrupted_build_says_what_it_kept_and_how_to_resume(image_folder, tmp_path, monkeypatch):
    from vmem import VisualMemory

    def interrupted(self, items, **kw):
        kw["progress"](1)
        raise KeyboardInterrupt

    monkeypatch.setattr(VisualMemory, "build", interrupted)
    out = run("build", image_folder / "train", "--memory", tmp_path / "m", "--featurizer", "efficientnet-lite0")
    assert out.exit_code == 130
    assert "interrupted: the memory holds 0 points; run the same command again to resume" in out.output


def test_a_build_ended_by_sigterm_stops_as_ctrl_c_does(image_folder, tmp_path, monkeypatch):
    # `timeout`, `docker stop` and a CI job's limit send SIGTERM: it had killed the build, its adds unjournaled.
    import os
    import signal
    import time

    from vmem import VisualMemory

    def terminated(self, items, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        pytest.fail("SIGTERM did not stop the build")

    monkeypatch.setattr(VisualMemory, "build", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = run("build", image_folder / "train", "--memory", tmp_path / "m", "--featurizer", "efficientnet-lite0")
    assert out.exit_code == 130, out.output
    assert "interrupted: the memory holds 0 points; run the same command again to resume" in out.output
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whatever runs next in this process


def test_vmem_serve_stopped_by_sigterm_as_it_starts_exits_0_leaving_nothing(built, tmp_path, monkeypatch):
    # docker stop or systemctl stop while a read-only service copies a large memory: it had exited 130 (a failure
    # to systemd), saying "interrupted: ... run the command again to finish", where a stop once serving exits 0.
    import os
    import signal
    import tempfile
    import time

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        pytest.fail("SIGTERM did not stop the start")

    monkeypatch.setattr("retrieval.store.copy_folder_sparse", terminated)
    monkeypatch.setattr(RUN_UVICORN, lambda app, **kw: pytest.fail("served"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    memory, _ = built
    before = signal.getsignal(signal.SIGTERM)
    out = run("serve", "--no-auth", "--read-only", "--memory", memory)
    assert out.exit_code == 0, out.output
    assert "stopped (SIGTERM) before serving" in out.output and "interrupted" not in out.output
    assert list((tmp_path / "tmp").iterdir()) == []  # the copy begun is removed
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupted_classify_has_printed_the_answers_it_had(built, image_folder, monkeypatch, tmp_path):
    # Answers are printed part by part: `| head`, a log, and a Ctrl-C late in a large folder keep what was done.
    from vmem import VisualMemory

    memory, _ = built
    calls = []
    classify_many = VisualMemory.classify_many

    def second_part_interrupted(self, paths, **kw):
        calls.append(len(paths))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return classify_many(self, paths, **kw)

    monkeypatch.setattr(VisualMemory, "classify_many", second_part_interrupted)
    out = run("classify", image_folder / "train", "--memory", memory, "--k", "3", "--batch-size", "2")
    assert out.exit_code == 130
    assert calls[0] == 2 and len(out.stdout.splitlines()) == 2  # the first part's answers, whole
    assert "interrupted: the answers printed are whole" in out.stderr
    # An image skipped in a part is said with that part, not only at the end a Ctrl-C never reaches
    folder = tmp_path / "q" / "red"
    folder.mkdir(parents=True)
    (folder / "0-broken.jpg").write_bytes(b"not an image")
    for i in (1, 2, 3):
        (folder / f"{i}.png").write_bytes(make_image((200 - i, 0, 0), fmt="PNG"))
    calls.clear()
    out = run("classify", tmp_path / "q", "--memory", memory, "--k", "3", "--batch-size", "2")
    assert out.exit_code == 130 and len(out.stdout.splitlines()) == 1
    assert "skipped" in out.stderr and "0-broken.jpg" in out.stderr
    # vmem dmn classify likewise (it had printed every answer after the last image)
    calls.clear()
    out = run("dmn", "classify", image_folder / "train", "--memory", memory, "--batch-size", "2", "--stream", "s")
    assert out.exit_code == 130 and len(out.stdout.splitlines()) == 2
    assert "interrupted: the answers printed are whole; the images after them were not classified nor written to " \
           "the stream" in out.stderr


@pytest.mark.parametrize("body", [b"<html>a web page</html>", b'{"result": null}'])
def test_a_url_that_answers_but_not_as_qdrant_does_is_said_so_without_a_traceback(body):
    import http.server
    import threading

    class NotQdrant(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotQdrant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = run("info", "--qdrant-url", url)
        assert out.exit_code == 1 and f"{url} does not answer as a Qdrant server does" in out.output, out.output
        assert out.exception is None or isinstance(out.exception, SystemExit)
    finally:
        server.shutdown()


def test_a_sample_is_the_same_whatever_the_order_of_the_folders_given(tmp_path):
    from vmem.cli._common import expand_images

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(10):
            (tmp_path / folder / f"{i}.png").write_bytes(b"")
    one_way = expand_images([tmp_path / "a", tmp_path / "b"], sample=5, seed=3)
    assert expand_images([tmp_path / "b", tmp_path / "a"], sample=5, seed=3) == one_way
    assert expand_images([tmp_path / "a", tmp_path / "b", tmp_path / "a"], sample=5, seed=3) == one_way
    # One folder, as the quickstart gives it: the sample it always drew
    import random

    listed = sorted((tmp_path / "a").glob("*.png"))
    assert expand_images([tmp_path / "a"], sample=4, seed=0) == sorted(random.Random(0).sample(listed, 4))


def test_classify_exact_searches_every_point(built, image_folder, monkeypatch):
    from retrieval.store import EdgeMemoryStore

    asked = []
    query_batch = EdgeMemoryStore.query_batch
    monkeypatch.setattr(EdgeMemoryStore, "query_batch",
                        lambda self, v, k, labels=None, exact=False: asked.append(exact) or query_batch(self, v, k,
                                                                                                       labels, exact))
    memory, _ = built
    out = run("classify", image_folder / "query", "--memory", memory, "--k", "3", "--exact")
    assert out.exit_code == 0, out.output
    assert asked and all(asked)


@pytest.mark.parametrize(("device", "says"), [("tpu", "is not one torch knows"), ("cuda:7", "cuda"),
                                              ("mps", "no MPS")])
def test_serve_refuses_a_device_this_machine_lacks_before_starting(built, monkeypatch, device, says):
    import torch

    if (device.startswith("cuda") and torch.cuda.device_count() > 7) or (
            device == "mps" and torch.backends.mps.is_available()):
        pytest.skip(f"this machine has {device}")
    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    monkeypatch.setenv("VMEM_DEVICE", device)
    memory, _ = built
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2 and f"VMEM_DEVICE: device '{device}'" in out.output and says in out.output, out.output


def test_every_command_takes_its_encoder_device_from_vmem_device(built, image_folder, monkeypatch):
    # Only `vmem serve` had read VMEM_DEVICE: a build or a classify could not be put on a Mac's GPU or a second
    # CUDA card. A device the machine lacks is refused naming the variable.
    import torch

    memory, _ = built
    if torch.cuda.device_count() <= 7:
        monkeypatch.setenv("VMEM_DEVICE", "cuda:7")
        out = run("classify", image_folder / "query", "--memory", memory, "--k", "3")
        assert out.exit_code == 2 and "VMEM_DEVICE: device 'cuda:7'" in out.output, out.output
        # ...by the commands that load the encoder only once they need it too (they had ended in a traceback)
        out = run("build", image_folder / "train", "--memory", memory)
        assert said(out, "VMEM_DEVICE: device 'cuda:7'") and out.exit_code == 2
        out = run("tune", "--memory", memory, "--dataset", image_folder / "query", "--dry-run")
        assert said(out, "VMEM_DEVICE: device 'cuda:7'") and out.exit_code == 2
    monkeypatch.setenv("VMEM_DEVICE", "cpu")
    out = run("classify", image_folder / "query", "--memory", memory, "--k", "3")
    assert out.exit_code == 0, out.output


def test_start_up_problems_are_one_line_each(built, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    memory, _ = built
    halved = tmp_path / "halved"  # its vmem.json copied, not its vectors
    halved.mkdir()
    shutil.copy(memory / "vmem.json", halved / "vmem.json")
    out = run("info", "--memory", halved)
    assert out.exit_code == 1 and "has its vmem.json but not its vectors (shard/ is missing)" in out.output
    latin1 = tmp_path / "latin1.env"
    latin1.write_bytes(b"VMEM_GEMINI_MODEL=caf\xe9\n")
    out = run("serve", "--no-auth", "--memory", memory, "--env-file", latin1)
    assert out.exit_code == 2 and "latin1.env is not UTF-8 text (byte 0xe9)" in out.output, out.output
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VMEM_THUMBNAIL_DIR", str(tmp_path / "a-file"))
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2 and "VMEM_THUMBNAIL_DIR:" in out.output and "is a file, not a folder" in out.output
    monkeypatch.setenv("VMEM_THUMBNAIL_DIR", str(tmp_path / "a-file" / "thumbnails"))  # had been 59 lines
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2 and "VMEM_THUMBNAIL_DIR:" in out.output and "cannot be made" in out.output, out.output


def test_a_memory_whose_files_the_user_may_not_write_is_one_line(built, monkeypatch):
    # The lock file writable, the engine's files not (another user's memory): a 54-line traceback. This is the
    # engine's error as it raised it then, for a user other than the files' owner (root may write anything).
    from vmem import VisualMemory

    def engine_refuses(*args, **kwargs):
        raise Exception("Service runtime error: failed to load segment /m/shard/segments/46d5: Service runtime "
                        "error: Failed to open mmap payload storage: Permission denied (os error 13)")

    monkeypatch.setattr(VisualMemory, "open", engine_refuses)
    memory, _ = built
    # vmem points opens the engine (vmem info of a memory at rest reads the counts its last close kept)
    out = run("points", "--memory", memory)
    assert out.exit_code == 2 and "cannot open the memory's files in" in out.output, out.output
    assert "(Failed to open mmap payload storage: Permission denied (os error 13))" in out.output
    assert "they must be writable by this user, even to read them" in out.output


def test_a_memory_restored_by_another_user_says_whose_it_is_and_how_to_serve_it(built, monkeypatch):
    # A service's own user (uid 54321 in a container) and a memory an operator restored as root: "Permission denied
    # (.vmem-open.lock): give a directory you can write to" named neither the files' owner nor the way out.
    import errno
    import json
    import os

    from vmem import VisualMemory

    memory, _ = built
    owner = os.stat(memory).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 54321)  # this process runs as another user than the owner

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(memory / ".vmem-open.lock"))

    def said(out) -> str:  # the error's box unwrapped
        return " ".join(line.strip("│ ") for line in out.output.splitlines())

    monkeypatch.setattr(VisualMemory, "open", refused)
    out = run("serve", "--no-auth", "--memory", memory)
    assert out.exit_code == 2, out.output
    assert "Invalid value for --memory (VMEM_MEMORY): cannot open or create the memory directory" in said(out)
    assert f"(its files belong to uid {owner}" in said(out) and f"runs as uid {owner + 54321}" in said(out)
    assert f"`chown -R {owner + 54321} {memory}`" in said(out)
    assert "or serve it as it is, for classify only: vmem serve --read-only (VMEM_READ_ONLY=true)" in said(out)
    out = run("points", "--memory", memory)  # the other commands that open it say whose it is too
    assert out.exit_code == 2 and f"(its files belong to uid {owner}" in said(out) and "--read-only" not in said(out)

    # With VMEM_LOG_FORMAT=json, the error that ends the start is one JSON line, as every other line of the log
    monkeypatch.setenv("VMEM_LOG_FORMAT", "json")
    out = run("serve", "--no-auth", "--memory", memory)
    *_, line = [json.loads(line) for line in out.output.splitlines() if line.strip()]  # after --no-auth's warning
    assert line["level"] == "ERROR" and line["logger"] == "vmem.serve" and out.exit_code == 2
    assert line["message"].startswith("Error: Invalid value for --memory (VMEM_MEMORY): cannot open or create")
    monkeypatch.delenv("VMEM_API_KEY", raising=False)
    out = run("serve", "--memory", memory)  # before the settings are read
    [line] = [json.loads(line) for line in out.output.splitlines() if line.strip()]
    assert "no API key: set VMEM_API_KEY" in line["message"] and out.exit_code == 2


def test_a_memory_on_a_full_disk_is_one_line_and_a_temporary_failure(tmp_path):
    # The engine writes its config as it opens a memory: on a full ext4 disk every command had been a 25-line
    # traceback, and a build into a new folder exit 2, "give a directory you can write to".
    import errno

    from vmem.cli._common import TemporaryFailure, open_failure

    engine = RuntimeError("Service internal error: Failed to save structure on disk: No space left on device "
                          "(os error 28) at path shard/.atomicwriteXYZ")
    for exc in (engine, *(OSError(no_room, os.strerror(no_room), str(tmp_path / "m"))
                          for no_room in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))):  # a quota, a file-size limit
        said = open_failure(tmp_path / "m", None, exc)
        assert isinstance(said, TemporaryFailure) and said.exit_code == 75
        assert said.message == (f"the disk holding the memory {tmp_path / 'm'} is full (the engine writes as it "
                                "opens a memory): free some space, then run the command again")


def test_a_build_warns_when_the_disk_may_not_hold_it(image_folder, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = 80 * 10**6  # less than the build may need, more than the 64 MB an edit leaves untouched
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))
    out = run("build", image_folder / "train", "--memory", tmp_path / "m", "--featurizer", "efficientnet-lite0",
              "--workers", "0")
    assert out.exit_code == 0, out.output
    assert "warning: the disk holding" in out.output and "0.08 GB free" in out.output
    assert "the build stops when 64 MB are left" in out.output
    free = 5 * 10**6  # then it stops, before the engine writes (a full disk had killed it with a bus error)
    out = run("build", image_folder / "query", "--memory", tmp_path / "m", "--workers", "0")
    assert out.exit_code == 1 and "refused before anything was written" in out.output, out.output
    assert "run the same command again to resume" in out.output  # what it kept, and how to go on
    # A new memory is refused before the engine makes it (its first log file takes 32 MB at once: a bus error),
    # and made once there is room.
    out = run("build", image_folder / "train", "--memory", tmp_path / "m2", "--featurizer", "efficientnet-lite0",
              "--workers", "0")
    assert out.exit_code == 1 and "a new memory needs 64 MB: refused before anything was written" in out.output
    assert not (tmp_path / "m2").exists()  # nothing written, and no folder left behind (it had held a lock file)
    free = 80 * 10**6
    out = run("build", image_folder / "query", "--memory", tmp_path / "m2", "--featurizer", "efficientnet-lite0",
              "--workers", "0")
    assert out.exit_code == 0 and "3 added" in out.stdout, out.output
    free = 50 * 10**6
    # A forget goes on; its erase is refused, after the forget is said (it had been a traceback)
    erased = run("forget", "--memory", tmp_path / "m", "--label", "blue", "--erase")
    assert erased.exit_code == 1 and "forgot 4 points" in erased.stdout, erased.output
    assert "forgotten points stay forgotten" in erased.stderr


def test_commands_that_only_read_a_memory_import_nothing_they_do_not_use(built, image_folder, tmp_path):
    import subprocess
    import sys

    memory, _ = built
    log = tmp_path / "answers.jsonl"
    asked = run("classify", image_folder / "query" / "red" / "q.jpg", "--memory", memory, "--answer-log", log)
    assert asked.exit_code == 0, asked.output
    # A script runs these in a loop (a health check's `vmem labels --json` every minute), and each pays its imports
    # every time. Only what embeds images (build, classify, serve, eval) needs torch; only eval, tune, prune,
    # experiment and the benchmarks the measuring package `eval`; only a re-ranking the Gemini SDK; only serve the
    # web framework.
    unused = ["torch", "transformers", "eval", "google.genai", "fastapi", "uvicorn", "matplotlib"]
    on_memory = ["--memory", str(memory)]
    commands = [["--version"], ["--help"], ["info", *on_memory], ["labels", "--json", *on_memory],
                ["history", "--limit", "1", *on_memory], ["points", "--limit", "1", *on_memory],
                ["answers", "--log", str(log), "--forgotten", str(memory)]]
    script = ("import sys; from vmem.cli import app\n"
              f"for command in {commands!r}:\n"
              "    try:\n"
              "        app(command, standalone_mode=False)\n"
              "    except SystemExit:\n"  # --version ends so
              "        pass\n"
              f"print(sorted(set(sys.modules) & set({unused!r})))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout.splitlines()[-1]


def test_a_command_builds_and_imports_only_itself_and_the_help_still_lists_every_command(built):
    import subprocess
    import sys

    memory, _ = built
    # Typer built every command from its function's signature at each start, and every command's module was
    # imported (the benchmarks' too): `vmem --version` built 35 commands to print one line.
    script = ("import sys; from vmem.cli import app\n"
              f"for command in [['--version'], ['info', '--memory', {str(memory)!r}]]:\n"
              "    try:\n"
              "        app(command, standalone_mode=False)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "    print(sorted(m for m in sys.modules if m.startswith('vmem.cli.') and m != 'vmem.cli._common'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert imported == ["[]", "['vmem.cli.memory']"]

    listed = [line.split()[1] for line in run("--help").stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    assert listed == ["--verbose", "--version", "--help", "build", "classify", "forget", "relabel", "info",
                      "labels", "names", "points", "export", "import", "history", "answers", "copy", "backup",
                      "diff", "erase", "serve", "key", "eval", "prune", "suspects", "experiment", "tune", "templates",
                      "bench", "dmn"]


@pytest.mark.parametrize("command", [["info"], ["serve", "--no-auth"]])
def test_a_memory_folder_and_a_qdrant_url_together_are_refused(tmp_path, command, monkeypatch):
    monkeypatch.setattr(RUN_UVICORN, lambda *a, **kw: pytest.fail("vmem serve started serving"))
    out = run(*command, "--memory", tmp_path / "m", "--qdrant-url", "http://127.0.0.1:1")
    assert out.exit_code == 2 and "not both" in out.output, out.output


def test_serve_raises_its_open_files_limit_and_logs_accept_failures_once_a_minute():
    # At `ulimit -Sn 64`, 100 clients at once made asyncio log 106,273 accept() tracebacks in 21 s.
    import logging
    import subprocess
    import sys

    raised = subprocess.run([sys.executable, "-c", (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from vmem.cli.serve import open_files_limit\n"
        "said = open_files_limit()\n"
        "print(said, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard == resource.RLIM_INFINITY, hard)")],
        capture_output=True, text=True, timeout=120)
    said, soft, unlimited, hard = raised.stdout.split()
    assert int(said) == int(soft) == (1 << 16 if unlimited == "True" else int(hard)), raised.stderr

    from vmem.cli.serve import AcceptErrorsOncePerMinute

    storm = AcceptErrorsOncePerMinute()
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "socket.accept() out of system resource\nexception: OSError(24)", None, None)
               for _ in range(1000)]
    assert sum(storm.filter(r) for r in records) == 1
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "something else", None, None)
    assert storm.filter(other)


def test_an_option_is_spelled_alike_in_every_command_that_takes_it():
    """A feature cache is `--cache` in eval and `--feature-cache` in build, a names file `--classes` in eval and
    `--label-names` in build: each command takes both spellings, so one learned in one command works in the next."""
    import typer

    def commands(group, path: str = ""):
        for name, cmd in getattr(group, "commands", {}).items():
            yield f"{path} {name}".strip(), cmd
            yield from commands(cmd, f"{path} {name}")

    same = [{"--cache", "--feature-cache"}, {"--classes", "--label-names"}]
    checked = 0
    for name, cmd in commands(typer.main.get_command(app)):
        for param in cmd.params:
            spellings = set(param.opts)
            for group in same:
                if spellings & group and not getattr(param, "is_flag", False):  # bench load's --cache: a switch
                    assert group <= spellings, f"vmem {name} {'/'.join(param.opts)} lacks {group - spellings}"
                    checked += 1
    assert checked >= 8


def test_templates_path_prints_the_user_folder_or_says_how_to_set_one_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", "")
    unset = run("templates", "path")
    assert unset.exit_code == 1 and "set $VMEM_TEMPLATES_DIR to a folder of YAML templates" in unset.stderr
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path))
    assert run("templates", "path").stdout.strip() == str(tmp_path)


def test_a_memory_in_qdrant_clients_local_mode_answers_as_its_folder_does_and_warns_of_nothing(built, image_folder,
                                                                                               tmp_path):
    import subprocess
    import sys

    memory, _ = built
    local = f"qdrant-local:{tmp_path / 'local'}"  # qdrant-client's code, as against a server, in a folder
    assert run("copy", "--memory", memory, "--to-memory", local).exit_code == 0
    said = []
    # In a process of its own: qdrant-client warns once per process, and pytest records every warning
    for command in ["classify", image_folder / "query", "--no-rerank"], ["history", "--limit", "1"]:
        done = subprocess.run([sys.executable, "-m", "vmem", *map(str, command), "--memory", local],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
        said.append(done.stdout)
    # The folder, which no qdrant-client code reads, answers in this process (a child more was ~4 s of torch)
    in_folder = CliRunner().invoke(app, ["classify", str(image_folder / "query"), "--no-rerank", "--memory",
                                         str(memory)])
    assert in_folder.exit_code == 0, in_folder.output
    assert in_folder.stdout == said[0] != ""  # the same answers, said alike


def test_vmem_erase_of_a_memory_that_is_no_folder_says_erase_is_a_folders_and_what_a_server_does(built, tmp_path):
    memory, _ = built
    local = f"qdrant-local:{tmp_path / 'local'}"
    assert run("copy", "--memory", memory, "--to-memory", local).exit_code == 0
    out = run("erase", "--memory", local)
    assert out.exit_code == 2
    # Not "Invalid value for --erase ... forget without erase": vmem erase has no --erase, and forgets nothing
    assert "Invalid value for --memory: vmem erase rewrites an embedded memory's folder" in out.output, out.output
    assert "--erase" not in out.output and "forget without erase" not in out.output


def test_vmem_history_counts_the_edits_its_limit_left_out_in_words(built, tmp_path):
    # "... and 1 earlier edits (--limit)" is what a user read after `vmem history --limit 5` of six edits
    memory, _ = built
    copy = tmp_path / "memory"
    assert run("copy", "--memory", memory, "--to-memory", copy).exit_code == 0
    (tmp_path / "names.tsv").write_text("red\tRed\n")
    assert run("names", tmp_path / "names.tsv", "--memory", copy).exit_code == 0
    edits = len(run("history", "--memory", copy, "--json").stdout.splitlines())
    assert edits >= 2
    one_left = run("history", "--memory", copy, "--limit", edits - 1)
    assert one_left.exit_code == 0 and "... and 1 earlier edit (next page: --cursor " in one_left.stderr, (
        one_left.stderr)
    two_left = run("history", "--memory", copy, "--limit", edits - 2)
    assert "... and 2 earlier edits (next page: --cursor " in two_left.stderr, two_left.stderr


def test_vmem_history_is_read_whole_a_page_at_a_time_with_until(built, tmp_path):
    # --limit shows the newest edits; an audit of them all pages back with --until the oldest shown, which each
    # page shows again (the parts of one edit share its time)
    memory, _ = built
    copy = tmp_path / "memory"
    assert run("copy", "--memory", memory, "--to-memory", copy).exit_code == 0
    for n in range(3):
        (tmp_path / "names.tsv").write_text(f"red\tRed {n}\n")
        assert run("names", tmp_path / "names.tsv", "--memory", copy).exit_code == 0
    whole = [json.loads(line) for line in run("history", "--memory", copy, "--json").stdout.splitlines()]
    assert len(whole) >= 4
    paged: list[dict] = []
    until = None
    while True:
        page = run("history", "--memory", copy, "--json", "--limit", 2, *(["--until", until] if until else []))
        assert page.exit_code == 0, page.output
        entries = [json.loads(line) for line in page.stdout.splitlines()]
        new = [e for e in entries if e not in paged]
        paged += new
        if not new or "earlier edit" not in page.stderr:
            break
        until = entries[-1]["at"]
    assert paged == whole
    bad = run("history", "--memory", copy, "--until", "last week")
    assert bad.exit_code == 2 and "--until" in bad.output and "'last week' is not a date or time" in bad.output
    backwards = run("history", "--memory", copy, "--since", "2026-12-06", "--until", "2026-12-05")
    assert backwards.exit_code == 2, backwards.output
    assert "Invalid value for --since / --until: since '2026-12-06' is after until '2026-12-05'" in backwards.output


def test_vmem_history_pages_through_a_forget_journaled_in_parts_with_the_cursor_it_gives(built, tmp_path,
                                                                                       monkeypatch):
    # A forget of more than 100,000 points journals several parts at one time: --until the oldest shown, at
    # --limit 2, came back to the same two parts page after page. Each page says the next one's --cursor
    import retrieval.journal

    memory, _ = built
    copy = tmp_path / "memory"
    assert run("copy", "--memory", memory, "--to-memory", copy).exit_code == 0
    monkeypatch.setattr(retrieval.journal, "IDS_PER_ENTRY", 1)  # a part per point: 3 parts of one time
    with VisualMemory(open_store(copy), reranker=None) as mem:
        assert mem.forget(ids=[p.id for p in mem.points(limit=3).points]) == 3
    whole = run("history", "--memory", copy, "--json").stdout.splitlines()
    assert [json.loads(line)["part"] for line in whole[:3]] == [2, 1, 0] and len(whole) >= 4
    paged, cursor = [], None
    while True:
        page = run("history", "--memory", copy, "--json", "--limit", 2, *(["--cursor", cursor] if cursor else []))
        assert page.exit_code == 0, page.output
        paged += page.stdout.splitlines()
        if (found := re.search(r"next page: --cursor (\S+)\)", page.stderr)) is None:
            break
        cursor = found[1]
        assert f"... and {len(whole) - len(paged)} earlier edit" in page.stderr, page.stderr
    assert paged == whole  # each edit once, newest first
    # Past a cursor, none older matches: said as such, not as "no forget recorded" (the 3 newest edits are one)
    first = run("history", "--memory", copy, "--limit", 3)
    after = re.search(r"next page: --cursor (\S+)\)", first.stderr)[1]
    assert [line.split("\t")[1] for line in first.stdout.splitlines()] == [f"forget [part {i}]" for i in (3, 2, 1)]
    older = run("history", "--memory", copy, "--op", "forget", "--since", "2000-01-01", "--cursor", after)
    assert older.exit_code == 0 and older.stdout == "", older.output
    assert older.stderr == "no edits recorded older than --cursor that match --op forget --since 2000-01-01\n", (
        older.stderr)
    bad = run("history", "--memory", copy, "--cursor", "nope")
    assert bad.exit_code == 2 and "--cursor" in bad.output and "is no cursor of this memory's history" in bad.output
    assert "next_cursor" not in bad.output  # HTTP's name for it: the CLI says "next page: --cursor ..."


def test_a_label_whose_points_were_all_forgotten_lists_and_exports_nothing_and_an_unknown_one_is_refused(built,
                                                                                                        tmp_path):
    # As GET /v1/memory/points answers it: a user checking that a forget took a class whole had been told the memory
    # never had that label ("Invalid value for --label"), as of a misspelt one
    memory, _ = built
    copy = tmp_path / "memory"
    assert run("copy", "--memory", memory, "--to-memory", copy).exit_code == 0
    gone = "blue"
    forgot = run("forget", "--memory", copy, "--label", gone)
    assert forgot.exit_code == 0, forgot.output
    listed = run("points", "--memory", copy, "--label", gone, "--json")
    assert listed.exit_code == 0 and listed.stdout == "", listed.output
    exported = run("export", tmp_path / "gone.npz", "--memory", copy, "--label", gone)
    assert exported.exit_code == 0, exported.output
    assert len(np.load(tmp_path / "gone.npz")["ids"]) == 0
    for command in (["points"], ["export", tmp_path / "none.npz"]):
        refused = run(*command, "--memory", copy, "--label", "no-such-label")
        assert refused.exit_code == 2 and "no label 'no-such-label'" in refused.output, refused.output


def test_a_copy_made_after_a_forget_holds_no_trace_of_the_forgotten_points_but_their_ids_in_its_journal(
        built, tmp_path):
    # README, "Forgetting": the engine's write-ahead log keeps recent writes; a copy into a new folder leaves them.
    memory, _ = built
    import shutil

    from vmem.cli.bench_search import copies_in_files

    old = tmp_path / "memory"
    shutil.copytree(memory, old)
    with open_store(old) as store:
        blue = [p for batch in store.scroll(with_vectors=True) for p in batch if p.payload["label"] == "blue"]
    assert run("forget", "--memory", old, "--label", "blue", "--erase").exit_code == 0
    assert run("copy", "--memory", old, "--to-memory", tmp_path / "new").exit_code == 0
    new = tmp_path / "new"
    assert copies_in_files(new, np.stack([p.vector for p in blue])) == 0
    everything = b"".join(f.read_bytes() for f in new.rglob("*") if f.is_file())  # the log included
    assert not any(p.payload["source"].encode() in everything for p in blue)
    journal = (new / "journal.jsonl").read_bytes()
    assert all(p.id.encode() in journal for p in blue)  # the forget, as journaled here
    engine = b"".join(f.read_bytes() for f in new.rglob("*") if f.is_file() and f.name != "journal.jsonl")
    assert not any(p.id.encode() in engine or bytes.fromhex(p.id.replace("-", "")) in engine for p in blue)
