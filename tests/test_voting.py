"""The four voting rules against hand computation, ties included, and the vectorised all-k scorer."""

import math

import numpy as np
import pytest

from retrieval import VoteRule, neighbor_weights, vote, vote_all_k, vote_last_k
from retrieval.voting import fewest_to_win, wins_nearest

LABELS = ["cat", "dog", "dog", "cat", "fox"]
SIMS = [0.9, 0.8, 0.7, 0.6, 0.5]


def test_plurality_counts_neighbours():
    out = vote(LABELS, SIMS, "plurality")
    # cat 2, dog 2, fox 1: a tie between cat and dog, and cat's best neighbour ranks first.
    assert out.label == "cat"
    assert out.scores == pytest.approx({"cat": 0.4, "dog": 0.4, "fox": 0.2})
    assert list(out.scores)[0] == "cat"


def test_distance_weights_are_exp_minus_distance():
    out = vote(LABELS, SIMS, "distance")
    cat = math.exp(-0.1) + math.exp(-0.4)
    dog = math.exp(-0.2) + math.exp(-0.3)
    fox = math.exp(-0.5)
    total = cat + dog + fox
    assert out.weights == pytest.approx([math.exp(-0.1), math.exp(-0.2), math.exp(-0.3), math.exp(-0.4), fox])
    assert out.scores == pytest.approx({"cat": cat / total, "dog": dog / total, "fox": fox / total})
    assert cat > dog and out.label == "cat"  # 1.575 against 1.560


def test_softmax_weights_use_temperature():
    out = vote(LABELS, SIMS, "softmax", tau=0.07)
    w = [math.exp(s / 0.07) for s in SIMS]  # exp((1 - d)/tau) with d = 1 - s
    total = sum(w)
    assert out.scores["cat"] == pytest.approx((w[0] + w[3]) / total)
    assert out.scores["dog"] == pytest.approx((w[1] + w[2]) / total)
    assert out.label == "cat"


