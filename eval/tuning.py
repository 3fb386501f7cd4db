"""Choosing the voting rule, k, α and τ from data, on a validation split that is never the test set.

The reference paper recommends rank voting (α = 2) everywhere; with weaker features the best rule
and its parameter depend on the featurizer and the data. `tune` scores every candidate at every
k = 1..k_max on the validation queries from one neighbour table, picks the best, and reports the
choice's accuracy on the held-out queries too, so the gap shows any overfitting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, VoteRule

from .scoring import SOFT_SUFFIX, NeighborTable, correctness, predictions

DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_TAUS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2)
REFERENCE_K = 50


class Candidate(BaseModel):
    """One rule with one parameter value, at its best k on the validation split."""

    rule: VoteRule
    soft_pruning: bool = Field(default=False, description="weights multiplied by the points' reliability factors")
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_TAU
    best_k: int
    val_accuracy: float
    heldout_accuracy: float | None = Field(default=None, description="at best_k on the held-out queries")

    @property
    def name(self) -> str:
        param = f" α={self.alpha:g}" if self.rule is VoteRule.rank else \
            f" τ={self.tau:g}" if self.rule is VoteRule.softmax else ""
        return f"{self.rule.value}{SOFT_SUFFIX if self.soft_pruning else ''}{param}"


class FixedRule(BaseModel):
    """A rule with its default parameter at the reference k (the untuned baseline)."""

    rule: str
    k: int
    val_accuracy: float
    heldout_accuracy: float | None


class TuneReport(BaseModel):
    chosen: Candidate
    candidates: list[Candidate]
    fixed: list[FixedRule] = Field(description=f"each rule with default α/τ at k = {REFERENCE_K}")
    n_val: int
    n_heldout: int
    k_max: int
    reliability_present: bool = Field(default=False, description="the memory had soft-pruning factors when tuned")
    gap: float | None = Field(default=None, description="val accuracy minus held-out accuracy of the chosen settings")

    def vote_settings(self) -> dict:
        """What goes into the memory's metadata (`settings["vote"]`)."""
        c = self.chosen
        # Without factors, with or without is the same choice: leave it on so a later `vmem prune --mode soft` counts.
        soft = c.soft_pruning or not self.reliability_present
        return {"rule": c.rule.value, "k": c.best_k, "alpha": c.alpha, "tau": c.tau, "soft_pruning": soft}

    def markdown(self) -> str:
        pct = lambda x: "—" if x is None else f"{100 * x:.2f}"  # noqa: E731
        lines = [f"validation queries: {self.n_val}, held-out queries: {self.n_heldout}, k = 1..{self.k_max}", "",
                 "| candidate | best k (val) | val top-1 | held-out top-1 |", "|---|---|---|---|"]
        for c in sorted(self.candidates, key=lambda c: -c.val_accuracy):
            mark = " **(chosen)**" if c == self.chosen else ""
            lines.append(f"| {c.name}{mark} | {c.best_k} | {pct(c.val_accuracy)} | {pct(c.heldout_accuracy)} |")
        if self.fixed:  # none when k_max < REFERENCE_K: the fixed rules' k was not searched
            lines += ["", "| fixed rule (default α/τ) | k | val top-1 | held-out top-1 |", "|---|---|---|---|"]
            lines += [f"| {f.rule} | {f.k} | {pct(f.val_accuracy)} | {pct(f.heldout_accuracy)} |"
                      for f in self.fixed]
        else:
            lines += ["", f"(no fixed-rule baseline at k = {REFERENCE_K}: only k up to {self.k_max} was searched)"]
        lines += ["", f"chosen: {self.chosen.name}, k = {self.chosen.best_k}: val {pct(self.chosen.val_accuracy)}, "
                      f"held-out {pct(self.chosen.heldout_accuracy)}, gap {pct(self.gap)} points"]
        return "\n".join(lines)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split into (validation, held-out) row indices."""
    if not 0 < val_fraction <= 1:
        raise ValueError("val_fraction must be in (0, 1]")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(val_fraction * n))
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def _candidates(alphas: Sequence[float], taus: Sequence[float],
                soft: bool) -> list[tuple[VoteRule, bool, float, float]]:
    out = []
    for s in ([False, True] if soft else [False]):
        out.append((VoteRule.plurality, s, DEFAULT_ALPHA, DEFAULT_TAU))
        out.append((VoteRule.distance, s, DEFAULT_ALPHA, DEFAULT_TAU))
        out += [(VoteRule.softmax, s, DEFAULT_ALPHA, t) for t in taus]
        out += [(VoteRule.rank, s, a, DEFAULT_TAU) for a in alphas]
    return out


def tune(
    table: NeighborTable,
    truth: np.ndarray,
    val_rows: np.ndarray,
    heldout_rows: np.ndarray | None = None,
    accepted: np.ndarray | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    taus: Sequence[float] = DEFAULT_TAUS,
) -> TuneReport:
    """Search rule × parameter × k on `val_rows` of the table; report the choice on `heldout_rows`.

    Args:
        table: every query's k_max neighbours (validation and held-out queries together).
        truth: true class id per query row.
        val_rows: rows the choice is made on.
        heldout_rows: rows only reported on (never used to choose); may be empty or None.

    Returns:
        A `TuneReport`; ties go to the earlier candidate (plurality, distance, softmax, rank) and the smaller k.
    """
    held = heldout_rows if heldout_rows is not None and len(heldout_rows) else None
    cands: list[Candidate] = []
    fixed: list[FixedRule] = []
    for rule, soft, alpha, tau in _candidates(alphas, taus, table.reliability is not None):
        right = correctness(predictions(table, rule, alpha, tau, soft), truth, accepted)
        val_curve = right[val_rows].mean(axis=0)
        best = int(np.argmax(val_curve))
        held_acc = float(right[held, best].mean()) if held is not None else None
        cands.append(Candidate(rule=rule, soft_pruning=soft, alpha=alpha, tau=tau, best_k=best + 1,
                               val_accuracy=float(val_curve[best]), heldout_accuracy=held_acc))
        if not soft and alpha == DEFAULT_ALPHA and tau == DEFAULT_TAU and table.k_max >= REFERENCE_K:
            col = REFERENCE_K - 1
            fixed.append(FixedRule(rule=rule.value, k=REFERENCE_K, val_accuracy=float(right[val_rows, col].mean()),
                                   heldout_accuracy=float(right[held, col].mean()) if held is not None else None))
    chosen = max(cands, key=lambda c: c.val_accuracy)  # max keeps the first of equals
    gap = None if chosen.heldout_accuracy is None else chosen.val_accuracy - chosen.heldout_accuracy
    return TuneReport(chosen=chosen, candidates=cands, fixed=fixed, n_val=len(val_rows),
                      n_heldout=0 if held is None else len(held), k_max=table.k_max, gap=gap,
                      reliability_present=table.reliability is not None)
