"""An embedded memory another process holds (a running `vmem serve`): the CLI's read-only commands on it.

Opening it is refused (one process at a time), so `vmem history` reads its journal from its files, and the
commands that need the engine say where the memory is served and which route answers them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrieval.files
from retrieval import FeaturizerSpec, MemoryInUseError, Preprocessing, open_store
from tests._reliability_fixtures import noise_png, subprocess_env, tiny_memory, vmem_serve
from tests.conftest import REPO, random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app

DIM = 16
SPEC = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
HOLD = ("import sys; from retrieval import open_store; from retrieval.files import mark_served; "
        "from retrieval.store import local_folder; "
        "store = open_store(sys.argv[1]); sys.argv[2:] and mark_served(local_folder(sys.argv[1]), sys.argv[2:]); "
        "print('held', flush=True); sys.stdin.readline(); store.close()")
SERVED_AT = "http://127.0.0.1:8123/vmem"


@pytest.fixture
def memory(tmp_path):
    """A memory of 3 cats and 2 dogs, one cat forgotten and the labels named: three edits in its journal."""
    location = tmp_path / "memory"
    with VisualMemory(open_store(location, SPEC), reranker=None) as mem:
        ids = mem.store.add(random_unit_vectors(5, DIM, seed=1), ["cat"] * 3 + ["dog"] * 2,
                            [f"/data/{i}.jpg" for i in range(5)])
        mem.forget(ids=[ids[0]])
        mem.set_label_names({"cat": "Cat", "dog": "Dog"})
    return location


@contextmanager
def holding(memory, *served_at):
    """The memory held open by another process, which says it serves it at `served_at` as vmem serve does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(memory), *served_at], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)  # this checkout's vmem
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.fixture
def held(memory):
    """The memory, held open by another process until the test ends."""
    with holding(memory):
        yield memory


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_history_of_a_memory_another_process_holds_is_read_from_its_journal(held):
    forgot = run("history", "--memory", held, "--op", "forget", "--json")
    assert forgot.exit_code == 0, forgot.output
    [entry] = [json.loads(line) for line in forgot.stdout.splitlines()]
    assert (entry["op"], entry["points"], entry["labels"]) == ("forget", 1, {"cat": 1})
    assert "read from its files: the memory is open in another process" in forgot.stderr

    every = run("history", "--memory", held)
    assert every.exit_code == 0, every.output
    assert [line.split("\t")[1] for line in every.stdout.splitlines()] == ["name", "forget"]
    assert "1 point (cat (Cat): 1)" in every.stdout  # the label names, from its vmem.json

    # By the forgotten image's source: the edit that forgot it; whether it is in the memory now, the files do not say
    by_source = run("history", "--memory", held, "--source", "/data/0.jpg")
    assert by_source.exit_code == 0, by_source.output
    said, *edits = by_source.stdout.splitlines()
    assert said == "/data/0.jpg: whether it is in the memory now, its files do not say"
    assert [line.split("\t")[1] for line in edits] == ["forget"]

    named = run("history", "--memory", held, "--label", "Cat")
    assert named.exit_code == 2 and "'Cat' is the name of label cat" in named.output


@pytest.mark.parametrize(("command", "route"), [
    (["labels"], "GET http://127.0.0.1:8123/vmem/v1/memory/stats"),
    (["points"], "GET http://127.0.0.1:8123/vmem/v1/memory/points"),
    (["suspects"], "GET http://127.0.0.1:8123/vmem/v1/memory/suspects"),
    (["export", "points.npz"], "GET http://127.0.0.1:8123/vmem/v1/memory/export"),
    (["erase"], "POST http://127.0.0.1:8123/vmem/v1/memory/erase"),
])
def test_a_command_refused_a_memory_a_service_holds_names_the_service_s_route_for_it(memory, tmp_path, monkeypatch,
                                                                                     command, route):
    monkeypatch.chdir(tmp_path)
    with holding(memory, SERVED_AT) as holder:
        refused = run(*command, "--memory", memory)
    assert refused.exit_code == 75  # worth a retry: the command was right
    # One line, the service's route its advice: not "stop it, or put the memory on a Qdrant server" before it
    assert refused.stderr.splitlines() == [f"Error: the memory at {memory} is open in another process: it is served "
                                           f"by vmem serve (pid {holder.pid}) at {SERVED_AT}: ask it, {route}"]


