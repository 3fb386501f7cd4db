"""Decoding images safely: one function that every path (ingest, CLI, HTTP) goes through.

Odd but valid images (CMYK, 16-bit, palette with transparency, animated, EXIF-rotated,
grayscale, tiny, very wide) come out as plain RGB; hostile ones (truncated, not an image, formats
outside IMAGE_FORMATS such as PostScript, decompression bombs) raise `ImageDecodeError` with a message
a person can act on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .text import counted, visible

log = logging.getLogger(__name__)

# A 64-megapixel ceiling: far above any photo a classifier needs, far below a bomb.
MAX_IMAGE_PIXELS = 64_000_000
# A JPEG's scans each pass over every block, and a decoder takes as many as the file holds, progressive or not: a
# 220 kB file of 1,000 empty scans held a thread 7.6 s, a 20 MiB upload would hold one for hours. Encoders write at
# most ~20 (progressive 10, CMYK 18, an MPO's two frames 20); libjpeg-turbo suggests refusing past 500. Counted by
# the file's own markers (`jpeg_scans`).
MAX_JPEG_SCANS = 100
# PIL's own guard (a warning past the limit, an error past twice it) agrees with ours.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# A JPEG asked for at a model's scale is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's draft): a 108 or 200 MP
# phone photo, refused before, decodes to 3 MP. Taken up to this header size, when what is decoded is within
# MAX_IMAGE_PIXELS, and when it is one scan: a progressive or multi-scan JPEG holds every block's coefficients
# whole while it decodes (1.5 GB at 256 MP), and passes over all of them at each scan.
MAX_JPEG_PIXELS = 4 * MAX_IMAGE_PIXELS
# The formats decoded; Pillow would otherwise try every plugin it has, EPS among them, which runs Ghostscript
# on the bytes of any upload that starts like PostScript.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib", ".gif",
                            ".tif", ".tiff", ".ico"})
# AVIF (images saved from the web) where this Pillow decodes it (its wheels do from 11.3; vmem allows Pillow 10.3).
# Asked of the module: a Pillow before 11.2 has not heard of it, and `features.check` warned so at every command.
with contextlib.suppress(ValueError):
    if features.check_module("avif"):
        IMAGE_FORMATS += ("AVIF",)
        IMAGE_SUFFIXES |= {".avif"}
# How `load_image`'s errors name the formats.
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF" + (", ICO or AVIF" if "AVIF" in IMAGE_FORMATS else " or ICO")
# A camera's JPEG with an MPF block (a preview: Sony, Panasonic, Canon) opens as "MPO": a JPEG all the same, and
# decoded as one (at full size, without the draft, it took 11 times as long).
JPEG_FORMATS = ("JPEG", "MPO")
# Photos in formats vmem does not decode (HEIC from iPhones, camera RAW): said so, with what to do, when a folder
# holds them.
UNDECODED_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                                      ".raf", ".orf", ".rw2", ".pef", ".srw"}) - IMAGE_SUFFIXES
# What operating systems and NAS boxes leave in photo folders: never images, never worth a word.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"})
SYSTEM_FOLDERS = frozenset({"@eadir", "#recycle", "#snapshot", "$recycle.bin", "system volume information",
                            "__macosx", "lost+found"})
# Files a dataset's folders often hold beside the images (annotations, notes): not worth a warning when left out.
TEXT_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".md", ".yaml", ".yml", ".html"})

ImageInput = str | Path | bytes | bytearray | Image.Image | np.ndarray

# Who decodes plain JPEGs for `load_pixels`: "simplejpeg" (the default), or "pillow" (before 2026-12, and
# what `vmem bench featurize --jpeg-decoders` compares it with). Both give the same pixels.
JPEG_DECODER = "simplejpeg"
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """The input could not be decoded into an image."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: scale to 8 bits instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            # Full range, as a viewer shows it: scaled by its own maximum, one image's brightness depended on
            # its content (a dark crop came out as bright as the whole).
            top = 65535.0
        else:
            # 32-bit integers and floats have no fixed range. Float images in [0, 1] (scientific TIFFs) are
            # scaled up: cast as they are, they were black.
            top = 1.0 if img.mode == "F" and 0 < hi <= 1.0 else hi if hi > 255 else 255.0
        arr = arr / top * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        # Composite transparency onto white, as a viewer would show it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageInput, min_side: int | None = None, name: str | None = None) -> Image.Image:
    """Decode a path, bytes or PIL image into an RGB image, upright per its EXIF tag.

    Args:
        source: a file path (str or Path), the encoded bytes, or an already decoded PIL image.
        min_side: a JPEG whose shorter side is at least twice this is decoded at 1/2, 1/4 or 1/8 of its
            size (libjpeg's DCT scaling: far less work), the shorter side staying >= min_side.
        name: what errors call the image: its path if not given, or "upload" for bytes (where a caller read or
            opened the file itself, its name).

    Returns:
        An RGB `PIL.Image.Image`; animated images give their first frame.

    Raises:
        ImageDecodeError: empty input, not an image, truncated data, or more than
            `MAX_IMAGE_PIXELS` pixels.
    """
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = image_from_array(source)
    elif not isinstance(source, str | Path | bytes | bytearray):
        raise TypeError(f"an image is a path, bytes, a PIL image or a numpy array, not {type(source).__name__}")
    else:
        if isinstance(source, bytes | bytearray):
            if not source:
                raise ImageDecodeError("the image is empty (0 bytes)")
            fp: io.BytesIO | Path = io.BytesIO(source)
            name = name or "upload"
        else:
            if isinstance(source, str) and "://" in source:
                # Path() would collapse the // and say "no such file" of a mangled name
                raise ImageDecodeError(f"{source}: a URL, and vmem reads images from files, bytes or arrays, not "
                                       "from the network: download it first")
            fp = Path(os.path.expanduser(source))  # a notebook has no shell to expand ~ (`~name` no user: as is)
            name = name or str(fp)
            if fp.is_dir():
                raise ImageDecodeError(f"{name}: a directory, not an image file")
            if not fp.is_file():
                if fp.is_symlink():  # its target is gone, or it loops: "no such file" of a file the user sees
                    raise ImageDecodeError(f"{name}: a symbolic link that leads to no file (its target is missing, "
                                           "or the link loops)")
                raise ImageDecodeError(f"{name}: no such file")
            if fp.stat().st_size == 0:
                raise ImageDecodeError(f"{name}: the file is empty (0 bytes)")
        try:
            img = _open_within_limit(fp, name, min_side)
            img.load()
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(
                f"{name}: image too large to decode safely (the limit is {MAX_IMAGE_PIXELS:,} pixels)"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(f"{name}: not a recognised image format ({FORMAT_NAMES})"
                                   + _conversion_hint(name)) from exc
        except PermissionError as exc:  # the file may be fine: the reader is not let in
            raise ImageDecodeError(f"{name}: permission denied: the file cannot be read by this user") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose an otherwise good image
        img = ImageOps.exif_transpose(img) or img
    if img.width < 1 or img.height < 1:
        raise ImageDecodeError("the image has no pixels")
    return _to_rgb(img)


def image_from_array(pixels: np.ndarray) -> Image.Image:
    """An image from pixels as a notebook holds them: [height, width], [height, width, 3] or [..., 4] (alpha).

    uint8 as they are; uint16 from their full range; floats in [0, 1] (a tensor's convention) scaled to 0..255,
    other floats taken as 0..255; booleans black and white. ImageDecodeError for other shapes, such as a
    channels-first [3, height, width] tensor, and for values outside those ranges.
    """
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        hint = " (channels first? pass array.transpose(1, 2, 0))" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ImageDecodeError(f"an image array is [height, width], [height, width, 3] or [height, width, 4], "
                               f"not {list(pixels.shape)}{hint}")
    if arr.size == 0:
        raise ImageDecodeError("the image has no pixels")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)  # as a 16-bit image file is read
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageDecodeError("the image array holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        top = 1.0 if hi <= 1.0 else 255.0
        if lo < 0 or hi > 255:
            raise ImageDecodeError(f"the image array's values run from {lo:g} to {hi:g}: give 0..1 or 0..255 "
                                   "(normalised pixels? undo the normalisation first)")
        arr = np.rint(arr * (255.0 / top)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ImageDecodeError(f"an image array holds numbers, not {arr.dtype}")
        if arr.min() < 0 or arr.max() > 255:
            raise ImageDecodeError(f"the image array's {arr.dtype} values run from {arr.min()} to {arr.max()}: "
                                   "give 0..255, or uint16")
        arr = arr.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


# catch_warnings saves the process's whole warning-filter list on entry and puts it back on exit: two threads
# interleaving leave one's "error" filter installed for good, or drop a filter set in between. Held around
# the header read only (open decodes nothing), so decoding itself stays parallel.
_WARNING_FILTERS_LOCK = threading.Lock()


def _open_within_limit(fp: io.BytesIO | Path, name: str, min_side: int | None = None) -> Image.Image:
    """Pillow's lazy open (the header only), at its first frame and, for a JPEG with `min_side`, at the draft
    scale that keeps both sides at least that; refused where more than MAX_IMAGE_PIXELS would be decoded, before
    anything is."""
    with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
        # Pillow warns (rather than raises) between its limit and twice it; here that is an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Its guard raised for the header read alone, where a JPEG may be drafted: the check below is the limit.
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_JPEG_PIXELS if min_side else MAX_IMAGE_PIXELS
        try:
            img = Image.open(fp, formats=IMAGE_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = before
    w, h = img.size
    img.seek(0)
    scans = 1
    if img.format in JPEG_FORMATS:
        try:
            scans = jpeg_scans(fp.getvalue() if isinstance(fp, io.BytesIO) else fp.read_bytes())
        except TooManySegmentsError as exc:
            img.close()
            raise ImageDecodeError(f"{name}: {exc} (cameras and editors write tens): re-save it as a JPEG") from None
        if scans > MAX_JPEG_SCANS:
            img.close()
            raise ImageDecodeError(f"{name}: a JPEG of {scans:,} scans (the limit is {MAX_JPEG_SCANS}; cameras and "
                                   "editors write at most about 20): re-save it as a JPEG")
        if min_side and w * h <= MAX_JPEG_PIXELS and scans <= 1:
            img.draft(None, (min_side, min_side))  # its size is now what will be decoded
    if img.width * img.height > MAX_IMAGE_PIXELS or (scans > 1 and w * h > MAX_IMAGE_PIXELS):
        img.close()
        raise ImageDecodeError(f"{name}: {w}x{h} pixels is too large (the limit is {MAX_IMAGE_PIXELS:,} pixels"
                               + (f"; a JPEG of one scan up to {MAX_JPEG_PIXELS:,} is read at a reduced scale"
                                  if min_side else "") + ")")
    return img


# Markers that stand alone, with no length after them: TEM and the restart markers RST0-7.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
# Where a scan's entropy-coded data ends: a 0xFF (after any fill 0xFFs) followed by neither 0x00 (stuffing) nor a
# restart marker. Searched in C: a Python loop over millions of restart markers took seconds.
_END_OF_ENTROPY_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# libjpeg's next_marker: the next 0xFF (the last of a run) followed by neither 0x00 nor 0xFF.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff]")
# Real JPEGs have tens of marker segments (APPn, tables, frames, scans); millions of tiny ones only cost time.
MAX_JPEG_SEGMENTS = 2_000


class TooManySegmentsError(ValueError):
    """A JPEG of more than MAX_JPEG_SEGMENTS marker segments."""


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS segments) libjpeg reads in a JPEG, its markers found as libjpeg finds them (next_marker
    skips stray bytes, fill 0xFFs and 0xFF00 between segments; a length under 2 skips nothing), up to EOI.
    TooManySegmentsError past MAX_JPEG_SEGMENTS segments."""
    if not data.startswith(b"\xff\xd8"):
        return 0
    pos, scans, segments, end = 2, 0, 0, len(data)
    while (found := _NEXT_MARKER.search(data, pos)) is not None:
        pos = found.start()
        marker = data[pos + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise TooManySegmentsError(f"a JPEG of more than {MAX_JPEG_SEGMENTS:,} marker segments")
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE_MARKERS or marker == 0xD8:
            pos += 2
            continue
        if pos + 4 > end:
            break
        pos += 2 + max(2, int.from_bytes(data[pos + 2 : pos + 4], "big"))
        if marker == 0xDA:
            scans += 1
            if (found := _END_OF_ENTROPY_DATA.search(data, pos)) is None:
                break
            pos = found.start()
    return scans


def load_pixels(source: ImageInput, min_side: int | None = None, name: str | None = None) -> np.ndarray:
    """`load_image` as a uint8 RGB array [height, width, 3]: the same pixels, plain JPEGs decoded faster.

    A plain JPEG (colour or grey, upright, within the pixel limit) is decoded by simplejpeg straight into
    the array, with the scale `load_image`'s draft picks. Both use libjpeg-turbo with the same IDCT and
    upsampling, so the pixels are the same (tested), but simplejpeg works in one call without the GIL:
    two threads decode a 500x375 photo and resize it in 0.8 ms against 1.2 ms through Pillow. Anything
    else (other formats, CMYK, EXIF-rotated, damaged) goes through `load_image`, errors included.
    """
    if JPEG_DECODER == "simplejpeg" and isinstance(source, str | Path | bytes | bytearray):
        pixels = _decode_plain_jpeg(source, min_side)
        if pixels is not None:
            return pixels
    return np.array(load_image(source, min_side, name), dtype=np.uint8)


def _decode_plain_jpeg(source: str | Path | bytes | bytearray, min_side: int | None) -> np.ndarray | None:
    """The pixels of a plain JPEG via simplejpeg; None for anything `load_image` must handle."""
    try:
        if isinstance(source, bytes | bytearray):
            data = bytes(source)
        else:
            with open(source, "rb") as f:
                if f.read(3) != _JPEG_MAGIC:
                    return None
                data = _JPEG_MAGIC + f.read()
        if not data.startswith(_JPEG_MAGIC):
            return None
        # The size first, from simplejpeg: within the limit, Pillow's open below has no bomb warning to give,
        # so it needs neither catch_warnings nor the lock around it that _open_within_limit takes.
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or w * h > MAX_IMAGE_PIXELS or jpeg_scans(data) > MAX_JPEG_SCANS:
            return None
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # the header only: no pixels yet
            if (img.format not in JPEG_FORMATS or img.mode not in ("RGB", "L") or img.size != (w, h)
                    or img.getexif().get(_EXIF_ORIENTATION, 1) != 1):
                return None
        # Pillow's draft: the largest of 1/8, 1/4, 1/2 that keeps both sides >= min_side.
        scale = min(w // min_side, h // min_side) if min_side else 1
        s = next((f for f in (8, 4, 2) if scale >= f), 1)
        size = (-(-h // s), -(-w // s))
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size[0], min_width=size[1])
    except Exception:  # unreadable, damaged or unusual: load_image decodes it or says what is wrong
        return None
    return pixels if pixels.shape == (*size, 3) else None


def failure_line(source: str, reason: str, escaped: bool = False) -> str:
    """`SOURCE: REASON` for an image that failed, naming the source once (load_image's reasons start with it).
    With `escaped`, the source is the raw path (any bytes, any characters) and is named by `visible`: once, here,
    so that a name not UTF-8 and one with U+202E read alike, each as itself."""
    shown = visible(source) if escaped else source
    for prefix in (f"{source}: ", f"{Path(source)}: "):
        if reason.startswith(prefix):
            return f"{shown}: {reason.removeprefix(prefix)}"
    return f"{shown}: {reason}"


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted, through links to folders too (`Path.rglob` does not follow them before
    Python 3.13: images in a linked sub-folder were dropped without a word). A folder reached twice (a link
    loop, or two links to one place) is walked once, through the path first by name (walked in the order the disk
    lists folders, the path an image was shown by, and --truth-from-dirs labelled it by, changed from machine to
    machine). Hidden folders below it are not walked, as hidden files are no images (`is_image_path`)."""
    seen: set[str] = set()
    found: list[Path] = []
    unreadable: list[OSError] = []  # os.walk skips a folder it may not list: its class vanished from a build unsaid
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable.append):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # .thumbs, .ipynb_checkpoints, a NAS's @eaDir of thumbnails, a zip's __MACOSX: not the images
        dirnames[:] = sorted(d for d in dirnames if not is_system_folder(d))
        found += [Path(dirpath) / name for name in filenames]
    if unreadable:
        shown = "; ".join(f"{visible(str(e.filename))}: {e.strerror}" for e in unreadable[:3])
        log.warning("%s could not be read, and the images in %s are left out: %s%s",
                    counted(len(unreadable), "folder"), "it" if len(unreadable) == 1 else "them", shown,
                    "; ..." if len(unreadable) > 3 else "")
    return sorted(found)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def is_system_folder(name: str) -> bool:
    """A hidden folder, or one an OS or NAS makes beside photos (Synology's `@eaDir` of thumbnails, a zip's
    `__MACOSX`, Windows' `$RECYCLE.BIN`): no class, and none of its files an image of the folder above."""
    return name.startswith(".") or name.lower() in SYSTEM_FOLDERS


def is_unread_file(path: Path) -> bool:
    """A file a folder walk leaves out that a user may have meant as an image (no suffix, .heic, ...): worth
    naming, so that a folder of them does not vanish unsaid. Hidden, text and system files are not."""
    return (not is_image_path(path) and not path.name.startswith(".") and path.suffix.lower() not in TEXT_SUFFIXES
            and path.name.lower() not in SYSTEM_FILES)


def _conversion_hint(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return f": vmem does not decode {suffix} photos; convert them to JPEG" if suffix in UNDECODED_PHOTO_SUFFIXES else ""


def unread_files_message(unread: Sequence[Path]) -> str:
    """One warning for the files a folder walk left out: photos in formats vmem does not decode named first (a
    folder's Thumbs.db had hidden them behind "..."), each name on one line."""
    photos = [p for p in unread if p.suffix.lower() in UNDECODED_PHOTO_SUFFIXES]
    ordered = photos + [p for p in unread if p.suffix.lower() not in UNDECODED_PHOTO_SUFFIXES]
    # A macOS folder's "Icon\r" had moved the terminal's cursor back over the warning
    shown = ", ".join(visible(p.name) for p in ordered[:3]) + (", ..." if len(unread) > 3 else "")
    advice = "name a file so, or list it"
    if photos:
        kinds = sorted({p.suffix.lower() for p in photos})
        advice = (f"{len(photos)} of them {'is' if len(photos) == 1 else 'are'} {'/'.join(kinds)}, which vmem does not "
                  f"decode: convert {'it' if len(photos) == 1 else 'them'} to JPEG" + (
                      f"; for the others, {advice}" if len(photos) < len(unread) else ""))
    return (f"{counted(len(unread), 'file')} not named as images left out ({shown}): vmem reads "
            f"{', '.join(sorted(s for s in IMAGE_SUFFIXES))} files in a folder; {advice}")
