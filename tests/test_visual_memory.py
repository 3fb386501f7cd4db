"""The Python API: classify, add, forget, and where the vote settings come from."""

from __future__ import annotations

import uuid

import pytest

from retrieval import IndexSettings, VoteRule, open_store
from tests.conftest import make_image, make_scene, reencoded
from vmem import COPY_SIMILARITY, VisualMemory, upload_source


@pytest.fixture
def memory(lite0, tmp_path):
    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    images, labels = [], []
    for label, colour in {"red": (220, 20, 20), "blue": (30, 40, 220)}.items():
        for i in range(3):
            images.append(make_image(tuple(max(0, c - 15 * i) for c in colour)))
            labels.append(label)
    ids, failed = mem.add(images, labels)
    assert len(ids) == 6 and not failed
    yield mem
    mem.close()


def test_classify_bytes_and_explain_the_decision(memory):
    assert repr(memory) == f"<VisualMemory {memory.store.location} (efficientnet-lite0, 1280-d)>"  # a notebook's view
    [res] = memory.classify([make_image((200, 30, 30))], k=4)
    assert res.label == "red"
    assert res.vote.rule == VoteRule.rank and res.vote.k == 4 and res.vote.origin == "explicit"
    assert len(res.neighbors) == 4 and res.neighbors[0].label == "red"
    assert res.neighbors[0].weight == pytest.approx(0.5)  # 1 / (2 + 0)
    assert 0 <= res.novelty <= 2
    assert not res.reranked and res.fallback_reason is None
    # A notebook shows a summary, not four neighbours' every field (50 had run to 12,000 characters)
    shown = repr(res)
    assert shown.startswith("Classification('red', rank vote, k=4, scores {'red': ") and "4 neighbours" in shown
    assert str(res) == shown and len(shown) < 600


def test_a_memory_opened_twice_in_one_process_says_so_and_closes_for_the_next(memory):
    from retrieval import MemoryInUseError

    # A notebook's cell run again: refused, naming this process and the way out, not "another process".
    location = memory.store.location
    with pytest.raises(MemoryInUseError, match="already open in this process: close the object"):
        VisualMemory.open(location)
    memory.close()
    assert repr(memory).endswith("1280-d, closed)>")
    with VisualMemory.open(location) as again:
        assert again.store.count() == 6 and not again.store.closed
    assert again.store.closed


def test_paths_under_the_home_folder_are_taken_with_a_tilde(lite0, tmp_path, monkeypatch):
    # A notebook has no shell to expand ~: the memory had gone to ./~/mem, and the image was "no such file".
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "imgs").mkdir(parents=True)
    (tmp_path / "home" / "imgs" / "red.jpg").write_bytes(make_image((220, 20, 20)))
    monkeypatch.chdir(tmp_path)
    with VisualMemory.open("~/mem", featurizer="efficientnet-lite0", create=True) as mem:
        ids, failed = mem.add(["~/imgs/red.jpg"], ["red"])
        assert len(ids) == 1 and not failed
        [res] = mem.classify(["~/imgs/red.jpg"], k=1)
        assert res.label == "red" and res.neighbors[0].source == str(tmp_path / "home" / "imgs" / "red.jpg")
    assert (tmp_path / "home" / "mem" / "vmem.json").is_file() and not (tmp_path / "~").exists()
    with VisualMemory.open("~/mem") as again:
        assert again.store.count() == 1
        from retrieval import ImageDecodeError

        with pytest.raises(ImageDecodeError, match=r"a URL, and vmem reads images from files.*download it first"):
            again.classify(["https://example.com/cat.jpg"])
        # A name starting with ~ that names no user is a name as it is, not "Could not determine home directory"
        (tmp_path / "~draft.jpg").write_bytes(make_image((220, 20, 20)))
        assert again.classify(["~draft.jpg"], k=1)[0].label == "red"
    from vmem import MemoryStoreError

    with pytest.raises(MemoryStoreError, match="no memory at"):
        VisualMemory.open("~no-such-user-here/mem")


def test_adding_the_same_upload_twice_is_idempotent(memory):
    data = make_image((0, 200, 0))
    ids1, _ = memory.add([data], ["green"])
    ids2, _ = memory.add([data], ["green"])
    assert ids1 == ids2 and memory.store.count() == 7
    assert memory.store.retrieve(ids1)[0].source == upload_source(data)


