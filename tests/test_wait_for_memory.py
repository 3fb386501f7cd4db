"""Waiting for a memory another process holds (`wait=` in Python, `--wait SECONDS` / VMEM_WAIT on the command line).

A nightly `vmem build new/` run while a notebook holds the memory had failed at once (exit 75): now it waits for
the holder to let go, says once who that is, and goes on; past its time it is refused as before. The holders here
are real processes; each waits on a pipe the test writes to, so every wait is bounded by the test's own steps.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from retrieval import FeaturizerSpec, MemoryInUseError, Preprocessing, open_store
from retrieval.store import open_read_only
from tests._reliability_fixtures import image_folder, subprocess_env, tiny_memory
from tests.conftest import REPO, random_unit_vectors
from vmem import MemoryStoreError, VisualMemory
from vmem.diff import open_to_compare

DIM = 16
SPEC = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
# Holds the memory open until a line comes on its stdin, then closes it and exits
HOLD = ("import sys; from retrieval import open_store; store = open_store(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.readline(); store.close()")
# Makes a memory, stopping (the lock taken, no vmem.json yet) until a line comes on its stdin
CREATE = """
import sys
from retrieval import FeaturizerSpec, Preprocessing, open_store
from retrieval.store import EdgeMemoryStore
create = EdgeMemoryStore._create
def create_when_told(self, meta, shard_path):
    print('creating', flush=True)
    sys.stdin.readline()
    create(self, meta, shard_path)
EdgeMemoryStore._create = create_when_told
spec = FeaturizerSpec(name="test-encoder", dim=16, preprocessing=Preprocessing(resize=256, crop=224))
open_store(sys.argv[1], spec).close()
"""

# As CREATE, then holds the memory it made until a second line comes (a first `vmem build` goes on to add its images)
CREATE_THEN_HOLD = CREATE.replace("open_store(sys.argv[1], spec).close()", """store = open_store(sys.argv[1], spec)
print('created', flush=True)
sys.stdin.readline()
store.close()""")


@pytest.fixture
def memory(tmp_path):
    location = tmp_path / "memory"
    with open_store(location, SPEC) as store:
        store.add(random_unit_vectors(3, DIM, seed=1), ["cat", "cat", "dog"], [f"/data/{i}.jpg" for i in range(3)])
    return location


@contextmanager
def process(code: str, memory: Path, ready: str):
    """A process running `code` on `memory`, once it has said `ready`; let go by `release`, ended at the block's end."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(memory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=subprocess_env())
    try:
        assert proc.stdout.readline().strip() == ready
        yield proc
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def release(proc: subprocess.Popen) -> None:
    """Tell the process to let go of the memory (it closes it, then exits)."""
    proc.stdin.write("go\n")
    proc.stdin.close()


