"""Image decoding: hostile input gets a clear error, odd but valid images decode correctly."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import ImageDecodeError, load_image
from tests.conftest import REPO, make_image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims enormous dimensions: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, I am a text file named photo.jpg\n", "not a recognised image"),
        (make_image(size=(64, 64))[:300], "corrupt or truncated"),
        (png_declaring(100_000, 100_000), "too large"),
    ],
    ids=["zero-bytes", "text-file", "truncated-jpeg", "decompression-bomb"],
)
def test_bad_input_is_a_clear_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_image(data)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "absent.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="a directory, not an image file"):  # a manifest row naming a folder
        load_image(tmp_path)


def test_cmyk_jpeg_becomes_rgb():
    img = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


def test_16_bit_grayscale_is_scaled_from_its_full_range_not_clipped():
    arr = np.full((6, 6), 30000, dtype=np.uint16)
    img = load_image(encode(Image.fromarray(arr), "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((3, 3))[0] == 116  # 30000/65535 of full scale, not saturated white
    arr[0, 0] = 60000  # a brighter pixel elsewhere leaves this one's brightness alone
    assert load_image(encode(Image.fromarray(arr), "PNG")).getpixel((3, 3))[0] == 116


def test_a_float_image_in_zero_to_one_keeps_its_brightness():
    grey = np.full((6, 6), 0.5, dtype=np.float32)  # a scientific TIFF's float pixels, 0..1
    img = load_image(encode(Image.fromarray(grey, "F"), "TIFF"))
    assert 120 <= img.getpixel((3, 3))[0] <= 130  # mid grey, not black


def test_files_named_otherwise_than_images_are_said_to_be_left_out(tmp_path, caplog):
    from retrieval import scan_imagefolder

    for label, name in (("cat", "a.jpg"), ("cat", "b.jfif"), ("dog", "c.ico"), ("dog", "IMG_0001"), ("dog", "d.txt")):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / name).write_bytes(encode(Image.new("RGB", (16, 16)), "ICO" if name.endswith("ico") else
                                                     "JPEG"))
    items = scan_imagefolder(tmp_path)
    assert sorted(Path(it.source).name for it in items) == ["a.jpg", "b.jfif", "c.ico"]  # JFIF and ICO are images
    # The extensionless one is named, so that a folder of them cannot vanish unsaid; the annotation file is not.
    [warning] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "1 file not named as images left out (IMG_0001)" in warning and "d.txt" not in warning


def test_palette_with_transparency_is_composited_on_white():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    img = load_image(encode(pal, "PNG", transparency=0))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = load_image(data).getpixel((4, 4))
    assert r > 200 and b < 50


def test_exif_rotated_jpeg_is_turned_upright():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    out = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode_size", [("L", (10, 10)), ("RGB", (1, 1)), ("RGB", (4000, 3)), ("RGBA", (5, 5)),
                                       ("LA", (5, 5)), ("1", (9, 9))])
def test_odd_but_valid_images_decode_to_rgb(mode_size):
    mode, size = mode_size
    fmt = "PNG"
    img = load_image(encode(Image.new(mode, size), fmt))
    assert img.mode == "RGB" and img.size == size


def test_pil_images_and_paths_are_accepted(tmp_path):
    p = tmp_path / "x.webp"
    Image.new("RGB", (5, 7), (1, 2, 3)).save(p)
    assert load_image(p).size == (5, 7)
    assert load_image(str(p)).size == (5, 7)
    assert load_image(Image.new("L", (3, 3))).mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO"])
def test_the_usual_formats_decode(fmt):
    assert load_image(encode(Image.new("RGB", (16, 16), (10, 120, 200)), fmt)).size == (16, 16)


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "TGA", "PCX"])
def test_other_formats_pillow_knows_are_refused_unread(fmt, monkeypatch):
    """PostScript above all: Pillow's EPS plugin would hand an upload's bytes to Ghostscript."""
    data = encode(Image.new("RGB", (16, 16)), fmt) if fmt != "EPS" else (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: pytest.fail("a decoder started a program"))
    monkeypatch.setattr("subprocess.check_call", lambda *a, **k: pytest.fail("a decoder started a program"))
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        load_image(data)


# ---------------------------------------------------------------- load_pixels: plain JPEGs by simplejpeg

def smooth_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    ("mode", "size", "save", "min_side"),
    [
        ("RGB", (500, 375), {"quality": 90}, None),
        ("RGB", (500, 375), {"quality": 75, "progressive": True}, 512),
        ("RGB", (333, 500), {"quality": 95, "subsampling": 0}, None),  # 4:4:4
        ("L", (300, 200), {"quality": 85}, None),  # grey: repeated into three channels
        ("RGB", (2400, 1800), {"quality": 85}, 512),  # big: decoded at 1/4 scale, as Pillow's draft does
        ("RGB", (1, 1), {}, 512),
    ],
    ids=["photo", "progressive", "444", "grey", "drafted", "one-pixel"],
)
def test_plain_jpegs_decode_to_the_same_pixels_as_pillow_without_it(mode, size, save, min_side):
    from retrieval.images import _decode_plain_jpeg, load_pixels

    data = encode(smooth_photo(size).convert(mode), "JPEG", **save)
    fast = _decode_plain_jpeg(data, min_side)
    assert fast is not None  # simplejpeg decoded it, not the fallback
    reference = np.array(load_image(data, min_side=min_side))
    assert fast.dtype == np.uint8 and fast.shape == reference.shape
    assert np.array_equal(fast, reference)
    assert np.array_equal(load_pixels(data, min_side=min_side), reference)


def test_jpegs_simplejpeg_does_not_decode_alike_go_through_pillow(tmp_path):
    from retrieval.images import _decode_plain_jpeg, load_pixels

    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(smooth_photo((40, 20)), "JPEG", exif=exif.tobytes())
    cmyk = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")
    png = encode(smooth_photo((30, 20)), "PNG")
    for data in (rotated, cmyk, png):
        assert _decode_plain_jpeg(data, None) is None
        assert np.array_equal(load_pixels(data), np.array(load_image(data)))
    assert load_pixels(rotated).shape == (40, 20, 3)  # upright, as load_image turns it

    # Damaged or missing input: load_image's error, naming the file.
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(encode(smooth_photo((64, 64)), "JPEG")[:300])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg: corrupt or truncated"):
        load_pixels(truncated)
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_pixels(tmp_path / "absent.jpg")


def test_decoding_in_many_threads_leaves_the_process_warning_filters_as_they_were():
    import threading
    import warnings

    # Between the pixel limit and twice it, Pillow warns; vmem turns that warning into an error for the
    # call. Done unguarded from several threads (the server's, the decode pool's), that left the "error"
    # filter installed for the whole process on every run of this test.
    over_the_limit, fine = png_declaring(10_000, 7_000), encode(Image.new("RGB", (8, 8)), "PNG")
    refused: list[str] = []
    before = list(warnings.filters)

    def decode_both() -> None:
        for _ in range(200):
            with pytest.raises(ImageDecodeError) as exc:
                load_image(over_the_limit)
            refused.append(str(exc.value))
            load_image(fine)

    threads = [threading.Thread(target=decode_both) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before
    assert len(refused) == 1600 and all("too large" in r for r in refused)


def test_a_jpeg_over_the_pixel_limit_is_refused_by_either_decoder(monkeypatch):
    from retrieval import images
    from retrieval.images import load_pixels

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_pixels(encode(smooth_photo((20, 20)), "JPEG"))


@pytest.mark.realdata
def test_real_imagenet_jpegs_decode_alike_with_either_decoder(tiny_imagenet, monkeypatch):
    from retrieval import images
    from retrieval.images import load_pixels

    paths = sorted((tiny_imagenet / "val").glob("*/*.JPEG"))[::25]  # 404 images, grey ones among them
    assert len(paths) > 300
    fast = [load_pixels(p) for p in paths]
    monkeypatch.setattr(images, "JPEG_DECODER", "pillow")
    assert all(np.array_equal(a, load_pixels(p)) for a, p in zip(fast, paths, strict=True))
    assert any(Image.open(p).mode == "L" for p in paths)


# ---------------------------------------------------------------- photo folders as phones, cameras and OSes make them

def test_a_camera_jpeg_with_a_preview_block_is_decoded_small_as_any_jpeg(tmp_path):
    """Sony, Panasonic and Canon JPEGs carry an MPF preview, and Pillow opens them as "MPO": they were decoded at
    full size (11 times as long for a 12 MP photo) where a plain JPEG is decoded at the scale the model needs."""
    from retrieval.images import load_pixels

    photo = smooth_photo((2000, 1500))
    path = tmp_path / "DSC0001.JPG"
    photo.save(path, format="MPO", save_all=True, append_images=[photo.resize((640, 480))])
    with Image.open(path) as opened:
        assert opened.format == "MPO"
    assert load_image(path, min_side=256).size == (500, 375)  # the 1/4 draft, as a plain JPEG of this size gets
    plain = tmp_path / "plain.jpg"
    photo.save(plain, format="JPEG")
    assert np.array_equal(load_pixels(path, min_side=256), np.asarray(load_image(plain, min_side=256)))


def test_a_link_that_loops_is_skipped_with_its_reason_and_the_good_images_beside_it_stay(tmp_path, caplog):
    from retrieval import scan_imagefolder
    from retrieval.ingest import images_as_label

    cats = tmp_path / "photos" / "cat"
    cats.mkdir(parents=True)
    (cats / "a.jpg").write_bytes(make_image())
    (cats / "loop.jpg").symlink_to("loop.jpg")  # before Python 3.13, resolve() raised RuntimeError: the build died
    assert sorted(Path(it.source).name for it in scan_imagefolder(tmp_path / "photos")) == ["a.jpg", "loop.jpg"]
    assert len(images_as_label(cats, "cat")) == 2
    assert any("to no file" in r.getMessage() and "loop.jpg" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImageDecodeError, match="a symbolic link that leads to no file"):
        load_image(cats / "loop.jpg")


def test_files_and_folders_an_os_or_nas_leaves_among_photos_are_passed_over_unsaid(tmp_path, caplog):
    from retrieval import scan_imagefolder

    root = tmp_path / "photos"
    for folder in ("cat", "cat/@eaDir/a.jpg", "@eaDir", "__MACOSX/cat"):
        (root / folder).mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(make_image())
    (root / "cat" / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_M.jpg").write_bytes(make_image())  # Synology's thumbnails
    (root / "@eaDir" / "x.jpg").write_bytes(make_image())
    for junk in ("Thumbs.db", "desktop.ini", "Icon\r"):
        (root / "cat" / junk).write_bytes(b"\0" * 8)
    items = scan_imagefolder(root)
    assert [(Path(it.source).name, it.label) for it in items] == [("a.jpg", "cat")]  # no @eaDir or __MACOSX class
    assert not [r for r in caplog.records if "left out" in r.getMessage()]


def test_photos_in_formats_vmem_does_not_decode_are_named_first_with_what_to_do(tmp_path, caplog):
    from retrieval import scan_imagefolder
    from retrieval.images import UNDECODED_PHOTO_SUFFIXES

    cats = tmp_path / "photos" / "cat"
    cats.mkdir(parents=True)
    (cats / "a.jpg").write_bytes(make_image())
    for name in ("0_notes.pages", "1_scan.xcf", "2_draft", "IMG_0001.HEIC", "IMG_0002.HEIC"):
        (cats / name).write_bytes(b"\0" * 8)
    scan_imagefolder(tmp_path / "photos")
    [warning] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "5 files not named as images left out (IMG_0001.HEIC, IMG_0002.HEIC, 0_notes.pages, ...)" in warning
    assert "2 of them are .heic, which vmem does not decode: convert them to JPEG" in warning
    assert ".heic" in UNDECODED_PHOTO_SUFFIXES
    (cats / "renamed.jpg").write_bytes((cats / "IMG_0001.HEIC").read_bytes())
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        load_image(cats / "renamed.jpg")
    with pytest.raises(ImageDecodeError, match=r"vmem does not decode \.heic photos; convert them to JPEG"):
        load_image(cats / "IMG_0001.HEIC")


def test_a_folder_given_one_label_names_what_it_left_out(tmp_path, caplog):
    from retrieval.ingest import DatasetError, images_as_label

    heic = tmp_path / "heic"
    heic.mkdir()
    (heic / "IMG_0001.HEIC").write_bytes(b"\0" * 8)
    with pytest.raises(DatasetError, match=r"holds no images vmem reads: 1 file .* convert it to JPEG"):
        images_as_label(heic, "cat")
    assert not [r for r in caplog.records if "left out" in r.getMessage()]  # said once, in the error


@pytest.mark.skipif("AVIF" not in __import__("retrieval.images").images.IMAGE_FORMATS,
                    reason="this Pillow decodes no AVIF")
def test_avif_decodes_where_pillow_can(tmp_path):
    path = tmp_path / "saved-from-the-web.avif"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(path)
    assert load_image(path).size == (40, 30)


def test_a_pillow_that_has_not_heard_of_avif_reads_the_other_formats_without_a_warning():
    """Pillow knows the name from 11.2 and vmem allows 10.3: asked of it by name, an older one warned "Unknown
    feature 'avif'" at every command."""
    older_pillow = ("from PIL import features; features.modules.pop('avif', None); import retrieval.images as images; "
                    "print(images.FORMAT_NAMES)")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", older_pillow], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "JPEG, PNG, WebP, GIF, BMP, TIFF or ICO\n"