def test_bad_images_in_add_are_reported_and_the_rest_kept(memory):
    ids, failed = memory.add([b"", make_image((0, 200, 0))], ["x", "green"])
    assert len(ids) == 1 and len(failed) == 1 and "empty" in failed[0].reason


def test_a_link_that_loops_among_the_images_added_is_reported_and_the_rest_kept(memory, tmp_path):
    (tmp_path / "good.jpg").write_bytes(make_image((0, 0, 200)))
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")  # resolve() raised RuntimeError (Python < 3.13): none was added
    ids, failed = memory.add([tmp_path / "good.jpg", tmp_path / "loop.jpg"], "blue")
    assert len(ids) == 1 and [f.reason.split(": ", 1)[1] for f in failed] == [
        "a symbolic link that leads to no file (its target is missing, or the link loops)"]


def test_one_label_names_every_image_added_and_one_image_is_refused_not_taken_apart(memory):
    shades = [make_image((0, 200 - 10 * i, 0)) for i in range(3)]
    ids, _ = memory.add(shades, "green")  # not "g", "r", "e": three letters for three images
    assert {p.label for p in memory.store.retrieve(ids)} == {"green"}
    with pytest.raises(TypeError, match=r"pass \[image\]"):
        memory.classify(make_image((200, 30, 30)))  # bytes would be taken as one "image" per byte
    with pytest.raises(TypeError, match="list of images"):
        memory.add("cat.jpg", ["cat"])
    with pytest.raises(ValueError, match="got 2 labels for 3 images"):
        memory.add(shades, ["green", "green"])


def test_the_errors_a_caller_meets_are_vmems_to_catch_by_name(memory, tmp_path):
    import vmem

    with pytest.raises(vmem.MemoryStoreError, match="no memory at"):
        VisualMemory.open(tmp_path / "nothing here")
    with pytest.raises(vmem.ImageDecodeError):
        memory.classify([b"not an image"])
    with pytest.raises(vmem.NoSuchLabelsError):
        memory.classify([make_image((200, 30, 30))], labels=["purple"])
    assert not issubclass(vmem.MemoryStoreError, MemoryError)  # Python's own: `except MemoryError` is not it
    with pytest.raises(ValueError, match="unknown op 'bogus'"):
        memory.history(op="bogus")  # an empty list would read as "never edited"


def test_a_memory_with_nothing_to_search_is_refused_not_answered_with_no_label(memory):
    import numpy as np

    from retrieval.store import EXCLUDED_KEY
    from vmem import NothingToSearchError

    query = [make_image((200, 30, 30))]
    # Every point hard-pruned: it had answered label None with no neighbours, read as the memory abstaining.
    memory.store.set_payload(memory.store.ids_where(), {EXCLUDED_KEY: "pruned"})
    with pytest.raises(NothingToSearchError, match=r"all 6 points .* are hard-pruned.*vmem prune --undo") as pruned:
        memory.classify(query, k=3)
    assert pruned.value.pruned and isinstance(pruned.value, ValueError)
    # The dmn rule of a memory without CLIP answers from the labelled memory alone: refused as a vote is
    with pytest.raises(NothingToSearchError, match="are hard-pruned"):
        memory.classify(query, rule="dmn")
    memory.forget(ids=memory.store.ids_where())
    memory.reranker = None  # nothing is asked of a re-ranker either
    for call in (lambda: memory.classify(query), lambda: memory.classify(query, rerank=True),
                 lambda: memory.classify_vectors(np.ones((2, 1280), dtype=np.float32)),
                 lambda: memory.classify(query, rule="dmn"),
                 lambda: memory.classify_dmn(np.ones((2, 1280), dtype=np.float32))):
        with pytest.raises(NothingToSearchError, match="holds no points: add labelled images first") as empty:
            call()
        assert not empty.value.pruned
    memory.set_label_names({"red": "crimson"})  # names outlive their points: dmn had answered label None then
    with pytest.raises(NothingToSearchError, match="holds no points"):
        memory.classify(query, rule="dmn")
    assert memory.classify_vectors(np.ones((0, 1280), dtype=np.float32)) == []  # no query: nothing to refuse
    memory.add([make_image((30, 40, 220))], "blue")
    assert memory.classify(query, k=3)[0].label == "blue"


