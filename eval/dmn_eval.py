"""The dmn rule's answers on the evaluation's queries, and how far their confidence can be trusted.

`vmem dmn classify --min-confidence` compares the fused DMN probability of the label answered, not a vote share:
the vote's thresholds say nothing about it. This classifies the already-embedded queries with the dmn rule, as
`vmem dmn classify` does (through `VisualMemory.classify_dmn`), and scores that probability as `eval.selective`
scores the vote's share: risk-coverage, the threshold for each target accuracy, reliability bins, ECE, AURC.

No stream: the dynamic memory is off, so each answer depends on its query alone, not on the queries before it
(a stream's answers depend on their order, and the evaluation would write the user's stream).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from .selective import Selective, selective_scores

DMN_CONFIDENCE = "fused DMN probability of the label answered"


class DmnReport(BaseModel):
    queries: int
    mode: str = Field(description="the mode the answers came from (auto resolved: few-shot for CLIP, else "
                                  "memory-only)")
    static_k: int = Field(description="neighbours of the one wide search")
    accuracy: float
    selective: Selective = Field(description="the fused probability as the confidence (`--min-confidence`)")
    seconds: float


def evaluate_dmn(memory: Any, features: np.ndarray, sources: Sequence[str], correct_labels: Sequence[tuple[str, ...]],
                 labels: Sequence[str] | None = None, exact: bool = True, options: Any = None) -> DmnReport:
    """Classify the embedded queries with the dmn rule (no stream) and score its confidence.

    Args:
        memory: a `vmem.VisualMemory`.
        features: float32 [n, dim], the queries as the memory's featurizer embedded them.
        correct_labels: the labels that count as right, per query.
        labels: restrict the answers to these labels (ImageNet-A/-R protocol).
        exact: search every point (as eval's exact search), not the index.
        options: `vmem.dmn_classifier.DmnOptions` (or its fields as a dict); default the paper's settings.
    """
    from vmem.dmn_classifier import DmnOptions

    t0 = time.perf_counter()
    opts = options if isinstance(options, DmnOptions) else DmnOptions(**(options or {}))
    results = memory.classify_dmn(features, stream=None, options=opts, labels=labels, sources=list(sources),
                                  exact=exact)
    right = np.array([r.label is not None and r.label in truth for r, truth in zip(results, correct_labels,
                                                                                   strict=True)], dtype=bool)
    # An answer's confidence, 0 for none: risk_coverage keeps such a query at no threshold, as classify calls it
    # unsure at every one.
    confidence = np.array([r.confidence or 0.0 for r in results], dtype=np.float64)
    mode = next((r.dmn.mode for r in results if r.dmn is not None), memory.dmn.resolve_mode(opts.mode))
    selective = selective_scores(confidence, right, "dmn", opts.static_k)
    selective.confidence = DMN_CONFIDENCE
    return DmnReport(queries=len(results), mode=mode, static_k=opts.static_k,
                     accuracy=float(right.mean()) if len(right) else 0.0, selective=selective,
                     seconds=round(time.perf_counter() - t0, 2))


__all__ = ["DMN_CONFIDENCE", "DmnReport", "evaluate_dmn"]
