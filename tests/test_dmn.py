"""The DMN readout, the dynamic memory's replacement rule and fusion, against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.dmn import (
    DynamicMemory,
    check_stream_name,
    entropy,
    fuse,
    pick_alpha,
    readout,
    softmax,
    static_entries,
    text_classifier,
)


def test_readout_matches_hand_computation():
    q = np.array([1.0, 0.0])
    keys = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # classes 0, 0, 1
    # w = exp(-5.5 (1 - cos)): 1, exp(-2.2), exp(-5.5)
    a = math.exp(-2.2)
    m0 = np.array([1 + 0.6 * a, 0.8 * a])
    cos0 = m0[0] / math.hypot(*m0)  # <normalise(m0), q>
    cos1 = 0.0  # class 1's prototype is (0, 1)
    # Scale 10 instead of 100 keeps both probabilities visible.
    p0 = math.exp(10 * cos0) / (math.exp(10 * cos0) + math.exp(10 * cos1))
    got = readout(q, keys, np.array([0, 0, 1]), n_classes=3, beta=5.5, scale=10.0)
    np.testing.assert_allclose(got, [p0, 1 - p0, 0.0], rtol=1e-12)


def test_readout_weights_pull_the_prototype_towards_the_query():
    # With beta = 0 every entry counts the same: the prototype is the plain mean direction.
    q = np.array([1.0, 0.0])
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    flat = readout(q, keys, np.array([0, 0, 1, 1]), 2, beta=0.0, scale=1.0)
    m0 = np.array([1.0, 1.0]) / math.sqrt(2)  # mean of (1,0), (0,1)
    m1 = np.array([-1.0, -1.0]) / math.sqrt(2)
    expected = softmax(np.array([m0 @ q, m1 @ q]))
    np.testing.assert_allclose(flat, expected, rtol=1e-12)


def test_readout_of_an_empty_memory_is_all_zeros():
    assert readout(np.array([1.0, 0.0]), np.zeros((0, 2)), np.zeros(0, int), 3).tolist() == [0.0, 0.0, 0.0]


def test_softmax_gives_minus_infinity_zero_probability():
    np.testing.assert_allclose(softmax(np.array([0.0, -np.inf, math.log(3.0)])), [0.25, 0.0, 0.75])
    assert softmax(np.array([-np.inf, -np.inf])).tolist() == [0.0, 0.0]


def test_entropy_in_nats():
    assert entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))
    assert entropy(np.array([1.0, 0.0])) == 0.0


def test_static_entries_keeps_the_nearest_per_class_up_to_the_cap():
    keys = np.arange(14, dtype=np.float32).reshape(7, 2)
    ids = np.array([0, 1, 0, 0, -1, 1, 2])  # nearest first; -1 = a label outside the class list
    got = static_entries(keys, ids, cap=2)
    assert got.class_ids.tolist() == [0, 1, 0, 1, 2]
    assert got.index.tolist() == [0, 1, 2, 5, 6]
    np.testing.assert_array_equal(got.keys, keys[[0, 1, 2, 5, 6]])


def test_fuse_weights_and_renormalises_skipping_memories_that_are_off():
    p_text = np.array([1.0, 0.0])
    p_static = np.array([0.0, 1.0])
    np.testing.assert_allclose(fuse([(1.0, p_text), (3.0, p_static)]), [0.25, 0.75])
    np.testing.assert_allclose(fuse([(1.0, p_text), (1.0, None), (0.0, p_static)]), [1.0, 0.0])
    with pytest.raises(ValueError, match="at least one memory"):
        fuse([(0.0, p_text), (1.0, None)])


def test_text_classifier_averages_normalised_prompt_embeddings():
    def encode(texts):
        # "cat" prompts point along x, "dog" prompts along y; the "big" template adds z.
        return np.array([[2.0 * ("cat" in t), 1.0 * ("dog" in t), 1.0 * ("big" in t)] for t in texts])

    w = text_classifier(encode, ["cat", "dog"], templates=("a {}.", "a big {}."))
    # cat: mean of (1,0,0) and (2,0,1)/sqrt5, then normalised.
    cat = np.array([1.0, 0.0, 0.0]) + np.array([2.0, 0.0, 1.0]) / math.sqrt(5)
    np.testing.assert_allclose(w[0], cat / np.linalg.norm(cat), rtol=1e-6)
    assert w.shape == (2, 3)


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_dynamic_memory_appends_while_free_then_replaces_the_highest_entropy_slot():
    mem = DynamicMemory(dim=2, slots=2)
    f = [unit(1, i) for i in range(5)]
    assert mem.write(f[0], "a", 0.5)
    assert mem.write(f[1], "a", 0.9)  # queue now full: entropies [0.5, 0.9]
    assert mem.write(f[2], "a", 0.7)  # 0.7 < 0.9: replaces slot 1 -> [0.5, 0.7]
    assert not mem.write(f[3], "a", 0.8)  # 0.8 > max 0.7: dropped
    assert not mem.write(f[4], "a", 0.7)  # equal is not lower: dropped
    assert mem.write(f[4], "b", 2.0)  # another class has its own queue
    feats, ents = mem.entries("a")
    np.testing.assert_array_equal(ents, [0.5, 0.7])
    np.testing.assert_array_equal(feats, [f[0], f[2]])
    assert mem.counts() == {"a": 2, "b": 1}
    assert mem.updates == 6


def test_dynamic_readout_equals_the_plain_readout_over_its_entries():
    mem = DynamicMemory(dim=2, slots=3)
    entries = [(unit(1, 0.1), "a"), (unit(1, -0.3), "a"), (unit(0.2, 1), "b")]
    for k, lab in entries:
        mem.write(k, lab, 1.0)
    q = unit(1, 0.5)
    keys = np.stack([k for k, _ in entries])
    # Class order follows the caller's list; "c" has no entries and gets 0.
    expected = readout(q, keys, np.array([1, 1, 0]), 3, scale=20.0)
    np.testing.assert_allclose(mem.probabilities(q, ["b", "a", "c"], scale=20.0), expected, rtol=1e-5)


def test_dynamic_readout_of_a_young_stream_and_of_a_full_one_equals_the_plain_readout():
    """A stream with most slots empty reads only its used ones; a full one reads all: the same readout either way,
    forgotten labels' stale slots included (their queue emptied, their features left in place)."""
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(20)]
    mem = DynamicMemory(dim=64, slots=5)

    def check() -> None:
        for q in rng.normal(size=(5, 64)):
            q /= np.linalg.norm(q)
            held = [(f, lab) for lab in classes for f in mem.entries(lab)[0]]
            keys = np.stack([f for f, _ in held])
            expected = readout(q, keys, np.array([classes.index(lab) for _, lab in held]), len(classes))
            np.testing.assert_allclose(mem.probabilities(q, classes), expected, rtol=1e-5, atol=1e-12)

    for n in range(200):
        f = rng.normal(size=64).astype(np.float32)
        f /= np.linalg.norm(f)
        mem.write(f, classes[n % 20 if n < 30 else rng.integers(20)], float(rng.random()))
        if n == 29:  # 30 of 100 slots used
            check()
            mem.drop_labels_except(set(classes[2:]))
            check()
    assert len(mem) == 100  # every queue full
    check()


