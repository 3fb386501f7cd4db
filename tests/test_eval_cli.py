"""`vmem eval`, `vmem prune` and `vmem experiment` end to end on tiny images with the real EfficientNet-Lite0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from prompts import default_registry
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from vmem.cli import app

CLASSES = ("n00000001", "n00000002", "n00000003")


def pattern(cls: int, variant: int) -> Image.Image:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: checkerboard; the variant shifts colour and phase."""
    y, x = np.mgrid[0:64, 0:64]
    period = 8 + variant % 3
    mask = [(y // period) % 2, (x // period) % 2, ((x // period) + (y // period)) % 2][cls].astype(bool)
    img = np.zeros((64, 64, 3), np.uint8)
    img[mask] = (200 - 9 * variant, 180, 40 + 9 * variant)
    img[~mask] = (20, 30 + 5 * variant, 60)
    return Image.fromarray(img)


def image_folder(root: Path, per_class: int, offset: int = 0) -> Path:
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern(c, i + offset).save(root / label / f"{i}.png")
    return root


def run(*args: str) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A memory of 3 colour classes x 4 images, and a val set of 3 x 2 other shades."""
    root = tmp_path_factory.mktemp("data")
    train, val = image_folder(root / "train", 4), image_folder(root / "val", 2, offset=4)
    run("build", train, "--memory", root / "memory", "--featurizer", "efficientnet-lite0")
    return root, val


def test_eval_scores_every_rule_at_every_k_and_reuses_cached_features(built, tmp_path):
    root, val = built
    args = ["eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out",
            "--cache", tmp_path / "cache", "--k-max", "5"]
    out = run(*args)
    assert "| rank |" in out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["run"]["queries"] == 6 and res["run"]["memory_points"] == 12 and res["run"]["search"] == "exact"
    scores = res["variants"]["all"]
    assert set(scores["accuracy"]) == {"plurality", "distance", "softmax", "rank"}
    assert all(len(c) == 5 for c in scores["accuracy"].values())
    assert scores["accuracy"]["rank"][0] == 1.0  # stripes and checks are trivially told apart
    assert (tmp_path / "out" / "accuracy_vs_k.png").stat().st_size > 1000
    cached = list((tmp_path / "cache").rglob("hashes.txt"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 6
    # Same run through the Qdrant index: same numbers (12 points, exact either way).
    run(*args[:-2], "--k-max", "5", "--search", "index", "--out", tmp_path / "index")
    again = json.loads((tmp_path / "index" / "results.json").read_text())
    assert again["run"]["search"] == "index" and again["run"]["memory_points"] == 12
    assert again["variants"]["all"]["accuracy"] == scores["accuracy"]


def test_eval_through_the_index_counts_the_points_searches_can_return(built, tmp_path):
    # Two stripes images mislabelled as checks, hard-pruned, then one of them forgotten: the pruning's own count
    # of excluded points is then stale, and results.json had said 9 points through the index, 10 through exact.
    import shutil

    from eval.pruning import prune_store
    from retrieval import open_store

    root, val = built
    shutil.copytree(root / "memory", tmp_path / "memory")
    with open_store(tmp_path / "memory") as store:
        wrong = store.ids_where(label="n00000001")[:2]
        store.relabel(wrong, "n00000003")
        assert prune_store(store, "hard", threshold=1, k=3).excluded >= 2
        store.delete_ids(wrong[:1])
        searchable = store.count(searchable=True)
    points = []
    for search in ("index", "exact"):
        run("eval", "--memory", tmp_path / "memory", "--dataset", val, "--out", tmp_path / search,
            "--cache", tmp_path / "cache", "--k-max", "5", "--search", search, "--no-plots")
        points.append(json.loads((tmp_path / search / "results.json").read_text())["run"]["memory_points"])
    assert points == [searchable, searchable]


def test_eval_reports_each_class_by_name_and_what_it_was_taken_for(built, tmp_path):
    root, val = built
    names = tmp_path / "classes.tsv"
    names.write_text("n00000001\thorizontal stripes\nn00000002\tvertical stripes\nn00000003\tcheckerboard\n")
    out = run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out",
              "--cache", tmp_path / "cache", "--k-max", "5", "--classes", names, "--no-plots")
    assert "**hardest 3 of 3 classes** (rank voting, k=5" in out  # classify's rule; k=50 capped by --k-max
    assert "| n00000003 (checkerboard) | 2 |" in out
    rows = (tmp_path / "out" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "variant,rule,k,label,name,queries,correct,accuracy,confused_with"
    by_label = {r.split(",")[3]: r.split(",") for r in rows[1:]}
    assert set(by_label) == set(CLASSES) and by_label["n00000001"][4] == "horizontal stripes"
    assert all(int(r[5]) == 2 for r in by_label.values())
    answers = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(answers) == 1 + 6 and answers[0].startswith("variant,rule,k,source,right_labels,predicted,predicted_")
    assert all(a.split(",")[6] == {"n00000001": "horizontal stripes", "n00000002": "vertical stripes",
                                   "n00000003": "checkerboard"}[a.split(",")[5]] for a in answers[1:])
    per_class = json.loads((tmp_path / "out" / "results.json").read_text())["variants"]["all"]["per_class"]
    assert sum(c["correct"] for c in per_class["classes"]) == round(6 * json.loads(
        (tmp_path / "out" / "results.json").read_text())["variants"]["all"]["accuracy"]["rank"][4])


def test_eval_draws_a_name_in_an_installed_font_that_has_it_and_says_which_none_has(built, tmp_path, recwarn,
                                                                                      caplog):
    # matplotlib draws with DejaVu Sans alone: 猫 was a box even where a CJK font is installed, and each character
    # missing was a UserWarning of its own, twice a plot. Here ⌒ is in DejaVu Sans Mono (matplotlib ships it) and
    # not in DejaVu Sans; no font has the private-use character.
    root, val = built
    lacking = chr(0x10FFFD)
    names = tmp_path / "classes.tsv"
    names.write_text(f"n00000001\t⌒ arcs\nn00000002\t{lacking} private\nn00000003\tchecks\n", encoding="utf-8")
    run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache", tmp_path / "cache",
        "--k-max", "5", "--classes", names)
    assert (tmp_path / "out" / "per_class_accuracy.png").exists()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    [note] = [r.getMessage() for r in caplog.records if "no installed font" in r.getMessage()]
    assert "U+10FFFD" in note and "⌒" not in note


def test_eval_against_a_dataset_memory_from_cached_features(built, tmp_path):
    root, val = built
    # A names file beside the dataset names its classes, as `vmem build` would have named them.
    (root / "classes.tsv").write_text("n00000003\tcheckerboard\n")
    try:
        out = run("eval", "--memory-dataset", root / "train", "--featurizer", "efficientnet-lite0", "--dataset", val,
                  "--out", tmp_path / "out", "--cache", tmp_path / "cache", "--k-max", "12", "--no-plots")
    finally:
        (root / "classes.tsv").unlink()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["run"]["memory_points"] == 12
    assert res["variants"]["all"]["hit_rate"][-1] == 1.0
    assert not list((tmp_path / "out").glob("*.png"))
    assert "n00000003 (checkerboard)" in out


def test_eval_rerank_without_an_api_key_falls_back_to_the_vote(built, tmp_path):
    root, val = built
    out = run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out",
              "--cache", tmp_path / "cache", "--k-max", "5", "--rerank", "--rerank-k", "5", "--limit", "3")
    rr = json.loads((tmp_path / "out" / "results.json").read_text())["rerank"]
    assert rr["queries"] == 3 and rr["reranked"] == 0 and rr["fallback_rate"] == 1.0
    assert rr["rerank_accuracy"] == rr["rank_accuracy"]  # every answer is the vote's
    assert any("API key" in reason for reason in rr["fallback_reasons"])
    assert "fallback rate 100.0%" in out
    # The template the answers were asked with, though --template was left out (it had recorded null)
    used = default_registry().get("neighbors-v1")
    assert (rr["template"], rr["template_hash"]) == ("neighbors-v1@1", used.content_hash)


def test_eval_dmn_that_cannot_be_scored_still_writes_the_votes_results(built, tmp_path, monkeypatch):
    # DMN's CLIP-only modes refuse this EfficientNet memory (a ValueError of its own), as any memory DMN cannot
    # answer from: the vote's numbers, computed first, had been thrown away with the refusal.
    import vmem.dmn_classifier as dmn_classifier

    class ZeroShotOptions(dmn_classifier.DmnOptions):
        mode: dmn_classifier.Mode = "zero-shot"

    monkeypatch.setattr(dmn_classifier, "DmnOptions", ZeroShotOptions)
    root, val = built
    res = CliRunner().invoke(app, [str(a) for a in ("eval", "--memory", root / "memory", "--dataset", val, "--out",
                                                     tmp_path / "out", "--cache", tmp_path / "cache", "--k-max", "5",
                                                     "--no-plots", "--dmn")], env={"COLUMNS": "250"})
    assert res.exit_code == 2, res.output
    said = "".join("".join(line.strip("│ ") for line in res.output.splitlines()).split())  # the error's box unwrapped
    assert "dmnwasnotscored(DMNzero-shotmodeneedsaCLIPfeaturizer" in said
    assert f"thevote'sresultsarewrittento{tmp_path / 'out'}" in said
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["variants"]["all"]["accuracy"]["rank"][0] == 1.0 and written.get("dmn") is None
    assert "| rank |" in (tmp_path / "out" / "table.md").read_text()


def test_eval_rerank_counts_fallback_reasons_by_kind_not_one_key_per_label(built, tmp_path):
    root, val = built
    # One neighbour: every query's vote is unanimous, each with its own label in the reason.
    run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache", tmp_path / "cache",
        "--k-max", "5", "--rerank", "--rerank-k", "1", "--no-plots")
    rr = json.loads((tmp_path / "out" / "results.json").read_text())["rerank"]
    # It had been {"only one candidate label (n00000001): nothing to re-rank": 2, "... (n00000002) ...": 2, ...}
    assert rr["fallback_reasons"] == {"only one candidate label": 6}
    assert rr["fallback_examples"]["only one candidate label"].startswith("only one candidate label (n0000000")


def test_eval_rerank_scores_the_confidence_of_the_answers_the_vlm_gave(built, tmp_path, monkeypatch):
    """The re-ranked answers' confidence, as classify gives it, scored as the vote's is. The VLM (the fake Gemini
    server, through the real SDK) answers each request's last candidate, the one the vote liked least: the answers
    it changed carry that label's small share, and classify --rerank marks them unsure at the threshold eval gives."""
    from reranker.testing import FakeGemini, candidates_of

    root, val = built
    with FakeGemini() as fake:
        fake.responder = lambda body: fake.answer(candidates_of(body)[-1])
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        out = run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache",
                  tmp_path / "cache", "--k-max", "5", "--rerank", "--rerank-k", "8")
        rr = json.loads((tmp_path / "out" / "results.json").read_text())["rerank"]
        answers = [json.loads(line) for line in run("classify", val, "--memory", root / "memory", "--rerank",
                                                    "--k", "8", "--json").splitlines() if line.startswith("{")]
    assert rr["reranked"] == 6 and rr["overrode"]["queries"] == rr["changed"] > 0
    sel = rr["selective"]
    assert sel["rule"] == "rerank" and sel["queries"] == 6 and sel["accuracy"] == rr["rerank_accuracy"]
    # The confidence scored is the one classify gives its answers: the vote's share of the VLM's label
    shares = sorted(a["scores"][a["label"]] for a in answers)
    assert sorted(a["confidence"] for a in answers) == shares
    assert sel["mean_confidence"] == pytest.approx(sum(shares) / 6, abs=1e-6)  # rounded as thresholds compare
    changed = [a["confidence"] for a in answers if a["label"] != next(iter(a["scores"]))]
    assert rr["overrode"]["mean_confidence"] == pytest.approx(sum(changed) / len(changed))
    assert "when to trust an answer of `vmem classify --rerank`" in (tmp_path / "out" / "table.md").read_text()
    assert f"the VLM changed {rr['changed']} answers" in out
    rows = (tmp_path / "out" / "risk_coverage.csv").read_text().splitlines()
    assert any(",rerank,8," in row for row in rows)
    assert all((tmp_path / "out" / f"rerank_{plot}.png").exists() for plot in ("risk_coverage", "reliability"))


def test_eval_says_in_table_md_how_many_images_real_left_out(built, tmp_path):
    """ReaL scores only the val images it gives a label: the table says how many of the folder's were left out."""
    root, val = built
    flat = tmp_path / "real" / "val"
    flat.mkdir(parents=True)
    for n, image in enumerate(sorted(val.rglob("*.png")), start=1):
        (flat / f"ILSVRC2012_val_{n:08d}.png").symlink_to(image)
    (tmp_path / "real" / "real.json").write_text(json.dumps([[1], [], [2, 3], [], [], [4]]))
    out = run("eval", "--memory", root / "memory", "--dataset", flat, "--format", "real", "--out", tmp_path / "out",
              "--cache", tmp_path / "cache", "--k-max", "5", "--no-plots")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["run"]["skipped_queries"] == 3
    note = "3 images of the dataset left out, not scored: ReaL gives them no label (skipped_queries in results.json)"
    assert note in (tmp_path / "out" / "table.md").read_text() and note in out


def test_eval_of_imagenet_a_says_whose_answers_each_table_after_the_restricted_one_holds(built, tmp_path, monkeypatch):
    """ImageNet-A scores the whole memory (all) and the memory cut to its classes (restricted). The tables after the
    restricted one had not said which they were: the vote's hardest classes and trust are the whole memory's, as
    classify answers; the re-ranker answers among the dataset's classes."""
    from reranker.testing import FakeGemini

    root, val = built
    with FakeGemini() as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        run("eval", "--memory", root / "memory", "--dataset", val, "--format", "imagenet-a", "--out", tmp_path / "out",
            "--cache", tmp_path / "cache", "--k-max", "5", "--rerank", "--rerank-k", "8", "--no-plots")
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.index("**restricted to 3 classes**") < table.index("**hardest 3 of 3 classes**")
    assert "**hardest 3 of 3 classes** (all classes: the whole memory searched; rank voting, k=5;" in table
    assert "**when to trust an answer of `vmem classify`** (all classes: the whole memory searched; rank" in table
    assert "**re-ranking** (restricted to the dataset's 3 classes; k=8, template neighbors-v1@" in table
    assert "**when to trust an answer of `vmem classify --rerank`** (restricted to the dataset's 3 classes; " in table


def test_eval_says_which_classes_of_the_queries_the_memory_lacks(built, tmp_path):
    """A memory labelled by name scored on wnid folders without --classes scores 0 at every k: said, with the fix,
    rather than a table of zeros alone; a class the memory lacks among others is counted in table.md."""
    root, val = built
    names = tmp_path / "names.csv"
    names.write_text("path,label\n" + "".join(f"{p},{'stripes' if p.parent.name == 'n00000001' else 'other'}\n"
                                              for p in sorted((root / "train").rglob("*.png"))))
    run("build", names, "--memory", tmp_path / "named", "--featurizer", "efficientnet-lite0")
    res = CliRunner().invoke(app, ["eval", "--memory", str(tmp_path / "named"), "--dataset", str(val), "--out",
                                   str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--k-max", "5",
                                   "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "note: none of the queries' classes is a label of the memory (theirs: n00000001, ...; the memory's: " in \
        res.output and "needs --classes FILE (label -> name)" in res.output
    assert ("3 classes of the queries (n00000001, n00000002, n00000003) are no label of the memory: 6 queries cannot "
            "be answered right") in (tmp_path / "out" / "table.md").read_text()
    (tmp_path / "classes.tsv").write_text("n00000001\tstripes\n")
    out = run("eval", "--memory", tmp_path / "named", "--dataset", val, "--out", tmp_path / "out", "--cache",
              tmp_path / "cache", "--k-max", "5", "--no-plots", "--classes", tmp_path / "classes.tsv")
    run_info = json.loads((tmp_path / "out" / "results.json").read_text())["run"]
    assert run_info["classes_not_in_memory"] == ["n00000002", "n00000003"] and run_info["queries_not_in_memory"] == 4
    assert "note: none of" not in out and "2 classes of the queries (n00000002, n00000003) are no label" in out


def test_eval_rerank_writes_its_accuracy_against_the_vote_into_table_md(built, tmp_path, monkeypatch):
    """A paper's number, the re-rank's accuracy against the vote's on the same queries, is in table.md with the
    template (and its hash) and model it was asked with; the same run again, answered from the cache, writes the
    same table.md and says on stdout that its answers cost no tokens now because they came from the cache."""
    from reranker.testing import FakeGemini, candidates_of

    root, val = built
    with FakeGemini() as fake:
        fake.responder = lambda body: fake.answer(candidates_of(body)[-1])  # the label the vote liked least
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        args = ["eval", "--memory", root / "memory", "--dataset", val, "--cache", tmp_path / "cache", "--k-max", "5",
                "--rerank", "--rerank-k", "8", "--template", "labels-only", "--no-plots"]
        first = run(*args, "--out", tmp_path / "first")
        again = run(*args, "--out", tmp_path / "again")
    rr = json.loads((tmp_path / "first" / "results.json").read_text())["rerank"]
    table = (tmp_path / "first" / "table.md").read_text()
    template = default_registry().get("labels-only")
    assert (f"**re-ranking** (k=8, template labels-only@{template.version} ({rr['template_hash']}), "
            f"model {rr['model']}): "
            f"re-rank on 6 queries: {100 * rr['rerank_accuracy']:.2f}% right against rank voting's "
            f"{100 * rr['rank_accuracy']:.2f}% on the same queries; fallback rate 0.0%") in table
    assert f"the VLM changed {rr['changed']} answers (fixed {rr['fixed']}, broke {rr['broken']})" in table
    assert f"re-rank tokens {rr['usage']['total_tokens']:,} in 6 requests" in first and "from the cache" not in first
    assert (tmp_path / "again" / "table.md").read_text() == table
    assert "re-rank tokens 0 in 0 requests (6 answers of 6 from the cache, asked in an earlier run)" in again


def test_eval_rerank_writes_each_re_ranked_answer_into_predictions_csv(built, tmp_path, monkeypatch):
    """A paired comparison of the re-ranker with the vote (McNemar's test, the queries it fixed and broke) needs
    each query's two answers: predictions.csv holds the re-ranked ones beside the vote's, rule rerank."""
    import csv

    from reranker.testing import FakeGemini, candidates_of

    root, val = built
    with FakeGemini() as fake:
        fake.responder = lambda body: fake.answer(candidates_of(body)[-1])  # the label the vote liked least
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache",
            tmp_path / "cache", "--k-max", "5", "--rerank", "--rerank-k", "8", "--no-plots")
    rr = json.loads((tmp_path / "out" / "results.json").read_text())["rerank"]
    with (tmp_path / "out" / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    vote = {r["source"]: r for r in rows if r["rule"] == "rank"}
    reranked = [r for r in rows if r["rule"] == "rerank"]
    assert len(reranked) == rr["queries"] == 6 and {r["source"] for r in reranked} == set(vote)
    assert all(r["variant"] == "all" and r["k"] == "8" for r in reranked)
    assert sum(int(r["correct"]) for r in reranked) / 6 == rr["rerank_accuracy"]
    assert sum(r["predicted"] != vote[r["source"]]["predicted"] for r in reranked) == rr["changed"] > 0
    assert all(json.loads(r["right_labels"]) == [Path(r["source"]).parent.name] for r in reranked)


def test_eval_rerank_on_a_soft_pruned_memory_names_the_vote_it_is_compared_with(built, tmp_path, monkeypatch):
    """classify's vote, the one re-ranking starts from and is compared with, weighs a soft-pruned memory's points by
    their reliability factors: its accuracy is the table's rank+soft row, and table.md says so (on 200 Tiny-ImageNet
    queries it read 'rank voting's 68.00%' beside a rank row of 66.50 at k = 50)."""
    import shutil

    from reranker.testing import FakeGemini

    root, val = built
    shutil.copytree(root / "memory", tmp_path / "memory")
    run("prune", "--memory", tmp_path / "memory", "--mode", "soft", "--k", "5", "--blame", "label")
    with FakeGemini() as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        run("eval", "--memory", tmp_path / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache",
            tmp_path / "cache", "--k-max", "5", "--rerank", "--rerank-k", "5", "--no-plots")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    rr = res["rerank"]
    assert rr["vote"]["rule"] == "rank" and rr["vote"]["k"] == 5 and rr["vote"]["soft_pruning"] is True
    assert rr["rank_accuracy"] == res["variants"]["all"]["accuracy"]["rank+soft"][4]
    assert (f"rank voting's {100 * rr['rank_accuracy']:.2f}% (the memory's soft-pruning factors weighing: its "
            "rank+soft row) on the same queries") in (tmp_path / "out" / "table.md").read_text()


def test_eval_rerank_compares_with_the_vote_at_the_alpha_its_table_is_scored_with(built, tmp_path, monkeypatch):
    """--alpha 4 scores the table's rank row at α = 4: the vote re-ranked and compared with is voted so too (it had
    been the memory's α, 2, whatever --alpha said)."""
    from reranker.testing import FakeGemini

    root, val = built
    with FakeGemini() as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache",
            tmp_path / "cache", "--k-max", "5", "--alpha", "4", "--rerank", "--rerank-k", "5", "--no-plots")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["run"]["alpha"] == 4 and res["rerank"]["vote"]["alpha"] == 4
    assert res["rerank"]["rank_accuracy"] == res["variants"]["all"]["accuracy"]["rank"][4]
    assert "against rank voting's 100.00% (α=4) on the same queries" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.parametrize(("options", "env", "says"), [
    (["--alpha", "nan"], {}, "alpha nan is not a valid vote setting"),
    (["--tau", "0"], {}, "tau 0 is not a valid vote setting"),
    (["--template", "labels-only"], {}, "give --rerank too"),
    (["--rerank", "--template", "nosuch"], {}, "nosuch"),
    (["--rerank"], {"VMEM_GEMINI_DEADLINE_S": "abc"}, "VMEM_GEMINI_DEADLINE_S"),
])
def test_eval_refuses_what_classify_refuses_before_any_work(built, tmp_path, options, env, says):
    # A NaN alpha had scored 0 % curves with exit 0; an unknown template was a traceback after the whole
    # evaluation; a bad Gemini setting a pydantic traceback.
    root, val = built
    res = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(val), "--out",
                                   str(tmp_path / "out"), *options], env={"COLUMNS": "250", **env})
    assert res.exit_code == 2 and says in res.output, res.output
    assert isinstance(res.exception, SystemExit) and not (tmp_path / "out").exists()


