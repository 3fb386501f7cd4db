"""Codes alone, then the doubtful candidates re-ranked by original vectors from vmem's own copy.

What a server with RAM for the codes, graph and payload only can serve: the engine never reads its originals,
and a query reads a handful of rows (those whose codes score is too close to the k-th best to call).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import FeaturizerSpec, IndexSettings, MemoryError, Preprocessing, open_store
from retrieval.doubtful import OriginalRows, doubtful_block, rescore_doubtful
from retrieval.store import ORIGINAL_ROWS_FILE, ORIGINAL_VECTORS_FILE
from tests.conftest import random_unit_vectors
from tests.test_store import INDEXED_POINTS, resident_fraction
from vmem.cli.bench_ram_limit import evict_from_page_cache
from vmem.cli.bench_search import fresh_queries, synthetic_features

SPEC = FeaturizerSpec(name="test-encoder", dim=384, preprocessing=Preprocessing(resize=256, crop=224))
DOUBTFUL = IndexSettings(quantization="turboquant8", rescore=False, rescore_doubtful=True)


def recall(found, truth) -> float:
    return float(np.mean([len({h.source for h in hits} & {f"/v/{i}" for i in row}) / len(row)
                          for row, hits in zip(truth, found, strict=True)]))


def test_rescoring_the_doubtful_candidates_finds_what_the_codes_alone_miss(tmp_path):
    vecs, _, centres = synthetic_features(INDEXED_POINTS, 384, 14, seed=8)
    queries = fresh_queries(centres, 60, seed=9)
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :50]
    with open_store(tmp_path / "memory", SPEC, index=DOUBTFUL) as store:
        store.add(vecs, ["a"] * len(vecs), [f"/v/{i}" for i in range(len(vecs))])
        store.optimize()
    with open_store(tmp_path / "memory") as store:
        assert store.meta.index.doubtful  # stored with the memory
        originals = [f for f in (tmp_path / "memory").rglob("*") if str(f).endswith(ORIGINAL_VECTORS_FILE)]
        evict_from_page_cache(tmp_path / "memory")
        rescored = store.query_batch(queries, 50)
        reads = store.rows_read
        assert max(resident_fraction(f) for f in originals) < 0.05  # the engine read none of its originals
        # A handful of rows a query, not the whole search's candidates.
        assert 1 <= reads / len(queries) <= 16
        store.meta.index = store.meta.index.model_copy(update={"rescore_doubtful": False})
        codes_only = store.query_batch(queries, 50)
        assert store.rows_read == reads
    assert recall(rescored, truth) > recall(codes_only, truth)
    assert recall(rescored, truth) >= 0.99
    exact = queries @ vecs.T  # every similarity at once: a dict of 14,000 per query took 2 s
    for q, hits in enumerate(rescored):
        assert len(hits) == 50 and [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
        assert all("row" not in h.payload for h in hits)  # the row is vmem's bookkeeping, not the user's
        assert all(abs(h.similarity - exact[q, int(h.source.removeprefix("/v/"))]) < 0.002 for h in hits)


def test_a_re_added_point_is_rescored_by_its_new_vector_and_a_deleted_one_is_gone(tmp_path):
    vecs = random_unit_vectors(300, 384, seed=3)
    sources = [f"/v/{i}" for i in range(300)]
    with open_store(tmp_path / "memory", SPEC, index=DOUBTFUL) as store:
        store.add(vecs, ["a"] * 300, sources)
    rows_file = tmp_path / "memory" / ORIGINAL_ROWS_FILE
    assert rows_file.stat().st_size == 300 * 384 * 2  # float16 rows, like the engine's originals
    with open_store(tmp_path / "memory") as store:
        # Point 0 now looks like point 1's vector nudged: asked for that, it comes first, by its true score.
        moved = vecs[1] + 0.05 * vecs[2]
        store.add(moved[None], ["a"], [sources[0]])
        assert rows_file.stat().st_size == 301 * 384 * 2  # a new row; the old one is never read again
        top = store.query(moved, 3)
        assert top[0].source == sources[0] and top[0].similarity == pytest.approx(1.0, abs=1e-3)
        store.delete_ids([top[0].id])
        assert sources[0] not in {h.source for h in store.query(moved, 50)}
    with open_store(tmp_path / "memory") as store:  # reopened: appends continue after the last row
        store.add(vecs[5:6] * 2, ["b"], ["/v/new"])
        assert rows_file.stat().st_size == 302 * 384 * 2
        assert store.query(vecs[5], 1)[0].source in {"/v/5", "/v/new"}


def test_the_copy_of_the_originals_is_not_prefetched(tmp_path):
    """Its rows are read around the page cache, a few a query: caching the file would only crowd the index."""
    with open_store(tmp_path / "memory", SPEC, index=DOUBTFUL) as store:
        store.add(random_unit_vectors(100, 384, seed=4), ["a"] * 100, [f"/v/{i}" for i in range(100)])
        files = store.search_files()
        assert files and ORIGINAL_ROWS_FILE not in {f.name for f in files}
        assert not any(str(f).endswith(ORIGINAL_VECTORS_FILE) for f in files)  # the engine's are never read


def direct_reads_bypass_the_page_cache(folder) -> bool:
    """Whether this file system reads around the page cache with O_DIRECT (tmpfs does not), probed on a file of
    its own: the test's decision must not rest on the code it tests."""
    probe = folder / "probe.bin"
    probe.write_bytes(os.urandom(1 << 20))
    os.sync()
    evict_from_page_cache(folder)
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except (OSError, AttributeError):
        return False
    try:
        import mmap

        buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
        os.readv(fd, [buf])
    except OSError:
        return False
    finally:
        os.close(fd)
    return resident_fraction(probe) <= 0.01


