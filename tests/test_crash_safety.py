"""Crash safety: `kill -9` in the middle of `vmem build` and of the server's memory writes.

What a user of a database-backed tool relies on, checked on the embedded Qdrant Edge memory:
the memory reopens; its counts agree with its points; every write that was acknowledged (a build
batch reported done, an HTTP 201) is there; a resumed build ends with every image exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from retrieval import MemoryError, load_featurizer, normalize_source, open_store, point_id_for
from tests._reliability_fixtures import (
    VMEM,
    image_folder,
    noise_png,
    subprocess_env,
    vmem_serve,
)
from tests.conftest import REPO

LABELS = ["ant", "bee", "cat"]
PER_LABEL = 200  # 600 images: a few seconds of building, so a kill lands mid-run
BATCH = 16
KILL_AFTER = 4 * BATCH


def check_consistent(memory: Path) -> list:
    """Reopen the memory and check it agrees with itself; returns its points."""
    with open_store(memory) as store:
        points = [p for batch in store.scroll() for p in batch]
        ids = [p.id for p in points]
        assert len(ids) == len(set(ids)) == store.count(), "a point is counted twice or not at all"
        assert sum(store.label_counts().values()) == store.count()
        for p in points:
            assert p.id == point_id_for(p.source), "a point's id no longer derives from its source"
        return points


class Progress:
    """Follows tqdm's `done/total` on a child's stderr."""

    def __init__(self, proc: subprocess.Popen, total: int) -> None:
        self.done = 0
        self.text = ""
        self._pattern = re.compile(rf"(\d+)/{total}\b")
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        fd = proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            self.text += chunk.decode(errors="replace")
            found = self._pattern.findall(self.text[-400:])
            if found:
                self.done = max(self.done, int(found[-1]))


def build_cmd(dataset: Path, memory: Path, encoder: str) -> list[str]:
    return [*VMEM, "build", str(dataset), "--memory", str(memory), "--featurizer", encoder,
            "--batch-size", str(BATCH), "--workers", "0"]


@pytest.mark.slow
def test_kill_9_during_build_then_resume_gives_every_image_exactly_once(tmp_path, encoder):
    files = image_folder(tmp_path / "dataset", LABELS, PER_LABEL)
    total = len(files)
    memory = tmp_path / "memory"
    proc = subprocess.Popen(build_cmd(tmp_path / "dataset", memory, encoder), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = Progress(proc, total)
    deadline = time.monotonic() + 120
    while progress.done < KILL_AFTER and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    acknowledged = progress.done  # reported after each batch is in the memory
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the build ended before the kill:\n{progress.text[-2000:]}"
    assert acknowledged >= KILL_AFTER, progress.text[-2000:]

    points = check_consistent(memory)
    assert acknowledged <= len(points) < total, (acknowledged, len(points))
    for p in points:
        assert p.label == Path(p.source).parent.name

    from typer.testing import CliRunner

    from vmem.cli import app

    # Resumed in this process (the kill is the child's; what a resume reads is on disk): a second child would
    # spend seconds importing transformers again
    resumed = CliRunner().invoke(app, build_cmd(tmp_path / "dataset", memory, encoder)[len(VMEM):])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert f"{total - len(points)} added, {len(points)} already in memory, 0 failed" in resumed.stdout
    points_after_kill = points

    print(f"killed with {acknowledged} images reported done; reopened with {len(points_after_kill)} points; "
          f"resumed: {resumed.stdout.strip()}")
    points = check_consistent(memory)
    assert len(points) == total
    assert {p.id for p in points} == {point_id_for(normalize_source(f)) for f in files}


def test_a_memory_whose_creation_died_before_its_metadata_is_recreated(tmp_path, encoder):
    feat = load_featurizer(encoder, device="cpu")
    memory = tmp_path / "memory"
    open_store(memory, feat.spec).close()
    (memory / "vmem.json").unlink()  # what a kill between creating the shard and writing vmem.json leaves
    with pytest.raises(MemoryError, match="build one first"):
        open_store(memory)
    with open_store(memory, feat.spec) as store:
        store.add(feat.embed([noise_png(1)]), ["ant"], ["/x/1.png"])
    assert len(check_consistent(memory)) == 1


@pytest.mark.slow
def test_kill_9_while_the_server_adds_loses_no_acknowledged_point(tmp_path, encoder):
    feat = load_featurizer(encoder, device="cpu")
    memory = tmp_path / "memory"
    with open_store(memory, feat.spec) as store:
        seed_images = [noise_png(i) for i in range(6)]
        store.add(feat.embed(seed_images), ["ant", "bee", "cat"] * 2, [f"/seed/{i}.png" for i in range(6)])

    acked: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(worker: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                seed = 1_000_000 * (worker + 1) + n
                try:
                    resp = http.post("/v1/memory", data={"label": LABELS[n % 3]},
                                     files={"images": (f"{seed}.png", noise_png(seed))})
                except httpx.TransportError:
                    return  # the server is gone
                assert resp.status_code == 201, resp.text
                with lock:
                    acked.extend(p["id"] for p in resp.json()["added"])

    with vmem_serve(memory, tmp_path, "--no-auth", "--threads", "2", "--log-level", "warning") as served:
        threads = [threading.Thread(target=writer, args=(w, served.url), daemon=True) for w in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        served.proc.send_signal(signal.SIGKILL)  # while the writers are still sending
        served.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acked) >= 40, served.output()[-2000:]

    points = check_consistent(memory)
    ids = {p.id for p in points}
    missing = set(acked) - ids
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged adds were lost"
    assert len(points) >= 6 + len(set(acked))
    print(f"{len(acked)} adds acknowledged before the kill, all present; {len(points) - 6 - len(set(acked))} "
          "more were written but not acknowledged")


def test_a_memory_in_use_by_another_process_is_refused_with_a_clear_error(tmp_path, encoder):
    # The engine locks its write-ahead log; two writers on one directory would otherwise interleave.
    feat = load_featurizer(encoder, device="cpu")
    memory = tmp_path / "memory"
    with open_store(memory, feat.spec) as holder:
        holder.add(feat.embed([noise_png(1)]), ["ant"], ["/x/1.png"])
        # (held in this process here, so the refusal says that; another process's is in the tests below)
        with pytest.raises(MemoryError, match="already open in this process"):
            open_store(memory)
        from typer.testing import CliRunner

        from vmem.cli import app
        busy = CliRunner().invoke(app, ["info", "--memory", str(memory)])
        # a one-line error, and 75 (EX_TEMPFAIL): a scheduler retries it later, as it would not a wrong command
        assert busy.exit_code == 75 and "already open in this process" in busy.output
        assert "Usage:" not in busy.output  # ...not a usage error: the command was right
        holder.add(feat.embed([noise_png(2)]), ["bee"], ["/x/2.png"])
    assert len(check_consistent(memory)) == 2


_HOLD_AND_FORK = """
import os, sys, time
from retrieval import open_store
from retrieval.featurizers import _leave_the_memory_alone
store = open_store(sys.argv[1])
child = os.fork()  # as a build's decoding workers are made (DataLoader, fork)
if child == 0:
    if sys.argv[2] == "worker":
        _leave_the_memory_alone(0)  # the DataLoader's worker_init_fn
    print(os.getpid(), flush=True)  # once it has
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


