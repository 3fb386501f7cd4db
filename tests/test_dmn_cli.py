"""`vmem dmn classify/streams/show/reset` end to end on a tiny random CLIP memory of coloured squares."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import make_image
from tests.test_clip import COLOURS, tiny_clip_dir  # noqa: F401  (the session fixture)
from vmem.cli import app

runner = CliRunner()


def write_folder(root, shades):
    for name, (r, g, b) in COLOURS.items():
        (root / name).mkdir(parents=True)
        for s in shades:
            (root / name / f"{s + 20}.jpg").write_bytes(make_image((r + s, g, b - s), size=(36, 32)))


def built_memory(tmp_path, clip_dir) -> str:
    """`vmem build` of three shades of each colour in tmp_path/train with the tiny CLIP: the memory's folder."""
    write_folder(tmp_path / "train", (-20, 0, 20))
    mem = str(tmp_path / "memory")
    built = runner.invoke(app, ["build", str(tmp_path / "train"), "--memory", mem,
                                "--featurizer", f"clip:{clip_dir}", "--workers", "0"])
    assert built.exit_code == 0, built.output
    return mem


def test_dmn_commands(tmp_path, tiny_clip_dir):  # noqa: F811
    mem = built_memory(tmp_path, tiny_clip_dir)
    write_folder(tmp_path / "query", (-10, 10))

    out = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query"), "--memory", mem, "--stream", "cam",
                              "--mode", "memory-only", "--truth-from-dirs"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 7  # 6 images + the accuracy line
    assert lines[-1].startswith("accuracy 100.00% (6/6) with dmn (memory-only, stream cam)")

    unknown = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query"), "--memory", mem, "--label", "okapi"],
                            env={"COLUMNS": "250"})
    assert unknown.exit_code == 2 and "the memory has no label 'okapi'" in unknown.output, unknown.output

    listed = runner.invoke(app, ["dmn", "streams", "--memory", mem])
    assert listed.exit_code == 0
    assert listed.stdout == "cam\t6 entries in 3 labels\t6 queries seen\n"

    shown = runner.invoke(app, ["dmn", "show", "cam", "--memory", mem, "--json"])
    info = json.loads(shown.stdout)
    assert info["entries"] == 6 and info["slots"] == 50
    assert {lab: v["entries"] for lab, v in info["labels"].items()} == {"blue": 2, "green": 2, "red": 2}

    as_json = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query" / "red"), "--memory", mem,
                                  "--dmn-stream", "cam", "--json", "--no-update"])
    first = json.loads(as_json.stdout.splitlines()[0])
    assert first["vote"]["rule"] == "dmn" and first["dmn"]["stream"] == "cam"
    assert set(first["dmn"]["parts"]) == {"text", "dynamic", "static"}  # auto: a CLIP memory is few-shot

    # The main classify command takes the rule too.
    main = runner.invoke(app, ["classify", str(tmp_path / "query"), "--memory", mem, "--vote", "dmn",
                               "--dmn-stream", "cam2", "--truth-from-dirs"])
    assert main.exit_code == 0, main.output
    assert main.stdout.strip().splitlines()[-1].startswith("accuracy 100.00% (6/6) with dmn voting")
    assert "cam2" in runner.invoke(app, ["dmn", "streams", "--memory", mem]).stdout
    ranked = runner.invoke(app, ["classify", str(tmp_path / "query"), "--memory", mem, "--vote", "rank",
                                 "--k", "3", "--truth-from-dirs"])
    assert ranked.stdout.strip().splitlines()[-1].startswith("accuracy 100.00% (6/6) with rank voting, k=3")
    # A setting the chosen rule would not read is refused, not ignored.
    unread = runner.invoke(app, ["classify", str(tmp_path / "query"), "--memory", mem, "--vote", "dmn", "--k", "3"])
    assert unread.exit_code == 2 and "rule dmn does not use it" in unread.output
    mixed = runner.invoke(app, ["classify", str(tmp_path / "query"), "--memory", mem, "--vote", "rank",
                                "--dmn-stream", "cam"])
    assert mixed.exit_code == 2 and "for rule dmn, not rank" in mixed.output

    assert runner.invoke(app, ["dmn", "reset", "cam", "--memory", mem]).stdout == "reset stream cam\n"
    again = runner.invoke(app, ["dmn", "reset", "cam", "--memory", mem])
    assert again.exit_code == 1
    bad = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query"), "--memory", mem, "--mode", "psychic"])
    assert bad.exit_code == 2 and "mode" in bad.output


