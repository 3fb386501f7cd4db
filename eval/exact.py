"""Exact nearest neighbours by inner product: blocked matrix products and a two-step top-k.

A block of queries is multiplied by a chunk of memory rows at a time; the top-k of each chunk is found
through the maxima of groups of columns (a cheap pass) and a top-k over the candidates of the best
groups only, then merged across chunks. Three ways to multiply, chosen by CPU and memory size (`product_for`):

* "numpy": float32 through numpy's BLAS, one product per chunk;
* "torch": float32 through torch, in slabs whose group maxima are taken while still in cache;
* "bfloat16": products in bfloat16 (AMX units multiply it ~4.7x faster than float32 on Intel Xeon),
  which only pick candidates: every memory row whose bfloat16 similarity lies within twice the proven
  rounding bound of the k-th best is rescored in float32, so the k found are the float32 top-k. It
  holds a bfloat16 copy of the memory (half its bytes) for the call, and pays only on large memories.

All three return the same neighbours up to float rounding (near-ties may order differently).
"""

from __future__ import annotations

import functools
import itertools
import mmap
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np

# Up to _QUERY_BLOCK queries are multiplied by a chunk of memory rows into one similarity block of
# about _BLOCK_BYTES. Few queries per product make a skinny matrix product (at 1.28M points 52 queries
# ran at 46 GFLOP/s, 256 at 68 on 2 cores); chunking the memory instead keeps wide products within the
# same bytes. Much smaller blocks cost more in the per-chunk top-k than they save (64 MiB: 5.9 s for 1,000
# queries x 1.28M against 3.7 s at 1 GiB, with slabs of 65,536). With slabs of 8,192 and the buffer's pages
# made up front, float32 took the same at 256 MiB, 512 MiB and 1 GiB (0.76-0.78 of sgemm, medians of 3),
# and bfloat16 was fastest at 512 MiB (1.13 of sgemm; 1 GiB 0.33-1.0 from run to run: its per-chunk candidate
# arrays are ~1.5x wider, and fresh memory is slow on these VMs).
# numpy, which multiplies a whole chunk at once, was faster at 1 GiB (4.2 s against 4.55 s at 512 MiB,
# same run, medians of 3), so it keeps that.
_QUERY_BLOCK = 1024
_BLOCK_BYTES = 1 << 29
_NUMPY_BLOCK_BYTES = 1 << 30
# Columns per group in the two-step top-k (group maxima first); see _chunk_top_k.
_GROUP = 64
# The two-step top-k pays from this many groups per neighbour sought (k + 1 groups are read back).
_GROUPS_PER_NEIGHBOUR = 4
# With torch, a chunk is multiplied in slabs of this many columns, each taking its group maxima while
# it is still in cache (a 1,024-query float32 slab is 32 MiB). A separate pass over the whole 1 GiB
# block from RAM cost ~10 % of the search; in slabs the maxima cost ~0.25 s of a 3.2 s search at 1.28M.
# 8,192 ran fastest in float32 (0.81 of sgemm against 0.77 at 16,384 and 0.78 at 2,048, medians of 3).
_SLAB_COLUMNS = 8_192
# Unit roundoff of bfloat16 (8 significant bits) and of float32.
_BF16_U = 2.0**-8
_F32_U = 2.0**-24

ProductBackend = Literal["torch", "numpy", "bfloat16"]
_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}  # /proc/cpuinfo flags of CPUs that multiply bfloat16 natively
# When more than this share of a block's queries is too crowded near its k-th similarity for the bfloat16
# filter (dense clusters), the search goes on in float32 rather than filtering and then redoing them.
_BF16_MOST_CROWDED = 0.25
# Below this many memory rows the default is float32: the filter's fixed costs (rescoring a few hundred
# candidates a query, converting the memory) outweigh its faster products. Same run, 1,000 synthetic
# queries x 384, k = 50: 100k rows 0.69 s against 0.38 s in float32, 300k 1.11 against 0.99, 640k 1.58
# against 1.97, 1.28M 2.5 against 3.7.
_BF16_MIN_ROWS = 500_000
# Up to this many similarities (queries x memory rows) a search in float32 through numpy never imports torch
# (_numpy_only_blocks), which took ~1.5 s of a 2.5 s `vmem prune` of 30 points. Same run, 2 busy AMD EPYC cores,
# torch already imported, medians of 5 (docs/benchmarks/small_exact.py): self-searches at k = 100 ran faster in
# numpy alone (1,000² x 1,280: 0.17 s against 0.35 s blocked); 4M similarities of a few queries against a wide
# memory up to ~0.15 s slower (20 x 200,000 x 384, k = 10: 0.64 against 0.50 s), its top-k passes reading the
# whole block. At 4M the block and its passes' copies (~5 arrays of 16 MB) stay small.
_NUMPY_ONLY_SIMILARITIES = 4_000_000