def test_a_progressive_jpeg_of_endless_scans_is_refused_before_it_is_decoded():
    """Each scan is a pass over every block: 1,000 of them in 220 kB held a decoding thread 7.6 s, and classify
    takes an upload without a key."""
    from retrieval.images import MAX_JPEG_SCANS, load_pixels

    for progressive in (True, False):  # a baseline JPEG's decoder reads every scan too (the review's bypass)
        normal = encode(smooth_photo((320, 240)).convert("L"), "JPEG", progressive=progressive)
        assert load_image(normal).size == (320, 240)  # 1 to ~10 scans, as encoders write them
        last_scan = normal.rindex(b"\xff\xda")
        endless = normal[:last_scan] + normal[last_scan:-2] * (MAX_JPEG_SCANS + 1) + b"\xff\xd9"
        for decode in (load_image, load_pixels):
            with pytest.raises(ImageDecodeError, match=r"a JPEG of 1\d\d scans \(the limit is 100"):
                decode(endless)


def test_scans_are_counted_as_libjpeg_finds_them_whatever_lies_between_segments():
    """Stray bytes, 0xFF00 pairs and lengths under 2 between segments: libjpeg skips them and reads every scan,
    and a walk that stopped at them counted 0 of 1,000 (the second diff review; 4.5-9.6 s a file)."""
    from retrieval.images import MAX_JPEG_SCANS, jpeg_scans

    normal = encode(smooth_photo((320, 240)).convert("L"), "JPEG", progressive=True)
    last_scan = normal.rindex(b"\xff\xda")
    endless = normal[:last_scan] + normal[last_scan:-2] * (MAX_JPEG_SCANS + 1) + b"\xff\xd9"
    first_scan = endless.index(b"\xff\xda")
    for trick in (b"\x00", b"\xff\x00", b"\xff\xe5\x00\x00", b"\xff\xfe\x00\x04ab\x00", b"\xff" * 2_500):
        tricked = endless[:first_scan] + trick + endless[first_scan:]
        assert jpeg_scans(tricked) > MAX_JPEG_SCANS, trick
        with pytest.raises(ImageDecodeError, match="scans"):
            load_image(tricked)
    # Fill bytes before a marker are no segments: a valid JPEG with many is read
    padded = normal[:first_scan] + b"\xff" * 2_500 + normal[first_scan:]
    assert load_image(padded).size == (320, 240)


