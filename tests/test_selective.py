"""When to trust an answer: risk-coverage, the threshold for a target accuracy, reliability bins and ECE of the
answer's confidence (its vote share), worked by hand and checked against classify's own vote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eval.harness import QuerySet, RunInfo, evaluate, write_report
from eval.scoring import MemoryArrays, NeighborTable, score, winner_share
from eval.selective import selective_scores
from retrieval import VoteRule, vote
from vmem.results import unsure_of

# Six answers, most confident first: right, right, right, wrong, right, wrong.
CONFIDENCE = np.array([1.0, 1.0, 0.7, 0.6, 0.6, 0.3])
CORRECT = np.array([True, True, True, False, True, False])


def test_risk_coverage_keeps_every_answer_at_or_above_each_threshold():
    s = selective_scores(CONFIDENCE, CORRECT, "plurality", 10)
    # At 1.0 two answers (both right), at 0.7 three (all right), at 0.6 five (4 right), at 0.3 all six (4 right).
    assert [(p.min_confidence, p.kept, p.accuracy) for p in s.risk_coverage] == [
        (1.0, 2, 1.0), (0.7, 3, 1.0), (0.6, 5, 0.8), (0.3, 6, pytest.approx(4 / 6))]
    assert s.risk_coverage[1].coverage == 0.5 and s.accuracy == pytest.approx(4 / 6)


def test_the_threshold_for_a_target_accuracy_keeps_the_most_answers_that_reach_it():
    s = selective_scores(CONFIDENCE, CORRECT, "plurality", 10, targets=(0.8, 0.9, 0.99))
    got = {a.target: (a.min_confidence, a.coverage, a.accuracy) for a in s.at_accuracy}
    assert got == {0.8: (0.6, 5 / 6, 0.8), 0.9: (0.7, 0.5, 1.0), 0.99: (0.7, 0.5, 1.0)}
    # All wrong: no threshold reaches any target.
    none = selective_scores(CONFIDENCE, np.zeros(6, bool), "plurality", 10, targets=(0.5,)).at_accuracy[0]
    assert (none.min_confidence, none.coverage, none.accuracy) == (None, 0.0, None)


def test_reliability_bins_and_expected_calibration_error():
    s = selective_scores(CONFIDENCE, CORRECT, "plurality", 10)
    full = {(b.lower, b.upper): (b.queries, b.mean_confidence, b.accuracy) for b in s.reliability if b.queries}
    # (lower, upper] bins: 0.7 in (0.6, 0.7] (0.7 * 10 is 7.000000000000001 in floats), 0.3 in (0.2, 0.3].
    assert full == {(0.9, 1.0): (2, 1.0, 1.0), (0.6, 0.7): (1, 0.7, 1.0), (0.5, 0.6): (2, 0.6, 0.5),
                    (0.2, 0.3): (1, 0.3, 0.0)}
    # Gaps |accuracy - confidence| weighted by the bins' queries: (2*0 + 1*0.3 + 2*0.1 + 1*0.3) / 6.
    assert s.ece == pytest.approx(0.8 / 6)
    # The risk once each answer is kept, most confident first: 0, 0, 0, 0.2, 0.2, 1/3.
    assert s.aurc == pytest.approx((0.4 + 1 / 3) / 6)


def test_a_query_with_no_answer_is_kept_at_no_threshold_as_classify_calls_it_unsure():
    # An empty memory's neighbourhood, or no point allowed to vote: confidence 0. At min_confidence 0 classify says
    # unsure ("no answer"); the curve had kept it at a threshold 0, as an answer, wrong.
    s = selective_scores(np.r_[CONFIDENCE, 0.0], np.r_[CORRECT, False], "plurality", 10)
    assert [(p.min_confidence, p.kept) for p in s.risk_coverage] == [(1.0, 2), (0.7, 3), (0.6, 5), (0.3, 6)]
    assert s.risk_coverage[-1].coverage == pytest.approx(6 / 7) and s.queries == 7
    assert unsure_of(None, None, 0.0) == (True, "no answer: no memory point could vote")
    # Many thresholds, shown one per 0.5 % of coverage, and some queries unanswered: the curve ends where answers do.
    many = selective_scores(np.r_[np.linspace(0.01, 1, 3000), np.zeros(500)], np.ones(3500, bool), "plurality", 10)
    assert many.risk_coverage[-1].kept == 3000 and many.aurc == 0.0
    nothing = selective_scores(np.zeros(3), np.zeros(3, bool), "plurality", 10)
    assert (nothing.risk_coverage, nothing.aurc) == ([], 1.0)


@pytest.mark.parametrize("rule", list(VoteRule))
@pytest.mark.parametrize("soft", [False, True])
def test_the_confidence_scored_is_the_vote_share_classify_gives_its_answer(rule, soft):
    rng = np.random.default_rng(1)
    label_ids = rng.integers(0, 4, size=(40, 9))
    label_ids[0, 5:] = -1  # a query with fewer neighbours than k
    sims = -np.sort(-rng.uniform(0.2, 0.9, size=(40, 9)), axis=1).astype(np.float32)
    rel = rng.uniform(0.2, 1.0, size=(40, 9))
    table = NeighborTable(label_ids, sims, ["a", "b", "c", "d"], rel)
    k = 7
    outcomes = [vote(*one(table, i, k), rule, reliability=rel[i, :k][label_ids[i, :k] >= 0] if soft else None)
                for i in range(40)]
    shares = winner_share(table, np.array([table.classes.index(o.label) for o in outcomes]), k, rule, soft=soft)
    assert shares == pytest.approx([o.scores[o.label] for o in outcomes], abs=1e-12)


def one(table: NeighborTable, i: int, k: int) -> tuple[list[str], np.ndarray]:
    """Query i's first k neighbours as `vote` takes them (labels, similarities), padding left out."""
    ids = table.label_ids[i, :k]
    return [table.classes[c] for c in ids[ids >= 0]], table.similarities[i, :k][ids >= 0].astype(np.float64)