@pytest.mark.parametrize("child", ["worker", "other"])
def test_a_memory_killed_with_its_workers_alive_can_be_opened_at_once(tmp_path, encoder, child):
    # A forked worker shared the memory's locks: after a kill -9 of a build with --workers, the memory was
    # "open in another process" until the workers noticed and exited (~5 s). Any other child keeps them: it
    # may go on using the memory, and a second process must not open it beside it.
    memory = tmp_path / "memory"
    open_store(memory, load_featurizer(encoder, device="cpu").spec).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_AND_FORK, str(memory), child], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    forked = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(forked, 0)  # still running, its inherited descriptors with it
        if child == "worker":
            open_store(memory).close()
        else:
            with pytest.raises(MemoryError, match="open in another process") as refused:
                open_store(memory)
            # Named, with how to let it go: the refusal had guessed "a running vmem serve or build?", none running
            assert f"open in another process: process {forked} (" in str(refused.value)
            assert (f"holding the lock it inherited from process {holder.pid}, now gone. End it (kill {forked}) if "
                    "it no longer uses the memory") in str(refused.value)
    finally:
        os.kill(forked, signal.SIGKILL)


_MAKE_AND_ADD = """
import sys
import numpy as np
from retrieval import FeaturizerSpec, MemoryError, Preprocessing, open_store
from retrieval.store import EdgeMemoryStore
if sys.argv[3:] == ["held"]:  # held with its shard made and its vmem.json not yet written, till the test says go on
    save_meta = EdgeMemoryStore.save_meta
    def held(self):
        EdgeMemoryStore.save_meta = save_meta
        print("creating", flush=True)
        sys.stdin.readline()
        save_meta(self)
    EdgeMemoryStore.save_meta = held
spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
try:
    store = open_store(sys.argv[1], spec)
except MemoryError as exc:
    print("refused:", exc)
    sys.exit(0)
v = np.random.default_rng(int(sys.argv[2])).standard_normal((5, 8)).astype(np.float32)
store.add(v, ["a"] * 5, [f"/p{sys.argv[2]}/{i}.jpg" for i in range(5)])
store.close()
print("added")
"""


