"""Files vmem rewrites (the memory's vmem.json, feature caches, eval results) are replaced whole or not at all."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from retrieval.files import write_atomically


def test_a_file_is_replaced_with_the_usual_permissions_and_no_leftovers(tmp_path):
    path = tmp_path / "vmem.json"
    path.write_text("old")
    write_atomically(path, '{"new": "café"}')
    assert path.read_text(encoding="utf-8") == '{"new": "café"}'
    assert os.listdir(tmp_path) == ["vmem.json"]
    plain = tmp_path / "plain"
    plain.write_text("x")  # what write_text would have made: the umask's mode, not a private temp file's 0600
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_writer_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "features.npy"
    write_atomically(path, lambda fh: np.save(fh, np.arange(4.0)))

    def dies_midway(fh):
        fh.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # a user's Ctrl-C while writing

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, dies_midway)
    assert np.load(path).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert os.listdir(tmp_path) == ["features.npy"]


def test_durable_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    write_atomically(tmp_path / "a.json", b"{}")
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    synced.clear()
    write_atomically(tmp_path / "thumb.jpg", b"\xff\xd8", durable=False)  # a cache: rebuilt if lost
    assert synced == []


def test_a_file_system_that_cannot_sync_a_folder_still_takes_durable_writes(tmp_path, monkeypatch):
    # Some mounts (network shares, FUSE) answer EINVAL to a folder's fsync: the file is written and renamed into
    # place by then, and was said not to be (every durable write there failed, a memory's vmem.json among them)
    real_fsync = os.fsync

    def no_folder_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    path = tmp_path / "vmem.json"
    path.write_text("old")
    write_atomically(path, b'{"new": true}')
    assert path.read_bytes() == b'{"new": true}'
    assert os.listdir(tmp_path) == ["vmem.json"]


def test_a_folder_sync_that_fails_for_the_disk_is_raised_not_taken_for_a_mount_that_cannot(tmp_path, monkeypatch):
    # EIO from a folder's fsync is a rename that may not reach the disk: a durable write must not say it was made
    real_fsync = os.fsync

    def failing_disk(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_disk)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomically(tmp_path / "vmem.json", b"{}")
