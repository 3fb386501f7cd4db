"""One behavioural suite, run over every memory backend: embedded Qdrant Edge and qdrant-client."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retrieval import (
    FeaturizerMismatchError,
    FeaturizerSpec,
    IndexSettings,
    MemoryError,
    Preprocessing,
    open_store,
    point_id_for,
)
from retrieval.store import (
    ID_TO_OFFSET_FILE,
    LOADED_CODES_FILE,
    ORIGINAL_VECTORS_FILE,
    server_quantization_config,
)
from tests.conftest import random_unit_vectors
from vmem.cli.bench_ram_limit import evict_from_page_cache
from vmem.cli.bench_search import fresh_queries, synthetic_features

DIM = 16
SPEC = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))


@pytest.fixture(params=["edge", "edge-float", "edge-float32", "edge-doubtful", "qdrant-client"])
def location(request, tmp_path):
    return ":memory:" if request.param == "qdrant-client" else str(tmp_path / request.param)


# "edge": the defaults (int8 with rescoring, float16 originals); "edge-float": float32 vectors in the graph, a
# sparser one; "edge-float32": the defaults with the original vectors stored as float32; "edge-doubtful":
# turboquant8 codes, the doubtful candidates re-ranked from vmem's own copy of the originals.
INDEXES = {"edge-float": IndexSettings(quantization="none", m=8, vectors_dtype="float32"),
           "edge-float32": IndexSettings(vectors_dtype="float32"),
           "edge-doubtful": IndexSettings(quantization="turboquant8", rescore=False, rescore_doubtful=True)}


@pytest.fixture
def store(location):
    s = open_store(location, SPEC, index=INDEXES.get(location.rsplit("/", 1)[-1]))
    yield s
    s.close()


def fill(store, n_per_label=5, labels=("cat", "dog", "fox"), seed=0):
    vecs = random_unit_vectors(n_per_label * len(labels), DIM, seed)
    labs = [lab for lab in labels for _ in range(n_per_label)]
    sources = [f"/data/{lab}/{i}.jpg" for i, lab in enumerate(labs)]
    ids = store.add(vecs, labs, sources, tags={"split": "train"})
    return vecs, labs, sources, ids


def test_add_count_and_per_label_counts(store):
    fill(store, labels=("cat", "dog", "fox"))
    store.add(random_unit_vectors(2, DIM, 9), ["owl", "owl"], ["/data/owl/a.jpg", "/data/owl/b.jpg"])
    assert store.count() == 17
    assert store.count(label="owl") == 2
    assert store.label_counts() == {"cat": 5, "dog": 5, "fox": 5, "owl": 2}


def test_per_label_counts_follow_every_kind_of_edit(store):
    _, _, sources, ids = fill(store, labels=("cat", "dog", "fox"))
    counts = store.label_counts()
    counts["cat"] = 99  # the caller's copy
    assert store.label_counts() == {"cat": 5, "dog": 5, "fox": 5}
    store.delete_ids(ids[:2])
    assert store.label_counts() == {"cat": 3, "dog": 5, "fox": 5}
    store.relabel(ids[5:7], "owl")
    assert store.label_counts() == {"cat": 3, "fox": 5, "dog": 3, "owl": 2}
    store.delete_where(label="fox")
    assert store.label_counts() == {"cat": 3, "dog": 3, "owl": 2}
    store.add(random_unit_vectors(1, DIM, 9), ["cat"], ["/data/cat/new.jpg"])
    assert store.label_counts() == {"cat": 4, "dog": 3, "owl": 2}


def test_an_embedded_memory_counts_its_labels_once_until_its_next_edit(tmp_path):
    # The exact count held the GIL about a second at 50,000 labels; the page asks for it on every load and edit.
    store = open_store(tmp_path / "memory", SPEC)
    fill(store)

    class CountingShard:
        def __init__(self, shard):
            self.shard, self.facets = shard, 0

        def facet(self, request):
            self.facets += 1
            return self.shard.facet(request)

        def __getattr__(self, name):
            return getattr(self.shard, name)

    counting = store.shard = CountingShard(store.shard)
    assert store.label_counts() == store.label_counts() == {"cat": 5, "dog": 5, "fox": 5}
    assert counting.facets == 1
    store.add(random_unit_vectors(1, DIM, 9), ["owl"], ["/data/owl/a.jpg"])
    assert store.label_counts()["owl"] == 1 and counting.facets == 2
    store.shard = counting.shard
    store.close()


def test_counts_read_while_a_write_runs_are_not_kept_past_it(tmp_path):
    import threading

    # A count begun half-way through an add and ended after it had been kept, under the add's number, until the
    # next write: a class just added was missing from the page's stats and from DMN's classes. The add's write waits
    # until the count has read, and the count returns once the write has landed, whatever the machine's speed (sleeps
    # of 0.3 s and 0.6 s had left the overlap to the scheduler).
    class SlowShard:
        def __init__(self, shard):
            self.shard = shard
            self.in_update, self.counted, self.written = threading.Event(), threading.Event(), threading.Event()

        def update(self, op):
            self.in_update.set()
            assert self.counted.wait(30)
            out = self.shard.update(op)
            self.written.set()
            return out

        def facet(self, request):
            out = self.shard.facet(request)  # read before the write lands...
            if self.in_update.is_set() and not self.written.is_set():
                self.counted.set()
                assert self.written.wait(30)  # ...and returned after it
            return out

        def __getattr__(self, name):
            return getattr(self.shard, name)

    store = open_store(tmp_path / "memory", SPEC)
    fill(store)
    assert store.label_counts() == {"cat": 5, "dog": 5, "fox": 5}
    slow = store.shard = SlowShard(store.shard)
    writer = threading.Thread(target=store.add, args=(random_unit_vectors(1, DIM, 9), ["owl"], ["/data/owl/a.jpg"]))
    writer.start()
    assert slow.in_update.wait(5)
    store.label_counts()  # begun during the add, ended after it
    writer.join()
    store.shard = slow.shard
    assert store.label_counts().get("owl") == 1
    store.close()


def test_a_forked_child_is_told_its_parent_holds_the_memory(tmp_path):
    import os

    # _open_folders is inherited by fork: the child had been told "already open in this process".
    store = open_store(tmp_path / "memory", SPEC)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its message, through the pipe, then out without running the parent's cleanup
        try:
            open_store(tmp_path / "memory")
            said = "opened"
        except MemoryError as exc:
            said = str(exc)
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    said = os.read(read, 4096).decode()
    os.close(read)
    store.close()
    assert "open in another process" in said and "this process" not in said, said


def test_equally_near_points_come_in_id_order_whatever_k_and_backend(store):
    # One image stored under several sources: the engines order such ties as they please (the embedded one
    # answered cat at k=1 but dog, fox, cat at k=3), and a vote's tie-break reads that order.
    v = random_unit_vectors(1, DIM, seed=7)
    ids = store.add(np.repeat(v, 4, 0), ["cat", "dog", "fox", "owl"], [f"/c/{i}.jpg" for i in range(4)])
    store.add(random_unit_vectors(20, DIM, seed=8), ["other"] * 20, [f"/o/{i}.jpg" for i in range(20)])
    in_id_order = sorted(ids)
    for k in (1, 2, 3, 4):
        assert [h.id for h in store.query(v[0], k, exact=True)] == in_id_order[:k]
        assert [h.id for h in store.query(v[0], k)] == in_id_order[:k]
    with pytest.raises(ValueError, match="k must be at least 1"):
        store.query(v[0], 0)


@pytest.mark.parametrize(("tags", "says"), [({"score": float("nan")}, "not a finite number"),
                                            ({"n": 2**64}, "outside 64-bit integers"),
                                            ({"blob": b"ab"}, "is a bytes"),
                                            # said where in the nested value
                                            ({"deep": [{"x": float("inf")}]},
                                             r"^tag 'deep'\[0\]\.x = inf is not a finite number$")])
def test_tags_that_the_backends_would_store_differently_are_refused(store, tags, says):
    with pytest.raises(ValueError, match=says):
        store.add(random_unit_vectors(1, DIM, 3), ["cat"], ["/t/1.jpg"], tags=tags)
    assert store.count() == 0
    store.add(random_unit_vectors(1, DIM, 3), ["cat"], ["/t/1.jpg"], tags={"n": 2**63 - 1, "ok": [1.5, "a", None]})
    assert store.retrieve([point_id_for("/t/1.jpg")])[0].payload["tags"] == {"n": 2**63 - 1, "ok": [1.5, "a", None]}


def test_labels_that_parse_as_uuids_are_counted_as_spelt(store):
    # An MD5 digest as a label: qdrant-client's local mode re-spells such facet values with hyphens.
    digest, braced = "d41d8cd98f00b204e9800998ecf8427e", "{D41D8CD9-8F00-B204-E980-0998ECF8427E}"
    store.add(random_unit_vectors(3, DIM, 5), [digest, digest, braced], ["/d/1.jpg", "/d/2.jpg", "/d/3.jpg"])
    assert store.label_counts() == {digest: 2, braced: 1}


def test_vectors_with_nan_or_blank_labels_are_refused_on_every_backend(store):
    vecs = random_unit_vectors(3, DIM, seed=4)
    vecs[1, 0] = np.nan  # the embedded engine stored it and never returned it; a server refused it
    with pytest.raises(ValueError, match=r"1 of the 3 vectors holds NaN or infinite values \(the first: row 1\)"):
        store.add(vecs, ["a", "b", "c"], ["/x/0.jpg", "/x/1.jpg", "/x/2.jpg"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.query_batch(vecs, 3)
    with pytest.raises(ValueError, match="label must be a non-empty string"):
        store.add(vecs[:1], ["   "], ["/x/0.jpg"])
    assert store.count() == 0


def test_ids_derive_from_sources_so_re_adding_is_idempotent(store):
    vecs, labs, sources, ids = fill(store)
    assert ids == [point_id_for(s) for s in sources]
    again = store.add(vecs, labs, sources)
    assert again == ids
    assert store.count() == 15


def test_query_returns_nearest_first_with_payload(store):
    vecs, labs, sources, ids = fill(store)
    hits = store.query(vecs[7], k=4)
    assert len(hits) == 4
    assert hits[0].id == ids[7] and hits[0].label == labs[7] and hits[0].source == sources[7]
    # float16 originals are rounded to 11 significant bits, so a vector's similarity to itself is near 1.
    tolerance = 1e-3 if store.meta.index.vectors_dtype == "float16" else 1e-5
    assert hits[0].similarity == pytest.approx(1.0, abs=tolerance)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    stored = store.retrieve([ids[7]])[0].payload  # searches carry label and source; the store has the rest
    assert stored["tags"] == {"split": "train"} and "added_at" in stored


def test_search_matches_exact_cosine(store):
    vecs, _, _, ids = fill(store, n_per_label=20)
    q = random_unit_vectors(3, DIM, seed=42)
    expected = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
    for row, hits in zip(expected, store.query_batch(q, k=10, exact=True), strict=True):
        assert [h.id for h in hits] == [ids[i] for i in row]


def test_similar_finds_every_point_above_a_similarity_hard_pruned_ones_too(store):
    # What unlearning an image's copies reads (VisualMemory.near_duplicates): every point at least that similar,
    # by exact search over the original vectors, and the copy pruning took out of search found all the same.
    vecs, _, sources, ids = fill(store, n_per_label=20)
    copy = vecs[7] + 0.01 * random_unit_vectors(1, DIM, seed=5)[0]
    [copy_id] = store.add(copy[None], ["cat"], ["/elsewhere/copy.jpg"])
    store.set_payload([copy_id], {"excluded": "pruned"})
    assert copy_id not in {h.id for h in store.query(vecs[7], k=61)}  # a vote never sees it
    truth = (np.vstack([vecs, copy / np.linalg.norm(copy)]) @ vecs[7])
    threshold = float(np.sort(truth)[-4]) - 1e-3  # the point itself, the copy and two more
    found = store.similar(vecs[7], threshold, limit=100)
    assert [h.id for h in found][:2] in ([ids[7], copy_id], [copy_id, ids[7]]) and len(found) == 4
    assert [h.similarity for h in found] == sorted((h.similarity for h in found), reverse=True)
    assert all(h.similarity >= threshold for h in found) and found[0].source in (sources[7], "/elsewhere/copy.jpg")
    assert len(store.similar(vecs[7], threshold, limit=1)) == 1  # bounded: the caller asks for one more to know
    assert store.similar(-vecs[7], 0.99, limit=10) == []
    with pytest.raises(ValueError, match="one vector"):
        store.similar(vecs[:2], 0.5, limit=10)


def test_label_filter_restricts_neighbours(store):
    vecs, _, _, _ = fill(store)
    hits = store.query(vecs[0], k=10, labels=["dog", "fox"])
    assert hits and {h.label for h in hits} <= {"dog", "fox"}


def test_batch_query_answers_each_vector(store):
    vecs, _, _, ids = fill(store)
    results = store.query_batch(vecs[[0, 6, 12]], k=1)
    assert [r[0].id for r in results] == [ids[0], ids[6], ids[12]]


def test_a_large_batch_answers_like_one_query_at_a_time(store):
    # More queries than the engine takes in one batch call: the answers keep their order.
    vecs, _, _, _ = fill(store, n_per_label=60)
    queries = random_unit_vectors(150, DIM, seed=9)
    batched = store.query_batch(queries, k=5)
    assert len(batched) == 150
    for q, hits in zip(queries, batched, strict=True):
        assert [h.id for h in hits] == [h.id for h in store.query(q, k=5)]


def test_delete_by_id_and_never_returned_again(store):
    vecs, _, _, ids = fill(store)
    assert store.delete_ids([ids[3], ids[4], "00000000-0000-0000-0000-000000000000"]) == 2
    assert store.count() == 13
    returned = {h.id for h in store.query(vecs[3], k=15)}
    assert ids[3] not in returned and ids[4] not in returned


def test_an_id_given_twice_is_one_point_retrieved_and_deleted_once(store):
    _, _, _, ids = fill(store)
    assert [p.id for p in store.retrieve([ids[1], ids[1]])] == [ids[1]]
    assert store.delete_ids([ids[0], ids[0]]) == 1  # `vmem forget --id X --id X` forgets one point
    assert store.count() == 14


def test_delete_by_label(store):
    vecs, labs, _, ids = fill(store)
    assert store.delete_where(label="dog") == 5
    assert store.count(label="dog") == 0
    assert all(h.label != "dog" for h in store.query(vecs[5], k=15))
    assert store.label_counts() == {"cat": 5, "fox": 5}


def test_delete_by_source_prefix(store):
    vecs, _, sources, ids = fill(store)
    store.add(random_unit_vectors(1, DIM, 3), ["cat"], ["/data/cat-extra/x.jpg"])
    assert store.delete_where(source_prefix="/data/cat/") == 5
    assert store.count() == 11  # /data/cat-extra/ survives: a prefix is a prefix of the path
    assert all(not h.source.startswith("/data/cat/") for h in store.query(vecs[0], k=20))


def test_ids_where_and_retrieve(store):
    _, _, sources, ids = fill(store)
    assert sorted(store.ids_where(label="fox")) == sorted(ids[10:15])
    got = store.retrieve(ids[:2], with_vectors=True)
    assert {p.id for p in got} == set(ids[:2])
    assert all(p.vector is not None and p.vector.shape == (DIM,) for p in got)
    assert store.existing_ids([ids[0], point_id_for("/nowhere.jpg")]) == {ids[0]}


def test_scroll_visits_every_point(store):
    _, _, _, ids = fill(store)
    seen = [p.id for batch in store.scroll(batch_size=4) for p in batch]
    assert sorted(seen) == sorted(ids)
    # Only the keys asked for: a self-search of every point reads labels and sources, not tags and times
    lean = [p.payload for batch in store.scroll(batch_size=4, payload_keys=("label", "source")) for p in batch]
    assert len(lean) == len(ids) and all(set(payload) == {"label", "source"} for payload in lean)


def test_set_payload_sets_reliability(store):
    vecs, _, _, ids = fill(store)
    store.set_payload([ids[0]], {"reliability": 0.25})
    hit = store.query(vecs[0], k=1)[0]
    assert hit.id == ids[0] and hit.reliability == 0.25


def test_excluded_points_are_never_returned_and_come_back_when_included(store):
    vecs, _, _, ids = fill(store)
    store.set_payload([ids[0]], {"excluded": "pruned"})
    assert ids[0] not in [h.id for h in store.query(vecs[0], k=15)]
    assert ids[0] not in [h.id for hits in store.query_batch(vecs[:3], k=15) for h in hits]
    store.set_payload([ids[0]], {"excluded": None})
    assert store.query(vecs[0], k=1)[0].id == ids[0]


def test_an_embedded_memory_reopened_keeps_its_excluded_points_out(tmp_path):
    path = tmp_path / "memory"
    with open_store(path, SPEC) as s:
        vecs, _, _, ids = fill(s)
        s.set_payload(ids[:2], {"excluded": "pruned"})
    with open_store(path) as s:
        assert not {ids[0], ids[1]} & {h.id for h in s.query(vecs[0], k=15)}


def test_a_closed_memory_says_it_is_closed(store):
    vecs, *_ = fill(store)
    store.close()
    store.close()  # twice: nothing more to do
    for use in (store.count, lambda: store.query_batch(vecs[:1], 3), lambda: store.add(vecs[:1], ["cat"], ["/x"])):
        with pytest.raises(MemoryError, match=f"the memory at {store.location} is closed: open it again"):
            use()


def test_vectors_of_the_wrong_dimension_are_refused(store):
    with pytest.raises(FeaturizerMismatchError):
        store.add(random_unit_vectors(1, DIM + 1), ["cat"], ["/x.jpg"])
    with pytest.raises(FeaturizerMismatchError):
        store.query(random_unit_vectors(1, 8)[0], k=1)


def test_embedded_memory_persists_and_checks_its_featurizer(tmp_path):
    path = tmp_path / "memory"
    with open_store(path, SPEC) as s:
        fill(s)
        s.meta.settings["vote"] = {"rule": "softmax", "k": 20}
        s.save_meta()
    with open_store(path) as s:
        assert s.count() == 15
        assert s.meta.featurizer == SPEC
        assert s.meta.settings["vote"] == {"rule": "softmax", "k": 20}
    other = FeaturizerSpec(name="other-encoder", dim=DIM, preprocessing=SPEC.preprocessing)
    with pytest.raises(FeaturizerMismatchError, match="test-encoder"):
        open_store(path, other)


def test_qdrant_client_collection_keeps_metadata_and_checks_featurizer(tmp_path):
    loc = f"qdrant-local:{tmp_path / 'q'}"
    with open_store(loc, SPEC) as s:
        fill(s)
    with open_store(loc) as s:
        assert s.count() == 15 and s.meta.featurizer == SPEC
    with pytest.raises(FeaturizerMismatchError):
        open_store(loc, FeaturizerSpec(name="x", dim=32, preprocessing=SPEC.preprocessing))


def test_opening_a_missing_memory_says_how_to_make_one(tmp_path):
    with pytest.raises(MemoryError, match="vmem build"):
        open_store(tmp_path / "nothing-here")


def test_a_large_embedded_memory_is_indexed_as_segments_searched_together(tmp_path):
    # Every `segment_points` new points become a segment of their own, which the engine searches in parallel;
    # answers are the same as over one segment.
    # Uniform random 384-d vectors are nearly equidistant, HNSW's hardest case: a wide search ef keeps this
    # test about segments rather than about the graph's approximation.
    # float32: the engine indexes a segment only above 10 MB of vectors, which 10,000 float16 ones are not.
    index = IndexSettings(segment_points=10_000, hnsw_ef=512, vectors_dtype="float32")
    spec = SPEC.model_copy(update={"dim": 384})  # small vectors stay below the engine's indexing threshold
    vecs = random_unit_vectors(25_000, 384, seed=3)
    with open_store(tmp_path / "memory", spec, index=index) as s:
        announced: list[int] = []  # `vmem build` writes a line above its progress bar for each
        s.on_segment_indexing = announced.append
        for start in range(0, len(vecs), 1_000):
            part = range(start, start + 1_000)
            s.add(vecs[start : start + 1_000], [f"c{i % 7}" for i in part], [f"/data/{i}.jpg" for i in part])
        s.optimize()
        assert s.count() == 25_000
        info = s.shard.info()
        assert info.segments_count >= 3 and info.indexed_vectors_count == 20_000  # two full segments, the rest
        assert announced == [10_000, 10_000]
        q = random_unit_vectors(5, 384, seed=4)
        expected = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
        for row, hits in zip(expected, s.query_batch(q, k=10, exact=True), strict=True):
            assert [h.source for h in hits] == [f"/data/{i}.jpg" for i in row]
        found = s.query_batch(q, k=10)
        assert np.mean([len({h.source for h in hits} & {f"/data/{i}.jpg" for i in row}) / 10
                        for row, hits in zip(expected, found, strict=True)]) >= 0.9
    with open_store(tmp_path / "memory") as s:
        assert s.meta.index.segment_points == 10_000


def test_a_memory_forgotten_from_indexes_its_new_points_after_a_segment_s_worth_of_them(tmp_path):
    # The engine counts the indexed vectors with the forgotten ones among them: "points - indexed" fell short by
    # every forget, and after 6,000 forgotten the new points were indexed only once 16,000 had come
    index = IndexSettings(segment_points=10_000, vectors_dtype="float32")
    spec = SPEC.model_copy(update={"dim": 384})
    with open_store(tmp_path / "memory", spec, index=index) as s:
        ids = s.add(random_unit_vectors(10_000, 384, seed=1), ["old"] * 10_000, [f"/old/{i}" for i in range(10_000)])
        s.optimize()
        s.delete_ids(ids[:6_000])
    with open_store(tmp_path / "memory") as s:  # reopened: the count goes on from the engine's figures
        announced: list[int] = []
        s.on_segment_indexing = announced.append
        for start in range(0, 10_000, 500):
            s.add(random_unit_vectors(500, 384, seed=100 + start), ["new"] * 500,
                  [f"/new/{start + i}" for i in range(500)])
        assert announced == [10_000]
        assert s.shard.info().indexed_vectors_count == 14_000


def test_a_memory_stored_before_later_settings_keeps_what_it_was_built_with(tmp_path):
    path = tmp_path / "memory"
    with open_store(path, SPEC, index=IndexSettings(vectors_dtype="float32")) as s:
        fill(s)
    meta = json.loads((path / "vmem.json").read_text())
    del meta["index"]["segment_points"], meta["index"]["vectors_dtype"]  # as written before these settings
    (path / "vmem.json").write_text(json.dumps(meta))
    with open_store(path) as s:
        assert s.meta.index.segment_points is None  # one growing segment, as it was
        assert s.meta.index.vectors_dtype == "float32"  # not today's default
        assert s.count() == 15


# Enough 384-d points for the engine to index a segment (it indexes past 10,000 KB of stored vectors: 13,334
# float16 ones); only indexed segments keep their originals in ORIGINAL_VECTORS_FILE.
INDEXED_POINTS = 14_000


def test_float16_originals_take_half_the_bytes_and_keep_nearly_all_answers(tmp_path):
    vecs = random_unit_vectors(INDEXED_POINTS, 384, seed=5)
    queries = random_unit_vectors(20, 384, seed=6)
    answers, originals_bytes = {}, {}
    for dtype in ("float32", "float16"):
        store = open_store(tmp_path / dtype, SPEC.model_copy(update={"dim": 384}),
                           index=IndexSettings(vectors_dtype=dtype))
        ids = store.add(vecs, ["a"] * len(vecs), [f"/v/{i}" for i in range(len(vecs))])
        store.optimize()
        # Exact search, so that only the rounding differs (two HNSW builds differ by more than that).
        answers[dtype] = [[h.id for h in hits] for hits in store.query_batch(queries, 10, exact=True)]
        stored = store.retrieve(ids[:5], with_vectors=True)
        if dtype == "float16":  # the stored values are what was added, rounded to float16
            by_id = {p.id: p.vector for p in stored}
            for i in range(5):
                v = by_id[ids[i]]
                assert np.array_equal(v, v.astype(np.float16).astype(np.float32))
                assert np.allclose(v, vecs[i], atol=2e-4)
        store.close()
        originals_bytes[dtype] = sum(f.stat().st_size for f in (tmp_path / dtype).rglob("*")
                                     if str(f).endswith(ORIGINAL_VECTORS_FILE))
    # Random vectors are the hard case (neighbours within ~0.01 of each other); rounding reorders few.
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(answers["float16"], answers["float32"], strict=True)]
    assert np.mean(overlap) >= 0.95
    assert originals_bytes["float32"] >= INDEXED_POINTS * 384 * 4  # indexed: the file is there
    assert originals_bytes["float16"] * 2 == pytest.approx(originals_bytes["float32"], rel=0.05)


def resident_fraction(path) -> float:
    """Share of a file's pages in the page cache (mincore over a fresh read-only mapping, which reads nothing)."""
    import ctypes
    import mmap
    import os

    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / pages


