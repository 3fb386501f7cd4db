"""Exact search, every-rule-every-k scoring and the report files, checked against slow obvious versions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import random_unit_vectors

from eval.exact import _BFloat16Memory
from eval.harness import EvalReport, QuerySet, RunInfo, evaluate, write_report
from eval.scoring import (
    MemoryArrays,
    NeighborTable,
    correctness,
    exact_search,
    neighbors_exact,
    neighbors_from_store,
    read_vectors,
    score,
    truth_arrays,
)
from retrieval import FeaturizerSpec, Preprocessing, VoteRule, open_store, vote


@pytest.mark.parametrize("product", ["torch", "numpy", "bfloat16"])
def test_exact_search_equals_a_full_sort(product):
    q, m = random_unit_vectors(37, 16, seed=1), random_unit_vectors(300, 16, seed=2)
    idx, sims = exact_search(q, m, k=20, block=8, product=product)  # several blocks
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :20]
    assert np.array_equal(idx, full)
    assert np.allclose(sims, np.take_along_axis(q @ m.T, full, axis=1), atol=1e-6)


@pytest.mark.parametrize("product", ["torch", "numpy", "bfloat16"])
def test_exact_search_over_memory_chunks_and_column_groups_equals_a_full_sort(product):
    # 5,000 rows in chunks of 2,900 (each wide enough for the group-maxima top-k, with a ragged tail)
    q, m = random_unit_vectors(50, 8, seed=3), random_unit_vectors(5_000, 8, seed=4)
    idx, sims = exact_search(q, m, k=5, block=16, chunk=2_900, product=product)
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, full)
    assert np.allclose(sims, np.take_along_axis(q @ m.T, full, axis=1), atol=1e-6)


@pytest.mark.parametrize("product", ["torch", "bfloat16"])
def test_exact_search_in_slabs_equals_a_full_sort(product):
    # Chunks of 5,000 rows multiplied in slabs of 1,600 (the last one 200 wide, with a part group);
    # the candidates of one row then come from several slabs.
    q, m = random_unit_vectors(60, 8, seed=8), random_unit_vectors(7_000, 8, seed=9)
    idx, sims = exact_search(q, m, k=5, block=32, chunk=5_000, product=product, slab=1_600)
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx, full)
    assert np.allclose(sims, np.take_along_axis(q @ m.T, full, axis=1), atol=1e-6)


@pytest.mark.parametrize("product", ["torch", "bfloat16"])
def test_exact_search_in_slabs_narrower_than_the_groups_it_reads_back_equals_a_full_sort(product):
    # k = 20 reads back 20 groups of 64 a row; slabs of 128 columns hold two, so they come from many slabs.
    q, m = random_unit_vectors(40, 8, seed=10), random_unit_vectors(6_000, 8, seed=11)
    idx, sims = exact_search(q, m, k=20, block=16, product=product, slab=128)
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :20]
    assert np.array_equal(idx, full)
    assert np.allclose(sims, np.take_along_axis(q @ m.T, full, axis=1), atol=1e-6)


@pytest.mark.parametrize("product", ["torch", "numpy", "bfloat16"])
def test_exact_search_finds_every_copy_of_a_duplicated_vector(product):
    # Many equal similarities straddle group (and slab) boundaries: the top-k must still be the true top-k.
    base = random_unit_vectors(400, 8, seed=5)
    m = np.tile(base, (10, 1))  # each vector 10 times, 64-column groups mix the copies
    q = random_unit_vectors(20, 8, seed=6)
    idx, sims = exact_search(q, m, k=8, product=product, slab=640)
    expected = -np.sort(-(q @ m.T), axis=1)[:, :8]
    assert np.allclose(sims, expected, atol=1e-6)
    assert np.allclose(np.take_along_axis(q @ m.T, idx, axis=1), sims, atol=1e-6)
    # Equal similarities come in row order.
    for row_idx, row_sims in zip(idx, sims, strict=True):
        for a, b, sa, sb in zip(row_idx, row_idx[1:], row_sims, row_sims[1:], strict=False):
            assert sa > sb or (sa == sb and a < b)


@pytest.mark.parametrize("product", ["torch", "numpy", "bfloat16"])
def test_exact_search_excludes_rows_in_any_chunk_and_slab(product):
    m = random_unit_vectors(3_000, 8, seed=7)
    own = np.array([0, 1_535, 1_536, 1_599, 1_600, 2_999])
    idx, _ = exact_search(m[own], m, k=5, exclude=own, chunk=1_600, product=product, slab=1_536)
    assert not np.any(idx == own[:, None])
    full = np.argsort(-(m[own] @ m.T), axis=1, kind="stable")[:, 1:6]  # the best is the row itself
    assert np.array_equal(idx, full)


@pytest.mark.parametrize("product", ["torch", "numpy", "bfloat16"])
def test_exact_search_drops_the_excluded_row_and_pads_small_memories(product):
    m = random_unit_vectors(5, 8)
    idx, sims = exact_search(m, m, k=7, exclude=np.arange(5), product=product)
    assert not np.any(idx[:, :4] == np.arange(5)[:, None])  # nobody finds itself
    assert np.all(idx[:, 4:] == -1) and np.all(np.isneginf(sims[:, 4:]))


def test_bfloat16_similarities_stay_within_the_bound_its_filter_relies_on():
    # Near neighbours with all-positive coordinates (the worst case for rounding: nothing cancels),
    # memory rows of norm up to 3: the bound scales with the norms.
    rng = np.random.default_rng(10)
    q = np.abs(random_unit_vectors(64, 384, seed=11)) * rng.uniform(0.5, 2.0, (64, 1)).astype(np.float32)
    m = np.abs(q[rng.integers(0, 64, 4_000)] + 0.05 * random_unit_vectors(4_000, 384, seed=12))
    m *= rng.uniform(0.1, 3.0, (4_000, 1)).astype(np.float32)
    memory16 = _BFloat16Memory(m)
    approx = (torch.from_numpy(q).bfloat16() @ memory16.vectors.T).double().numpy()
    error = np.abs(approx - q.astype(np.float64) @ m.T.astype(np.float64))
    allowed = memory16.eps_per_query_norm * np.linalg.norm(q, axis=1, keepdims=True)
    assert np.all(error <= allowed)
    assert error.max() > 0.1 * allowed.max()  # the bound is not vacuous: rounding does get close


@pytest.mark.parametrize("crowded_queries", [3, 20])
def test_bfloat16_search_is_exact_among_near_ties_and_falls_back_where_rows_are_crowded(crowded_queries):
    # 20 vectors 200 times over: a query near one of them ties with 200 rows, more than the filter
    # rescores, so it is answered in float32. A few such queries go to float32 one by one (3 of 40);
    # when most of a block is crowded (20 of 40), the whole search carries on in float32.
    base = random_unit_vectors(20, 64, seed=13)
    m = np.concatenate([np.tile(base, (200, 1)), random_unit_vectors(40_000, 64, seed=14)])
    near = base[np.arange(crowded_queries) % 20] + 0.01 * random_unit_vectors(crowded_queries, 64, seed=15)
    q = np.concatenate([near, random_unit_vectors(40 - crowded_queries, 64, seed=16)])
    idx, sims = exact_search(q, m, k=8, product="bfloat16")
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :8]  # equal similarities in row order
    assert np.array_equal(idx, full)
    assert np.allclose(sims, np.take_along_axis(q @ m.T, full, axis=1), atol=1e-6)


def test_bfloat16_search_is_exact_where_the_best_similarities_are_negative():
    # Group maxima are read from bit patterns, which only order values >= 0: such queries go to float32.
    m = -np.abs(random_unit_vectors(20_000, 16, seed=17))
    q = np.concatenate([np.abs(random_unit_vectors(5, 16, seed=18)), random_unit_vectors(5, 16, seed=19)])
    idx, sims = exact_search(q, m, k=10, product="bfloat16")
    full = np.argsort(-(q @ m.T), axis=1, kind="stable")[:, :10]
    assert np.all(sims[:5] < 0)
    assert np.array_equal(idx, full)


def slow_accuracy(table: NeighborTable, truth: np.ndarray, rule: str, k: int) -> float:
    right = 0
    for lab, sim, t in zip(table.label_ids, table.similarities, truth, strict=True):
        out = vote([str(x) for x in lab[:k]], sim[:k], rule)
        right += int(out.label) == t
    return right / len(truth)


@pytest.mark.parametrize("rule", list(VoteRule))
def test_score_matches_voting_each_query_one_by_one(rule):
    rng = np.random.default_rng(0)
    label_ids = rng.integers(0, 4, size=(60, 12))
    sims = -np.sort(-rng.uniform(0.2, 0.9, size=(60, 12)), axis=1)
    truth = rng.integers(0, 4, size=60)
    table = NeighborTable(label_ids, sims.astype(np.float32), ["0", "1", "2", "3"])
    s = score(table, truth, rules=[rule])
    for k in (1, 2, 5, 12):
        assert s.accuracy[rule.value][k - 1] == pytest.approx(slow_accuracy(table, truth, rule.value, k))


def test_hit_rate_neighbor_accuracy_and_calibration_on_a_worked_example():
    # Query 0 (truth 0): neighbours 1,0,0 -> hit from k=2, plurality(3) = 0 with 2 votes, right.
    # Query 1 (truth 1): neighbours 0,0,2 -> never hit, plurality(3) = 0 with 2 votes, wrong.
    table = NeighborTable(np.array([[1, 0, 0], [0, 0, 2]]), np.array([[.9, .8, .7], [.9, .8, .7]], np.float32),
                          ["a", "b", "c"])
    s = score(table, np.array([0, 1]), calibration_k=3)
    assert s.hit_rate == [0.0, 0.5, 0.5]
    assert s.neighbor_accuracy == [0.0, 0.5, 0.5]
    assert s.accuracy["plurality"] == [0.0, 0.0, 0.5]  # k=2 on query 0 is a 1-1 tie won by rank 0
    assert [(b.votes, b.queries, b.accuracy) for b in s.calibration] == [(1, 0, None), (2, 2, 0.5), (3, 0, None)]
    assert s.best["plurality"].best_k == 3


def test_per_class_accuracy_and_confusions_on_a_worked_example():
    # Plurality at k=1 is the first neighbour. Class a: 3 queries, right once, taken for b twice.
    # Class b: 2 queries, both right. Class c: 1 query, taken for a. Class d: no queries, so not listed.
    # A query of a label the memory lacks (truth -1) belongs to no class.
    first = [1, 0, 1, 1, 1, 0, 2]
    table = NeighborTable(np.array([[f, f] for f in first]), np.full((7, 2), 0.5, np.float32), ["a", "b", "c", "d"])
    s = score(table, np.array([0, 0, 0, 1, 1, 2, -1]), per_class=("plurality", 1))
    assert (s.per_class.rule, s.per_class.k) == ("plurality", 1)
    got = [(c.label, c.queries, c.correct, c.confused_with) for c in s.per_class.classes]
    assert got == [("c", 1, 0, {"a": 1}), ("a", 3, 1, {"b": 2}), ("b", 2, 2, {})]  # hardest first
    assert s.per_class.classes[1].accuracy == pytest.approx(1 / 3)
    assert score(table, np.array([0, 0, 0, 1, 1, 2, -1])).per_class is None  # only when asked for


def test_soft_variants_appear_when_points_carry_reliability():
    table = NeighborTable(np.array([[1, 0, 0]]), np.array([[.9, .8, .7]], np.float32), ["a", "b"],
                          reliability=np.array([[1.0, 0.1, 0.1]]))
    s = score(table, np.array([0]), rules=["plurality"])
    assert s.accuracy["plurality"][2] == 1.0  # two votes for a
    assert s.accuracy["plurality+soft"][2] == 0.0  # 1.0 for b beats 0.2 for a
    # Each class's accuracy for the decision classify makes: soft pruning on (its default), or off.
    soft = score(table, np.array([0]), rules=["plurality"], per_class=("plurality", 3, True)).per_class
    hard = score(table, np.array([0]), rules=["plurality"], per_class=("plurality", 3, False)).per_class
    assert (soft.rule, soft.classes[0].correct, hard.rule, hard.classes[0].correct) == (
        "plurality+soft", 0, "plurality", 1)


def test_queries_without_neighbours_are_never_right():
    # e.g. ImageNet-A's "restricted" variant against a memory holding none of its 200 classes.
    memory = MemoryArrays(np.zeros((0, 8), np.float32), [], [])
    table = neighbors_exact(random_unit_vectors(2, 8), memory, ["a", "b"], k=3)
    s = score(table, np.array([0, 1]), calibration_k=3)
    assert all(curve == [0.0, 0.0, 0.0] for curve in s.accuracy.values())
    assert s.hit_rate == [0.0, 0.0, 0.0]
    assert all(b.queries == 0 for b in s.calibration)


def test_real_style_several_right_labels():
    truth, accepted = truth_arrays([("a", "b"), ("c",)], ["a", "b", "c"])
    assert accepted is not None
    assert correctness(np.array([[1, 2], [2, -1]]), truth, accepted).tolist() == [[True, False], [True, False]]


def test_labels_unknown_to_the_memory_are_always_wrong():
    truth, accepted = truth_arrays([("zebra",)], ["a"])
    assert truth.tolist() == [-1] and accepted is None
    assert not correctness(np.array([[-1, 0]]), truth).any()


def test_index_search_agrees_with_exact_search_on_a_qdrant_store():
    spec = FeaturizerSpec(name="test", dim=16, preprocessing=Preprocessing(resize=32, crop=32))
    m = random_unit_vectors(120, 16, seed=3)
    labels = [f"c{i % 6}" for i in range(120)]
    store = open_store(":memory:", spec)
    store.add(m, labels, [f"mem:{i}" for i in range(120)])
    q = random_unit_vectors(10, 16, seed=4)
    classes = sorted(set(labels))
    exact = neighbors_exact(q, MemoryArrays(m, labels, [str(i) for i in range(120)]), classes, k=15)
    index = neighbors_from_store(store, q, classes, k=15)
    assert np.array_equal(exact.label_ids, index.label_ids)
    assert np.allclose(exact.similarities, index.similarities, atol=1e-5)


def test_a_200_class_set_is_scored_against_the_whole_memory_and_with_the_memory_cut_to_its_classes():
    # ImageNet-A/-R's two variants, by hand. On a circle, the query (true class a) at 0 degrees; the memory: x at 5
    # and 10 degrees, a at 20, b at 25, x at 30 (x: a class the dataset does not have). At k = 2 and k = 3:
    #   all:        x, x (, a)          -> x, x: wrong at both k
    #   restricted: a, b (, nothing)    -> a (a tie at k = 2 goes to the nearer a): right at both k
    degrees = np.radians([5, 10, 20, 25, 30])
    m = np.stack([np.cos(degrees), np.sin(degrees)], axis=1).astype(np.float32)
    memory = MemoryArrays(m, ["x", "x", "a", "b", "x"], [str(i) for i in range(5)])
    queries = QuerySet(np.array([[1.0, 0.0]], np.float32), ["q0"], [("a",)], [])
    run = RunInfo(dataset="toy", format="imagenet-a", queries=1, memory="toy", memory_points=5,
                  featurizer="none", search="exact", k_max=3)
    report = evaluate(memory, queries, run, restrict_to=["a", "b"])
    for rule in VoteRule:
        assert report.variants["all"].accuracy[rule.value] == [0.0, 0.0, 0.0]
        assert report.variants["restricted"].accuracy[rule.value] == [1.0, 1.0, 1.0]
    assert report.variants["restricted"].hit_rate == [1.0, 1.0, 1.0] and report.run.restricted_classes == 2


def test_evaluate_writes_json_csv_table_and_plots(tmp_path):
    m = random_unit_vectors(200, 8, seed=5)
    labels = [f"c{i % 4}" for i in range(200)]
    memory = MemoryArrays(m, labels, [str(i) for i in range(200)])
    # Like ImageNet-A/-R: queries only from a subset of the memory's classes.
    rows = [i for i in range(80) if labels[i] in ("c0", "c1")]
    queries = QuerySet(m[rows] + 0.01, [f"q{i}" for i in rows], [(labels[i],) for i in rows], [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=40, memory="toy", memory_points=200,
                  featurizer="none", search="exact")
    report = evaluate(memory, queries, run, restrict_to=["c0", "c1"])
    assert set(report.variants) == {"all", "restricted"}
    # Labels are random here, so far neighbours vote at chance: 1 in 2 restricted to c0/c1, 1 in 4 otherwise.
    assert report.variants["restricted"].accuracy["plurality"][-1] > report.variants["all"].accuracy["plurality"][-1]
    files = {p.name for p in write_report(report, tmp_path)}
    assert {"results.json", "accuracy.csv", "table.md", "hit_rate.csv", "neighbor_accuracy.csv", "calibration.csv",
            "accuracy_vs_k.png", "hit_rate_vs_k.png", "neighbor_reliability.png",
            "restricted_accuracy_vs_k.png", "per_class.csv", "per_class_accuracy.png",
            "restricted_per_class_accuracy.png", "predictions.csv"} <= files
    again = EvalReport.model_validate(json.loads((tmp_path / "results.json").read_text()))
    assert again.variants["all"].accuracy["rank"][0] == 1.0  # each query's own point is its nearest
    # Each query's answer under classify's decision (rank, k=50), to compare runs query by query.
    with (tmp_path / "predictions.csv").open(newline="") as f:
        answers = list(csv.DictReader(f))
    assert len(answers) == 2 * 40 and [a["source"] for a in answers[:40]] == queries.sources
    for variant, scores in report.variants.items():
        rows = [a for a in answers if a["variant"] == variant]
        assert {(a["rule"], a["k"]) for a in rows} == {("rank", "50")}
        assert sum(int(a["correct"]) for a in rows) == sum(c.correct for c in scores.per_class.classes)
        assert all(a["correct"] == str(int([a["predicted"]] == json.loads(a["right_labels"]))) for a in rows)
        assert all([a["nearest"]] == json.loads(a["right_labels"]) for a in rows)
        assert all(float(a["nearest_similarity"]) > 0.95 for a in rows)
    assert "nearest_similarity" not in (tmp_path / "results.json").read_text()  # 50,000 rows for ImageNet: apart
    assert (tmp_path / "accuracy.csv").read_text().splitlines()[1] == "all,plurality,1,1.000000"
    rank_row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| rank |"))
    assert rank_row.endswith("| 100.00 (1) |") and rank_row.count("|") == 13  # rule, k=10..100, best

    # The same folder for a run without the restricted variant, then one without plots: no plot outlives its run.
    write_report(evaluate(memory, queries, run), tmp_path)
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert pngs == {"accuracy_vs_k.png", "hit_rate_vs_k.png", "neighbor_reliability.png", "per_class_accuracy.png",
                    "risk_coverage.png", "reliability.png"}
    (tmp_path / "mine.png").write_bytes(b"a file of the user's")
    write_report(evaluate(memory, queries, run), tmp_path, plots=False)
    assert {p.name for p in tmp_path.glob("*.png")} == {"mine.png"}


def test_a_run_of_long_paths_gets_plot_titles_drawn_whole(tmp_path):
    from PIL import Image

    m = random_unit_vectors(200, 8, seed=5)
    labels = [f"c{i % 4}" for i in range(200)]
    queries = QuerySet(m[:40] + 0.01, [f"q{i}" for i in range(40)], [(labels[i],) for i in range(40)], [])
    # As vmem eval records them: the dataset and the memory as given, absolute paths
    run = RunInfo(dataset="/work/shared/data/tiny-imagenet-200/val", format="imagefolder", queries=40,
                  memory="/home/someone/experiments/2026-12/memories/tiny-imagenet-30-classes", memory_points=200,
                  featurizer="efficientnet-lite0", search="exact")
    report = evaluate(MemoryArrays(m, labels, [str(i) for i in range(200)]), queries, run)
    pngs = sorted(p for p in write_report(report, tmp_path) if p.suffix == ".png")
    assert len(pngs) == 6
    for png in pngs:
        # The title is the only ink in the band above the axes: none at the image's edges, where a title wider than
        # the figure had been cut off ("...a/tiny-imagenet-200/val (all) against /home/someone/...")
        pixels = np.asarray(Image.open(png).convert("L"))
        band = pixels[: pixels.shape[0] // 12]
        assert (band < 250).any(), png.name  # a title was drawn
        edges = np.concatenate([band[:, :4], band[:, -4:]], axis=1)
        assert (edges >= 250).all(), f"{png.name}: its title runs off the image"
    assert json.loads((tmp_path / "results.json").read_text())["run"]["dataset"] == run.dataset  # the whole kept


def test_evaluating_a_memory_with_nothing_to_search_is_refused_not_scored_zero(tmp_path):
    from retrieval import FeaturizerSpec, Preprocessing, open_store
    from retrieval.store import EXCLUDED_KEY
    from vmem import NothingToSearchError

    m = random_unit_vectors(12, 8, seed=5)
    queries = QuerySet(m[:3], ["q0", "q1", "q2"], [("c0",), ("c1",), ("c0",)], [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=3, memory="toy", memory_points=0,
                  featurizer="none", search="exact")
    # Every curve had been 0 %: a memory that knows nothing, rather than one with nothing in it
    with pytest.raises(NothingToSearchError, match="holds no points"):
        evaluate(MemoryArrays(m[:0], [], []), queries, run)
    store = open_store(str(tmp_path / "memory"), FeaturizerSpec(name="toy", dim=8, preprocessing=Preprocessing(
        resize=8, crop=8)))
    with pytest.raises(NothingToSearchError, match="holds no points"):
        evaluate(store, queries, run)
    store.add(m, [f"c{i % 2}" for i in range(12)], [f"mem://{i}" for i in range(12)])
    store.set_payload(store.ids_where(), {EXCLUDED_KEY: "pruned"})
    with pytest.raises(NothingToSearchError, match=r"all 12 points .* hard-pruned"):
        evaluate(store, queries, run)
    store.close()


def test_a_report_that_cannot_be_written_whole_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    # A disk that filled while a run wrote had left its numbers beside the table and plots of the run before.
    import errno

    import eval.harness

    m = random_unit_vectors(60, 8, seed=5)
    labels = [f"c{i % 3}" for i in range(60)]
    queries = QuerySet(m[:9] + 0.01, [f"q{i}" for i in range(9)], [(labels[i],) for i in range(9)], [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=9, memory="toy", memory_points=60,
                  featurizer="none", search="exact")
    write_report(evaluate(MemoryArrays(m, labels, [str(i) for i in range(60)]), queries, run), tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eval.harness, "plot_all", disk_full)  # after the JSON, the CSVs and the table
    other = run.model_copy(update={"queries": 8})
    with pytest.raises(OSError, match="No space left"):
        write_report(evaluate(MemoryArrays(m, labels, [str(i) for i in range(60)]), queries.subset(range(8)), other),
                     tmp_path)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_per_class_csv_says_where_misses_went_for_any_label(tmp_path):
    # The cell was "label:count;label:count": a label holding ':' or ';' (a user's labels can be any text) could
    # not be told from the next. It is a JSON object, label -> queries: json.loads reads it back
    labels = ["AC:DC;live", "a;b:3", 'say "cheese", twice']
    m = random_unit_vectors(60, 8, seed=5)
    memory = [labels[i % 3] for i in range(60)]
    queries = QuerySet(m[:9] + 0.01, [f"q{i}" for i in range(9)], [(labels[(i + 1) % 3],) for i in range(9)], [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=9, memory="toy", memory_points=60,
                  featurizer="none", search="exact")
    report = evaluate(MemoryArrays(m, memory, [str(i) for i in range(60)]), queries, run)
    write_report(report, tmp_path, plots=False)
    with open(tmp_path / "per_class.csv", encoding="utf-8", newline="") as f:
        rows = {r["label"]: json.loads(r["confused_with"]) for r in csv.DictReader(f)}
    assert rows == {c.label: c.confused_with for c in report.variants["all"].per_class.classes}
    assert "AC:DC;live" in rows["a;b:3"] and sum(rows["a;b:3"].values()) == 3  # its 3 queries, all missed


def test_predictions_csv_lists_each_querys_right_labels_whatever_they_hold(tmp_path):
    # The cell was the labels joined with ';': "a;b" one label or two could not be told apart. It is a JSON
    # list, as per_class.csv's confused_with is an object: json.loads reads it back
    labels = ["a;b", "a", "b", 'say "cheese", twice']
    m = random_unit_vectors(40, 8, seed=6)
    memory = [labels[i % 4] for i in range(40)]
    right = [("a;b",), ("a", "b"), ('say "cheese", twice', "a;b")]
    queries = QuerySet(m[:3] + 0.01, ["q0", "q1", "q2"], right, [])
    run = RunInfo(dataset="toy", format="imagefolder", queries=3, memory="toy", memory_points=40,
                  featurizer="none", search="exact")
    write_report(evaluate(MemoryArrays(m, memory, [str(i) for i in range(40)]), queries, run), tmp_path, plots=False)
    with open(tmp_path / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [tuple(json.loads(r["right_labels"])) for r in rows] == right
    assert rows[0]["correct"] == "1" and rows[0]["predicted"] == "a;b"  # its own point, labelled a;b, is nearest


@pytest.mark.parametrize("location", ["edge", ":memory:"])
def test_a_memory_read_into_ram_is_every_vector_as_stored_even_if_points_come_or_go_meanwhile(location, tmp_path,
                                                                                              monkeypatch):
    from retrieval.store import EXCLUDED_KEY

    spec = FeaturizerSpec(name="test", dim=16, preprocessing=Preprocessing(resize=32, crop=32))
    store = open_store(str(tmp_path / "m") if location == "edge" else location, spec)
    m = random_unit_vectors(40, 16, seed=5)
    ids = store.add(m, [f"c{i % 4}" for i in range(40)], [f"mem:{i}" for i in range(40)])
    store.set_payload(ids[:3], {EXCLUDED_KEY: "pruned"})
    stored = {i: v for i, v in zip(ids, m, strict=True)}

    for counted in (5, 40, 400):  # points added after the count (rows grow), none, or forgotten (rows shrink)
        monkeypatch.setattr(store, "count", lambda searchable=False, n=counted: n)
        got, payloads, vectors = read_vectors(store)
        assert vectors.dtype == np.float32 and vectors.shape == (40, 16)
        held = vectors if vectors.base is None else vectors.base
        assert held.nbytes <= vectors.nbytes / 0.9  # no room kept for rows that were not filled
        assert sorted(got) == sorted(ids) and [p["source"] for p in payloads] == [
            f"mem:{ids.index(i)}" for i in got]
        assert np.allclose(vectors, np.stack([stored[i] for i in got]), atol=1e-3)  # float16 originals on disk
    monkeypatch.undo()
    searchable = MemoryArrays.from_store(store)
    assert len(searchable) == 37 and not set(ids[:3]) & set(searchable.ids)  # as exact evaluation reads it
    store.close()


def test_the_hardest_classes_table_keeps_a_label_with_a_bar_in_its_cell():
    # Markdown splits a row at every |: a class "AC/DC | live" (or a name "reel | spool") took the next column's
    # place, and a label with a newline ended the table
    from eval.harness import hardest_classes_table
    from eval.scoring import ClassScore, PerClass

    per_class = PerClass(rule="rank", k=50, classes=[
        ClassScore(label="AC/DC | live", queries=4, correct=1, accuracy=0.25, confused_with={"new\nline": 3}),
        ClassScore(label="new\nline", queries=4, correct=4, accuracy=1.0, confused_with={})])
    rows = hardest_classes_table(per_class, {"new\nline": "a | b"}).splitlines()[2:]
    assert rows[2:] == ["| AC/DC \\| live | 4 | 25.0 | new\\nline (a \\| b) ×3 |",
                        "| new\\nline (a \\| b) | 4 | 100.0 |  |"]


def test_exact_evaluation_finds_the_neighbours_classify_exact_finds_in_a_float16_memory(tmp_path):
    from eval.scoring import neighbors_exact_paged

    spec = FeaturizerSpec(name="test", dim=32, preprocessing=Preprocessing(resize=32, crop=32))
    store = open_store(str(tmp_path / "m"), spec)  # the default index: float16 originals, as vmem build makes
    m = random_unit_vectors(400, 32, seed=7)
    labels = [f"c{i % 5}" for i in range(400)]
    store.add(m, labels, [f"mem:{i}" for i in range(400)])
    q = random_unit_vectors(30, 32, seed=8)
    classes = sorted(set(labels))
    found = store.query_batch(q, 20, exact=True)  # what `vmem classify --exact` votes over
    want_labels = np.array([[classes.index(h.label) for h in row] for row in found])
    want_sims = np.array([[h.similarity for h in row] for row in found])

    in_ram = neighbors_exact(q, MemoryArrays.from_store(store), classes, k=20)
    paged, _ = neighbors_exact_paged(store, q, classes, k=20, page=64)
    for table in (in_ram, paged):
        assert np.array_equal(table.label_ids, want_labels)
        assert np.allclose(table.similarities, want_sims, rtol=0, atol=1e-6)  # not the 1e-4 of an unrounded query
    store.close()


def test_a_memory_read_into_ram_for_exact_search_holds_its_vectors_and_labels_not_its_sources(tmp_path):
    # Exact evaluation reads every point: with each point's payload kept whole while the vectors were read, a
    # memory's sources (long paths) were held beside the matrix, ~0.5 KB a point (0.5 GB at 1M points)
    import tracemalloc

    spec = FeaturizerSpec(name="test", dim=8, preprocessing=Preprocessing(resize=32, crop=32))
    store = open_store(str(tmp_path / "m"), spec)
    n = 2_000
    long_folder = "/data/" + "a-long-folder-name/" * 500  # ~10 KB a source, 20 MB in all
    store.add(random_unit_vectors(n, 8, seed=3), [f"c{i % 4}" for i in range(n)],
              [f"{long_folder}{i}.jpg" for i in range(n)])
    tracemalloc.start()
    try:
        arrays = MemoryArrays.from_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert len(arrays) == n and arrays.features.shape == (n, 8)
    assert sorted(arrays.labels) == sorted(f"c{i % 4}" for i in range(n))
    assert peak < n * len(long_folder) / 4  # the sources were never all held (a page of points is ~2 MB)
    assert len({id(label) for label in arrays.labels}) == 4  # one string a label, not one a point
