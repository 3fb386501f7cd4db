"""The paper's experiments on synthetic clustered features: each shows the effect it is named for."""

from __future__ import annotations

import numpy as np
import pytest

from eval.experiments import (
    LabelledArrays,
    auroc,
    corruption,
    fpr_at_tpr,
    granularity,
    markdown,
    novelty,
    novelty_thresholds,
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


def test_granularity_rows_say_how_many_exemplars_the_memory_had_not_how_many_were_asked(data):
    memory, queries = data  # 60 points a class
    res = granularity(memory, queries, held_out=2, exemplars=(0, 5, 60, 100, 200))
    assert [r["exemplars"] for r in res.rows] == [0, 5, 60]
    assert res.summary.startswith("2 held-out classes, 1-NN: ") and " with 60; " in res.summary


def test_experiment_plots_name_their_run_and_label_log_axes_in_plain_numbers(data, tmp_path, monkeypatch):
    """Two memories' scaling plots had one title, "error against memory size"; and its log axes read "6 x 10^2"."""
    import eval.plots as plots

    seen = {}
    save = plots._save

    def looked_at(fig, path):  # the figure as it is saved: its title and every tick label drawn
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in [*ax.get_xticklabels(which="both"), *ax.get_yticklabels(which="both")]]
        seen[path.name] = (ax.get_title(), [t for t in labels if t])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", looked_at)
    res = scaling(*data, per_class=(1, 5, 60), ks=(1, 10))
    res.params.update(memory="/data/memories/lite0", queries="/data/tiny/val", featurizer="efficientnet-lite0")
    write_experiment(res, tmp_path)
    title, labels = seen["scaling.png"]
    assert title == "error against memory size (tiny/val against memories/lite0, efficientnet-lite0)"
    assert "100" in labels and not [t for t in labels if "^" in t or "times" in t]


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


def test_novelty_tells_the_queries_of_held_out_classes_from_the_others(data, tmp_path):
    memory, queries = data
    res = novelty(memory, queries, new_classes=2)
    assert [r["k"] for r in res.rows] == [1, 10, 50, 100]
    assert res.params["familiar_queries"] == 80 and res.params["unfamiliar_queries"] == 40  # 4 and 2 classes x 20
    for r in res.rows:
        assert r["auroc"] > 0.85  # chance is 0.5
        # The threshold is the memory's own p99: few familiar queries above it, many more unfamiliar ones
        assert r["familiar_flagged"] < 0.1 < r["unfamiliar_flagged"]
        assert 0 <= r["fpr@95tpr"] <= 1
        # Familiar queries flagged or not, together: the rank vote's accuracy over them all
        n = r["familiar_flagged_queries"]
        together = (n * (r["accuracy_flagged"] or 0) + (80 - n) * r["accuracy_unflagged"]) / 80
        assert together == pytest.approx(_score_rank(memory, queries, res.params["new_classes"]), abs=1e-9)
    h = res.params["histogram"]
    assert (h["k"], sum(h["familiar"]), sum(h["unfamiliar"])) == (100, 80, 40)
    names = {p.name for p in write_experiment(res, tmp_path)}
    assert names == {"novelty.json", "novelty.csv", "novelty.md", "novelty.png"}
    table = markdown(res)
    assert "| k | auroc | fpr@95tpr | threshold | unfamiliar_flagged | familiar_flagged |" in table
    assert f"| 100 | {res.rows[-1]['auroc']:.4g} | {100 * res.rows[-1]['fpr@95tpr']:.2f} |" in table  # shares in %


def _score_rank(memory, queries, held_out, k=50):
    from eval.experiments import _row, _score

    kept = memory.where(lambda lab: lab not in held_out)
    return _row(_score(kept, queries.where(lambda lab: lab not in held_out)), [k])[f"rank@{k}"]


def test_novelty_thresholds_on_arrays_are_those_a_memory_of_the_points_calibrates(data, tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing, open_store, point_id_for
    from vmem import VisualMemory

    memory, _ = data
    sources = [f"mem:{i}" for i in range(len(memory))]
    spec = FeaturizerSpec(name="precomputed", dim=16, preprocessing=Preprocessing(resize=0, crop=0))
    with VisualMemory(open_store(str(tmp_path / "memory"), spec), reranker=None) as mem:
        mem.store.add(memory.features, memory.labels, sources)
        arrays = LabelledArrays(memory.features, memory.labels, [point_id_for(s) for s in sources])
        for k, t in novelty_thresholds(arrays, [1, 10, 50]).items():
            assert t == pytest.approx(mem.novelty_threshold(k=k, exact=True), abs=1e-3)  # float16 originals


def test_novelty_caps_k_at_the_memory_and_needs_queries_of_a_kept_class(data):
    memory, queries = data
    small = memory.take([i for i in range(len(memory)) if i % 60 < 3])  # 6 classes x 3 points
    res = novelty(small, queries, new_classes=2)
    assert [r["k"] for r in res.rows] == [1, 10, 12] and res.params["vote_k"] == 12
    few = queries.where(lambda lab: lab in {"c0", "c1"})
    with pytest.raises(ValueError, match="no query is of a class kept in the memory"):
        novelty(memory, few, new_classes=2)


def test_auroc_counts_ties_half_and_fpr_is_read_at_95_percent_of_the_positives():
    assert auroc([3, 2], [1, 0]) == 1.0 and auroc([0], [1]) == 0.0
    assert auroc([2, 1], [1, 0]) == pytest.approx(3.5 / 4)  # one tie of four pairs
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    positives = np.arange(1, 101)  # 95 of them are at 6 or above
    assert fpr_at_tpr(positives, np.array([0, 5, 6, 50])) == 0.5
    assert fpr_at_tpr(positives, np.array([0, 5, 5.9])) == 0.0