def test_an_embedded_memory_prefetches_what_its_searches_read(tmp_path):
    with open_store(tmp_path / "memory", SPEC.model_copy(update={"dim": 384})) as store:
        store.add(random_unit_vectors(INDEXED_POINTS, 384, seed=7), ["a"] * INDEXED_POINTS,
                  [f"/d/{i}.jpg" for i in range(INDEXED_POINTS)])
        store.optimize()
    with open_store(tmp_path / "memory") as store:
        files = store.search_files()
        assert str(files[0]).endswith(ORIGINAL_VECTORS_FILE)  # the originals first: rescoring reads them
        assert not any({"wal", "payload_index"} & set(f.parts) for f in files)
        originals = [f for f in files if str(f).endswith(ORIGINAL_VECTORS_FILE)]
        evict_from_page_cache(tmp_path / "memory")  # as after a reboot
        cold = min(resident_fraction(f) for f in originals)
        read = store.prefetch()
        assert cold < 0.5 and min(resident_fraction(f) for f in originals) >= 0.99
        # Only the written parts: the engine preallocates files (payload pages, the next segment's) as holes.
        written = sum(min(f.stat().st_size, f.stat().st_blocks * 512) for f in files)
        assert sum(f.stat().st_size for f in originals) <= read <= written < sum(f.stat().st_size for f in files)


