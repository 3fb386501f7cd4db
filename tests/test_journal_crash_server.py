"""A memory on a Qdrant server misses no edit a process killed before its entry made, as an embedded one misses none.

Its edits note themselves in the collection beside its journal's (`vmem-journal-pending`) before their first write,
and an opening of the memory journals the notes of processes that have ended (retrieval/journal.py,
`CollectionJournal`). Each test kills a child process (SIGKILL) at one step of an edit of a memory in qdrant-client's
local mode (the server's code path, in a folder), reopens it, and reads its history as a user would.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections import Counter

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

import retrieval.store
from retrieval import QdrantServerStore, open_store
from retrieval.journal import CollectionJournal, most_first
from tests.conftest import REPO, random_unit_vectors
from tests.test_journal_crash import _KILLED_AT, SPEC
from vmem import VisualMemory

PENDING = "vmem-journal-pending"
EDITS = ["forget", "relabel", "name", "prune", "unprune", "import", "tune", "search settings"]


@pytest.fixture
def memory(tmp_path) -> str:
    location = f"qdrant-local:{tmp_path / 'memory'}"
    with open_store(location, SPEC) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    np.savez(tmp_path / "points.npz", vectors=random_unit_vectors(30, 8, seed=1),
             labels=np.array(["cat", "cat", "owl"] * 10), sources=np.array([f"/data/{i}.jpg" for i in range(30, 60)]))
    return location


def killed(memory: str, step: str, edit: str) -> None:
    child = subprocess.run([sys.executable, "-c", _KILLED_AT, memory, step, edit], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def notes_left(mem: VisualMemory) -> int:
    """The points of the notes' collection: notes, and the lists of their points."""
    client = mem.store.client
    return client.count(PENDING, exact=True).count if client.collection_exists(PENDING) else 0


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_killed_before_its_entry_is_in_the_history_once_the_memory_opens_again(memory, edit):
    # The edit was made on the server and its process killed before the entry: `vmem history` had no trace of it,
    # for good (a forget: the unlearning audit's answer, "no edits recorded").
    killed(memory, "after the edit", edit)
    with VisualMemory.open(memory) as mem:
        ops = [e.op for e in mem.history()]
        entry = mem.history()[0]
        assert "journaled_at_open" in entry.detail and notes_left(mem) == 0
        if edit == "forget":
            assert ops == ["forget"] and (entry.points, entry.labels) == (10, {"cat": 10})
            assert mem.history(source="/data/0.jpg") == [entry] and mem.store.label_counts() == {"dog": 10, "fox": 10}
        elif edit == "relabel":
            assert ops == ["relabel"] and (entry.points, entry.labels, entry.to) == (10, {"cat": 10}, "feline")
        elif edit == "name":
            assert ops == ["name"] and entry.detail["names"] == {"cat": "house cat"} == mem.label_names
        elif edit == "prune":
            assert ops == ["prune"] and entry.points == mem.store.meta.settings["pruning"]["excluded"] > 0
        elif edit == "unprune":
            assert ops == ["unprune", "prune"] and entry.points == mem.history()[1].points > 0
        elif edit == "import":
            added = {"cat": 20, "owl": 10}
            assert ops == ["add"] and (entry.points, entry.labels) == (30, added)
            assert mem.store.label_counts() == most_first(Counter({"cat": 10, "dog": 10, "fox": 10}) + Counter(added))
        elif edit == "tune":
            assert ops == ["tune"] and entry.detail["vote"] == mem.store.meta.settings["vote"]
        else:
            assert ops == ["settings"] and entry.detail["search"] == {"hnsw_ef": 77}
    with VisualMemory.open(memory) as mem:  # settled once: opened again, nothing more
        assert [e.op for e in mem.history()] == ops


def test_an_import_killed_between_its_batches_journals_the_batches_written(memory):
    killed(memory, "at the second batch", "import")
    with VisualMemory.open(memory) as mem:
        [add] = mem.history(op="add")
        assert (add.points, add.labels) == (10, {"cat": 7, "owl": 3}) and "journaled_at_open" in add.detail
        assert mem.store.count() == 40 and notes_left(mem) == 0


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_killed_before_its_first_write_is_not_in_the_history(memory, edit):
    killed(memory, "before the edit", edit)
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == (["prune"] if edit == "unprune" else [])
        assert mem.store.count() == 30 and mem.label_names == {} and notes_left(mem) == 0


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_killed_after_its_entry_is_in_the_history_once(memory, edit):
    killed(memory, "after the entry", edit)
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == {"unprune": ["unprune", "prune"], "import": ["add"],
                                                 "search settings": ["settings"]}.get(edit, [edit])
        assert "journaled_at_open" not in mem.history()[0].detail and notes_left(mem) == 0