def test_label_filter_limits_the_candidates(memory):
    [res] = memory.classify([make_image((200, 30, 30))], k=3, labels=["blue"])
    assert res.label == "blue" and {n.label for n in res.neighbors} == {"blue"}
    [res] = memory.classify([make_image((200, 30, 30))], k=3, labels="blue")  # one label, as a string
    assert res.label == "blue" and len(res.neighbors) == 3


def test_forget_tells_listeners_which_points_went(memory):
    heard: list[list[str]] = []
    memory.on_forget(heard.append)
    red_ids = memory.store.ids_where(label="red")
    assert memory.forget(label="red") == 3
    assert sorted(heard[0]) == sorted(red_ids)
    [res] = memory.classify([make_image((200, 30, 30))], k=6)
    assert res.label == "blue" and not set(red_ids) & {n.id for n in res.neighbors}
    with pytest.raises(ValueError, match="exactly one"):
        memory.forget(label="blue", ids=["x"])


def test_a_photo_and_its_copies_are_forgotten_by_what_they_look_like(memory, tmp_path):
    # "Remove this photo, and any copy of it": the user holds the photo, not its point id, nor the paths its copies
    # were stored under (uploaded once, re-saved as a JPEG into another folder, enlarged and uploaded again).
    import hashlib

    photo = make_scene(3)
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "IMG_0001.jpg"
    copy.write_bytes(reencoded(photo, "JPEG", quality=90))
    enlarged = reencoded(photo, "JPEG", scale=2, quality=90)
    others = [make_scene(seed) for seed in (0, 1, 2, 4, 5)]  # other pictures of the same kind: they stay
    memory.add([photo, copy, enlarged, *others], "shapes")
    assert memory.store.count() == 14

    found = memory.near_duplicates(photo)  # the default threshold: measured (README, "Forgetting")
    assert {d.source for d in found} == {upload_source(photo), str(copy), upload_source(enlarged)}
    assert found[0].source == upload_source(photo) and found[0].similarity == pytest.approx(1, abs=1e-3)
    assert all(d.similarity >= COPY_SIMILARITY and d.label == "shapes" for d in found)
    assert [d.similarity for d in found] == sorted((d.similarity for d in found), reverse=True)

    assert memory.forget_like(photo, dry_run=True) == found and memory.store.count() == 14  # a preview
    gone = memory.forget_like(photo)
    assert gone == found and memory.store.count() == 11
    assert memory.near_duplicates(photo) == [] and memory.store.count(label="shapes") == 5
    # The journal says what went and how it was chosen: the photo's sha256 and the threshold, not the photo.
    entry = memory.history(op="forget")[0]
    assert entry.selector == {"like_sha256": hashlib.sha256(photo).hexdigest(), "min_similarity": COPY_SIMILARITY}
    assert sorted(entry.ids) == sorted(d.id for d in found) and entry.labels == {"shapes": 3}
    assert memory.history(source=str(copy))[0] == entry  # "was my copy forgotten, and when?"
    assert memory.forget_like(copy) == [] and len(memory.history(op="forget")) == 1  # nothing left, nothing journaled


def test_a_point_and_its_copies_are_forgotten_by_its_id_where_the_caller_holds_no_image(memory, tmp_path):
    # A neighbour an answer cited, whose image the caller does not have (the page, a notebook): its id is enough.
    from vmem import UnknownPointError

    photo = make_scene(3)
    [pid, copy_id, other_id], _ = memory.add([photo, reencoded(photo, "JPEG", quality=90), make_scene(0)], "shapes")
    found = memory.near_duplicates(point_id=pid)
    assert [d.id for d in found] == [pid, copy_id] and found[0].similarity == pytest.approx(1, abs=1e-3)
    assert [d.id for d in memory.near_duplicates(point_id=copy_id)] == [copy_id, pid]
    assert memory.forget_like(point_id=pid, dry_run=True) == found and memory.store.count() == 9
    assert memory.forget_like(point_id=pid) == found and memory.store.count() == 7
    entry = memory.history(op="forget")[0]
    assert entry.selector == {"like_point": pid, "min_similarity": COPY_SIMILARITY} and sorted(entry.ids) == sorted(
        [pid, copy_id])
    with pytest.raises(UnknownPointError, match=f"no point with id {pid}"):  # forgotten: nothing to compare with
        memory.forget_like(point_id=pid)
    with pytest.raises(ValueError, match="is not a point id"):
        memory.near_duplicates(point_id="holiday.png")
    for both_or_neither in ({}, {"image": photo, "point_id": other_id}):
        with pytest.raises(ValueError, match="takes an image or a point_id: give one of them"):
            memory.forget_like(**both_or_neither)
    assert memory.store.count() == 7


