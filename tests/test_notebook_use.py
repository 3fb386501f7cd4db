"""The Python API as a notebook uses it: a kernel that lives through interrupted cells, and what a cell shows."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError

from eval.label_audit import audit_labels
from retrieval import LabelledImage, MemoryReadOnlyError, open_store
from tests.conftest import REPO, make_image
from vmem import NoSuchLabelsError, VisualMemory, VoteOptionError

# A notebook kernel, interrupted (Ctrl-C, Jupyter's "interrupt the kernel": SIGINT) while the first classify or add
# imports the encoder's modules (torch: a second or more), then asked again. The signal is sent from an import hook
# as torch's nn package is looked for, so it lands inside torch's import every time.
INTERRUPTED_IMPORT = textwrap.dedent("""
    import os, signal, sys

    class InterruptOnce:
        sent = False
        def find_spec(self, name, path=None, target=None):
            if name == "torch.nn" and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, InterruptOnce())
    import retrieval
    try:
        retrieval.load_featurizer
    except KeyboardInterrupt:
        print("interrupted")
    from retrieval import load_featurizer   # the next cell
    import torch
    print(load_featurizer.__name__, torch.nn.Linear(2, 2).weight.shape[0])
""")


def test_ctrl_c_while_the_encoder_is_imported_leaves_the_kernel_usable():
    # Interrupted halfway, torch's import had left a half-made torch behind: every later classify or add in the
    # kernel failed ("module 'torch' has no attribute '_utils'", "cannot import name 'load_featurizer'") until a
    # restart. The interrupt now takes effect once the import is whole.
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["interrupted", "load_featurizer", "2"]



def test_what_a_cell_shows_of_many_points_is_a_summary(lite0, tmp_path):
    # A notebook shows a cell's value by its repr: each list of ids, paths or points had been shown whole (an add of
    # 100 images 15,000 characters, a page of 100 points 32,000, a forget of a class 40 characters a point).
    folder = tmp_path / "ferns"
    folder.mkdir()
    for i in range(12):
        (folder / f"fern{i:02}.jpg").write_bytes(make_image((20 * i, 220 - 15 * i, 90)))
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        report = mem.build([LabelledImage(source=str(p), label="fern") for p in sorted(folder.iterdir())])
        added = mem.add_images([make_image((250, 250, 0)), make_image((0, 250, 250))] * 6, "flower")
        page = mem.points(limit=20)
        votes = audit_labels(mem.store)  # every point's leave-one-out vote (README: `.suspects(min_share=0.8)`)
        assert mem.forget(label="fern") == 12
        [forget] = mem.history(op="forget")

        assert repr(report).startswith("BuildReport(total=12, added=12, added_per_label={'fern': 12}, ")
        assert repr(added).startswith("AddResult(ids=[") and "... 7 more], sources=[" in repr(added)
        assert len(added.ids) == 12 and len(added.added) == 2  # the same two images six times each: two points
        assert repr(page).startswith("PointPage(points=[MemoryPoint(id=") and ", ... 11 more], next_cursor=None)" \
            in repr(page)
        assert len(page.points) == 14
        assert repr(forget).startswith("JournalEntry(at=") and ", ... 7 more], to=None" in repr(forget)
        assert str(forget) == repr(forget) and len(forget.ids) == 12
        assert repr(votes).startswith("LabelVotes(ids=[") and ", ... 9 more], labels=['f" in repr(votes)
        assert all(len(repr(shown)) < 1200 for shown in (report, added, page, forget, votes))


def test_labels_that_are_no_labels_are_refused_saying_what_a_label_is(lite0, tmp_path):
    # A dataset's class indices, or a forgotten argument, had failed deep inside: "'int' object is not iterable",
    # "object of type 'NoneType' has no len()".
    images = [make_image((200, 30, 30)), make_image((30, 40, 220))]
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        with pytest.raises(TypeError, match=r"^label 0 is int 0: a label is text \(for a class index, its class's "
                                            r"name or str\(index\)\)$"):
            mem.add(images, [0, 1])
        with pytest.raises(TypeError, match=r"^label 0 is int64 np.int64\(1\): "):
            mem.add(images, np.array([0, 1])[::-1])
        with pytest.raises(TypeError, match=r"^add takes one label .* one per image; not NoneType$"):
            mem.add(images, None)
        with pytest.raises(ValueError, match=r"^got 3 labels for 2 images"):
            mem.add(images, ["red", "blue", "green"])
        assert mem.store.count() == 0  # nothing added
        # What is text goes in: one label for all, or one each from a list, a tuple or a numpy array of str
        ids, failed = mem.add(images, np.array(["red", "blue"]))
        assert not failed and [mem.point(i).label for i in ids] == ["red", "blue"]


def test_a_numpy_column_of_paths_is_a_list_of_images(lite0, tmp_path):
    # A notebook's paths often come as an array (a DataFrame's column, np.array(glob(...))): it was taken for one
    # image and refused, "not one ndarray: pass [image]".
    paths = []
    for name, colour in {"red": (220, 20, 20), "blue": (30, 40, 220)}.items():
        (tmp_path / f"{name}.jpg").write_bytes(make_image(colour))
        paths.append(str(tmp_path / f"{name}.jpg"))
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        mem.add(np.array(paths), np.array(["red", "blue"]))
        answers = mem.classify(np.array(paths), k=1)
        assert [(a.label, a.source) for a in answers] == [("red", paths[0]), ("blue", paths[1])]
        assert [a.label for a in mem.classify(np.array(paths, dtype=object), k=1)] == ["red", "blue"]


def test_points_chosen_by_a_numpy_array_of_ids_are_relabelled_and_forgotten(lite0, tmp_path):
    # Ids picked from a table of points (a DataFrame's column) come as an array: relabel and forget had failed on it,
    # "The truth value of an array with more than one element is ambiguous".
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        ids, _ = mem.add([make_image((220, 20, 20)), make_image((200, 40, 30)), make_image((30, 40, 220))],
                         ["red", "red", "blue"])
        reds = np.array([p.id for p in mem.points(label="red").points])
        assert mem.relabel("crimson", ids=reds) == 2
        assert mem.history(op="relabel")[0].selector == {"ids": 2}
        assert mem.forget(ids=reds) == 2 and mem.forget(ids=np.array([], dtype=str)) == 0
        assert [p.label for p in mem.points().points] == ["blue"]


def test_a_label_the_memory_never_had_is_refused_naming_those_spelled_like_it(lite0, tmp_path):
    # mem.relabel("cat", label="tabyy") and mem.forget(label="tabyy") had returned 0, read in a notebook as "done"
    # (the CLI and HTTP said why; Python said nothing). A label whose points all went still answers 0: asked again.
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        mem.add([make_image((220, 20, 20)), make_image((30, 40, 220))], ["tabby", "okapi"])
        with pytest.raises(NoSuchLabelsError, match=r"^the memory has no label 'tabyy': it has 2 labels \(.*"
                                                    r"mem.store.label_counts\(\) lists them\); spelled or named "
                                                    r"like it: 'tabby'$"):
            mem.relabel("cat", label="tabyy")
        with pytest.raises(NoSuchLabelsError, match=r"^the memory has no label 'okapii'.*like it: 'okapi'$"):
            mem.forget(label="okapii")
        # The preview of either (what `--dry-run` shows) says so too: it had chosen nothing, read as "none left"
        with pytest.raises(NoSuchLabelsError, match=r"^the memory has no label 'okapii'.*like it: 'okapi'$"):
            mem.chosen_points(label="okapii")
        assert sorted(mem.store.label_counts().items()) == [("okapi", 1), ("tabby", 1)]  # nothing changed

        assert mem.relabel("cat", label="tabby") == 1 and mem.relabel("cat", label="tabby") == 0  # asked again
        assert mem.forget(label="okapi") == 1 and mem.forget(label="okapi") == 0
        assert mem.chosen_points(label="okapi") == {}  # had, all gone: nothing to choose, no error
        assert mem.store.label_counts() == {"cat": 1}


def test_a_memory_opened_read_only_in_python_refuses_edits_in_its_own_words(lite0, tmp_path):
    # The refusal had spoken as the service does ("served read-only (VMEM_READ_ONLY) ... restart this service") to a
    # notebook that opened the memory with read_only=True itself.
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        mem.add([make_image((220, 20, 20))], "red")
    with VisualMemory.open(tmp_path / "memory", reranker=None, read_only=True) as mem:
        with pytest.raises(MemoryReadOnlyError) as refused:
            mem.add([make_image((30, 40, 220))], "blue")
        assert str(refused.value) == (f"the memory {tmp_path / 'memory'} is opened read-only (read_only=True): nothing "
                                      "was changed. Open it without read_only to edit it, in a process that holds it "
                                      "alone")
        with pytest.raises(MemoryReadOnlyError, match=r"opened read-only \(read_only=True\)"):
            mem.forget(label="red")
        assert mem.store.label_counts() == {"red": 1}


def test_a_bad_vote_option_is_refused_in_one_line_naming_it(lite0, tmp_path):
    # classify(k=0) had raised pydantic's ValidationError: several lines about "VoteSettings", a model the caller
    # never named, and a link to pydantic's errors page.
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0) as mem:
        mem.add([make_image((220, 20, 20)), make_image((30, 40, 220))], ["red", "blue"])
        image = tmp_path / "query.jpg"
        image.write_bytes(make_image((200, 30, 30)))
        for options, said in [
            ({"k": 0}, "k=0: k takes a whole number of neighbours from 1 to 1000"),
            ({"k": -1}, "k=-1: k takes a whole number of neighbours from 1 to 1000"),
            ({"k": "ten"}, "k='ten': k takes a whole number of neighbours from 1 to 1000"),
            ({"rule": "majority"}, "rule='majority': rule takes one of plurality, distance, softmax, rank or dmn"),
            ({"rule": "rank", "alpha": 0}, "alpha=0: alpha takes a number from 0.001 to 1e+06"),
        ]:
            with pytest.raises(VoteOptionError) as refused:  # caught by name, as vmem lists it
                mem.classify([image], **options)
            assert str(refused.value) == said and not isinstance(refused.value, ValidationError)
            assert str(refused.value).startswith(f"{refused.value.option}=")
            with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
                mem.classify_many([str(image)], **options)
        assert mem.classify([image], k="2")[0].label == "red"  # a number as text, as a form sends it, is a number
        # Rule dmn's options too: they had been pydantic's lines about DmnOptions, after the images were embedded
        for dmn, said in [({"static_k": 0}, "dmn static_k=0: Input should be greater than or equal to 1"),
                          ({"mode": "fast"}, "dmn mode='fast': Input should be 'auto', 'zero-shot', 'few-shot' or "
                                             "'memory-only'"),
                          ({"static-k": 8}, "dmn static-k=8: rule dmn takes no option static-k (it takes mode, ")]:
            with pytest.raises(ValueError) as refused:
                mem.classify([image], rule="dmn", dmn=dmn)
            assert str(refused.value).startswith(said) and not isinstance(refused.value, ValidationError), dmn


def test_a_memory_opened_with_the_wrong_encoder_can_be_opened_again_in_the_same_kernel(tmp_path):
    # A notebook keeps a cell's exception (sys.last_value, its traceback's frames): the store a refused open had made
    # lived on in it, engine and open lock held, and the next cell's open with the right encoder found the memory
    # open, by this very kernel. A refused open now lets go of the memory first.
    from retrieval import FeaturizerMismatchError
    from tests.test_copy import make_memory

    make_memory(tmp_path / "memory").close()
    with pytest.raises(FeaturizerMismatchError) as refused:
        VisualMemory.open(tmp_path / "memory", featurizer="efficientnet-lite0", reranker=None)
    kept = refused  # noqa: F841 - as a notebook keeps it
    with VisualMemory.open(tmp_path / "memory", reranker=None, wait=0) as mem:
        assert mem.store.count() == 60
