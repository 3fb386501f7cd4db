"""`vmem tune`: the search over rule × parameter × k, the split, and the precedence of the stored defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.scoring import MemoryArrays, NeighborTable, neighbors_exact, neighbors_exact_paged
from eval.tuning import split_indices, tune
from retrieval import FeaturizerSpec, Preprocessing, open_store, vote
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests.test_cli import COLOURS, built, image_folder  # noqa: F401 - fixtures reused
from vmem.cli import app


def random_table(n=60, k=12, n_classes=4, seed=3):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n)
    # Neighbours are right more often near the top, as with real features.
    right = rng.random((n, k)) < np.linspace(0.7, 0.3, k)
    label_ids = np.where(right, truth[:, None], rng.integers(0, n_classes, (n, k)))
    sims = np.sort(rng.uniform(0.2, 0.9, (n, k)), axis=1)[:, ::-1]
    return NeighborTable(label_ids, sims.astype(np.float32), [str(c) for c in range(n_classes)]), truth


def brute_force_accuracy(table, truth, rows, rule, k, alpha, tau):
    hits = [vote([str(c) for c in table.label_ids[r, :k]], table.similarities[r, :k], rule, alpha, tau).label
            == str(truth[r]) for r in rows]
    return float(np.mean(hits))


def test_tune_picks_the_best_candidate_on_the_validation_rows_only():
    table, truth = random_table()
    val, held = split_indices(len(truth), 0.5, seed=1)
    report = tune(table, truth, val, held, alphas=(0.5, 2.0, 8.0), taus=(0.05, 0.5))
    assert len(report.candidates) == 2 + 2 + 3  # plurality, distance, softmax×2, rank×3
    best_seen = 0.0
    for c in report.candidates:
        curve = [brute_force_accuracy(table, truth, val, c.rule, k, c.alpha, c.tau) for k in range(1, 13)]
        assert c.val_accuracy == pytest.approx(max(curve))
        assert c.best_k == 1 + int(np.argmax(curve))
        assert c.heldout_accuracy == pytest.approx(
            brute_force_accuracy(table, truth, held, c.rule, c.best_k, c.alpha, c.tau))
        best_seen = max(best_seen, c.val_accuracy)
    assert report.chosen.val_accuracy == pytest.approx(best_seen)
    assert report.gap == pytest.approx(report.chosen.val_accuracy - report.chosen.heldout_accuracy)
    assert report.n_val == 30 and report.n_heldout == 30
    assert report.vote_settings()["soft_pruning"] is True  # no factors yet: a later soft prune still applies


def test_a_search_below_k_50_says_there_is_no_fixed_rule_baseline_rather_than_an_empty_table():
    table, truth = random_table(k=12)
    val, held = split_indices(len(truth), 0.5, seed=1)
    report = tune(table, truth, val, held, alphas=(2.0,), taus=(0.07,))
    assert report.fixed == []
    assert "| fixed rule" not in report.markdown()
    assert "no fixed-rule baseline at k = 50: only k up to 12 was searched" in report.markdown()


def test_soft_pruned_variants_are_searched_when_points_carry_reliability():
    table, truth = random_table()
    rng = np.random.default_rng(0)
    table.reliability = rng.choice([1.0, 0.25], size=table.label_ids.shape)
    val, held = split_indices(len(truth), 0.5, seed=1)
    report = tune(table, truth, val, held, alphas=(2.0,), taus=(0.07,))
    assert sum(c.soft_pruning for c in report.candidates) == 4 and len(report.candidates) == 8
    soft_rank = next(c for c in report.candidates if c.soft_pruning and c.rule == "rank")
    hits = [vote([str(x) for x in table.label_ids[r, :soft_rank.best_k]], table.similarities[r, :soft_rank.best_k],
                 "rank", reliability=table.reliability[r, :soft_rank.best_k]).label == str(truth[r]) for r in val]
    assert soft_rank.val_accuracy == pytest.approx(np.mean(hits))
    assert report.vote_settings()["soft_pruning"] == report.chosen.soft_pruning


def test_held_out_labels_never_change_the_choice():
    table, truth = random_table()
    val, held = split_indices(len(truth), 0.5, seed=1)
    scrambled = truth.copy()
    scrambled[held] = (scrambled[held] + 1) % 4
    a = tune(table, truth, val, held)
    b = tune(table, scrambled, val, held)
    assert a.vote_settings() == b.vote_settings()
    assert a.chosen.heldout_accuracy != b.chosen.heldout_accuracy


def test_split_is_seeded_disjoint_and_complete():
    v1, h1 = split_indices(101, 0.5, seed=0)
    v2, h2 = split_indices(101, 0.5, seed=0)
    assert np.array_equal(v1, v2) and np.array_equal(h1, h2)
    assert not set(v1) & set(h1) and sorted([*v1, *h1]) == list(range(101))
    assert not np.array_equal(v1, split_indices(101, 0.5, seed=1)[0])


def test_tuned_settings_become_the_memory_defaults_and_explicit_flags_still_win(built, image_folder, tmp_path):  # noqa: F811
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    runner = CliRunner()
    out = runner.invoke(app, ["tune", "--memory", str(memory), "--dataset", str(image_folder / "train"),
                              "--val-fraction", "0.5", "--k-max", "6", "--out", str(tmp_path / "report")],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "chosen:" in out.output and "held-out" in out.output
    stored = json.loads(runner.invoke(app, ["info", "--memory", str(memory), "--json"]).output)["settings"]
    assert set(stored["vote"]) == {"rule", "k", "alpha", "tau", "soft_pruning"} and 1 <= stored["vote"]["k"] <= 6
    assert (tmp_path / "report" / "tune.md").exists()
    run_info = json.loads((tmp_path / "report" / "tune.json").read_text())["run"]  # what the choice depends on
    assert (run_info["seed"], run_info["val_fraction"], run_info["dry_run"]) == (0, 0.5, False)
    assert run_info["featurizer"] == "efficientnet-lite0" and run_info["vmem_version"]
    [tuned] = [json.loads(line) for line in runner.invoke(
        app, ["history", "--memory", str(memory), "--op", "tune", "--json"]).stdout.splitlines()]
    assert tuned["detail"]["vote"] == stored["vote"] and tuned["via"] == "cli"  # the journal says who tuned it

    query = str(image_folder / "query" / "red" / "q.jpg")
    res = json.loads(runner.invoke(app, ["classify", query, "--memory", str(memory), "--json"]).output)
    assert res["vote"]["origin"] == "memory"
    assert res["vote"]["rule"] == stored["vote"]["rule"] and res["vote"]["k"] == stored["vote"]["k"]
    assert len(res["neighbors"]) == stored["vote"]["k"]
    res = json.loads(runner.invoke(app, ["classify", query, "--memory", str(memory), "--json", "--k", "2"]).output)
    assert res["vote"]["origin"] == "explicit" and res["vote"]["k"] == 2 and len(res["neighbors"]) == 2
    assert res["vote"]["rule"] == stored["vote"]["rule"]  # only k was given: the rule is still the tuned one

    # vmem eval scores with the tuned alpha/tau and reports the tuned settings' accuracy.
    out = runner.invoke(app, ["eval", "--memory", str(memory), "--dataset", str(image_folder / "query"),
                              "--out", str(tmp_path / "eval"), "--no-plots", "--cache", str(tmp_path / "cache")],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert f"the memory's tuned settings ({stored['vote']['rule']}, k={stored['vote']['k']}" in out.output
    run = json.loads((tmp_path / "eval" / "results.json").read_text())["run"]
    assert run["tuned"]["k"] == stored["vote"]["k"] and run["tau"] == stored["vote"]["tau"]

    # Back to the defaults, journaled: the only way back had been tuning again
    out = runner.invoke(app, ["tune", "--memory", str(memory), "--reset"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "the memory votes with the defaults again (rank, k=50" in out.output, out.output
    assert "vote" not in json.loads(runner.invoke(app, ["info", "--memory", str(memory), "--json"]).output)["settings"]
    res = json.loads(runner.invoke(app, ["classify", query, "--memory", str(memory), "--json"]).output)
    assert res["vote"]["origin"] == "default" and res["vote"]["k"] == 50
    history = runner.invoke(app, ["history", "--memory", str(memory), "--op", "tune"]).stdout
    assert "tuned settings forgotten: back to the defaults" in history.splitlines()[0]
    again = runner.invoke(app, ["tune", "--memory", str(memory), "--reset"])
    assert again.exit_code == 0 and "no tuned settings" in again.output
    neither = runner.invoke(app, ["tune", "--memory", str(memory)], env={"COLUMNS": "200"})
    assert neither.exit_code == 2 and "(or --reset)" in neither.output


def test_a_grid_value_the_memory_could_not_use_is_refused_before_tuning(built, image_folder, tmp_path):  # noqa: F811
    # α = 0 (w = 1/(0 + 0) at rank 0) or τ below 0.001 would be stored as settings every later classify rejects.
    for flag, grid in (("--alphas", "0,2"), ("--taus", "0.0001,0.07")):
        out = CliRunner().invoke(app, ["tune", "--memory", str(built[0]), "--dataset", str(image_folder / "train"),
                                       flag, grid, "--dry-run", "--cache", str(tmp_path / "cache")],
                                 env={"COLUMNS": "200"})
        assert out.exit_code == 2, out.output
        assert "not a valid vote setting" in out.output


def test_tuning_on_queries_the_memory_cannot_judge_is_refused_and_stores_nothing(built, image_folder, tmp_path):  # noqa: F811
    import shutil

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    other = tmp_path / "other"  # the memory's images under other class names
    shutil.copytree(image_folder / "query" / "red", other / "crimson")
    broken = tmp_path / "broken" / "red"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_bytes(b"not an image")

    def tune_on(dataset, *more):
        return CliRunner().invoke(app, ["tune", "--memory", str(memory), "--dataset", str(dataset), "--k-max", "6",
                                        "--val-fraction", "1", "--cache", str(tmp_path / "cache"), *map(str, more)],
                                  env={"COLUMNS": "400"})

    out = tune_on(other)
    assert out.exit_code == 2 and "none of the 1 validation queries has a label the memory holds (theirs: crimson;" \
        in out.output, out.output
    out = tune_on(broken.parent)
    assert out.exit_code == 2 and "no validation query could be read" in out.output, out.output
    out = tune_on(image_folder / "query", "--classes", tmp_path / "no-such.tsv")
    assert out.exit_code == 2 and "--classes" in out.output and "Traceback" not in out.output, out.output
    stored = json.loads(CliRunner().invoke(app, ["info", "--memory", str(memory), "--json"]).output)["settings"]
    assert "vote" not in stored and "tuning" not in stored


def test_exact_neighbours_read_a_page_at_a_time_are_those_of_the_whole_memory_in_ram(tmp_path):
    from tests.test_eval_experiments import clusters

    data = clusters(30, seed=3, spread=0.5)  # 180 points of 6 labels
    store = open_store(str(tmp_path / "memory"),
                       FeaturizerSpec(name="dummy", dim=16, preprocessing=Preprocessing(resize=32, crop=32)))
    ids = store.add(data.features, data.labels, [f"/d/{i}.png" for i in range(len(data.labels))])
    store.add(data.features[:1], data.labels[:1], ["/d/copy.png"])  # one vector twice: ties broken in id order
    store.set_payload(ids[5:9], {"excluded": True, "reliability": 0.5})  # hard-pruned: never a neighbour
    store.set_payload(ids[9:12], {"reliability": 0.25})  # soft-pruned: its factor goes with it
    queries = data.features[::7]
    classes = sorted(set(data.labels))

    whole = neighbors_exact(queries, MemoryArrays.from_store(store), classes, k=20)
    paged, labels = neighbors_exact_paged(store, queries, classes, k=20, page=16)  # 12 pages of 16 vectors

    assert np.array_equal(paged.label_ids, whole.label_ids)
    np.testing.assert_allclose(paged.similarities, whole.similarities, atol=1e-6)
    np.testing.assert_array_equal(paged.reliability, whole.reliability)
    assert sorted(labels) == sorted(MemoryArrays.from_store(store).labels)
    more_than_there, _ = neighbors_exact_paged(store, queries[:2], classes, k=200, page=16)  # padded as exact is
    n = len(labels)  # 181 points, 4 of them hard-pruned
    assert n == 177 and (more_than_there.label_ids[:, n:] == -1).all() and (more_than_there.label_ids[:, :n] >= 0).all()


def test_tuning_never_reads_the_whole_memory_into_ram(built, image_folder, tmp_path, monkeypatch):  # noqa: F811
    # A 1.28M x 1280 memory held 6.5 GB in RAM to score a few dozen queries (200,000 points: 1.6 GB for 40).
    import shutil

    import eval.scoring as scoring

    memory = tmp_path / "memory"
    shutil.copytree(built[0], memory)
    read_whole = []
    monkeypatch.setattr(scoring, "read_vectors", lambda *a, **kw: read_whole.append(1) or (_ for _ in ()).throw(
        AssertionError("the whole memory read into RAM")))
    out = CliRunner().invoke(app, ["tune", "--memory", str(memory), "--dataset", str(image_folder / "train"),
                                   "--k-max", "6", "--dry-run"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and not read_whole, out.output
    assert "chosen:" in out.output