def test_a_copy_pruning_hid_from_search_is_found_and_a_threshold_too_low_is_refused(memory, monkeypatch):
    from retrieval import ImageDecodeError
    from retrieval.store import EXCLUDED_KEY

    photo = make_scene(3)
    [pid], _ = memory.add([photo], "shapes")
    memory.store.set_payload([pid], {EXCLUDED_KEY: "pruned"})  # vmem prune --mode hard took it out of search
    assert pid not in {n.id for n in memory.classify([photo], k=7)[0].neighbors}
    assert [d.id for d in memory.near_duplicates(photo)] == [pid]  # but it is the photo, and unlearning finds it
    assert len(memory.near_duplicates(photo, min_similarity=0.01, limit=2)) == 2  # bounded by `limit`
    # A threshold so low that it takes more than copies: refused, nothing forgotten (not 1,000 points of a class)
    monkeypatch.setattr("vmem.visual_memory.MOST_COPIES", 3)
    with pytest.raises(ValueError, match=r"more than 3 points of the memory are at least 0\.01 similar"):
        memory.forget_like(photo, min_similarity=0.01)
    with pytest.raises(ValueError, match="more than 3 points"):
        memory.forget_like(photo, min_similarity=0.01, dry_run=True)
    # ... and a small memory has no 1,000 points to reach: over half of it is refused too (it forgot all of one)
    monkeypatch.setattr("vmem.visual_memory.MOST_COPIES", 1000)
    monkeypatch.setattr("vmem.visual_memory.FEW_COPIES", 2)
    with pytest.raises(ValueError, match=r"7 of the 7 points of the memory are at least 0\.01 similar"):
        memory.forget_like(photo, min_similarity=0.01)
    assert memory.store.count() == 7 and not memory.history(op="forget")
    # A similarity of 1 is the photo itself, its stored float16 vector 1 give or take 1e-4 from it (this one's:
    # 0.99991, which min_similarity=1 had missed)
    other = make_scene(13)
    [other_id], _ = memory.add([other], "shapes")
    assert [d.id for d in memory.near_duplicates(other, min_similarity=1)] == [other_id]
    for bad in (0, 1.5, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="min_similarity must be a number above 0 and at most 1"):
            memory.near_duplicates(photo, min_similarity=bad)
    with pytest.raises(ImageDecodeError):
        memory.forget_like(b"not an image")
    with pytest.raises(TypeError, match="an image is a path, bytes"):
        memory.near_duplicates(["a.jpg"])


def test_forget_drops_cached_rerank_answers_even_with_no_reranker_built(memory):
    from reranker import AnswerCache, RerankOutcome, default_cache_path

    # What an earlier process's re-ranker left: one answer citing a red point, one citing only blue ones.
    red, blue = memory.store.ids_where(label="red"), memory.store.ids_where(label="blue")
    cache = AnswerCache(default_cache_path())
    cache.put("about-red", RerankOutcome(label="red", reranked=True), [red[0], blue[0]])
    cache.put("about-blue", RerankOutcome(label="blue", reranked=True), blue)
    assert memory.reranker is None  # as in `vmem forget`: nothing re-ranks in this process
    memory.forget(ids=[red[0]])
    assert cache.get("about-red") is None and cache.get("about-blue") is not None
    cache.close()


