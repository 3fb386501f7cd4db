"""Backing up an embedded memory while it stays open (`VisualMemory.backup`): the folder's files copied under the
edit lock, a memory that opens and answers as the original did; edits wait, searches go on, and a backup cut short
leaves nothing under its name."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import MemoryFullError, open_store
from retrieval import files as retrieval_files
from retrieval import store as retrieval_store
from tests._handshakes import Waits
from tests._server_fixtures import API_KEY, fill_memory, services, texture
from tests.conftest import random_unit_vectors
from tests.test_copy import make_memory, points_of
from vmem import VisualMemory
from vmem.cli import app

QUERIES = random_unit_vectors(5, 16, seed=9)
AUTH = {"X-API-Key": API_KEY}


def answers(mem: VisualMemory) -> list[list[str]]:
    return [[n.id for n in hits] for hits in mem.search(QUERIES, 10, exact=True)]


def test_a_backup_opens_and_answers_as_the_memory_did(tmp_path):
    with make_memory(tmp_path / "memory") as mem:
        # Edits made just before it: an erase, an add not yet indexed, a forget, and a pruned point (make_memory)
        mem.forget(label="fox")
        mem.erase_forgotten()
        mem.store.add(random_unit_vectors(5, 16, seed=5), ["emu"] * 5, [f"/data/emu/{i}.jpg" for i in range(5)])
        mem.forget(ids=[mem.points(label="cat").points[3].id])
        before, searched = points_of(mem.store), answers(mem)
        result = mem.backup(tmp_path / "backup")
        assert (result.path, result.points) == (str(tmp_path / "backup"), 44)
        assert 0 < result.bytes < 10 << 20  # the engine's 32 MB log files copied as the few KB written
        assert mem.store.count() == 44  # the memory goes on, open
        with VisualMemory(open_store(tmp_path / "backup"), reranker=None) as backup:
            after = points_of(backup.store)
            assert set(after) == set(before)
            for pid, (payload, vector) in before.items():
                assert after[pid][0] == payload
                np.testing.assert_array_equal(after[pid][1], vector)
            assert answers(backup) == searched
            assert backup.store.count(searchable=True) == 43  # the pruned point still out of search
            assert backup.label_names == {"cat": "house cat", "fox": "red fox"}
            assert [e.op for e in backup.history()] == ["forget", "erase", "forget", "name"]
            assert backup.key == mem.key  # the same memory: restored in its place, it finds what is kept for it
    assert sorted(os.listdir(tmp_path)) == ["backup", "memory"]


def test_edits_wait_for_the_backup_and_searches_go_on(tmp_path, monkeypatch):
    copying, go_on = threading.Event(), threading.Event()
    copy = retrieval_store.copy_folder_sparse

    def held_copy(*args, **kwargs):
        copying.set()
        assert go_on.wait(30)
        return copy(*args, **kwargs)

    monkeypatch.setattr(retrieval_store, "copy_folder_sparse", held_copy)
    with make_memory(tmp_path / "memory") as mem:
        waits = Waits()
        monkeypatch.setattr(mem, "_edit_lock", waits.watch(mem._edit_lock))
        monkeypatch.setattr(mem.store, "_write_lock", waits.watch(mem.store._write_lock))
        searched = answers(mem)
        backup = threading.Thread(target=mem.backup, args=(tmp_path / "backup",))
        backup.start()
        assert copying.wait(30)
        forget = waits.start(mem.forget, label="fox")
        add = waits.start(mem.store.add, random_unit_vectors(3, 16, seed=4), ["emu"] * 3,
                          ["/e/1.jpg", "/e/2.jpg", "/e/3.jpg"])
        assert answers(mem) == searched  # classify goes on during the copy
        # Waiting for the copy: a forget (an edit of this process) for the edit lock, a store's write for its own
        assert waits.blocked(forget) is mem._edit_lock
        assert waits.blocked(add) is mem.store._write_lock
        go_on.set()
        backup.join(30)
        forget.join(30)
        add.join(30)
        assert mem.store.count() == 43
    with open_store(tmp_path / "backup") as copied:
        assert copied.count() == 60 and copied.count(label="fox") == 20 and copied.count(label="emu") == 0


def test_a_fifo_in_the_memorys_folder_neither_holds_the_backup_nor_goes_into_it(tmp_path):
    # Opened to be read, a FIFO waits for a writer: the backup had waited for good, holding the edit lock (every
    # edit and, their threads taken, every classify of the service waited too), and the service would not stop
    with make_memory(tmp_path / "memory") as mem:
        (tmp_path / "memory" / "thumbnails").mkdir(exist_ok=True)
        fifo = tmp_path / "memory" / "thumbnails" / "planted.jpg"
        os.mkfifo(fifo)
        backup = threading.Thread(target=mem.backup, args=(tmp_path / "backup",), daemon=True)
        backup.start()
        backup.join(60)  # a small memory's backup: 1.5 s on a loaded machine; one stuck on the FIFO never ends
        if stuck := backup.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer, for the test to end
            backup.join(10)
        assert not stuck
        mem.forget(label="fox")  # the edit lock is free
        assert sorted(os.listdir(tmp_path / "backup" / "thumbnails")) == []
    with open_store(tmp_path / "backup") as copied:
        assert copied.count() == 60


def test_a_backup_holds_the_files_a_link_in_the_memorys_folder_points_to(tmp_path):
    # The engine's files moved to another disk, linked from the memory's folder: the backup had held the link,
    # the live files themselves, changed by every edit after it ("backed up 60 points (0.0 MB)")
    make_memory(tmp_path / "memory").close()
    (tmp_path / "memory" / "shard").rename(tmp_path / "other-disk")
    (tmp_path / "memory" / "shard").symlink_to(tmp_path / "other-disk")
    with VisualMemory(open_store(tmp_path / "memory"), reranker=None) as mem:
        assert mem.backup(tmp_path / "backup").bytes > 0
        mem.forget(label="fox")
    assert not (tmp_path / "backup" / "shard").is_symlink()
    with open_store(tmp_path / "backup") as copied:
        assert copied.count() == 60 and copied.count(label="fox") == 20


def test_a_backup_that_finds_the_disk_full_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    real = retrieval_files.copy_file_sparse
    copied = []

    def fills_the_disk(source, target):
        if len(copied) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(source)
        return real(source, target)

    monkeypatch.setattr(retrieval_files, "copy_file_sparse", fills_the_disk)
    with make_memory(tmp_path / "memory") as mem:
        with pytest.raises(MemoryFullError, match=r"found the disk full .*nothing was left under its name"):
            mem.backup(tmp_path / "backup")
        assert sorted(os.listdir(tmp_path)) == ["memory"]  # neither the backup nor its partial folder
        mem.forget(label="fox")  # the memory goes on taking edits
        assert mem.store.count() == 40


MAKE_PARTIAL = "import sys, time; from pathlib import Path; from retrieval.files import make_partial_folder; " \
               "print(make_partial_folder(Path(sys.argv[1])), flush=True); time.sleep(float(sys.argv[2]))"


def partial_made_by_another_process(dest, lives_s: float = 0) -> tuple[str, subprocess.Popen]:
    """The folder a backup to `dest` writes in, made by a process that then lives `lives_s` (0: dies at once)."""
    writer = subprocess.Popen([sys.executable, "-c", MAKE_PARTIAL, str(dest), str(lives_s)], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout is not None
    return writer.stdout.readline().strip(), writer


def test_a_backup_removes_the_folders_of_backups_killed_midway_and_no_other(tmp_path):
    dead, writer = partial_made_by_another_process(tmp_path / "killed")
    writer.wait(30)
    live, writer_alive = partial_made_by_another_process(tmp_path / "running", lives_s=60)
    reused = retrieval_files.make_partial_folder(tmp_path / "reused")  # this process id, another start: reused
    pid, start, host = re.fullmatch(r".*\.(\d+)\.(\d+)@(.+)\.partial", reused.name).groups()
    reused = reused.rename(reused.with_name(reused.name.replace(f".{start}@", f".{int(start) + 1}@")))
    elsewhere = tmp_path / f".other.abcdefgh.{pid}.{int(start) + 1}@not-{host}.partial"  # its writer unseen here
    older = tmp_path / ".nightly.ab12cd_4.partial"  # an older vmem's: whose, nothing tells
    for folder in (elsewhere, older):
        folder.mkdir()
    try:
        with make_memory(tmp_path / "memory") as mem:
            done = mem.backup(tmp_path / "backup")
        assert sorted(done.removed_partials) == sorted([dead, str(reused)])
        assert done.unnamed_partials == [str(older)]
        assert sorted(os.listdir(tmp_path)) == sorted(["backup", "memory", os.path.basename(live), elsewhere.name,
                                                       older.name])
    finally:
        writer_alive.kill()
        writer_alive.wait(30)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="a zombie is told from Linux's /proc")
def test_a_backup_removes_the_folder_of_a_backup_killed_whose_parent_has_not_waited_for_it(tmp_path):
    # Killed, a process is a zombie until its parent waits for it (a script's Popen, a container's init that reaps
    # no orphans): signal 0 still finds it, and its folder had been kept as a live backup's.
    dead, writer = partial_made_by_another_process(tmp_path / "killed", lives_s=60)
    writer.kill()
    while Path(f"/proc/{writer.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":  # not waited for
        time.sleep(0.01)
    try:
        with make_memory(tmp_path / "memory") as mem:
            assert mem.backup(tmp_path / "backup").removed_partials == [dead]
        assert sorted(os.listdir(tmp_path)) == ["backup", "memory"]
    finally:
        writer.wait(30)


def test_a_backup_is_refused_before_writing_where_it_would_not_fit(tmp_path, monkeypatch):
    with make_memory(tmp_path / "memory") as mem:
        monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=0, free=1 << 20))
        with pytest.raises(MemoryFullError, match=r"1 MB free.*nothing was written"):
            mem.backup(tmp_path / "backup")
    assert sorted(os.listdir(tmp_path)) == ["memory"]


@pytest.mark.parametrize(("where", "error"), [
    ("memory/inside", "inside the memory's folder"),
    ("taken", "exists: a backup goes to a new folder"),
    ("a file/backup", "is not a folder to write the backup backup in"),
])
def test_a_backup_goes_to_a_new_folder_outside_the_memory(tmp_path, where, error):
    (tmp_path / "taken").mkdir()
    (tmp_path / "a file").write_text("")
    with make_memory(tmp_path / "memory") as mem, pytest.raises((ValueError, OSError), match=error):
        mem.backup(tmp_path / where)
    assert sorted(os.listdir(tmp_path)) == ["a file", "memory", "taken"]


def test_a_backup_from_python_makes_the_folders_above_it_as_vmem_backup_does(tmp_path, monkeypatch):
    # `vmem backup --to backups/daily/first` and the service's VMEM_BACKUP_DIR make the folders above the backup;
    # mem.backup(...) refused the same destination: "no folder backups/daily"
    with make_memory(tmp_path / "memory") as mem:
        done = mem.backup(tmp_path / "backups" / "daily" / "first")
        assert done.path == str(tmp_path / "backups" / "daily" / "first") and done.points == 60
        # Refused for want of room: the folders it made are gone again, one there before it stays
        monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 40, used=0, free=1 << 20))
        with pytest.raises(MemoryFullError):
            mem.backup(tmp_path / "backups" / "weekly" / "w1" / "first")
    assert sorted(os.listdir(tmp_path / "backups")) == ["daily"]
    with VisualMemory.open(tmp_path / "backups" / "daily" / "first") as backup:
        assert backup.store.count() == 60


def test_a_memory_on_a_qdrant_server_is_backed_up_by_the_server(tmp_path):
    with make_memory(f"qdrant-local:{tmp_path / 'server'}") as mem, \
            pytest.raises(ValueError, match=r"backed up by the server.*snapshot"):
        mem.backup(tmp_path / "backup")


def test_vmem_backup_copies_a_memory_no_process_holds(tmp_path):
    make_memory(tmp_path / "memory").close()
    done = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(tmp_path / "backup")])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("backed up 60 points (") and str(tmp_path / "backup") in done.output
    again = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(tmp_path / "backup")])
    # The refusal is drawn in a box whose lines wrap where tmp_path is long: read it as one line
    said = " ".join(line.strip("│╭╮╰╯─ ") for line in again.output.splitlines())
    assert again.exit_code == 2 and "exists: a backup goes to a new folder" in " ".join(said.split()), again.output
    dead, writer = partial_made_by_another_process(tmp_path / "killed")
    writer.wait(30)
    (tmp_path / ".nightly.ab12cd_4.partial").mkdir()  # an older vmem's
    third = CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"), "--to", str(tmp_path / "third")])
    assert third.exit_code == 0, third.output
    assert f"removed {dead}: the folder of a backup killed midway" in third.stderr
    assert f"note: {tmp_path / '.nightly.ab12cd_4.partial'} may be the folder of a backup killed midway" \
           in third.stderr and "remove it by hand (rm -r)" in third.stderr
    assert third.stdout.startswith("backed up 60 points (")
    with open_store(tmp_path / "backup") as backup:
        assert backup.count() == 60


def test_vmem_backup_link_latest_points_a_link_beside_the_backups_at_the_newest(tmp_path):
    # A nightly script's backups, each named for its day: replicas and scripts start on backups/latest
    make_memory(tmp_path / "memory").close()
    (tmp_path / "backups").mkdir()

    def backup(name: str):
        return CliRunner().invoke(app, ["backup", "--memory", str(tmp_path / "memory"),
                                        "--to", str(tmp_path / "backups" / name), "--link-latest"])

    assert backup("2026-12-05").exit_code == 0
    done = backup("2026-12-06")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-1] == f"{tmp_path / 'backups' / 'latest'} -> 2026-12-06"
    assert os.readlink(tmp_path / "backups" / "latest") == "2026-12-06"  # relative: the folder may be moved
    with open_store(tmp_path / "backups" / "latest") as backup_store:
        assert backup_store.count() == 60

    named_latest = backup("latest")
    assert named_latest.exit_code == 2 and "give the backup another name" in named_latest.output
    (tmp_path / "backups" / "latest").unlink()
    (tmp_path / "backups" / "latest").mkdir()  # the operator's own folder: refused before any copy is made
    refused = backup("2026-12-07")
    assert refused.exit_code == 2 and "is not a link" in refused.output
    assert not (tmp_path / "backups" / "2026-12-07").exists()


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
def serve(lite0, memory_images):
    """serve(location, **settings) -> a TestClient over a fresh memory of 12 points there."""
    with services(lite0, memory_images) as open_service:
        yield lambda location, **settings: open_service(location, **settings)


def test_a_backup_over_http_is_written_under_the_servers_backup_folder(tmp_path, serve, memory_images):
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    refused = client.post("/v1/memory/backup")  # the API key, as every edit; said for what it is
    assert refused.status_code == 401 and refused.json()["detail"].startswith(
        "this endpoint writes a copy of the memory on the server: send the API key"), refused.text
    done = client.post("/v1/memory/backup?name=nightly", headers=AUTH)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["name"], body["path"], body["points"]) == ("nightly", str(tmp_path / "backups" / "nightly"), 12)
    assert body["bytes"] > 0 and body["seconds"] >= 0
    again = client.post("/v1/memory/backup?name=nightly", headers=AUTH)
    assert again.status_code == 409 and again.json()["type"] == "urn:vmem:problem:backup-exists"
    stamped = client.post("/v1/memory/backup", headers=AUTH).json()["name"]  # by default, the time (UTC)
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamped)
    # A second unnamed backup within that second is not refused for a name the client never gave
    (tmp_path / "backups" / f"{stamped}-2").mkdir()  # and one after it taken too
    with patch("server.routes.memory.datetime") as clock:
        clock.now.return_value = datetime.strptime(stamped, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        second = client.post("/v1/memory/backup", headers=AUTH)
    assert second.status_code == 200 and second.json()["name"] == f"{stamped}-3", second.text
    image = {"image": ("q.png", memory_images.paths[0].read_bytes(), "image/png")}
    assert client.post("/v1/classify", files=image).status_code == 200  # the service goes on
    with open_store(tmp_path / "backups" / "nightly") as backup:
        assert backup.count() == 12


def test_latest_in_the_backup_folder_names_the_newest_backup_and_a_replica_serves_it(tmp_path, serve):
    # One service edits the memory and backs it up; read-only replicas serve its latest backup, restarted onto the
    # next one. Named or by the time, `latest` is the one backup an operator's replicas are pointed at.
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    latest = tmp_path / "backups" / "latest"
    assert client.post("/v1/memory/backup?name=monday", headers=AUTH).status_code == 200
    assert os.readlink(latest) == "monday"  # relative: the backup folder may be moved or mounted elsewhere whole
    assert client.delete("/v1/memory", params={"label": "red"}, headers=AUTH).json()["deleted"] == 4
    stamped = client.post("/v1/memory/backup", headers=AUTH).json()["name"]
    assert os.readlink(latest) == stamped
    replica = retrieval_store.open_read_only(latest)
    try:  # the backup the link named as the replica started, named by its own folder
        assert replica.count() == 8 and replica.source == tmp_path / "backups" / stamped
    finally:
        replica.close()
    refused = client.post("/v1/memory/backup?name=latest", headers=AUTH)  # the link's name is not a backup's
    assert refused.status_code == 422 and "latest" in refused.json()["detail"], refused.text
    assert os.readlink(latest) == stamped


def test_a_replica_started_on_latest_as_it_moves_copies_the_one_backup_it_named(tmp_path, serve, monkeypatch):
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    client.post("/v1/memory/backup?name=before", headers=AUTH)
    client.delete("/v1/memory", params={"label": "red"}, headers=AUTH)
    allocated = retrieval_store._allocated_bytes

    def a_backup_made_meanwhile(folder, **kwargs):  # as the copy starts: the link moves to a backup of 8 points
        monkeypatch.setattr(retrieval_store, "_allocated_bytes", allocated)
        client.post("/v1/memory/backup?name=after", headers=AUTH)
        return allocated(folder, **kwargs)

    monkeypatch.setattr(retrieval_store, "_allocated_bytes", a_backup_made_meanwhile)
    replica = retrieval_store.open_read_only(tmp_path / "backups" / "latest")
    try:
        assert os.readlink(tmp_path / "backups" / "latest") == "after"
        assert replica.count() == 12 and replica.source.name == "before"
    finally:
        replica.close()


def test_a_backup_over_http_removes_and_logs_the_folder_of_one_killed_midway(tmp_path, serve, caplog):
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    (tmp_path / "backups").mkdir()
    dead, writer = partial_made_by_another_process(tmp_path / "backups" / "killed")
    writer.wait(30)
    assert client.post("/v1/memory/backup?name=nightly", headers=AUTH).status_code == 200
    assert sorted(os.listdir(tmp_path / "backups")) == ["latest", "nightly"]
    assert f"removed {dead}: the folder of a backup killed midway" in caplog.text


def test_a_backup_taken_as_an_add_ends_holds_its_journal_line_with_its_points(tmp_path, lite0, memory_images):
    # The add's journal line was written just after the edit lock was released: a backup at that instant held the
    # points and not the line that says they were added. The backup runs there, as the line is written.
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    journal, backup = mem._journal, None

    def backed_up_first(op, *args, **kwargs):
        nonlocal backup
        if op == "add":
            backup = threading.Thread(target=mem.backup, args=(tmp_path / "backup",))
            backup.start()
            backup.join(1)  # done at once unless the add holds the edit lock still
        journal(op, *args, **kwargs)

    with mem, patch.object(mem, "_journal", backed_up_first):
        mem.add([texture((90, 40, 200), seed=1), texture((90, 40, 200), seed=2)], "purple",
                sources=["purple/1.png", "purple/2.png"])
        assert backup is not None
        backup.join(30)
    with VisualMemory(open_store(tmp_path / "backup"), reranker=None) as copied:
        assert copied.store.count(label="purple") == 2
        assert [(e.op, e.points) for e in copied.history(op="add")] == [("add", 2)]


@pytest.mark.parametrize("name", ["..", "../memory", "a/b", ".hidden", "", "x" * 129])
def test_a_backups_name_is_a_plain_folder_name(tmp_path, serve, name):
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    refused = client.post("/v1/memory/backup", params={"name": name}, headers=AUTH)
    assert refused.status_code == 422, refused.text
    assert not (tmp_path / "backups").exists() or not os.listdir(tmp_path / "backups")


def test_a_backup_over_http_is_refused_until_a_backup_folder_is_set(tmp_path, serve):
    client = serve(str(tmp_path / "memory"))
    refused = client.post("/v1/memory/backup", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:vmem:problem:backups-off" and "VMEM_BACKUP_DIR" in refused.json()["detail"]


@pytest.mark.parametrize("backup_dir", ["backups", "backups/nightly"], ids=["a file", "under a file"])
def test_a_backup_folder_that_is_a_file_is_said_so_to_whoever_asks_for_a_backup(tmp_path, serve, backup_dir):
    # The service's start refuses a file (Settings); one put in its place after had been answered "a backup named
    # ... exists already" (409), and a file above it a bare 500
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / backup_dir)
    (tmp_path / "backups").write_text("a file, not a folder")
    refused = client.post("/v1/memory/backup?name=monday", headers=AUTH)
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"] == "urn:vmem:problem:backup-dir-unwritable"
    assert refused.json()["detail"] == (
        f"VMEM_BACKUP_DIR {tmp_path / backup_dir} cannot be made: {tmp_path / 'backups'} is a file, not a folder; "
        "nothing was written. Move the file away, or give the service another backup folder")
    assert (tmp_path / "backups").read_text() == "a file, not a folder"


def test_a_backup_with_no_room_is_a_507_before_anything_is_written(tmp_path, serve, monkeypatch):
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=0, free=1 << 20))
    refused = client.post("/v1/memory/backup?name=full", headers=AUTH)
    assert refused.status_code == 507 and refused.json()["type"] == "urn:vmem:problem:backup-disk-full"
    assert "nothing was written" in refused.json()["detail"]
    assert os.listdir(tmp_path / "backups") == []


@pytest.mark.parametrize("backup_dir", ["set", "unset"])
def test_a_memory_on_a_qdrant_server_refuses_a_backup_over_http(tmp_path, serve, backup_dir):
    client = serve(":memory:", **({"backup_dir": tmp_path / "backups"} if backup_dir == "set" else {}))
    refused = client.post("/v1/memory/backup", headers=AUTH)
    # Said first, whether a backup folder is set or not: a 409 "set VMEM_BACKUP_DIR and restart" sent the operator
    # to set one and restart, for the 422 after it
    assert refused.status_code == 422 and "snapshots" in refused.json()["detail"]


def _edits_in(metrics: str) -> float:
    """The edits the service holds, waiting for a thread of the edit pool or on one (for the edit lock)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(('vmem_work_queued{pool="edit"}', 'vmem_work_running{pool="edit"}')))


