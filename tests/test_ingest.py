"""Building a memory from a labelled set: each file is one point with one label."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import DatasetError, build_memory, open_store, read_labelled, scan_imagefolder, unique_sources
from tests.conftest import make_image
from vmem.cli import app


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "photos").mkdir()
    for name, colour in {"a": (220, 20, 20), "b": (20, 200, 40), "c": (30, 40, 220)}.items():
        (tmp_path / "photos" / f"{name}.png").write_bytes(make_image(colour, fmt="PNG"))
    return tmp_path / "photos"


def test_a_file_listed_twice_with_one_label_is_one_point_and_reported(lite0, photos, tmp_path):
    manifest = tmp_path / "set.csv"
    # b.png twice: once by name, once through a path that resolves to the same file.
    manifest.write_text(f"path,label\n{photos}/a.png,red\n{photos}/b.png,green\n{photos}/../photos/b.png,green\n")
    store = open_store(tmp_path / "memory", lite0.spec)
    report = build_memory(store, lite0, read_labelled(manifest), num_workers=0)
    assert (report.total, report.added, report.duplicates, report.memory_points) == (3, 2, 1, 2)
    assert "1 listed twice" in report.summary()
    store.close()


def test_building_again_after_a_label_was_corrected_says_the_stored_label_was_kept(lite0, photos, tmp_path):
    manifest = tmp_path / "set.csv"
    manifest.write_text(f"path,label\n{photos}/a.png,red\n{photos}/b.png,blue\n")
    store = open_store(tmp_path / "memory", lite0.spec)
    build_memory(store, lite0, read_labelled(manifest), num_workers=0)
    manifest.write_text(f"path,label\n{photos}/a.png,red\n{photos}/b.png,green\n")  # b was mislabelled
    again = build_memory(store, lite0, read_labelled(manifest), num_workers=0)
    assert (again.added, again.skipped_existing) == (0, 2)
    assert again.relabelled == [(f"{photos}/b.png", "blue", "green")]
    assert "1 already in memory under another label, kept as stored" in again.summary()
    assert store.label_counts() == {"blue": 1, "red": 1}  # nothing rewritten behind the user's back
    store.close()


def test_a_file_given_two_labels_is_refused_before_the_memory_is_touched(photos, tmp_path):
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "cat").symlink_to(photos)  # the same three files under a second label
    (tmp_path / "linked" / "dog").symlink_to(photos)
    with pytest.raises(DatasetError, match="3 images are listed with two labels"):
        unique_sources(read_labelled(tmp_path / "linked"))  # what build_memory checks first
    out = CliRunner().invoke(app, ["build", str(tmp_path / "linked"), "--memory", str(tmp_path / "memory"),
                                   "--featurizer", "efficientnet-lite0"], env={"COLUMNS": "250"})
    assert out.exit_code == 2 and "listed with two labels" in out.output and "'cat' and 'dog'" in out.output
    assert not (tmp_path / "memory").exists()


def test_a_manifest_with_a_header_and_no_rows_is_refused_before_the_memory_is_made(tmp_path):
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\n")
    with pytest.raises(DatasetError, match="lists no images"):
        read_labelled(manifest)
    out = CliRunner().invoke(app, ["build", str(manifest), "--memory", str(tmp_path / "memory"),
                                   "--featurizer", "efficientnet-lite0"], env={"COLUMNS": "250"})
    assert out.exit_code == 2 and "set.csv lists no images" in out.output
    assert not (tmp_path / "memory").exists()


def test_a_manifests_labels_are_read_without_their_outer_spaces(photos, tmp_path):
    manifest = tmp_path / "set.csv"
    # As a spreadsheet or a hand-written file has them: a space after each comma, a label with a space inside.
    manifest.write_text(f'path, label\n{photos}/a.png, gold fish\n"{photos}/b.png", gold fish \n'
                        f"{photos}/c.png,gold fish\n")
    assert [it.label for it in read_labelled(manifest)] == ["gold fish"] * 3
    manifest.write_text(f"path,label\n{photos}/a.png,   \n")  # a label of spaces alone is no label
    with pytest.raises(DatasetError, match=r"set\.csv: no row has a label \(1 left empty"):
        read_labelled(manifest)
    manifest.write_text("path,label\n,cat\n")
    with pytest.raises(DatasetError, match=r"set\.csv:2: the label 'cat' has no path"):
        read_labelled(manifest)


def test_a_manifest_row_left_with_no_label_is_skipped_and_said(photos, tmp_path, caplog):
    # A review queue a person went through: b.png they could not tell, so they emptied its label.
    manifest = tmp_path / "queue.csv"
    manifest.write_text(f"path,label\n{photos}/a.png,cat\n{photos}/b.png,\n,\n{photos}/c.png,dog\n")
    unlabelled: list[int] = []
    assert [(Path(it.source).name, it.label) for it in read_labelled(manifest, unlabelled=unlabelled)] == [
        ("a.png", "cat"), ("c.png", "dog")]
    assert unlabelled == [3, 4]  # line numbers, the header's being 1
    read_labelled(manifest)  # a caller that does not collect them is told in a warning
    assert "queue.csv: 2 rows with no label left out (lines 3, 4)" in caplog.text


def test_a_manifest_row_with_more_cells_than_its_header_is_refused(photos, tmp_path):
    # `photo,2024.jpg,cat`: an unquoted comma in the path made `2024.jpg` the label and dropped `cat`.
    manifest = tmp_path / "set.csv"
    manifest.write_text(f"path,label\n{photos}/a.png,cat\n{photos}/photo,2024.jpg,cat\n")
    with pytest.raises(DatasetError, match=r"set\.csv:3: 3 cells where the header has 2: put a path or label "
                                           r"holding a comma in quotes"):
        read_labelled(manifest)
    manifest.write_text(f'path,label\n"{photos}/a.png",cat\n"{photos}/photo,2024.jpg",cat\n')
    assert [it.label for it in read_labelled(manifest)] == ["cat", "cat"]


def test_hidden_folders_inside_a_label_folder_are_not_walked(photos):
    (photos / "red" / ".thumbs").mkdir(parents=True)
    (photos / "a.png").rename(photos / "red" / "a.png")
    (photos / "b.png").rename(photos / "red" / ".thumbs" / "b.png")  # a viewer's thumbnail cache, not an image
    assert [Path(it.source).name for it in read_labelled(photos) if it.label == "red"] == ["a.png"]


def test_images_directly_under_the_root_are_left_out_and_said(photos, tmp_path, caplog):
    (photos / "red").mkdir()
    (photos / "a.png").rename(photos / "red" / "a.png")  # b.png and c.png stay in no label folder
    with caplog.at_level("WARNING"):
        items = read_labelled(photos)
    assert [it.label for it in items] == ["red"]
    assert f"2 images directly under {photos} (b.png, c.png) are in no label folder, and left out" in caplog.text


def test_a_link_whose_image_is_gone_is_listed_as_failed_not_dropped_unseen(lite0, photos, tmp_path, caplog):
    (photos / "red").mkdir()
    (photos / "a.png").rename(photos / "red" / "a.png")
    (photos / "red" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with caplog.at_level("WARNING"):
        items = read_labelled(photos)
    assert [it.label for it in items] == ["red", "red"]
    # The failure below names the target; the scan names the link that led there, which a user can find.
    assert f"1 link in {photos} leads to no file: {photos / 'red' / 'gone.png'} -> {tmp_path / 'deleted.png'}" in (
        caplog.text)
    store = open_store(tmp_path / "memory", lite0.spec)
    report = build_memory(store, lite0, items, num_workers=0)
    assert (report.added, report.failed[0].reason if report.failed else None) == (
        1, f"{tmp_path / 'deleted.png'}: no such file")
    store.close()


def test_files_named_in_another_encoding_are_listed_by_their_bytes_each_as_itself(lite0, photos, tmp_path):
    # A Latin-1 byte and the four characters \xe9 were both written \xe9, so these two names read as one
    (photos / "red").mkdir()
    names = [os.fsdecode(b"a\\xe9\xe9.png"), os.fsdecode(b"a\xe9\\xe9.png")]
    for name in names:
        (photos / "red" / name).write_bytes(make_image((200, 40, 40), fmt="PNG"))
    store = open_store(tmp_path / "memory", lite0.spec)
    report = build_memory(store, lite0, read_labelled(photos), num_workers=0)
    assert report.added == 0
    # By visible's rule: a byte as \xe9, a backslash of the name's own doubled where an escape would follow
    assert sorted(line.rsplit("/", 1)[1] for line in report.failures().splitlines()) == [
        "a\\\\xe9\\xe9.png: its path is not UTF-8 text (bytes of another encoding): rename it in UTF-8 to add it",
        "a\\xe9\\\\xe9.png: its path is not UTF-8 text (bytes of another encoding): rename it in UTF-8 to add it"]
    store.close()


def test_a_failed_image_named_with_a_control_character_or_U202E_is_listed_escaped_once(lite0, photos, tmp_path):
    # Another failure's source was listed raw: U+202E turned the rest of its line around, an ESC reached the
    # terminal. Escaped once, as a name not UTF-8 is: the report keeps the path as it is.
    (photos / "red").mkdir()
    for name in ("gnp.\u202ecat.png", "bell\x1b[2J.png"):
        (photos / "red" / name).write_bytes(b"not an image")
    (photos / "red" / os.fsdecode(b"caf\xe9.png")).write_bytes(make_image((200, 40, 40), fmt="PNG"))
    store = open_store(tmp_path / "memory", lite0.spec)
    report = build_memory(store, lite0, read_labelled(photos), num_workers=0)
    assert report.added == 0 and {f.source.rsplit("/", 1)[1] for f in report.failed} == {
        "gnp.\u202ecat.png", "bell\x1b[2J.png", os.fsdecode(b"caf\xe9.png")}
    listed = report.failures()
    assert "\u202e" not in listed and "\x1b" not in listed
    assert sorted(line.rsplit("/", 1)[1].split(":")[0] for line in listed.splitlines()) == [
        "bell\\x1b[2J.png", "caf\\xe9.png", "gnp.\\u202ecat.png"]
    store.close()


def test_the_folders_a_build_records_as_image_roots_never_reach_the_top_of_the_disk(lite0, photos, tmp_path):
    # The service shows thumbnails only from under these roots: "/" would let it show any image on the host.
    from vmem import VisualMemory

    (photos / "red").mkdir()
    (photos / "a.png").rename(photos / "red" / "a.png")
    (photos / "red" / "gone.png").symlink_to("/nonexistent-vmem-test.png")  # its target made the root "/"
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=None) as mem:
        mem.build(read_labelled(photos), num_workers=0)
        assert mem.store.meta.settings["source_roots"] == [str(photos / "red")]
        shm = Path("/dev/shm")
        if shm.is_dir():  # images in two top-level folders: their own folders, not "/"
            other = Path(tempfile.mkdtemp(dir=shm)) / "b.png"
            try:
                shutil.copy(photos / "b.png", other)
                mem.add([other], ["blue"])
                assert str(other.parent) in mem.store.meta.settings["source_roots"]
                assert "/" not in mem.store.meta.settings["source_roots"]
            finally:
                shutil.rmtree(other.parent, ignore_errors=True)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second top-level folder")
def test_points_whose_sources_are_written_with_dot_dot_record_no_folder_at_the_top_of_the_disk(lite0, tmp_path):
    # A memory made before vmem recorded its image folders takes them from its points' sources, which are data:
    # "/usr/.." has three parts, and passed for a folder deeper than "/", which it is (every image shown)
    from vmem import VisualMemory

    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        (tmp_path / "a.png").write_bytes(b"an image")
        (shm / "b.png").write_bytes(b"an image")
        store = open_store(tmp_path / "memory", lite0.spec)
        store.add(np.ones((2, lite0.spec.dim), np.float32), ["red", "blue"],
                  [f"/usr/..{tmp_path}/a.png", f"/usr/..{shm}/b.png"])
        with VisualMemory(store, lite0, reranker=None) as mem:
            assert sorted(mem.source_roots) == sorted([str(tmp_path), str(shm)])
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_points_whose_sources_lead_through_a_link_to_the_top_of_the_disk_record_no_folder_there(lite0, tmp_path):
    # Sources are data (a memory made before vmem recorded its folders takes them from its points): named through a
    # link to "/" (/proc/self/root, on every Linux), or a file directly in "/", the folder recorded held every file
    # of the machine, shown as a thumbnail and sent to the re-ranker
    from retrieval.files import is_under
    from vmem import VisualMemory

    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(b"an image")
    (tmp_path / "top").symlink_to("/")
    top_file = next((f for f in sorted(os.listdir("/")) if os.path.isfile(f"/{f}")), None)  # /.dockerenv, ...
    for sources in ([f"/proc/self/root{tmp_path}/cats/a.png", "/proc/self/root/proc/version"],
                    [f"{tmp_path}/top/{top_file}", f"/{top_file}"] if top_file else []):
        if not sources:
            continue
        shutil.rmtree(tmp_path / "memory", ignore_errors=True)
        store = open_store(tmp_path / "memory", lite0.spec)
        store.add(np.ones((len(sources), lite0.spec.dim), np.float32), ["red"] * len(sources), sources)
        with VisualMemory(store, lite0, reranker=None) as mem:
            roots = mem.source_roots
            assert not is_under("/etc/passwd", roots), roots
            assert "source_roots" in mem.store.meta.settings  # worked out once, not at each thumbnail
        if "cats" in sources[0]:  # their own folders, through the link
            assert sorted(os.path.realpath(r) for r in roots) == ["/proc", str(tmp_path / "cats")], roots


def test_a_memory_made_before_image_roots_were_recorded_gets_them_from_its_points(lite0, photos, tmp_path):
    # Upgraded, such a memory sent Gemini no neighbour image and the service showed no thumbnail: no roots, none
    # allowed.
    from vmem import VisualMemory

    (photos / "red").mkdir()
    (photos / "a.png").rename(photos / "red" / "a.png")
    with VisualMemory(open_store(tmp_path / "memory", lite0.spec), lite0, reranker=None) as mem:
        mem.build(read_labelled(photos), num_workers=0)
        del mem.store.meta.settings["source_roots"]  # as vmem.json was written before it kept them
        mem.store.save_meta()
    with VisualMemory(open_store(tmp_path / "memory"), lite0, reranker=None) as mem:
        assert mem.source_roots == [str(photos / "red")]
    with VisualMemory(open_store(tmp_path / "memory"), lite0, reranker=None) as mem:
        assert mem.store.meta.settings["source_roots"] == [str(photos / "red")]  # recorded once, for good


def test_images_in_a_linked_sub_folder_are_read_and_a_link_loop_once(photos, tmp_path):
    (photos / "cat").mkdir()
    (photos / "a.png").rename(photos / "cat" / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (photos / "b.png").rename(elsewhere / "b.png")
    (photos / "cat" / "more").symlink_to(elsewhere)  # ROOT/cat/more -> a folder elsewhere
    (elsewhere / "again").symlink_to(elsewhere)  # a loop
    assert sorted(Path(it.source).name for it in read_labelled(photos)) == ["a.png", "b.png"]


def test_a_class_folder_that_cannot_be_read_is_named_not_dropped_unsaid(tmp_path, monkeypatch, caplog):
    import os

    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.png").write_bytes(make_image((10, 20, 30), fmt="PNG"))
    real_scandir = os.scandir

    def scandir(path="."):  # as `chmod 000 dogs` does for any user but root
        if str(path).endswith("dogs"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = scan_imagefolder(tmp_path)
    assert [it.label for it in items] == ["cats"]
    assert f"1 folder could not be read, and the images in it are left out: {tmp_path / 'dogs'}: Permission denied" \
        in caplog.text


def test_an_image_the_user_may_not_read_says_so_not_corrupt(tmp_path, monkeypatch):
    from PIL import Image

    from retrieval import ImageDecodeError, load_image

    (tmp_path / "a.png").write_bytes(make_image((10, 20, 30), fmt="PNG"))

    def denied(fp, *a, **kw):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageDecodeError, match=r"a\.png: permission denied: the file cannot be read by this user"):
        load_image(tmp_path / "a.png")