def test_eval_rejects_an_unknown_format(built, tmp_path):
    root, val = built
    res = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(val),
                                   "--format", "imagenet-z"])
    assert res.exit_code == 2 and "imagenet-z" in res.output


def test_prune_hard_excludes_from_exact_and_index_search_then_undo(built, tmp_path):
    _, val = built
    train = image_folder(tmp_path / "train", 4)
    pattern(0, 9).save(train / CLASSES[1] / "mislabelled.png")  # stripes filed under the checks' class
    mem = tmp_path / "memory"
    run("build", train, "--memory", mem, "--featurizer", "efficientnet-lite0")
    out = run("prune", "--memory", mem, "--mode", "hard", "--threshold", "1", "--k", "3")
    assert "hard pruning of 13 points" in out and "Undo with" in out
    assert json.loads(run("info", "--memory", mem, "--json"))["settings"]["pruning"]["excluded"] > 0
    points = {}
    for mode in ("exact", "index"):
        run("eval", "--memory", mem, "--dataset", val, "--out", tmp_path / mode, "--search", mode,
            "--cache", tmp_path / "cache", "--k-max", "5", "--no-plots")
        res = json.loads((tmp_path / mode / "results.json").read_text())
        points[mode] = (res["run"]["memory_points"], res["variants"]["all"]["accuracy"])
    assert points["exact"] == points["index"] and 0 < points["exact"][0] < 13  # same points, same answers
    excluded = json.loads(run("info", "--memory", mem, "--json"))["settings"]["pruning"]["excluded"]
    out = run("prune", "--memory", mem, "--undo")
    assert out.startswith("pruning undone: the marks of ") and f", {excluded} point" in out, out
    assert "pruning" not in json.loads(run("info", "--memory", mem, "--json"))["settings"]