def test_classify_is_answered_while_edits_wait_for_a_backup_over_http(tmp_path, serve, memory_images, monkeypatch):
    # Edits sent during a backup wait for its copy (a large memory's: minutes). They wait on threads of their own:
    # on the two embedding threads, two of them had left every classify waiting for the backup too.
    copying, go_on = threading.Event(), threading.Event()
    copy = retrieval_store.copy_folder_sparse

    def slow_copy(*args, **kwargs):
        copying.set()
        assert go_on.wait(60)
        return copy(*args, **kwargs)

    monkeypatch.setattr(retrieval_store, "copy_folder_sparse", slow_copy)
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    image = {"image": ("q.png", memory_images.paths[0].read_bytes(), "image/png")}
    with ThreadPoolExecutor(4) as pool:
        backup = pool.submit(client.post, "/v1/memory/backup?name=nightly", headers=AUTH)
        assert copying.wait(30)
        edits = [pool.submit(client.post, "/v1/memory/relabel", headers=AUTH, json={"to": "crimson", "label": "red"}),
                 pool.submit(client.delete, "/v1/memory", params={"label": "blue"}, headers=AUTH)]
        # Both edits in, waiting for the copy, before the question: a sleep here let a loaded machine ask first, and
        # the test pass whatever the edits did
        deadline = time.monotonic() + 60
        while _edits_in(client.get("/metrics").text) < 2:
            assert time.monotonic() < deadline and not any(e.done() for e in edits), "the edits never came in"
            time.sleep(0.02)
        classified = pool.submit(client.post, "/v1/classify", files=image)
        try:
            answer = classified.result(timeout=30)
            assert not any(f.done() for f in (backup, *edits))  # answered while the backup and the edits wait
        finally:
            go_on.set()
        assert answer.status_code == 200 and answer.json()["label"] == "red"  # the edits came after the question
        assert backup.result(30).json()["points"] == 12
        assert [e.result(30).status_code for e in edits] == [200, 200]
    assert client.get("/v1/memory/stats").json()["per_label"] == {"crimson": 4, "green": 4}


