"""Memory pruning (Geirhos et al. 2025, section 4; docs/BACKGROUND.md) worked by hand on five points on a circle.

The memory is queried against itself, each point's own hit dropped, and each point counted for how often it was
blamed; hard pruning takes out the points counted >= a threshold, soft pruning weighs each blamed point by
1.75 / (1 + count). Here with rank voting at k = 2 (weights 1/2 and 1/3), the points at these angles:

    A1 0°   A2 10°   B1 25°   B2 100°   B3 110°

Leave-one-out decisions: A1 <- A2, B1: A; A2 <- A1, B1: A; B1 <- A2, A1: A (wrong); B2 <- B3, B1: B; B3 <- B2, B1: B.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.pruning import prune_store
from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from retrieval.store import EXCLUDED_KEY, PRUNE_COUNT_KEY, RELIABILITY_KEY, point_id_for
from vmem import VisualMemory

SPEC = FeaturizerSpec(name="hand-made", dim=3, preprocessing=Preprocessing(resize=256, crop=224))
ANGLES = {"A1": 0, "A2": 10, "B1": 25, "B2": 100, "B3": 110}
# What each blame counts, by the decisions above:
COUNTS = {
    # every neighbour of a wrong decision: B1's two neighbours
    "all": {"A1": 1, "A2": 1, "B1": 0, "B2": 0, "B3": 0},
    # the wrong decision's voters for the label it chose (A): the same two
    "voters": {"A1": 1, "A2": 1, "B1": 0, "B2": 0, "B3": 0},
    # the paper's code: each neighbour of another label than the querying point's, right decisions included:
    # B1 among A1's and A2's, A1 and A2 among B1's
    "label": {"A1": 1, "A2": 1, "B1": 2, "B2": 0, "B3": 0},
}


def vector(name: str) -> np.ndarray:
    t = math.radians(ANGLES[name])
    return np.array([math.cos(t), math.sin(t), 0.0], np.float32)


@pytest.fixture(params=["embedded", "qdrant-client-memory", "qdrant-client-local"])
def store(request, tmp_path):
    where = {"embedded": str(tmp_path / "m"), "qdrant-client-memory": ":memory:",
             "qdrant-client-local": f"qdrant-local:{tmp_path / 'local'}"}[request.param]
    s = open_store(where, SPEC, index=IndexSettings(quantization="none", vectors_dtype="float32"))
    s.add(np.stack([vector(n) for n in ANGLES]), [n[0] for n in ANGLES], [f"/circle/{n}.jpg" for n in ANGLES])
    yield s
    s.close()


def stored(store, name: str) -> dict:
    return store.retrieve([point_id_for(f"/circle/{name}.jpg")])[0].payload


@pytest.mark.parametrize("search", ["exact", "index"])
@pytest.mark.parametrize("blame", ["all", "voters", "label"])
def test_soft_pruning_weighs_each_blamed_point_by_1_75_over_one_plus_its_count(store, blame, search):
    report = prune_store(store, "soft", k=2, blame=blame, search=search)
    assert report.wrong_decisions == 1 and report.k == 2
    for name, count in COUNTS[blame].items():
        payload = stored(store, name)
        if count:
            assert payload[PRUNE_COUNT_KEY] == count
            assert payload[RELIABILITY_KEY] == pytest.approx(1.75 / (1 + count))
        else:  # never blamed: weight 1, unmarked
            assert payload.get(RELIABILITY_KEY, 1.0) == 1.0 and not payload.get(PRUNE_COUNT_KEY)
    assert report.down_weighted == sum(1 for c in COUNTS[blame].values() if c)


@pytest.mark.parametrize("search", ["exact", "index"])
def test_hard_pruning_takes_out_the_points_counted_at_least_the_threshold(store, search):
    report = prune_store(store, "hard", threshold=2, k=2, blame="label", search=search)
    assert report.excluded == 1 and stored(store, "B1").get(EXCLUDED_KEY)  # B1, counted 2
    assert not stored(store, "A1").get(EXCLUDED_KEY)  # counted 1 < 2
    found = store.query(vector("B1"), 5, exact=True)
    assert [h.source for h in found] == [f"/circle/{n}.jpg" for n in ("A2", "A1", "B2", "B3")]


def test_a_soft_pruned_memory_votes_with_the_factors(store):
    prune_store(store, "soft", k=2, blame="label", search="exact")
    mem = VisualMemory(store)
    # The query at 20°: A2 (10° away), B1 (5°)... ranked B1, A2, A1, B2, B3. Rank weights 1/2, 1/3, 1/4, 1/5, 1/6
    # times the factors: B1 1.75/3, A2 and A1 1.75/2.
    q = np.array([math.cos(math.radians(20)), math.sin(math.radians(20)), 0.0], np.float32)
    [result] = mem.classify_vectors(q[None], mem.vote_settings(rule="rank", k=5), exact=True)
    assert [n.source.rsplit("/", 1)[1] for n in result.neighbors] == ["B1.jpg", "A2.jpg", "A1.jpg", "B2.jpg",
                                                                       "B3.jpg"]
    weights = [1 / 2 * 1.75 / 3, 1 / 3 * 0.875, 1 / 4 * 0.875, 1 / 5, 1 / 6]
    assert [n.weight for n in result.neighbors] == pytest.approx(weights)
    a, b = weights[1] + weights[2], weights[0] + weights[3] + weights[4]
    assert result.label == "B" and result.scores == pytest.approx({"B": b / (a + b), "A": a / (a + b)})
    # Without the factors (soft_pruning off): the plain rank weights, A's share (1/3 + 1/4) / (1/2 + ... + 1/6).
    [plain] = mem.classify_vectors(q[None], mem.vote_settings(rule="rank", k=5).model_copy(
        update={"soft_pruning": False}), exact=True)
    assert plain.scores["A"] == pytest.approx((1 / 3 + 1 / 4) / sum(1 / (2 + i) for i in range(5)))
