"""kNN voting rules over ranked neighbours (Geirhos et al. 2025, section 2).

With cosine distance d = 1 - cos and neighbours ranked i = 0, 1, 2, ...:

    plurality  w = 1
    distance   w = exp(-d)
    softmax    w = exp((1 - d) / tau)      tau = 0.07   (shown divided by e^(1/tau): exp(-d/tau))
    rank       w = 1 / (alpha + i)         alpha = 2

Weights are multiplied by optional per-neighbour reliability factors (soft pruning),
summed per label, and the largest total wins. Ties go to the label whose best-ranked
neighbour comes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

DEFAULT_ALPHA = 2.0
DEFAULT_TAU = 0.07
# Relative tolerance under which two label totals count as tied (summation order noise).
TIE_RTOL = 1e-9
# The least exponent of a softmax weight as shown, exp(-d/tau): below it a row of weights is scaled by its nearest's
# (`neighbor_weights`). Far above float64's least (about -745), so that the weights beside the nearest's that
# underflow still would weigh under e^-100 of it: nothing any vote or tie can feel.
SOFTMAX_LEAST_EXPONENT = -600.0


class VoteRule(StrEnum):
    plurality = "plurality"
    distance = "distance"
    softmax = "softmax"
    rank = "rank"


def neighbor_weights(
    similarities: np.ndarray,
    rule: VoteRule | str,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    reliability: np.ndarray | None = None,
) -> np.ndarray:
    """Weights for neighbours ranked along the last axis of `similarities` (cosine, best first).

    Args:
        similarities: float array [..., k] of cosine similarities, rank 0 first.
        rule: one of `VoteRule`.
        alpha: rank-voting offset.
        tau: softmax temperature.
        reliability: optional factors of the same shape that multiply the weights.

    Returns:
        float64 array of the same shape.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    rule = VoteRule(rule)
    if rule is VoteRule.plurality:
        w = np.ones_like(sims)
    elif rule is VoteRule.distance:
        w = np.exp(-(1.0 - sims))
    elif rule is VoteRule.softmax:
        # exp((1-d)/tau) = exp(cos/tau); subtracting 1/tau keeps it finite and changes no decision. Where even the
        # nearest's weight would be below e^SOFTMAX_LEAST_EXPONENT (tau near its least, every neighbour far), the
        # row is divided by the nearest's instead: at tau 0.001 and cosines of 0.2 every weight had been e^-800,
        # 0 in floating point, so every label tied at 0 and the nearest's won, whatever the others' weights.
        top = np.max(sims, axis=-1, keepdims=True, initial=-np.inf, where=np.isfinite(sims))
        far = np.isfinite(top) & ((top - 1.0) / tau < SOFTMAX_LEAST_EXPONENT)
        w = np.exp((sims - np.where(far, top, 1.0)) / tau)
    else:
        ranks = np.arange(sims.shape[-1], dtype=np.float64)
        w = np.broadcast_to(1.0 / (alpha + ranks), sims.shape).copy()
    if reliability is not None:
        w = w * np.asarray(reliability, dtype=np.float64)
    return w


def wins_nearest(points: int, k: int, rule: VoteRule | str, alpha: float = DEFAULT_ALPHA,
                 rival: int | None = None) -> bool | None:
    """Does a label of `points` points win a vote of `k` neighbours where they are the query's nearest and the
    rest are `rival` points of one other label (default: as many as fill k)? Below the fewest that do
    (`fewest_to_win`), one fuller class near a label outvotes it even then: a class of a few images added beside
    classes of a hundred is seldom the answer (README, "A class of a few images"). None for distance and softmax
    voting, whose weights depend on the similarities, not the ranks alone.

    Example:
        >>> wins_nearest(3, 50, "rank"), wins_nearest(3, 10, "rank"), wins_nearest(1, 50, "rank", rival=0)
        (False, True, True)
    """
    rule = VoteRule(rule)
    if rule not in (VoteRule.rank, VoteRule.plurality):
        return None
    if points >= k:
        return True
    w = neighbor_weights(np.ones(k), rule, alpha)
    theirs = w[points : points + (k - points if rival is None else min(rival, k - points))].sum()
    # A tie goes to the label whose best neighbour ranks first: this one.
    return bool(w[:points].sum() >= theirs * (1 - TIE_RTOL))


