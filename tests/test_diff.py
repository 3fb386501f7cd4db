"""Comparing two memories (`vmem diff A B`, `VisualMemory.diff`): a memory against its backup after edits, a
server copy, a re-embedded copy; streamed in id order, read-only, and refused clearly where it cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval import MemoryInUseError, open_store
from retrieval.store import EXCLUDED_KEY, StoredPoint
from tests.conftest import FEATURE_CACHE, random_unit_vectors
from tests.realdata import cached_features, train_subset
from tests.test_copy import SPEC as SPEC_16
from tests.test_copy import make_memory
from tests.test_held_memory import holding
from vmem import VisualMemory
from vmem.cli import app
from vmem.diff import open_to_compare


def vmem(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def said(result) -> str:
    """A command's output as one line: an error's box and its line breaks taken out."""
    return " ".join(result.output.replace("│", " ").split())
SPEC_32 = SPEC_16.model_copy(update={"name": "other-encoder", "dim": 32})  # another encoder's


def edited_after_backup(tmp_path):
    """make_memory's 60 points (cat, dog, fox: 20 each) backed up, then: 5 cats forgotten, 3 dogs relabelled
    fox, 4 emus added, fox renamed and dog named, one point's vector replaced, one kept point excluded, one
    point's tags changed, the tuned k changed. Returns the ids of each edit."""
    mem = make_memory(tmp_path / "memory")
    mem.backup(tmp_path / "backup")
    cats = [p.id for p in mem.points(label="cat", limit=100).points]
    dogs = [p.id for p in mem.points(label="dog", limit=100).points]
    foxes = [p.id for p in mem.points(label="fox", limit=100).points]
    mem.forget(ids=cats[:5])
    mem.relabel("fox", ids=dogs[:3])
    mem.store.add(random_unit_vectors(4, 16, seed=11), ["emu"] * 4, [f"/data/emu/{i}.jpg" for i in range(4)])
    mem.set_label_names({"fox": "silver fox", "dog": "hound"})
    moved = mem.store.retrieve([foxes[5]])[0]
    mem.store.put([type(moved)(moved.id, moved.payload, random_unit_vectors(1, 16, seed=12)[0])])
    mem.store.set_payload([foxes[6]], {EXCLUDED_KEY: "pruned"})
    mem.store.set_payload([foxes[7]], {"tags": {"set": "b"}})
    mem.store.meta.settings["vote"]["k"] = 9
    mem.store.save_meta()
    mem.close()
    return {"forgotten": cats[:5], "relabelled": dogs[:3], "moved": foxes[5], "excluded": foxes[6],
            "tagged": foxes[7]}