def test_reading_rows_leaves_them_out_of_the_page_cache(tmp_path):
    (tmp_path / "probe").mkdir()
    if not direct_reads_bypass_the_page_cache(tmp_path / "probe"):
        pytest.skip("no O_DIRECT on this file system (e.g. tmpfs): rows are read through the page cache")
    rows = OriginalRows(tmp_path / "rows.bin", 384, "float16")
    vecs = random_unit_vectors(20_000, 384, seed=2)
    rows.append(vecs)  # on disk when it returns
    evict_from_page_cache(tmp_path)
    asked = list(range(0, 20_000, 97))
    assert np.allclose(rows.read(asked), vecs[asked], atol=1e-3)
    assert resident_fraction(tmp_path / "rows.bin") <= 0.01
    rows.close()


def test_a_point_whose_row_was_lost_keeps_its_codes_score(tmp_path):
    """Rows are synced before their points are written, but a damaged file must not stop searches."""
    vecs = random_unit_vectors(200, 384, seed=6)
    index = DOUBTFUL.model_copy(update={"doubt_margin": 1.0})  # every candidate in doubt: all rows are read
    with open_store(tmp_path / "memory", SPEC, index=index) as store:
        store.add(vecs, ["a"] * 200, [f"/v/{i}" for i in range(200)])
    os.truncate(tmp_path / "memory" / ORIGINAL_ROWS_FILE, 100 * 384 * 2)  # rows 100-199 gone
    with open_store(tmp_path / "memory") as store:
        hits = store.query(vecs[150], 10)
        assert len(hits) == 10 and hits[0].source == "/v/150"  # found by its codes score
        assert store._rows.rows_missing > 0


def test_doubtful_candidates_are_the_ones_within_the_margin_of_the_kth_best():
    scores = np.array([0.9, 0.8, 0.7005, 0.7, 0.6995, 0.5])
    assert doubtful_block(scores, 4, 0.001) == (2, 5)  # k-th best 0.7: 0.7005 and 0.6995 are in doubt
    assert doubtful_block(scores, 2, 0.001) == (1, 2)
    assert doubtful_block(scores[:3], 4, 0.001) == (3, 3)  # fewer candidates than k: all are in


def test_a_doubtful_candidate_whose_codes_score_was_too_high_makes_way(tmp_path):
    rows = OriginalRows(tmp_path / "rows.bin", 2, "float32")
    rows.append(np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]]))  # rows 0, 1, 2
    query = np.array([[1.0, 0.0]])
    # Codes say b (row 1, truly 0.6) edges out c (row 2, truly 0.8) for the second place.
    candidates = [[("a", 1.0, 0), ("b", 0.7003, 1), ("c", 0.7, 2)]]
    best = rescore_doubtful(query, candidates, 2, 0.001, rows, score_of=lambda h: h[1], row_of=lambda h: h[2])
    assert [(h[0], round(s, 4)) for h, s in best[0]] == [("a", 1.0), ("c", 0.8)]
    assert rows.rows_read == 2  # a, sure of its place, was not read
    rows.close()


def test_rows_are_read_in_the_order_asked(tmp_path):
    rows = OriginalRows(tmp_path / "rows.bin", 8, "float16")
    vecs = random_unit_vectors(500, 8, seed=1)
    rows.append(vecs)
    asked = [417, 3, 250, 3, 99, 498, 0]
    assert np.allclose(rows.read(asked), vecs[asked], atol=1e-3)
    rows.close()


def test_rescoring_doubtful_candidates_needs_codes_and_the_embedded_memory():
    with pytest.raises(ValueError, match="choose a quantization"):
        IndexSettings(quantization="none", rescore_doubtful=True)
    with pytest.raises(MemoryError, match="embedded memory"):
        open_store(":memory:", SPEC, index=DOUBTFUL)


def test_the_originals_are_written_where_python_has_no_fdatasync(tmp_path):
    # macOS's Python has no os.fdatasync: appending and erasing rows raised AttributeError there, so no memory
    # with --rescore-doubtful could be built. Run in a process whose os module lacks it, as on a Mac.
    script = f"""
import os
del os.fdatasync
import numpy as np
from retrieval.doubtful import OriginalRows
rows = OriginalRows(__import__("pathlib").Path({str(tmp_path / "rows.bin")!r}), 4, "float32")
written = rows.append(np.eye(4, dtype=np.float32)[:2])
rows.erase([written[0]])
print(rows.read([0, 1]).tolist())  # an erased row reads as missing
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[nan, nan, nan, nan], [0.0, 1.0, 0.0, 0.0]]"
