"""The journal misses no add, forget, relabel, naming or tune a process killed before its entry made, and claims none
it did not.

A forget or relabel notes its points (a naming its names, a tune its settings) in `journal.pending/` before its first
write, an add each batch's points before the batch; the memory's next opening journals what the memory shows was made
(retrieval/journal.py). Each test kills a child process (SIGKILL) at one step of an edit, reopens the memory, and
reads its history as a user would after an unlearning request.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, Preprocessing, open_store
from retrieval.journal import PENDING_DIR, FileJournal, JournalQuery, most_first
from retrieval.store import open_read_only
from tests.conftest import REPO, make_image, random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app

SPEC = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))

# The child edits the memory and is killed where `step` says: at its delete, its entry, or the note's removal.
_KILLED_AT = """
import os, signal, sys
from eval.pruning import prune_store, undo_pruning
from retrieval import open_store
from vmem import VisualMemory

memory, step, edit = sys.argv[1:4]
mem = VisualMemory(open_store(memory), reranker=None)
journal, store = mem.store.journal, mem.store

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if edit == "erase":
    mem.forget(label="cat")  # made and journaled: what is killed is the erase of its vectors after it
elif edit == "unprune":
    prune_store(store, "hard", threshold=1)  # made and journaled: what is killed is its undo
if step == "before the edit" and edit == "import":  # at its first batch: noted, nothing added
    store._upsert = killed
elif step == "before the edit":
    store.delete_ids = store.relabel = store.save_meta = store.erase_forgotten = killed
    store.set_payload_of_existing = killed
elif step == "at the second batch":  # an import of 3 batches: the first written
    writes, upsert = [], store._upsert
    def second_killed(*args, **kwargs):
        writes.append(1)
        if len(writes) == 2:
            killed()
        upsert(*args, **kwargs)
    store._upsert = second_killed
elif step == "after the edit":
    journal.append = killed
elif step == "after the entry":
    journal.settled = killed
elif step == "after the list":  # a memory on a server: a forget's points listed in parts, its note not written
    import retrieval.journal
    retrieval.journal.PAIRS_PER_LIST = 4  # 10 points: 3 parts, the note sent with the last
    write = journal._write_pending
    def note_killed(note, points):
        if any(payload["kind"] == "note" for _, payload in points):
            killed()
        write(note, points)
    journal._write_pending = note_killed
if edit == "forget":
    mem.forget(label="cat")
elif edit == "name":
    mem.set_label_names({"cat": "house cat"})
elif edit == "erase":
    mem.erase_forgotten()
elif edit == "prune":
    prune_store(store, "hard", threshold=1)
elif edit == "unprune":
    undo_pruning(store)
elif edit == "import":  # 30 new points of vectors made elsewhere, 10 a batch
    folder = memory.removeprefix("qdrant-local:")  # a memory in qdrant-client's local mode (test_journal_crash_server)
    mem.import_points(os.path.join(os.path.dirname(folder), "points.npz"), featurizer="t", batch_size=10)
elif edit == "tune":
    mem.store_vote_settings({"rule": "distance", "k": 7})
elif edit == "search settings":
    mem.set_search_settings(hnsw_ef=77)
else:
    mem.relabel("feline", label="cat")
