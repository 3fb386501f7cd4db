"""A memory whose engine files are damaged (a file overwritten, a disk's bad block, a restore copied half over) is
said to be so, naming the file, with what to do: it had been a 25-line traceback from every command and the
service, ending in the engine's "Service runtime error: failed to load segment ...".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from retrieval import Featurizer, open_store
from server import Settings, create_app
from tests._server_fixtures import API_KEY
from tests.conftest import random_unit_vectors
from tests.test_copy import SPEC, make_memory
from vmem import MemoryDamagedError, VisualMemory
from vmem.cli import app


def damaged_memory(folder: Path, file_name: str, garbage: bytes = b"garbage, not the engine's") -> Path:
    make_memory(folder).close()
    (damaged,) = (folder / "shard" / "segments").glob(f"*/{file_name}")
    damaged.write_bytes(garbage)
    return damaged


@pytest.mark.parametrize(("file_name", "garbage"), [
    ("segment.json", b"garbage, not the engine's"),
    ("mutable_id_tracker.mappings", b"garbage, not the engine's"),
    # The engine's "IO Error: Can't parse version from ...", and of bytes that are no text "invalid utf-8
    # sequence": both had reached the user raw
    ("version.info", b"garbage, not the engine's"),
    ("version.info", b"\xff\xfe"),
])
def test_a_memory_with_a_damaged_engine_file_is_said_to_be_damaged_with_what_to_do(tmp_path, file_name, garbage):
    damaged = damaged_memory(tmp_path / "memory", file_name, garbage)
    with pytest.raises(MemoryDamagedError) as raised:
        open_store(tmp_path / "memory")
    said = str(raised.value)
    assert said.startswith(f"the memory at {tmp_path / 'memory'} cannot be read: its engine's files are damaged")
    assert said.endswith("restore a backup of it (README, Backups), or build it again")
    assert "Service runtime error" not in said  # the engine's innermost words, not its nesting
    if file_name == "segment.json" or (garbage.isascii() and file_name == "version.info"):
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


# Overwritten under an open memory, each is met only when a search or an edit reads it: the payload pages as the
# engine's error ("Failed to decompress LZ4 value"), their tracker as a Rust panic (a PanicException, which passed
# every `except Exception`).
GARBLED_LATER = {"payload page": "payload_storage/page_0.dat", "payload tracker": "payload_storage/tracker.dat"}


def garble(memory: Path, file_name: str) -> None:
    (damaged,) = (memory / "shard" / "segments").glob(f"*/{file_name}")
    noise = np.random.default_rng(7).bytes(min(damaged.stat().st_size, 1 << 20))
    with open(damaged, "r+b") as fh:  # in place: the engine has it mapped
        fh.write(noise)


def assert_said_damaged(said: str, memory: Path) -> None:
    assert said.startswith(f"the memory at {memory} cannot be read: its engine's files are damaged ("), said
    assert said.endswith("restore a backup of it (README, Backups), or build it again"), said


@pytest.mark.parametrize("file_name", GARBLED_LATER.values(), ids=GARBLED_LATER.keys())
def test_a_file_damaged_under_an_open_memory_is_said_to_be_damaged_when_a_search_or_a_forget_meets_it(
        tmp_path, file_name):
    memory = tmp_path / "memory"
    make_memory(memory).close()
    with VisualMemory(open_store(memory), reranker=None) as mem:  # loaded from its files, as a service does
        garble(memory, file_name)
        with pytest.raises(MemoryDamagedError) as searched:
            mem.search(random_unit_vectors(2, 16, seed=9), 5)
        assert_said_damaged(str(searched.value), memory)
        with pytest.raises(MemoryDamagedError) as forgot:
            mem.forget(label="dog")
        assert_said_damaged(str(forgot.value), memory)


def test_an_argument_the_engine_refuses_is_not_called_damage_for_the_words_it_echoes(tmp_path):
    # The engine's refusal of an argument quotes it: an id named "corrupted-scan-7" is a bad id, and the memory's
    # files, which nothing read, had been said damaged, to be restored from a backup
    make_memory(tmp_path / "memory").close()
    with open_store(tmp_path / "memory") as store:
        for call in (store.retrieve, store.delete_ids, store.existing_ids):
            with pytest.raises(ValueError, match="failed to parse corrupted-scan-7 as UUID") as refused:
                call(["corrupted-scan-7"])
            assert not isinstance(refused.value, MemoryDamagedError)
        assert store.count() == 60


class FirstPixels(Featurizer):
    """The memory's encoder as far as the service's start asks (it warms one up): no weights to load."""

    name, dim, preprocessing = SPEC.name, SPEC.dim, SPEC.preprocessing

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1)[:, : self.dim]


def test_a_damaged_file_met_by_a_request_or_a_command_is_said_so_not_a_bare_500_or_a_traceback(tmp_path):
    memory = tmp_path / "memory"
    make_memory(memory).close()
    with open_store(memory) as store, TestClient(create_app(Settings(memory=str(memory), api_key=API_KEY),
                                                            memory=VisualMemory(store, FirstPixels("cpu"),
                                                                                reranker=None))) as client:
        garble(memory, GARBLED_LATER["payload page"])
        answer = client.get("/v1/memory/points")
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "urn:vmem:problem:memory-damaged"
    assert_said_damaged(answer.json()["detail"], memory)

    done = CliRunner().invoke(app, ["points", "--memory", str(memory)])  # it loads: its pages are read when needed
    assert done.exit_code == 1 and "Traceback" not in done.output
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: ")
    assert_said_damaged(line.removeprefix("Error: "), memory)
