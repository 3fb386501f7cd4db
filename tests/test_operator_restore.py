"""A backup restored in the wrong order: put in the memory's place while a service still held the memory, the
service stopped after. The stop's close had the engine write its last state by the folder's path, into the backup;
opened through the folder's descriptor, it writes into the folder it opened, moved away."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retrieval import MemoryDamagedError, open_store
from retrieval.store import MemoryGoneError
from tests._server_fixtures import fill_memory, make_memory_images


def test_a_backup_put_in_place_under_a_running_memory_is_left_as_it_was_by_its_close(tmp_path, lite0):
    mem = fill_memory(str(tmp_path / "memory"), lite0, make_memory_images(tmp_path / "images", lite0))
    try:
        mem.backup(tmp_path / "monday")  # 12 points
        forgotten = [p.id for p in next(mem.store.scroll(batch_size=3))]
        mem.store.delete_ids(forgotten)  # the service's last edit
        os.rename(tmp_path / "memory", tmp_path / "memory.before")  # the restore, done while it runs
        shutil.copytree(tmp_path / "monday", tmp_path / "memory", symlinks=True)
    finally:
        mem.close()  # the service's stop
    # Left as it was put there: the engine's files the backup's, byte for byte (written into, it had opened with
    # the forgets of the memory before it, or not at all: "Failed to decompress LZ4 value")
    assert files_of(tmp_path / "memory" / "shard") == files_of(tmp_path / "monday" / "shard")
    with open_store(tmp_path / "memory") as restored:
        assert restored.count() == 12
    with open_store(tmp_path / "memory.before") as moved_away:  # the service's last edit went where it was made
        assert moved_away.count() == 9


def test_an_edit_refused_under_a_memory_gone_writes_nothing_into_the_folder_put_in_its_place(tmp_path, lite0):
    mem = fill_memory(str(tmp_path / "memory"), lite0, make_memory_images(tmp_path / "images", lite0))
    try:
        mem.backup(tmp_path / "monday")
        os.rename(tmp_path / "memory", tmp_path / "memory.before")
        shutil.copytree(tmp_path / "monday", tmp_path / "memory", symlinks=True)
        with pytest.raises(MemoryGoneError, match="nothing more is written to it"):
            mem.erase_forgotten()  # its note had been journaled into the backup, as an erase made
        with pytest.raises(MemoryGoneError):
            mem.set_label_names({"red": "Red"})
    finally:
        mem.close()
    assert files_of(tmp_path / "memory") == files_of(tmp_path / "monday")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_engines_errors_name_the_memorys_folder_not_the_descriptor_it_is_opened_through(tmp_path, lite0):
    fill_memory(str(tmp_path / "memory"), lite0, make_memory_images(tmp_path / "images", lite0)).close()
    for state in (tmp_path / "memory" / "shard" / "segments").glob("*/segment.json"):
        state.write_text("damaged")
    with pytest.raises(MemoryDamagedError) as failed:
        open_store(tmp_path / "memory")
    engine_said = str(failed.value.__cause__)  # the engine's own error, which the damage is said from
    assert "failed to load segment" in engine_said
    for said in (str(failed.value), engine_said):
        assert str(tmp_path / "memory" / "shard" / "segments") in said
        assert "/proc/self/fd" not in said


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's descriptors in /proc")
def test_opening_and_closing_memories_leaves_no_descriptor_open(tmp_path, lite0):
    mem = fill_memory(str(tmp_path / "memory"), lite0, make_memory_images(tmp_path / "images", lite0))
    mem.close()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        open_store(tmp_path / "memory").close()
    assert len(os.listdir("/proc/self/fd")) == before