def test_experiment_corruption_writes_its_table_and_plot(built, tmp_path):
    root, val = built
    out = run("experiment", "corruption", "--memory", root / "memory", "--queries", val, "--out", tmp_path / "x",
              "--cache", tmp_path / "cache", "--fractions", "0,0.5,1")
    assert "## corruption" in out
    written = json.loads((tmp_path / "x" / "corruption.json").read_text())
    rows = written["rows"]
    assert [r["fraction"] for r in rows] == [0.0, 0.5, 1.0]
    # What the numbers depend on, as eval records it (the params had held neither sample nor alpha nor version)
    params = written["params"]
    assert params["sample"] is None and params["dataset_items"] == 6 and len(params["queries_fingerprint"]) == 64
    assert (params["alpha"], params["tau"]) == (2.0, 0.07) and params["vmem_version"] and params["environment"]
    assert rows[0]["rank@1"] == 1.0 and rows[0]["wrong_labels"] == 0.0
    assert (tmp_path / "x" / "corruption.png").exists()


def test_experiment_novelty_holds_classes_out_and_writes_its_table_and_histograms(built, tmp_path):
    root, val = built
    out = run("experiment", "novelty", "--memory", root / "memory", "--queries", val, "--out", tmp_path / "x",
              "--cache", tmp_path / "cache", "--new-classes", "1")
    assert "## novelty" in out and "1 of 3 classes held out of the memory" in out
    written = json.loads((tmp_path / "x" / "novelty.json").read_text())
    params = written["params"]
    assert (params["memory_points_kept"], params["familiar_queries"], params["unfamiliar_queries"]) == (8, 4, 2)
    assert params["calibration_sample"] == "first points in id order"  # as the memory itself samples
    assert [r["k"] for r in written["rows"]] == [1, 8]  # k capped at the 8 points kept
    assert (tmp_path / "x" / "novelty.png").exists()