def test_dmn_classify_marks_answers_under_min_confidence_its_fused_probability(tmp_path, tiny_clip_dir):  # noqa: F811
    mem = built_memory(tmp_path, tiny_clip_dir)
    write_folder(tmp_path / "query", (-10, 10))
    args = ["dmn", "classify", str(tmp_path / "query"), "--memory", mem, "--mode", "few-shot", "--truth-from-dirs"]

    # A dmn answer's confidence is the fused probability of its label: its `scores` entry, the scores summing to 1
    plain = runner.invoke(app, [*args, "--json"])
    answers = [json.loads(line) for line in plain.stdout.splitlines()]
    assert len(answers) == 6
    for a in answers:
        assert a["confidence"] == a["scores"][a["label"]] == max(a["scores"].values())
        assert sum(a["scores"].values()) == pytest.approx(1, abs=1e-3)  # scores under 1e-4 are left out
        assert (a["min_confidence"], a["unsure"]) == (None, False)

    # Few-shot, the random tiny CLIP's text half splits some answers between two labels: a threshold above those
    # marks them, with why, and counts them
    threshold = 0.75
    under = sum(a["confidence"] < threshold for a in answers)
    assert 0 < under < 6
    marked = runner.invoke(app, [*args, "--min-confidence", str(threshold)])
    assert marked.exit_code == 0, marked.output
    assert marked.stdout.count("[unsure: confidence ") == under
    assert f"unsure: {under} of 6 answers under min confidence {threshold:g} (for a person to check); " \
           f"{6 - under} answered" in marked.stdout
    judged = runner.invoke(app, [*args, "--min-confidence", str(threshold), "--json"])
    reasons = [json.loads(line)["unsure_reason"] for line in judged.stdout.splitlines()]
    assert sum(r is not None for r in reasons) == under
    assert all(" (the DMN probability of '" in r for r in reasons if r)  # no vote share: said as what it is

    bad = runner.invoke(app, [*args, "--min-confidence", "1.5"])
    assert bad.exit_code == 2 and "--min-confidence" in bad.output


def test_streams_of_an_earlier_featurizer_are_reported_not_a_crash(tmp_path):
    """A memory rebuilt with another encoder at the same place leaves streams it cannot read."""
    import numpy as np

    from retrieval import FeaturizerSpec, Preprocessing, open_store
    from retrieval.dmn import DynamicMemory
    from vmem.dmn_classifier import dmn_home, memory_key

    mem = str(tmp_path / "memory")
    store = open_store(mem, FeaturizerSpec(name="synthetic", dim=4, preprocessing=Preprocessing(resize=8, crop=8)))
    store.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"], ["mem://0", "mem://1"])
    streams_dir = dmn_home() / memory_key(store.location)
    store.close()
    stale = DynamicMemory(dim=8, featurizer="older-encoder")
    stale.write(np.full(8, 8**-0.5), "a", 0.1)
    stale.save(streams_dir / "old.npz")
    DynamicMemory(dim=4, featurizer="synthetic").save(streams_dir / "new.npz")

    unknown = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query"), "--memory", mem, "--label", "okapi"],
                            env={"COLUMNS": "250"})
    assert unknown.exit_code == 2 and "the memory has no label 'okapi'" in unknown.output, unknown.output

    listed = runner.invoke(app, ["dmn", "streams", "--memory", mem])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines()[0].startswith("new\t0 entries")
    assert listed.stdout.splitlines()[1].startswith("old\tunusable: DMN stream 'old' holds older-encoder features")
    shown = runner.invoke(app, ["dmn", "show", "old", "--memory", mem])
    assert shown.exit_code == 2 and "reset the stream" in shown.output