def test_a_memory_against_its_backup_says_every_edit_since(tmp_path):
    edits = edited_after_backup(tmp_path)
    with open_to_compare(tmp_path / "backup") as before, open_to_compare(tmp_path / "memory") as now:
        d = before.diff(now)
    assert d.same_memory and (d.points_a, d.points_b) == (60, 59)
    assert d.counts == {"only_in_a": 5, "only_in_b": 4, "relabelled": 3, "reembedded": 1, "pruning": 1, "tags": 1}
    assert d.unchanged == 60 - 5 - 3 - 3  # the relabelled, moved, excluded and tagged points: 3 + 3
    assert [p.id for p in d.details["only_in_a"]] == sorted(edits["forgotten"], key=lambda i: int(i.replace("-", ""),
                                                                                                     16))
    assert {p.id for p in d.details["relabelled"]} == set(edits["relabelled"])
    assert all((p.label_a, p.label_b) == ("dog", "fox") for p in d.details["relabelled"])
    [moved] = d.details["reembedded"]
    assert moved.id == edits["moved"] and moved.cosine is not None and moved.cosine < 0.9
    [pruned] = d.details["pruning"]
    assert (pruned.id, pruned.excluded_a, pruned.excluded_b) == (edits["excluded"], False, True)
    [tagged] = d.details["tags"]
    assert (tagged.tags_a, tagged.tags_b) == ({"set": "a"}, {"set": "b"})
    per_label = {c.label: c.model_dump(exclude={"label"}) for c in d.labels}
    assert per_label == {
        "cat": {"a": 20, "b": 15, "added": 0, "forgotten": 5, "relabelled_in": 0, "relabelled_out": 0,
                "reembedded": 0},
        "dog": {"a": 20, "b": 17, "added": 0, "forgotten": 0, "relabelled_in": 0, "relabelled_out": 3,
                "reembedded": 0},
        "fox": {"a": 20, "b": 23, "added": 0, "forgotten": 0, "relabelled_in": 3, "relabelled_out": 0,
                "reembedded": 1},
        "emu": {"a": 0, "b": 4, "added": 4, "forgotten": 0, "relabelled_in": 0, "relabelled_out": 0,
                "reembedded": 0}}
    assert [(n.label, n.a, n.b) for n in d.names] == [("dog", None, "hound"), ("fox", "red fox", "silver fox")]
    assert [(s.key, s.a, s.b) for s in d.settings] == [("settings.vote.k", 7, 9)]
    # The forget, relabel and naming journaled after the backup (the store's own add, put and set_payload are not)
    assert d.journal.b_continues_a and d.journal.shared == 1  # make_memory's naming
    assert [e.op for e in d.journal.entries_only_in_b] == ["forget", "relabel", "name"]
    # Reversed, the same edits seen from the other side
    with open_to_compare(tmp_path / "memory") as now, open_to_compare(tmp_path / "backup") as before:
        back = now.diff(before)
    assert (back.counts["only_in_a"], back.counts["only_in_b"], back.counts["relabelled"]) == (4, 5, 3)
    assert not back.journal.b_continues_a and back.journal.only_in_a == 3


def test_details_by_label_and_limit_while_the_counts_stay_whole(tmp_path):
    edited_after_backup(tmp_path)
    with open_to_compare(tmp_path / "backup") as before, open_to_compare(tmp_path / "memory") as now:
        d = before.diff(now, label="fox", limit=2)
        every = before.diff(now, limit=None)
    assert d.counts == every.counts
    assert d.details["only_in_a"] == [] and d.details["only_in_b"] == []  # cats and emus
    assert len(d.details["relabelled"]) == 2  # dog -> fox: fox in B
    assert len(every.details["only_in_a"]) == 5 and len(every.details["relabelled"]) == 3