@pytest.mark.parametrize(("given", "counted_at"), [([], 100), (["--k", "3"], 3)])
def test_experiment_pruning_counts_blame_at_the_k_given(built, tmp_path, given, counted_at):
    # The paper's soft pruning counted at k = 10, its hard pruning at 100: --k had reached every experiment but this
    root, val = built
    run("experiment", "pruning", "--memory", root / "memory", "--queries", val, "--out", tmp_path / "x",
        "--cache", tmp_path / "cache", "--thresholds", "2", *given)
    assert json.loads((tmp_path / "x" / "pruning.json").read_text())["params"]["k"] == counted_at


def test_experiment_rejects_unknown_names(built, tmp_path):
    root, val = built
    res = CliRunner().invoke(app, ["experiment", "nope", "--memory", str(root / "memory"), "--queries", str(val)])
    assert res.exit_code == 2 and "unknown experiment" in res.output


@pytest.mark.parametrize(("name", "option", "says"), [
    ("corruption", "--fractions=-0.1,0.5", "-0.1 is out of range: give numbers from 0 to 1"),
    ("granularity", "--exemplars=-1", "-1 is out of range: give whole numbers of at least 0"),
    ("scaling", "--per-class=0,1", "0 is out of range"),
    ("pruning", "--blame=foo", "'foo' is not one of label, all, voters"),
    ("unlearning", "--forget-fraction=-1", "-1 is out of range"),
])
def test_experiment_options_out_of_range_are_refused_before_any_work(built, name, option, says):
    root, val = built
    res = CliRunner().invoke(app, ["experiment", name, "--memory", str(root / "memory"), "--queries", str(val), option],
                             env={"COLUMNS": "250"})
    assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output


