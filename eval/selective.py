"""When to trust an answer: selective prediction and calibration of the vote share.

An answer's confidence is the vote share of the label it gives (`Classification.confidence`, the winner's share of
the k neighbours' vote weight, in [0, 1]). Kept only when it is at least a threshold (`min_confidence`), answers
are fewer and, if the share means anything, more often right. From each query's confidence and whether it was
right, `selective_scores` measures:

* the risk-coverage curve: for each threshold (each confidence some query has), the share of queries answered
  (coverage) and the accuracy of those answers;
* the threshold that keeps the most answers at a target accuracy (90, 95, 99 %), and the coverage it keeps;
* a reliability diagram (10 bins of confidence: each bin's mean confidence against its accuracy) and the expected
  calibration error (ECE), the bins' gaps weighted by their queries.

The thresholds are chosen on the queries they are measured on: on another sample, expect them to keep about the
coverage said, at about (not exactly) the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from vmem.results import CONFIDENCE_DECIMALS, rounded_confidence

TARGET_ACCURACIES = (0.90, 0.95, 0.99)
RELIABILITY_BINS = 10
# The curve stored in results.json: every threshold up to this many, else one point per 0.5 % of coverage (the
# distinct vote shares of 10,000 queries at k = 50 are nearly as many).
CURVE_POINTS = 200


class RiskCoveragePoint(BaseModel):
    min_confidence: float = Field(description="answers whose confidence is at least this are kept")
    kept: int = Field(description="queries answered")
    coverage: float = Field(description="share of the queries answered")
    accuracy: float = Field(description="accuracy of the answers kept")


class CoverageAtAccuracy(BaseModel):
    target: float = Field(description="the accuracy asked for")
    min_confidence: float | None = Field(
        description="the lowest threshold whose kept answers reach the target (the most coverage); null: none does")
    coverage: float = Field(description="share of the queries answered at that threshold (0 when none)")
    accuracy: float | None = Field(description="accuracy of those answers")


class ReliabilityBin(BaseModel):
    lower: float
    upper: float = Field(description="the bin holds confidences in (lower, upper]; the first one from 0")
    queries: int
    mean_confidence: float | None
    accuracy: float | None


class Selective(BaseModel):
    """How far one decision's confidence can be trusted (module docstring)."""

    rule: str = Field(description="the decision measured (classify's: the memory's tuned rule and k, else the "
                                  "defaults)")
    k: int
    confidence: str = Field(default="vote share of the label answered")
    queries: int
    accuracy: float = Field(description="accuracy with every answer kept")
    mean_confidence: float
    ece: float = Field(description="expected calibration error over the reliability bins (0: confidence is "
                                   "accuracy)")
    aurc: float = Field(description="area under the risk (1 - accuracy) against coverage curve: lower is better")
    at_accuracy: list[CoverageAtAccuracy]
    reliability: list[ReliabilityBin]
    risk_coverage: list[RiskCoveragePoint] = Field(
        description="highest threshold first; every threshold, or one point per 0.5 % of coverage past "
                    f"{CURVE_POINTS}")