def test_rank_weights_are_one_over_alpha_plus_rank():
    out = vote(LABELS, SIMS, "rank", alpha=2)
    assert out.weights == pytest.approx([1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    cat, dog, fox = 1 / 2 + 1 / 5, 1 / 3 + 1 / 4, 1 / 6
    assert out.scores == pytest.approx({"cat": cat / (cat + dog + fox), "dog": dog / (cat + dog + fox),
                                        "fox": fox / (cat + dog + fox)})
    assert out.label == "cat"


def test_rank_voting_beats_a_distant_majority():
    # Three far "dog" neighbours outvote one near "cat" under plurality, not under rank voting with alpha=0.5.
    labels, sims = ["cat", "dog", "dog", "dog"], [0.9, 0.2, 0.2, 0.2]
    assert vote(labels, sims, "plurality").label == "dog"
    assert vote(labels, sims, "rank", alpha=0.5).label == "cat"  # 2 > 1/1.5 + 1/2.5 + 1/3.5 = 1.35


@pytest.mark.parametrize("rule", ["rank", "plurality"])
def test_a_label_of_few_points_is_outvoted_by_one_fuller_label_even_as_the_nearest(rule):
    # A class of 3 images added beside classes of 100: where its 3 are a query's nearest and one old class has the
    # other 47 of k = 50, the old class wins. The threshold is the vote's own arithmetic:
    need = fewest_to_win(50, rule)
    assert need == {"rank": 8, "plurality": 25}[rule]
    for n in (need - 1, need):
        labels = ["new"] * n + ["old"] * (50 - n)
        assert vote(labels, np.linspace(0.9, 0.5, 50), rule).label == ("new" if n == need else "old")
        assert wins_nearest(n, 50, rule) is (n == need)
    # ... at a smaller k, or against a label of fewer points, fewer suffice
    assert fewest_to_win(10, rule) < need and fewest_to_win(50, rule, rival=4) < need
    assert fewest_to_win(50, "softmax") is None and wins_nearest(3, 50, "distance") is None  # weights by similarity


def test_tie_goes_to_the_label_whose_best_neighbour_ranks_first():
    assert vote(["a", "b", "b", "a"], [0.9, 0.9, 0.9, 0.9], "plurality").label == "a"
    assert vote(["b", "a", "a", "b"], [0.9, 0.9, 0.9, 0.9], "plurality").label == "b"
    # distance voting with equal similarities is a tie too
    assert vote(["x", "y"], [0.5, 0.5], "distance").label == "x"


def test_reliability_factors_multiply_weights():
    # Soft pruning: the first neighbour is unreliable (gamma = 1.75 / (1 + 6) = 0.25).
    out = vote(["cat", "dog"], [0.9, 0.8], "plurality", reliability=[0.25, 1.0])
    assert out.weights == pytest.approx([0.25, 1.0])
    assert out.label == "dog"
    assert out.scores == pytest.approx({"dog": 0.8, "cat": 0.2})


def test_scores_sum_to_one_and_empty_neighbours_give_no_label():
    for rule in VoteRule:
        assert sum(vote(LABELS, SIMS, rule).scores.values()) == pytest.approx(1.0)
    empty = vote([], [], "rank")
    assert empty.label is None and empty.scores == {}


def test_softmax_stays_finite_for_small_temperatures():
    w = neighbor_weights(np.array([1.0, 0.99, -1.0]), "softmax", tau=0.001)
    assert np.all(np.isfinite(w)) and w[0] == 1.0


@pytest.mark.parametrize("rule", list(VoteRule))
def test_vote_all_k_matches_vote_at_every_k(rule):
    rng = np.random.default_rng(7)
    n, kmax, n_classes = 40, 30, 6
    label_ids = rng.integers(0, n_classes, size=(n, kmax))
    sims = np.sort(rng.uniform(0.1, 0.9, size=(n, kmax)), axis=1)[:, ::-1]
    # Round similarities so that exact ties occur for the distance and softmax rules too.
    sims = np.round(sims, 1)
    rel = rng.choice([1.0, 0.5, 1.75 / 3], size=(n, kmax))
    preds = vote_all_k(label_ids, sims, rule, n_classes, reliability=rel)
    for q in range(n):
        for k in (1, 2, 5, 17, kmax):
            names = [str(c) for c in label_ids[q, :k]]
            expected = vote(names, sims[q, :k], rule, reliability=rel[q, :k]).label
            assert str(preds[q, k - 1]) == expected, (q, k)


def test_vote_all_k_ignores_missing_neighbours():
    label_ids = np.array([[2, -1, -1]])
    sims = np.array([[0.5, 0.0, 0.0]])
    assert vote_all_k(label_ids, sims, "plurality", 3).tolist() == [[2, 2, 2]]


def test_vote_all_k_gives_no_answer_without_neighbours():
    # An empty (or filtered-out) memory: like `vote`, no label, rather than class 0.
    label_ids = np.array([[-1, -1], [1, -1]])
    sims = np.array([[-np.inf, -np.inf], [0.5, -np.inf]])
    for rule in VoteRule:
        assert vote_all_k(label_ids, sims, rule, 3).tolist() == [[-1, -1], [1, 1]]


@pytest.mark.parametrize("rule,kw", [("rank", {"alpha": 5e-324}), ("softmax", {"tau": 5e-324})])
def test_degenerate_parameters_still_give_an_answer(rule, kw):
    # Found by schemathesis through the service: an overflowing weight made the tie set empty.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        out = vote(["a", "b", "a"], [0.9, 0.8, 0.7], rule, **kw)
        preds = vote_all_k(np.array([[0, 1, 0]]), np.array([[0.9, 0.8, 0.7]]), rule, 2, **kw)
    assert out.label == "a" and preds[0, 0] == 0


@pytest.mark.parametrize("rule", list(VoteRule))
def test_the_vote_with_all_k_neighbours_alone_is_the_last_of_every_k(rule):
    # Pruning and the label audit want only this column; at every k it cost minutes with 1,000 classes.
    rng = np.random.default_rng(11)
    for n_classes, kmax in ((1000, 50), (5, 20), (3, 1)):
        label_ids = rng.integers(0, n_classes, size=(300, kmax))
        label_ids[rng.random(label_ids.shape) < 0.05] = -1  # some ranks without a neighbour
        label_ids[0] = -1  # and one query with none at all
        sims = np.round(np.sort(rng.uniform(-0.2, 0.9, size=(300, kmax)), axis=1)[:, ::-1], 1)  # ties
        rel = rng.choice([1.0, 0.5, 1.75 / 3], size=(300, kmax))
        for reliability in (None, rel):
            expected = vote_all_k(label_ids, sims, rule, n_classes, reliability=reliability)[:, -1]
            got = vote_last_k(label_ids, sims, rule, n_classes, reliability=reliability)
            assert got.tolist() == expected.tolist() and got[0] == -1


def test_votes_over_many_classes_take_tables_of_the_neighbours_classes_only():
    import tracemalloc

    # A catalogue of 50,000 labels: the label audit's vote over a block of 4,096 points had taken 1.6 GB a table
    # (6 GB in all) where only the classes among each row's 50 neighbours can score.
    rng = np.random.default_rng(12)
    n, kmax, n_classes = 1024, 50, 50_000
    label_ids = rng.integers(0, n_classes, size=(n, kmax))
    sims = np.sort(rng.uniform(0, 1, size=(n, kmax)), axis=1)[:, ::-1]
    tracemalloc.start()
    last = vote_last_k(label_ids, sims, "rank", n_classes)
    every = vote_all_k(label_ids[:64], sims[:64], "rank", n_classes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40e6, f"{peak / 1e6:.0f} MB"  # one [1024, 50000] float64 table alone is 410 MB
    # ...and the answers are the ones the classes' full tables give (the vote of a single row, by `vote`).
    for row in (0, 1, 63):
        expected = vote([str(c) for c in label_ids[row]], sims[row], "rank").label
        assert str(last[row]) == expected and str(every[row, -1]) == expected
