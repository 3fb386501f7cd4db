"""An operator settles by hand the notes no opening ever settles: `vmem history --notes` lists the notes of edits begun
and not journaled yet, `--settle TOKEN` and `--settle-older-than DURATION` journal them.

A memory on a Qdrant server settles at an opening only the notes of processes it sees ended, on its own host and in
its pid namespace (retrieval/journal.py, `CollectionJournal.pending`): a process killed in a container that never runs
again, or one started again since, left its note for good, its edit (a forget: the unlearning audit's answer) out of
the history. Each test kills a child (SIGKILL) after its edit's write, as tests/test_journal_crash_server.py does, in
qdrant-client's local mode (the server's code path, in a folder), and moves its note to "another host" or container
by rewriting the payload that says where it was written.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse
from typer.testing import CliRunner

import retrieval.journal
from retrieval import MemoryMeta, QdrantServerStore
from tests.conftest import REPO, random_unit_vectors
from tests.test_journal_crash import SPEC
from tests.test_journal_crash_server import (  # noqa: F401 - the fixture reused
    _STILL_RUNNING,
    PENDING,
    ReadOnlyKey,
    killed,
    memory,
    notes_left,
)
from vmem import VisualMemory
from vmem.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def written_elsewhere(location: str, host: str | None = None, pids: str | None = None, days_ago: float = 0) -> None:
    """The notes this host wrote, as another host (`host`) or container (`pids`: a pid namespace not this one's)
    would have written them, `days_ago` days ago."""
    client = QdrantClient(path=location.removeprefix("qdrant-local:"))
    try:
        recs, _ = client.scroll(PENDING, limit=1000, with_payload=True)
        for r in recs:
            payload = dict(r.payload or {})
            if payload["host"] != socket.gethostname() or payload["pids"] != os.readlink("/proc/self/ns/pid"):
                continue  # another's already
            payload.update(host=host or payload["host"], pids=pids or payload["pids"])
            if payload["kind"] == "note":
                begun = datetime.fromisoformat(payload["note"]["begun"]) - timedelta(days=days_ago)
                payload["note"] = {**payload["note"], "host": payload["host"], "begun": begun.isoformat()}
            client.overwrite_payload(PENDING, payload, points=[r.id])
    finally:
        client.close()


def test_a_note_of_another_host_is_left_by_an_opening_and_settled_by_the_command_once(memory):  # noqa: F811
    killed(memory, "after the edit", "forget")
    written_elsewhere(memory, host="gone-host")
    with VisualMemory.open(memory) as mem:
        assert mem.history() == [] and notes_left(mem) == 1  # left: nothing here tells whether its process runs
        assert mem.store.label_counts() == {"dog": 10, "fox": 10}  # the forget was made
    listed = run("history", "--memory", memory, "--notes")
    assert listed.exit_code == 0, listed.output
    [line] = listed.stdout.splitlines()
    token, begun, what, whose, process = line.split("\t")
    assert what == "forget of 10 points (cat: 10)" and whose.startswith("on gone-host (pid ")
    assert process.startswith("another host: whether its process runs, nothing here tells")

    settled = run("history", "--memory", memory, "--settle", token[:8])
    assert settled.exit_code == 0, settled.output
    assert settled.stdout == f"{token}\tforget of 10 points (cat: 10)\tjournaled (10 points); note removed\n"
    with VisualMemory.open(memory) as mem:
        [forget] = mem.history()
        assert (forget.op, forget.points, forget.labels, forget.host) == ("forget", 10, {"cat": 10}, "gone-host")
        assert forget.at == begun.removeprefix("begun ")[:19].replace(" ", "T") + forget.at[19:]  # at its start
        assert forget.detail["settled_by_hand"] is True and "journaled_at_open" in forget.detail
        assert mem.history(source="/data/0.jpg") == [forget] and notes_left(mem) == 0

    again = run("history", "--memory", memory, "--settle", token)  # settled once: no note of it is left
    assert again.exit_code == 2 and f"no note '{token}' is left" in again.output
    assert "no notes left" in run("history", "--memory", memory, "--notes").output
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == ["forget"]


def test_notes_older_than_a_bound_are_settled_and_newer_ones_left(memory):  # noqa: F811
    # A forget noted ten days ago on a host gone, and a tune noted now in a container started again since (this
    # host's name, another pid namespace): an operator settles what is older than a week.
    killed(memory, "after the edit", "forget")
    written_elsewhere(memory, host="gone-host", days_ago=10)
    killed(memory, "after the edit", "tune")
    written_elsewhere(memory, pids="pid:[4026530000]")
    listed = run("history", "--memory", memory, "--notes", "--json")
    assert listed.exit_code == 0, listed.output
    old, new = map(json.loads, listed.stdout.splitlines())  # oldest first
    assert (old["op"], old["host"], old["points"], old["process"]) == ("forget", "gone-host", 10, "unknown")
    assert (new["op"], new["host"], new["process"]) == ("tune", socket.gethostname(), "unknown")
    assert old["age_s"] >= 10 * 86400 > new["age_s"]
    assert "another container of this host" in run("history", "--memory", memory, "--notes").stdout

    settled = run("history", "--memory", memory, "--settle-older-than", "7d")
    assert settled.exit_code == 0, settled.output
    assert settled.stdout.startswith(f"{old['token']}\tforget of 10 points") and settled.stdout.count("\n") == 1
    with VisualMemory.open(memory) as mem:
        assert [(e.op, e.points) for e in mem.history()] == [("forget", 10)] and notes_left(mem) == 1
        [left] = mem.notes_left()
        assert left.note.op == "tune"
    tuned = run("history", "--memory", memory, "--settle", new["token"])  # named: settled whatever its age
    assert tuned.stdout == f"{new['token']}\ttune\tjournaled; note removed\n", tuned.output
    with VisualMemory.open(memory) as mem:
        assert [e.op for e in mem.history()] == ["tune", "forget"] and notes_left(mem) == 0  # newest first


def test_a_note_of_a_process_running_on_this_host_is_refused(memory):  # noqa: F811
    # Its edit is in progress: settled now, its forget would be journaled twice, here and by its process.
    child = subprocess.Popen([sys.executable, "-c", _STILL_RUNNING, memory], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "forgotten\n"
        listed = run("history", "--memory", memory, "--notes")
        [line] = listed.stdout.splitlines()
        token = line.split("\t")[0]
        assert line.endswith("its process is running on this host: its edit is in progress")
        refused = run("history", "--memory", memory, "--settle", token)
        assert refused.exit_code == 2 and f"process {child.pid} on this host, which is running" in refused.output
        by_age = run("history", "--memory", memory, "--settle-older-than", "0s")
        assert by_age.exit_code == 0 and by_age.stdout == ""
        assert by_age.stderr.splitlines()[0] == "left 1 note of a process running on this host: its edit is in progress"
        with VisualMemory.open(memory) as mem:
            assert mem.history() == [] and notes_left(mem) == 1
    finally:
        child.kill()
        child.wait()
    with VisualMemory.open(memory) as mem:  # ended: the opening journals it, once
        [forget] = mem.history()
        assert (forget.op, forget.points) == ("forget", 10) and "settled_by_hand" not in forget.detail


def test_what_to_settle_is_refused_when_unclear(memory):  # noqa: F811
    killed(memory, "after the edit", "forget")
    written_elsewhere(memory, host="gone-host")
    for args, said in [(["--settle-older-than", "soon"], "'soon' is no duration"),
                       (["--settle", "abc"], "no note 'abc' is left"),  # too short a prefix to name one
                       (["--notes", "--op", "forget"], "--op chooses edits, not notes")]:
        out = run("history", "--memory", memory, *args)
        assert out.exit_code == 2 and said in out.output, out.output
    with VisualMemory.open(memory) as mem:
        assert mem.history() == [] and notes_left(mem) == 1


def test_the_log_line_of_a_note_no_opening_settles_names_the_command_that_does(memory, caplog):  # noqa: F811
    # A container started again (same hostname, a new pid namespace): the INFO line had said such a note is never
    # journaled and that its edit was made (not so where the kill came before its first write), and offered
    # deleting its points, which drops the edit from the history for good.
    killed(memory, "after the edit", "forget")
    written_elsewhere(memory, pids="pid:[4026530000]")
    with caplog.at_level(logging.INFO, logger="retrieval.journal"), VisualMemory.open(memory) as mem:
        assert mem.history() == [] and notes_left(mem) == 1
    [said] = [r.getMessage() for r in caplog.records if "not journaled yet" in r.getMessage()]
    assert f"({socket.gethostname()}: 1)" in said and "is never journaled by an opening" in said
    assert "`vmem history --notes` lists the notes (in vmem-journal-pending)" in said
    assert "`vmem history --settle TOKEN` journals" in said and "deleting" not in said
    [token] = [line.split("\t")[0] for line in run("history", "--memory", memory, "--notes").stdout.splitlines()]
    assert run("history", "--memory", memory, "--settle", token).exit_code == 0  # as the line says
    with VisualMemory.open(memory) as mem:
        assert [(e.op, e.points) for e in mem.history()] == [("forget", 10)] and notes_left(mem) == 0


# qdrant-client's local mode standing for a server below: asked for what a server is asked (payload indexes,
# search parameters), it warns that it ignores them
AS_A_SERVER = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning",
                                         "ignore:Local mode performs exact:UserWarning")


class IndexesAsked:
    """qdrant-client's local mode, each payload index asked of it recorded: it keeps none and its collections'
    `payload_schema` is always empty, so what a server would hold cannot be read back from it; what is asked can."""

    _client = None  # not read through: a store sees its local mode there and asks it for no index (since cadd056)

    def __init__(self, client: QdrantClient) -> None:
        self.client, self.asked, self.waited = client, [], []

    def create_payload_index(self, collection_name, field_name, field_schema=None, **kwargs):
        self.asked.append((collection_name, field_name, str(getattr(field_schema, "value", field_schema))))
        self.waited.append(kwargs.get("wait", True))
        return self.client.create_payload_index(collection_name, field_name, field_schema, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


JOURNAL_LOOKUPS = {("vmem-journal", "op", "keyword"), ("vmem-journal", "host", "keyword"),
                   ("vmem-journal", "pid", "integer"), ("vmem-journal", "detail.note", "keyword")}
NOTES_LOOKUPS = {(PENDING, "token", "keyword"), (PENDING, "kind", "keyword")}


@AS_A_SERVER
def test_the_journals_lookups_are_indexed_as_its_collections_are_made():
    # An opening's settling filtered the journal by host, pid and op, and each edit deleted its note by token, on a
    # server holding no index of them: every point's payload read, for each note of a long-lived memory's journal.
    client = IndexesAsked(QdrantClient(":memory:"))
    mem = VisualMemory(QdrantServerStore(":memory:", MemoryMeta(featurizer=SPEC), client=client), reranker=None)
    mem.store.add(random_unit_vectors(6, 8), ["cat", "dog"] * 3, [f"/data/{i}.jpg" for i in range(6)])
    mem.forget(label="cat")  # noted: the notes' collection made
    journal_asked = {a for a in client.asked if a[0].startswith("vmem-journal")}
    assert journal_asked == JOURNAL_LOOKUPS | NOTES_LOOKUPS
    assert len(journal_asked) == len([a for a in client.asked if a[0].startswith("vmem-journal")])  # each once
    assert [(e.op, e.points) for e in mem.history()] == [("forget", 3)]


@AS_A_SERVER
def test_a_journal_made_before_the_indexes_is_indexed_at_an_opening(memory):  # noqa: F811
    # A vmem before them made this memory's journal and notes: each opening asks for what the server's payload
    # schema lacks (local mode lists none: asked at every opening, the journal unchanged by it).
    with VisualMemory.open(memory) as mem:
        mem.set_label_names({"dog": "hound"})  # the journal made
    killed(memory, "after the edit", "forget")
    written_elsewhere(memory, host="gone-host")  # a note that stays, so that its lookups run at each opening
    for _ in range(2):
        client = IndexesAsked(QdrantClient(path=memory.removeprefix("qdrant-local:")))
        try:
            store = QdrantServerStore(memory, client=client)
            assert set(client.asked) >= JOURNAL_LOOKUPS | NOTES_LOOKUPS
            assert not any(client.waited)  # a long journal's index is built in the server's time, not the opening's
            assert [e.op for e in store.journal.read()] == ["name"] and len(store.journal.notes()) == 1
            store.close()
        finally:
            client.close()


@AS_A_SERVER
def test_a_normal_opening_makes_the_journals_indexes_and_a_history_its_time_index_without_a_word_logged(
        memory, caplog):  # noqa: F811
    # An opening logs and goes on where the server fails the journal's indexes (`QdrantServerStore.index_journal`:
    # they make lookups faster, never different), and a history reads the whole journal where the server will not
    # order it by `at` (no datetime index): on a server that makes them, a regression in asking for them would be
    # only a log line, and slow lookups and histories on a long journal. Here: asked, and nothing logged.
    with VisualMemory.open(memory) as mem:
        for name in ("hound", "wolf", "jackal"):
            mem.set_label_names({"dog": name})  # the journal made, three entries
        mem.forget(label="fox")  # and the notes' collection
    client = IndexesAsked(QdrantClient(path=memory.removeprefix("qdrant-local:")))
    try:
        with caplog.at_level(logging.INFO):
            mem = VisualMemory(QdrantServerStore(memory, client=client), reranker=None)
            assert set(client.asked) == JOURNAL_LOOKUPS | NOTES_LOOKUPS  # each lookup's, at the opening
            client.asked.clear()
            paged, page = [], mem.history_page(limit=2)
            while True:
                paged += page.entries
                if page.next_cursor is None:
                    break
                page = mem.history_page(limit=2, cursor=page.next_cursor)
            assert [e.op for e in paged] == ["forget", "name", "name", "name"]
            assert client.asked == [("vmem-journal", "at", "datetime")]  # by the first page, once
            mem.close()
        logged = [r.getMessage() for r in caplog.records if r.name.startswith(("retrieval", "vmem"))
                  and r.levelno >= logging.INFO and ("index" in r.getMessage() or "order" in r.getMessage())]
        assert logged == []
    finally:
        client.close()


@AS_A_SERVER
def test_a_key_that_may_not_make_indexes_opens_the_memory_and_says_so_once(memory, caplog, monkeypatch):  # noqa: F811
    with VisualMemory.open(memory) as mem:
        mem.set_label_names({"dog": "hound"})  # the journal made
    killed(memory, "after the edit", "forget")
    monkeypatch.setattr(retrieval.journal, "_TOLD_UNINDEXED", set())
    client = QdrantClient(path=memory.removeprefix("qdrant-local:"))
    try:
        with caplog.at_level(logging.INFO, logger="retrieval.journal"):
            for _ in range(2):
                store = QdrantServerStore(memory, client=ReadOnlyServerKey(client))
                assert store.count() == 20
                store.close()
        said = [r.getMessage() for r in caplog.records if "refused payload indexes" in r.getMessage()]
        assert len(said) == 2 and {s.split(" (")[0] for s in said} == {
            "the Qdrant server refused payload indexes on vmem-journal",
            "the Qdrant server refused payload indexes on vmem-journal-pending"}
    finally:
        client.close()


class ReadOnlyServerKey(ReadOnlyKey):
    """A read-only key on a server: a store that saw local mode through the wrapper would ask it for no index."""

    _client = None


class IndexesFail(IndexesAsked):
    """A server that answers, but fails each payload index asked of it (a 500, a proxy's odd reply)."""

    def create_payload_index(self, collection_name, field_name, field_schema=None, **kwargs):
        raise RuntimeError("Unexpected Response: 500 (Internal Server Error)")


@AS_A_SERVER
def test_a_server_failing_to_make_the_indexes_still_opens_the_memory_and_settles_its_notes(memory, caplog):  # noqa: F811
    # The indexes make lookups faster, never different: a failure making them had failed the whole opening
    with VisualMemory.open(memory) as mem:
        mem.set_label_names({"dog": "hound"})  # the journal made
    killed(memory, "after the edit", "forget")
    client = IndexesFail(QdrantClient(path=memory.removeprefix("qdrant-local:")))
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.store"):
            store = QdrantServerStore(memory, client=client)
        assert [e.op for e in store.journal.read()] == ["name", "forget"]  # the killed forget journaled at opening
        store.close()
        assert any("did not make the journal's payload indexes (Unexpected Response: 500" in r.getMessage()
                   for r in caplog.records)
    finally:
        client.close()


class IndexesRefusedOddly(IndexesAsked):
    """A proxy before the server that refuses payload indexes with a reason phrase of its own making, or fails them
    with an error whose words hold a terminal's control sequence."""

    def __init__(self, client: QdrantClient, error: Exception) -> None:
        super().__init__(client)
        self.error = error

    def create_payload_index(self, collection_name, field_name, field_schema=None, **kwargs):
        raise self.error


@AS_A_SERVER
def test_a_failure_to_make_the_indexes_is_logged_escaped_on_one_line(memory, caplog, monkeypatch):  # noqa: F811
    # Its words were logged raw: an escape sequence in them cleared the operator's terminal ("\x1b[2J"), a
    # carriage return wrote over the start of the line
    with VisualMemory.open(memory) as mem:
        mem.set_label_names({"dog": "hound"})  # the journal made
    killed(memory, "after the edit", "forget")
    monkeypatch.setattr(retrieval.journal, "_TOLD_UNINDEXED", set())
    refused = UnexpectedResponse(403, "Forbidden\x1b[2J", b'{"status":{"error":"no"}}', httpx.Headers())
    failed = RuntimeError("the proxy \x1b[2Jfailed\rit\nwith its whole page on the lines after")
    for error, logger, said in ((refused, "retrieval.journal", "(Unexpected Response: 403 (Forbidden\\x1b[2J))"),
                                (failed, "retrieval.store", "(the proxy \\x1b[2Jfailed\\rit)")):
        client = IndexesRefusedOddly(QdrantClient(path=memory.removeprefix("qdrant-local:")), error)
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger=logger):
                QdrantServerStore(memory, client=client).close()
            lines = [r.getMessage() for r in caplog.records if "payload indexes" in r.getMessage()]
            assert lines and all(said in line and not {"\x1b", "\r", "\n"} & set(line) for line in lines), lines
        finally:
            client.close()