def test_a_user_with_no_home_is_told_in_one_line_where_streams_cannot_be_kept(tmp_path, monkeypatch):
    # A container's unknown uid with no HOME: dmn_home() had no place, and each DMN command was a traceback.
    from pathlib import Path

    import numpy as np

    from retrieval import FeaturizerSpec, Preprocessing, open_store

    mem = str(tmp_path / "memory")
    store = open_store(mem, FeaturizerSpec(name="synthetic", dim=4, preprocessing=Preprocessing(resize=8, crop=8)))
    store.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"], ["mem://0", "mem://1"])
    store.close()
    for variable in ("VMEM_HOME", "XDG_DATA_HOME", "HOME"):
        monkeypatch.delenv(variable, raising=False)

    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    listed = runner.invoke(app, ["dmn", "streams", "--memory", mem])
    assert listed.exit_code == 1 and "set VMEM_HOME" in listed.output, listed.output
    assert "Traceback" not in listed.output


def test_a_memory_without_points_and_without_clip_is_refused_as_classify_refuses_it(tmp_path):
    # Memory-only dmn has nothing to answer from: every image had been "no label", accuracy 0 %, exit 0.
    import numpy as np

    from retrieval import FeaturizerSpec, Preprocessing, open_store

    mem = str(tmp_path / "memory")
    with open_store(mem, FeaturizerSpec(name="synthetic", dim=4, preprocessing=Preprocessing(resize=8, crop=8))) as s:
        s.add(np.eye(4, dtype=np.float32)[:1], ["a"], ["mem://0"])
        s.delete_where(label="a")
    (tmp_path / "q.jpg").write_bytes(make_image())
    for command in (["dmn", "classify"], ["classify", "--vote", "dmn"]):
        out = runner.invoke(app, [*command, str(tmp_path / "q.jpg"), "--memory", mem], env={"COLUMNS": "250"})
        assert out.exit_code == 2 and "holds no points: add labelled images" in out.output, (command, out.output)
    zero_shot = runner.invoke(app, ["dmn", "classify", str(tmp_path / "q.jpg"), "--memory", mem, "--mode",
                                    "zero-shot"], env={"COLUMNS": "250"})
    assert zero_shot.exit_code == 2 and "needs a CLIP featurizer" in zero_shot.output, zero_shot.output


def test_a_mode_that_is_not_one_is_refused_with_the_choices(tmp_path):
    from typing import get_args

    from vmem.cli.dmn import DmnMode
    from vmem.dmn_classifier import Mode

    # It had been a raw pydantic error, with the web address of pydantic's error page.
    assert [m.value for m in DmnMode] == list(get_args(Mode))
    (tmp_path / "q.jpg").write_bytes(make_image())
    out = runner.invoke(app, ["dmn", "classify", str(tmp_path / "q.jpg"), "--mode", "bogus"], env={"COLUMNS": "250"})
    assert out.exit_code == 2 and "'bogus' is not one of 'auto', 'zero-shot', 'few-shot', 'memory-only'" in out.output
    assert "pydantic" not in out.output


def test_counts_of_one_read_as_one(tmp_path, tiny_clip_dir):  # noqa: F811
    """A stream that has seen one query lists '1 entry in 1 label', '1 query seen', not '1 entries'; and a build's
    progress line in a log, of one image, says '0 of 1 image'."""
    mem = built_memory(tmp_path, tiny_clip_dir)
    write_folder(tmp_path / "query", (-10,))
    one = runner.invoke(app, ["dmn", "classify", str(tmp_path / "query" / "red" / "10.jpg"), "--memory", mem,
                              "--stream", "one", "--mode", "memory-only"])
    assert one.exit_code == 0, one.output

    listed = runner.invoke(app, ["dmn", "streams", "--memory", mem])
    assert listed.stdout == "one\t1 entry in 1 label\t1 query seen\n"
    shown = runner.invoke(app, ["dmn", "show", "one", "--memory", mem])
    assert "entries  1 entry in 1 label, 50 slots each; 1 query seen\n" in shown.stdout

    from vmem.cli.memory import progress_line
    assert progress_line("embedding", 0, 1, 2.0) == "embedding: 0 of 1 image (0.0%), 0.0 images/s"
