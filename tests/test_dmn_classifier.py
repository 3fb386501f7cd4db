"""The `dmn` rule over a real Qdrant memory (both backends), memory-only mode, with synthetic vectors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrieval import FeaturizerSpec, MemoryReadOnlyError, Preprocessing, open_store
from retrieval.dmn import DynamicMemory, fuse, readout
from vmem import VisualMemory
from vmem.dmn_classifier import DmnOptions, dmn_home, memory_key, read_class_names, stream_dir_key

DIM = 16
CLASSES = ["ant", "bee", "cat"]


def cluster_data(per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(CLASSES), DIM))
    vecs = np.repeat(centres, per_class, axis=0) + 0.6 * rng.standard_normal((len(CLASSES) * per_class, DIM))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = [c for c in CLASSES for _ in range(per_class)]
    return vecs.astype(np.float32), labels, centres / np.linalg.norm(centres, axis=1, keepdims=True)


def clustered_memory(location: str) -> VisualMemory:
    """A labelled memory of 3 noisy clusters; the featurizer is never loaded."""
    spec = FeaturizerSpec(name="synthetic", dim=DIM, preprocessing=Preprocessing(resize=8, crop=8))
    store = open_store(location, spec)
    vecs, labels, _ = cluster_data()
    store.add(vecs, labels, [f"mem://{i}" for i in range(len(labels))])
    return VisualMemory(store, reranker=None)


@pytest.fixture(params=["edge", "qdrant-local"])
def memory(request, tmp_path) -> VisualMemory:
    """The clustered memory in each backend (qdrant-client's local mode is process-local, `:memory:`)."""
    mem = clustered_memory(str(tmp_path / "memory") if request.param == "edge" else ":memory:")
    yield mem
    mem.close()


@pytest.fixture
def stored_memory(tmp_path) -> VisualMemory:
    """The clustered memory in a directory, whose streams are files."""
    mem = clustered_memory(str(tmp_path / "memory"))
    yield mem
    mem.close()


def queries(n: int, seed: int = 1) -> tuple[np.ndarray, list[str]]:
    _, _, centres = cluster_data()
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASSES), n)
    q = centres[truth] + 0.5 * rng.standard_normal((n, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), [CLASSES[t] for t in truth]


def test_static_readout_uses_the_nearest_entries_per_class(memory):
    vecs, labels, _ = cluster_data()
    q, truth = queries(4)
    results = memory.classify_dmn(q, options={"static_cap": 3})
    for qi, res in enumerate(results):
        # By hand: per class its 3 most similar memory vectors, then the DMN readout.
        sims = vecs @ q[qi]
        keys, ids = [], []
        for c, name in enumerate(CLASSES):
            rows = [i for i in np.argsort(-sims) if labels[i] == name][:3]
            keys += [vecs[i] for i in rows]
            ids += [c] * 3
        expected = readout(q[qi], np.array(keys), np.array(ids), 3)
        assert res.label == CLASSES[int(np.argmax(expected))] == truth[qi]
        assert res.scores[res.label] == pytest.approx(expected.max(), abs=1e-5)
        assert res.vote.rule == "dmn"
        assert res.dmn.mode == "memory-only" and res.dmn.stream is None and res.dmn.written is None
        # 3 per class carried weight; the other neighbours none.
        assert sum(n.weight > 0 for n in res.neighbors) == 9


def test_a_stream_writes_each_query_before_reading_it_out(memory):
    q, _ = queries(1)
    [res] = memory.classify_dmn(q, stream="cam1")
    static = res.dmn.parts["static"]
    # First query of a fresh stream: the dynamic memory holds only the query itself, under its
    # pseudo-label, so P_dynamic is one-hot and the fusion is (P_static + onehot) / 2.
    assert res.dmn.written is True and res.dmn.pseudo_label == res.label
    assert res.dmn.parts["dynamic"] == {res.label: 1.0}
    assert res.scores[res.label] == pytest.approx((static[res.label] + 1.0) / 2, abs=1e-6)
    assert res.dmn.alpha == {"dynamic": 1.0, "static": 1.0}


def test_streams_persist_per_memory_and_name_and_reset(stored_memory):
    memory = stored_memory
    q, _ = queries(12)
    memory.classify_dmn(q[:6], stream="cam1")
    memory.classify_dmn(q[6:], stream="cam1")
    memory.classify_dmn(q[:2], stream="cam2")
    memory.dmn.flush()  # saves are throttled (a full stream is tens of MB); flush writes the rest
    path = dmn_home() / stream_dir_key(memory.store) / "cam1.npz"
    assert str(path).startswith(os.environ["VMEM_HOME"])
    stored = DynamicMemory.load(path)
    assert len(stored) == 12 and stored.updates == 12 and stored.featurizer == "synthetic"
    assert memory.dmn.streams() == ["cam1", "cam2"]
    # A fresh facade over the same store picks the stream up from disk.
    again = VisualMemory(memory.store, reranker=None)
    assert len(again.dmn.stream("cam1")) == 12
    assert again.dmn.reset("cam1") is True
    assert again.dmn.streams() == ["cam2"]
    assert again.dmn.reset("cam1") is False


def test_a_reset_during_a_save_stays_reset(stored_memory, monkeypatch):
    # The save had its stream in hand and was writing when the reset deleted the file: the write put it back.
    # The save is held mid-write until the reset waits for the stream's lock, which the save holds.
    import threading

    from tests._handshakes import Waits

    memory = stored_memory
    q, _ = queries(12)
    memory.classify_dmn(q, stream="r")
    path = memory.dmn.stream_path("r")
    stream, waits = memory.dmn.stream("r"), Waits()
    monkeypatch.setattr(stream, "lock", waits.watch(stream.lock))
    real_save = DynamicMemory.save
    writing, go_on = threading.Event(), threading.Event()

    def held_save(self, where):
        writing.set()
        assert go_on.wait(30)
        real_save(self, where)

    monkeypatch.setattr(DynamicMemory, "save", held_save)
    saver = waits.start(memory.dmn.save, "r", force=True)
    assert writing.wait(30)
    reset: list[bool] = []
    resetter = waits.start(lambda: reset.append(memory.dmn.reset("r")))
    assert waits.blocked(resetter) is stream.lock  # the reset waits for the write to finish...
    assert path.exists()  # ...before it deletes the file
    go_on.set()
    saver.join(30)
    resetter.join(30)
    assert reset == [True]
    assert not path.exists() and len(memory.dmn.stream("r")) == 0


def test_two_facades_over_one_store_share_a_stream_and_lose_no_update(stored_memory):
    memory = stored_memory
    q, _ = queries(8)
    other = VisualMemory(memory.store, reranker=None)  # e.g. a server's and a script's over one opened store
    memory.classify_dmn(q[:3], stream="s")  # saved at once: the stream's first save
    memory.classify_dmn(q[3:6], stream="s")  # within the save interval: held in memory
    other.classify_dmn(q[6:], stream="s")
    memory.dmn.flush()
    other.dmn.flush()
    assert DynamicMemory.load(memory.dmn.stream_path("s")).updates == 8
    assert other.dmn is memory.dmn and memory.dmn.stream("s").updates == 8


def test_a_process_local_memory_keeps_its_streams_in_memory_and_writes_no_file():
    memory = clustered_memory(":memory:")
    q, _ = queries(6)
    memory.dmn.save_interval_s = 0.0
    memory.classify_dmn(q[:4], stream="cam1")
    memory.classify_dmn(q[4:], stream="cam2")
    memory.dmn.flush()
    assert not dmn_home().exists()  # nothing to read it back: the memory itself is gone with the process
    assert memory.dmn.streams() == ["cam1", "cam2"] and memory.dmn.stream("cam1").updates == 4
    assert memory.dmn.reset("cam1") is True and memory.dmn.streams() == ["cam2"]
    assert memory.dmn.reset("cam1") is False


def test_two_process_local_memories_never_share_a_stream():
    spec = FeaturizerSpec(name="synthetic", dim=DIM, preprocessing=Preprocessing(resize=8, crop=8))
    vecs, labels, _ = cluster_data()
    memories = []
    for _ in range(2):
        store = open_store(":memory:", spec)
        store.add(vecs, labels, [f"mem://{i}" for i in range(len(labels))])
        memories.append(VisualMemory(store, reranker=None))
    q, _ = queries(5)
    memories[0].classify_dmn(q, stream="s")
    memories[0].dmn.flush()
    assert len(memories[1].dmn.stream("s")) == 0  # a new memory's stream starts empty
    assert VisualMemory(memories[0].store, reranker=None).dmn.stream("s").updates == 5  # its own store: kept


def test_collections_on_one_qdrant_server_keep_their_streams_apart():
    from types import SimpleNamespace

    from retrieval.store import MemoryStore
    from vmem.dmn_classifier import path_stream_dir_key

    class ServerStore:  # what stream_dir_key reads of a QdrantServerStore
        key = MemoryStore.key

        def __init__(self, collection: str) -> None:
            self.location, self.collection = "http://qdrant:6333", collection
            self.meta = SimpleNamespace(created_at="2026-12-06T06:00:00+00:00")

    keys = {stream_dir_key(ServerStore(c)) for c in ("vmem", "faces", "birds")}  # type: ignore[arg-type]
    assert len(keys) == 3
    assert path_stream_dir_key(ServerStore("vmem")) == memory_key("http://qdrant:6333")  # type: ignore[arg-type]


def test_streams_follow_a_memory_moved_and_a_new_memory_where_it_was_starts_without_them(tmp_path):
    # Kept by path, a moved memory had lost its streams, and a new one at the old path had read the old one's.
    import shutil

    old = clustered_memory(str(tmp_path / "memory"))
    old.classify_dmn(queries(5)[0], stream="cam1")
    old.close()
    shutil.move(tmp_path / "memory", tmp_path / "moved")
    moved = VisualMemory(open_store(str(tmp_path / "moved")), reranker=None)
    assert moved.dmn.streams() == ["cam1"] and moved.dmn.stream("cam1").updates == 5
    moved.close()
    new = clustered_memory(str(tmp_path / "memory"))
    assert new.dmn.streams() == []
    new.close()


def test_streams_kept_by_path_before_are_taken_by_their_memory_not_by_a_newer_one(tmp_path):
    import shutil
    import time

    from vmem.dmn_classifier import path_stream_dir_key

    mine = clustered_memory(str(tmp_path / "memory"))
    legacy = dmn_home() / path_stream_dir_key(mine.store)
    DynamicMemory(DIM, featurizer="synthetic").save(legacy / "cam1.npz")  # written after the memory was made
    os.utime(legacy / "cam1.npz", (0, 0))  # as vmem copy had copied it: with its source's times
    mine.close()
    again = VisualMemory(open_store(str(tmp_path / "memory")), reranker=None)
    assert again.dmn.streams() == ["cam1"] and not legacy.exists()
    again.close()
    shutil.rmtree(tmp_path / "memory")
    DynamicMemory(DIM, featurizer="synthetic").save(legacy / "cam2.npz")  # an old memory's, before the next
    time.sleep(0.01)
    newer = clustered_memory(str(tmp_path / "memory"))
    assert newer.dmn.streams() == [] and legacy.exists()
    newer.close()


def test_a_qdrant_local_memory_takes_the_streams_an_older_vmem_kept_by_its_bare_folder(tmp_path):
    # Before qdrant-local: memories kept their prefix (12-05), their streams were kept by the folder alone.
    mine = clustered_memory(f"qdrant-local:{tmp_path / 'memory'}")
    legacy = dmn_home() / memory_key(str(tmp_path / "memory"))
    DynamicMemory(DIM, featurizer="synthetic").save(legacy / "cam1.npz")
    mine.close()
    again = VisualMemory(open_store(f"qdrant-local:{tmp_path / 'memory'}"), reranker=None)
    assert again.dmn.streams() == ["cam1"] and not legacy.exists()
    again.close()


def test_a_memory_opened_read_only_reads_the_saved_streams_and_keeps_its_updates_in_its_process(tmp_path):
    # A replica (vmem serve --read-only, or open(read_only=True)) has the memory's key: its stream saves went to the
    # writer's files, and the two overwrote each other's
    location = str(tmp_path / "memory")
    q, _ = queries(9)
    with clustered_memory(location) as writer:
        writer.classify_dmn(q[:4], stream="s")
    path = dmn_home() / stream_dir_key(writer.store) / "s.npz"
    saved = path.read_bytes()
    with VisualMemory.open(location, reranker=None, read_only=True) as replica:
        replica.dmn.save_interval_s = 0.0
        [res] = replica.classify_dmn(q[4:5], stream="s")
        replica.classify_dmn(q[5:], stream="new")
        replica.dmn.flush()
        assert res.dmn.written and replica.dmn.stream("s").updates == 5  # the writer's 4, then its own
        assert replica.dmn.streams() == ["new", "s"] and replica.dmn.stream("new").updates == 4
        with pytest.raises(MemoryReadOnlyError):
            replica.dmn.reset("s")
    assert path.read_bytes() == saved and sorted(p.name for p in path.parent.iterdir()) == ["s.npz"]


def test_a_read_only_stream_is_not_written(stored_memory):
    memory = stored_memory
    q, _ = queries(3)
    memory.classify_dmn(q[:2], stream="s")
    res = memory.classify_dmn(q[2:], stream="s", options=DmnOptions(update=False))
    assert res[0].dmn.written is None
    memory.dmn.flush()
    assert len(DynamicMemory.load(memory.dmn.stream_path("s"))) == 2


def test_without_a_stream_the_dynamic_memory_is_off(memory):
    q, _ = queries(3)
    off = memory.classify_dmn(q)
    assert all("dynamic" not in r.dmn.parts for r in off)
    assert memory.dmn.streams() == []


def test_dynamic_memory_from_a_stream_shifts_the_decision(memory):
    """A query between two classes follows the class its stream has been seeing (test-time adaptation)."""
    _, _, centres = cluster_data()
    # Between ant and bee, a little nearer ant: the static memory says ant.
    between = 0.55 * centres[0] + 0.45 * centres[1]
    between = (between / np.linalg.norm(between)).astype(np.float32)[None]
    assert memory.classify_dmn(between)[0].label == "ant"
    # The stream has seen many queries just on the bee side of it (the static memory says bee).
    rng = np.random.default_rng(3)
    drift = 0.45 * centres[0] + 0.55 * centres[1] + 0.03 * rng.standard_normal((30, DIM))
    drift /= np.linalg.norm(drift, axis=1, keepdims=True)
    seen = memory.classify_dmn(drift.astype(np.float32), stream="s")
    assert {r.label for r in seen} == {"bee"}
    # Read without writing, the dynamic memory only knows bee-side queries: the decision moves to bee.
    adapted = memory.classify_dmn(between, stream="s", options={"update": False, "alpha_dynamic": 2.0})[0]
    assert adapted.dmn.parts["dynamic"] == {"bee": 1.0}
    assert adapted.label == "bee"
    # Written first (the paper's order), the query sits in ant's queue with weight 1 and pulls
    # ant's dynamic prototype onto itself: the dynamic memory then backs its pseudo-label.
    written = memory.classify_dmn(between, stream="s", options={"alpha_dynamic": 2.0})[0]
    assert written.dmn.pseudo_label == "ant" and written.dmn.written
    assert written.dmn.parts["dynamic"]["ant"] > 0.5 and written.label == "ant"


def test_forgetting_a_label_removes_it_from_streams_too(memory):
    q, _ = queries(20)
    memory.classify_dmn(q, stream="s")
    assert "cat" in memory.dmn.stream("s").counts()
    memory.forget(label="cat")
    res = memory.classify_dmn(q[:3], stream="s")
    assert "cat" not in memory.dmn.stream("s").counts()
    assert all(r.label != "cat" and "cat" not in r.scores for r in res)


def test_forgetting_a_label_removes_its_entries_from_the_stream_files_at_once(stored_memory):
    # They had left only at the stream's next classify: a stream not used again kept the features in its file.
    q, _ = queries(20)
    stored_memory.classify_dmn(q, stream="s")
    stored_memory.dmn.flush()
    path = dmn_home() / stream_dir_key(stored_memory.store) / "s.npz"
    assert "cat" in DynamicMemory.load(path).counts()
    stored_memory.forget(label="cat")
    on_disk = DynamicMemory.load(path)
    assert "cat" not in on_disk.counts() and len(on_disk)
    stored_memory.forget(ids=[stored_memory.store.ids_where(label="bee")[0]])  # bee stays: its entries too
    assert "bee" in DynamicMemory.load(path).counts()


def test_forgetting_a_photo_by_likeness_takes_its_queries_out_of_the_streams(stored_memory):
    # A photo classified through a stream, then unlearnt with its copies: its query feature had stayed in the
    # stream (and its file) until a reset.
    point = stored_memory.store.retrieve([stored_memory.store.ids_where(label="bee")[0]], with_vectors=True)[0]
    q, _ = queries(20)
    stored_memory.classify_dmn(np.vstack([q, point.vector[None, :]]), stream="s")
    stored_memory.dmn.flush()
    path = dmn_home() / stream_dir_key(stored_memory.store) / "s.npz"
    before = DynamicMemory.load(path)

    def held(stream: DynamicMemory) -> np.ndarray:
        return np.vstack([stream.entries(lab)[0] for lab in stream.counts()])

    assert (held(before) @ point.vector).max() > 0.999
    forgotten = stored_memory.forget_like(point_id=point.id, min_similarity=0.99)
    assert point.id in {d.id for d in forgotten}
    after = DynamicMemory.load(path)
    assert len(after) == len(before) - 1 and (held(after) @ point.vector).max() < 0.99
    # The others kept, read out as a stream holding only them reads out
    fresh = DynamicMemory(DIM, before.slots)
    for lab in after.counts():
        for f, e in zip(*after.entries(lab), strict=True):
            fresh.write(f, lab, e)
    live = stored_memory.dmn.stream("s")
    for query in q[:5]:
        np.testing.assert_allclose(live.probabilities(query, CLASSES), fresh.probabilities(query, CLASSES), atol=1e-9)
    assert stored_memory.forget_like(point_id=stored_memory.store.ids_where(label="ant")[0], dry_run=True)
    assert len(DynamicMemory.load(path)) == len(after)  # a dry run takes nothing out


def test_a_forgotten_label_named_in_a_filter_does_not_come_back_from_the_stream(memory):
    q, _ = queries(20)
    memory.classify_dmn(q, stream="s")
    others = [lab for lab in memory.store.label_counts() if lab != "cat"]
    memory.forget(label="cat")
    res = memory.classify_dmn(q, stream="s", labels=["cat", *others])  # the Python API lets it be named
    assert "cat" not in memory.dmn.stream("s").counts()
    assert all(r.label != "cat" for r in res)


def test_renaming_or_merging_a_class_carries_its_stream_entries_along(stored_memory):
    q, _ = queries(20)
    stored_memory.classify_dmn(q, stream="s")
    before = stored_memory.dmn.stream("s").counts()
    assert stored_memory.relabel("feline", label="cat") == 10  # renamed
    after = stored_memory.dmn.stream("s").counts()
    assert after.get("feline") == before["cat"] and "cat" not in after
    stored_memory.classify_dmn(q[:1], stream="s")  # the next classify keeps them: "feline" is a label now
    assert stored_memory.dmn.stream("s").counts()["feline"] >= before["cat"]
    # Merged into another class: one queue of at most `slots` (the lowest-entropy entries kept).
    counts = stored_memory.dmn.stream("s").counts()
    stored_memory.relabel("bee", label="feline")
    merged = stored_memory.dmn.stream("s")
    assert "feline" not in merged.counts()
    assert merged.counts()["bee"] == min(merged.slots, counts["feline"] + counts.get("bee", 0))
    # Saved: a fresh facade over the same memory reads the renamed stream.
    again = VisualMemory(stored_memory.store, reranker=None)
    assert again.dmn.streams() == ["s"] and "feline" not in DynamicMemory.load(again.dmn.stream_path("s")).counts()


def test_labels_restrict_the_competing_classes(memory):
    q, _ = queries(5)
    res = memory.classify_dmn(q, stream="s", labels=["ant", "cat"])
    assert {r.label for r in res} <= {"ant", "cat"}
    assert all(set(r.scores) <= {"ant", "cat"} for r in res)


def test_fusion_weights_follow_the_options(memory):
    q, _ = queries(2)
    memory.classify_dmn(q[:1], stream="s")
    res = memory.classify_dmn(q[1:], stream="s", options={"alpha_dynamic": 0.5, "alpha_static": 2.0})[0]
    p_s = np.array([res.dmn.parts["static"].get(c, 0.0) for c in CLASSES])
    p_d = np.array([res.dmn.parts["dynamic"].get(c, 0.0) for c in CLASSES])
    # parts are the top-3 of 3 classes, so these are the full vectors (rounded to 1e-6).
    expected = fuse([(0.5, p_d), (2.0, p_s)])
    for c, p in zip(CLASSES, expected, strict=True):
        assert res.scores.get(c, 0.0) == pytest.approx(p, abs=1e-5)


def test_text_modes_need_a_clip_memory(memory):
    q, _ = queries(1)
    with pytest.raises(ValueError, match="needs a CLIP featurizer"):
        memory.classify_dmn(q, options={"mode": "zero-shot"})
    with pytest.raises(ValueError):
        DmnOptions(alpha_static=-1)
    with pytest.raises(ValueError, match="invalid DMN stream name"):
        memory.classify_dmn(q, stream="../escape")


def test_class_names_file_takes_the_first_synonym(tmp_path: Path):
    f = tmp_path / "classes.tsv"
    f.write_text("n02124075\tEgyptian cat\nn04067472\treel, spool\n")
    assert read_class_names(f) == {"n02124075": "Egyptian cat", "n04067472": "reel"}


def test_saves_are_throttled_and_flushed(stored_memory):
    memory = stored_memory
    q, _ = queries(3)
    memory.dmn.save_interval_s = 3600.0
    memory.classify_dmn(q[:1], stream="s")  # the first save of a stream happens at once
    memory.classify_dmn(q[1:], stream="s")  # within the interval: kept in memory only
    path = memory.dmn.stream_path("s")
    assert len(DynamicMemory.load(path)) == 1
    memory.dmn.flush()
    assert len(DynamicMemory.load(path)) == 3


def test_concurrent_requests_on_one_stream_lose_no_update(memory):
    from concurrent.futures import ThreadPoolExecutor

    q, _ = queries(16)
    memory.dmn.save_interval_s = 0.0
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: memory.classify_dmn(q[i : i + 4], stream="s"), range(0, 16, 4)))
        pool.submit(memory.dmn.flush).result(timeout=30)
    assert memory.dmn.stream("s").updates == 16
    if memory.dmn.persistent:
        assert DynamicMemory.load(memory.dmn.stream_path("s")).updates == 16