def test_prefetching_leaves_out_what_searches_never_read(tmp_path):
    with open_store(tmp_path / "memory", SPEC.model_copy(update={"dim": 384})) as store:
        vecs = random_unit_vectors(INDEXED_POINTS, 384, seed=7)
        store.add(vecs, ["a"] * INDEXED_POINTS, [f"/d/{i}.jpg" for i in range(INDEXED_POINTS)])
        store.optimize()
    evict_from_page_cache(tmp_path / "memory")
    with open_store(tmp_path / "memory") as store:  # int8 by default
        # The codes (the engine holds them in its own memory) and the id -> offset map (for writes).
        unread = [f for f in (tmp_path / "memory").rglob("*")
                  if str(f).endswith(LOADED_CODES_FILE) or f.name == ID_TO_OFFSET_FILE]
        assert len(unread) >= 2 and not set(unread) & set(store.search_files())
        store.prefetch()
        assert [hits[0].source for hits in store.query_batch(vecs[:20], 1)] == [f"/d/{i}.jpg" for i in range(20)]
        # Neither the open nor the searches read them (beyond a first read's readahead).
        assert all(resident_fraction(f) * f.stat().st_size < 256 * 1024 for f in unread)


def test_a_memory_that_does_not_rescore_answers_from_its_codes_without_reading_the_originals(tmp_path):
    """Codes only: what a server with too little RAM to cache the originals can serve at full speed.

    TurboQuant's codes take as many bytes as int8's but score closer to the true similarities, so without
    rescoring they keep more of the true neighbours.
    """
    vecs, _, centres = synthetic_features(INDEXED_POINTS, 384, 14, seed=8)
    queries = fresh_queries(centres, 50, seed=9)
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :50]
    spec = SPEC.model_copy(update={"dim": 384})
    recall = {}
    for quantization in ("int8", "turboquant8"):
        path = tmp_path / quantization
        with open_store(path, spec, index=IndexSettings(quantization=quantization, rescore=False)) as store:
            store.add(vecs, ["a"] * len(vecs), [f"/v/{i}" for i in range(len(vecs))])
            store.optimize()
        with open_store(path) as store:
            assert not store.meta.index.rescore  # stored with the memory
            originals = [f for f in path.rglob("*") if str(f).endswith(ORIGINAL_VECTORS_FILE)]
            assert originals and not set(originals) & set(store.search_files())  # nothing to prefetch there
            evict_from_page_cache(path)  # as after a reboot
            found = store.query_batch(queries, 50)
            assert max(resident_fraction(f) for f in originals) < 0.05  # the queries read none of them
            recall[quantization] = np.mean([len({h.source for h in hits} & {f"/v/{i}" for i in row}) / 50
                                            for row, hits in zip(truth, found, strict=True)])
            # Scores are the codes' estimates of the cosine similarity.
            exact = {f"/v/{i}": float(queries[0] @ vecs[i]) for i in range(len(vecs))}
            assert all(abs(h.similarity - exact[h.source]) < 0.02 for h in found[0])
    assert recall["turboquant8"] >= 0.95 and recall["turboquant8"] > recall["int8"]