def test_scans_are_counted_by_the_jpegs_own_markers():
    from retrieval.images import jpeg_scans

    photo = smooth_photo((320, 240))
    assert jpeg_scans(encode(photo, "JPEG")) == 1 and jpeg_scans(encode(photo, "JPEG", progressive=True)) == 10
    # A motion photo's video after the image's end holds 0xFFDA now and then: no scan of the image, and the
    # photo is decoded (a raw count of the bytes had refused it)
    video = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    motion = encode(photo, "JPEG", progressive=True) + video
    assert video.count(b"\xff\xda") > 5 and jpeg_scans(motion) == 10 and load_image(motion).size == (320, 240)
    assert jpeg_scans(b"not a jpeg") == 0
    # Restart markers inside a scan are its data; thousands of tiny segments are refused, not walked for seconds
    baseline = encode(photo.convert("L"), "JPEG")
    assert jpeg_scans(baseline[:-2] + b"\xff\xd0" * 100_000 + b"\xff\xd9") == 1
    first_scan = baseline.index(b"\xff\xda")
    comments = baseline[:first_scan] + b"\xff\xfe\x00\x02" * 3_000 + baseline[first_scan:]
    with pytest.raises(ImageDecodeError, match="a JPEG of more than 2,000 marker segments"):
        load_image(comments)