"""


@pytest.fixture
def memory(tmp_path) -> Path:
    location = tmp_path / "memory"
    with open_store(location, SPEC) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    # What the import edit adds: 30 points of its own, 20 cats and 10 owls
    np.savez(tmp_path / "points.npz", vectors=random_unit_vectors(30, 8, seed=1),
             labels=np.array(["cat", "cat", "owl"] * 10), sources=np.array([f"/data/{i}.jpg" for i in range(30, 60)]))
    return location


def killed(memory: Path, step: str, edit: str) -> None:
    child = subprocess.run([sys.executable, "-c", _KILLED_AT, str(memory), step, edit], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def history_of(memory: Path, source: str) -> str:
    shown = CliRunner().invoke(app, ["history", "--memory", str(memory), "--source", source])
    assert shown.exit_code == 0, shown.output
    return shown.output


def test_a_forget_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory):
    # The unlearning audit: `vmem history --source` is how a user proves an image was forgotten. The forget was
    # made and the process killed before its entry: the history had no trace of it, for good.
    killed(memory, "after the edit", "forget")
    assert (memory / PENDING_DIR).is_dir()
    shown = history_of(memory, "/data/0.jpg")
    assert "not in the memory now" in shown
    assert "\tforget\t10 points (cat: 10)\tby label 'cat'\tvia python on " in shown
    with VisualMemory.open(memory) as mem:
        [forget] = mem.history(op="forget")
        assert len(forget.ids) == 10 and not mem.store.existing_ids(forget.ids)
        assert "journaled_at_open" in forget.detail  # written by the opening, not by the process that forgot
        assert forget.pid != 0 and mem.store.label_counts() == {"dog": 10, "fox": 10}
    assert not any((memory / PENDING_DIR).iterdir())


def test_a_relabel_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory):
    killed(memory, "after the edit", "relabel")
    with VisualMemory.open(memory) as mem:
        [relabel] = mem.history(op="relabel")
        assert (relabel.points, relabel.labels, relabel.to) == (10, {"cat": 10}, "feline")
        assert mem.store.label_counts() == {"feline": 10, "dog": 10, "fox": 10}
        assert mem.history(source="/data/0.jpg") == [relabel]


def test_a_naming_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory):
    killed(memory, "after the edit", "name")
    with VisualMemory.open(memory) as mem:
        assert mem.label_names == {"cat": "house cat"}
        [name] = mem.history()
        assert (name.op, name.detail["names"], name.detail["replace"]) == ("name", {"cat": "house cat"}, False)
        assert mem.history(label="cat") == [name]


def test_an_erase_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory):
    # When a forgotten image's vector left the disk is the fact an audit asks after the forget: the erase was made
    # and its process killed before its entry, and the history said the vector was still on disk.
    killed(memory, "after the edit", "erase")
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == ["erase", "forget"]
        [erase] = mem.history(op="erase")
        assert "journaled_at_open" in erase.detail and erase.at > mem.history(op="forget")[0].at
        assert mem.store.holds_no_deleted_vectors()
    assert not any((memory / PENDING_DIR).iterdir())


@pytest.mark.parametrize("edit", ["prune", "unprune"])
def test_a_prune_or_undo_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory, edit):
    # Which points were out of every search, and since when, is the journal's to say: a prune killed after its
    # marks and report and before its entry left points excluded that no entry named (an undo, points back).
    killed(memory, "after the edit", edit)
    with VisualMemory.open(memory) as mem:
        entry = mem.history()[0]
        assert entry.op == edit and "journaled_at_open" in entry.detail
        if edit == "prune":
            assert entry.points == mem.store.meta.settings["pruning"]["excluded"] > 0
            assert entry.detail["threshold"] == 1
        else:
            assert "pruning" not in mem.store.meta.settings and [e.op for e in mem.history()] == ["unprune", "prune"]
            assert entry.points == mem.history()[1].points > 0  # blamed points' marks all cleared
    assert not any((memory / PENDING_DIR).iterdir())


@pytest.mark.parametrize(("step", "added"), [("after the edit", {"cat": 20, "owl": 10}),
                                             ("at the second batch", {"cat": 7, "owl": 3})])
def test_an_import_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory, step, added):
    # The points were in the memory and no add entry said so: killed before the import's entry (or between its
    # batches, before the next entry a long import writes every minute), `vmem history --label owl` showed no
    # edit of the label the memory held 10 (or 3) points of, and run again, the import counted them "already in
    # memory": never journaled.
    killed(memory, step, "import")
    with VisualMemory.open(memory) as mem:
        assert mem.store.label_counts() == most_first(Counter({"cat": 10, "dog": 10, "fox": 10}) + Counter(added))
        [add] = mem.history(op="add")
        assert (add.points, add.labels) == (sum(added.values()), added)
        assert "journaled_at_open" in add.detail and add.detail["import"]["file"] == "points.npz"
        assert mem.history(label="owl") == [add]
        assert mem.import_points(memory.parent / "points.npz", featurizer="t").added == 30 - add.points
    assert not any((memory / PENDING_DIR).iterdir())


@pytest.mark.parametrize("edit", ["tune", "search settings"])
def test_a_tune_or_settings_change_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory,
                                                                                                         edit):
    # vmem.json was written and the process killed before the entry: the memory voted (searched) otherwise from then
    # on, and its history said nothing of when or by whom.
    killed(memory, "after the edit", edit)
    with VisualMemory.open(memory) as mem:
        [entry] = mem.history()
        assert "journaled_at_open" in entry.detail
        if edit == "tune":
            assert entry.op == "tune" and entry.detail["vote"] == mem.store.meta.settings["vote"] == {
                "rule": "distance", "k": 7}
        else:
            assert entry.op == "settings" and entry.detail["search"] == {"hnsw_ef": 77} == {
                "hnsw_ef": mem.store.meta.index.hnsw_ef}
    assert not any((memory / PENDING_DIR).iterdir())


@pytest.mark.parametrize("edit", ["forget", "relabel", "name", "erase", "prune", "unprune", "import", "tune",
                                  "search settings"])
def test_an_edit_killed_before_its_first_write_is_not_in_the_history(memory, edit):
    killed(memory, "before the edit", edit)
    with VisualMemory.open(memory) as mem:
        if edit in ("erase", "unprune"):  # the edit before it is; its undo is not
            assert [e.op for e in mem.history()] == [{"erase": "forget", "unprune": "prune"}[edit]]
            assert not mem.store.holds_no_deleted_vectors() if edit == "erase" else mem.store.meta.settings["pruning"]
            return
        assert mem.history() == []  # noted, never made: the journal claims nothing
        assert mem.store.label_counts() == {"cat": 10, "dog": 10, "fox": 10} and mem.label_names == {}
        assert "vote" not in mem.store.meta.settings and mem.store.meta.index.hnsw_ef != 77
    assert not any((memory / PENDING_DIR).iterdir())


@pytest.mark.parametrize("edit", ["forget", "relabel", "name", "erase", "prune", "unprune", "import", "tune",
                                  "search settings"])
def test_an_edit_killed_after_its_entry_is_in_the_history_once(memory, edit):
    killed(memory, "after the entry", edit)
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == {"erase": ["erase", "forget"], "unprune": ["unprune", "prune"],
                                                 "import": ["add"], "search settings": ["settings"]}.get(edit, [edit])
        assert "journaled_at_open" not in mem.history()[0].detail


def test_a_note_cut_short_by_a_kill_is_removed_and_a_normal_edit_leaves_no_note(memory):
    with VisualMemory.open(memory) as mem:
        mem.forget(label="fox")
        mem.relabel("hound", label="dog")
        assert not any((memory / PENDING_DIR).iterdir())
    (memory / PENDING_DIR / "0123.json").write_text('{"token": "0123", "beg')  # killed as it was written
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == ["relabel", "forget"]
        assert "journaled_at_open" not in mem.history()[0].detail
    assert not any((memory / PENDING_DIR).iterdir())


def test_a_relabel_failing_between_its_writes_is_journaled_as_far_as_it_went(tmp_path):
    # A relabel writes per 4,096 points: the second write refused (a full disk), the first stays made, and had
    # never been journaled.
    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(random_unit_vectors(5000, 8), ["cat"] * 5000, [f"/d/{i}.jpg" for i in range(5000)])

    class RefusedAtSecondWrite:  # the engine's shard, refusing its second write
        def __init__(self, shard) -> None:
            self.shard, self.writes = shard, 0

        def __getattr__(self, name):
            return getattr(self.shard, name)

        def update(self, operation):
            self.writes += 1
            if self.writes == 2:
                raise OSError(28, "No space left on device")
            return self.shard.update(operation)

    with VisualMemory.open(tmp_path / "memory") as mem:
        mem.store.shard = RefusedAtSecondWrite(mem.store.shard)
        with pytest.raises(OSError, match="No space left"):
            mem.relabel("feline", label="cat")
        mem.store.shard = mem.store.shard.shard
        assert mem.store.label_counts() == {"feline": 4096, "cat": 904}
        [relabel] = mem.history(op="relabel")
        assert (relabel.points, relabel.labels, relabel.to) == (4096, {"cat": 4096}, "feline")
        assert relabel.detail == {}  # journaled by the process that made it, as it failed: as any entry
    assert not any((tmp_path / "memory" / PENDING_DIR).iterdir())


def test_a_memory_whose_entry_was_cut_inside_a_character_opens_and_journals_the_forget(tmp_path):
    # A write stopped partway (a kill during a long write stops it at a page; a full disk at its last block) can cut
    # a label's character in two: reading the journal to settle the note raised UnicodeDecodeError, and the memory
    # no longer opened (its history failed too)
    with open_store(tmp_path / "memory", SPEC) as store:
        ids = store.add(random_unit_vectors(3, 8), ["猫", "猫", "dog"], [f"/data/{i}.jpg" for i in range(3)])
        note = store.journal.intend("forget", {ids[0]: "猫"}, selector={"label": "猫"})
        assert note is not None
        store.delete_ids([ids[0]])
        entry = '{"at":"2026-12-07T00:00:00+00:00","op":"forget","labels":{"猫":1}}'.encode()
        with open(store.journal.path, "ab") as f:
            f.write(entry[: entry.index("猫".encode()) + 1])
        assert store.journal.read() == []  # read up to the torn line (the store journals no add of its own)
        assert store.journal.newest(JournalQuery(), limit=5) == ([], 0)  # vmem history, the page's recent edits
    with open_store(tmp_path / "memory") as store:
        assert store.count() == 2
        forgets = [e for e in store.journal.read() if e.op == "forget"]
        assert [(e.ids, e.labels) for e in forgets] == [([ids[0]], {"猫": 1})]
        assert not list((tmp_path / "memory" / PENDING_DIR).iterdir())


@pytest.mark.parametrize("edit", ["forget", "relabel", "name"])
def test_an_edit_killed_before_it_was_made_and_then_made_by_an_older_vmem_is_journaled_once(memory, edit):
    # A rollback after an upgrade: this vmem was killed before its edit's first write, leaving its note, and the
    # user made the edit again with the vmem before (bd12890), which keeps no notes and never reads them (it is as
    # if the folder were not there). The next opening by this vmem journaled the note as well: a second entry,
    # naming the killed process, which had made nothing.
    killed(memory, "before the edit", edit)
    hidden = memory.parent / "pending.seen-by-no-one"
    (memory / PENDING_DIR).rename(hidden)
    with VisualMemory.open(memory) as mem:  # the older vmem's edit, and its entry
        if edit == "forget":
            mem.forget(label="cat")
        elif edit == "name":
            mem.set_label_names({"cat": "house cat"})
        else:
            mem.relabel("feline", label="cat")
        made_by = mem.history()[0]
    shutil.rmtree(memory / PENDING_DIR)
    hidden.rename(memory / PENDING_DIR)
    with VisualMemory.open(memory) as mem:
        assert mem.history() == [made_by]
    assert not any((memory / PENDING_DIR).iterdir())


def test_a_whole_note_of_an_edit_this_vmem_does_not_know_is_left_for_the_vmem_that_wrote_it(memory, caplog):
    # A rollback from a newer vmem: its note of an edit this one has no op for (here "copy") is whole JSON, not
    # cut short by a kill. The vmem of 4f6c9ae removed such notes as cut short (this one's add and tune notes,
    # after a kill), so that going forward again the edit they noted was never journaled.
    newer = memory / PENDING_DIR / "4567.json"
    with VisualMemory.open(memory) as mem:
        mem.forget(label="fox")
    newer.write_text('{"token": "4567", "begun": "2026-12-08T01:02:03+00:00", "op": "copy", "before": {}}')
    (memory / PENDING_DIR / "4567.adds").write_text('["a", "cat"]\n')
    with VisualMemory.open(memory) as mem:
        mem.relabel("hound", label="dog")
        assert [e.op for e in mem.history()] == ["relabel", "forget"]
    assert sorted(p.name for p in (memory / PENDING_DIR).iterdir()) == ["4567.adds", "4567.json"]
    assert "4567.json" in caplog.text and "cannot read" in caplog.text


def test_the_list_of_an_add_whose_note_an_older_vmem_removed_is_removed_and_said(memory, caplog):
    # An import of 3 batches killed at its second (note and list left), then opened by the vmem of 4f6c9ae, which
    # knows no add notes: it removed the note as cut short, and the list beside it stayed for good.
    killed(memory, "at the second batch", "import")
    (note,) = (memory / PENDING_DIR).glob("*.json")
    note.unlink()  # what the older vmem does at its opening
    with VisualMemory.open(memory) as mem:
        assert mem.store.count() == 40  # the first batch's 10 points stay, journaled by no entry (said)
        assert [e.op for e in mem.history()] == []
    assert not any((memory / PENDING_DIR).iterdir())
    assert f"removed {note.stem}.adds, the points (20) an add listed" in caplog.text


_ADD_KILLED = """
import os, signal, sys
from retrieval import open_store
from tests.conftest import make_image
from tests.test_feature_cache import MeanColour
from vmem import VisualMemory