def test_two_processes_making_one_new_memory_at_once_lose_nothing(tmp_path):
    # Each took the other's half-made shard for a crashed creation's leftovers and removed it: both failed
    # with engine IO errors, and reopening found no memory at all. The first is held halfway through making it
    # while the second opens it.
    memory = tmp_path / "memory"
    first = subprocess.Popen([sys.executable, "-c", _MAKE_AND_ADD, str(memory), "0", "held"], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if held := first.stdout.readline() == "creating\n":
            second = subprocess.run([sys.executable, "-c", _MAKE_AND_ADD, str(memory), "1"], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    finally:
        out, err = first.communicate("go on\n", timeout=120)
    assert held and out.splitlines()[-1:] == ["added"], err
    said = second.stdout.strip().splitlines()[-1:] or [second.stderr]
    assert said[0].startswith("refused:") and "open in another process" in said[0], said
    with open_store(memory) as store:
        assert store.count() == 5


def killed_mid_write(target: Path) -> Path:
    """Start a process writing `target` with write_atomically, kill -9 it before its rename; its temp file."""
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from retrieval.files import write_atomically\n"
        "write_atomically(sys.argv[1], lambda fh: (fh.write(b'x' * 1000), fh.flush(), print(flush=True),"
        " time.sleep(60)))"), str(target)], stdout=subprocess.PIPE, cwd=REPO)
    writer.stdout.readline()  # the temporary file is written, the rename not yet done
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (leftover,) = target.parent.glob(f".{target.name}.*.tmp")
    return leftover


def test_temporary_files_of_killed_writes_are_removed_when_the_memory_opens(tmp_path, encoder):
    feat = load_featurizer(encoder, device="cpu")
    memory = tmp_path / "memory"
    open_store(memory, feat.spec).close()
    (memory / "thumbnails").mkdir()
    leftovers = [killed_mid_write(memory / "vmem.json"), killed_mid_write(memory / "thumbnails" / "a.jpg")]
    fresh = killed_mid_write(memory / "notes.txt")
    old = time.time() - 3600
    for f in leftovers:
        os.utime(f, (old, old))
    open_store(memory).close()
    assert [f.exists() for f in leftovers] == [False, False]
    assert fresh.exists(), "a recent one may be a write still going on, on another host sharing the folder"
    assert len(check_consistent(memory)) == 0


def test_temporary_files_of_killed_stream_saves_are_removed_when_streams_are_opened(tmp_path, encoder):
    from vmem.dmn_classifier import DmnClassifier

    feat = load_featurizer(encoder, device="cpu")
    with open_store(tmp_path / "memory", feat.spec) as store:
        streams = tmp_path / "streams"
        streams.mkdir()
        leftover = killed_mid_write(streams / "default.npz")  # a ~50 MB stream's, in a real one
        old = time.time() - 3600
        os.utime(leftover, (old, old))
        DmnClassifier(store, lambda: feat, root=streams)
        assert not leftover.exists()


