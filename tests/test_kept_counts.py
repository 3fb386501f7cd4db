"""`vmem info`, `labels` and `history` of an embedded memory at rest read its files alone (the counts its last
close kept beside it, its journal), rather than opening the engine, which takes seconds on a large memory: never
counts that no longer stand for the memory (edited since by a process killed before its close, or by a vmem
that keeps none), and never while a process holds it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, MemoryInUseError, Preprocessing, open_store
from retrieval.journal import FileJournal
from retrieval.kept_counts import COUNTS_FILE
from retrieval.store import EXCLUDED_KEY
from tests.conftest import REPO, random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app
from vmem.visual_memory import history_at_rest, label_counts_from_files, stats_from_files

SPEC = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))


@pytest.fixture
def memory(tmp_path) -> Path:
    """30 points, 20 cats and 10 dogs, closed."""
    with open_store(tmp_path / "memory", SPEC) as store:
        store.add(random_unit_vectors(30, 8), ["cat"] * 20 + ["dog"] * 10, [f"/d/{i}.jpg" for i in range(30)])
    return tmp_path / "memory"


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def held(memory: Path) -> tuple[int, dict, dict]:
    """What the memory holds, read point by point: its points, per label, and those not excluded by pruning."""
    with open_store(memory) as store:
        points = [p for batch in store.scroll() for p in batch]
        return len(points), dict(Counter(p.label for p in points)), dict(
            Counter(p.label for p in points if not p.payload.get(EXCLUDED_KEY)))


def opened_stats(memory: Path) -> dict:
    """What opening the memory answers (and its close keeps again), but the disk, which the counts file is part of."""
    with VisualMemory(open_store(memory), reranker=None) as mem:
        return {k: v for k, v in mem.stats().items() if k != "disk_bytes"}


def test_info_and_labels_read_the_counts_each_close_kept_and_they_follow_every_kind_of_edit(memory):
    edits = [
        lambda mem: mem.store.add(random_unit_vectors(4, 8, 1), ["fox"] * 4, [f"/f/{i}.jpg" for i in range(4)]),
        lambda mem: mem.forget(label="dog"),
        lambda mem: mem.relabel("feline", label="cat"),
        lambda mem: mem.store.set_payload(mem.store.ids_where(label="fox")[:3], {EXCLUDED_KEY: "pruned"}),
    ]
    for edit in [None, *edits]:
        if edit is not None:
            with VisualMemory(open_store(memory), reranker=None) as mem:
                edit(mem)
        at_rest = stats_from_files(memory)
        kept = label_counts_from_files(memory)
        assert at_rest is not None and kept is not None, "a memory closed after its edit has its counts kept"
        points, per_label, searchable = held(memory)
        assert (at_rest["points"], at_rest["per_label"]) == (points, per_label)
        assert (kept[0], {lab: n for lab, n in kept[1].items() if n}) == (per_label, searchable)
        assert {k: v for k, v in at_rest.items() if k != "disk_bytes"} == opened_stats(memory)
    assert kept[0] == {"feline": 20, "fox": 4} and kept[1] == {"feline": 20, "fox": 1}
    # The commands print them as opening the memory did
    assert json.loads(cli("info", "--memory", memory, "--json"))["per_label"] == {"feline": 20, "fox": 4}
    assert cli("labels", "--memory", memory) == "20\tfeline\t\n4\tfox\t\t(3 excluded by pruning)\n"


def test_a_memory_held_open_is_not_read_from_its_files(memory):
    with open_store(memory) as store:
        assert not (memory / COUNTS_FILE).exists()  # removed as it opened: from here, they may not stand
        assert stats_from_files(memory) is None and label_counts_from_files(memory) is None
        assert history_at_rest(memory) is None
        store.delete_ids(store.ids_where(label="dog"))
    assert stats_from_files(memory)["per_label"] == {"cat": 20}  # kept again at its close


_KILLED_AT_ITS_FIRST_WRITE = """
import os, signal, sys
from retrieval import open_store
from vmem import VisualMemory

class KilledAfterItsWrite:  # the engine's shard, but the process dies right after its first write
    def __init__(self, shard):
        self.shard = shard
    def __getattr__(self, name):
        return getattr(self.shard, name)
    def update(self, operation):
        self.shard.update(operation)
        os.kill(os.getpid(), signal.SIGKILL)