# A mean-colour encoder: torch only, no transformers to import (the encoder is not what is killed)
mem = VisualMemory(open_store(sys.argv[1], MeanColour().spec), MeanColour(), reranker=None)
mem.add([make_image((200, 30, 30))], "cat")  # made and journaled
mem.store.journal.append = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
mem.add([make_image((30, 200, 30)), make_image((30, 30, 200))], ["owl", "cat"])
"""


def test_an_add_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(tmp_path):
    # As an HTTP add makes it: the points were written and the process killed before their entry, and the memory
    # held 2 points no add entry counted (`vmem history --label owl`: no edit of a label it held a point of).
    child = subprocess.run([sys.executable, "-c", _ADD_KILLED, str(tmp_path / "memory")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    with VisualMemory.open(tmp_path / "memory", reranker=None) as mem:
        assert mem.store.label_counts() == {"cat": 2, "owl": 1}
        second, first = mem.history(op="add")
        assert (first.points, first.labels) == (1, {"cat": 1}) and "journaled_at_open" not in first.detail
        assert (second.points, second.labels) == (2, {"cat": 1, "owl": 1}) and "journaled_at_open" in second.detail
        assert mem.history(label="owl") == [second]
    assert not any((tmp_path / "memory" / PENDING_DIR).iterdir())


def test_the_entries_of_another_add_of_the_same_process_do_not_count_as_a_killed_adds(tmp_path):
    # A service imports a file in one thread while another adds an image: the import's entry, written between the
    # add's note and its kill, counts the import's cats, not the add's; counted as the add's, the add's cat was
    # never journaled.
    journal = FileJournal(tmp_path / "journal.jsonl")
    note = journal.intend("add", {}, detail={})
    assert note is not None
    cat = str(uuid.uuid4())
    journal.note_adds(note, [cat], ["cat"])
    journal.record("add", points=1, labels={"cat": 1}, selector={"import": "points.npz"},
                   detail={"import": {"file": "points.npz", "sha256": "ab12"}})
    listed = note.model_copy(update={"before": journal.noted_adds(note)})
    assert journal.settle(listed, {cat: "cat"}, {}) == 1
    assert [(e.points, e.selector) for e in journal.read()] == [(1, {}), (1, {"import": "points.npz"})]  # by time


def test_an_add_whose_entry_could_not_be_written_is_journaled_though_the_process_added_more(tmp_path, encoder):
    # A served memory: the journal could not be written for one add (a full disk, briefly), so its note stayed for the
    # next opening; the service went on adding, and a later add of the same label was journaled. That later entry,
    # of the same process and kind, was counted as the first add's own: the first cat was never journaled.
    with VisualMemory.open(tmp_path / "memory", encoder, create=True, reranker=None) as mem:
        append = mem.store.journal.append

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        mem.store.journal.append = full  # type: ignore[method-assign]
        mem.add([make_image((200, 30, 30))], "cat")
        mem.store.journal.append = append  # type: ignore[method-assign]
        mem.add([make_image((30, 200, 30))], "cat")
        assert [e.points for e in mem.history(op="add")] == [1]  # the second add's; the first's note is kept
    with VisualMemory.open(tmp_path / "memory", reranker=None) as mem:
        assert mem.store.label_counts() == {"cat": 2}
        assert sum(e.points for e in mem.history(op="add")) == 2
        assert sum("journaled_at_open" in e.detail for e in mem.history(op="add")) == 1
    assert not any((tmp_path / "memory" / PENDING_DIR).iterdir())


def test_an_add_settled_at_an_opening_killed_before_its_note_went_is_journaled_once(tmp_path):
    # The opening journals a killed add's points, and is itself killed before the note is removed: the next opening
    # finds the note again, and must count the entry the first one wrote as the add's own.
    journal = FileJournal(tmp_path / "journal.jsonl")
    note = journal.intend("add", {}, detail={})
    assert note is not None
    cat = str(uuid.uuid4())
    journal.note_adds(note, [cat], ["cat"])
    listed = note.model_copy(update={"before": journal.noted_adds(note)})
    settled = journal.settled
    journal.settled = lambda note: None  # type: ignore[method-assign]  # killed before the note went
    assert journal.settle(listed, {cat: "cat"}, {}) == 1
    journal.settled = settled  # type: ignore[method-assign]
    [again] = journal.pending()
    assert journal.settle(again.model_copy(update={"before": journal.noted_adds(again)}), {cat: "cat"}, {}) == 0
    assert [(e.points, e.labels) for e in journal.read()] == [(1, {"cat": 1})]
    assert journal.pending() == []


def test_a_read_only_service_says_it_journals_a_killed_add_in_its_copy_only(memory, caplog):
    # vmem serve --read-only copies the memory, notes included, and settles the copy: its log said "journaled an add",
    # while the memory's own journal still lacked it (its next opening for edits journals it).
    with open_store(memory, SPEC) as store:
        note = store.journal.intend("add", {}, detail={})
        with store.adding(note):
            store.add(random_unit_vectors(2, 8, seed=3), ["owl", "owl"], ["/data/owl-0.jpg", "/data/owl-1.jpg"])
        # the process killed here, before the add's entry: its note stays (closed only to let go of the memory)
    with caplog.at_level(logging.WARNING, logger="retrieval.store"):
        replica = open_read_only(memory)
        try:
            assert [(e.points, e.labels) for e in replica.journal.read() if e.op == "add"] == [(2, {"owl": 2})]
        finally:
            replica.close()
    assert "journaled an add of 2 points" in caplog.text and "in this read-only copy only" in caplog.text
    assert any((memory / PENDING_DIR).glob("*.json"))
    with VisualMemory.open(memory) as mem:
        [add] = mem.history(op="add")
        assert add.labels == {"owl": 2} and "journaled_at_open" in add.detail