def test_a_stream_answers_the_same_bit_for_bit_however_full_its_slots_are():
    """The same entries in a stream of 2 slots a class (full: every row read) and of 50 (young: only the used rows
    read) give identical probabilities: both read on the calling thread by the same einsum, never through BLAS's
    threads, which beside other work on 2 cores took 2-3x longer for a full stream (docs/benchmarks.md, "BLAS
    threads")."""
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(30)]
    full, young = DynamicMemory(dim=1280, slots=2), DynamicMemory(dim=1280, slots=50)
    for lab in classes:
        for _ in range(2):
            f = rng.normal(size=1280).astype(np.float32)
            f /= np.linalg.norm(f)
            full.write(f, lab, 1.0)
            young.write(f, lab, 1.0)
    for q in rng.normal(size=(5, 1280)).astype(np.float32):
        q /= np.linalg.norm(q)
        assert full.probabilities(q, classes).tolist() == young.probabilities(q, classes).tolist()


def test_dynamic_memory_round_trips_through_npz_and_resets(tmp_path):
    mem = DynamicMemory(dim=2, slots=2, featurizer="lite0")
    mem.write(unit(1, 0), "a", 0.3)
    mem.write(unit(0, 1), "b", 0.1)
    mem.write(unit(1, 1), "a", 0.2)
    mem.save(tmp_path / "s.npz")
    back = DynamicMemory.load(tmp_path / "s.npz")
    assert (back.featurizer, back.dim, back.slots, back.updates) == ("lite0", 2, 2, 3)
    assert back.counts() == {"a": 2, "b": 1}
    np.testing.assert_array_equal(back.entries("a")[1], [0.3, 0.2])
    # The replacement rule carries on after reloading.
    assert back.write(unit(1, 2), "a", 0.25)
    np.testing.assert_array_equal(back.entries("a")[1], [0.25, 0.2])
    back.reset()
    assert len(back) == 0 and back.counts() == {}