store = open_store(sys.argv[1])
store.shard = KilledAfterItsWrite(store.shard)
VisualMemory(store, reranker=None).forget(label="dog")
"""


def test_a_process_killed_between_an_edit_and_its_close_leaves_no_counts_to_read(memory):
    assert stats_from_files(memory)["points"] == 30
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_ITS_FIRST_WRITE, str(memory)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # The dogs are forgotten (the engine has the write in its log), and the kept counts said 30 points
    assert stats_from_files(memory) is None and label_counts_from_files(memory) is None
    # ... and its forget is noted, not journaled yet: the history from the files alone would miss it
    assert history_at_rest(memory) is None
    assert "\tforget\t10 points (dog: 10)\tby label" in cli("history", "--memory", memory)  # opened: journaled
    info = json.loads(cli("info", "--memory", memory, "--json"))
    assert info["points"] == 20 and info["per_label"] == {"cat": 20}
    assert stats_from_files(memory)["per_label"] == {"cat": 20}  # that opening's close kept them


def test_counts_kept_by_this_vmem_are_not_read_after_another_program_wrote_the_memory(memory):
    # An older vmem keeps no counts and leaves the file as it is; any opening of the engine rewrites its files
    import qdrant_edge as qe

    with open_store(memory) as store:
        dogs = store.ids_where(label="dog")
    shard = qe.EdgeShard.load(str(memory / "shard"))
    shard.update(qe.UpdateOperation.delete_points(dogs))
    shard.flush()
    shard.close()
    assert (memory / COUNTS_FILE).exists()
    assert stats_from_files(memory) is None and label_counts_from_files(memory) is None
    assert cli("labels", "--memory", memory) == "20\tcat\t\n"


def test_history_of_a_memory_at_rest_is_read_from_its_journal_as_opening_would_answer(memory):
    with VisualMemory(open_store(memory), reranker=None) as mem:
        mem.forget(label="dog")
        mem.relabel("feline", label="cat")
    page, meta = history_at_rest(memory)
    with VisualMemory(open_store(memory), reranker=None) as mem:
        assert page == mem.history_page()
    assert [e.op for e in page.entries] == ["relabel", "forget"]
    shown = cli("history", "--memory", memory, "--op", "forget")
    assert shown.count("\n") == 1 and "\tforget\t10 points (dog: 10)\tby label" in shown


def test_a_file_whose_name_is_not_utf8_in_the_engines_folder_leaves_the_memory_opened_and_its_counts_kept(memory):
    # A file copied in from a system of another encoding: Python reads its name with surrogates, which the
    # fingerprint refused to encode, so every command that opened the memory (info, points, classify) ended in a
    # UnicodeEncodeError, as it opened and as it closed
    stray = os.fsencode(memory / "shard") + b"/notes-\xe9t\xe9.txt"
    os.close(os.open(stray, os.O_CREAT | os.O_WRONLY))
    assert label_counts_from_files(memory) is None  # the counts were kept before the file came
    assert cli("labels", "--memory", memory) == "20\tcat\t\n10\tdog\t\n"  # opened
    assert stats_from_files(memory)["per_label"] == {"cat": 20, "dog": 10}  # and kept at its close


def test_history_of_a_memory_whose_metadata_is_corrupt_says_so_as_opening_it_does(memory):
    # Read at rest, its journal alone had answered "no vmem memory at ..." with pydantic's three lines and a link;
    # opening it says what is wrong and what to do, as vmem info and labels say
    (memory / "vmem.json").write_text('{"created_at": ', encoding="utf-8")
    assert history_at_rest(memory) is None
    for command in ("history", "info", "labels"):
        result = CliRunner().invoke(app, [command, "--memory", str(memory)], env={"COLUMNS": "250"})
        assert result.exit_code == 2 and "the memory's metadata, is corrupt" in result.output, (command, result.output)
        assert "restore it from a backup" in result.output and "no vmem memory" not in result.output


def test_a_fifo_in_the_place_of_the_counts_file_holds_no_command_that_opens_the_memory(memory):
    # Every opening reads the counts file, in a folder others may write: a FIFO of its name had it wait for a
    # writer forever (vmem points, classify, info, labels all hung). Read only where it is a plain file, it is
    # passed over: the memory is opened
    (memory / COUNTS_FILE).unlink()
    os.mkfifo(memory / COUNTS_FILE)

    def vmem(*args) -> str:
        done = subprocess.run([sys.executable, "-m", "vmem", *args, "--memory", str(memory)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert vmem("labels") == "20\tcat\t\n10\tdog\t\n"
    assert vmem("points", "--limit", "100").count("/d/") == 30


# Reads the memory at rest as vmem info, labels and history do, holding its lock shared until it is killed
READ_AT_REST = """
import sys, time
from retrieval.store import at_rest
with at_rest(sys.argv[1]) as folder:
    print(folder is not None, flush=True)
    time.sleep(120)
