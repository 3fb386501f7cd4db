"""Scoring a memory on labelled queries: one search at k_max, then every rule at every k.

The search runs once per query (k_max = 100 neighbours). Exact search is a blocked matrix product
plus a two-step top-k (group maxima, then candidates), so results do not depend on an index's recall; for memories
that do not fit in RAM the Qdrant index answers instead (`neighbors_from_store`). From the neighbour
table, `score` computes, vectorised over queries:

* accuracy of each rule (and its soft-pruned variant when points carry reliability factors) at
  every k = 1..k_max, the best k per rule, and the table at k = 10, 20, ..., 100;
* hit rate at k: a right label among the first k neighbours (the ceiling any re-ranker has);
* accuracy of the i-th neighbour alone (how reliability falls with rank);
* calibration: accuracy against the plurality count (how many of the k neighbours agree).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, MemoryStore, VoteRule, vote_all_k

K_MAX = 100
TABLE_KS = tuple(range(10, 101, 10))
SOFT_SUFFIX = "+soft"
# Exact search multiplies up to _QUERY_BLOCK queries by a chunk of memory rows into one float32
# similarity block of about _BLOCK_BYTES. Few queries per product make a skinny matrix product (at
# 1.28M points 52 queries ran at 46 GFLOP/s, 256 at 68 on 2 cores); chunking the memory instead keeps
# wide products within the same bytes.
_QUERY_BLOCK = 1024
_BLOCK_BYTES = 1 << 30
# Columns per group in the two-step top-k (group maxima first); see _top_k_columns.
_GROUP = 64
# With the torch product, a chunk is multiplied in slabs of this many columns, each taking its group
# maxima while it is still in cache (a 1,024-query slab is 256 MiB); a separate pass over the whole
# 1 GiB block from RAM cost ~10 % of the search.
_SLAB_COLUMNS = 65_536

ProductBackend = Literal["torch", "numpy"]


@functools.cache
def default_product_backend() -> ProductBackend:
    """The library whose float32 matrix product exact search uses on this CPU.

    Measured on the 2-core machines, 1,000 queries x 268k rows x 384: on Intel Xeon torch's MKL ran
    the product at 312 GFLOP/s against numpy's OpenBLAS at 283, and kept the whole search in one
    thread pool (handing the cores between OpenBLAS and torch's OpenMP threads after each product
    cost more than the group maxima themselves); on AMD EPYC MKL reached 0.61 of sgemm where OpenBLAS
    reached 0.94.
    """
    try:
        with open("/proc/cpuinfo") as f:
            intel = any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        intel = False
    return "torch" if intel else "numpy"


# ------------------------------------------------------------------------------------ memory


@dataclass
class MemoryArrays:
    """A memory as arrays: what exact search needs (vectors, labels, ids, soft-pruning factors)."""

    features: np.ndarray  # float32 [n, dim], L2-normalised
    labels: list[str]
    ids: list[str]
    reliability: np.ndarray | None = None  # float64 [n]; None = every point 1

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_store(cls, store: MemoryStore, progress: Callable[[int], None] | None = None) -> MemoryArrays:
        """Every point the store would search (hard-pruned points left out), with its vector."""
        feats, labels, ids, rel = [], [], [], []
        for batch in store.scroll(batch_size=4096, with_vectors=True):
            for p in batch:
                if p.payload.get("excluded"):
                    continue
                feats.append(p.vector)
                labels.append(p.label)
                ids.append(p.id)
                rel.append(float(p.payload.get("reliability", 1.0)))
            if progress:
                progress(len(batch))
        f = np.stack(feats).astype(np.float32) if feats else np.zeros((0, store.dim), np.float32)
        r = np.asarray(rel, dtype=np.float64)
        return cls(f, labels, ids, r if np.any(r != 1.0) else None)

    def subset(self, mask: np.ndarray) -> MemoryArrays:
        idx = np.flatnonzero(mask)
        return MemoryArrays(self.features[idx], [self.labels[i] for i in idx], [self.ids[i] for i in idx],
                            None if self.reliability is None else self.reliability[idx])

    def only_labels(self, labels: Sequence[str]) -> MemoryArrays:
        keep = set(labels)
        return self.subset(np.array([lab in keep for lab in self.labels], dtype=bool))


# ------------------------------------------------------------------------------------ search


def exact_search(
    queries: np.ndarray,
    memory: np.ndarray,
    k: int = K_MAX,
    exclude: np.ndarray | None = None,
    block: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int | None = None,
    product: ProductBackend | None = None,
    slab: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar memory rows for each query, by inner product (cosine for unit vectors).

    Args:
        queries: float32 [n, dim].
        memory: float32 [m, dim].
        k: neighbours per query; rows past the memory's size are padded with index -1.
        exclude: optional int [n]: a memory row each query must not return (its own point, when a
            memory is queried against itself); -1 = none.
        block: queries per matrix product (default 1024: wide products run closest to peak).
        chunk: memory rows per similarity block (default: a block of about 1 GiB).
        product: the library that multiplies, "torch" or "numpy" (default: the faster one on this
            CPU, `default_product_backend`). Results are the same up to float rounding.
        slab: memory rows per torch product inside a chunk (default 65,536); numpy multiplies the
            whole chunk at once.

    Returns:
        (indices int64 [n, k], similarities float32 [n, k]), best first; equal similarities in row order.

    Example:
        >>> idx, sims = exact_search(q, m, k=100)
    """
    import torch

    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = np.ascontiguousarray(memory, dtype=np.float32)
    n, n_mem = len(q), len(m)
    kk = min(k, n_mem)
    idx_out = np.full((n, k), -1, dtype=np.int64)
    sim_out = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or kk == 0:
        return idx_out, sim_out
    product = product or default_product_backend()
    block = min(n, block or _QUERY_BLOCK)
    chunk = min(n_mem, chunk or max(_GROUP * kk, _BLOCK_BYTES // (4 * block)))
    # Each slab is wide enough for the group-maxima top-k and holds whole groups. numpy multiplies a
    # chunk in one product: its threads and torch's take turns on the cores after every product.
    slab = chunk if product == "numpy" else -(-max(slab or _SLAB_COLUMNS, 4 * (kk + 1) * _GROUP) // _GROUP) * _GROUP
    # One similarity buffer per call, reused for every block. (A fresh buffer per call is still zeroed by
    # the kernel, a few % of a 1,000-query search; keeping it in the heap would need mallopt, a
    # process-wide setting that also holds on to the vector engine's freed memory.)
    buffer = torch.empty(block * chunk)
    with torch.inference_mode():
        for start in range(0, n, block):
            stop = min(n, start + block)
            best_sims = torch.empty((stop - start, 0))
            best_idx = torch.empty((stop - start, 0), dtype=torch.int64)
            for lo in range(0, n_mem, chunk):
                hi = min(n_mem, lo + chunk)
                excluded = None
                if exclude is not None:
                    ex = np.asarray(exclude[start:stop], dtype=np.int64) - lo
                    excluded = torch.from_numpy(np.where((ex >= 0) & (ex < hi - lo), ex, -1))
                top_sims, top_idx = _top_k_columns(q[start:stop], m[lo:hi], min(kk, hi - lo), buffer, slab,
                                                   product, excluded)
                best_sims = torch.cat([best_sims, top_sims], dim=1)
                best_idx = torch.cat([best_idx, top_idx + lo], dim=1)
                if best_sims.shape[1] > kk:
                    best_sims, pick = torch.topk(best_sims, kk, dim=1)
                    best_idx = best_idx.gather(1, pick)
            part, part_sims = best_idx.numpy(), best_sims.numpy()
            # Sort by similarity, then by row, so equal similarities rank the same on every run.
            order = np.lexsort((part, -part_sims), axis=1)
            idx_out[start:stop, :kk] = np.take_along_axis(part, order, axis=1)
            sim_out[start:stop, :kk] = np.take_along_axis(part_sims, order, axis=1)
            if progress:
                progress(stop - start)
    if exclude is not None:  # an excluded row can only surface when the memory is smaller than k
        dropped = ~np.isfinite(sim_out)
        idx_out[dropped] = -1
    return idx_out, sim_out


def _top_k_columns(q: np.ndarray, m: np.ndarray, k: int, buffer, slab: int, product: ProductBackend,
                   excluded=None):
    """torch.topk(q @ m.T, k, dim=1), unsorted, found through the maxima of groups of _GROUP columns.

    The k best columns of a row lie in the k groups with the highest maxima, so a full top-k over
    every column (a seventh of the whole search's time) becomes a cheap max per group plus a top-k
    over k·_GROUP candidates. The product is written slab by slab (`slab` columns, stored one after
    another in `buffer`), and each slab's group maxima are taken while it is in cache. Rows where a
    group outside the chosen k ties the k-th value (duplicate vectors) take the plain top-k, so the
    result is the same set either way. `excluded` (int64 [rows], -1 = none): a column a row must not
    return.
    """
    import torch

    rows, width = len(q), len(m)
    grouped = width // _GROUP >= 4 * (k + 1)  # else too few groups to gain anything (and one slab)
    slabs, group_max = [], []
    for a in range(0, width, slab):
        b = min(width, a + slab)
        out = buffer[rows * a: rows * b].view(rows, b - a)
        if product == "numpy":
            np.matmul(q, m[a:b].T, out=out.numpy())
        else:
            torch.mm(torch.from_numpy(q), torch.from_numpy(m[a:b]).T, out=out)
        if excluded is not None:
            hit = torch.nonzero((excluded >= a) & (excluded < b)).flatten()
            out[hit, excluded[hit] - a] = -torch.inf
        whole = (b - a) // _GROUP * _GROUP
        if grouped and whole:
            group_max.append(out[:, :whole].unflatten(1, (whole // _GROUP, _GROUP)).amax(dim=2))
        slabs.append(out)
    if not grouped:
        return torch.topk(slabs[0], k, dim=1, sorted=False)
    top_groups_max, top_groups = torch.topk(torch.cat(group_max, dim=1), k + 1, dim=1, sorted=True)
    first = top_groups[:, :k] * _GROUP  # each chosen group's first column
    if len(slabs) > 1:  # column c of row r sits in slab c // slab, whose rows are as wide as that slab
        in_slab = first // slab
        last = len(slabs) - 1
        slab_width = torch.where(in_slab == last, width - last * slab, slab)
        first_at = in_slab * (rows * slab - slab) + torch.arange(rows)[:, None] * slab_width + first
    else:
        first_at = torch.arange(rows)[:, None] * width + first
    within = torch.arange(_GROUP)
    columns = (first[:, :, None] + within).flatten(1)
    offsets = (first_at[:, :, None] + within).flatten(1)
    tail = width // _GROUP * _GROUP
    if tail < width:  # the columns that make no whole group are always candidates (all in the last slab)
        extra = torch.arange(tail, width).expand(rows, width - tail)
        columns = torch.cat([columns, extra], dim=1)
        last_start = (len(slabs) - 1) * slab
        extra_at = rows * last_start + torch.arange(rows)[:, None] * (width - last_start) + extra - last_start
        offsets = torch.cat([offsets, extra_at], dim=1)
    candidates = buffer.take(offsets)
    top_sims, pick = torch.topk(candidates, k, dim=1, sorted=False)
    top_idx = columns.gather(1, pick)
    # Exact unless the best group left out could hold a value >= the k-th one found.
    unsure = torch.nonzero(top_groups_max[:, k] >= top_sims.amin(dim=1)).flatten()
    if len(unsure):
        full_rows = torch.cat([s[unsure] for s in slabs], dim=1)
        top_sims[unsure], top_idx[unsure] = torch.topk(full_rows, k, dim=1, sorted=False)
    return top_sims, top_idx


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
    progress: Callable[[int], None] | None = None,
) -> NeighborTable:
    """Exact neighbours from the memory's vectors, labelled with ids into `classes`."""
    pos = {c: i for i, c in enumerate(classes)}
    mem_ids = np.array([pos[lab] for lab in memory.labels], dtype=np.int64)
    idx, sims = exact_search(queries, memory.features, k, exclude, progress=progress)
    valid = idx >= 0
    label_ids = np.where(valid, mem_ids[np.where(valid, idx, 0)], -1)
    rel = None
    if memory.reliability is not None:
        rel = np.where(valid, memory.reliability[np.where(valid, idx, 0)], 0.0)
    return NeighborTable(label_ids, sims, classes, rel)


def neighbors_from_store(
    store: MemoryStore,
    queries: np.ndarray,
    classes: list[str],
    k: int = K_MAX,
    labels: Sequence[str] | None = None,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
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


def score(
    table: NeighborTable,
    truth: np.ndarray,
    accepted: np.ndarray | None = None,
    rules: Sequence[VoteRule | str] = tuple(VoteRule),
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    calibration_k: int = 10,
) -> Scores:
    """All rules at all k on one neighbour table.

    Example:
        >>> s = score(table, truth)
        >>> s.best["rank"].best_k, s.accuracy["softmax"][49]   # accuracy at k = 50
    """
    n, kmax = table.label_ids.shape
    acc: dict[str, list[float]] = {}
    variants = [(VoteRule(r), False) for r in rules]
    if table.reliability is not None:
        variants += [(VoteRule(r), True) for r in rules]
    for rule, soft in variants:
        right = correctness(predictions(table, rule, alpha, tau, soft), truth, accepted)
        acc[rule.value + (SOFT_SUFFIX if soft else "")] = right.mean(axis=0).tolist() if n else [0.0] * kmax
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
        votes = (table.label_ids[:, :cal_k] == plur[:, None]).sum(axis=1)
        right = correctness(plur[:, None], truth, accepted)[:, 0]
        for v in range(1, cal_k + 1):
            sel = votes == v
            calib.append(CalibrationBin(votes=v, queries=int(sel.sum()),
                                        accuracy=float(right[sel].mean()) if sel.any() else None))
    return Scores(n_queries=n, k_max=kmax, accuracy=acc, best=best, hit_rate=hit.tolist(),
                  neighbor_accuracy=(neighbor_right.mean(axis=0) if n else np.zeros(kmax)).tolist(),
                  calibration_k=cal_k, calibration=calib)


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