def test_dropping_labels_forgets_their_queues():
    mem = DynamicMemory(dim=2, slots=2)
    mem.write(unit(1, 0), "a", 0.3)
    mem.write(unit(0, 1), "b", 0.1)
    assert mem.drop_labels_except({"b"}) == 1
    assert mem.counts() == {"b": 1}
    assert mem.probabilities(unit(1, 0), ["a", "b"]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name,ok", [("s1", True), ("cam-3.day_2", True), ("../x", False), ("", False),
                                     ("a/b", False), ("x" * 65, False), ("evil\n", False)])
def test_stream_names_are_safe_file_names(name, ok):
    if ok:
        assert check_stream_name(name) == name
    else:
        with pytest.raises(ValueError):
            check_stream_name(name)


def test_pick_alpha_finds_the_weight_that_fixes_the_validation_errors():
    # Static always says class 0 (0.6 : 0.4); dynamic is right everywhere. Queries 1 and 2 need
    # 0.4 + a_dyn > 0.6, i.e. a_dyn > 0.2.
    p_static = np.array([[0.6, 0.4]] * 3)
    p_dyn = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    truth = np.array([0, 1, 1])
    alpha, acc = pick_alpha({"static": p_static, "dynamic": p_dyn}, truth, grid=(0.0, 0.1, 0.5, 4.0))
    # 0.5 and 4 both reach 100%; 0.5 is closer to the default weight 1.
    assert (alpha, acc) == ({"static": 1.0, "dynamic": 0.5}, 1.0)
    alpha, acc = pick_alpha({"static": p_static, "dynamic": p_dyn}, truth, grid=(0.0, 0.1))
    assert acc == pytest.approx(1 / 3) and alpha == {"static": 1.0, "dynamic": 0.1}


def test_dynamic_readout_stays_exact_after_replacements_and_reloading(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 6))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    mem = DynamicMemory(dim=6, slots=4)
    for i, f in enumerate(feats):  # 3 classes, many replacements
        mem.write(f, "abc"[i % 3], float(rng.random()))
    mem.save(tmp_path / "s.npz")
    back = DynamicMemory.load(tmp_path / "s.npz")
    q = feats[7]
    held = [mem.entries(c)[0] for c in "abc"]
    expected = readout(q, np.concatenate(held), np.repeat([0, 1, 2], [len(h) for h in held]), 3, scale=30.0)
    np.testing.assert_allclose(mem.probabilities(q, list("abc"), scale=30.0), expected, rtol=1e-5)
    np.testing.assert_allclose(back.probabilities(q, list("abc"), scale=30.0), expected, rtol=1e-5)


def test_renaming_a_label_moves_its_queue_keeping_the_lowest_entropy_entries():
    mem = DynamicMemory(dim=2, slots=2)
    mem.write(unit(1, 0), "a", 0.3)
    mem.write(unit(1, 1), "a", 0.9)
    mem.write(unit(0, 1), "b", 0.5)
    assert mem.rename_label("a", "b") == 1  # b had one free slot; 0.9 is then not lower than b's worst
    assert mem.counts() == {"b": 2} and mem.updates == 3
    np.testing.assert_array_equal(mem.entries("b")[1], [0.5, 0.3])
    assert mem.rename_label("b", "c") == 2 and mem.counts() == {"c": 2}
    assert mem.rename_label("missing", "c") == 0
