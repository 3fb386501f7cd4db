"""Scoring a memory on labelled queries: one search at k_max, then every rule at every k.

The search runs once per query (k_max = 100 neighbours). Exact search (`eval.exact`) is a blocked matrix
product plus a two-step top-k, so results do not depend on an index's recall; for memories
that do not fit in RAM the Qdrant index answers instead (`neighbors_from_store`). From the neighbour
table, `score` computes, vectorised over queries:

* accuracy of each rule (and its soft-pruned variant when points carry reliability factors) at
  every k = 1..k_max, the best k per rule, and the table at k = 10, 20, ..., 100;
* hit rate at k: a right label among the first k neighbours (the ceiling any re-ranker has);
* accuracy of the i-th neighbour alone (how reliability falls with rank);
* calibration: accuracy against the plurality count (how many of the k neighbours agree);
* for the decision classify makes (`per_class`): how far its confidence, the answer's vote share, can be trusted
  (`eval.selective`: risk-coverage, the threshold for a target accuracy, reliability bins and ECE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, MemoryStore, VoteRule, neighbor_weights, vote_all_k, vote_last_k
from retrieval.store import EXCLUDED_KEY, RELIABILITY_KEY, SCROLL_PAGE

from .exact import exact_search as exact_search  # re-exported: eval and its experiments read it here
from .selective import Selective, selective_scores

K_MAX = 100
# Above this many points, self-searches (pruning, the label audit) ask the memory's index: exact search's time
# grows with the square of the points (22 s at 50,000 x 384 on 2 cores), the index's with the points (1 ms each).
EXACT_SELF_SEARCH_MAX = 100_000
SelfSearch = Literal["auto", "exact", "index"]  # how a self-search finds each point's neighbours
TABLE_KS = tuple(range(10, 101, 10))
SOFT_SUFFIX = "+soft"


# ------------------------------------------------------------------------------------ memory


# The payload keys evaluation, pruning and the label audit read: a point's tags and times are left in the store
# (at 1.28M points, holding every payload whole cost a few hundred MB more for nothing).
SEARCH_PAYLOAD_KEYS = ("label", "source", EXCLUDED_KEY, RELIABILITY_KEY)


def read_vectors(store: MemoryStore, searchable_only: bool = False, progress: Callable[[int], object] | None = None,
                 payload_keys: Sequence[str] = SEARCH_PAYLOAD_KEYS
                 ) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
    """Every point's id, payload (`payload_keys` of it) and vector (hard-pruned points left out when
    `searchable_only`), the vectors as the rows of one float32 matrix.

    The rows are filled as the pages are read. Stacking per-point arrays afterwards, as this did before, held
    3x the matrix's bytes at its peak (the arrays, the stack, its float32 copy): 6 GB rather than 2 for
    1.28M x 384, in every evaluation, audit and pruning of a memory read into RAM.
    """
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []

    def keep(point_id: str, payload: dict[str, Any]) -> None:
        ids.append(point_id)
        payloads.append(payload)

    rows = _fill_rows(store, searchable_only, payload_keys, keep, progress)
    return ids, payloads, rows


def _fill_rows(store: MemoryStore, searchable_only: bool, payload_keys: Sequence[str],
               keep: Callable[[str, dict[str, Any]], None], progress: Callable[[int], object] | None) -> np.ndarray:
    """The vectors of every point (hard-pruned ones left out when `searchable_only`) as the rows of one float32
    matrix, filled a page at a time; `keep(id, payload)` is called for each row, in order."""
    rows = np.empty((store.count(searchable=searchable_only), store.dim), np.float32)
    n = 0
    asked = list(dict.fromkeys([*payload_keys, EXCLUDED_KEY] if searchable_only else payload_keys))
    for batch in store.scroll(batch_size=SCROLL_PAGE, with_vectors=True, payload_keys=asked):
        for p in batch:
            if searchable_only and p.payload.get(EXCLUDED_KEY):
                continue
            if n == len(rows):  # points added while reading (a memory shared on a server)
                rows = np.concatenate([rows, np.empty((max(len(rows) // 4, SCROLL_PAGE), rows.shape[1]), np.float32)])
            rows[n] = p.vector
            keep(p.id, p.payload)
            n += 1
        if progress:
            progress(len(batch))
    # Points forgotten while reading leave rows unused: keep the matrix's bytes to what is returned.
    used = rows[:n]
    return used.copy() if n < 0.9 * len(rows) else used


def as_compared(queries: np.ndarray, vectors_dtype: str) -> np.ndarray:
    """Queries as a memory that compares in `vectors_dtype` (`MemoryStore.compared_dtype`) compares them: unit
    length (cosine similarity: the engines compare directions; a longer query had scored its length times the
    cosines), then rounded to float16 where the engine (embedded, or a server's) rounds it against float16
    vectors. Unrounded, similarities were up to 1e-4 off the memory's own and near neighbours changed places (a
    seventh of Tiny-ImageNet val queries at k = 50): exact evaluation and tuning did not score the neighbours
    `vmem classify --exact` votes over."""
    q = np.asarray(queries, dtype=np.float32)
    # Scaled as Qdrant scales a query for cosine (`cosine_preprocess`): a row of squared length within 1e-6 of 1, or
    # of none, as it is. Scaled anyway, an encoder's unit rows changed in their last bits, and some of them then
    # rounded to the other float16.
    squared = np.einsum("ij,ij->i", q, q)
    as_is = (np.abs(squared - 1.0) <= 1e-6) | (squared < np.finfo(np.float32).eps)
    q = np.where(as_is[:, None], q, q / np.sqrt(np.where(as_is, 1.0, squared))[:, None]).astype(np.float32)
    return q.astype(np.float16).astype(np.float32) if vectors_dtype == "float16" else q


@dataclass
class MemoryArrays:
    """A memory as arrays: what exact search needs (vectors, labels, ids, soft-pruning factors)."""

    features: np.ndarray  # float32 [n, dim], L2-normalised
    labels: list[str]
    ids: list[str]
    reliability: np.ndarray | None = None  # float64 [n]; None = every point 1
    vectors_dtype: str = "float32"  # as the store compares them (`compared_dtype`): queries are compared so too
    # `SOURCE: REASON` of a dataset's images left out of it (`memory_from_dataset`), escaped, for the run to say
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_store(cls, store: MemoryStore, progress: Callable[[int], object] | None = None) -> MemoryArrays:
        """Every point the store would search (hard-pruned points left out), with its vector."""
        # Only what exact search reads, and no payload kept whole: with every point's source and payload held
        # while the vectors were read, the peak was the matrix plus ~0.5 KB a point (docs/benchmarks/big_memory.py)
        ids: list[str] = []
        labels: list[str] = []
        one: dict[str, str] = {}  # each label one string, not one a point
        reliability: list[float] = []

        def keep(point_id: str, payload: dict[str, Any]) -> None:
            ids.append(point_id)
            labels.append(one.setdefault(payload["label"], payload["label"]))
            reliability.append(float(payload.get(RELIABILITY_KEY, 1.0)))

        vectors = _fill_rows(store, True, ("label", EXCLUDED_KEY, RELIABILITY_KEY), keep, progress)
        r = np.asarray(reliability, dtype=np.float64)
        return cls(vectors, labels, ids, r if np.any(r != 1.0) else None, store.compared_dtype)

    def subset(self, mask: np.ndarray) -> MemoryArrays:
        idx = np.flatnonzero(mask)
        return MemoryArrays(self.features[idx], [self.labels[i] for i in idx], [self.ids[i] for i in idx],
                            None if self.reliability is None else self.reliability[idx], self.vectors_dtype)

    def only_labels(self, labels: Sequence[str]) -> MemoryArrays:
        keep = set(labels)
        return self.subset(np.array([lab in keep for lab in self.labels], dtype=bool))


# ------------------------------------------------------------------------------------ search


@dataclass
class NeighborTable:
    """Each query's k_max neighbours as arrays, best first (-1 = no neighbour)."""

    label_ids: np.ndarray  # int64 [n, K], into `classes`
    similarities: np.ndarray  # float32 [n, K]
    classes: list[str]
    reliability: np.ndarray | None = None  # float64 [n, K]
    point_ids: list[list[str]] | None = None

    @property
    def k_max(self) -> int:
        return self.label_ids.shape[1]


