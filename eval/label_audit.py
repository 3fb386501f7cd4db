"""Finding the memory points that are probably mislabelled: the rest of the memory votes them another label.

Each point queries the memory with its own hit left out (exact search over the memory's vectors, as pruning
does) and the k nearest others vote by rank (w = 1/(alpha + i)). A point is a *suspect* when that vote
picks another label with at least `min_share` of the vote weight. Suspects are listed most confident
first, each with the label its neighbours suggest, for a person to check and correct (`vmem relabel`).

This differs from pruning's blame count: pruning asks which points keep misleading *other* points'
decisions; this asks which points' *own* label the rest of the memory disagrees with, which is what a
wrong label looks like. On Tiny-ImageNet with 2 % of labels flipped at random, this ranking finds the
flipped ones far better than the blame count does (docs/results/eval.md, "Finding mislabelled points";
`vmem experiment label-noise`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, MemoryStore, VoteRule
from retrieval.text import short_repr
from retrieval.voting import neighbor_weights, vote_last_k

from .scoring import (
    SelfSearch,
    class_index,
    index_self_search,
    self_search,
    self_search_points,
    table_from_hits,
)

DEFAULT_K = 50
DEFAULT_MIN_SHARE = 0.5


class Suspect(BaseModel):
    """A point whose neighbours vote another label than its own."""

    id: str = Field(description="point id")
    label: str = Field(description="the point's label")
    suggested: str = Field(description="the label the rest of the memory votes for it")
    share: float = Field(description="the suggested label's share of the neighbours' vote weight (0 to 1)")
    own_share: float = Field(description="the point's own label's share of that vote")
    source: str = Field(description="the point's image")


class LabelVotes(BaseModel):
    """Every point's leave-one-out vote: its own label's share, and the best other label's."""

    ids: list[str]
    labels: list[str]
    sources: list[str]
    suggested: list[str | None] = Field(description="per point, the label other than its own with the most "
                                                    "weight (None when every neighbour shares its label)")
    share: list[float] = Field(description="that label's share of the vote weight")
    own_share: list[float] = Field(description="the point's own label's share")

    def __repr__(self) -> str:
        """Six lists of one item a point, cut short: shown whole, a memory of 20,000 points filled a notebook's
        cell with megabytes. `suspects()` is what to read."""
        return short_repr(self)

    __str__ = __repr__

    def suspects(self, min_share: float = DEFAULT_MIN_SHARE) -> list[Suspect]:
        """Points whose neighbours give another label at least `min_share` of the weight, and more than their
        own label: most confident first."""
        found = [Suspect(id=i, label=lab, suggested=sug, share=round(sh, 4), own_share=round(own, 4), source=src)
                 for i, lab, src, sug, sh, own in zip(self.ids, self.labels, self.sources, self.suggested,
                                                      self.share, self.own_share, strict=True)
                 if sug is not None and sh >= min_share and sh > own]
        return sorted(found, key=lambda s: (-s.share, s.own_share, s.id))

    def suspicion(self) -> np.ndarray:
        """float [n] in [-1, 1]: the best other label's share minus the point's own. Ranks every point by how
        strongly its neighbours vote against its label; positive where another label outweighs it."""
        return np.asarray(self.share) - np.asarray(self.own_share)


def leave_one_out_votes(
    vectors: np.ndarray | None,
    labels: list[str],
    k: int = DEFAULT_K,
    alpha: float = DEFAULT_ALPHA,
    block: int = 4096,
    progress: Callable[[int], object] | None = None,
    hits: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    """For each row, the rank vote of its k nearest other rows: (the best label other than its own, that
    label's share of the weight, its own label's share).

    `hits`: the memory's `self_search` (or `index_self_search`) with k columns, when the caller has one (else
    made here from `vectors`).
    """
    n = len(labels)
    classes, pos = class_index(labels)
    own = np.array([pos[lab] for lab in labels], dtype=np.int64)
    if hits is None and vectors is None:
        raise ValueError("give the vectors to search, or their search's hits")
    idx, sims = hits if hits is not None else self_search(vectors, max(1, min(k, n - 1)), progress)  # type: ignore[arg-type]  # not None without hits (above)
    label_ids = table_from_hits(idx, sims, labels, classes).label_ids
    other = np.empty(n, dtype=np.int64)
    share = np.zeros(n)
    own_share = np.zeros(n)
    for s in range(0, n, block):
        ids, sim, mine = label_ids[s : s + block], sims[s : s + block], own[s : s + block, None]
        w = np.where(ids >= 0, neighbor_weights(sim, VoteRule.rank, alpha), 0.0)
        total = np.maximum(w.sum(axis=1), 1e-12)
        # The vote among the other labels (the point's own taken out): classify's rule and tie-break.
        best = vote_last_k(np.where(ids == mine, -1, ids), sim, VoteRule.rank, len(classes), alpha)
        other[s : s + block] = best
        share[s : s + block] = np.where((ids == best[:, None]) & (best[:, None] >= 0), w, 0.0).sum(axis=1) / total
        own_share[s : s + block] = np.where(ids == mine, w, 0.0).sum(axis=1) / total
    suggested = [classes[c] if c >= 0 else None for c in other]
    return suggested, share, own_share


def audit_labels(store: MemoryStore, k: int = DEFAULT_K, alpha: float = DEFAULT_ALPHA,
                 progress: Callable[[int], object] | None = None, search: SelfSearch = "auto") -> LabelVotes:
    """Every point's leave-one-out vote over the whole memory.

    `search`: "exact" reads every vector into RAM and searches them all against all (as pruning does): its
    time grows with the square of the points (23 s at 50,000 x 384 on 2 cores, hours at 1.28M). "index"
    asks the memory's own index for each point's k + 1 nearest (`index_self_search`): time grows with the
    points, RAM holds one page of vectors, at the index's recall. "auto": exact up to `EXACT_SELF_SEARCH_MAX`
    points, the index above. Either way hard-pruned points, out of every search, are left out.

    Example:
        >>> votes = audit_labels(open_store("./memory"))
        >>> for s in votes.suspects(min_share=0.8)[:20]:
        ...     print(s.source, s.label, "->", s.suggested)
    """
    # Hard-pruned points are out of every search: they neither vote nor are audited, by either search (exact
    # search had them vote, the index did not, so the two gave different suspects on a pruned memory).
    ids, payloads, vectors = self_search_points(store, search, searchable_only=True)
    labels, sources = [p["label"] for p in payloads], [p["source"] for p in payloads]
    if len(ids) < 2:
        raise ValueError("the memory holds fewer than 2 points: no point has neighbours to vote")
    hits = index_self_search(store, ids, min(k, len(ids) - 1), progress=progress) if vectors is None else None
    suggested, share, own_share = leave_one_out_votes(vectors, labels, k, alpha, progress=progress, hits=hits)
    return LabelVotes(ids=ids, labels=labels, sources=sources, suggested=suggested, share=share.tolist(),
                      own_share=own_share.tolist())
