"""The Dual Memory Networks readout (Zhang et al. 2024; docs/BACKGROUND.md) worked by hand on a tiny memory:
w_j = exp(-beta (1 - cos(q, k_j))), m_c = normalise(sum_j w_j k_j), P = softmax(100 <m_c, q>), with q the
query's direction. The votes read cosines, whatever a vector's length (the engines compare directions); the dmn
rule must too, or one image's answer depends on how its vector was scaled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval import FeaturizerSpec, IndexSettings, Preprocessing, open_store
from vmem import VisualMemory

SPEC = FeaturizerSpec(name="hand-made", dim=4, preprocessing=Preprocessing(resize=256, crop=224))
EXACT32 = IndexSettings(quantization="none", vectors_dtype="float32")


def at(cos: float, length: float = 1.0) -> np.ndarray:
    """A vector at cosine `cos` to e0, of the given length."""
    return length * np.array([cos, math.sqrt(1.0 - cos * cos), 0.0, 0.0], np.float32)


# Of lengths other than 1, as a caller's own vectors may be: the engines keep their directions.
POINTS = [("a", at(1.0, 3.0)), ("b", at(0.8, 0.5)), ("b", at(0.8, 7.0) * np.array([1, -1, 1, 1], np.float32)),
          ("c", at(0.6, 2.0)), ("d", at(0.3, 0.1))]
LABELS = [label for label, _ in POINTS]
Q = at(0.9)


def paper_static(query: np.ndarray) -> dict[str, float]:
    """The static memory's readout over every point, by the formulas as printed (few points: all under the cap)."""
    q = query / np.linalg.norm(query)
    keys = np.stack([v / np.linalg.norm(v) for _, v in POINTS]).astype(np.float64)
    w = np.exp(-5.5 * (1.0 - keys @ q))
    logits = {}
    for label in dict.fromkeys(LABELS):
        m = sum(w[j] * keys[j] for j, lab in enumerate(LABELS) if lab == label)
        logits[label] = 100.0 * float(m @ q) / float(np.linalg.norm(m))
    top = max(logits.values())
    e = {label: math.exp(z - top) for label, z in logits.items()}
    return {label: v / sum(e.values()) for label, v in e.items()}


@pytest.fixture
def memory(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_HOME", str(tmp_path / "home"))
    mem = VisualMemory(open_store(str(tmp_path / "memory"), SPEC, index=EXACT32))
    mem.store.add(np.stack([v for _, v in POINTS]), LABELS, [f"/hand/{i}.jpg" for i in range(len(POINTS))])
    yield mem
    mem.close()


@pytest.mark.parametrize("length", [1.0, 3.0, 0.2])
def test_the_dmn_static_readout_is_the_papers_whatever_the_query_vectors_length(memory, length):
    [result] = memory.classify_dmn((Q * length)[None], None, {"mode": "memory-only"}, exact=True)
    paper = paper_static(Q)
    assert result.label == "b"
    # Before, a query 3x as long read out sharper (b 1.0) and one of 0.2 flatter (b 0.69 against the paper's 0.9998)
    assert {c: result.dmn.parts["static"].get(c, 0.0) for c in paper} == pytest.approx(paper, abs=1e-5)


@pytest.mark.parametrize("length", [3.0, 0.2])
def test_a_dmn_stream_keeps_and_reads_query_directions(memory, length):
    # The same image at two lengths: the dynamic memory holds it once as the paper's unit feature, and reads it out
    # as the unit query would.
    unit = memory.classify_dmn(Q[None], "unit", {"mode": "memory-only"}, exact=True)[0]
    scaled = memory.classify_dmn((Q * length)[None], "scaled", {"mode": "memory-only"}, exact=True)[0]
    assert scaled.scores == pytest.approx(unit.scores, abs=1e-6)
    held, _ = memory.dmn.stream("scaled").entries("b")
    assert np.linalg.norm(held, axis=1) == pytest.approx([1.0], abs=1e-6)
