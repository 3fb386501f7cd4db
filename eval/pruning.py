"""Memory pruning (Geirhos et al. 2025, section 4): find the points that keep causing wrong decisions.

The memory is queried against itself (each point's own hit dropped) with k = 100 and rank voting.
For every point we count how often it was blamed (`blame`, below: by default, how often it was among the
neighbours of a wrong decision). Then:

* hard pruning excludes points with count >= threshold (default 128) from search. They are flagged
  in their payload (`excluded: "pruned"`) rather than deleted, so `undo_pruning` brings them back;
  the store leaves flagged points out of every query.
* soft pruning stores a reliability factor gamma = 1.75 / (1 + count) for points with count >= 1 in
  their payload (`reliability`); voting multiplies each neighbour's weight by it.

What a point is blamed for (`blame`):

* "label" (the paper's count, as its authors' code computes it): every time the point is among another point's
  k neighbours with a label other than that point's own, whatever that point's vote decided. At k = 100 this is
  the count behind the paper's 26,257 points at >= 128 (DINOv2 ViT-L/14, ImageNet train);
* "all": every neighbour of a wrong leave-one-out decision (rank voting), whatever its label;
* "voters": only the neighbours of a wrong decision that carry the wrongly chosen label.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, MemoryStore, VoteRule
from retrieval.journal import PendingEdit
from retrieval.store import (
    EXCLUDED_KEY,  # payload key the store filters on (any non-empty value excludes a point)
    RELIABILITY_KEY,
    SCROLL_PAGE,
    SERVER_REQUEST_IDS,
)
from retrieval.store import PRUNE_COUNT_KEY as COUNT_KEY
from retrieval.text import counted

from .scoring import (
    K_MAX,
    SelfSearch,
    class_index,
    final_predictions,
    index_self_search,
    self_search,
    self_search_points,
    table_from_hits,
)

DEFAULT_THRESHOLD = 128
SOFT_GAMMA = 1.75
EXCLUDED_VALUE = "pruned"
Blame = Literal["label", "all", "voters"]


# What each blame counts, as the summary says it (the module's docstring says it at length)
_BLAMED = {"label": "neighbours of another label, any decision", "all": "neighbours of wrong decisions",
           "voters": "wrong decisions' voters for the label chosen"}


class PruneMode(StrEnum):
    soft = "soft"
    hard = "hard"


def wrong_decision_counts(
    features: np.ndarray | None,
    labels: list[str],
    k: int = K_MAX,
    rule: VoteRule | str = VoteRule.rank,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    blame: Blame = "all",
    progress: Callable[[int], object] | None = None,
    hits: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For every memory point, how often it was blamed in the memory's leave-one-out search (`blame`: see the
    module's docstring).

    `hits`: the memory's `self_search` (or `index_self_search`) with k columns, when the caller has one (else
    made here from `features`).

    Returns:
        (counts int64 [n], wrong bool [n]: whether the point itself was misclassified by the rest)
    """
    if hits is None and features is None:  # as leave_one_out_votes says it (this had been a TypeError of len())
        raise ValueError("give the vectors to search, or their search's hits")
    n = len(labels)
    classes, pos = class_index(labels)
    own = np.array([pos[lab] for lab in labels], dtype=np.int64)
    idx, sims = hits if hits is not None else self_search(features, k, progress)  # type: ignore[arg-type]  # not None without hits (above)
    table = table_from_hits(idx, sims, labels, classes)
    preds = final_predictions(table, rule, alpha, tau)
    wrong = preds != own
    if blame == "label":  # a neighbour voting for a label other than the querying point's, right decision or not
        blamed = (idx >= 0) & (table.label_ids != own[:, None])
    else:
        blamed = (idx >= 0) & wrong[:, None]
        if blame == "voters":
            blamed &= table.label_ids == preds[:, None]
    counts = np.bincount(idx[blamed], minlength=n).astype(np.int64)
    return counts, wrong


