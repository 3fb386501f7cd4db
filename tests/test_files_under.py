"""What a memory may read of the machine's files: `is_under` (the one check of what is shown as a thumbnail, sent to
the re-ranker, embedded again by reembed, and counted outside its folders by an import) and `read_under`, which
checks the file it opened. Each way out of a folder a point's source (data, which may name any file) could take."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from retrieval.files import OutsideFolders, is_under, read_under


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """data/img (the image folder: a.jpg, and out.jpg, a link to ../../secret/private.jpg), data/img2 beside it,
    secret/private.jpg, and img-link, a link to data/img."""
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    (tmp_path / "data" / "img2").mkdir()
    (tmp_path / "secret").mkdir()
    (img / "a.jpg").write_bytes(b"mine")
    (tmp_path / "data" / "img2" / "b.jpg").write_bytes(b"the sibling's")
    (tmp_path / "secret" / "private.jpg").write_bytes(b"private")
    (img / "out.jpg").symlink_to(tmp_path / "secret" / "private.jpg")
    (tmp_path / "img-link").symlink_to(img)
    return tmp_path


@pytest.mark.parametrize(("path", "root", "under"), [
    ("data/img/a.jpg", "data/img", True),
    ("data/img/out.jpg", "data/img", False),  # a link in the folder to a file outside it
    ("data/img/../../secret/private.jpg", "data/img", False),  # `..`
    ("data/img2/b.jpg", "data/img", False),  # a sibling whose name the root's begins
    ("data/img/a.jpg", "img-link", True),  # the root given as a link: what its target holds
    ("img-link/a.jpg", "data/img", True),  # the file named through a link to the root
    ("img-link/../secret/private.jpg", "img-link", False),  # `..` after a link: from where the link leads
])
def test_a_file_is_under_a_folder_as_both_really_are(disk, path, root, under):
    assert is_under(disk / path, [disk / root]) is under
    assert is_under(str(disk / path), [str(disk / "elsewhere"), str(disk / root)]) is under  # any of the roots


def test_a_link_loop_in_a_folder_is_no_error_and_no_file(disk):
    loop = disk / "data" / "img" / "loop.jpg"
    loop.symlink_to(loop.name)
    assert is_under(loop, [disk / "data" / "img"])  # by its name (Path.resolve raised RuntimeError: a 500)
    with pytest.raises(OSError):
        read_under(loop, [disk / "data" / "img"])


def test_read_under_reads_a_file_inside_and_refuses_one_a_link_leads_out_to(disk):
    img = disk / "data" / "img"
    assert read_under(img / "a.jpg", [img]) == b"mine"
    assert read_under(disk / "img-link" / "a.jpg", [img]) == b"mine"
    with pytest.raises(OutsideFolders):
        read_under(img / "out.jpg", [img])
    os.mkfifo(img / "pipe.jpg")
    with pytest.raises(OSError, match="not a plain file"):  # nor waited on for a writer
        read_under(img / "pipe.jpg", [img])


def test_a_link_swapped_in_after_the_name_was_checked_is_not_read(disk):
    # Whoever may write in an image folder flips a name between their own image and a link to a private one: a
    # check of the name, then a read by the name, had read the private file about 1 time in 40
    img = disk / "data" / "img"
    name, stop = img / "flip.jpg", threading.Event()
    name.symlink_to(img / "a.jpg")

    def flip() -> None:
        for i in range(1_000_000):
            if stop.is_set():
                return
            (img / f".flip{i}").symlink_to(disk / "secret" / "private.jpg" if i % 2 else img / "a.jpg")
            os.replace(img / f".flip{i}", name)

    flipper = threading.Thread(target=flip)
    flipper.start()
    read = []
    try:
        for _ in range(3000):
            if is_under(name, [img]):  # as the service checks a point's source before reading it
                try:
                    read.append(read_under(name, [img]))
                except (OutsideFolders, FileNotFoundError):
                    read.append(b"refused")
    finally:
        stop.set()
        flipper.join()
    assert b"mine" in read and b"private" not in read


def test_the_re_ranker_sends_no_image_a_link_in_an_image_folder_leads_out_to(disk):
    from PIL import Image

    from reranker import ThumbnailCache, ThumbnailError

    img = disk / "data" / "img"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(img / "mine.png")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(disk / "secret" / "private.png")
    (img / "private.png").symlink_to(disk / "secret" / "private.png")
    thumbs = ThumbnailCache(longest_side=16)
    assert thumbs.get(str(img / "mine.png"), [str(disk / "img-link")])[:3] == b"\xff\xd8\xff"  # a JPEG
    with pytest.raises(ThumbnailError, match="outside the memory's source roots"):
        thumbs.get(str(img / "private.png"), [str(img)])


def test_a_file_opened_under_its_folder_is_decoded_as_opened_whatever_its_name_leads_to_since(disk):
    from retrieval.files import decodable, open_under

    with open_under(disk / "data" / "img" / "a.jpg", [disk / "data" / "img"]) as f:
        (disk / "data" / "img" / "a.jpg").unlink()  # flipped to a link out after the check
        (disk / "data" / "img" / "a.jpg").symlink_to(disk / "secret" / "private.jpg")
        readable = decodable(f)
        assert (readable.read_bytes() if isinstance(readable, Path) else readable) == b"mine"


_THUMBNAIL_OF_A_BIG_FILE = """
import sys
from reranker._thumbs import ThumbnailCache, ThumbnailError
try:
    ThumbnailCache().get(sys.argv[1], [sys.argv[2]])
except ThumbnailError as exc:
    print(str(exc).split("(")[0].strip())
# VmHWM, this process's own peak: ru_maxrss keeps, across exec, the peak of the forked copy of the process that
# started it (a pytest of 4 GB read "peak RSS 4196 MB" in a full run)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="decoded from the file opened by its /proc name")
def test_a_thumbnail_of_a_big_file_that_is_no_image_reads_no_more_of_it_than_its_header(disk):
    # A source under the roots swapped for a 1 GB file (or a link to one): read whole to check and decode it, each
    # keyless thumbnail request held 1 GB, four at a time. (Sparse: no disk taken.)
    import subprocess
    import sys

    from tests.conftest import REPO

    big = disk / "data" / "img" / "big.png"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    done = subprocess.run([sys.executable, "-c", _THUMBNAIL_OF_A_BIG_FILE, str(big), str(disk / "data" / "img")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    said, peak_mb = done.stdout.split("\n")[:2]
    assert said == "image not decodable", done.stderr
    assert int(peak_mb) < 512, f"peak RSS {peak_mb} MB"