def test_stats_and_metrics_are_answered_during_a_backup_with_the_index_as_counted_last(tmp_path, serve,
                                                                                        monkeypatch):
    # The index's upkeep is counted under the memory's write lock, which a backup holds while it copies (a large
    # memory's: minutes): a stats request had held an embedding thread, and a scrape a thread, for all of it
    copying, go_on = threading.Event(), threading.Event()
    copy = retrieval_store.copy_folder_sparse

    def slow_copy(*args, **kwargs):
        copying.set()
        assert go_on.wait(60)
        return copy(*args, **kwargs)

    monkeypatch.setattr(retrieval_store, "copy_folder_sparse", slow_copy)
    client = serve(str(tmp_path / "memory"), backup_dir=tmp_path / "backups")
    before = client.get("/v1/memory/stats").json()["index_upkeep"]
    assert before["points"] == 12
    with ThreadPoolExecutor(3) as pool:
        backup = pool.submit(client.post, "/v1/memory/backup?name=nightly", headers=AUTH)
        assert copying.wait(30)
        try:
            stats = pool.submit(client.get, "/v1/memory/stats").result(timeout=30)
            scrape = pool.submit(client.get, "/metrics").result(timeout=30)
            assert not backup.done()  # answered while the backup copies
        finally:
            go_on.set()
        assert stats.status_code == 200 and stats.json()["index_upkeep"] == before
        assert scrape.status_code == 200 and "vmem_memory_points 12.0" in scrape.text
        assert backup.result(30).status_code == 200