def decision_name(sel: Selective) -> str:
    """The decision a Selective measures, for a table or a plot: "rank voting, k=50", "dmn (static_k=256)",
    "re-ranked (rank voting, k=50)"."""
    if sel.rule == "dmn":
        return f"dmn (static_k={sel.k})"
    return f"re-ranked (rank voting, k={sel.k})" if sel.rule == "rerank" else f"{sel.rule} voting, k={sel.k}"


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, highest first; queries kept at each; correct answers among them): one entry per distinct
    (rounded) confidence, keeping every query whose confidence is at least it. A query with no answer (confidence
    0: an answer's share is never 0) is kept at none, threshold 0 included: there is nothing to keep, and classify
    calls it unsure at every `min_confidence` (`vmem.results.unsure_of`)."""
    conf = rounded_confidence(np.asarray(confidence, dtype=np.float64))
    answered = conf > 0
    conf, correct = conf[answered], np.asarray(correct, dtype=bool)[answered]
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], np.asarray(correct, dtype=bool)[order]
    hits = np.cumsum(right)
    # The last query of each run of equal confidences: keeping a threshold keeps all of them.
    last = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True]) if len(conf) else np.zeros(0, np.int64)
    return conf[last], last + 1, hits[last] if len(conf) else np.zeros(0, np.int64)


def selective_scores(confidence: np.ndarray, correct: np.ndarray, rule: str, k: int,
                     targets: Sequence[float] = TARGET_ACCURACIES, bins: int = RELIABILITY_BINS) -> Selective:
    """The curve, the thresholds for `targets`, the reliability bins and the ECE of one decision.

    Args:
        confidence: float [n], each query's confidence (0 for a query with no answer).
        correct: bool [n], whether its answer was right.
    """
    conf = rounded_confidence(np.asarray(confidence, dtype=np.float64))
    right = np.asarray(correct, dtype=bool)
    n = len(conf)
    thresholds, kept, hits = risk_coverage(conf, right)
    acc = hits / np.maximum(kept, 1)
    at = []
    for target in targets:
        ok = np.flatnonzero(acc >= target - 1e-12)
        if len(ok):  # the last such threshold is the lowest: the most answers kept
            j = int(ok[-1])
            at.append(CoverageAtAccuracy(target=target, min_confidence=float(thresholds[j]),
                                         coverage=float(kept[j] / n), accuracy=float(acc[j])))
        else:
            at.append(CoverageAtAccuracy(target=target, min_confidence=None, coverage=0.0, accuracy=None))
    # (lower, upper] bins, 0 in the first: a share is never 0 for an answer, and 1 is a whole vote.
    # conf * bins rounded first: 0.7 * 10 is 7.000000000000001, whose ceiling put 0.7 in (0.7, 0.8].
    which = np.clip(np.ceil(np.round(conf * bins, CONFIDENCE_DECIMALS)).astype(np.int64) - 1, 0, bins - 1)
    rel, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        m = int(sel.sum())
        mc = float(conf[sel].mean()) if m else None
        ma = float(right[sel].mean()) if m else None
        if m:
            ece += m / n * abs(ma - mc)  # type: ignore[operator]  # both set when m
        rel.append(ReliabilityBin(lower=b / bins, upper=(b + 1) / bins, queries=m, mean_confidence=mc, accuracy=ma))
    # AURC: the mean over queries, kept one by one most confident first, of the risk once each is kept (a run of
    # equal confidences kept at once: each of them at the run's risk)
    # (over the queries answered: one with no answer is kept at no threshold)
    risk_each = 1.0 - np.repeat(acc, np.diff(np.r_[0, kept]))
    shown = np.arange(len(thresholds))
    if len(shown) > CURVE_POINTS:
        shown = np.unique(np.r_[np.minimum(np.searchsorted(kept / n, np.linspace(0, 1, CURVE_POINTS + 1)[1:]),
                                           len(kept) - 1), len(kept) - 1])
    return Selective(
        rule=rule, k=k, queries=n, accuracy=float(right.mean()) if n else 0.0,
        mean_confidence=float(conf.mean()) if n else 0.0, ece=float(ece),
        aurc=float(risk_each.mean()) if len(risk_each) else float(n > 0),  # no answer at all: all risk
        at_accuracy=at, reliability=rel,
        risk_coverage=[RiskCoveragePoint(min_confidence=float(thresholds[j]), kept=int(kept[j]),
                                         coverage=float(kept[j] / n), accuracy=float(acc[j])) for j in shown])


__all__ = ["TARGET_ACCURACIES", "CoverageAtAccuracy", "ReliabilityBin", "RiskCoveragePoint",
           "Selective", "decision_name", "risk_coverage", "selective_scores"]