def test_the_cli_prints_a_summary_then_details_and_json_exactly(tmp_path):
    edited_after_backup(tmp_path)
    result = vmem("diff", str(tmp_path / "backup"), str(tmp_path / "memory"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[3] == ("points\t5 only in A, 4 only in B, 3 relabelled, 1 re-embedded, 1 pruning changed, 1 tags "
                        "changed, 49 unchanged")
    assert "\tfox (silver fox)\t20\t23\t+0\t-0\tin 3\tout 0\tre-embedded 1" in lines
    assert "\tsettings.vote.k\t7 -> 9" in lines
    assert "journal\tB holds A's 1 entry and 3 more" in lines
    assert "only in A (5; the first 5, in id order)" in lines
    as_json = vmem("diff", str(tmp_path / "backup"), str(tmp_path / "memory"), "--json")
    d = json.loads(as_json.stdout)
    assert d["counts"]["only_in_b"] == 4 and d["points_a"] == 60 and d["tolerance"] == 1e-4
    # Nothing of either memory was written: the backup diffs as before
    again = vmem("diff", str(tmp_path / "backup"), str(tmp_path / "memory"), "--json")
    assert json.loads(again.stdout)["counts"] == d["counts"]


def test_a_server_copy_differs_only_in_its_key_and_a_reembedding_is_said(tmp_path):
    with make_memory(tmp_path / "edge") as mem:
        server, _ = mem.copy_to(f"qdrant-local:{tmp_path / 'server'}")
        server.close()
    with open_to_compare(tmp_path / "edge") as a, open_to_compare(f"qdrant-local:{tmp_path / 'server'}") as b:
        d = a.diff(b)
    assert not d.same_memory and d.unchanged == 60 and not any(d.counts.values())
    assert d.names == [] and d.labels == []
    # Another encoder's vectors: not compared, and said why
    other = open_store(tmp_path / "other", SPEC_32)
    other.add(random_unit_vectors(2, 32, seed=1), ["cat", "cat"], ["/data/cat/0.jpg", "/data/cat/1.jpg"])
    other.close()
    with open_to_compare(tmp_path / "edge") as a, open_to_compare(tmp_path / "other") as b:
        d = a.diff(b)
    assert not d.vectors_compared and "none were compared" in (d.vectors_note or "")
    assert d.counts["reembedded"] == 0 and d.counts["only_in_a"] == 58
    assert ("featurizer.dim", 16, 32) in [(s.key, s.a, s.b) for s in d.settings]


def test_a_memory_held_to_write_is_refused_with_what_to_do(tmp_path):
    make_memory(tmp_path / "a").close()
    make_memory(tmp_path / "b").close()
    with holding(tmp_path / "b"):  # held open by another process, as a vmem serve would hold it
        result = vmem("diff", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.exit_code == 75, result.output
    assert "open in another process" in said(result) and "backup" in said(result)
    with VisualMemory.open(tmp_path / "b", reranker=None) as held:  # held by this process: that object compares it
        with pytest.raises(MemoryInUseError, match=r"open in this process: call mem\.diff\(\.\.\.\) on the object"):
            open_to_compare(tmp_path / "b")
        with open_to_compare(tmp_path / "a") as a:
            assert a.diff(held).counts["only_in_a"] == a.diff(held).counts["only_in_b"] == 0
    nothing = vmem("diff", str(tmp_path / "a"), str(tmp_path / "none"))
    assert nothing.exit_code == 2 and "holds no memory (no such folder)" in said(nothing)
    same = vmem("diff", str(tmp_path / "a"), str(tmp_path / "a") + "/")
    assert same.exit_code == 2 and "give two memories" in said(same)
    unknown = vmem("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--label", "zebra")
    assert unknown.exit_code == 2 and "neither memory holds" in said(unknown)


def test_bad_arguments_of_the_python_api_are_value_errors(tmp_path):
    make_memory(tmp_path / "a").close()
    with open_to_compare(tmp_path / "a") as a, VisualMemory(open_store(":memory:", SPEC_16), reranker=None) as b:
        with pytest.raises(ValueError, match="tolerance"):
            a.diff(b, tolerance=3)
        with pytest.raises(ValueError, match="limit"):
            a.diff(b, limit=-1)
        assert a.diff(b).counts["only_in_a"] == 60


@pytest.mark.realdata
def test_a_tiny_imagenet_memory_against_its_backup_after_forget_relabel_names_and_adds(tiny_imagenet, lite0,
                                                                                      tmp_path):
    """400 real photos of 20 classes embedded by EfficientNet-Lite0, backed up; then a class forgotten, 7 photos
    relabelled, names set, 8 photos of a new class added, and 3 photos held already added again (embedded anew by
    the encoder: within the tolerance of their stored vectors, so unchanged)."""
    items = train_subset(tiny_imagenet, per_class=20)
    classes = sorted({it.label for it in items})[:21]
    train = cached_features(FEATURE_CACHE, lite0, [it for it in items if it.label in classes[:20]])
    memory = VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=None)
    memory.store.add(train.features, train.labels, [it.source for it in train.items])
    memory.set_label_names({classes[0]: "first", classes[1]: "second"})
    memory.backup(tmp_path / "backup")

    assert memory.forget(label=classes[0]) == 20
    second = [p.id for p in memory.points(label=classes[1], limit=100).points]
    assert memory.relabel(classes[2], ids=second[:7]) == 7
    memory.set_label_names({classes[1]: "second, renamed", classes[20]: "newcomer"})
    newcomers = [it.source for it in items if it.label == classes[20]][:8]
    memory.add(newcomers, classes[20])
    # As a replica re-embedded elsewhere: 3 photos embedded again as they are, 2 embedded again mirrored
    again = [memory.store.retrieve([memory.point_id_of_source(it.source)])[0]
             for it in train.items if it.label == classes[3]][:5]
    images = [memory.decode(p.source) for p in again]
    images[3:] = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images[3:]]
    memory.featurizer.embed_as_stored()
    memory.store.put([StoredPoint(p.id, p.payload, v) for p, v in zip(again, memory.featurizer.embed(images),
                                                                        strict=True)])
    memory.close()

    result = vmem("diff", tmp_path / "backup", tmp_path / "memory", "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert (d["points_a"], d["points_b"], d["same_memory"]) == (400, 388, True)
    assert d["counts"] == {"only_in_a": 20, "only_in_b": 8, "relabelled": 7, "reembedded": 2, "pruning": 0,
                           "tags": 0}
    assert d["unchanged"] == 400 - 20 - 7 - 2
    per_label = {c["label"]: (c["a"], c["b"], c["added"], c["forgotten"], c["relabelled_in"], c["relabelled_out"])
                 for c in d["labels"]}
    assert per_label == {classes[0]: (20, 0, 0, 20, 0, 0), classes[1]: (20, 13, 0, 0, 0, 7),
                         classes[2]: (20, 27, 0, 0, 7, 0), classes[20]: (0, 8, 8, 0, 0, 0),
                         classes[3]: (20, 20, 0, 0, 0, 0)}
    assert [(n["label"], n["a"], n["b"]) for n in d["names"]] == [
        (classes[1], "second", "second, renamed"), (classes[20], None, "newcomer")]
    # The adds through the encoder recorded where their images are (store.add, as the backup's points came, did not)
    [roots] = d["settings"]
    assert roots["key"] == "settings.source_roots" and roots["a"] is None and roots["b"]
    assert [e["op"] for e in d["journal"]["entries_only_in_b"]] == ["forget", "relabel", "name", "add"]
    assert {p["source"] for p in d["details"]["only_in_b"]} == {str(Path(s).resolve()) for s in newcomers}
    mirrored = sorted(d["details"]["reembedded"], key=lambda p: p["source"])
    assert [p["id"] for p in mirrored] == sorted([p.id for p in again[3:]], key=lambda i: again_source(again, i))
    assert all(p["cosine"] < 0.99 for p in mirrored), mirrored  # another image: far outside the tolerance
    # The 3 embedded again as they were are within it: float16 storage, the encoder run again
    with open_to_compare(tmp_path / "backup") as before, open_to_compare(tmp_path / "memory") as now:
        ids = [p.id for p in again[:3]]
        va = np.stack([p.vector for p in sorted(before.store.retrieve(ids, with_vectors=True), key=lambda p: p.id)])
        vb = np.stack([p.vector for p in sorted(now.store.retrieve(ids, with_vectors=True), key=lambda p: p.id)])
    cosines = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert (1 - cosines).max() < 1e-4, 1 - cosines


def again_source(points, pid: str) -> str:
    return next(p.source for p in points if p.id == pid)


def test_a_memory_vmem_serve_holds_is_refused_naming_the_service_and_to_diff_a_backup(tmp_path):
    from tests.test_held_memory import SERVED_AT, holding

    make_memory(tmp_path / "backup").close()
    make_memory(tmp_path / "memory").close()
    with holding(tmp_path / "memory", SERVED_AT) as holder:
        refused = vmem("diff", tmp_path / "backup", tmp_path / "memory")
    assert refused.exit_code == 75, refused.output
    assert f"is open in another process (process {holder.pid}" in said(refused)
    assert "Compare a backup of it instead (vmem backup; POST /v1/memory/backup" in said(refused)
    assert refused.stderr.splitlines()[-1] == f"It is served by vmem serve (pid {holder.pid}) at {SERVED_AT}"
    # A qdrant-local memory another process holds: refused in words too, no traceback
    location = f"qdrant-local:{tmp_path / 'local'}"
    make_memory(location).close()
    with holding(location, SERVED_AT):
        refused = vmem("diff", tmp_path / "backup", location)
    assert refused.exit_code == 75 and "open in another process" in said(refused), refused.output
    assert "Traceback" not in refused.output