def fewest_to_win(k: int, rule: VoteRule | str, alpha: float = DEFAULT_ALPHA, rival: int | None = None) -> int | None:
    """The fewest points for which `wins_nearest` holds at `k` (None for distance and softmax voting).

    Example:
        >>> fewest_to_win(50, "rank"), fewest_to_win(50, "plurality"), fewest_to_win(50, "rank", rival=4)
        (8, 25, 2)
    """
    if VoteRule(rule) not in (VoteRule.rank, VoteRule.plurality):
        return None
    return next(n for n in range(1, k + 1) if wins_nearest(n, k, rule, alpha, rival))


@dataclass(frozen=True)
class VoteOutcome:
    label: str | None
    scores: dict[str, float]  # per label, normalised to sum to 1, best first
    weights: np.ndarray  # per neighbour, float64 [k]


def vote(
    labels: Sequence[str],
    similarities: Sequence[float] | np.ndarray,
    rule: VoteRule | str = VoteRule.rank,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    reliability: Sequence[float] | np.ndarray | None = None,
) -> VoteOutcome:
    """Vote over one query's neighbours (already cut to k, best first).

    Example:
        >>> vote(["cat", "dog", "dog"], [0.9, 0.8, 0.7], "plurality").label
        'dog'
    """
    if len(labels) != len(similarities):
        raise ValueError("labels and similarities differ in length")
    if not labels:
        return VoteOutcome(None, {}, np.zeros(0))
    rel = None if reliability is None else np.asarray(reliability, dtype=np.float64)
    w = neighbor_weights(np.asarray(similarities), rule, alpha, tau, rel)
    totals: dict[str, float] = {}
    first_rank: dict[str, int] = {}
    for i, (lab, wi) in enumerate(zip(labels, w, strict=True)):
        totals[lab] = totals.get(lab, 0.0) + float(wi)
        first_rank.setdefault(lab, i)
    best = max(totals.values())
    # An infinite total (a denormal alpha or tau overflows a weight) must not turn the tolerance into NaN.
    tol = TIE_RTOL * abs(best) if math.isfinite(best) else 0.0
    tied = [lab for lab, t in totals.items() if t >= best - tol]
    winner = min(tied, key=first_rank.__getitem__)
    norm = sum(totals.values())
    scores = {lab: (t / norm if norm > 0 else 0.0) for lab, t in totals.items()}
    ordered = dict(sorted(scores.items(), key=lambda kv: (-kv[1], first_rank[kv[0]])))
    # Keep the winner first even when a tie left others with the same score.
    ordered = {winner: ordered.pop(winner), **ordered}
    return VoteOutcome(winner, ordered, w)


# Cells (rows x classes) of the per-class tables one chunk of queries votes in: 2 MB of float64. The tables
# hold only the classes among the chunk's neighbours, so their size no longer grows with the memory's classes:
# at 50,000 classes, 4,096 rows of them had taken 1.6 GB a table (6 GB for a label audit).
VOTE_CHUNK_CELLS = 1 << 18


def _chunk_rows(n_classes: int, kmax: int) -> int:
    """Rows a chunk votes at once: the most whose table, of at most rows * kmax classes, fits the budget."""
    rows = 1
    while rows < VOTE_CHUNK_CELLS and (2 * rows) * max(1, min(n_classes, 2 * rows * kmax)) <= VOTE_CHUNK_CELLS:
        rows *= 2
    return rows


def _by_chunks(dense, label_ids: np.ndarray, w: np.ndarray, n_classes: int, per_k: bool) -> np.ndarray:
    """`dense` over chunks of rows, each with its classes renumbered to those among its neighbours. A class
    no neighbour has totals 0 and never wins (its first rank is none), so the answers are the same."""
    n, kmax = label_ids.shape
    out = np.full((n, kmax) if per_k else (n,), -1, dtype=np.int64)
    rows = _chunk_rows(n_classes, kmax)
    for s in range(0, n, rows):
        ids = label_ids[s : s + rows]
        valid = ids >= 0
        present, local = np.unique(ids[valid], return_inverse=True)
        if not len(present):
            continue  # no neighbour in any row: no answer
        compact = np.full(ids.shape, -1, dtype=np.int64)
        compact[valid] = local.ravel()
        pred = dense(compact, w[s : s + rows], len(present))
        out[s : s + rows] = np.where(pred >= 0, present[np.maximum(pred, 0)], -1)
    return out