# A process that shares the memory with others: its forget made, it lets go of the folder (as a process on a server
# never holds one) and is still running, its entry not yet written.
_STILL_RUNNING = """
import sys, time
from retrieval import open_store
from vmem import VisualMemory

mem = VisualMemory(open_store(sys.argv[1]), reranker=None)

def paused(*args, **kwargs):
    mem.store.client.close()
    print("forgotten", flush=True)
    time.sleep(600)

mem.store.journal.append = paused
mem.forget(label="cat")
"""


def test_the_note_of_a_process_still_editing_is_left_to_it_and_journaled_once_it_has_ended(memory):
    # Processes on a server edit the memory while others open it: an opening that journaled a running process's note
    # would journal its edit a second time when that process wrote its own entry (or half of it, mid-forget).
    child = subprocess.Popen([sys.executable, "-c", _STILL_RUNNING, memory], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "forgotten\n"
        with VisualMemory.open(memory) as mem:
            assert mem.store.label_counts() == {"dog": 10, "fox": 10}
            assert mem.history() == [] and notes_left(mem) == 1  # its note, its points in it: left to it
    finally:
        child.kill()
        child.wait()
    with VisualMemory.open(memory) as mem:
        [forget] = mem.history()
        assert (forget.op, forget.points, forget.pid) == ("forget", 10, child.pid) and notes_left(mem) == 0


# A program that edits the memory, then forks a worker (multiprocessing's fork, a pre-forking server) that edits it
# too and is still running, its forget made and its entry not yet written.
_FORKED_STILL_RUNNING = """
import os, sys, time
from retrieval import open_store
from vmem import VisualMemory

with VisualMemory(open_store(sys.argv[1]), reranker=None) as mem:
    mem.set_label_names({"dog": "hound"})  # noted: the parent knows when it started
if os.fork():
    os.wait()
    sys.exit(0)
mem = VisualMemory(open_store(sys.argv[1]), reranker=None)

def paused(*args, **kwargs):
    mem.store.client.close()
    print(os.getpid(), flush=True)
    time.sleep(600)

mem.store.journal.append = paused
mem.forget(label="cat")
"""


def test_the_note_of_a_forked_worker_still_editing_is_left_to_it(memory):
    # Its note said when its process started with its parent's time, kept from before the fork: an opening took the
    # worker, running, for a later process given the same id, and journaled its forget in progress as cut short.
    parent = subprocess.Popen([sys.executable, "-c", _FORKED_STILL_RUNNING, memory], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    try:
        with VisualMemory.open(memory) as mem:
            assert mem.store.label_counts() == {"dog": 10, "fox": 10}
            assert [e.op for e in mem.history()] == ["name"] and notes_left(mem) == 1  # left to the worker
    finally:
        os.kill(worker, signal.SIGKILL)
        parent.wait(timeout=60)  # the worker reaped: ended
    with VisualMemory.open(memory) as mem:
        forget, _ = mem.history()
        assert (forget.op, forget.points, forget.pid) == ("forget", 10, worker) and notes_left(mem) == 0


# qdrant-client's local mode stands for a server here (a journal asked for a server's payload indexes), so it warns
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
def test_two_openings_settling_one_note_at_once_journal_it_once(memory):
    # Two processes open the memory at once and find the same dead process's note: each journals it, the second
    # having looked for its entry before the first wrote it. Under ids of the note's, the second entry is the first.
    killed(memory, "after the edit", "forget")
    client = QdrantClient(path=memory.removeprefix("qdrant-local:"))
    try:
        first, second = CollectionJournal(client, "vmem-journal"), CollectionJournal(client, "vmem-journal")
        [note], [same] = first.pending(), second.pending()
        looked = second._holds_entry_of(same)
        second._holds_entry_of = lambda note: looked  # type: ignore[method-assign]  # as it was before the first wrote
        assert first.settle(note, {}, {}) == 10 and second.settle(same, {}, {}) == 10
        assert [(e.op, e.points) for e in first.read()] == [("forget", 10)]
        assert first.pending() == [] and client.count(PENDING).count == 0
    finally:
        client.close()


def test_a_normal_edit_leaves_no_note_and_costs_no_entry_of_its_own(memory):
    with VisualMemory.open(memory) as mem:
        mem.forget(label="fox")
        mem.relabel("hound", label="dog")
        mem.set_label_names({"cat": "house cat"})
        assert [e.op for e in mem.history()] == ["name", "relabel", "forget"] and notes_left(mem) == 0
        assert all("journaled_at_open" not in e.detail for e in mem.history())


def test_the_points_of_a_note_never_written_are_removed_once_their_process_has_ended(memory):
    # Killed between the parts of a forget's list of points and its note: the edit had not begun, and the parts,
    # read by no one, stayed in the server's collection for good.
    killed(memory, "after the list", "forget")
    client = QdrantClient(path=memory.removeprefix("qdrant-local:"))
    try:
        assert client.count(PENDING).count == 2  # two parts of 4 points; the last, with the note, never written
    finally:
        client.close()
    with VisualMemory.open(memory) as mem:
        assert mem.history() == [] and mem.store.count() == 30 and notes_left(mem) == 0



class ReadOnlyKey:
    """A client whose key may only read: its writes are refused as a Qdrant server refuses a read-only API key's
    (403 Forbidden), its reads made. (qdrant-client's local mode has no keys.)"""

    WRITES = frozenset({"upsert", "delete", "set_payload", "overwrite_payload", "delete_payload", "clear_payload",
                        "update_vectors", "delete_vectors", "batch_update_points", "update_collection",
                        "create_collection", "delete_collection", "create_payload_index", "delete_payload_index"})

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def __getattr__(self, name: str):
        if name in self.WRITES:
            def refused(*args, **kwargs):
                raise UnexpectedResponse(403, "Forbidden", b'{"status":{"error":"Forbidden: Write access is '
                                         b'required"},"time":0.0}', httpx.Headers())
            return refused
        return getattr(self.client, name)

    def close(self) -> None:  # the test closes the client it made
        pass


def test_a_key_that_may_only_read_leaves_the_notes_and_says_so_once_a_process(memory, caplog, monkeypatch):
    # A service on a read-only key reopened the memory (or each CLI command of a long script did): each opening
    # logged an ERROR that its journal could not record the stopped process's edits, for what is no failure.
    killed(memory, "after the edit", "forget")
    monkeypatch.setattr(retrieval.store, "_TOLD_READ_ONLY_UNSETTLED", set())  # this process told of no memory yet
    client = QdrantClient(path=memory.removeprefix("qdrant-local:"))
    try:
        with caplog.at_level(logging.INFO, logger="retrieval.store"):
            for _ in range(3):
                store = QdrantServerStore(memory, client=ReadOnlyKey(client))
                assert store.count() == 20 and store.journal.read() == []  # it opens; the forget not journaled
                store.close()
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "retrieval.store"]
        [(level, message)] = said
        assert level == "WARNING" and "opened once with a key that may write" in message
        assert client.count(PENDING).count > 0  # the note kept for that opening
    finally:
        client.close()
    with VisualMemory.open(memory) as mem:  # a key that may write: journaled then
        assert [e.op for e in mem.history()] == ["forget"] and notes_left(mem) == 0


def test_the_note_of_a_container_started_again_is_left_and_the_log_says_it_never_settles(memory, caplog):
    # A container restarted (same hostname, a new pid namespace) never sees its killed process's namespace again:
    # the opening's INFO line had said an opening where the edit was made would journal it.
    killed(memory, "after the edit", "forget")
    client = QdrantClient(path=memory.removeprefix("qdrant-local:"))
    try:
        client.set_payload(PENDING, {"pids": "pid:[4026530000]"}, points=models.Filter())  # the old namespace
    finally:
        client.close()
    with caplog.at_level(logging.INFO, logger="retrieval.journal"), VisualMemory.open(memory) as mem:
        assert mem.history() == [] and notes_left(mem) > 0  # left: nothing here tells whether its process runs
    [said] = [r.getMessage() for r in caplog.records if "not journaled yet" in r.getMessage()]
    assert f"({os.uname().nodename}: 1)" in said and "container started again since" in said
    assert "is never journaled" in said and PENDING in said