"""


def test_an_opening_refused_beside_a_reader_at_rest_is_told_to_try_again_not_to_end_it(memory, caplog):
    # A reader of the files holds the lock shared for milliseconds: it had been named as the process that holds
    # the memory open, "End it (kill N) if it no longer uses the memory" (or the last holder, long gone or closed,
    # told to close the memory there)
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    reader = subprocess.Popen([sys.executable, "-c", READ_AT_REST, str(memory)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert reader.stdout.readline() == "True\n"
        with pytest.raises(MemoryInUseError) as refused:
            open_store(memory)
        with pytest.raises(MemoryInUseError):  # a wait says so too
            open_store(memory, wait=0.1)
    finally:
        reader.kill()
        reader.wait(timeout=60)
    said = str(refused.value)
    assert f"is being read by another process: process {reader.pid} (" in said, said
    assert "try again, or wait for it (--wait SECONDS" in said, said
    assert "kill" not in said and "mem.close()" not in said, said
    assert f"is being read by another process: process {reader.pid} (" in caplog.text, caplog.text
    assert "waiting for it to let go" in caplog.text and "inherited" not in caplog.text, caplog.text
    with open_store(memory) as store:  # let go: opened
        assert store.count() == 30


@pytest.mark.parametrize("replace", ["fifo", "link to /dev/zero", "folder"])
def test_a_fifo_or_a_device_in_the_place_of_the_metadata_is_said_to_be_no_plain_file(memory, replace):
    # Every command reads vmem.json: a FIFO of its name had each wait for a writer forever (a link to /dev/zero
    # had them read until memory ran out; a folder ended in a TypeError traceback). Now it says what is wrong and
    # what to do, exit 2 as a corrupt vmem.json is (it was 1); the memory's files stay
    meta = memory / "vmem.json"
    kept = meta.read_bytes()
    meta.unlink()
    if replace == "fifo":
        os.mkfifo(meta)
    elif replace == "folder":
        meta.mkdir()
    else:
        meta.symlink_to("/dev/zero")
    for command in ["points"], ["info"], ["history"], ["labels"]:
        done = subprocess.run([sys.executable, "-m", "vmem", *command, "--memory", str(memory)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert (f"{meta}, the memory's metadata, is not a plain file (a FIFO, a device or a folder): restore it from "
                "a backup") in " ".join(done.stderr.replace("│", " ").split()), (command, done.stderr[-2000:])
    with pytest.raises(ValueError, match="is not a plain file"):  # as a corrupt one's ValidationError is
        open_store(memory)
    meta.rmdir() if meta.is_dir() else meta.unlink()
    meta.write_bytes(kept)
    assert cli("labels", "--memory", memory) == "20\tcat\t\n10\tdog\t\n"


def test_info_at_rest_judges_labels_of_few_points_by_the_memorys_tuned_vote_as_opening_it_does(memory):
    # A label of 1 point wins no rank vote of the default k against 20 cats; tuned to k = 2, it does
    with VisualMemory(open_store(memory), reranker=None) as mem:
        mem.store.add(random_unit_vectors(1, 8, 2), ["fox"], ["/f/0.jpg"])
    assert [few["label"] for few in stats_from_files(memory)["few_points"]] == ["fox"]
    with VisualMemory(open_store(memory), reranker=None) as mem:
        mem.store_vote_settings({"rule": "rank", "k": 2})
    at_rest = stats_from_files(memory)
    assert at_rest is not None and at_rest["few_points"] == []
    assert {k: v for k, v in at_rest.items() if k != "disk_bytes"} == opened_stats(memory)


def test_a_memory_may_be_opened_while_its_history_at_rest_reads_its_journal(memory, monkeypatch):
    # The lock is held shared while the files are checked (no holder, no edit left unjournaled), not for the
    # journal's read, 0.8 s at 100,000 entries, which had refused every opening meanwhile. A process that opens
    # the memory and edits it meanwhile appends whole lines: the read sees its entry or not, never half of it
    read, refused = FileJournal.page, []

    def opened_meanwhile(journal, *args, **kwargs):
        try:
            with VisualMemory(open_store(memory), reranker=None) as mem:
                mem.forget(label="dog")
        except MemoryInUseError as exc:  # before: "open in another process"
            refused.append(str(exc))
            raise
        return read(journal, *args, **kwargs)

    monkeypatch.setattr(FileJournal, "page", opened_meanwhile)
    answered = history_at_rest(memory)
    monkeypatch.undo()
    assert not refused and answered is not None, refused
    page, _ = answered
    assert [e.op for e in page.entries] == ["forget"] and page.earlier == 0
    with VisualMemory(open_store(memory), reranker=None) as mem:
        assert page == mem.history_page()