def test_a_jpeg_past_the_pixel_limit_is_read_at_a_reduced_scale_where_one_is_asked_for(monkeypatch):
    """A 108 or 200 MP phone photo had been refused, though decoded at 1/8 it is 3 MP: the limit is on what is
    decoded. Here the limits are scaled down: 10,000 pixels decoded, a JPEG of up to 40,000 read reduced."""
    from retrieval import images
    from retrieval.images import load_pixels

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(images, "MAX_JPEG_PIXELS", 40_000)
    photo = encode(smooth_photo((200, 160)), "JPEG")  # 32,000 pixels
    for decode in (load_image, load_pixels):
        assert np.asarray(decode(photo, min_side=32)).shape == (40, 50, 3)  # its 1/4 draft, 2,000 pixels
        with pytest.raises(ImageDecodeError, match="too large"):
            decode(photo)  # at full size (a thumbnail's own decode asks for its size)
    with pytest.raises(ImageDecodeError, match="too large"):  # other formats have no reduced decode
        load_image(encode(smooth_photo((200, 160)), "PNG"), min_side=32)
    with pytest.raises(ImageDecodeError, match="too large"):  # past 40,000 even reduced
        load_image(encode(smooth_photo((250, 200)), "JPEG"), min_side=32)
    with pytest.raises(ImageDecodeError, match="too large"):  # a progressive one holds every block while decoding
        load_image(encode(smooth_photo((200, 160)), "JPEG", progressive=True), min_side=32)
    assert Image.MAX_IMAGE_PIXELS == 64_000_000  # Pillow's own guard as it was


def test_a_folder_reached_through_two_links_is_walked_through_the_first_by_name_whatever_the_disk_lists_first(
        tmp_path, monkeypatch):
    import os

    from retrieval.images import files_under

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.jpg").write_bytes(make_image())
    asked = tmp_path / "asked"
    asked.mkdir()
    for name in ("alpha", "zeta"):
        (asked / name).symlink_to(shared)
    real_scandir = os.scandir

    class ReverseListing:  # a file system that lists a folder's entries in another order than by name (ext4 does)
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = iter(sorted(it, key=lambda e: e.name, reverse=True))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

    monkeypatch.setattr(os, "scandir", ReverseListing)
    # The image is listed (and vmem classify shows it, --truth-from-dirs labels it) as under alpha on every machine
    assert files_under(asked) == [asked / "alpha" / "a.jpg"]
