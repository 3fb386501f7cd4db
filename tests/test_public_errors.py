"""The errors the README names for Python users are importable from `vmem`, as its other errors are."""

from __future__ import annotations

import pytest

import retrieval
from retrieval import FeaturizerSpec, Preprocessing, open_store
from vmem import VisualMemory

SPEC = FeaturizerSpec(name="test-encoder", dim=8, preprocessing=Preprocessing(resize=256, crop=224))


def test_a_script_catches_a_memory_in_use_by_the_name_the_readme_gives(tmp_path):
    # README, "One process at a time": refused "(exit 75 on the command line, `MemoryInUseError` in Python)"; vmem
    # exported only its parent, MemoryStoreError, so `from vmem import MemoryInUseError` was an ImportError, and a
    # script that waits for a nightly build (retry on "in use", stop on "no memory") had to find it in retrieval.
    from vmem import MemoryInUseError

    location = tmp_path / "memory"
    with VisualMemory(open_store(location, SPEC), reranker=None), \
            pytest.raises(MemoryInUseError, match="already open in this process"):
        VisualMemory.open(location)


def test_the_disk_full_and_server_down_errors_are_vmems_too():
    # README: an edit on a full disk is refused (`MemoryFullError`); a Qdrant server not answering is worth a retry
    import vmem

    assert vmem.MemoryFullError is retrieval.MemoryFullError
    assert vmem.MemoryUnavailableError is retrieval.MemoryUnavailableError
    assert {"MemoryInUseError", "MemoryFullError", "MemoryUnavailableError"} <= set(vmem.__all__)