def test_a_server_memory_takes_turboquant_codes_and_the_rescore_setting():
    from qdrant_client import models as qm

    # What the collection is created with on a Qdrant server (the local mode drops quantization configs).
    config = server_quantization_config(IndexSettings(quantization="turboquant8"))
    assert isinstance(config, qm.TurboQuantization) and config.turbo.bits == qm.TurboQuantBitSize.BITS8
    assert server_quantization_config(IndexSettings(quantization="none")) is None
    with open_store(":memory:", SPEC, index=IndexSettings(quantization="turboquant8", rescore=False)) as store:
        vecs, _, _, ids = fill(store)
        assert [hits[0].id for hits in store.query_batch(vecs[:3], k=5)] == ids[:3]  # codes-only search params
        assert store.meta.index.quantization == "turboquant8" and not store.meta.index.rescore


def test_forgetting_many_ids_on_a_qdrant_server_goes_in_bounded_requests(monkeypatch):
    # A real server refuses a request over its size limit; a forget by prefix of ~1M points would be one.
    from retrieval import store as store_module

    monkeypatch.setattr(store_module, "SERVER_REQUEST_IDS", 10)
    with open_store(":memory:", SPEC) as store:
        _, _, _, ids = fill(store, n_per_label=8)  # 24 points
        sent: list[int] = []
        delete = store.client.delete

        def counting_delete(collection, points_selector, **kw):
            sent.append(len(points_selector.points))
            return delete(collection, points_selector=points_selector, **kw)

        monkeypatch.setattr(store.client, "delete", counting_delete)
        assert store.delete_ids(ids + ids[:3]) == 24 and store.count() == 0
        assert sent == [10, 10, 4]