_COPY_KILLED_AFTER_ITS_FIRST_BATCH = """
import os, signal, sys
from retrieval import open_store
from vmem import VisualMemory
with VisualMemory(open_store(sys.argv[1]), reranker=None) as mem:
    mem.copy_to(sys.argv[2], batch_size=20, progress=lambda n: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_point_forgotten_before_a_killed_copy_is_run_again_leaves_the_copy_too(tmp_path):
    # The copy killed midway had put its first points there, with nothing saying a copy had: run again after a
    # forget here, it forgot nothing there, and the copy's journal said the points were forgotten while it
    # held them, for good.
    from retrieval import FeaturizerSpec, Preprocessing
    from tests.conftest import random_unit_vectors
    from vmem import VisualMemory

    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(60, 8), ["cat", "dog", "fox"] * 20, [f"/data/{i}.jpg" for i in range(60)])
        first = [p.id for p in next(store.scroll(batch_size=20))]
    killed = subprocess.run([sys.executable, "-c", _COPY_KILLED_AFTER_ITS_FIRST_BATCH, str(tmp_path / "memory"),
                             str(tmp_path / "copy")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with open_store(tmp_path / "copy") as copy:
        assert copy.existing_ids(first) == set(first)  # the first batch went before the kill
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        mem.forget(ids=first[:5])
        dest, notes = mem.copy_to(tmp_path / "copy")  # run again
        with dest:
            assert not dest.existing_ids(first[:5]), "forgotten here, still in the copy"
            assert dest.count() == 55
            assert notes == ["5 points an earlier copy put there were forgotten here since: forgotten there too"]
            assert "copies_begun" not in dest.meta.settings  # finished: its journal says when from now on
        dest, notes = mem.copy_to(tmp_path / "copy")  # and once more: nothing more to forget
        dest.close()
        assert notes == []
    assert len(check_consistent(tmp_path / "copy")) == 55


_ERASE_KILLED_BEFORE_ITS_FLUSH = """
import os, signal, sys
from retrieval import open_store

class KilledAtFlush:  # the engine's shard, but the process dies where it would flush
    def __init__(self, shard):
        self.shard = shard
    def __getattr__(self, name):
        return getattr(self.shard, name)
    def flush(self):
        os.kill(os.getpid(), signal.SIGKILL)

store = open_store(sys.argv[1])
store.shard = KilledAtFlush(store.shard)
store.erase_forgotten()
"""


def test_kill_9_between_a_segment_rewrite_and_its_flush_counts_each_point_once(tmp_path):
    # The engine writes a rewritten segment at once but removes the one it replaces only at its next flush:
    # killed in between, the memory loaded both, for good. It counted 400 points where it held 200, an erase run
    # again rewrote the doubles as they were, and the forgotten points' vectors stayed in the replaced segment.
    from retrieval import FeaturizerSpec, Preprocessing
    from tests.conftest import random_unit_vectors

    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        ids = store.add(random_unit_vectors(300, 8), ["cat", "dog", "fox"] * 100, [f"/d/{i}.jpg" for i in range(300)])
        store.delete_ids(ids[:100])
    killed = subprocess.run([sys.executable, "-c", _ERASE_KILLED_BEFORE_ITS_FLUSH, str(tmp_path / "memory")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    points = check_consistent(tmp_path / "memory")  # counts 200, not 400
    assert {p.id for p in points} == set(ids[100:])
    assert len(list((tmp_path / "memory" / "shard" / "segments").iterdir())) == 1  # the replaced one is gone


def test_a_marker_of_rewritten_segments_that_names_no_segment_of_the_memory_is_set_aside(tmp_path):
    # The marker an optimize leaves (REWRITING_FILE) is read at open: one that held JSON other than a list of
    # names (a file edited, planted, or another vmem's) ended every open in a TypeError, for good; a name with a
    # path in it sent the repair outside segments/. Only the memory's own segments are tried.
    from retrieval import FeaturizerSpec, Preprocessing
    from retrieval.store import REWRITING_FILE
    from tests.conftest import random_unit_vectors

    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        ids = store.add(random_unit_vectors(300, 8), ["cat", "dog", "fox"] * 100, [f"/d/{i}.jpg" for i in range(300)])
        store.delete_ids(ids[:100])
    killed = subprocess.run([sys.executable, "-c", _ERASE_KILLED_BEFORE_ITS_FLUSH, str(tmp_path / "memory")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    marker = tmp_path / "memory" / REWRITING_FILE
    (tmp_path / "memory" / "keep").mkdir()  # a folder the memory's own files sit beside
    # The memory counts its points twice, and the marker names a folder outside its segments first
    outside = ["../../keep", str(tmp_path / "memory" / "keep"), [1]]
    marker.write_text(json.dumps([*outside, *json.loads(marker.read_text())]))
    points = check_consistent(tmp_path / "memory")
    assert {p.id for p in points} == set(ids[100:])
    assert (tmp_path / "memory" / "keep").is_dir()
    for planted in ("5", "null", '{"a": 1}', "[[1]]"):
        marker.write_text(planted)
        assert len(check_consistent(tmp_path / "memory")) == 200, planted
        assert not marker.exists()


@pytest.mark.slow  # an index built of 5,000 points (10 MB of vectors, the engine's least): ~10 s of CPU
def test_an_import_killed_while_it_builds_the_index_builds_it_when_run_again(tmp_path):
    # Killed in its index build (minutes, at scale: when a kill is likeliest), the import had added every point:
    # run again, it added none, and so built no index; the memory stayed searched in full, exactly, for good.
    import json

    from typer.testing import CliRunner

    from retrieval import FeaturizerSpec, Preprocessing
    from tests.conftest import random_unit_vectors
    from vmem import VisualMemory
    from vmem.cli import app

    spec = FeaturizerSpec(name="t", dim=1280, preprocessing=Preprocessing(resize=8, crop=8))
    with VisualMemory(open_store(tmp_path / "source", spec), reranker=None) as mem:  # enough vectors to index
        mem.store.add(random_unit_vectors(5000, 1280), ["cat", "dog"] * 2500, [f"/d/{i}.jpg" for i in range(5000)])
        mem.export_points(tmp_path / "points.npz")
    killed_at_index = ("import os, signal; from retrieval.store import EdgeMemoryStore; "
                       "EdgeMemoryStore.optimize = lambda self: os.kill(os.getpid(), signal.SIGKILL); "
                       "from vmem.cli import app; app()")
    killed = subprocess.run([sys.executable, "-c", killed_at_index, "import", str(tmp_path / "points.npz"),
                             "--memory", str(tmp_path / "memory")], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    again = CliRunner().invoke(app, ["import", str(tmp_path / "points.npz"), "--memory", str(tmp_path / "memory")])
    assert again.exit_code == 0, again.output
    assert "imported 0 points" in again.output and "5,000 already in memory" in again.output
    info = CliRunner().invoke(app, ["info", "--memory", str(tmp_path / "memory"), "--json"])
    assert json.loads(info.output)["index_upkeep"]["indexed"] == 5000
    assert len(check_consistent(tmp_path / "memory")) == 5000


_RELABEL_KILLED_AT_ITS_SECOND_WRITE = """
import os, signal, sys
from retrieval import open_store
from vmem import VisualMemory