@functools.cache
def _cpu_flags() -> tuple[str, frozenset[str]]:
    flags: frozenset[str]
    vendor, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return vendor, flags


@functools.cache
def default_product_backend() -> ProductBackend:
    """How exact search multiplies on this CPU.

    bfloat16 where the CPU has bfloat16 instructions and a short trial product runs at least twice as
    fast as float32 (on the Intel Xeon machine with AMX: 1,575 against 333 GFLOP/s, 1,000 x 65,536 x 384;
    the trial keeps a CPU whose torch build lacks fast bfloat16 kernels on float32). Otherwise float32:
    through torch on Intel, where MKL multiplied ~10 % faster than numpy's OpenBLAS and kept the whole
    search in one thread pool (handing the cores between OpenBLAS and torch's OpenMP threads after each
    product cost more than the group maxima themselves); through numpy elsewhere (on AMD EPYC MKL
    reached 0.61 of sgemm where OpenBLAS reached 0.94).
    """
    _, flags = _cpu_flags()
    if flags & _BF16_FLAGS and _bfloat16_speedup() >= 2.0:
        return "bfloat16"
    return _float32_product()


def _bfloat16_speedup() -> float:
    """float32 time over bfloat16 time of a [512 x 384] by [384 x 8,192] product (best of 3 each, ~30 ms)."""
    import time

    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 384, generator=gen), torch.randn(8192, 384, generator=gen)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        times = []
        for _ in range(4):  # the first warms up
            t = time.perf_counter()
            x @ y.T
            times.append(time.perf_counter() - t)
        best[dtype] = min(times[1:])
    return best[torch.float32] / best[torch.bfloat16]


def product_for(memory_rows: int) -> ProductBackend:
    """How `exact_search` multiplies by default over a memory of this many rows."""
    if memory_rows < _BF16_MIN_ROWS:  # float32 whatever the CPU: no bfloat16 trial (it imports torch)
        return _float32_product()
    return default_product_backend()


def _float32_product() -> ProductBackend:
    """The faster float32 product on this CPU (see `default_product_backend`)."""
    vendor, _ = _cpu_flags()
    return "torch" if vendor == "GenuineIntel" else "numpy"


def measured_products() -> tuple[ProductBackend, ...]:
    """The ways to multiply worth timing on this CPU: bfloat16 only where it has bfloat16 instructions."""
    _, flags = _cpu_flags()
    return ("numpy", "torch", "bfloat16") if flags & _BF16_FLAGS else ("numpy", "torch")


