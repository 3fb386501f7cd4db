"""A memory whose engine files are damaged (a file overwritten, a disk's bad block, a restore copied half over) is
said to be so, naming the file, with what to do: it had been a 25-line traceback from every command and the
service, ending in the engine's "Service runtime error: failed to load segment ...".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval import open_store
from tests.test_copy import make_memory
from vmem import MemoryDamagedError, VisualMemory
from vmem.cli import app


def damaged_memory(folder: Path, file_name: str) -> Path:
    make_memory(folder).close()
    (damaged,) = (folder / "shard" / "segments").glob(f"*/{file_name}")
    damaged.write_bytes(b"garbage, not the engine's")
    return damaged


@pytest.mark.parametrize("file_name", ["segment.json", "mutable_id_tracker.mappings"])
def test_a_memory_with_a_damaged_engine_file_is_said_to_be_damaged_with_what_to_do(tmp_path, file_name):
    damaged = damaged_memory(tmp_path / "memory", file_name)
    with pytest.raises(MemoryDamagedError) as raised:
        open_store(tmp_path / "memory")
    said = str(raised.value)
    assert said.startswith(f"the memory at {tmp_path / 'memory'} cannot be read: its engine's files are damaged")
    assert said.endswith("restore a backup of it (README, Backups), or build it again")
    assert "Service runtime error" not in said  # the engine's innermost words, not its nesting
    if file_name == "segment.json":
        assert str(damaged) in said
    with pytest.raises(MemoryDamagedError):
        VisualMemory.open(tmp_path / "memory")

    done = CliRunner().invoke(app, ["info", "--memory", str(tmp_path / "memory")])
    assert done.exit_code == 1
    assert done.stderr.startswith(f"Error: {said}") and "Traceback" not in done.output


def test_a_memory_that_loads_is_not_called_damaged(tmp_path):
    make_memory(tmp_path / "memory").close()
    with open_store(tmp_path / "memory") as store:
        assert store.count() == 60