class KilledAtSecondWrite:  # the engine's shard, but the process dies at its second write
    def __init__(self, shard):
        self.shard, self.writes = shard, 0
    def __getattr__(self, name):
        return getattr(self.shard, name)
    def update(self, operation):
        self.writes += 1
        if self.writes == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.shard.update(operation)

store = open_store(sys.argv[1])
store.shard = KilledAtSecondWrite(store.shard)
VisualMemory(store, reranker=None).relabel("feline", label="cat")
"""


def test_a_relabel_killed_between_its_writes_ends_as_one_not_killed_when_run_again(tmp_path):
    # A relabel writes per label and per 4,096 points: killed after the first, the rest still has the old label,
    # and the same command run again finishes it.
    from retrieval import FeaturizerSpec, Preprocessing
    from tests.conftest import random_unit_vectors
    from vmem import VisualMemory

    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    for name in ("killed", "whole"):
        with open_store(tmp_path / name, spec) as store:
            store.add(random_unit_vectors(5000, 8), ["cat"] * 4500 + ["dog"] * 500,
                      [f"/d/{i}.jpg" for i in range(5000)])
    killed = subprocess.run([sys.executable, "-c", _RELABEL_KILLED_AT_ITS_SECOND_WRITE, str(tmp_path / "killed")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with open_store(tmp_path / "killed") as store:
        assert store.label_counts() == {"feline": 4096, "cat": 404, "dog": 500}

    for name in ("killed", "whole"):
        with VisualMemory(open_store(tmp_path / name), reranker=None) as mem:
            mem.relabel("feline", label="cat")

    def as_stored(memory: Path) -> dict:  # but the times of the adds and relabels
        return {p.id: {k: v for k, v in p.payload.items() if not k.endswith("_at")} for p in check_consistent(memory)}

    assert as_stored(tmp_path / "killed") == as_stored(tmp_path / "whole")  # labels, relabelled_from, marks
