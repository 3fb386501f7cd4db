"""Copying a memory as stored: embedded to a Qdrant server (qdrant-client's local mode runs the server code)
and back, with nothing embedded again and nothing lost: ids, vectors, labels, sources, tags, pruning state,
label names and tuned settings."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerMismatchError, FeaturizerSpec, IndexSettings, Preprocessing, open_store
from retrieval.store import EXCLUDED_KEY, same_location
from tests.conftest import random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app

SPEC = FeaturizerSpec(name="dummy", dim=16, preprocessing=Preprocessing(resize=32, crop=32))


def make_memory(location, index: IndexSettings | None = None) -> VisualMemory:
    """60 points in 3 labels, tagged; one hard-pruned, one down-weighted; named labels and tuned settings."""
    store = open_store(location, SPEC, index=index)
    labels = [lab for lab in ("cat", "dog", "fox") for _ in range(20)]
    ids = store.add(random_unit_vectors(60, 16, seed=3), labels, [f"/data/{lab}/{i}.jpg" for i, lab in
                                                                    enumerate(labels)], tags={"set": "a"})
    store.set_payload([ids[0]], {EXCLUDED_KEY: "pruned"})
    store.set_payload([ids[1]], {"reliability": 0.25})
    store.meta.settings.update({"vote": {"rule": "softmax", "k": 7, "tau": 0.1}, "source_roots": ["/data"]})
    store.save_meta()
    mem = VisualMemory(store, reranker=None)
    mem.set_label_names({"cat": "house cat", "fox": "red fox"})
    return mem


def points_of(store) -> dict[str, tuple[dict, np.ndarray]]:
    return {p.id: ({k: v for k, v in p.payload.items() if k != "row"}, p.vector)
            for batch in store.scroll(with_vectors=True) for p in batch}


def test_embedded_to_a_server_and_back_loses_nothing(tmp_path):
    with make_memory(tmp_path / "edge") as mem:
        before = points_of(mem.store)
        queries = random_unit_vectors(5, 16, seed=9)
        answers = [[n.id for n in hits] for hits in mem.search(queries, 10, exact=True)]
        server, notes = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        assert notes == []
        with VisualMemory(server, reranker=None) as copied:
            back, _ = copied.copy_to(tmp_path / "edge2")
            back.close()
    with VisualMemory(open_store(tmp_path / "edge2"), reranker=None) as again:
        after = points_of(again.store)
        assert set(after) == set(before)
        for pid, (payload, vector) in before.items():
            assert after[pid][0] == payload  # added_at, tags, excluded, reliability: as stored
            np.testing.assert_allclose(after[pid][1], vector, atol=1e-3)  # float16 originals, both sides
        assert [[n.id for n in hits] for hits in again.search(queries, 10, exact=True)] == answers
        assert again.label_names == {"cat": "house cat", "fox": "red fox"}
        assert again.vote_settings().rule == "softmax" and again.vote_settings().k == 7
        assert again.store.count(searchable=True) == 59  # the pruned point is still out of search


def test_the_journal_goes_with_the_copy_and_says_it_was_copied(tmp_path):
    with make_memory(tmp_path / "edge") as mem:
        mem.forget(label="fox")
        server, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        with VisualMemory(server, reranker=None) as copied:
            history = copied.history()
            assert [e.op for e in history] == ["copy", "forget", "name"]
            assert (history[0].points, history[0].selector) == (40, {"from": str(tmp_path / "edge")})
            assert history[1] == mem.history(op="forget")[0]  # as recorded: when, by whom, which ids
            assert copied.history(source="/data/fox/45.jpg") == [history[1]]
            back, _ = copied.copy_to(tmp_path / "edge2")
            back.close()
        again, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")  # run twice: nothing carried twice
        with VisualMemory(again, reranker=None) as twice:
            assert [e.op for e in twice.history()] == ["copy", "copy", "forget", "name"]
    with VisualMemory(open_store(tmp_path / "edge2"), reranker=None) as back_home:
        assert [e.op for e in back_home.history()] == ["copy", "copy", "forget", "name"]


def test_a_copy_run_again_forgets_there_what_was_forgotten_here_since(tmp_path):
    # A replica kept current with copy: the forgotten points had stayed in it, under a journal saying they were
    # forgotten and erased.
    with make_memory(tmp_path / "edge") as mem:
        replica, _ = mem.copy_to(tmp_path / "replica")
        own = replica.add(random_unit_vectors(1, 16, seed=8), ["owl"], ["/replica-only/owl.jpg"])  # its own point
        replica.close()
        server, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        server.close()
        fox = set(mem.chosen_points(label="fox"))
        mem.forget(label="fox", erase=True)
        # Forgotten, then added again (same source, same id): it goes with the copy as it is now.
        (back,) = mem.store.add(random_unit_vectors(1, 16, seed=11), ["fox"], ["/data/fox/45.jpg"])
        assert back in fox
        dest, notes = mem.copy_to(tmp_path / "replica")
        with dest:
            assert dest.existing_ids(list(fox)) == {back} and dest.existing_ids(own)
            assert dest.count() == mem.store.count() + 1
            assert notes[0] == "19 points an earlier copy put there were forgotten here since: forgotten there too"
            assert notes[1] == "forgotten points erased from its files, as they were here"
            assert [e.op for e in VisualMemory(dest, reranker=None).history()[:3]] == ["copy", "erase", "forget"]
        dest, notes = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        with dest:
            assert dest.existing_ids(list(fox)) == {back}
            assert notes[1] == "a Qdrant server erases them from its files on its own schedule"
        dest, notes = mem.copy_to(tmp_path / "replica")  # run again: nothing new to forget
        dest.close()
        assert notes == []


def test_a_copy_into_a_memory_of_its_own_forgets_none_of_its_points(tmp_path):
    # A memory built on its own from the same images: a forget in the source is none of its business (its own
    # point of the forgotten image had been deleted by the copy, as if an earlier copy had put it there).
    with make_memory(tmp_path / "edge") as mem, make_memory(tmp_path / "own") as own:
        (gone,) = mem.chosen_points(source_prefix="/data/fox/45.jpg")
        mem.forget(ids=[gone])
        own.store.close()
        dest, notes = mem.copy_to(tmp_path / "own")
        with dest:
            assert dest.existing_ids([gone]) == {gone} and notes == []


def test_a_copy_cut_short_is_finished_by_running_it_again(tmp_path):
    with make_memory(tmp_path / "edge") as mem:
        dest, _ = mem.copy_to(tmp_path / "copy")
        dest.delete_ids([p.id for p in next(dest.scroll(batch_size=25))])  # as if it stopped a third in
        dest.close()
        dest, _ = mem.copy_to(tmp_path / "copy")
        with dest:
            assert dest.count() == 60 and dest.meta.settings["source_roots"] == ["/data"]


def test_an_embedded_only_setting_is_dropped_for_a_server_and_said(tmp_path):
    index = IndexSettings(rescore=False, rescore_doubtful=True)
    with make_memory(tmp_path / "edge", index=index) as mem:
        dest, notes = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        with dest:
            assert not dest.meta.index.rescore_doubtful and dest.meta.index.rescore
            assert "rescores by its original vectors" in notes[0]


def test_a_copy_onto_itself_or_another_encoders_memory_is_refused(tmp_path):
    other = FeaturizerSpec(name="other", dim=16, preprocessing=Preprocessing(resize=32, crop=32))
    open_store(tmp_path / "other", other).close()
    with make_memory(tmp_path / "edge") as mem:
        with pytest.raises(ValueError, match="is this memory"):
            mem.copy_to(tmp_path / "edge")
        with pytest.raises(FeaturizerMismatchError):
            mem.copy_to(tmp_path / "other")


def test_a_local_mode_memory_keeps_its_prefix_and_is_refused_as_its_own_copy(tmp_path, monkeypatch):
    with make_memory(tmp_path / "edge") as mem:
        server, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
    monkeypatch.chdir(tmp_path)
    with VisualMemory(server, reranker=None) as local:
        assert local.stats()["location"] == f"qdrant-local:{tmp_path / 'server'}"  # reopens as what it is
        for itself in ["qdrant-local:server", "qdrant-local:./server/"]:
            with pytest.raises(ValueError, match="is this memory"):
                local.copy_to(itself)
        dest, _ = local.copy_to(tmp_path / "edge2")
        with VisualMemory(dest, reranker=None) as back:
            assert back.history()[0].selector == {"from": f"qdrant-local:{tmp_path / 'server'}"}


def test_locations_name_one_place_whatever_their_spelling():
    assert same_location("http://Qdrant.example:6333/", "http://qdrant.example:6333")
    assert not same_location("http://qdrant.example:6333", "http://qdrant.example:6334")
    assert same_location("./memory/", "memory") and not same_location("memory", "qdrant-local:memory")
    assert not same_location(":memory:", ":memory:")  # two process-local memories


def test_cli_copy(tmp_path):
    make_memory(tmp_path / "edge").close()
    runner = CliRunner(env={"COLUMNS": "250"})
    res = runner.invoke(app, ["copy", "--memory", str(tmp_path / "edge"), "--to-memory", str(tmp_path / "copy")])
    assert res.exit_code == 0, res.output
    assert "copied 60 points" in res.stdout and "now holds 60 points" in res.stdout
    neither = runner.invoke(app, ["copy", "--memory", str(tmp_path / "edge")])
    assert neither.exit_code == 2 and "exactly one of --to-memory DIR or --to-qdrant-url URL" in neither.output
    itself = runner.invoke(app, ["copy", "--memory", str(tmp_path / "edge"), "--to-memory", str(tmp_path / "edge")])
    assert itself.exit_code == 2 and "is this memory" in itself.output
    # A destination that cannot be one: the error names the option that gave it.
    (tmp_path / "a-file").write_text("not a memory")
    onto_file = runner.invoke(app, ["copy", "--memory", str(tmp_path / "edge"),
                                    "--to-memory", str(tmp_path / "a-file")])
    assert onto_file.exit_code == 2 and "Invalid value for --to-memory:" in onto_file.output, onto_file.output
    no_url = runner.invoke(app, ["copy", "--memory", str(tmp_path / "edge"), "--to-qdrant-url", "localhost:6333"])
    assert no_url.exit_code == 2 and "Invalid value for --to-qdrant-url:" in no_url.output, no_url.output


def test_a_copy_whose_erase_failed_erases_when_run_again(tmp_path, monkeypatch):
    # The points were deleted there, the erase refused (a full disk): run again, the copy found nothing left to
    # delete and erased nothing, under a carried journal saying "erase".
    from retrieval.store import EdgeMemoryStore, MemoryFullError

    with make_memory(tmp_path / "edge") as mem:
        mem.copy_to(tmp_path / "replica")[0].close()
        mem.forget(label="fox", erase=True)
        erases = []

        def refused(self):
            erases.append(self.path)
            raise MemoryFullError("no room to rewrite")

        with monkeypatch.context() as full:
            full.setattr(EdgeMemoryStore, "erase_forgotten", refused)
            with pytest.raises(MemoryFullError):
                mem.copy_to(tmp_path / "replica")
        assert erases == [tmp_path / "replica"]
        dest, notes = mem.copy_to(tmp_path / "replica")
        with dest:
            assert notes == ["forgotten points erased from its files, as they were here"]
            assert [e.op for e in VisualMemory(dest, reranker=None).history()[:3]] == ["copy", "erase", "forget"]


def test_a_copy_from_a_memory_moved_since_still_forgets_there_what_was_forgotten(tmp_path):
    # Copies had been recognised by the source's location only: moved, its forgets were skipped in the replica
    # while the journal carried there said them made.
    import shutil

    with make_memory(tmp_path / "edge") as mem:
        mem.copy_to(tmp_path / "replica")[0].close()
    shutil.move(tmp_path / "edge", tmp_path / "moved")
    with VisualMemory(open_store(tmp_path / "moved"), reranker=None) as moved:
        fox = set(moved.chosen_points(label="fox"))
        moved.forget(label="fox")
        dest, notes = moved.copy_to(tmp_path / "replica")
        with dest:
            assert not dest.existing_ids(list(fox))
            assert notes[0] == "20 points an earlier copy put there were forgotten here since: forgotten there too"