def test_a_stream_keeps_its_slot_count_and_refuses_another(memory):
    """L is fixed when a stream is made: asking an existing stream for another L is an error, not ignored."""
    q, _ = queries(6)
    memory.classify_dmn(q[:3], stream="s", options={"slots": 1})
    assert memory.dmn.stream("s").slots == 1
    with pytest.raises(ValueError, match="has 1 slot per class"):
        memory.classify_dmn(q[3:], stream="s", options={"slots": 3})
    # Without an explicit L the stream's own applies; no queue ever holds more than it.
    memory.classify_dmn(q[3:], stream="s")
    assert max(memory.dmn.stream("s").counts().values()) == 1


def test_a_copied_memory_takes_its_streams_along(stored_memory, tmp_path):
    q, _ = queries(6)
    stored_memory.classify_dmn(q, stream="cam1")  # not saved yet (throttled): the copy saves it first
    dest, notes = stored_memory.copy_to(tmp_path / "copy")
    assert notes == ["1 DMN dynamic memory copied along (vmem dmn streams)"]
    with VisualMemory(dest, reranker=None) as copied:
        assert copied.dmn.streams() == ["cam1"] and len(copied.dmn.stream("cam1")) == 6
        copied.classify_dmn(queries(4, seed=2)[0], stream="cam1")  # the copy goes on learning
        copied.dmn.flush()
    again, notes = stored_memory.copy_to(tmp_path / "copy")  # run again: the copy's own stream is kept
    with VisualMemory(again, reranker=None) as copied:
        assert notes == [] and copied.dmn.stream("cam1").updates == 10