def test_eval_and_tune_read_a_csv_dataset_without_being_told_its_format(built, tmp_path):
    root, val = built
    manifest = tmp_path / "val.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(val.rglob("*.png"))))
    run("eval", "--memory", root / "memory", "--dataset", manifest, "--out", tmp_path / "out",
        "--cache", tmp_path / "cache", "--k-max", "5", "--no-plots")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["run"]["format"] == "csv" and res["run"]["queries"] == 6
    out = run("tune", "--memory", root / "memory", "--dataset", manifest, "--cache", tmp_path / "cache",
              "--k-max", "5", "--dry-run")
    assert "chosen:" in out


def test_eval_and_experiment_reject_an_unknown_layout_of_their_other_dataset(built, tmp_path):
    root, val = built
    res = CliRunner().invoke(app, ["eval", "--memory-dataset", str(root / "train"), "--memory-format", "imagenet-z",
                                   "--featurizer", "efficientnet-lite0", "--dataset", str(val)])
    assert res.exit_code == 2 and "imagenet-z" in res.output
    res = CliRunner().invoke(app, ["experiment", "scaling", "--memory", str(root / "memory"), "--queries", str(val),
                                   "--queries-format", "imagenet-z", "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 2 and "imagenet-z" in res.output


def test_eval_says_when_the_tuned_rule_was_scored_with_a_given_alpha(built, tmp_path):
    import shutil

    from retrieval import open_store

    root, val = built
    memory = tmp_path / "memory"
    shutil.copytree(root / "memory", memory)
    store = open_store(memory)
    store.meta.settings["vote"] = {"rule": "rank", "k": 3, "alpha": 2.0, "tau": 0.07, "soft_pruning": True}
    store.save_meta()
    store.close()
    args = ["eval", "--memory", memory, "--dataset", val, "--out", tmp_path / "out", "--cache", tmp_path / "cache",
            "--k-max", "5", "--no-plots"]
    assert "(rank, k=3, α=2, τ=0.07): 100.00% top-1 here\n" in run(*args)
    # The accuracy printed is rank voting with α = 8 at k = 3: the line must not credit it to α = 2 alone.
    assert "top-1 here (scored with the given α=8, τ=0.07)" in run(*args, "--alpha", "8")


def test_a_manifest_listing_a_missing_file_is_scored_without_it_and_says_so(built, tmp_path):
    root, val = built
    manifest = tmp_path / "queries.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(val.rglob("*.png")))
                        + f"{tmp_path / 'gone.png'},n00000001\n")
    out = run("eval", "--memory", root / "memory", "--dataset", manifest, "--out", tmp_path / "eval", "--no-plots",
              "--cache", tmp_path / "cache")
    assert f"skipped {tmp_path / 'gone.png'}: no such file" in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["run"]
    assert (results["queries"], results["failed_queries"]) == (6, 1)


def test_experiment_refuses_a_classes_file_that_is_not_there_and_multi_label_queries(built, tmp_path):
    root, val = built
    res = CliRunner().invoke(app, ["experiment", "scaling", "--queries", str(val), "--memory", str(root / "memory"),
                                   "--classes", str(tmp_path / "no-such.tsv")], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "--classes" in res.output and "no-such.tsv" in res.output, res.output
    real = tmp_path / "real" / "val"  # ReaL: several right labels a query, which an experiment would drop
    real.mkdir(parents=True)
    for i in (1, 2):
        pattern(0, i).save(real / f"ILSVRC2012_val_{i:08d}.JPEG")
    (tmp_path / "real" / "real.json").write_text("[[1, 2], [3]]")
    res = CliRunner().invoke(app, ["experiment", "scaling", "--queries", str(real), "--queries-format", "real",
                                   "--memory", str(root / "memory")], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "several right labels" in res.output and "vmem eval" in res.output, res.output


def test_eval_records_what_its_numbers_depend_on(built, tmp_path):
    import vmem

    root, val = built
    for seed in (1, 2):
        run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / f"s{seed}",
            "--cache", tmp_path / "cache", "--k-max", "3", "--limit", "4", "--seed", str(seed), "--no-plots")
    first, second = (json.loads((tmp_path / f"s{s}" / "results.json").read_text())["run"] for s in (1, 2))
    assert (first["dataset_items"], first["limit"], first["seed"], second["seed"]) == (6, 4, 1, 2)
    assert first["vmem_version"] == vmem.__version__
    assert first["featurizer_spec"]["name"] == "efficientnet-lite0" and first["featurizer_spec"]["preprocessing"]
    # The same points, whatever the sample: one fingerprint; through the index, the index's settings instead
    assert len(first["memory_fingerprint"]) == 64 and first["memory_fingerprint"] == second["memory_fingerprint"]
    run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "ix", "--cache",
        tmp_path / "cache", "--k-max", "3", "--search", "index", "--no-plots")
    indexed = json.loads((tmp_path / "ix" / "results.json").read_text())["run"]
    assert indexed["index"]["hnsw_ef"] and indexed["memory_fingerprint"] is None and indexed["limit"] is None
    # Which queries were scored, and with what vectors: two samples of one folder had been told apart by nothing
    assert len(first["vectors_fingerprint"]) == 64 and first["vectors_fingerprint"] == second["vectors_fingerprint"]
    assert indexed["vectors_fingerprint"] is None and len(indexed["queries_fingerprint"]) == 64
    assert first["device"] == "cpu" and first["environment"]["torch"] and first["environment"]["cpus"]
    # A --limit at or above the dataset's size draws no sample, and none is recorded
    run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "all", "--cache",
        tmp_path / "cache", "--k-max", "3", "--limit", "600", "--no-plots")
    whole = json.loads((tmp_path / "all" / "results.json").read_text())["run"]
    assert whole["limit"] is None and whole["seed"] is None and whole["queries"] == 6
    assert whole["queries_fingerprint"] != first["queries_fingerprint"]  # 6 queries, not the sample's 4