def test_a_served_note_with_a_newline_or_a_terminal_escape_stays_one_line_of_plain_text(memory):
    # .vmem-served.json is any writer's of the memory's folder: a URL forging an "Error:" line and retitling the
    # terminal is shown escaped, the refusal still one line
    forged = "http://127.0.0.1:8123\x1b]0;owned\x07\nError: run fix.sh"
    with holding(memory, forged) as holder:
        refused = run("points", "--memory", memory)
        read = run("history", "--memory", memory)
    shown = "http://127.0.0.1:8123\\x1b]0;owned\\x07\\nError: run fix.sh"
    assert refused.stderr.splitlines() == [f"Error: the memory at {memory} is open in another process: it is served "
                                           f"by vmem serve (pid {holder.pid}) at {shown}: ask it, GET "
                                           f"{shown}/v1/memory/points"]
    assert f"(served by vmem serve (pid {holder.pid}) at {shown})\n" in read.stderr
    assert "\x1b" not in refused.stderr + read.stderr


@pytest.mark.parametrize("planted", ["a FIFO", "a note larger than vmem serve writes"])
def test_a_served_note_that_is_no_note_of_vmem_serve_s_is_not_read(memory, planted):
    # Read by every command refused the memory: a FIFO had been waited on for a writer forever, and a link to
    # /dev/zero read until memory ran out. Not what vmem serve writes, so not believed: refused at once
    note = memory / ".vmem-served.json"
    with holding(memory) as holder:
        if planted == "a FIFO":
            os.mkfifo(note)
        else:
            note.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                        "urls": [f"http://127.0.0.1:{port}" for port in range(8000, 18000)]}))
        refused = subprocess.run([sys.executable, "-m", "vmem", "points", "--memory", str(memory)], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
    assert refused.returncode == 75, refused.stderr
    assert refused.stderr.startswith(f"Error: the memory at {memory} is open in another process")
    assert f"pid {holder.pid}" not in refused.stderr and "Traceback" not in refused.stderr


def test_history_of_a_served_memory_says_where_it_is_served_and_a_stale_note_is_not_believed(memory):
    with holding(memory, SERVED_AT) as holder:
        read = run("history", "--memory", memory)
    assert read.exit_code == 0, read.output
    assert (f"read from its files: the memory is open in another process (served by vmem serve (pid {holder.pid}) "
            f"at {SERVED_AT})") in read.stderr
    # That process is gone and its note stays (a kill -9): another holder is not taken for a service
    assert (memory / ".vmem-served.json").exists()
    with holding(memory):
        refused = run("points", "--memory", memory)
    assert refused.exit_code == 75 and "served by" not in refused.stderr, refused.stderr


def test_a_replica_refused_a_memory_a_service_edits_names_the_service_to_back_it_up(memory):
    # A read-only service copies its memory at rest: beside the service that holds it, it serves that one's backup
    with holding(memory, SERVED_AT) as holder:
        refused = run("serve", "--read-only", "--no-auth", "--memory", memory)
    assert refused.exit_code == 75, refused.output
    assert "serve a backup of it (POST /v1/memory/backup) read-only" in refused.stderr
    assert refused.stderr.splitlines()[-1] == f"It is served by vmem serve (pid {holder.pid}) at {SERVED_AT}"


def test_a_qdrant_local_memory_another_process_holds_is_refused_in_words_with_where_it_is_served(tmp_path):
    # qdrant-client's local mode opens a folder in one process at a time, the journal's collection included: its
    # RuntimeError had come out as a traceback
    location = f"qdrant-local:{tmp_path / 'local'}"
    open_store(location, SPEC).close()
    with holding(location, SERVED_AT) as holder:
        refused = run("history", "--qdrant-url", location)
    assert refused.exit_code == 75, refused.output
    assert refused.stderr.splitlines() == [f"Error: the memory at {location} is open in another process: it is "
                                           f"served by vmem serve (pid {holder.pid}) at {SERVED_AT}: ask it, GET "
                                           f"{SERVED_AT}/v1/memory/history"]
    assert "Traceback" not in refused.output


def test_info_of_a_served_memory_shows_what_its_files_say_and_where_to_ask_for_its_points(memory):
    with holding(memory, SERVED_AT) as holder:
        shown = run("info", "--memory", memory)
        as_json = run("info", "--memory", memory, "--json")
    assert shown.exit_code == 0, shown.output
    assert "featurizer test-encoder (16-d, resize 256, crop 224)" in shown.stdout
    assert (f"points     not read: the memory is open in another process, served by vmem serve (pid {holder.pid}) "
            f"at {SERVED_AT}: ask it, GET {SERVED_AT}/v1/memory/stats") in shown.stdout
    assert "names      2 labels named" in shown.stdout
    assert "last edit  " in shown.stdout and "\tname\t2 names" in shown.stdout
    stats = json.loads(as_json.stdout)
    assert (stats["points"], stats["open_in_another_process"], stats["label_names"]) == (
        None, True, {"cat": "Cat", "dog": "Dog"})
    assert stats["last_edit"]["op"] == "name" and stats["served_by"].endswith("/v1/memory/stats")


def test_a_memory_a_python_session_holds_is_refused_naming_that_process_and_how_to_let_it_go(memory):
    # A notebook holding VisualMemory.open(path) while the CLI, or a second notebook, opens it: the refusal had
    # guessed "a running vmem serve or build?" and said to stop one, where none ran
    with holding(memory) as holder:
        with pytest.raises(MemoryInUseError) as refused:
            open_store(memory)
        points = run("points", "--memory", memory)
        info = run("info", "--memory", memory)
    who = f"process {holder.pid} ({Path(sys.executable).name} -c …) since "  # a script's own arguments left out
    assert f"is open in another process: {who}" in str(refused.value)
    assert "Close the memory there (mem.close()), or end that process" in str(refused.value)
    assert points.exit_code == 75 and f"Error: the memory at {memory} is open in another process: {who}" in (
        points.stderr)
    assert f"points     not read: the memory is open in another process ({who}" in info.stdout
    assert (memory / ".vmem-open.lock").read_text() == ""  # let go: the note names no process that has
    with open_store(memory) as store:  # closed there: opened here at once
        assert store.count() == 4


WAIT_AT_THE_LOCK = "import sys; fh = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.readline()"


def test_a_process_that_only_waits_for_the_lock_is_not_named_as_its_holder(memory, monkeypatch):
    # This process takes the lock as another user's process would hold it: unseen, as /proc shows the holder no
    # process "other than this one". A process of this user with the lock file open and no lock (one waiting for
    # it opens the file at each try) had been named as the holder, "holding the lock it inherited", to be killed
    lock = memory / ".vmem-open.lock"
    lock.write_text("")  # no note: as a killed holder's forked child that still held it would leave it
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_AT_THE_LOCK, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline() == "open\n"
        with open(lock, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(MemoryInUseError) as refused:
                open_store(memory)
            said = str(refused.value)
            assert (f"is open in another process: a process this user cannot see (another user's?); process "
                    f"{waiter.pid} ({Path(sys.executable).name[:15]}) of this user only waits for it") in said, said
            assert "kill" not in said and "inherited" not in said, said
            # Where /proc does not say who holds a lock, the process with it open may hold it: said so
            monkeypatch.setattr(retrieval.files, "_fdinfo_says_locks", lambda: False)
            with pytest.raises(MemoryInUseError) as unsure:
                open_store(memory)
            assert f"process {waiter.pid} (" in str(unsure.value)
            assert "which may hold its lock (/proc does not say). End it (kill" in str(unsure.value), unsure.value
            monkeypatch.undo()
            # Held shared, as a reader of the memory at rest holds it: the waiter is not named as the reader
            fcntl.flock(held, fcntl.LOCK_SH)
            with pytest.raises(MemoryInUseError) as read:
                open_store(memory)
            assert "is being read by another process (vmem info" in str(read.value), read.value
    finally:
        waiter.stdin.close()
        waiter.wait(timeout=30)


def test_a_holder_note_that_would_read_as_other_text_is_shown_escaped(memory):
    # The lock file's note is any writer's of the memory's folder, as the served note is: a U+202E RIGHT-TO-LEFT
    # OVERRIDE in its command line had the refusal read backwards from there, a zero-width space hid in it
    with holding(memory) as holder:
        lock = memory / ".vmem-open.lock"
        note = json.loads(lock.read_text())
        lock.write_text(json.dumps({**note, "argv": ["vmem", "serve\u202e", "x\u200by"], "since": "now\u2066"}))
        with pytest.raises(MemoryInUseError) as refused:
            open_store(memory)
        points = run("points", "--memory", memory)
    said = f"process {holder.pid} (vmem 'serve\\u202e' 'x\\u200by') since now\\u2066"
    assert said in str(refused.value) and said in points.stderr, (str(refused.value), points.stderr)
    assert not {"\u202e", "\u200b", "\u2066"} & set(str(refused.value) + points.stderr)


def test_a_memory_a_running_build_holds_is_refused_naming_the_build_which_then_ends_whole(tmp_path, encoder):
    # Two `vmem build`s at once on one memory: the second is refused at once, naming the first and to wait for
    # it, and the first, refused nothing, adds every image
    data = tmp_path / "data"
    for i in range(400):
        (data / ("ant" if i % 2 else "bee")).mkdir(parents=True, exist_ok=True)
        (data / ("ant" if i % 2 else "bee") / f"{i}.png").write_bytes(noise_png(i))
    memory, lock = tmp_path / "memory", tmp_path / "memory" / ".vmem-open.lock"
    command = [sys.executable, "-m", "vmem", "build", str(data), "--memory", str(memory), "--featurizer", encoder,
               "--workers", "0"]
    log = tmp_path / "build.log"  # a file, not a pipe: a full pipe would stop the build
    with log.open("w") as out:
        build = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        # It holds the memory, made (before vmem.json, it is said to be being created: the test below)
        while not (lock.exists() and '"vmem_command": "build"' in lock.read_text() and (memory / "vmem.json").exists()):
            assert build.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        os.kill(build.pid, signal.SIGSTOP)  # held midway for as long as the second one takes
        try:
            second = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                                    timeout=120)  # the same command, in another terminal
        finally:
            os.kill(build.pid, signal.SIGCONT)
        assert build.wait(timeout=300) == 0, log.read_text()
    finally:
        if build.poll() is None:
            build.kill()
            build.wait(timeout=30)
    assert second.returncode == 75, second.stderr
    assert (f"Error: the memory at {memory} is open in another process: process {build.pid} (vmem build {data} "
            f"--memory {memory} --featurizer {encoder} --workers 0) since ") in second.stderr
    assert "Wait for it to end, or stop it (vmem build carries on where it stopped when run again)" in second.stderr
    with open_store(memory) as store:
        assert store.count() == 400
    assert lock.read_text() == ""  # closed: the note names no process that has let go


# `vmem build`, stopped (SIGSTOP, by itself) as it creates its memory: its lock taken, vmem.json not written yet
BUILD_STOPPED_CREATING = """
import os, signal, sys
from retrieval.store import EdgeMemoryStore
from vmem.cli import app

creating = EdgeMemoryStore._open
def stopped_creating(self, meta, meta_path, shard_path):
    if meta is not None and not meta_path.exists():
        os.kill(os.getpid(), signal.SIGSTOP)
    return creating(self, meta, meta_path, shard_path)
EdgeMemoryStore._open = stopped_creating
sys.argv = ["vmem", *sys.argv[1:]]
app(prog_name="vmem")
"""


def test_a_second_build_while_the_first_creates_the_memory_is_told_so_and_loads_no_encoder(tmp_path, encoder):
    # The first build has taken the memory's lock and not yet written vmem.json. The second, without --featurizer,
    # had been told "no memory ... build one first", then loaded the default encoder to make one, and failed
    # offline with "could not load DINOv2 weights" (exit 2): nothing said another build was making it
    data = tmp_path / "data"
    for i in range(6):
        (data / ("ant" if i % 2 else "bee")).mkdir(parents=True, exist_ok=True)
        (data / ("ant" if i % 2 else "bee") / f"{i}.png").write_bytes(noise_png(i))
    memory = tmp_path / "memory"
    args = ["build", str(data), "--memory", str(memory)]
    log = tmp_path / "build.log"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-c", BUILD_STOPPED_CREATING, *args, "--featurizer", encoder,
                                  "--workers", "0"], cwd=tmp_path, env=subprocess_env(), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        stat = Path(f"/proc/{first.pid}/stat")
        while stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "T":  # stopped there
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        assert (memory / ".vmem-open.lock").exists() and not (memory / "vmem.json").exists()
        try:  # in this process (the stopped build is the other one): no child importing torch for each
            second = run(*args)
            info = run("info", "--memory", memory)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert second.exit_code == 75, second.stderr  # as every refusal of a memory another process holds
    assert (f"Error: the memory at {memory} is being created by another process: process {first.pid} (vmem build "
            f"{data} --memory {memory} --featurizer {encoder} --workers 0) since ") in second.stderr
    assert "Wait for it to end, or stop it (vmem build carries on where it stopped when run again)" in second.stderr
    assert "DINOv2" not in second.stderr and "build one first" not in second.stderr
    assert info.exit_code == 75 and "is being created by another process: process " in info.stderr, info.stderr
    with open_store(memory) as store:  # the first, refused nothing, made it whole
        assert store.count() == 6


def test_a_python_session_refused_a_memory_vmem_serve_holds_is_told_where_to_ask_it(tmp_path, encoder):
    # The CLI named the service's route; the Python API said "a running vmem serve or build?" with no address
    memory = tmp_path / "memory"
    tiny_memory(encoder, str(memory)).close()
    with vmem_serve(memory, tmp_path, "--no-auth") as served, pytest.raises(MemoryInUseError) as refused:
        VisualMemory.open(memory)
    said = str(refused.value)
    assert f"is open in another process: process {served.proc.pid} (" in said
    assert f"which serves it at {served.url}. Ask the service over HTTP instead (POST /v1/classify" in said
