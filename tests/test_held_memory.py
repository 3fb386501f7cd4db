"""An embedded memory another process holds (a running `vmem serve`): the CLI's read-only commands on it.

Opening it is refused (one process at a time), so `vmem history` reads its journal from its files, and the
commands that need the engine say where the memory is served and which route answers them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from retrieval import FeaturizerSpec, Preprocessing, open_store
from tests.conftest import random_unit_vectors
from vmem import VisualMemory
from vmem.cli import app

DIM = 16
SPEC = FeaturizerSpec(name="test-encoder", dim=DIM, preprocessing=Preprocessing(resize=256, crop=224))
HOLD = ("import sys; from retrieval import open_store; store = open_store(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.readline(); store.close()")


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


@pytest.fixture
def held(memory):
    """The memory, held open by another process until the test ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(memory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield memory
    holder.stdin.close()
    holder.wait(timeout=30)


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