def test_closing_saves_the_streams_and_a_closed_memory_never_writes_them_again(tmp_path):
    # A notebook: classify, close, open the memory again and go on. close() had not saved the throttled updates,
    # and at exit the closed memory's classifier wrote its older stream over the newer one.
    location = str(tmp_path / "memory")
    first = clustered_memory(location)
    q, _ = queries(30)
    first.dmn.save_interval_s = 3600.0
    first.classify_dmn(q[:10], stream="s")
    first.classify_dmn(q[10:20], stream="s")  # within the interval: not saved yet
    old_classifier = first.dmn
    first.close()
    with VisualMemory.open(location, reranker=None) as again:
        assert len(again.dmn.stream("s")) == 20
        again.classify_dmn(q[20:], stream="s")
    path = dmn_home() / stream_dir_key(again.store) / "s.npz"
    assert DynamicMemory.load(path).updates == 30
    old_classifier._flush_at_exit()  # what the interpreter's exit ran for it
    old_classifier.save("s", force=True)
    assert DynamicMemory.load(path).updates == 30


def test_a_stream_the_disk_takes_no_more_of_keeps_its_answers_and_is_saved_later(stored_memory, monkeypatch,
                                                                                   caplog):
    # A full $VMEM_HOME had turned a classify's answers into a traceback from the stream's save.
    import errno

    def disk_full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    q, _ = queries(6)
    with monkeypatch.context() as full:
        full.setattr(DynamicMemory, "save", disk_full)
        answers = stored_memory.classify_dmn(q, stream="s")
        stored_memory.dmn.flush()
    assert len(answers) == 6 and "could not be saved (No space left on device)" in caplog.text
    stored_memory.dmn.flush()  # room again: the stream is saved whole
    assert len(DynamicMemory.load(dmn_home() / stream_dir_key(stored_memory.store) / "s.npz")) == 6


def test_a_stream_file_that_does_not_load_fails_no_forget(stored_memory, caplog):
    # A forget whose label left the memory had ended in a BadZipFile traceback, its points deleted, its
    # listeners and erase skipped.
    folder = dmn_home() / stream_dir_key(stored_memory.store)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "old.npz").write_bytes(b"PK\x03\x04garbage")
    told = []
    stored_memory.on_forget(told.append)
    assert stored_memory.forget(label="cat", erase=True) == 10
    assert len(told) == 1 and "DMN stream 'old' left as it is" in caplog.text
