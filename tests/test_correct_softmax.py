"""Softmax voting at a temperature near its least (tau 0.001) over neighbours far from the query: the paper's
weights exp(cos / tau) are huge but their ratios are ordinary, and the vote must be theirs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.scoring import NeighborTable, predictions, winner_share
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store, vote, vote_all_k, vote_last_k
from vmem import VisualMemory

TAU = 0.001  # vmem.results.MIN_TAU
# Far neighbours: a at 0.2, then three b at 0.1999. The paper: a e^200, b 3 e^199.9 = 2.71 e^200: b wins, 73 %.
SIMS = [0.2, 0.1999, 0.1999, 0.1999]
LABELS = ["a", "b", "b", "b"]


def paper_shares() -> dict[str, float]:
    w = [math.exp((s - 0.2) / TAU) for s in SIMS]  # exp(cos / tau), divided by e^(0.2 / tau) to fit a float
    return {"b": sum(w[1:]) / sum(w), "a": w[0] / sum(w)}


def test_far_neighbours_at_the_least_temperature_vote_as_the_paper_weighs_them():
    out = vote(LABELS, SIMS, "softmax", tau=TAU)
    # The weights had been exp((cos - 1) / tau) = e^-800: 0 in floating point, every one, so every label tied at 0
    # and the nearest's (a) won, with a vote share of 0.
    assert out.label == "b"
    assert out.scores == pytest.approx(paper_shares(), abs=1e-9)
    ids, sims = np.array([[0, 1, 1, 1]]), np.array([SIMS])
    assert vote_all_k(ids, sims, "softmax", 2, tau=TAU).tolist() == [[0, 0, 1, 1]]
    assert vote_last_k(ids, sims, "softmax", 2, tau=TAU).tolist() == [1]
    table = NeighborTable(ids, sims.astype(np.float32), ["a", "b"])
    assert predictions(table, "softmax", tau=TAU).tolist() == [[0, 0, 1, 1]]
    assert winner_share(table, np.array([1]), 4, "softmax", tau=TAU) == pytest.approx([paper_shares()["b"]], abs=1e-4)


def test_classify_at_the_least_temperature_answers_the_papers_label(tmp_path):
    spec = FeaturizerSpec(name="hand-made", dim=2, preprocessing=Preprocessing(resize=256, crop=224))
    with VisualMemory(open_store(str(tmp_path / "m"), spec,
                                 index=IndexSettings(quantization="none", vectors_dtype="float32"))) as mem:
        points = np.array([[s, math.sqrt(1 - s * s)] for s in SIMS], np.float32)
        mem.store.add(points, LABELS, [f"/far/{i}.jpg" for i in range(4)])
        [result] = mem.classify_vectors(np.array([[1.0, 0.0]], np.float32),
                                        mem.vote_settings(rule="softmax", k=4, tau=TAU), exact=True)
    assert result.label == "b"
    assert result.scores["b"] == pytest.approx(paper_shares()["b"], abs=0.02)  # float32 similarities
    assert result.confidence > 0.5


def test_weights_shown_stay_exp_of_minus_d_over_tau_where_they_fit_a_float():
    # README, "Voting rules": answers show softmax's weights as exp(-d / tau), the paper's divided by e^(1 / tau).
    from retrieval import neighbor_weights

    sims = np.array([0.9, 0.8, 0.5])
    assert neighbor_weights(sims, "softmax", tau=0.07) == pytest.approx(np.exp(-(1 - sims) / 0.07), rel=1e-12)
    assert neighbor_weights(sims, "softmax", tau=0.01)[0] == pytest.approx(4.54e-05, rel=1e-3)
