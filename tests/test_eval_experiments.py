"""The paper's experiments on synthetic clustered features: each shows the effect it is named for."""

from __future__ import annotations

import numpy as np
import pytest

from eval.experiments import (
    LabelledArrays,
    corruption,
    granularity,
    markdown,
    ood_classes,
    pruning,
    scaling,
    unlearning,
    write_experiment,
)

N_CLASSES = 6


def clusters(per_class: int, seed: int, spread: float = 1.0) -> LabelledArrays:
    """Gaussian clusters around fixed class centres on the unit sphere (overlapping a little)."""
    centres = np.random.default_rng(123).standard_normal((N_CLASSES, 16))
    rng = np.random.default_rng(seed)
    x = np.repeat(centres, per_class, axis=0) + spread * rng.standard_normal((N_CLASSES * per_class, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return LabelledArrays(x.astype(np.float32), [f"c{i}" for i in range(N_CLASSES) for _ in range(per_class)])


@pytest.fixture(scope="module")
def data():
    return clusters(60, seed=1), clusters(20, seed=2)


def test_scaling_error_falls_with_memory_size(data):
    res = scaling(*data, per_class=(1, 5, 60), ks=(1, 10))
    sizes = [r["memory_size"] for r in res.rows]
    assert sizes == [6, 30, 360]
    assert res.rows[-1]["rank_best"] > res.rows[0]["rank_best"]
    assert res.fit is not None and res.fit["rank"]["a"] < 0  # log-log slope of error


def test_corruption_costs_little_with_many_neighbours_and_a_lot_with_one(data):
    res = corruption(*data, fractions=(0.0, 0.5, 1.0))
    clean, half, full = res.rows
    assert clean["wrong_labels"] == 0.0
    assert half["wrong_labels"] == pytest.approx(0.5 * (1 - 1 / N_CLASSES), abs=0.06)
    assert clean["rank@1"] - half["rank@1"] > 0.25  # 1-NN inherits every wrong label...
    assert clean["rank_best"] - half["rank_best"] < 0.1  # ...a large-k vote outvotes them
    assert full["plurality@100"] < 0.4  # all labels random: near chance (1/6)


def test_adding_ood_classes_keeps_old_accuracy_and_learns_the_new(data):
    res = ood_classes(*data, new_classes=2, k=10)
    rank = next(r for r in res.rows if r["rule"] == "rank")
    assert abs(rank["old_change"]) < 0.1
    assert rank["new_after"] > 0.7
    assert len(res.params["new_classes"]) == 2


def test_granularity_held_out_classes_are_found_from_a_few_exemplars(data):
    res = granularity(*data, held_out=2, exemplars=(0, 1, 5, 60))
    by_n = {r["exemplars"]: r for r in res.rows}
    assert by_n[0]["held_out_accuracy"] == 0.0 and by_n[0]["kept_taken_by_new"] == 0.0
    assert by_n[5]["held_out_accuracy"] > 0.5  # chance is 1/6
    assert by_n[60]["held_out_accuracy"] >= by_n[1]["held_out_accuracy"]
    assert sum(c["queries"] for c in res.params["confused_with_at_zero"]) == 40  # 2 classes x 20 queries


def test_pruning_reports_none_hard_and_soft_on_the_same_queries(data):
    res = pruning(*data, thresholds=(1000, 2), k=20)
    assert [r["variant"] for r in res.rows] == ["none", "hard>=1000", "hard>=2", "soft 1.75/(1+count)"]
    assert res.rows[1]["points"] == 360  # nobody is blamed 1000 times
    assert res.rows[1]["rank@10"] == res.rows[0]["rank@10"]
    assert res.rows[2]["points"] < 360
    assert "rank@10" in res.rows[3]


def test_unlearning_leaves_no_citation_of_a_forgotten_point(data):
    res = unlearning(*data, forget_fraction=0.05, k=10, query_limit=60)
    r = res.rows[0]
    assert r["class_points"] == 60 and r["sample_points"] > 0
    assert r["remaining_points"] == 360 - 60 - r["sample_points"]
    assert r["citations_of_forgotten_before"] > 0 and r["citations_of_forgotten_after"] == 0
    assert r["class_accuracy_after"] in (0.0, None)  # its label is gone from memory
    assert r["rest_accuracy_after"] > 0.7


def test_results_are_written_as_json_csv_markdown_and_png(data, tmp_path):
    res = corruption(*data, fractions=(0.0, 0.5))
    names = {p.name for p in write_experiment(res, tmp_path)}
    assert names == {"corruption.json", "corruption.csv", "corruption.md", "corruption.png"}
    assert "| fraction |" in markdown(res)


def test_scaling_with_few_classes_writes_every_size_in_one_table(data, tmp_path):
    # 6 classes x 1 exemplar is a 6-point memory: its row still has the columns at k = 10, 50, 100 that the
    # larger memories have (voting with all 6 points), so the CSV and Markdown tables are complete.
    res = scaling(*data, per_class=(1, 60))
    assert set(res.rows[0]) == set(res.rows[1])
    assert res.rows[0]["rank@100"] == res.rows[0]["rank@10"]
    write_experiment(res, tmp_path, plots=False)
    assert len((tmp_path / "scaling.csv").read_text().splitlines()) == 3


def test_held_out_classes_are_drawn_among_those_the_queries_have(data):
    memory, queries = data
    few = queries.where(lambda lab: lab in {"c0", "c1", "c2"})  # queries of half the memory's classes
    for seed in range(5):
        res = ood_classes(memory, few, new_classes=2, seed=seed)
        assert set(res.params["new_classes"]) <= {"c0", "c1", "c2"}
        res = granularity(memory, few, held_out=2, exemplars=(0, 5), seed=seed)
        assert set(res.params["held_out"]) < {"c0", "c1", "c2"}
        assert all(0 <= r["held_out_accuracy"] <= 1 and 0 <= r["kept_accuracy"] <= 1 for r in res.rows)
    every = granularity(memory, few, held_out=3, exemplars=(0, 5))  # every class with queries held out
    assert [r["kept_accuracy"] for r in every.rows] == [None, None] and "no queries of the kept" in every.summary
    with pytest.raises(ValueError, match="of the memory's 6 classes, 3 have queries"):
        ood_classes(memory, few, new_classes=4)


def test_ood_classes_at_a_k_beyond_the_memory_and_beyond_100(data):
    memory, queries = data
    small = memory.take([i for i in range(len(memory)) if i % 60 < 5])  # 30 points
    res = ood_classes(small, queries, new_classes=2, k=50)
    assert {r["rule"] for r in res.rows} == {"plurality", "distance", "softmax", "rank"}
    res = ood_classes(memory, queries, new_classes=2, k=150)
    assert all(0 <= r["old_after"] <= 1 for r in res.rows)
