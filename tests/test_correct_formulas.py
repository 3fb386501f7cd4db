"""The papers' formulas, worked by hand on tiny memories whose answers are known, against what vmem answers.

Each memory here is a few vectors chosen so that every cosine similarity to the query is a round number; the
expected weights and vote shares are then written out as the paper defines them (Geirhos et al. 2025, section 2;
docs/BACKGROUND.md) and compared with a classification made through the real engines: the embedded one
(qdrant-edge) and qdrant-client's local modes (`:memory:` and a folder), float32 originals so that the
similarities are exact to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.scoring import MemoryArrays, class_index, neighbors_exact, predictions
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from tests.conftest import random_unit_vectors
from vmem import VisualMemory

DIM = 4
SPEC = FeaturizerSpec(name="hand-made", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
EXACT32 = IndexSettings(quantization="none", vectors_dtype="float32")
BACKENDS = ["embedded", "embedded-int8", "qdrant-client-memory", "qdrant-client-local"]


def at(cos: float, length: float = 1.0) -> np.ndarray:
    """A vector at cosine `cos` to the query e0, of the given length (the engines compare directions only)."""
    return length * np.array([cos, math.sqrt(1.0 - cos * cos), 0.0, 0.0], np.float32)


QUERY = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
# Similarities 1 (the query itself, stored 3x as long), 0.8 twice (label b), 0.6 (c), 0.3 (d: a label of one point).
POINTS = [("a", at(1.0, 3.0)), ("b", at(0.8, 0.5)), ("b", at(0.8, 7.0) * np.array([1, -1, 1, 1], np.float32)),
          ("c", at(0.6, 2.0)), ("d", at(0.3, 0.1))]
SIMS = [1.0, 0.8, 0.8, 0.6, 0.3]
LABELS = [label for label, _ in POINTS]


def location(backend: str, tmp_path) -> tuple[str, IndexSettings]:
    if backend == "embedded":
        return str(tmp_path / "memory"), EXACT32
    if backend == "embedded-int8":  # int8 codes, rescored by float32 originals
        return str(tmp_path / "memory"), IndexSettings(vectors_dtype="float32")
    if backend == "qdrant-client-memory":
        return ":memory:", EXACT32
    return f"qdrant-local:{tmp_path / 'local'}", EXACT32


@pytest.fixture(params=BACKENDS)
def memory(request, tmp_path):
    where, index = location(request.param, tmp_path)
    mem = VisualMemory(open_store(where, SPEC, index=index))
    mem.store.add(np.stack([v for _, v in POINTS]), LABELS, [f"/hand/{i}.jpg" for i in range(len(POINTS))])
    yield mem
    mem.close()


def hand_vote(weights: list[float], labels: list[str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for w, label in zip(weights, labels, strict=True):
        totals[label] = totals.get(label, 0.0) + w
    return {label: t / sum(totals.values()) for label, t in totals.items()}


# The paper's weights for the neighbours above, best first: d = 1 - cos, rank i.
PAPER = {
    "plurality": [1.0] * 5,
    "distance": [math.exp(-(1 - s)) for s in SIMS],
    "softmax": [math.exp(s / 0.07) for s in SIMS],  # exp((1 - d) / tau)
    "rank": [1 / (2 + i) for i in range(5)],
}
# Who wins: plurality b (2 votes of 5), distance b (2e^-0.2 = 1.64 > 1), softmax a (e^0 against 2e^(-0.2/0.07) =
# 0.115), rank b (1/3 + 1/4 = 0.583 > 1/2).
WINNER = {"plurality": "b", "distance": "b", "softmax": "a", "rank": "b"}


@pytest.mark.parametrize("rule", list(PAPER))
def test_each_rule_s_vote_shares_are_the_papers_weights_summed_per_label(memory, rule):
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule=rule, k=5), exact=True)
    assert [n.similarity for n in result.neighbors] == pytest.approx(SIMS, abs=1e-6)  # cosines, not dot products
    assert [n.rank for n in result.neighbors] == [0, 1, 2, 3, 4]
    expected = hand_vote(PAPER[rule], [n.label for n in result.neighbors])
    assert result.label == WINNER[rule]
    assert result.scores == pytest.approx(expected, abs=1e-6)
    assert list(result.scores)[0] == WINNER[rule]  # the winner's share first
    # The weights shown: the paper's, except softmax's, shown divided by the constant e^(1/tau) (README, "Voting
    # rules"); the ratios between them are the paper's either way.
    shown = [n.weight for n in result.neighbors]
    assert [w / shown[0] for w in shown] == pytest.approx([w / PAPER[rule][0] for w in PAPER[rule]], rel=1e-5)
    if rule != "softmax":
        assert shown == pytest.approx(PAPER[rule], rel=1e-6)


def test_a_query_equal_to_a_point_finds_it_first_at_similarity_one(memory):
    [hits] = memory.search(QUERY[None] * 0.25, 1, exact=True)  # the same direction, another length
    assert hits[0].label == "a" and hits[0].similarity == pytest.approx(1.0, abs=1e-6)


def test_k_beyond_the_memory_votes_with_every_point(memory):
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="rank", k=50), exact=True)
    assert len(result.neighbors) == 5
    assert result.scores == pytest.approx(hand_vote(PAPER["rank"], [n.label for n in result.neighbors]), abs=1e-6)
    # A label of one point takes part as any other: d's share is its one weight, 1/6 of rank 4, over the total.
    assert result.scores["d"] == pytest.approx((1 / 6) / sum(PAPER["rank"]), abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 10.0])
def test_rank_voting_reads_the_alpha_given(memory, alpha):
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="rank", k=5, alpha=alpha), exact=True)
    weights = [1 / (alpha + i) for i in range(5)]
    assert [n.weight for n in result.neighbors] == pytest.approx(weights)
    assert result.scores == pytest.approx(hand_vote(weights, [n.label for n in result.neighbors]), abs=1e-6)
    # alpha 0.5: a's 2 against b's 2/3 + 2/5: a wins; alpha 2 and 10 flatten the weights: b's two points win.
    assert result.label == ("a" if alpha == 0.5 else "b")


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_softmax_voting_reads_the_temperature_given(memory, tau):
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="softmax", k=5, tau=tau), exact=True)
    paper = [math.exp(s / tau) for s in SIMS]
    assert result.scores == pytest.approx(hand_vote(paper, [n.label for n in result.neighbors]), abs=1e-6)
    # tau 1: b's e^0.8 twice (4.45) beats a's e^1 (2.72)
    assert result.label == ("b" if tau == 1.0 else "a")


def test_equal_totals_go_to_the_label_whose_nearest_point_ranks_first_on_every_backend(memory):
    # A copy of the query stored as e: a and e tie at rank 0/1 in id order, and with plurality at k = 2 their totals
    # tie; the answer is the label of the first of them, that is of the smaller id.
    [e_id] = memory.store.add(QUERY[None] * 2, ["e"], ["/hand/copy-of-a.jpg"])
    a_id = memory.store.ids_where(label="a")[0]
    first = min(a_id, e_id)
    for exact in (True, False):
        [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="plurality", k=2), exact=exact)
        assert [n.id for n in result.neighbors] == sorted([a_id, e_id])
        assert result.label == ("a" if first == a_id else "e")
        assert result.scores == pytest.approx({"a": 0.5, "e": 0.5})


def test_a_forgotten_point_is_never_returned_nor_votes(memory):
    a_id = memory.store.ids_where(label="a")[0]
    assert memory.forget(ids=[a_id]) == 1
    for exact in (True, False):
        [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="softmax", k=50), exact=exact)
        assert a_id not in {n.id for n in result.neighbors} and "a" not in result.scores
        assert [n.similarity for n in result.neighbors] == pytest.approx(SIMS[1:], abs=1e-6)
        assert result.label == "b"
    assert memory.store.count() == 4


def test_a_relabelled_point_votes_with_its_new_label(memory):
    c_id = memory.store.ids_where(label="c")[0]
    assert memory.relabel("a", ids=[c_id]) == 1
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="rank", k=5), exact=True)
    labels = [n.label for n in result.neighbors]
    assert labels[3] == "a" and "c" not in result.scores
    # a: 1/2 + 1/5 = 0.7 now beats b's 0.583
    assert result.label == "a"
    assert result.scores == pytest.approx(hand_vote(PAPER["rank"], labels), abs=1e-6)


def test_soft_pruning_multiplies_each_weight_by_its_points_reliability(memory):
    # gamma = 1.75 / (1 + count): the query's copy (a) blamed 6 times weighs 1/2 * 0.25 under rank voting.
    a_id = memory.store.ids_where(label="a")[0]
    memory.store.set_payload([a_id], {"reliability": 1.75 / (1 + 6), "prune_count": 6})
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="rank", k=5), exact=True)
    weights = [1 / 2 * 0.25, 1 / 3, 1 / 4, 1 / 5, 1 / 6]
    assert [n.weight for n in result.neighbors] == pytest.approx(weights)
    assert result.scores == pytest.approx(hand_vote(weights, [n.label for n in result.neighbors]), abs=1e-6)


def test_novelty_is_the_mean_cosine_distance_to_the_k_neighbours(memory):
    [result] = memory.classify_vectors(QUERY[None], memory.vote_settings(rule="rank", k=4), exact=True)
    assert result.novelty == pytest.approx(np.mean([1 - s for s in SIMS[:4]]), abs=1e-6)


@pytest.mark.parametrize("rule", list(PAPER))
def test_exact_evaluation_decides_as_classify_does_ties_included(memory, rule):
    # Equal similarities across labels (a copy of each of three points under another label): the vote's
    # tie-break reads the neighbours' order, which must be the same in eval's exact search and in the store.
    vecs = np.stack([at(1.0), at(0.8), at(0.6)])
    memory.store.add(vecs, ["x", "y", "z"], ["/hand/x.jpg", "/hand/y.jpg", "/hand/z.jpg"])
    queries = np.vstack([QUERY, random_unit_vectors(30, DIM, seed=3)])
    arrays = MemoryArrays.from_store(memory.store)
    classes, _ = class_index(arrays.labels)
    table = neighbors_exact(queries, arrays, classes, k=8)
    evaluated = predictions(table, rule)
    for k in (1, 2, 3, 5, 8):
        answers = memory.classify_vectors(queries, memory.vote_settings(rule=rule, k=k), exact=True)
        assert [classes[i] for i in evaluated[:, k - 1]] == [r.label for r in answers], k


def test_the_backends_return_the_same_neighbours_in_the_same_order_with_the_same_similarities(tmp_path):
    # 300 points of 3 labels, 40 queries, some of them copies of points and some points stored twice (ties).
    vecs = random_unit_vectors(300, DIM, seed=11) * np.random.default_rng(1).uniform(0.1, 9, (300, 1))
    vecs[150:160] = vecs[:10]  # copies under other sources and labels
    labels = [("cat", "dog", "fox")[i % 3] for i in range(300)]
    queries = np.vstack([random_unit_vectors(30, DIM, seed=12), vecs[:10] * 2.5]).astype(np.float32)
    answers = {}
    for backend in BACKENDS:
        where, index = location(backend, tmp_path / backend)
        (tmp_path / backend).mkdir()
        with open_store(where, SPEC, index=index) as store:
            store.add(vecs, labels, [f"/p/{i}.jpg" for i in range(300)])
            answers[backend] = [store.query_batch(queries, 25, exact=exact) for exact in (True, False)]
    truth = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ (queries / np.linalg.norm(queries, axis=1,
                                                                                           keepdims=True)).T
    reference = answers["embedded"]
    for backend, got in answers.items():
        for ref_rows, rows in zip(reference, got, strict=True):
            for q, (ref, hits) in enumerate(zip(ref_rows, rows, strict=True)):
                assert [h.id for h in hits] == [h.id for h in ref], (backend, q)
                assert [h.similarity for h in hits] == pytest.approx([h.similarity for h in ref], abs=1e-5)
                assert np.sort(truth[:, q])[::-1][:25] == pytest.approx([h.similarity for h in hits], abs=1e-5)