def exact_search(
    queries: np.ndarray,
    memory: np.ndarray,
    k: int = 100,
    exclude: np.ndarray | None = None,
    block: int | None = None,
    progress: Callable[[int], object] | None = None,
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
        chunk: memory rows per similarity block (default: a block of about 512 MiB; 1 GiB with numpy).
        product: "numpy", "torch" or "bfloat16" (see the module; default: the fastest on this CPU,
            `default_product_backend`, in float32 below 500,000 memory rows). Results are the same up
            to float rounding. With "numpy", up to 4M similarities (queries x memory rows) and no `chunk`
            or `slab` given, the search runs in numpy alone (no torch imported), with the same similarities.
        slab: memory rows per torch product inside a chunk (default 8,192); numpy multiplies the
            whole chunk at once.

    Returns:
        (indices int64 [n, k], similarities float32 [n, k]), best first; equal similarities in row order.
        Of the rows tied with the k-th best, numpy alone returns the first; the blocked search those that
        torch's top-k picked.
        Similarities are float32 products.

    Example:
        >>> idx, sims = exact_search(q, m, k=100)
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = np.ascontiguousarray(memory, dtype=np.float32)
    n, n_mem = len(q), len(m)
    kk = min(k, n_mem)
    idx_out = np.full((n, k), -1, dtype=np.int64)
    sim_out = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or kk == 0:
        return idx_out, sim_out
    product = product or product_for(n_mem)
    block = min(n, block or _QUERY_BLOCK)
    if product == "numpy" and chunk is None and slab is None and n * n_mem <= _NUMPY_ONLY_SIMILARITIES:
        found = _numpy_only_blocks(q, m, kk, exclude, block)
        if found is not None:
            for start, (part, part_sims) in zip(range(0, n, block), found, strict=True):
                stop = min(n, start + block)
                _put_in_order(idx_out, sim_out, start, stop, part, part_sims)
                if progress:
                    progress(stop - start)
            return _without_excluded(idx_out, sim_out, exclude)

    import torch

    dtype = torch.bfloat16 if product == "bfloat16" else torch.float32
    block_bytes = _NUMPY_BLOCK_BYTES if product == "numpy" else _BLOCK_BYTES
    chunk = min(n_mem, chunk or max(_GROUP * kk, block_bytes // (dtype.itemsize * block)))
    # Each slab holds whole groups (the top groups are chosen over the whole chunk). numpy multiplies a
    # chunk in one product: its threads and torch's take turns on the cores after every product.
    slab = chunk if product == "numpy" else -(-(slab or _SLAB_COLUMNS) // _GROUP) * _GROUP
    # One similarity buffer per call, reused for every block, its pages made up front (_populated_buffer).
    buffer = _populated_buffer(block * chunk, dtype)
    with torch.inference_mode():
        memory16 = _BFloat16Memory(m) if product == "bfloat16" else None
        for start in range(0, n, block):
            stop = min(n, start + block)
            excluded = None if exclude is None else np.asarray(exclude[start:stop], dtype=np.int64)
            unsure = np.zeros(0, dtype=np.int64)
            if memory16 is not None:
                found = memory16.block_top_k(q[start:stop], m, kk, chunk, buffer, slab, excluded)
                if found is None:  # too crowded to filter: these queries and the rest in float32
                    # Released first: the float32 search makes its own buffer (~512 MiB) and needs no bfloat16 copy.
                    buffer = memory16 = None
                    rest = None if exclude is None else np.asarray(exclude[start:])
                    idx_out[start:], sim_out[start:] = exact_search(q[start:], m, k, rest, block, progress,
                                                                    product=_float32_product())
                    break
                best_sims, best_idx, unsure = found
            else:
                best_sims, best_idx = _block_top_k(q[start:stop], m, kk, chunk, buffer, slab, product, excluded)
            _put_in_order(idx_out, sim_out, start, stop, best_idx.numpy(), best_sims.numpy())
            if len(unsure):  # rows too crowded near their k-th similarity to filter: float32 throughout
                rows = start + unsure
                idx_out[rows], sim_out[rows] = exact_search(
                    q[rows], m, k, None if excluded is None else excluded[unsure], product=_float32_product())
            if progress:
                progress(stop - start)
    return _without_excluded(idx_out, sim_out, exclude)


def _put_in_order(idx_out: np.ndarray, sim_out: np.ndarray, start: int, stop: int, part: np.ndarray,
                  part_sims: np.ndarray) -> None:
    """A block's best (rows, similarities), unordered, into rows start:stop of the output, best first."""
    # Sort by similarity, then by row, so equal similarities rank the same on every run.
    order = np.lexsort((part, -part_sims), axis=1)
    idx_out[start:stop, :part.shape[1]] = np.take_along_axis(part, order, axis=1)
    sim_out[start:stop, :part.shape[1]] = np.take_along_axis(part_sims, order, axis=1)


def _without_excluded(idx_out: np.ndarray, sim_out: np.ndarray, exclude: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    if exclude is not None:  # an excluded row can only surface when the memory is smaller than k
        dropped = ~np.isfinite(sim_out)
        idx_out[dropped] = -1
    return idx_out, sim_out


def _numpy_only_blocks(q: np.ndarray, m: np.ndarray, k: int, exclude: np.ndarray | None, block: int
                       ) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The k best (rows, similarities) of each block of queries, unordered, in numpy alone: for a search too small
    to pay for importing torch. The products are the numpy product's own (the same blocks of queries, the memory
    cut where it cuts it), so the similarities are the same, bit for bit; of the rows whose similarity equals the
    k-th best, the first ones are taken. None where a similarity is not finite: torch's top-k places NaN its own
    way, and the search goes there.
    """
    width = len(m)
    whole = width // _GROUP * _GROUP
    # Taking group maxima, the numpy product multiplies a chunk's whole groups and the rest apart (_slab_products):
    # so here too, that each sum runs as there.
    bounds = [0, whole] + ([width] if whole < width else []) if _groups_pay(width, k) else [0, width]
    found = []
    for start in range(0, len(q), block):
        qb = q[start: start + block]
        sims = np.concatenate([np.matmul(qb, m[a:b].T) for a, b in itertools.pairwise(bounds)], axis=1)
        if not np.isfinite(sims).all():
            return None
        if exclude is not None:
            ex = np.asarray(exclude[start: start + block], dtype=np.int64)
            hit = np.nonzero((ex >= 0) & (ex < width))[0]
            sims[hit, ex[hit]] = -np.inf
        if k < width:
            kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1: k]
            above, tied = sims > kth, sims == kth
            # All those above the k-th best, then as many of those equal to it as are missing, first rows first.
            missing = k - above.sum(axis=1, keepdims=True, dtype=np.int32)
            take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= missing))
            part = np.nonzero(take)[1].reshape(len(qb), k)  # row by row, in column order: k a row
        else:
            part = np.broadcast_to(np.arange(width), sims.shape)
        found.append((part, np.take_along_axis(sims, part, axis=1)))
    return found


def _populated_buffer(count: int, dtype):
    """An empty tensor whose pages the kernel has already made (MAP_POPULATE), where the platform has it.

    Fresh pages are slow to come by on these VMs, and vary: faulted in by the products, a 1 GiB similarity
    buffer's pages cost 0.2-7 s of a 3 s float32 search (1,000 queries x 1.28M, same run: 9.5-10.3 s in 3
    of 4 repeats against 3.0-3.1 s populated, 0.24-0.36 s of it making the pages), and the bfloat16 search
    with this for all its large buffers went from 6.3 to 2.2 s (docs/benchmarks/exact_buffer.py). Huge pages
    were slower still (6.7-8.5 s: the kernel compacts memory to find them).
    """
    import torch

    if count == 0 or not hasattr(mmap, "MAP_POPULATE"):
        return torch.empty(count, dtype=dtype)
    pages = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return torch.frombuffer(pages, dtype=dtype)  # the tensor holds the mapping; unmapped when it is freed


def _read_only_tensor(a: np.ndarray):
    """torch.from_numpy(a), for a tensor the search only reads, of an array that may be read-only.

    A memory mapped from a file (`np.load(..., mmap_mode="r")`) or read from bytes is read-only, and torch,
    which has no read-only tensors, warned "The given NumPy array is not writable" to every user of such a
    memory. The search only reads these tensors (products, norms, gathers), so that one warning is silenced
    here rather than the whole memory copied to make it writable (torch says it once a process; the filter,
    the process's, holds only for the conversion).
    """
    import torch

    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(a)


def _excluded_in(excluded: np.ndarray | None, lo: int, hi: int):
    """Each row's excluded column within memory rows [lo, hi), as a chunk column (-1 = none there)."""
    import torch

    if excluded is None:
        return None
    ex = excluded - lo
    return torch.from_numpy(np.where((ex >= 0) & (ex < hi - lo), ex, -1))


def _block_top_k(q: np.ndarray, m: np.ndarray, k: int, chunk: int, buffer, slab: int, product: ProductBackend,
                 excluded: np.ndarray | None):
    """The k best (similarity, row) of each query over the whole memory, unsorted: float32 products."""
    import torch

    best_sims = torch.empty((len(q), 0))
    best_idx = torch.empty((len(q), 0), dtype=torch.int64)
    for lo in range(0, len(m), chunk):
        hi = min(len(m), lo + chunk)
        top_sims, top_idx = _chunk_top_k(q, m[lo:hi], min(k, hi - lo), buffer, slab, product,
                                         _excluded_in(excluded, lo, hi))
        best_sims = torch.cat([best_sims, top_sims], dim=1)
        best_idx = torch.cat([best_idx, top_idx + lo], dim=1)
        if best_sims.shape[1] > k:
            best_sims, pick = torch.topk(best_sims, k, dim=1)
            best_idx = best_idx.gather(1, pick)
    return best_sims, best_idx


def _slab_products(q, m, buffer, slab: int, product: ProductBackend, excluded, grouped: bool):
    """q @ m.T written slab by slab into `buffer`, and each slab's group maxima (when `grouped`).

    q, m: torch tensors of the buffer's dtype (numpy multiplies their float32 arrays). Slabs hold
    `slab` columns up to the last whole group (the last of them fewer), then the columns that make no
    whole group, if any, form a slab of their own; they are stored one after another, each
    [rows, its width] row-major, so every group's values are one run of _GROUP in the buffer.
    bfloat16 group maxima come as int16 bit patterns, right only for groups whose maximum is >= 0.
    """
    import torch

    rows, width = len(q), len(m)
    whole = width // _GROUP * _GROUP
    # Ungrouped, the whole chunk is one slab, so that its top-k reads it in place.
    bounds = [*range(0, whole, slab), whole] + ([width] if whole < width else []) if grouped else [0, width]
    slabs, group_max = [], []
    for a, b in itertools.pairwise(bounds):
        out = buffer[rows * a: rows * b].view(rows, b - a)
        if product == "numpy":
            np.matmul(q.numpy(), m[a:b].numpy().T, out=out.numpy())
        else:
            torch.mm(q, m[a:b].T, out=out)
        if excluded is not None:
            hit = torch.nonzero((excluded >= a) & (excluded < b)).flatten()
            out[hit, excluded[hit] - a] = -torch.inf
        if grouped and b <= whole:
            groups = out.unflatten(1, ((b - a) // _GROUP, _GROUP))
            if out.dtype == torch.bfloat16:
                # Maxima of the bit patterns as int16, 3x faster than bfloat16 maxima: the same for every
                # group holding a value >= 0 (a set sign bit makes the int16 negative), but not the
                # maximum of a group of negatives.
                groups = groups.view(torch.int16)
            group_max.append(groups.amax(dim=2))
        slabs.append(out)
    return slabs, group_max


def _group_values(buffer, slabs: list, groups, slab: int, width: int):
    """The values of the chosen groups of each row ([rows, n·_GROUP]), then those of the part group.

    groups: int64 [rows, n], group g holding chunk columns g·_GROUP ... g·_GROUP + _GROUP - 1.
    """
    import torch

    rows = groups.shape[0]
    whole, per_slab = width // _GROUP * _GROUP, slab // _GROUP
    last = (whole - 1) // slab
    in_slab = groups // per_slab
    # Where each group's run starts, in units of _GROUP values: slab j starts at rows·j·slab values.
    slab_groups = torch.where(in_slab == last, whole // _GROUP - last * per_slab, per_slab)
    runs = in_slab * (rows * per_slab) + torch.arange(rows)[:, None] * slab_groups + groups - in_slab * per_slab
    values = buffer[: rows * whole].view(-1, _GROUP)[runs.flatten()].view(rows, -1)
    return torch.cat([values, slabs[-1]], dim=1) if whole < width else values


def _candidate_columns(groups, picked, width: int):
    """Chunk columns of positions `picked` in the values `_group_values` returned."""
    import torch

    in_groups = groups.shape[1] * _GROUP
    grouped = picked < in_groups
    first = groups.gather(1, torch.where(grouped, picked // _GROUP, 0)) * _GROUP
    return torch.where(grouped, first + picked % _GROUP, width // _GROUP * _GROUP + picked - in_groups)


def _groups_pay(width: int, k: int) -> bool:
    """Whether a chunk this wide has enough groups for the two-step top-k to gain anything."""
    return width // _GROUP >= _GROUPS_PER_NEIGHBOUR * (k + 1)


def _chunk_top_k(q: np.ndarray, m: np.ndarray, k: int, buffer, slab: int, product: ProductBackend, excluded=None):
    """torch.topk(q @ m.T, k, dim=1), unsorted, found through the maxima of groups of _GROUP columns.

    The k best columns of a row lie in the k groups with the highest maxima, so a full top-k over
    every column (a seventh of the whole search's time) becomes a cheap max per group plus a top-k
    over k·_GROUP candidates. Rows where a group outside the chosen k ties the k-th value (duplicate
    vectors) take the plain top-k, so the result is the same set either way. `excluded` (int64
    [rows], -1 = none): a column a row must not return.
    """
    import torch

    width = len(m)
    grouped = _groups_pay(width, k)
    slabs, group_max = _slab_products(_read_only_tensor(q), _read_only_tensor(m), buffer, slab, product,
                                      excluded, grouped)
    if not grouped:
        return torch.topk(slabs[0], k, dim=1, sorted=False)
    top_groups_max, top_groups = torch.topk(torch.cat(group_max, dim=1), k + 1, dim=1, sorted=True)
    top_sims, picked = torch.topk(_group_values(buffer, slabs, top_groups[:, :k], slab, width), k, dim=1,
                                  sorted=False)
    top_idx = _candidate_columns(top_groups[:, :k], picked, width)
    # Exact unless the best group left out could hold a value >= the k-th one found.
    unsure = torch.nonzero(top_groups_max[:, k] >= top_sims.amin(dim=1)).flatten()
    if len(unsure):
        full_rows = torch.cat([s[unsure] for s in slabs], dim=1)
        top_sims[unsure], top_idx[unsure] = torch.topk(full_rows, k, dim=1, sorted=False)
    return top_sims, top_idx


class _BFloat16Memory:
    """The memory in bfloat16 with a bound on how far a bfloat16 similarity can be from the float32 one.

    With unit roundoff u = 2^-8, rounding both vectors costs at most (2u + u²)·Σ|qᵢmᵢ|, the float32
    accumulation d·2^-24·Σ|qᵢmᵢ|·(1 + u)², and rounding the product to bfloat16 u·|s|; each is at most
    its factor times ‖q‖·‖m‖ (Cauchy-Schwarz). So |s_bf16 - s| <= eps·‖q‖ with eps = (3u + 4u² +
    (d + 2)·2^-24)·max‖m‖, raised by 1 % for the rounding of the threshold itself.

    If the k-th best bfloat16 similarity of a query is t, its true k-th best is >= t - eps, and every
    true top-k row has a bfloat16 similarity >= t - 2·eps: those rows are the candidates, rescored in float32.
    """

    def __init__(self, m: np.ndarray) -> None:
        import torch

        mt = _read_only_tensor(m)
        # Into pages made up front: half the time of .bfloat16(), and no page faults during the copy.
        self.vectors = _populated_buffer(m.size, torch.bfloat16).view(m.shape).copy_(mt)
        max_norm = float(torch.linalg.vector_norm(mt, dim=1).max())
        u, d = _BF16_U, m.shape[1]
        self.eps_per_query_norm = 1.01 * (3 * u + 4 * u * u + (d + 2) * _F32_U) * max_norm

    def block_top_k(self, q: np.ndarray, m: np.ndarray, k: int, chunk: int, buffer, slab: int,
                    excluded: np.ndarray | None):
        """(similarities, rows) of each query's k best, unsorted, and the queries left to float32; None when
        more than _BF16_MOST_CROWDED of the queries are too crowded to filter in the first chunk."""
        import torch

        rows = len(q)
        q32 = _read_only_tensor(q)
        window = (2 * self.eps_per_query_norm) * torch.linalg.vector_norm(q32, dim=1, keepdim=True)
        q16 = q32.bfloat16()
        kept = torch.empty((rows, 0))  # bfloat16 similarities (as float32) of the candidates so far
        kept_idx = torch.empty((rows, 0), dtype=torch.int64)
        unsure = torch.zeros(rows, dtype=torch.bool)
        # Rescoring a candidate gathers its vector, ~300x the cost of its share of a float32 product: beyond
        # a three-hundredth of the memory, or 16 k, the filter saves less than it costs, and the row goes to
        # float32.
        cap = max(2 * k, min(16 * k, len(m) // 300))
        for lo in range(0, len(m), chunk):
            hi = min(len(m), lo + chunk)
            approx, columns, crowded = self._chunk_candidates(q16, self.vectors[lo:hi], min(k, hi - lo), buffer,
                                                              slab, _excluded_in(excluded, lo, hi), window, cap)
            unsure |= crowded
            if lo == 0 and unsure.float().mean() > _BF16_MOST_CROWDED:
                return None
            kept, picked, crowded = _within_window(torch.cat([kept, approx], dim=1), k, window, cap)
            kept_idx = torch.cat([kept_idx, columns + lo], dim=1).gather(1, picked)
            unsure |= crowded
        exact = _rescore(q32, _read_only_tensor(m), kept_idx)
        exact[kept == -torch.inf] = -torch.inf  # excluded rows
        top_sims, pick = torch.topk(exact, k, dim=1, sorted=False)
        return top_sims, kept_idx.gather(1, pick), torch.nonzero(unsure).flatten().numpy()

    @staticmethod
    def _chunk_candidates(q16, m16, k: int, buffer, slab: int, excluded, window, cap: int):
        """(bfloat16 similarities, columns) of a chunk's candidates, and the rows too crowded to filter.

        The k-th best similarity t of a row is at least the k-th best group maximum g, so every
        candidate (>= t - window) lies in a group whose maximum is >= g - window.
        """
        import torch

        width = len(m16)
        grouped = _groups_pay(width, k)
        slabs, group_max = _slab_products(q16, m16, buffer, slab, "torch", excluded, grouped)
        if not grouped:
            return _within_window(slabs[0].float(), k, window, cap)
        group_max = torch.cat(group_max, dim=1).view(torch.bfloat16).float()
        g_k = torch.topk(group_max, k, dim=1).values[:, -1:]
        in_reach = (group_max >= g_k - window).sum(dim=1, dtype=torch.int32)
        # A row reaching past a quarter of the groups gains nothing from the filter; one whose reach
        # goes below zero would need the maxima of negative groups, which the bit-pattern maxima get
        # wrong (see _slab_products).
        group_cap = max(k + 1, min(cap, group_max.shape[1] // 4))
        crowded = (in_reach > group_cap) | (g_k[:, 0] - window[:, 0] <= 0)
        # As many groups as the widest row that stays in the filter needs: crowded rows go to float32 anyway,
        # and one of them would otherwise widen every row's candidates to the cap.
        reach = int(in_reach[~crowded].max()) if not crowded.all() else k
        _, groups = torch.topk(group_max, max(k, reach), dim=1, sorted=False)
        approx, picked, too_many = _within_window(_group_values(buffer, slabs, groups, slab, width).float(), k,
                                                  window, cap)
        return approx, _candidate_columns(groups, picked, width), crowded | too_many


def _within_window(sims, k: int, window, cap: int):
    """Each row's similarities within `window` of its k-th best, with their positions, and the rows that
    have more than `cap` of them. The result is as wide as the row with the most needs, up to the cap
    (those beyond it are cut short: they go to float32), so candidates stay few as chunks merge."""
    import torch

    if sims.shape[1] <= k:
        return sims, torch.arange(sims.shape[1]).expand(sims.shape), torch.zeros(len(sims), dtype=torch.bool)
    kth = torch.topk(sims, k, dim=1).values[:, -1:]
    counts = (sims >= kth - window).sum(dim=1, dtype=torch.int32)  # int32: twice as fast as the default int64
    crowded = counts > cap
    keep = int(max(k, counts[~crowded].max())) if not crowded.all() else k
    top, picked = torch.topk(sims, keep, dim=1, sorted=False)
    return top, picked, crowded


def _rescore(q, m, columns, budget_bytes: int = 64 << 20):
    """float32 q[r] · m[columns[r, j]] for every row r and candidate j, gathering ~budget_bytes at a time."""
    import torch

    out = torch.empty(columns.shape)
    step = max(1, budget_bytes // max(1, columns.shape[1] * m.shape[1] * 4))
    # One gather buffer, its pages made once, rather than a fresh 64 MiB array (faulted in) per step.
    gathered = _populated_buffer(min(len(q), step) * columns.shape[1] * m.shape[1], torch.float32)
    for s in range(0, len(q), step):
        rows = columns[s: s + step]
        into = gathered[: rows.numel() * m.shape[1]].view(rows.numel(), m.shape[1])
        torch.index_select(m, 0, rows.flatten(), out=into)
        out[s: s + step] = torch.bmm(into.view(*rows.shape, m.shape[1]), q[s: s + step, :, None]).squeeze(2)
    return out
