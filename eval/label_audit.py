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
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, MemoryStore, VoteRule
from retrieval.voting import neighbor_weights, vote_all_k

from .scoring import EXACT_SELF_SEARCH_MAX, class_index, read_vectors, self_search, table_from_hits

DEFAULT_K = 50
EXACT_AUDIT_MAX = EXACT_SELF_SEARCH_MAX  # above it, `audit_labels` asks the index
AUDIT_PAGE = 256  # points per page of index searches: 38 MB at the peak on the Tiny-ImageNet memory, 111 at 1,024
AuditSearch = Literal["auto", "exact", "index"]
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
    vectors: np.ndarray,
    labels: list[str],
    k: int = DEFAULT_K,
    alpha: float = DEFAULT_ALPHA,
    block: int = 4096,
    progress: Callable[[int], None] | None = None,
    hits: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    """For each row, the rank vote of its k nearest other rows: (the best label other than its own, that
    label's share of the weight, its own label's share).

    `hits`: the memory's `self_search` with k columns, when the caller shares one search (else made here).
    """
    n = len(labels)
    classes, pos = class_index(labels)
    own = np.array([pos[lab] for lab in labels], dtype=np.int64)
    idx, sims = hits if hits is not None else self_search(vectors, max(1, min(k, n - 1)), progress)
    label_ids = table_from_hits(idx, sims, labels, classes).label_ids
    other = np.empty(n, dtype=np.int64)
    share = np.zeros(n)
    own_share = np.zeros(n)
    for s in range(0, n, block):
        other[s : s + block], share[s : s + block], own_share[s : s + block] = votes_of_neighbours(
            label_ids[s : s + block], sims[s : s + block], own[s : s + block], len(classes), alpha)
    suggested = [classes[c] if c >= 0 else None for c in other]
    return suggested, share, own_share


def votes_of_neighbours(label_ids: np.ndarray, sims: np.ndarray, own: np.ndarray, n_classes: int,
                        alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of neighbours' class ids (-1: none) and similarities, each row a point's others, best first; and each
    point's own class id. Returns per point the best class other than its own (-1: none), its share of the rank
    vote's weight, and the own class's share."""
    mine = own[:, None]
    w = np.where(label_ids >= 0, neighbor_weights(sims, VoteRule.rank, alpha), 0.0)
    total = np.maximum(w.sum(axis=1), 1e-12)
    # The vote among the other labels (the point's own taken out): classify's rule and tie-break.
    best = vote_all_k(np.where(label_ids == mine, -1, label_ids), sims, VoteRule.rank, n_classes, alpha)[:, -1]
    share = np.where((label_ids == best[:, None]) & (best[:, None] >= 0), w, 0.0).sum(axis=1) / total
    return best, share, np.where(label_ids == mine, w, 0.0).sum(axis=1) / total


def audit_labels(store: MemoryStore, k: int = DEFAULT_K, alpha: float = DEFAULT_ALPHA,
                 progress: Callable[[int], None] | None = None, search: AuditSearch = "auto") -> LabelVotes:
    """Every point's leave-one-out vote over the whole memory.

    `search`: "exact" reads every vector into RAM and searches them all against all (as pruning does): its
    time grows with the square of the points (23 s at 50,000 x 384 on 2 cores, hours at 1.28M). "index"
    asks the memory's own index for each point's k + 1 nearest, a page of points at a time: time grows with
    the points and RAM holds one page, at the index's recall (its hard-pruned points, out of every search, do
    not vote). "auto": exact up to `EXACT_AUDIT_MAX` points, the index above.

    Example:
        >>> votes = audit_labels(open_store("./memory"))
        >>> for s in votes.suspects(min_share=0.8)[:20]:
        ...     print(s.source, s.label, "->", s.suggested)
    """
    if search == "index" or (search == "auto" and store.count() > EXACT_AUDIT_MAX):
        return _audit_by_index(store, k, alpha, progress)
    ids, payloads, vectors = read_vectors(store)
    if len(ids) < 2:
        raise ValueError("the memory holds fewer than 2 points: no point has neighbours to vote")
    labels = [p["label"] for p in payloads]
    suggested, share, own_share = leave_one_out_votes(vectors, labels, k, alpha, progress=progress)
    return LabelVotes(ids=ids, labels=labels, sources=[p["source"] for p in payloads], suggested=suggested,
                      share=share.tolist(), own_share=own_share.tolist())


def _audit_by_index(store: MemoryStore, k: int, alpha: float,
                    progress: Callable[[int], None] | None) -> LabelVotes:
    if store.count() < 2:
        raise ValueError("the memory holds fewer than 2 points: no point has neighbours to vote")
    pos: dict[str, int] = {}  # class ids, given as labels are met: the vote's tie-break does not read them
    ids: list[str] = []
    labels: list[str] = []
    sources: list[str] = []
    other: list[np.ndarray] = []
    share: list[np.ndarray] = []
    own_share: list[np.ndarray] = []
    for page in store.scroll(batch_size=AUDIT_PAGE, with_vectors=True):
        found = store.query_batch(np.stack([p.vector for p in page]), k + 1)
        label_ids = np.full((len(page), k), -1, dtype=np.int64)
        sims = np.zeros((len(page), k))
        for row, (point, neighbours) in enumerate(zip(page, found, strict=True)):
            others = [n for n in neighbours if n.id != point.id][:k]  # itself left out, as exact search does
            label_ids[row, : len(others)] = [pos.setdefault(n.label, len(pos)) for n in others]
            sims[row, : len(others)] = [n.similarity for n in others]
        own = np.array([pos.setdefault(p.label, len(pos)) for p in page], dtype=np.int64)
        best, best_share, mine = votes_of_neighbours(label_ids, sims, own, len(pos), alpha)
        other.append(best)
        share.append(best_share)
        own_share.append(mine)
        ids += [p.id for p in page]
        labels += [p.label for p in page]
        sources += [p.source for p in page]
        if progress:
            progress(len(page))
    classes = list(pos)
    return LabelVotes(ids=ids, labels=labels, sources=sources,
                      suggested=[classes[c] if c >= 0 else None for c in np.concatenate(other)],
                      share=np.concatenate(share).tolist(), own_share=np.concatenate(own_share).tolist())