def test_score_measures_the_per_class_decision_and_the_report_writes_it(tmp_path):
    # Plurality at k=2: query 0's two neighbours agree (share 1, right), query 1's split (share 0.5, won by rank 0,
    # wrong), query 2's agree (share 1, wrong).
    table = NeighborTable(np.array([[0, 0], [1, 0], [1, 1]]), np.full((3, 2), 0.5, np.float32), ["a", "b"])
    s = score(table, np.array([0, 0, 0]), rules=["plurality"], per_class=("plurality", 2)).selective
    assert (s.rule, s.k) == ("plurality", 2)
    assert [(p.min_confidence, p.kept, p.accuracy) for p in s.risk_coverage] == [(1.0, 2, 0.5), (0.5, 3, 1 / 3)]
    assert s.ece == pytest.approx((2 * 0.5 + 1 * 0.5) / 3)

    m = np.eye(4, dtype=np.float32)
    memory = MemoryArrays(m, ["a", "a", "b", "b"], ["0", "1", "2", "3"])
    queries = QuerySet(m[[0, 2]], ["q0", "q2"], [("a",), ("a",)], [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=2, memory="toy", memory_points=4,
                  featurizer="none", search="exact")
    report = evaluate(memory, queries, run, per_class=("plurality", 1))
    write_report(report, tmp_path, plots=False)
    with (tmp_path / "risk_coverage.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # k = 1: every answer a whole vote (share 1); one of the two is right.
    assert rows == [{"variant": "all", "rule": "plurality", "k": "1", "min_confidence": "1.000000", "kept": "2",
                     "coverage": "1.000000", "accuracy": "0.500000"}]
    assert "when to trust an answer" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "reliability.csv").read_text().splitlines()[-1] == "all,plurality,1,0.9,1,2,1.000000,0.500000"


def test_on_real_images_the_threshold_eval_reads_off_keeps_those_answers_in_classify(tiny_imagenet, tmp_path):
    """A real memory (EfficientNet-Lite0, 5 Tiny-ImageNet classes x 20 train images) scored on 50 val images: each
    query's confidence in predictions.csv is the one classify gives it, and classify with a threshold from the
    risk-coverage curve answers the queries and at the accuracy the curve says."""
    from typer.testing import CliRunner

    from tests.conftest import FEATURE_CACHE
    from vmem.cli import app

    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir())[:5]
    for split, n in (("train", 20), ("val", 10)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for f in sorted((tiny_imagenet / split / c).iterdir())[:n]:
                (tmp_path / split / c / f.name).symlink_to(f)
    memory = tmp_path / "memory"

    def run(*args: object):
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result

    run("build", tmp_path / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0",
        "--feature-cache", FEATURE_CACHE)
    run("eval", "--memory", memory, "--dataset", tmp_path / "val", "--out", tmp_path / "eval", "--cache",
        FEATURE_CACHE, "--no-plots")
    with (tmp_path / "eval" / "predictions.csv").open(newline="") as f:
        # By file name: eval names a linked image by its target, classify by the link
        scored = {Path(row["source"]).name: row for row in csv.DictReader(f) if row["variant"] == "all"}
    with (tmp_path / "eval" / "risk_coverage.csv").open(newline="") as f:
        curve = list(csv.DictReader(f))
    assert len(scored) == 50 and len(curve) > 2  # several thresholds to choose from
    point = curve[len(curve) // 2]  # a threshold that leaves some answers unsure
    threshold, kept = float(point["min_confidence"]), int(point["kept"])
    assert 0 < kept < 50

    out = run("classify", tmp_path / "val", "--memory", memory, "--exact", "--json", "--min-confidence", threshold)
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    by_source = {Path(a["source"]).name: a for a in answers}
    assert set(by_source) == set(scored)
    for source, row in scored.items():
        assert by_source[source]["label"] == row["predicted"]
        assert by_source[source]["confidence"] == pytest.approx(float(row["confidence"]), abs=1e-6)
    sure = [a for a in answers if not a["unsure"]]
    assert len(sure) == kept
    right = sum(int(scored[Path(a["source"]).name]["correct"]) for a in sure)
    assert right / kept == pytest.approx(float(point["accuracy"]), abs=1e-6)


def test_eval_dmn_gives_the_threshold_that_vmem_dmn_classify_keeps_at_that_accuracy(tiny_imagenet, tmp_path):
    """`vmem eval --dmn` scores the dmn rule's own confidence (the fused probability, no stream) on real images
    (EfficientNet-Lite0, 5 Tiny-ImageNet classes x 20 train images, 50 val images): a threshold read off its
    risk-coverage rows keeps, in `vmem dmn classify --min-confidence`, the answers and the accuracy the row says."""
    from typer.testing import CliRunner

    from tests.conftest import FEATURE_CACHE
    from vmem.cli import app

    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir())[5:10]
    for split, n in (("train", 20), ("val", 10)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for f in sorted((tiny_imagenet / split / c).iterdir())[:n]:
                (tmp_path / split / c / f.name).symlink_to(f)
    memory = tmp_path / "memory"

    def run(*args: object):
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result

    run("build", tmp_path / "train", "--memory", memory, "--featurizer", "efficientnet-lite0", "--workers", "0",
        "--feature-cache", FEATURE_CACHE)
    out = run("eval", "--memory", memory, "--dataset", tmp_path / "val", "--out", tmp_path / "eval", "--cache",
              FEATURE_CACHE, "--no-plots", "--dmn")
    report = json.loads((tmp_path / "eval" / "results.json").read_text())["dmn"]
    assert report["queries"] == 50 and report["mode"] == "memory-only"
    assert report["selective"]["confidence"] == "fused DMN probability of the label answered"
    assert "when to trust an answer of `vmem dmn classify`" in (tmp_path / "eval" / "table.md").read_text()
    assert f"dmn (memory-only, no stream) on 50 queries: {100 * report['accuracy']:.2f}% right" in out.stdout
    with (tmp_path / "eval" / "risk_coverage.csv").open(newline="") as f:
        curve = [row for row in csv.DictReader(f) if row["rule"] == "dmn"]
    assert len(curve) > 2 and curve[-1]["kept"] == "50"  # every answer kept at the lowest threshold
    point = curve[len(curve) // 2]
    threshold, kept = float(point["min_confidence"]), int(point["kept"])
    assert 0 < kept < 50

    out = run("dmn", "classify", tmp_path / "val", "--memory", memory, "--no-update", "--json",
              "--min-confidence", threshold)
    sure = [a for a in map(json.loads, out.stdout.splitlines()) if not a["unsure"]]
    assert len(sure) == kept
    right = sum(Path(a["source"]).parent.name == a["label"] for a in sure)
    assert right / kept == pytest.approx(float(point["accuracy"]), abs=1e-6)