def release_once_waited_for(proc: subprocess.Popen, caplog) -> threading.Thread:
    """Let go of the memory as soon as this process says it waits for it (the first warning logged)."""
    def watch() -> None:
        while not any("waiting for it to let go" in r.getMessage() for r in list(caplog.records)):
            threading.Event().wait(0.02)
        release(proc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def waits(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "waiting for it to let go" in r.getMessage()]


def test_an_opening_that_waits_goes_on_once_the_holder_lets_go_having_said_once_who_it_is(memory, caplog):
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with process(HOLD, memory, "held") as holder:
        release_once_waited_for(holder, caplog)
        with VisualMemory.open(memory, reranker=None, wait=120) as mem:
            assert holder.wait(timeout=60) == 0  # opened only once the holder had closed it
            assert mem.store.count() == 3
            mem.store.add(random_unit_vectors(1, DIM, seed=2), ["dog"], ["/data/new.jpg"])  # and it may write
    [said] = waits(caplog)  # said once, however many times it looked
    assert said.startswith(f"the memory at {memory} is open in another process: process {holder.pid} (")
    assert said.endswith("waiting for it to let go (up to 120 s)")
    with open_store(memory) as store:
        assert store.count() == 4


def test_a_wait_that_runs_out_is_refused_as_before_and_the_live_holder_keeps_the_memory(memory, caplog):
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with process(HOLD, memory, "held") as holder:
        with pytest.raises(MemoryInUseError) as refused:
            VisualMemory.open(memory, reranker=None, wait=0.3)
        assert holder.poll() is None  # never taken from a live process
        release(holder)
    assert f"is open in another process: process {holder.pid} (" in str(refused.value)
    assert "Close the memory there (mem.close()), or end that process" in str(refused.value)
    assert len(waits(caplog)) == 1


def test_a_wait_and_its_refusal_name_the_folder_as_it_is_whatever_the_path_given(tmp_path, caplog):
    # A folder named with a right-to-left override, given through `..`: shown escaped, and as the one folder it is
    folder = tmp_path / "mem\u202e1"
    with open_store(folder, SPEC) as store:
        store.add(random_unit_vectors(1, DIM, seed=1), ["cat"], ["/data/0.jpg"])
    (tmp_path / "repo").mkdir()
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with process(HOLD, folder, "held") as holder:
        with pytest.raises(MemoryInUseError) as refused:
            open_store(tmp_path / "repo" / ".." / "mem\u202e1", wait=0.3)
        release(holder)
    shown = f"the memory at {tmp_path}/mem\\u202e1 is open in another process"
    [said] = waits(caplog)
    assert said.startswith(shown) and str(refused.value).startswith(shown), (said, str(refused.value))


def test_without_a_wait_an_opening_is_refused_at_once_and_says_nothing_of_waiting(memory, caplog):
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with process(HOLD, memory, "held"), pytest.raises(MemoryInUseError):
        open_store(memory)
    assert waits(caplog) == []


def test_a_memory_this_process_holds_is_refused_at_once_whatever_the_wait(memory, caplog):
    # Waiting for itself would never end: a notebook's cell run again is told to use or close the first object
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with VisualMemory.open(memory, reranker=None), pytest.raises(MemoryInUseError, match="already open in this "
                                                                                          "process"):
        VisualMemory.open(memory, reranker=None, wait=600)
    assert waits(caplog) == []


@pytest.mark.parametrize("wait", [-1, float("nan"), "10"])
def test_a_wait_that_is_no_number_of_seconds_is_refused(memory, wait):
    with pytest.raises(ValueError, match="wait is the seconds to wait"):
        VisualMemory.open(memory, reranker=None, wait=wait)


def test_a_memory_being_created_is_said_to_be_so_to_a_read_only_opening_and_waited_for(tmp_path, caplog):
    # `vmem serve --read-only` on a memory a first build was still creating had been told "build one first"
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    memory = tmp_path / "memory"
    with process(CREATE, memory, "creating") as creator:
        with pytest.raises(MemoryInUseError, match=f"is being created by another process: process {creator.pid} "):
            open_read_only(memory)
        release_once_waited_for(creator, caplog)
        with open_read_only(memory, wait=120) as store:
            assert store.count() == 0 and store.meta.featurizer.name == "test-encoder"
    [said] = waits(caplog)
    assert said.startswith(f"the memory at {memory.resolve()} is being created by another process: process "
                           f"{creator.pid} (")


@pytest.mark.parametrize("opening", [open_store, open_read_only])
def test_a_memory_made_while_an_opening_waited_is_said_to_be_open_once_the_wait_runs_out(tmp_path, opening):
    # A `vmem classify --wait 60` begun as the first build was creating the memory: that build made it, then held it
    # to add its images for longer than the wait, and the refusal said it was still "being created"
    memory = tmp_path / "memory"
    with process(CREATE_THEN_HOLD, memory, "creating") as creator:
        class MadeAsItWaits(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:  # in the waiting thread: it goes on once made
                if "waiting for it to let go" in record.getMessage():
                    creator.stdin.write("go\n")
                    creator.stdin.flush()
                    assert creator.stdout.readline().strip() == "created"

        logger, made_as_it_waits = logging.getLogger("retrieval.store"), MadeAsItWaits()
        logger.addHandler(made_as_it_waits)
        try:
            with pytest.raises(MemoryInUseError) as refused:
                opening(memory, wait=0.5)
        finally:
            logger.removeHandler(made_as_it_waits)
        assert creator.poll() is None  # still holding the memory it made
        release(creator)
    assert f"is open in another process (process {creator.pid} (" in str(refused.value) or \
        f"is open in another process: process {creator.pid} (" in str(refused.value), str(refused.value)
    assert "being created" not in str(refused.value)


def test_an_opening_to_write_waits_for_a_memory_being_created(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    memory = tmp_path / "memory"
    with process(CREATE, memory, "creating") as creator:
        release_once_waited_for(creator, caplog)
        with open_store(memory, wait=120) as store:  # not "no memory ... build one first"
            assert store.meta.featurizer.name == "test-encoder"


def test_a_read_only_opening_of_a_memory_this_process_holds_says_to_use_that_object(memory):
    # `vmem.diff.open_to_compare` beside a memory open here had said "open in another process"
    with VisualMemory.open(memory, reranker=None) as mem:
        with pytest.raises(MemoryInUseError) as refused:
            open_to_compare(memory)
        assert "is open in this process" in str(refused.value)
        assert "call mem.diff(...) on the object that holds it" in str(refused.value)
        with pytest.raises(MemoryInUseError, match="is open in this process, to write"):
            open_read_only(memory, wait=600)  # at once: this process will not let go while it waits
        assert mem.store.count() == 3


def test_a_memory_named_by_a_folder_of_someone_elses_making_is_named_escaped(tmp_path):
    # "no memory at" and "is open in this process" wrote the location raw: a name holding a newline or a
    # right-to-left override read as another folder on screen (the waits already name it escaped).
    folder = tmp_path / "mem\u202egpj.exe\nx"
    shown = f"{tmp_path}/mem\\u202egpj.exe\\nx"
    for read_only in (False, True):
        with pytest.raises(MemoryStoreError) as refused:
            VisualMemory.open(folder, reranker=None, read_only=read_only)
        assert f"no memory at {shown}: build one first" in str(refused.value)
    with open_store(folder, SPEC), pytest.raises(MemoryInUseError) as refused:
        open_to_compare(folder)
    assert f"the memory at {shown} is open in this process" in str(refused.value)


def test_vmem_build_with_wait_goes_on_once_a_notebook_lets_go(tmp_path, encoder):
    # The nightly script's `vmem build new/` while a notebook holds the memory: exit 75 at once, before --wait
    memory = tmp_path / "memory"
    tiny_memory(encoder, str(memory)).close()  # 12 points
    data = tmp_path / "new"
    image_folder(data, ["ant", "bee"], 2)
    with process(HOLD, memory, "held") as holder:
        build = subprocess.Popen([sys.executable, "-m", "vmem", "build", str(data), "--memory", str(memory),
                                  "--wait", "120", "--workers", "0"], cwd=tmp_path, env=subprocess_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = build.stderr.readline()  # it says it waits, and waits (or, refused, ends: then no line says so)
        release(holder)
        out, err = build.communicate(timeout=300)
    assert said.startswith(f"WARNING the memory at {memory} is open in another process: process {holder.pid} ("), \
        said + err
    assert said.rstrip().endswith("waiting for it to let go (up to 120 s)")
    assert build.returncode == 0, err
    assert "waiting" not in err  # said once
    with open_store(memory) as store:
        assert store.count() == 16


def test_ctrl_c_while_only_waiting_for_the_memory_says_nothing_was_done(memory, tmp_path):
    # It had said "what was done before it stopped is kept; run the command again to finish": nothing had been
    (tmp_path / "query.png").write_bytes(b"not read: the command never got past waiting")
    with process(HOLD, memory, "held"):
        classify = subprocess.Popen([sys.executable, "-m", "vmem", "classify", str(tmp_path / "query.png"),
                                     "--memory", str(memory), "--wait", "120"], cwd=tmp_path, env=subprocess_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = classify.stderr.readline()  # it says it waits, and waits
        classify.send_signal(signal.SIGINT)
        out, err = classify.communicate(timeout=120)
    assert "waiting for it to let go" in said, said + err
    assert classify.returncode == 130, err
    assert err.strip() == (f"interrupted while waiting for the memory at {memory}: nothing was done to it; run the "
                           "command again"), err
    with open_store(memory) as store:
        assert store.count() == 3


def test_sigterm_while_only_waiting_for_the_memory_says_nothing_was_done(memory, tmp_path):
    # `timeout 60 vmem classify ... --wait 600`, a CI job's limit: SIGTERM had ended it without a word (killed by the
    # signal), where Ctrl-C said nothing was done
    (tmp_path / "query.png").write_bytes(b"not read: the command never got past waiting")
    with process(HOLD, memory, "held"):
        classify = subprocess.Popen([sys.executable, "-m", "vmem", "classify", str(tmp_path / "query.png"),
                                     "--memory", str(memory), "--wait", "120"], cwd=tmp_path, env=subprocess_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = classify.stderr.readline()  # it says it waits, and waits
        classify.send_signal(signal.SIGTERM)
        out, err = classify.communicate(timeout=120)
    assert "waiting for it to let go" in said, said + err
    assert classify.returncode == 130, err  # as an interrupted command (a build stopped by SIGTERM too)
    assert err.strip() == (f"stopped (SIGTERM) while waiting for the memory at {memory}: nothing was done to it; run "
                           "the command again"), err
    with open_store(memory) as store:
        assert store.count() == 3


# Another program than vmem holding the engine's files (not vmem's lock): the engine's own "WouldBlock"
HOLD_SHARD = ("import sys; import qdrant_edge as qe; shard = qe.EdgeShard.load(sys.argv[1] + '/shard'); "
              "print('held', flush=True); sys.stdin.readline()")


def test_a_memory_in_use_elsewhere_is_named_escaped_whichever_way_it_is_held(tmp_path):
    # A folder's name is of someone else's making: U+202E turned the rest of the refusal backwards where the location
    # was written as given (qdrant-client's local mode, the engine's own lock), as the wait's refusal never did
    local = tmp_path / "shared\u202eqdrant"
    open_store(f"qdrant-local:{local}", SPEC).close()
    with process(HOLD, f"qdrant-local:{local}", "held"), pytest.raises(MemoryInUseError) as refused:
        open_store(f"qdrant-local:{local}")
    assert str(refused.value).startswith(f"the memory at qdrant-local:{tmp_path}/shared\\u202eqdrant is open in "
                                         "another process")
    embedded = tmp_path / "embedded\u202ememory"
    open_store(embedded, SPEC).close()
    with process(HOLD_SHARD, embedded, "held"), pytest.raises(MemoryInUseError) as refused:
        open_store(embedded)
    assert str(refused.value).startswith(f"the memory at {tmp_path}/embedded\\u202ememory is open in another process")


@pytest.mark.parametrize("command, env", [(["info", "--wait", "120"], {}), (["history"], {"VMEM_WAIT": "120"})])
def test_vmem_info_and_history_wait_for_a_memory_being_created_and_read_a_held_one_at_once(tmp_path, command, env):
    # They had no --wait (nor read VMEM_WAIT): beside a first build still creating the memory, a script's `vmem info`
    # was refused at once (exit 75) whatever it asked
    memory = tmp_path / "memory"
    with process(CREATE_THEN_HOLD, memory, "creating") as creator:
        reader = subprocess.Popen([sys.executable, "-m", "vmem", *command, "--memory", str(memory)], cwd=tmp_path,
                                  env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = reader.stderr.readline()  # it says it waits, and waits (or, refused, ends: then no line says so)
        creator.stdin.write("go\n")  # made: its files are there, and it holds it still (a first build adds its images)
        creator.stdin.flush()
        assert creator.stdout.readline().strip() == "created"
        # ... which the wait is not for: its files are read at once, as without a wait
        out, err = reader.communicate(timeout=120)
    assert said.startswith(f"WARNING the memory at {memory} is being created by another process: process "
                           f"{creator.pid} ("), said + err
    assert "waiting for it to be made (up to 120 s)" in said, said  # not "to let go": it reads a held memory at once
    assert reader.returncode == 0, said + err
    assert "waiting" not in err  # said once
    if command[0] == "info":
        assert "featurizer test-encoder" in out and "this is what its files say" in out, out
    else:
        assert "read from its files: the memory is open in another process" in err, err


def test_vmem_copy_with_wait_waits_for_the_memory_it_copies_into_too(memory, tmp_path):
    # A nightly `vmem copy --to-memory replica --wait 600` while a notebook holds the replica: the wait had been for
    # the memory copied from only, and the replica refused at once (exit 75)
    replica = tmp_path / "replica"
    open_store(replica, SPEC).close()
    with process(HOLD, replica, "held") as holder:
        copy = subprocess.Popen([sys.executable, "-m", "vmem", "copy", "--memory", str(memory), "--to-memory",
                                 str(replica), "--wait", "120"], cwd=tmp_path, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [""]
        while "waiting for it to let go" not in lines[-1]:  # after the progress bar's start (or, refused, it ends)
            lines.append(copy.stderr.readline())
            assert lines[-1], "".join(lines)
        said = lines[-1]
        release(holder)
        out, err = copy.communicate(timeout=300)
    assert f"the memory at {replica} is open in another process: process {holder.pid} (" in said, said + err
    assert copy.returncode == 0, err
    with open_store(replica) as store:
        assert store.count() == 3


def test_sigterm_while_vmem_copy_waits_for_the_memory_it_copies_into_says_nothing_was_done(memory, tmp_path):
    # `timeout 600 vmem copy --to-memory replica --wait 3600`: the wait for the replica was not under vmem's SIGTERM
    # handling (the wait for the memory copied from was), so SIGTERM there ended it without a word
    replica = tmp_path / "replica"
    open_store(replica, SPEC).close()
    with process(HOLD, replica, "held"):
        copy = subprocess.Popen([sys.executable, "-m", "vmem", "copy", "--memory", str(memory), "--to-memory",
                                 str(replica), "--wait", "120"], cwd=tmp_path, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [""]
        while "waiting for it to let go" not in lines[-1]:  # after the progress bar's start (or, refused, it ends)
            lines.append(copy.stderr.readline())
            assert lines[-1], "".join(lines)
        copy.send_signal(signal.SIGTERM)
        out, err = copy.communicate(timeout=120)
    assert copy.returncode == 130, "".join(lines) + err
    assert err.strip().splitlines()[-1] == (f"stopped (SIGTERM) while waiting for the memory at {replica}: nothing "
                                            "was done to it; run the command again"), err
    with open_store(replica) as store:
        assert store.count() == 0


def test_sigterm_while_vmem_diff_waits_for_a_memory_says_nothing_was_done(memory, tmp_path):
    # vmem diff opens its two memories to compare (read-only), not through the opening the other commands share:
    # SIGTERM as it waited had ended it unsaid (-15)
    other = tmp_path / "other"
    open_store(other, SPEC).close()
    with process(HOLD, other, "held"):
        diff = subprocess.Popen([sys.executable, "-m", "vmem", "diff", str(memory), str(other), "--wait", "120"],
                                cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        said = diff.stderr.readline()  # it says it waits, and waits
        diff.send_signal(signal.SIGTERM)
        out, err = diff.communicate(timeout=120)
    assert "waiting for it to let go" in said, said + err
    assert diff.returncode == 130, err
    assert err.strip() == (f"stopped (SIGTERM) while waiting for the memory at {other}: nothing was done to it; run "
                           "the command again"), err


def test_vmem_wait_is_also_read_from_vmem_wait(memory, tmp_path, monkeypatch):
    # A script sets it once for every command it runs
    with process(HOLD, memory, "held") as holder:
        labels = subprocess.Popen([sys.executable, "-m", "vmem", "labels", "--memory", str(memory)], cwd=tmp_path,
                                  env=subprocess_env(VMEM_WAIT="120"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        said = labels.stderr.readline()
        release(holder)
        out, err = labels.communicate(timeout=300)
    assert "waiting for it to let go (up to 120 s)" in said, said + err
    assert labels.returncode == 0, err
    assert "cat" in out and "dog" in out


def test_vmem_serve_with_json_logs_says_it_waits_in_a_json_line(memory, tmp_path):
    # VMEM_LOG_FORMAT=json: every line a JSON object, for a log collector. The line saying it waits had come out as
    # text ("WARNING the memory at ..."), through the CLI's own handler, before uvicorn's logging was set up
    with process(HOLD, memory, "held") as holder:
        serve = subprocess.Popen([sys.executable, "-m", "vmem", "serve", "--no-auth", "--port", "0", "--memory",
                                  str(memory), "--wait", "120"], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=subprocess_env(VMEM_LOG_FORMAT="json"))
        lines = []
        while not lines or "waiting for it to let go" not in lines[-1]:  # or, refused, it ends: then "" comes
            line = serve.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        serve.send_signal(signal.SIGTERM)  # docker stop while it waits
        out, err = serve.communicate(timeout=300)
        release(holder)
    said = [json.loads(line) for line in lines + err.splitlines()]
    assert serve.returncode == 0, err
    [waits_line] = [e for e in said if "waiting for it to let go" in e["message"]]
    assert (waits_line["level"], waits_line["logger"]) == ("WARNING", "retrieval.store")
    assert f"process {holder.pid} (" in waits_line["message"]
    assert said[-1]["message"] == "stopped (SIGTERM) before serving"


def test_vmem_serve_reads_vmem_wait_from_its_env_file_as_every_setting(memory, tmp_path):
    # The service's settings come from the environment or its .env: VMEM_WAIT in the .env had been ignored (typer read
    # the environment's only), and the start refused at once
    (tmp_path / ".env").write_text("VMEM_WAIT=120\nVMEM_AUTH_DISABLED=true\n")
    with process(HOLD, memory, "held") as holder:
        serve = subprocess.Popen([sys.executable, "-m", "vmem", "serve", "--port", "0", "--memory", str(memory)],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env())
        lines = [""]
        while "waiting for it to let go" not in lines[-1]:  # or, refused, it ends: then "" comes
            lines.append(serve.stderr.readline())
            assert lines[-1], "".join(lines)
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=300)
        release(holder)
    assert f"process {holder.pid} (" in lines[-1] and "(up to 120 s)" in lines[-1]
    assert serve.returncode == 0 and "stopped (SIGTERM) before serving" in err, err


@pytest.mark.parametrize("wait", ["-1", "nan"])
def test_a_wait_given_that_is_no_number_of_seconds_is_a_usage_error(memory, wait):
    refused = subprocess.run([sys.executable, "-m", "vmem", "labels", "--memory", str(memory), "--wait", wait],
                             env=subprocess_env(COLUMNS="200"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert "Invalid value for '--wait': Input should be greater than or equal to 0" in refused.stderr


# Opens the memory, forks a child that keeps its lock (as a process it started would), and prints the child's id
HOLD_AND_FORK = """
import os, sys, time
from retrieval import open_store
store = open_store(sys.argv[1])
child = os.fork()
if child == 0:
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


def test_a_process_waiting_beside_an_orphaned_lock_is_not_named_as_one_to_end(memory, tmp_path, caplog):
    # Where the holder noted is gone, the refusal names the processes that have the lock file open: a waiter that
    # kept it open between its tries was named too ("End it (kill <child> <waiter>)")
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(memory)], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    holder.kill()
    holder.wait(timeout=60)
    waiter = None
    try:
        waiter = subprocess.Popen([sys.executable, "-m", "vmem", "labels", "--memory", str(memory), "--wait", "120"],
                                  cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        said = waiter.stderr.readline()
        assert "waiting for it to let go" in said and f"process {child} (" in said, said
        with pytest.raises(MemoryInUseError) as refused:
            open_store(memory, wait=0.2)
        assert f"End it (kill {child}) if it no longer uses the memory" in str(refused.value)
        assert str(waiter.pid) not in str(refused.value)
    finally:
        os.kill(child, signal.SIGKILL)  # the orphan ended: the waiter goes on
    out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err
    assert "cat" in out


# Has the memory's lock file open, taking no lock on it: a waiter caught between opening the file and closing it
# again at one of its tries (microseconds each, but under load it may be descheduled right there)
OPEN_NOT_LOCKED = "import sys; lock = open(sys.argv[1] + '/.vmem-open.lock', 'rb'); print('open', flush=True); " \
                  "sys.stdin.readline()"


def test_a_process_that_has_the_lock_file_open_without_its_lock_is_not_named_as_one_to_end(memory):
    # The refusal names the processes that have the lock file open where the holder noted is gone: a waiter whose
    # try was under way as they were looked for was named beside the orphan that holds the lock ("kill <child>
    # <waiter>"): the test above, by chance, where the waiter's try and the refusal's look met
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(memory)], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    holder.kill()
    holder.wait(timeout=60)
    try:
        with process(OPEN_NOT_LOCKED, memory, "open") as waiter:
            with pytest.raises(MemoryInUseError) as refused:
                open_store(memory)
            release(waiter)
    finally:
        os.kill(child, signal.SIGKILL)
    assert f"End it (kill {child}) if it no longer uses the memory" in str(refused.value), str(refused.value)
    assert str(waiter.pid) not in str(refused.value)


def test_vmem_serve_read_only_on_a_memory_being_created_says_so(tmp_path):
    # It had said "no memory at ...: build one first (vmem build)" while the first build was making it
    memory = tmp_path / "memory"
    with process(CREATE, memory, "creating") as creator:
        serve = subprocess.run([sys.executable, "-m", "vmem", "serve", "--read-only", "--no-auth", "--port", "0",
                                "--memory", str(memory)], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                               text=True, timeout=300)
        release(creator)
    assert serve.returncode == 75, serve.stderr
    assert f"is being created by another process: process {creator.pid} (" in serve.stderr
    assert "build one first" not in serve.stderr