def test_eval_refuses_an_out_that_is_a_file_and_says_when_it_replaces_a_run(built, tmp_path):
    root, val = built
    (tmp_path / "taken").write_text("")
    res = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(val), "--out",
                                   str(tmp_path / "taken")], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "is a file: give a folder" in res.output, res.output
    args = ["eval", "--memory", str(root / "memory"), "--dataset", str(val), "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--k-max", "3", "--no-plots"]
    assert "will be replaced" not in CliRunner().invoke(app, args).stderr
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and f"note: the run in {tmp_path / 'out'} will be replaced" in again.stderr


def test_eval_leaves_out_a_query_whose_folder_is_not_utf8_and_says_so(built, tmp_path):
    import os

    # A folder named in Latin-1 had ended the run in a traceback once every number was computed.
    root, val = built
    queries = tmp_path / "q"
    import shutil

    shutil.copytree(val, queries)
    latin1 = os.path.join(os.fsencode(queries), b"caf\xe9")
    os.makedirs(latin1)
    pattern(0, 9).save(os.fsdecode(os.path.join(latin1, b"0.png")))
    res = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(queries), "--out",
                                   str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--k-max", "3",
                                   "--no-plots"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "out" / "results.json").read_text())["run"]
    assert scored["queries"] == 6 and scored["failed_queries"] == 1
    assert "not UTF-8 text" in res.output


