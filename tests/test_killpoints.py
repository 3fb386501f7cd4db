"""The kill harness (scripts/killpoints.py) on a small memory: a forget and a relabel killed just before the
journal's writes and the engine's update leave a memory that agrees with itself and with its journal, and that
ends as an uninterrupted run when run again. The full sweep, every write of every edit: docs/reliability.md."""

from __future__ import annotations

import numpy as np

from retrieval import FeaturizerSpec, Preprocessing, open_store
from scripts.killpoints import sweep
from tests.conftest import random_unit_vectors

# Those of the writes (as the harness lists them) where a kill had left the journal missing the edit: between the
# engine's update and the journal's append. Matching by kind, not number, keeps the test to 3 kills an edit.
AROUND_THE_EDIT = r"engine update|journal\.jsonl"


def test_a_forget_and_a_relabel_killed_around_their_edit_leave_no_problem(tmp_path):
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    said: list[str] = []
    for command in (["forget", "--label", "cat"], ["relabel", "--to", "feline", "--label", "dog"]):
        found = sweep(tmp_path / "memory", command, tmp_path / "work", most=0, matching=AROUND_THE_EDIT,
                      say=said.append)
        assert [p.write.split("\t")[0] for p in found] == ["open ab", "engine update", "open ab"], said
        assert all(p.outcome.startswith("killed") for p in found), said
        assert [p.problems for p in found] == [[], [], []], said


def test_an_erase_killed_around_its_rewrite_leaves_no_problem(tmp_path):
    # Killed after the rewrite and before its entry, an erase had left the forgotten vectors gone from the files and
    # no entry saying when: the harness said "the files no longer hold the vectors of deleted points, and no erase
    # entry says so".
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
        store.delete_ids(store.ids_where(label="cat"))  # forgotten, their vectors in the files
    said: list[str] = []
    found = sweep(tmp_path / "memory", ["erase"], tmp_path / "work", most=0,
                  matching=r"engine optimize|journal\.jsonl", say=said.append)
    assert [p.write.split("\t")[0] for p in found] == ["open ab", "engine optimize", "open ab"], said
    assert all(p.outcome.startswith("killed") for p in found), said
    assert [p.problems for p in found] == [[], [], []], said


def test_a_prune_killed_around_its_marks_leaves_no_problem(tmp_path):
    # Killed after its marks (or some of them) and before its entry, a prune had left points out of every search
    # that no entry named: "pruning's marks or report changed, and no prune or unprune entry says so".
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    said: list[str] = []
    found = sweep(tmp_path / "memory", ["prune"], tmp_path / "work", most=0,
                  matching=AROUND_THE_EDIT, say=said.append)
    assert [p.write.split("\t")[0] for p in found] == ["open ab", "engine update", "engine update", "open ab"], said
    assert all(p.outcome.startswith("killed") for p in found), said
    assert [p.problems for p in found] == [[], [], [], []], said


def test_an_import_killed_around_its_batches_leaves_no_point_unjournaled(tmp_path):
    # Killed after a batch of points and before the import's entry, an import had left points that no add entry
    # counted, and run again it counted them "already in memory": "60 points added that no add entry counts".
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
    np.savez(tmp_path / "points.npz", vectors=random_unit_vectors(60, 8, seed=1),
             labels=np.array(["cat", "owl"] * 30), sources=np.array([f"/data/{i}.jpg" for i in range(30, 90)]))
    said: list[str] = []
    found = sweep(tmp_path / "memory", ["import", str(tmp_path / "points.npz"), "--featurizer", "t"],
                  tmp_path / "work", most=0, matching=AROUND_THE_EDIT, say=said.append)
    assert [p.write.split("\t")[0] for p in found] == ["open ab", "engine update", "open ab", "engine update"], said
    assert all(p.outcome.startswith("killed") for p in found), said
    assert [p.problems for p in found] == [[]] * 4, said


def test_a_tune_reset_killed_around_its_write_leaves_no_problem(tmp_path):
    # Killed after vmem.json and before its entry, `vmem tune --reset` had left the memory voting with the defaults
    # and no entry saying since when: "the tuned vote settings changed, and no tune entry says so".
    spec = FeaturizerSpec(name="t", dim=8, preprocessing=Preprocessing(resize=8, crop=8))
    with open_store(tmp_path / "memory", spec) as store:
        store.add(random_unit_vectors(30, 8), ["cat", "dog", "fox"] * 10, [f"/data/{i}.jpg" for i in range(30)])
        with store.meta_edit() as meta:
            meta.settings["vote"] = {"rule": "distance", "k": 7}
    said: list[str] = []
    found = sweep(tmp_path / "memory", ["tune", "--reset"], tmp_path / "work", most=0,
                  matching=r"vmem\.json|journal\.jsonl", say=said.append)
    assert "journal.jsonl" in found[-1].write and len(found) >= 2, said
    assert all(p.outcome.startswith("killed") for p in found), said
    assert all(p.problems == [] for p in found), said
