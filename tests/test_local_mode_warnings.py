"""A memory in qdrant-client's local mode (`:memory:`, `qdrant-local:PATH`) asks it for nothing it ignores: it had
warned, once a process, "Payload indexes have no effect in the local Qdrant ..." at the memory's creation and
"Local mode performs exact (brute-force) search, so `search_params` has no effect" at its first search, each
with a line of qdrant-client's source, to a user with nothing to act on. vmem knows it is in local mode, and
local mode searches every point exactly whatever it is asked.
"""

from __future__ import annotations

import warnings

import pytest
from qdrant_client.common import client_warnings

from retrieval import open_store
from tests.conftest import random_unit_vectors
from tests.test_copy import SPEC
from vmem import VisualMemory


@pytest.mark.parametrize("where", [":memory:", "qdrant-local"])
def test_a_local_mode_memory_is_made_searched_and_read_with_no_warning(tmp_path, monkeypatch, where):
    location = where if where == ":memory:" else f"qdrant-local:{tmp_path / 'memory'}"
    monkeypatch.setattr(client_warnings, "SEEN_MESSAGES", set())  # as in a process that has warned of nothing yet
    vectors = random_unit_vectors(12, 16, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with VisualMemory(open_store(location, SPEC), reranker=None) as mem:
            mem.store.add(vectors, ["cat", "dog", "fox"] * 4, [f"/data/{i}.jpg" for i in range(12)])
            assert [n.label for n in mem.search(vectors[:3], 3)[0]][0] == "cat"
            assert [n.label for n in mem.search(vectors[:3], 3, exact=True)[1]][0] == "dog"
            assert [n.source for n in mem.store.similar(vectors[2], 0.99, 5)] == ["/data/2.jpg"]
            assert mem.forget(label="fox") == 4
            assert [e.op for e in mem.history()] == ["forget"]