def test_eval_says_in_one_line_where_its_features_cannot_be_cached(built, tmp_path, monkeypatch):
    # An unwritable or unknown home had been a PermissionError traceback, after the dataset was read.
    root, val = built
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VMEM_FEATURE_CACHE", str(tmp_path / "a-file"))
    out = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(val), "--out",
                                   str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert out.exit_code == 2, out.output
    assert "dataset features cannot be cached at" in out.output and "VMEM_FEATURE_CACHE" in out.output
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a link leading nowhere is no folder either
    monkeypatch.setenv("VMEM_FEATURE_CACHE", str(tmp_path / "dangling"))
    out = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(val), "--out",
                                   str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "dataset features cannot be cached at" in out.output, out.output
    # Checked, not made: a command refused for another reason leaves no cache folder behind
    monkeypatch.setenv("VMEM_FEATURE_CACHE", str(tmp_path / "c" / "a" / "b"))
    out = CliRunner().invoke(app, ["eval", "--memory", str(tmp_path / "no-memory"), "--dataset", str(val)])
    assert out.exit_code != 0 and not (tmp_path / "c").exists(), out.output


def test_eval_samples_queries_with_the_option_classify_samples_with(built, tmp_path):
    # classify and dmn classify sample with --sample; eval and experiment with --limit, which pages elsewhere
    root, val = built
    run("eval", "--memory", root / "memory", "--dataset", val, "--out", tmp_path / "out", "--cache",
        tmp_path / "cache", "--k-max", "3", "--no-plots", "--sample", "4", "--seed", "1")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["run"]["queries"] == 4