def soft_factors(counts: np.ndarray, gamma: float = SOFT_GAMMA) -> np.ndarray:
    """gamma / (1 + count) for points blamed at least once, 1 otherwise."""
    counts = np.asarray(counts)
    return np.where(counts >= 1, gamma / (1.0 + counts), 1.0)


class PruneReport(BaseModel):
    mode: PruneMode
    points: int
    wrong_decisions: int = Field(description="points misclassified by the rest of the memory")
    k: int
    rule: str
    blame: str
    threshold: int | None = None
    excluded: int = 0
    down_weighted: int = 0
    count_max: int = 0
    count_mean: float = 0.0
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    def summary(self) -> str:
        what = (f"{counted(self.excluded, 'point')} with count >= {self.threshold} excluded from search"
                if self.mode is PruneMode.hard else
                f"{counted(self.down_weighted, 'point')} down-weighted by {SOFT_GAMMA}/(1+count)")
        return (f"{self.mode} pruning of {counted(self.points, 'point')}: "
                f"{counted(self.wrong_decisions, 'leave-one-out error')} "
                f"({self.rule} voting, k={self.k}); blame ({self.blame}: {_BLAMED.get(self.blame, '?')}) count max "
                f"{self.count_max}, mean {self.count_mean:.2f}; "
                f"{what}. Undo with `vmem prune --undo`.")


def _group_by_value(ids: list[str], values: np.ndarray) -> dict[Any, list[str]]:
    groups: dict[Any, list[str]] = {}
    for pid, v in zip(ids, values.tolist(), strict=True):
        groups.setdefault(v, []).append(pid)
    return groups


def _reindex(store: MemoryStore) -> None:
    # Qdrant moves a point whose payload changes out of its indexed segment into an unindexed one; after
    # touching most points, searches scan them all (6x slower on Tiny-ImageNet) until the segments are rebuilt.
    store.flush()
    store.optimize()


def undo_pruning(store: MemoryStore, via: str = "python", journal: bool = True) -> int:
    """Bring back hard-pruned points and reset soft factors; returns how many points changed. Recorded in the
    memory's journal (`via`: who asked) unless nothing changed, or `journal` is off (a prune undoing the last).
    Noted in the journal before its first write (`MemoryStore.noted`): a process killed before the entry leaves an
    unprune the memory's next opening journals, as far as it went."""
    touched = store.marked_by_pruning(SCROLL_PAGE)
    if not journal:
        return _undo_pruning(store, touched)
    with store.noted("unprune", begun_with=store.pruning_state(len(touched))[1], via=via) as note:

        def record(touched: int, changed: bool) -> None:
            # The note stays where the entry could not be written: the next opening journals the unprune.
            if not changed or store.journal.record("unprune", points=touched, via=via):
                store.journal.settled(note)

        return _undo_pruning(store, touched, record)


def _undo_pruning(store: MemoryStore, touched: list[str], record: Callable[[int, bool], object] | None = None) -> int:
    """`undo_pruning` of the points marked (`touched`), told to `record` (points changed, whether anything changed)
    before the re-index."""
    for start in range(0, len(touched), SERVER_REQUEST_IDS):
        # A null `excluded` is empty to the store's filter; reliability 1 is the neutral factor.
        store.set_payload_of_existing(touched[start : start + SERVER_REQUEST_IDS],
                                      {EXCLUDED_KEY: None, COUNT_KEY: None, RELIABILITY_KEY: 1.0})
    pruned = "pruning" in store.meta.settings
    if pruned:
        store.meta.settings.pop("pruning")
        store.save_meta()
    if record is not None:  # before the re-index, as a prune's entry (see prune_store)
        record(len(touched), bool(touched or pruned))
    if touched:
        _reindex(store)
    return len(touched)