def test_a_server_memory_has_nothing_to_prefetch():
    with open_store(":memory:", SPEC) as store:
        assert store.prefetch() == 0


_OPEN_HEAP_PROBE = """
import sys
import qdrant_edge  # noqa: F401
from retrieval import open_store
from vmem.cli.bench_search import rss_mb
before = rss_mb("RssAnon")
store = open_store(sys.argv[1])
print(rss_mb("RssAnon") - before, store.count())
"""


def test_a_memory_opens_without_re_applying_its_last_add(tmp_path):
    # The engine replays its write-ahead log from the last acknowledged write on every open. Left with a
    # 20,000-point add there (add, index, close), each opening process re-applied it: ~540 MB of heap.
    import subprocess
    import sys

    vecs = random_unit_vectors(20_000, 384, seed=3)
    store = open_store(tmp_path / "m", SPEC.model_copy(update={"dim": 384}))
    ids = store.add(vecs, ["a", "b"] * 10_000, [f"/v/{i}" for i in range(20_000)], tags={"split": "train"})
    store.optimize()
    store.close()
    out = subprocess.run([sys.executable, "-c", _OPEN_HEAP_PROBE, str(tmp_path / "m")], capture_output=True,
                         text=True, check=True).stdout.split()
    heap_mb, count = float(out[0]), int(out[1])
    assert count == 20_000 and heap_mb < 200
    # The write that closes the log deleted no point and edited none: the last is as added, and indexed.
    store = open_store(tmp_path / "m")
    last = store.retrieve([ids[-1]])[0]
    assert last.label == "b" and last.payload["tags"] == {"split": "train"}
    assert store.query(vecs[-1], 1)[0].id == ids[-1]
    assert store.index_upkeep().deleted_in_index == 0
    store.close()


