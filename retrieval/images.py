"""Decoding images safely: one function that every path (ingest, CLI, HTTP) goes through.

Odd but valid images (CMYK, 16-bit, palette with transparency, animated, EXIF-rotated,
grayscale, tiny, very wide) come out as plain RGB; hostile ones (truncated, not an image, formats
outside IMAGE_FORMATS such as PostScript, decompression bombs) raise `ImageDecodeError` with a message
a person can act on.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 64-megapixel ceiling: far above any photo a classifier needs, far below a bomb.
MAX_IMAGE_PIXELS = 64_000_000
# PIL's own guard (a warning past the limit, an error past twice it) agrees with ours.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# The formats decoded; Pillow would otherwise try every plugin it has, EPS among them, which runs Ghostscript
# on the bytes of any upload that starts like PostScript.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

ImageInput = str | Path | bytes | Image.Image


class ImageDecodeError(ValueError):
    """The input could not be decoded into an image."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: scale to 8 bits instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        arr = arr / hi * 255.0 if hi > 255 else arr
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        # Composite transparency onto white, as a viewer would show it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageInput, min_side: int | None = None) -> Image.Image:
    """Decode a path, bytes or PIL image into an RGB image, upright per its EXIF tag.

    Args:
        source: a file path (str or Path), the encoded bytes, or an already decoded PIL image.
        min_side: a JPEG whose shorter side is at least twice this is decoded at 1/2, 1/4 or 1/8 of its
            size (libjpeg's DCT scaling: far less work), the shorter side staying >= min_side.

    Returns:
        An RGB `PIL.Image.Image`; animated images give their first frame.

    Raises:
        ImageDecodeError: empty input, not an image, truncated data, or more than
            `MAX_IMAGE_PIXELS` pixels.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, bytes | bytearray):
            if not source:
                raise ImageDecodeError("the image is empty (0 bytes)")
            fp: io.BytesIO | Path = io.BytesIO(source)
            name = "upload"
        else:
            fp = Path(source)
            name = str(fp)
            if fp.is_dir():
                raise ImageDecodeError(f"{name}: a directory, not an image file")
            if not fp.is_file():
                raise ImageDecodeError(f"{name}: no such file")
            if fp.stat().st_size == 0:
                raise ImageDecodeError(f"{name}: the file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp, formats=IMAGE_FORMATS)
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(
                        f"{name}: {w}x{h} pixels is too large (the limit is {MAX_IMAGE_PIXELS:,} pixels)"
                    )
                img.seek(0)
                if min_side and img.format == "JPEG":
                    img.draft(None, (min_side, min_side))
                img.load()
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(
                f"{name}: image too large to decode safely (the limit is {MAX_IMAGE_PIXELS:,} pixels)"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(f"{name}: not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF "
                                   "or ICO)") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose an otherwise good image
        img = ImageOps.exif_transpose(img) or img
    if img.width < 1 or img.height < 1:
        raise ImageDecodeError("the image has no pixels")
    return _to_rgb(img)


def failure_line(source: str, reason: str) -> str:
    """`SOURCE: REASON` for an image that failed, naming the source once (load_image's reasons start with it)."""
    for prefix in (f"{source}: ", f"{Path(source)}: "):
        if reason.startswith(prefix):
            return f"{source}: {reason.removeprefix(prefix)}"
    return f"{source}: {reason}"


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
