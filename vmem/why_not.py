"""Why a vote did not answer a label the caller expected: `classify(why_not=LABEL)`, `vmem classify --why-not`.

The label's own nearest points come from a search among its points alone (the engine's filter), so they are
found however far past the k they lie; where one lies past the k, one deeper search of the whole memory (up to
the largest k, 1,000) says where it ranks, and at which k the label would win.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from retrieval.store import Neighbor
from retrieval.text import quoted, visible
from retrieval.voting import TIE_RTOL, neighbor_weights

from .results import Classification, FewPoints, VoteSettings, WhyNot, WhyNotPoint

# The contrast label's points shown, nearest first: enough to see whether one stray point or the class is near.
WHY_NOT_POINTS = 5
# The deepest search for ranks: VoteSettings' largest k. A point further than this is in no vote of any k.
RANK_LIMIT = 1000


def explain(label: str, own: Sequence[Neighbor], ranked: Sequence[Neighbor], whole: bool, res: Classification,
            settings: VoteSettings, points: int, few: FewPoints | None, names: Mapping[str, str]) -> WhyNot:
    """Why `res`'s vote did not answer `label`.

    Args:
        label: the label asked about, as stored.
        own: its nearest points, from a search among its points alone, nearest first.
        ranked: the memory's points nearest the query, as far as searched (the k that voted, or deeper), nearest
            first, the vote's k first and in its order.
        whole: `ranked` holds every point a search can return (a deep search that ran out of points).
        res: the answer (its neighbours and scores are the vote's).
        settings: the vote's settings.
        points: the label's points a search can return.
        few: `VisualMemory.few_point_labels` of the label, if it is one.
        names: the memory's label names.
    """
    k = settings.k
    weight = {n.id: n.weight for n in res.neighbors}
    place = {n.id: i for i, n in enumerate(ranked)}
    # Past the deepest search a point's place is unknown; within it, a point the search missed (the index is
    # approximate) is placed by its similarity.
    floor = ranked[-1].similarity if ranked else float("inf")

    def rank_of(p: Neighbor) -> int | None:
        if p.id in place:
            return place[p.id]
        if whole or p.similarity >= floor:
            return sum(1 for q in ranked if q.similarity > p.similarity)
        return None

    nearest = [WhyNotPoint(id=p.id, source=p.source, similarity=p.similarity, rank=rank_of(p),
                           weight=weight.get(p.id, 0.0)) for p in own]
    vote_label = next(iter(res.scores), None)  # the vote's winner: with rerank, `res.label` may be the VLM's
    in_top_k = sum(1 for n in res.neighbors if n.label == label)
    vote_in_top_k = sum(1 for n in res.neighbors if n.label == vote_label)
    wins, checked = _k_that_wins(label, ranked, settings)
    why = WhyNot(label=label, label_name=names.get(label), points=points, nearest=nearest, in_top_k=in_top_k,
                 share=res.scores.get(label, 0.0), vote_label=vote_label,
                 vote_label_name=names.get(vote_label) if vote_label is not None else None,
                 vote_share=res.scores.get(vote_label, 0.0) if vote_label is not None else 0.0,
                 vote_label_in_top_k=vote_in_top_k, k_that_wins=wins, k_checked=checked, few_points=few,
                 reason="")
    vote_first = next((n.rank for n in res.neighbors if n.label == vote_label), None)
    why.reason = _reason(why, k, settings, names, vote_first)
    return why


def note_rerank(res: Classification, names: Mapping[str, str]) -> None:
    """Say, in a re-ranked answer's `why_not`, that it explains the vote and not the VLM's choice."""
    if res.why_not is not None and res.reranked:
        res.why_not.note = (f"the answer is the VLM's, {_named(res.label, names)}: this explains the vote under it "
                            f"(its scores and neighbours, won by {_named(res.why_not.vote_label, names)}), not the "
                            "VLM's choice")


def close_labels(text: str, labels: Iterable[str], names: Mapping[str, str], n: int = 5) -> list[str]:
    """The labels spelled like `text`, or named like it (any of a name's comma-separated synonyms: Tiny-ImageNet
    names n02123045 "tabby, tabby cat"), closest first; case is ignored."""
    by_spelling: dict[str, list[str]] = {}
    for label in labels:
        by_spelling.setdefault(label.casefold(), []).append(label)
        for synonym in names.get(label, "").split(","):
            if synonym.strip():
                by_spelling.setdefault(synonym.strip().casefold(), []).append(label)
    close = difflib.get_close_matches(text.strip().casefold(), list(by_spelling), n=n, cutoff=0.6)
    return list(dict.fromkeys(label for spelling in close for label in by_spelling[spelling]))[:n]


def _k_that_wins(label: str, ranked: Sequence[Neighbor], settings: VoteSettings) -> tuple[int | None, int]:
    """The k nearest to the settings' at which `label` wins a vote over `ranked`'s first k (the smaller of two
    as near), and how many k were looked at; None where it wins at none of them."""
    if not ranked:
        return None, 0
    classes = {lab: i for i, lab in enumerate(dict.fromkeys(n.label for n in ranked))}
    if label not in classes:
        return None, len(ranked)
    assert settings.rule != "dmn"  # refused before any search (VisualMemory.check_why_not)
    winners = winners_at_every_k(np.array([classes[n.label] for n in ranked]),
                                 neighbor_weights(np.array([n.similarity for n in ranked]), settings.rule,
                                                  settings.alpha, settings.tau,
                                                  np.array([n.reliability for n in ranked])
                                                  if settings.soft_pruning else None))
    won = np.flatnonzero(winners == classes[label]) + 1
    return (int(min(won, key=lambda k: (abs(k - settings.k), k))) if len(won) else None), len(ranked)


def winners_at_every_k(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One query's winning class id at each k = 1..K, from its K neighbours' class ids (0..C-1) and weights, best
    first, with `vote`'s tie-break. `vote_all_k` takes many queries a k at a time, ~70 us a k: 70 ms for 1,000;
    one query's running totals are a cumulative sum, a few ms for 1,000 neighbours of 1,000 classes."""
    n = len(ids)
    cells = np.zeros((n, int(ids.max()) + 1))
    cells[np.arange(n), ids] = weights
    totals = np.cumsum(cells, axis=0)  # added in rank order, as `vote` adds them: the same sums
    first = np.full(cells.shape[1], n)
    np.minimum.at(first, ids, np.arange(n))
    present = np.arange(n)[:, None] >= first[None, :]
    best = np.where(present, totals, -np.inf).max(axis=1, keepdims=True)
    tol = np.where(np.isfinite(best), TIE_RTOL * np.abs(best), 0.0)
    tied = present & (totals >= best - tol)
    return np.where(tied, first[None, :], n + 1).argmin(axis=1)


def _named(label: str | None, names: Mapping[str, str]) -> str:
    """A label in a reason or note, escaped once, here: the CLI and the page show the sentence as it is (a name
    holding U+202E had turned the page's why-not sentence backwards; the CLI escaped repr's escapes again)."""
    if label is None:
        return "None"
    return quoted(label) + (f" ({visible(names[label])})" if label in names else "")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def _reason(why: WhyNot, k: int, settings: VoteSettings, names: Mapping[str, str], vote_first: int | None) -> str:
    rule = getattr(settings.rule, "value", settings.rule)
    if why.label == why.vote_label:
        said = (f"it is the {rule} vote's answer: {why.in_top_k} of its points among the k = {k}, share "
                f"{why.share:.2f}")
    elif not why.nearest:
        said = "none of its points can be searched"
    elif why.in_top_k == 0:
        best = why.nearest[0]
        said = (f"its nearest point is the {_ordinal(best.rank + 1)} nearest (rank {best.rank}), outside k = {k}"
                if best.rank is not None else
                f"its nearest point is not among the {RANK_LIMIT:,} nearest (the largest k), similarity "
                f"{best.similarity:.3f}")
    elif why.few_points is not None:
        said = (f"it has {why.points} point{'s' * (why.points != 1)}, too few to win a {rule} vote of k = {k}: "
                "see few_points")
    elif why.share >= why.vote_share - TIE_RTOL * abs(why.vote_share):
        # Tied (`vote`'s tolerance): "outweighed" at "share 0.50 against 0.50" read as a contradiction
        said = (f"its {why.in_top_k} point{'s' * (why.in_top_k != 1)} among the k = {k} (the nearest at rank "
                f"{why.nearest[0].rank}) tie{'s' * (why.in_top_k == 1)} with {why.vote_label_in_top_k} of "
                f"{_named(why.vote_label, names)} (the nearest at rank {vote_first}), share {why.share:.2f} each, "
                "and a tie goes to the label whose nearest point ranks first")
    else:
        # Where each label's nearest point stands: under rank or softmax voting fewer, nearer points outweigh more
        said = (f"its {why.in_top_k} point{'s' * (why.in_top_k != 1)} among the k = {k} (the nearest at rank "
                f"{why.nearest[0].rank}) {'are' if why.in_top_k != 1 else 'is'} outweighed by "
                f"{why.vote_label_in_top_k} of {_named(why.vote_label, names)} (the nearest at rank {vote_first}): "
                f"share {why.share:.2f} against {why.vote_share:.2f}")
    if why.label != why.vote_label and why.k_that_wins is not None:
        said += f"; it would win at k = {why.k_that_wins}"
    return said