def test_forgetting_a_folder_of_links_forgets_the_images_built_through_them(memory, tmp_path, monkeypatch):
    # A dataset assembled from links, as one often is: a class folder linked in, a single linked file.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "green").mkdir(parents=True)
    for i in range(2):
        (elsewhere / "green" / f"{i}.jpg").write_bytes(make_image((20, 200 - 9 * i, 20)))
    (elsewhere / "x.jpg").write_bytes(make_image((20, 180, 40)))
    (elsewhere / "kept.jpg").write_bytes(make_image((200, 200, 20)))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "green").symlink_to(elsewhere / "green")
    (dataset / "x.jpg").symlink_to(elsewhere / "x.jpg")
    (dataset / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")  # neither stops the forget
    (dataset / "loop").symlink_to(dataset / "loop")
    ids, failed = memory.add([dataset / "green" / "0.jpg", dataset / "green" / "1.jpg", dataset / "x.jpg",
                              elsewhere / "kept.jpg"], ["green", "green", "green", "yellow"])
    assert len(ids) == 4 and not failed
    assert memory.store.retrieve(ids[:1])[0].source == str(elsewhere / "green" / "0.jpg")  # stored resolved

    # Listing the folder shows what forgetting it would take, a page at a time in id order.
    first = memory.points(source_prefix=str(dataset), limit=2)
    rest = memory.points(source_prefix=str(dataset), cursor=first.next_cursor, limit=2)
    listed = [p.id for p in first.points + rest.points]
    assert sorted(listed) == sorted(ids[:3]) and listed == sorted(listed, key=uuid.UUID)
    assert rest.next_cursor is None
    assert memory.points(source_prefix=str(dataset), label="yellow").points == []

    # Walked once for all the pages, not once a page: at 250,000 points `vmem points --all --source` took hours.
    import vmem.visual_memory as vm

    walks = []
    real_walk = vm._links_under
    monkeypatch.setattr(vm, "_links_under", lambda prefix: walks.append(prefix) or real_walk(prefix))
    cursor, seen = None, []
    while True:
        page = memory.points(source_prefix=str(dataset), cursor=cursor, limit=1)
        seen += [p.id for p in page.points]
        if (cursor := page.next_cursor) is None:
            break
    assert sorted(seen) == sorted(ids[:3]) and len(walks) == 0  # the listing above is still the memory's
    (elsewhere / "green" / "2.jpg").write_bytes(make_image((20, 150, 20)))
    memory.add([dataset / "green" / "2.jpg"], "green")  # an edit: listed anew
    assert len(memory.points(source_prefix=str(dataset), limit=10).points) == 4 and len(walks) == 1
    memory.forget(ids=[memory.points(source_prefix=str(dataset), limit=1).points[0].id])

    assert memory.forget(source_prefix=str(dataset)) == 3
    assert memory.store.label_counts() == {"red": 3, "blue": 3, "yellow": 1}


@pytest.mark.parametrize("backend", ["edge", "qdrant-client"])
def test_forget_takes_one_id_as_a_string_and_refuses_what_is_not_an_id(lite0, tmp_path, backend):
    location = tmp_path / "memory" if backend == "edge" else ":memory:"
    with VisualMemory(open_store(location, lite0.spec), lite0) as mem:
        ids, _ = mem.add([make_image((200, 30, 30)), make_image((30, 40, 220))], ["red", "blue"])
        assert mem.forget(ids=ids[0]) == 1  # the id, not its 36 characters
        with pytest.raises(ValueError, match="'cat' is not a point id"):
            mem.forget(ids=["cat"])
        assert mem.forget(ids=[ids[1].upper()]) == 1
        assert mem.store.count() == 0


def test_vote_settings_precedence_explicit_then_memory_then_defaults(memory):
    assert memory.vote_settings().origin == "default"
    assert (memory.vote_settings().rule, memory.vote_settings().k) == (VoteRule.rank, 50)
    memory.store_vote_settings({"rule": "softmax", "k": 5, "tau": 0.1, "soft_pruning": True})  # as vmem tune does
    tuned = memory.vote_settings()
    assert (tuned.rule, tuned.k, tuned.tau, tuned.origin) == (VoteRule.softmax, 5, 0.1, "memory")
    explicit = memory.vote_settings(k=2)
    assert (explicit.rule, explicit.k, explicit.tau, explicit.origin) == (VoteRule.softmax, 2, 0.1, "explicit")
    [res] = memory.classify([make_image((200, 30, 30))])
    assert res.vote.origin == "memory" and len(res.neighbors) == 5
    assert memory.reset_vote_settings() == {"rule": "softmax", "k": 5, "tau": 0.1, "soft_pruning": True}
    assert memory.vote_settings().origin == "default" and memory.reset_vote_settings() is None
    assert memory.set_search_settings(hnsw_ef=256) == {"hnsw_ef": IndexSettings.model_fields["hnsw_ef"].default}
    assert memory.store.meta.index.hnsw_ef == 256
    # Checked as every vote and build checks them: stored unchecked, hnsw_ef=4 had made vmem.json unreadable, and
    # k=0 failed every classify after.
    for bad in ({"rule": "softmax", "k": 0}, {"rule": "bogus", "k": 5}, {"k": 5}):
        with pytest.raises(ValueError):
            memory.store_vote_settings(bad)
    for bad in ({"hnsw_ef": 4}, {"m": 32}):
        with pytest.raises(ValueError):
            memory.set_search_settings(**bad)
    assert memory.vote_settings().origin == "default" and memory.store.meta.index.hnsw_ef == 256
    # Each journaled as made through Python, as the CLI's tune and build journal theirs
    assert [(e.op, e.via) for e in memory.history()[:3]] == [("settings", "python"), ("tune", "python"),
                                                             ("tune", "python")]


def test_a_memory_tuned_beyond_todays_vote_bounds_still_classifies(memory, caplog):
    # `vmem tune --alphas 2e6` could store it before vote settings took the service's bounds: the memory then
    # classified nothing ("--alpha: Input should be less than or equal to 1000000", no --alpha given).
    memory.store.meta.settings["vote"] = {"rule": "rank", "k": 5, "alpha": 2e6, "tau": 0.07}
    [res] = memory.classify([make_image((200, 30, 30))])
    assert (res.vote.alpha, res.vote.origin) == (1e6, "memory") and len(res.neighbors) == 5
    assert "run vmem tune again" in caplog.text


def test_alpha_or_tau_the_rule_does_not_read_is_refused_before_any_image_is_embedded(memory, monkeypatch):
    monkeypatch.setattr(memory.featurizer, "embed", lambda *a, **kw: pytest.fail("embedded before refusing"))
    with pytest.raises(ValueError, match="alpha applies to rank voting only, and the rule asked for is plurality"):
        memory.classify([make_image((200, 30, 30))], rule="plurality", alpha=2)
    with pytest.raises(ValueError, match="tau applies to softmax voting only, and the default rule is rank"):
        memory.classify([make_image((200, 30, 30))], tau=0.1)
    memory.store.meta.settings["vote"] = {"rule": "softmax", "k": 5, "tau": 0.1}
    with pytest.raises(ValueError, match=r"this memory's tuned rule .* is softmax: ask for vote rank, or leave alpha"):
        memory.classify_many(["unread.jpg"], alpha=2)
    # What a rule reads is taken, explicitly or from the memory's settings.
    assert memory.vote_settings(tau=0.5).tau == 0.5
    assert memory.vote_settings("rank", alpha=3).alpha == 3


def test_rerank_without_a_reranker_falls_back_with_a_reason(memory):
    memory.reranker = None
    [res] = memory.classify([make_image((200, 30, 30))], k=3, rerank=True)
    assert res.label == "red" and res.reranked is False and res.fallback_reason


def test_open_creates_and_reopens(tmp_path, lite0):
    with VisualMemory.open(tmp_path / "m", featurizer="efficientnet-lite0", create=True) as mem:
        mem.add([make_image()], ["red"])
    with VisualMemory.open(tmp_path / "m") as mem:
        assert mem.stats()["points"] == 1
        assert mem.stats()["featurizer"]["name"] == "efficientnet-lite0"


def test_forget_by_folder_takes_that_folder_only_and_refuses_an_empty_prefix(memory, tmp_path, monkeypatch):
    for folder in ("cats", "catsanddogs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(make_image((20, 200, 20)))
    memory.add([str(tmp_path / "cats/a.jpg"), str(tmp_path / "catsanddogs/a.jpg")], ["cat", "pet"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        memory.forget(source_prefix=" ")  # would have been the current directory: everything above
    assert memory.forget(source_prefix="cats") == 1  # a folder: not catsanddogs/
    assert memory.store.count(label="pet") == 1 and memory.store.count(label="cat") == 0
    assert memory.forget(source_prefix="/") == 1  # every local file, nothing else
    assert memory.store.count() == 6


def test_the_same_image_twice_in_one_add_is_one_point_and_two_labels_are_refused(memory):
    green = make_image((0, 200, 0))
    ids, _ = memory.add([green, green], ["green", "green"])
    assert ids[0] == ids[1] and memory.store.count() == 7
    with pytest.raises(ValueError, match="given twice, labelled 'lime' and 'olive'"):
        memory.add([make_image((90, 200, 0)), make_image((90, 200, 0))], ["lime", "olive"])
    assert memory.store.count() == 7


def test_a_label_filter_no_point_passes_is_refused_before_embedding(memory):
    memory.set_label_names({"red": "crimson"})
    with pytest.raises(ValueError, match="has none of the labels 'crimson' \\('crimson' is the name of label red"):
        memory.classify([make_image((200, 30, 30))], labels=["crimson"])
    with pytest.raises(ValueError, match="labels is empty"):
        memory.classify_many([], labels=[])
    # A class list of which the memory holds a part (a benchmark's 200 classes) still filters by that part.
    [res] = memory.classify([make_image((200, 30, 30))], k=3, labels=["blue", "no-such"])
    assert res.label == "blue"


def test_numpy_arrays_are_images_as_a_notebook_holds_them(memory):
    import numpy as np

    import vmem

    red = np.zeros((64, 64, 3), np.uint8)
    red[...] = (200, 30, 30)
    [as_bytes] = memory.classify([make_image((200, 30, 30))], k=4)
    [as_array] = memory.classify([red], k=4)
    assert as_array.label == as_bytes.label == "red"
    batch = np.stack([red, red[..., ::-1]])  # [n, height, width, 3]: a batch, as a loader gives it
    assert [r.label for r in memory.classify(batch, k=4)] == ["red", "blue"]
    assert memory.classify([red.astype(np.float32) / 255], k=4)[0].label == "red"  # a tensor's 0..1 floats
    ids, failed = memory.add([red[..., [1, 0, 2]]], "green-ish")
    assert len(ids) == 1 and not failed and memory.store.retrieve(ids)[0].source.startswith("upload:")
    with pytest.raises(TypeError, match=r"pass \[image\]"):
        memory.classify(red)  # one image, not 64 rows of 64 x 3 "images"
    with pytest.raises(vmem.ImageDecodeError, match="channels first"):
        memory.classify([red.transpose(2, 0, 1)])
    with pytest.raises(vmem.ImageDecodeError, match="normalisation"):
        memory.classify([(red.astype(np.float32) - 128) / 64])


def test_what_is_no_image_is_refused_by_type_before_anything_is_embedded(memory, monkeypatch):
    monkeypatch.setattr(memory.featurizer, "embed", lambda *a, **k: pytest.fail("embedded"))
    with pytest.raises(TypeError, match="image 1 is a NoneType"):
        memory.classify([make_image((200, 30, 30)), None])
    with pytest.raises(TypeError, match="image 0 is a list"):
        memory.add([[1, 2, 3]], "x")


def test_sources_are_one_per_image_and_kept_as_given(memory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shades = [make_image((0, 0, 200 - 20 * i)) for i in range(2)]
    with pytest.raises(ValueError, match="got 1 source for 2 images"):
        memory.add(shades, "navy", sources=["camera/a.jpg"])
    with pytest.raises(ValueError, match="got 1 source for 2 images"):
        memory.classify(shades, sources=["a"])
    with pytest.raises(TypeError, match="list of sources"):
        memory.add(shades, "navy", sources="ab")  # not one source per letter
    ids, _ = memory.add(shades, "navy", sources=["cam1:frame-0001", str(tmp_path / "camera" / "b.jpg")])
    # A name is the point's identity: stored as given, so adding the same named images again changes nothing.
    assert [p.source for p in memory.store.retrieve(ids)] == ["cam1:frame-0001", str(tmp_path / "camera" / "b.jpg")]
    assert memory.add(shades, "navy", sources=["cam1:frame-0001", str(tmp_path / "camera" / "b.jpg")])[0] == ids
    assert memory.forget(source_prefix="camera/") == 1  # an absolute path is found by its folder


def test_a_closed_memory_says_so_before_embedding_anything(lite0, tmp_path, monkeypatch):
    import vmem

    mem = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0)
    mem.close()
    monkeypatch.setattr(lite0, "embed", lambda *a, **k: pytest.fail("embedded"))
    with pytest.raises(vmem.MemoryStoreError, match="closed"):
        mem.classify([make_image((200, 30, 30))])


def test_classify_many_reads_files_and_says_so_for_images_in_memory(memory):
    import numpy as np

    with pytest.raises(TypeError, match="image 0 is a ndarray; classify takes images in memory"):
        memory.classify_many([np.zeros((8, 8, 3), np.uint8)])  # was read as a file named by the array's text


def test_classify_many_tells_a_progress_bar_how_far_it_got(memory, tmp_path):
    # As build does: a notebook's folder of images had run silently to the end.
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"q{i}.jpg")
        paths[-1].write_bytes(make_image((200, 30 + i, 30)))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    done: list[int] = []
    results, failed = memory.classify_many([*paths, tmp_path / "bad.jpg"], batch_size=2, progress=done.append)
    assert len(results) == 5 and [f.source for f in failed] == [str(tmp_path / "bad.jpg")]
    assert sum(done) == 6 and len(done) >= 3  # each batch, the one that failed included


def test_an_id_given_twice_far_apart_is_forgotten_and_counted_once(memory):
    victim = memory.points(limit=1).points[0].id
    others = [str(uuid.uuid4()) for _ in range(5000)]  # more than one chunk of ids between the two
    assert memory.forget(ids=[victim, *others, victim]) == 1
    assert memory.history(op="forget")[0].points == 1


def test_a_relative_prefix_finds_names_stored_as_given_and_files_under_the_current_folder(memory, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    shades = [make_image((0, 0, 200 - 20 * i)) for i in range(5)]
    given = ["camera/a.jpg", "camera/b.jpg", "cam1:frame-0001", "cameras/c.jpg", str(tmp_path / "camera" / "d.jpg")]
    ids, _ = memory.add(shades, "navy", sources=given)
    # Both forms a user means by "camera/": names kept as given, and the absolute path of ./camera/
    chosen = memory.points(source_prefix="camera/").points
    assert sorted(p.source for p in chosen) == sorted([given[0], given[1], given[4]])
    assert [p.source for p in memory.points(source_prefix="cam1:").points] == ["cam1:frame-0001"]
    assert memory.relabel(source_prefix="cam1:", to="teal") == 1
    assert [e.op for e in memory.history(source="cam1:frame-0001")] == ["relabel"]  # the name's id, as stored
    assert memory.forget(source_prefix="camera/") == 3
    assert memory.history(op="forget")[0].selector == {"source_prefix": f"{tmp_path.resolve()}/camera/",
                                                       "as_given": "camera/"}
    assert sorted(p.source for p in memory.points().points if p.source in given) == ["cam1:frame-0001",
                                                                                     "cameras/c.jpg"]
    assert memory.history(source="camera/a.jpg")[0].op == "forget"  # forgotten, its history is still found


def test_a_template_without_rerank_is_refused_not_ignored(memory, monkeypatch):
    monkeypatch.setattr(memory.featurizer, "embed", lambda *a, **k: pytest.fail("embedded"))
    with pytest.raises(ValueError, match="give rerank=True too"):
        memory.classify([make_image((200, 30, 30))], template="labels-only")


def test_a_relative_prefix_never_chooses_uploads_or_uris_that_start_alike(memory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "upload").mkdir()  # a folder here named like the upload ids
    shades = [make_image((0, 0, 200 - 20 * i)) for i in range(4)]
    ids, _ = memory.add(shades, "navy", sources=["upload:sha256:abc:x.png", "https://example.org/h.jpg",
                                                 "upload/a.jpg", "uploads/b.jpg"])
    assert [p.source for p in memory.points(source_prefix="upload").points] == ["upload/a.jpg"]  # not uploads/
    assert memory.points(source_prefix="h").points == []
    assert memory.forget(source_prefix="upload") == 1
    assert len(memory.store.retrieve(ids)) == 3  # the upload, its only copy, is still there


def test_a_path_given_where_an_open_store_belongs_is_refused_naming_open(tmp_path):
    with pytest.raises(TypeError, match=r"VisualMemory takes an open store, not str.*VisualMemory\.open"):
        VisualMemory(str(tmp_path / "memory"))
