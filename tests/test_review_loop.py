"""A person in the loop: `vmem classify --min-confidence --csv --review-csv` answers the sure images, queues the
unsure ones; a person corrects the queue in a spreadsheet; `vmem build` adds it back. On a tiny real memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.conftest import FEATURE_CACHE
from tests.test_answer_sheets import read_rows, run  # the CLI run and a CSV read as a spreadsheet writes it

# Names a spreadsheet and a CSV must keep whole: a comma, a quote, non-ASCII letters
ODD_NAMES = ('a,b.JPEG', 'say "cheese".JPEG', 'café ñandú 猫.JPEG')


def test_the_unsure_answers_go_to_a_person_and_their_corrections_into_the_memory(tiny_imagenet, tmp_path,
                                                                                   monkeypatch):
    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir())[:5]
    for split, n in (("train", 10), ("val", 8)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            files = sorted((tiny_imagenet / split / c).iterdir())[:n]
            for i, f in enumerate(files):
                name = ODD_NAMES[i] if split == "val" and i < len(ODD_NAMES) else f.name
                (tmp_path / split / c / name).symlink_to(f)
    memory = tmp_path / "memory"
    run("build", tmp_path / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0",
        "--feature-cache", FEATURE_CACHE)

    # The photos named from where the team works (a relative folder), the queue kept elsewhere
    monkeypatch.chdir(tmp_path)
    answers, queue = tmp_path / "answers.csv", tmp_path / "review" / "queue.csv"
    queue.parent.mkdir()
    out = run("classify", "val", "--memory", memory, "--exact", "--k", "10", "--json",
              "--min-confidence", "0.6", "--csv", answers, "--review-csv", queue)
    said = {str(tmp_path / a["source"]): a for a in map(json.loads, out.stdout.splitlines())}
    rows = read_rows(answers)
    assert len(rows) == len(said) == 40
    assert all(any(n in r["path"] for r in rows) for n in ODD_NAMES)  # each odd path read back whole
    for r in rows:  # the sheet says what --json says
        a = said[r["path"]]
        assert Path(r["path"]).is_absolute() and Path(r["path"]).is_file()
        assert (r["label"], r["label_name"], float(r["confidence"]), r["unsure"] == "true", r["reason"]) == (
            a["label"], a["label_name"] or "", round(a["confidence"], 6), a["unsure"], a["unsure_reason"] or "")
    unsure = [r["path"] for r in rows if r["unsure"] == "true"]
    assert 2 < len(unsure) < 40, len(unsure)
    assert f"{len(unsure)} unsure ones to {queue}" in out.stderr

    queued = read_rows(queue)
    assert [(q["path"], q["label"]) for q in queued] == [(p, said[p]["label"]) for p in unsure]  # the suggestions
    # The person: the true label (the image's folder) in each row, but one they could not tell left empty
    for q in queued:
        q["label"] = Path(q["path"]).parent.name
    queued[0]["label"] = ""
    with queue.open("w", newline="", encoding="utf-8-sig") as f:  # as a spreadsheet saves "CSV UTF-8"
        w = csv.DictWriter(f, fieldnames=list(queued[0]))
        w.writeheader()
        w.writerows(queued)

    built = run("build", queue, "--memory", memory)
    assert built.stdout.startswith(f"{len(unsure) - 1} added, 0 already in memory, 0 failed")
    assert "queue.csv: 1 row with no label left out (line 2)" in built.stdout

    # The corrected images are in the memory under the person's labels: each is now its own nearest neighbour
    again = run("classify", *[Path(q["path"]) for q in queued], "--memory", memory, "--exact", "--k", "1", "--json")
    labels = {a["source"]: a["label"] for a in map(json.loads, again.stdout.splitlines())}
    assert labels[queued[0]["path"]] == said[queued[0]["path"]]["label"]  # left out: still the memory's guess
    assert all(labels[q["path"]] == q["label"] for q in queued[1:])


def test_a_review_queue_needs_a_threshold_and_a_file_of_its_own(tiny_imagenet, tmp_path):
    image = next((tiny_imagenet / "val").iterdir())
    out = run("classify", image, "--memory", tmp_path / "memory", "--review-csv", tmp_path / "q.csv", code=2)
    assert "give --min-confidence" in out.output
    out = run("classify", image, "--memory", tmp_path / "memory", "--min-confidence", "0.5", "--csv",
              tmp_path / "q.csv", "--review-csv", tmp_path / "q.csv", code=2)
    assert "a file of its own" in out.output
    out = run("classify", image, "--memory", tmp_path / "memory", "--csv", tmp_path / "no" / "a.csv", code=2)
    assert "cannot write" in out.output and not (tmp_path / "memory").exists()


def test_dmn_classify_writes_the_same_sheets(tiny_imagenet, tmp_path):
    """`vmem dmn classify` answers with the fused DMN probability as its confidence; its sheets are classify's."""
    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir())[:4]
    for split, n in (("train", 10), ("val", 6)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for f in sorted((tiny_imagenet / split / c).iterdir())[:n]:
                (tmp_path / split / c / f.name).symlink_to(f)
    memory = tmp_path / "memory"
    run("build", tmp_path / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0",
        "--feature-cache", FEATURE_CACHE)
    answers, queue = tmp_path / "answers.csv", tmp_path / "queue.csv"
    out = run("dmn", "classify", tmp_path / "val", "--memory", memory, "--mode", "memory-only", "--no-update",
              "--json", "--min-confidence", "0.7", "--csv", answers, "--review-csv", queue)
    said = {a["source"]: a for a in map(json.loads, out.stdout.splitlines())}
    rows = read_rows(answers)
    assert len(rows) == len(said) == 24
    for r in rows:
        a = said[r["path"]]
        assert a["vote"]["rule"] == "dmn"
        assert (r["label"], float(r["confidence"]), r["unsure"] == "true", r["reason"]) == (
            a["label"], round(a["confidence"], 6), a["unsure"], a["unsure_reason"] or "")
    unsure = [r["path"] for r in rows if r["unsure"] == "true"]
    assert 0 < len(unsure) < 24, len(unsure)
    assert "the DMN probability" in next(r["reason"] for r in rows if r["unsure"] == "true")
    assert [q["path"] for q in read_rows(queue)] == unsure
    assert f"{len(unsure)} unsure ones to {queue}" in out.stderr

    # As classify refuses them: a queue without a threshold, or in the answers' own file
    refused = run("dmn", "classify", tmp_path / "val", "--memory", memory, "--review-csv", queue, code=2)
    assert "give --min-confidence" in refused.output
    refused = run("dmn", "classify", tmp_path / "val", "--memory", memory, "--min-confidence", "0.5",
                  "--csv", queue, "--review-csv", queue, code=2)
    assert "a file of its own" in refused.output