def test_a_memory_in_qdrant_clients_local_mode_is_made_without_a_warning_it_cannot_act_on():
    # qdrant-client warns that its local modes ignore payload indexes: a notebook on ":memory:" saw it.
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_store(":memory:", SPEC).close()
    assert [str(w.message) for w in caught if "Payload indexes" in str(w.message)] == []


def test_an_embedded_memory_opened_by_a_relative_path_works_after_a_chdir(tmp_path, monkeypatch):
    # A notebook's %cd: the engine's flush failed on the relative paths, and the memory read as removed.
    monkeypatch.chdir(tmp_path)
    store = open_store("memory", SPEC)
    store.add(random_unit_vectors(3, DIM, seed=5), ["a", "b", "a"], ["/x/0.jpg", "/x/1.jpg", "/x/2.jpg"])
    monkeypatch.chdir("/")
    store.add(random_unit_vectors(1, DIM, seed=6), ["b"], ["/x/3.jpg"])
    store.close()
    with open_store(tmp_path / "memory") as again:
        assert again.count() == 4


def _files_of(folder) -> dict[str, bytes]:
    from pathlib import Path

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_memory_opened_read_only_searches_a_private_copy_and_refuses_every_edit(tmp_path, monkeypatch):
    # A classify-only replica: the memory's folder a read-only mount, or several services serving it at once. The
    # engine writes even to search (its files mapped writable, its write-ahead log), so a copy is opened.
    import os
    import stat

    from retrieval import MemoryReadOnlyError
    from retrieval.store import MemoryInUseError

    folder = tmp_path / "memory"
    writer = open_store(folder, SPEC)
    vecs, labs, _, ids = fill(writer)
    writer.close()
    for root, dirs, files in os.walk(folder):  # files the service's user may only read (chmod -R a-w)
        for name in dirs + files:
            os.chmod(os.path.join(root, name), os.stat(os.path.join(root, name)).st_mode & ~0o222)
    before = _files_of(folder)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again

    first = open_store(folder, read_only=True)
    second = open_store(folder, read_only=True)  # a second replica beside it
    for replica in (first, second):
        assert replica.read_only and replica.count() == len(ids)
        assert replica.query(vecs[0], 1)[0].id == ids[0]
        with pytest.raises(MemoryReadOnlyError, match=r"is opened read-only \(read_only=True\): nothing was changed"):
            replica.add(vecs[:1], ["cat"], ["/data/new.jpg"])
        with pytest.raises(MemoryReadOnlyError):
            replica.delete_ids(ids[:1])
        with pytest.raises(MemoryReadOnlyError):  # names, settings: vmem.json
            replica.save_meta()
        assert replica.count() == len(ids)
    assert len(list((tmp_path / "tmp").iterdir())) == 2  # each its own copy, in TMPDIR
    first.close()
    second.close()
    assert list((tmp_path / "tmp").iterdir()) == []  # removed at close
    assert _files_of(folder) == before  # the memory itself untouched

    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), os.stat(os.path.join(root, name)).st_mode | stat.S_IWUSR)
    writer = open_store(folder)
    with pytest.raises(MemoryInUseError, match="needs it at rest"):  # its files change under a copy
        open_store(folder, read_only=True)
    writer.close()
    with pytest.raises(MemoryError, match="only an embedded memory"):
        open_store(":memory:", read_only=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may read any folder")
def test_a_memory_with_a_folder_this_user_may_not_read_is_refused_read_only_saying_so(tmp_path):
    # The copy had left the unreadable folder out without a word, and the engine then found no segments: a traceback
    writer = open_store(tmp_path / "memory", SPEC)
    fill(writer)
    writer.close()
    (tmp_path / "memory" / "shard").chmod(0o300)
    try:
        with pytest.raises(MemoryError, match=r"cannot be read by this user \(Permission denied: .*shard"):
            open_store(tmp_path / "memory", read_only=True)
    finally:
        (tmp_path / "memory" / "shard").chmod(0o700)


OPEN_READ_ONLY = ("import sys, time; from retrieval.store import open_store; "
                  "store = open_store(sys.argv[1], read_only=True); print(store._read_only_copy, flush=True); "
                  "time.sleep(float(sys.argv[2]))")


def test_the_copy_of_a_read_only_service_killed_before_its_close_is_removed_by_the_next_one(tmp_path, monkeypatch):
    # kill -9, the OOM killer, docker's SIGKILL after its grace period: the copy in TMPDIR had stayed there for
    # good, a memory's size at each restart (on a tmpfs /tmp, memory).
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    folder = tmp_path / "memory"
    writer = open_store(folder, SPEC)
    fill(writer)
    writer.close()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again

    def replica(lives_s: float) -> tuple[Path, subprocess.Popen]:
        process = subprocess.Popen([sys.executable, "-c", OPEN_READ_ONLY, str(folder), str(lives_s)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        return Path(process.stdout.readline().strip()), process

    running, alive = replica(60)
    killed, process = replica(60)
    process.kill()
    process.wait(30)
    try:
        assert killed.is_dir() and running.is_dir()
        with open_store(folder, read_only=True) as store:
            assert not killed.exists()  # its service is gone
            assert running.is_dir()  # a service serves it
            assert sorted((tmp_path / "tmp").iterdir()) == sorted([running, store._read_only_copy])
    finally:
        alive.kill()
        alive.wait(30)


@pytest.mark.parametrize("where", ["embedded", "qdrant-local"])
def test_opening_a_memory_that_is_not_there_says_so_and_leaves_no_folder_behind(tmp_path, where):
    # A mistyped path: `vmem info --memory qdrant-local:/data/memroy` made the folder, where a folder's memory did not
    missing = tmp_path / "memroy"
    location = str(missing) if where == "embedded" else f"qdrant-local:{missing}"
    with pytest.raises(MemoryError, match="build one first"):
        open_store(location)
    assert not missing.exists()
    with open_store(location, SPEC) as store:  # created when a featurizer is given
        assert store.count() == 0
    assert missing.is_dir()