def prune_store(
    store: MemoryStore,
    mode: PruneMode | str,
    threshold: int = DEFAULT_THRESHOLD,
    k: int = K_MAX,
    rule: VoteRule | str = VoteRule.rank,
    alpha: float = DEFAULT_ALPHA,
    blame: Blame = "all",
    progress: Callable[[int], object] | None = None,
    via: str = "python",
    search: SelfSearch = "auto",
) -> PruneReport:
    """Prune a memory in place (any earlier pruning is undone first, so counts see every point); recorded in
    the memory's journal (`via`: who asked).

    Args:
        store: the memory.
        search: how each point's neighbours are found: "exact" reads every vector into RAM and searches them
            all against all (time grows with the square of the points); "index" asks the memory's index a
            page at a time (grows with the points, at the index's recall); "auto": exact up to
            `EXACT_SELF_SEARCH_MAX` points.
        mode: "hard" (exclude count >= threshold) or "soft" (reliability 1.75/(1+count)).
        threshold: hard pruning's count threshold.
        k: neighbours per leave-one-out decision.
        blame: what a point is blamed for: "label", "all" or "voters" (the module's docstring).

    Example:
        >>> prune_store(open_store("./memory"), "soft").summary()
    """
    mode = PruneMode(mode)
    # Noted before its first write (the undo of the last pruning): a process killed before its entry leaves a prune
    # the memory's next opening journals, as far as it went (`PendingEdit.pruning_entry`).
    touched = store.marked_by_pruning(SCROLL_PAGE)
    with store.noted("prune", begun_with=store.pruning_state(len(touched))[1], via=via) as note:
        return _prune(store, note, touched, mode, threshold, k, rule, alpha, blame, progress, via, search)


def _prune(store: MemoryStore, note: PendingEdit | None, touched: list[str], mode: PruneMode, threshold: int, k: int,
           rule: VoteRule | str, alpha: float, blame: Blame, progress: Callable[[int], object] | None, via: str,
           search: SelfSearch) -> PruneReport:
    """`prune_store`, noted as `note`, the points pruning marked before (`touched`) unmarked first."""
    _undo_pruning(store, touched)
    # Only the labels, one string each, held through the self-search (minutes at scale): with every point's
    # payload whole, its source too, a 1.28M-point memory of image paths held a few hundred MB more for nothing.
    points, payloads, vectors = self_search_points(store, search, payload_keys=("label",))
    one: dict[str, str] = {}
    labels = [one.setdefault(p["label"], p["label"]) for p in payloads]
    del payloads
    if not points:
        raise ValueError("the memory is empty: nothing to prune")
    k = min(k, len(points) - 1) or 1
    hits = index_self_search(store, points, k, progress=progress) if vectors is None else None
    counts, wrong = wrong_decision_counts(vectors, labels, k, rule, alpha, blame=blame, progress=progress,
                                          hits=hits)
    report = PruneReport(mode=mode, points=len(points), wrong_decisions=int(wrong.sum()), k=k, rule=str(rule),
                         blame=blame, count_max=int(counts.max()), count_mean=float(counts.mean()))
    blamed = counts >= 1
    for c, ids in _group_by_value([p for p, b in zip(points, blamed, strict=True) if b], counts[blamed]).items():
        payload: dict[str, Any] = {COUNT_KEY: int(c)}
        if mode is PruneMode.soft:
            payload[RELIABILITY_KEY] = float(soft_factors(np.array([c]))[0])
        elif c >= threshold:
            payload[EXCLUDED_KEY] = EXCLUDED_VALUE
        # A point forgotten during the self-search (minutes at scale, beside a service on a Qdrant server) is gone.
        store.set_payload_of_existing(ids, payload)
    if mode is PruneMode.soft:
        report.down_weighted = int(blamed.sum())
    else:
        report.threshold = threshold
        report.excluded = int((counts >= threshold).sum())
    store.meta.settings["pruning"] = report.model_dump(mode="json")
    store.save_meta()
    # Journaled before the re-index, which only makes searches fast again (minutes at scale): a process killed
    # during it left the marks in force and the journal saying nothing of them.
    marked = report.down_weighted if mode is PruneMode.soft else report.excluded
    if store.journal.record("prune", points=marked or 0, detail=report.model_dump(mode="json"), via=via):
        store.journal.settled(note)
    _reindex(store)
    return report