def vote_all_k(
    label_ids: np.ndarray,
    similarities: np.ndarray,
    rule: VoteRule | str,
    n_classes: int,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    reliability: np.ndarray | None = None,
) -> np.ndarray:
    """Predictions at every k = 1..K from one top-K search, for many queries at once.

    Args:
        label_ids: int array [n, K] of neighbour class ids, rank 0 first (-1 = no neighbour).
        similarities: float array [n, K] of cosine similarities.
        rule: the voting rule.
        n_classes: number of class ids.
        reliability: optional [n, K] factors multiplying the weights.

    Returns:
        int64 array [n, K]; column k-1 holds the prediction using the first k neighbours,
        with the same tie-break as `vote`; -1 while a query has no neighbour yet (`vote`'s None).
    """
    label_ids = np.asarray(label_ids)
    w = neighbor_weights(similarities, rule, alpha, tau, reliability)
    return _by_chunks(_all_k, label_ids, np.where(label_ids >= 0, w, 0.0), n_classes, per_k=True)


def _all_k(label_ids: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    n, kmax = label_ids.shape
    safe_ids = np.where(label_ids >= 0, label_ids, 0)
    totals = np.zeros((n, n_classes))
    first = np.full((n, n_classes), kmax, dtype=np.int64)
    rows = np.arange(n)
    preds = np.empty((n, kmax), dtype=np.int64)
    for k in range(kmax):
        c = safe_ids[:, k]
        totals[rows, c] += w[:, k]
        valid = label_ids[:, k] >= 0
        first[rows[valid], c[valid]] = np.minimum(first[rows[valid], c[valid]], k)
        preds[:, k] = _winners(totals, first, kmax)
    return preds


def vote_last_k(
    label_ids: np.ndarray,
    similarities: np.ndarray,
    rule: VoteRule | str,
    n_classes: int,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    reliability: np.ndarray | None = None,
) -> np.ndarray:
    """`vote_all_k(...)[:, -1]`, the prediction with all K neighbours, without the K - 1 before it: int64 [n].

    The same sums in the same order, so the same answers, ties included; 20-35x faster with 1,000 classes
    (pruning and the label audit want only this column; at every k they took minutes at ImageNet scale).
    """
    label_ids = np.asarray(label_ids)
    w = neighbor_weights(similarities, rule, alpha, tau, reliability)
    return _by_chunks(_last_k, label_ids, np.where(label_ids >= 0, w, 0.0), n_classes, per_k=False)


def _last_k(label_ids: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    n, kmax = label_ids.shape
    valid = label_ids >= 0
    safe_ids = np.where(valid, label_ids, 0)
    # Rank by rank within a row, as vote_all_k adds them: bincount adds in input order.
    cells = (np.arange(n)[:, None] * n_classes + safe_ids).ravel()
    totals = np.bincount(cells, weights=w.ravel(), minlength=n * n_classes).reshape(n, n_classes)
    first = np.full((n, n_classes), kmax, dtype=np.int64)
    rows = np.arange(n)
    for k in range(kmax - 1, -1, -1):  # the best rank written last
        v = valid[:, k]
        first[rows[v], safe_ids[v, k]] = k
    return _winners(totals, first, kmax)


def _winners(totals: np.ndarray, first: np.ndarray, kmax: int) -> np.ndarray:
    """The class with the most weight per row; among tied ones, the one whose first neighbour ranks best."""
    best = totals.max(axis=1, keepdims=True)
    tol = np.where(np.isfinite(best), TIE_RTOL * np.abs(best), 0.0)
    tied = (totals >= best - tol) & (first < kmax)
    # No neighbour at all (an empty or filtered-out memory) is no answer, not class 0, which would score as
    # right for class-0 queries.
    return np.where(tied.any(axis=1), np.where(tied, first, kmax + 1).argmin(axis=1), -1)