def class_index(labels: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    classes = sorted(set(labels))
    return classes, {c: i for i, c in enumerate(classes)}


def neighbors_exact(
    queries: np.ndarray,
    memory: MemoryArrays,
    classes: list[str],
    k: int = K_MAX,
    exclude: np.ndarray | None = None,
    progress: Callable[[int], object] | None = None,
) -> NeighborTable:
    """Exact neighbours from the memory's vectors, labelled with ids into `classes`."""
    idx, sims = exact_search(as_compared(queries, memory.vectors_dtype), memory.features, k, exclude,
                             progress=progress)
    return table_from_hits(idx, sims, memory.labels, classes, memory.reliability)


def neighbors_exact_paged(store: MemoryStore, queries: np.ndarray, classes: list[str], k: int = K_MAX,
                          page: int = SCROLL_PAGE) -> tuple[NeighborTable, list[str]]:
    """`neighbors_exact` over the memory's searchable points read `page` vectors at a time: the same neighbours
    (a tie across pages goes to the earlier page, in the store's id order; within a page, as `exact_search` orders
    it, as `neighbors_exact` did) with one page of vectors in RAM, where
    `MemoryArrays.from_store` holds them all (6.5 GB at 1.28M x 1280) for a few dozen queries. Returns the
    table and the labels of the points searched, one per point."""
    q = np.ascontiguousarray(as_compared(queries, store.compared_dtype))
    best_idx, best_sims = np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
    labels: list[str] = []
    reliability: list[float] = []
    for batch in store.scroll(batch_size=page, with_vectors=True, payload_keys=SEARCH_PAYLOAD_KEYS):
        kept = [p for p in batch if not p.payload.get(EXCLUDED_KEY)]
        if not kept:
            continue
        # Every point read with_vectors has its vector
        idx, sims = exact_search(q, np.stack([cast(np.ndarray, p.vector) for p in kept]), k)
        idx = np.where(idx >= 0, idx + len(labels), -1)
        labels += [p.payload["label"] for p in kept]
        reliability += [float(p.payload.get(RELIABILITY_KEY, 1.0)) for p in kept]
        # The best so far, from earlier rows, go first: a stable sort keeps ties in row order; padding goes last.
        idx, sims = np.concatenate([best_idx, idx], axis=1), np.concatenate([best_sims, sims], axis=1)
        order = np.argsort(np.where(idx >= 0, -sims, np.inf), axis=1, kind="stable")[:, :k]
        best_idx, best_sims = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sims, order, axis=1)
    if best_idx.shape[1] < k:  # fewer points than k: padded as exact search pads
        pad = k - best_idx.shape[1]
        best_idx = np.concatenate([best_idx, np.full((len(q), pad), -1, np.int64)], axis=1)
        best_sims = np.concatenate([best_sims, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
    r = np.asarray(reliability, dtype=np.float64)
    return table_from_hits(best_idx, best_sims, labels, classes, r if np.any(r != 1.0) else None), labels


def self_search(features: np.ndarray, k: int, progress: Callable[[int], object] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """A memory queried against itself: each row's k nearest other rows (exact, its own row left out), as
    `exact_search` answers. The neighbours do not depend on the labels: one search serves every labelling."""
    feats = np.asarray(features, np.float32)
    return exact_search(feats, feats, k, exclude=np.arange(len(feats)), progress=progress)


def asks_index(store: MemoryStore, search: SelfSearch) -> bool:
    """Whether a self-search of this memory goes through its index ("auto": above `EXACT_SELF_SEARCH_MAX`)."""
    return search == "index" or (search == "auto" and store.count() > EXACT_SELF_SEARCH_MAX)


def self_search_points(store: MemoryStore, search: SelfSearch, searchable_only: bool = False,
                       payload_keys: Sequence[str] = SEARCH_PAYLOAD_KEYS
                       ) -> tuple[list[str], list[dict[str, Any]], np.ndarray | None]:
    """What a self-search (pruning, the label audit) reads: every point's id and payload (`payload_keys` of it),
    and for exact search their vectors (`read_vectors`); through the index, no vectors (`index_self_search` reads
    them a page at a time). `searchable_only`: hard-pruned points left out."""
    if not asks_index(store, search):
        return read_vectors(store, searchable_only=searchable_only, payload_keys=payload_keys)
    asked = list(dict.fromkeys([*payload_keys, EXCLUDED_KEY] if searchable_only else payload_keys))
    points = [p for page in store.scroll(batch_size=SCROLL_PAGE, payload_keys=asked) for p in page
              if not (searchable_only and p.payload.get(EXCLUDED_KEY))]
    return [p.id for p in points], [p.payload for p in points], None


def index_self_search(store: MemoryStore, ids: Sequence[str], k: int, page: int = 256,
                      progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`self_search` through the memory's index: each point's k nearest other points (rows of `ids`, -1 where
    fewer, or a point missing from `ids`), a page of points at a time. Its time grows with the points where
    exact search's grows with their square, and RAM holds one page of vectors (plus the int32/float32 hits).
    256 points a page: the label audit's peak on the Tiny-ImageNet memory was 38 MB, 111 MB at 1,024."""
    row = {point_id: i for i, point_id in enumerate(ids)}
    idx = np.full((len(ids), k), -1, dtype=np.int32)
    sims = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for batch in store.scroll(batch_size=page, with_vectors=True):
        found = store.query_batch(np.stack([p.vector for p in batch]), k + 1)  # type: ignore[misc]  # with_vectors: each has its vector
        for point, neighbours in zip(batch, found, strict=True):
            if (r := row.get(point.id)) is None:  # added after `ids` was read
                continue
            others = [(row.get(n.id, -1), n.similarity) for n in neighbours if n.id != point.id][:k]
            if others:
                idx[r, : len(others)], sims[r, : len(others)] = zip(*others, strict=True)
        if progress:
            progress(len(batch))
    return idx, sims


def table_from_hits(idx: np.ndarray, sims: np.ndarray, memory_labels: Sequence[str], classes: list[str],
                    reliability: np.ndarray | None = None) -> NeighborTable:
    """`exact_search`'s hits (row indices into a memory with these labels, -1 for padding) as a table."""
    pos = {c: i for i, c in enumerate(classes)}
    mem_ids = np.array([pos[lab] for lab in memory_labels], dtype=np.int64)
    valid = idx >= 0
    # Indexed through the valid entries only: an empty memory (a restriction to classes it lacks, every point
    # pruned) has no row 0.
    label_ids = np.full(idx.shape, -1, dtype=np.int64)
    label_ids[valid] = mem_ids[idx[valid]]
    rel = None
    if reliability is not None:
        rel = np.zeros(idx.shape)
        rel[valid] = reliability[idx[valid]]
    return NeighborTable(label_ids, sims, classes, rel)


def neighbors_from_store(
    store: MemoryStore,
    queries: np.ndarray,
    classes: list[str],
    k: int = K_MAX,
    labels: Sequence[str] | None = None,
    batch: int = 256,
    progress: Callable[[int], object] | None = None,
) -> NeighborTable:
    """Neighbours from the Qdrant index (for memories too large to hold in RAM)."""
    pos = {c: i for i, c in enumerate(classes)}
    n = len(queries)
    label_ids = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    rel = np.zeros((n, k))
    point_ids: list[list[str]] = []
    for start in range(0, n, batch):
        for i, neigh in enumerate(store.query_batch(queries[start : start + batch], k, labels), start=start):
            label_ids[i, : len(neigh)] = [pos[nb.label] for nb in neigh]
            sims[i, : len(neigh)] = [nb.similarity for nb in neigh]
            rel[i, : len(neigh)] = [nb.reliability for nb in neigh]
            point_ids.append([nb.id for nb in neigh])
        if progress:
            progress(min(batch, n - start))
    soft = np.any((rel != 1.0) & (label_ids >= 0))
    return NeighborTable(label_ids, sims, classes, rel if soft else None, point_ids)


# ------------------------------------------------------------------------------------ scoring


class RuleBest(BaseModel):
    rule: str
    best_k: int
    best_accuracy: float
    at_k: dict[int, float] = Field(description="accuracy at k = 10, 20, ..., 100")


class CalibrationBin(BaseModel):
    votes: int = Field(description="neighbours (of k) agreeing with the plurality winner")
    queries: int
    accuracy: float | None


class ClassScore(BaseModel):
    """How one class's queries fared under one decision rule (its `label` is their first right label)."""

    label: str
    queries: int
    correct: int
    accuracy: float
    confused_with: dict[str, int] = Field(description="where its wrong answers went: label -> queries, top 3")


class PerClass(BaseModel):
    """Per-class accuracy for one rule at one k, hardest classes first."""

    rule: str
    k: int
    classes: list[ClassScore]


class QueryDecisions(BaseModel):
    """Each query's answer under the per-class decision (rule at k), in query order: what predictions.csv holds.
    Not in results.json (50,000 rows for ImageNet's val)."""

    rule: str
    k: int
    predicted: list[str | None] = Field(description="the label decided (None: no neighbours)")
    correct: list[bool]
    nearest: list[str | None] = Field(description="the first neighbour's label")
    nearest_similarity: list[float | None]
    confidence: list[float] = Field(default_factory=list, description="the answer's vote share (0: no answer), as "
                                    "classify's `confidence`")


class Scores(BaseModel):
    """Everything measured on one neighbour table (fractions in [0, 1])."""

    n_queries: int
    k_max: int
    accuracy: dict[str, list[float]] = Field(description="rule -> accuracy at k = 1..k_max")
    best: dict[str, RuleBest]
    hit_rate: list[float] = Field(description="a right label among the first k neighbours, k = 1..k_max")
    neighbor_accuracy: list[float] = Field(description="the i-th neighbour's label alone, i = 0..k_max-1")
    calibration_k: int
    calibration: list[CalibrationBin]
    per_class: PerClass | None = None
    selective: Selective | None = Field(default=None, description="the per-class decision's confidence (vote "
                                        "share): risk-coverage, coverage at a target accuracy, ECE")
    # Per query: to compare two runs query by query, or to look at the misses (kept out of results.json).
    decisions: QueryDecisions | None = Field(default=None, exclude=True)


def correctness(pred_ids: np.ndarray, truth: np.ndarray, accepted: np.ndarray | None = None) -> np.ndarray:
    """Boolean [n, K]: is each predicted class id right for its query (row)?

    Args:
        pred_ids: int [n, K] class ids (-1 = none, always wrong).
        truth: int [n] true class ids (-1 = a class the memory does not know).
        accepted: optional bool [n, n_classes] of every right class (ImageNet-ReaL).
    """
    if accepted is None:
        return (pred_ids == truth[:, None]) & (pred_ids >= 0)
    rows = np.arange(len(pred_ids))[:, None]
    return accepted[rows, np.maximum(pred_ids, 0)] & (pred_ids >= 0)


def predictions(
    table: NeighborTable,
    rule: VoteRule | str,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    soft: bool = False,
    block: int = 4096,
) -> np.ndarray:
    """int64 [n, K]: the rule's prediction with the first k neighbours, for every k (blocked over queries)."""
    n = len(table.label_ids)
    out = np.empty_like(table.label_ids)
    for s in range(0, n, block):
        rel = table.reliability[s : s + block] if soft and table.reliability is not None else None
        out[s : s + block] = vote_all_k(table.label_ids[s : s + block], table.similarities[s : s + block], rule,
                                        len(table.classes), alpha, tau, rel)
    return out


def final_predictions(table: NeighborTable, rule: VoteRule | str, alpha: float = DEFAULT_ALPHA,
                      tau: float = DEFAULT_TAU, block: int = 4096) -> np.ndarray:
    """int64 [n]: `predictions(...)[:, -1]`, the rule's prediction with all K neighbours, alone."""
    n = len(table.label_ids)
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        out[s : s + block] = vote_last_k(table.label_ids[s : s + block], table.similarities[s : s + block], rule,
                                         len(table.classes), alpha, tau)
    return out


def score(
    table: NeighborTable,
    truth: np.ndarray,
    accepted: np.ndarray | None = None,
    rules: Sequence[VoteRule | str] = tuple(VoteRule),
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    calibration_k: int = 10,
    per_class: tuple[VoteRule | str, int] | tuple[VoteRule | str, int, bool] | None = None,
) -> Scores:
    """All rules at all k on one neighbour table; with `per_class` (rule, k[, soft pruning]), each class's
    accuracy under it (soft: the soft-pruned variant where points carry reliability factors, as classify votes).

    Example:
        >>> s = score(table, truth)
        >>> s.best["rank"].best_k, s.accuracy["softmax"][49]   # accuracy at k = 50
    """
    n, kmax = table.label_ids.shape
    acc: dict[str, list[float]] = {}
    variants = [(VoteRule(r), False) for r in rules]
    if table.reliability is not None:
        variants += [(VoteRule(r), True) for r in rules]
    chosen = decisions = selective = None
    # The per-class decision's variant: soft where asked and the points carry reliability factors.
    per_class_soft = per_class is not None and len(per_class) > 2 and bool(per_class[2]) \
        and table.reliability is not None
    for rule, soft in variants:
        pred = predictions(table, rule, alpha, tau, soft)
        right = correctness(pred, truth, accepted)
        acc[rule.value + (SOFT_SUFFIX if soft else "")] = right.mean(axis=0).tolist() if n else [0.0] * kmax
        if per_class is not None and soft == per_class_soft and rule == VoteRule(per_class[0]):
            k = min(per_class[1], kmax)
            chosen = PerClass(rule=rule.value + (SOFT_SUFFIX if soft else ""), k=k,
                              classes=class_scores(pred[:, k - 1], right[:, k - 1], truth, table.classes))
            confidence = winner_share(table, pred[:, k - 1], k, rule, alpha, tau, soft)
            decisions = query_decisions(table, chosen.rule, k, pred[:, k - 1], right[:, k - 1])
            decisions.confidence = [round(c, 6) for c in confidence.tolist()]
            selective = selective_scores(confidence, right[:, k - 1], chosen.rule, k)
    best = {}
    for name, curve in acc.items():
        b = int(np.argmax(curve))  # the smallest k reaching the best accuracy
        best[name] = RuleBest(rule=name, best_k=b + 1, best_accuracy=curve[b],
                              at_k={k: curve[k - 1] for k in TABLE_KS if k <= kmax})
    neighbor_right = correctness(table.label_ids, truth, accepted)
    hit = np.maximum.accumulate(neighbor_right, axis=1).mean(axis=0) if n else np.zeros(kmax)
    cal_k = min(calibration_k, kmax)
    calib: list[CalibrationBin] = []
    if n:
        plur = predictions(table, VoteRule.plurality)[:, cal_k - 1]
        # A query without neighbours has no winner (-1): its padding must not count as agreeing votes.
        votes = ((table.label_ids[:, :cal_k] == plur[:, None]) & (plur[:, None] >= 0)).sum(axis=1)
        right = correctness(plur[:, None], truth, accepted)[:, 0]
        for v in range(1, cal_k + 1):
            sel = votes == v
            calib.append(CalibrationBin(votes=v, queries=int(sel.sum()),
                                        accuracy=float(right[sel].mean()) if sel.any() else None))
    return Scores(n_queries=n, k_max=kmax, accuracy=acc, best=best, hit_rate=hit.tolist(),
                  neighbor_accuracy=(neighbor_right.mean(axis=0) if n else np.zeros(kmax)).tolist(),
                  calibration_k=cal_k, calibration=calib, per_class=chosen, selective=selective,
                  decisions=decisions)


def winner_share(table: NeighborTable, winners: np.ndarray, k: int, rule: VoteRule | str,
                 alpha: float = DEFAULT_ALPHA, tau: float = DEFAULT_TAU, soft: bool = False) -> np.ndarray:
    """float [n]: each query's answer's vote share among its first k neighbours, as `vote` scores it (the
    answer's `confidence`); 0 for a query with no answer (`winners` -1)."""
    ids = table.label_ids[:, :k]
    rel = table.reliability[:, :k] if soft and table.reliability is not None else None
    w = np.where(ids >= 0, neighbor_weights(table.similarities[:, :k], rule, alpha, tau, rel), 0.0)
    total = w.sum(axis=1)
    mine = np.where((ids == winners[:, None]) & (winners[:, None] >= 0), w, 0.0).sum(axis=1)
    return np.divide(mine, total, out=np.zeros_like(total), where=total > 0)


def query_decisions(table: NeighborTable, rule: str, k: int, pred: np.ndarray, right: np.ndarray) -> QueryDecisions:
    """Each query's decided label and first neighbour, from its predicted class ids (-1: none)."""
    first = table.label_ids[:, 0] if table.k_max else np.full(len(pred), -1)

    def label(i: int) -> str | None:
        return table.classes[i] if i >= 0 else None

    return QueryDecisions(
        rule=rule, k=k, predicted=[label(i) for i in pred.tolist()], correct=right.tolist(),
        nearest=[label(i) for i in first.tolist()],
        nearest_similarity=[round(float(s), 6) if i >= 0 else None
                            for i, s in zip(first.tolist(), table.similarities[:, 0].tolist(), strict=True)]
        if table.k_max else [None] * len(pred))


def class_scores(pred: np.ndarray, right: np.ndarray, truth: np.ndarray, classes: list[str],
                 top_confusions: int = 3) -> list[ClassScore]:
    """Accuracy per true class and where its misses went, hardest first (queries of unknown classes left out).

    Args:
        pred: int [n] predicted class ids (-1: no answer); right: bool [n]; truth: int [n] true class ids.
    """
    known = truth >= 0
    n_classes = len(classes)
    queries = np.bincount(truth[known], minlength=n_classes)
    correct = np.bincount(truth[known & right], minlength=n_classes)
    wrong = known & ~right & (pred >= 0)
    # (true, predicted) pairs counted sparsely: a dense confusion matrix of 21k classes would be 3.5 GB.
    pairs, counts = np.unique(truth[wrong] * n_classes + pred[wrong], return_counts=True)
    misses: dict[int, list[tuple[int, int]]] = {}
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        misses.setdefault(pair // n_classes, []).append((-count, pair % n_classes))
    out = []
    for c in np.flatnonzero(queries).tolist():
        top = sorted(misses.get(c, []))[:top_confusions]  # most queries first, then class order
        out.append(ClassScore(label=classes[c], queries=int(queries[c]), correct=int(correct[c]),
                              accuracy=float(correct[c] / queries[c]),
                              confused_with={classes[j]: -neg for neg, j in top}))
    return sorted(out, key=lambda s: (s.accuracy, s.label))


def truth_arrays(correct_labels: Sequence[Sequence[str]], classes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(true class id per query, accepted matrix when any query has several right labels).

    Labels the memory does not know get id -1: such a query can never be right (but still counts).
    """
    pos = {c: i for i, c in enumerate(classes)}
    truth = np.array([pos.get(labs[0], -1) for labs in correct_labels], dtype=np.int64)
    if all(len(labs) == 1 for labs in correct_labels):
        return truth, None
    accepted = np.zeros((len(correct_labels), len(classes)), dtype=bool)
    for i, labs in enumerate(correct_labels):
        accepted[i, [pos[lab] for lab in labs if lab in pos]] = True
    return truth, accepted