def test_a_memory_datasets_images_that_cannot_be_read_are_named_as_left_out(built, tmp_path):
    # --memory-dataset's broken images were left out of the memory scored without a word (a build lists them)
    root, val = built
    train = image_folder(tmp_path / "train", 2)
    (train / CLASSES[0] / "broken\u202e.png").write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["eval", "--memory-dataset", str(train), "--featurizer", "efficientnet-lite0",
                                   "--dataset", str(val), "--out", str(tmp_path / "out"), "--cache",
                                   str(tmp_path / "cache"), "--k-max", "3", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["run"]["memory_points"] == 6
    assert (f"left out of the memory: {train}/{CLASSES[0]}/broken\\u202e.png: not a recognised image format"
            in res.stderr)


def test_eval_says_how_many_more_queries_it_skipped_than_it_names(built, tmp_path):
    # The first 20 are named; the rest had gone unsaid but for results.json's count
    root, _ = built
    queries = image_folder(tmp_path / "val", 1)
    for i in range(22):
        (queries / CLASSES[1] / f"broken{i:02d}.png").write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["eval", "--memory", str(root / "memory"), "--dataset", str(queries), "--out",
                                   str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--k-max", "3",
                                   "--no-plots"])
    assert res.exit_code == 0, res.output
    assert len([line for line in res.stderr.splitlines() if line.startswith("skipped ")]) == 20
    assert "... and 2 more queries skipped (failed_queries in results.json)" in res.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["run"]["failed_queries"] == 22
