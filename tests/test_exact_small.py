"""Small exact searches in numpy alone (the neighbours the blocked search finds, no torch imported for them), and
read-only memories searched without torch's warning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import eval.exact as exact
from retrieval import FeaturizerSpec, Preprocessing, open_store
from tests.conftest import random_unit_vectors


def blocked_search(monkeypatch, *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """exact_search as it runs above the numpy-only bound: in blocks through torch's top-k."""
    with monkeypatch.context() as patched:
        patched.setattr(exact, "_NUMPY_ONLY_SIMILARITIES", 0)
        return exact.exact_search(*args, **kwargs)


def searches(seed: int):
    """Queries, memory, k and exclude: random, and tie-heavy (every memory vector 5 times over, queries among them)."""
    rng = np.random.default_rng(seed)
    for rows, dim in [(7, 4), (90, 16), (300, 64), (2_500, 32)]:  # 2,500 rows: the numpy product cuts at 2,496
        base = random_unit_vectors(rows, dim, seed=seed)
        tied = base[rng.integers(0, max(1, rows // 5), rows)]
        for memory in (base, tied):
            queries = np.concatenate([memory[rng.integers(0, rows, 12)], random_unit_vectors(8, dim, seed=seed + 1)])
            for k in (1, 5, 50, rows, rows + 3):
                yield queries, memory, k, None
                yield queries, memory, k, rng.integers(-1, rows, len(queries))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_small_search_in_numpy_finds_what_the_blocked_search_finds(seed, monkeypatch):
    for queries, memory, k, exclude in searches(seed):
        idx, sims = exact.exact_search(queries, memory, k, exclude, product="numpy")
        b_idx, b_sims = blocked_search(monkeypatch, queries, memory, k, exclude, product="numpy")
        # The same products, so the same similarities, bit for bit, and the same padding.
        assert np.array_equal(sims.view(np.int32), b_sims.view(np.int32))
        # Equal similarities in row order, the first rows of those tied with the k-th best taken: a full stable sort.
        full = queries @ memory.T
        if exclude is not None:
            hit = exclude >= 0
            full[np.nonzero(hit)[0], exclude[hit]] = -np.inf
        kk = min(k, len(memory))
        order = np.argsort(-full, axis=1, kind="stable")[:, :kk]
        order[np.isneginf(np.take_along_axis(full, order, axis=1))] = -1  # the excluded row, in a memory under k
        assert np.array_equal(idx[:, :kk], order)
        assert np.all(idx[:, kk:] == -1)
        # The blocked search takes the same rows, but for those tied with the k-th best that torch's top-k chose
        # among: rows whose k-th best similarity no row left out shares come out the same.
        kth = sims[:, kk - 1: kk]
        alone = (full >= kth).sum(axis=1) == kk
        assert np.array_equal(idx[alone], b_idx[alone])


def test_a_search_with_a_similarity_that_is_not_a_number_goes_the_blocked_way(monkeypatch):
    memory = random_unit_vectors(50, 8)
    memory[3, 2] = np.nan
    queries = random_unit_vectors(4, 8, seed=1)
    idx, sims = exact.exact_search(queries, memory, 10, product="numpy")
    b_idx, b_sims = blocked_search(monkeypatch, queries, memory, 10, product="numpy")
    assert np.array_equal(idx, b_idx)
    assert np.array_equal(sims, b_sims, equal_nan=True)


@pytest.mark.parametrize("command", [["prune"], ["suspects"]])
def test_a_self_search_of_a_small_memory_does_not_import_torch(command, tmp_path):
    # Importing torch took ~1.5 s of a 2.5 s `vmem prune` of 30 points, for a top-k of 30 x 30 similarities.
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    script = ("import sys; from vmem.cli import app\n"
              f"app({[*command, '--memory', str(tmp_path / 'memory')]!r}, standalone_mode=False)\n"
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False", done.stdout


def test_a_read_only_memory_is_searched_without_a_warning(tmp_path):
    # A memory mapped from a file is read-only, and torch, having no read-only tensors, warned "The given NumPy
    # array is not writable" to every user of one (once a process: hence a process of its own).
    script = ("import sys, warnings\n"
              "import numpy as np\n"
              "warnings.simplefilter('error')\n"
              "from eval.exact import exact_search\n"
              "memory = np.load(sys.argv[1], mmap_mode='r')\n"
              "queries = np.load(sys.argv[1], mmap_mode='r')[:40]\n"
              "for product in ('numpy', 'torch', 'bfloat16'):\n"
              "    idx, _ = exact_search(queries, memory, 5, np.arange(40), product=product, chunk=len(memory))\n"
              "    assert not (idx == np.arange(40)[:, None]).any()\n"
              "print(type(memory).__name__, memory.flags.writeable)")
    np.save(tmp_path / "memory.npy", random_unit_vectors(3_000, 16))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "memory.npy")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["memmap", "False"]
