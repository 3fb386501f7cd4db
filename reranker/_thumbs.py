"""Neighbour thumbnails: decoded, resized and JPEG-encoded once, then reused by every query citing them.

A popular memory image appears among the neighbours of many queries; decoding a full-size JPEG
costs milliseconds, a cache hit microseconds (see `vmem bench rerank`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from retrieval import ImageDecodeError, load_image
from retrieval.files import OutsideFolders, decodable, is_under, open_under
from retrieval.store import UPLOADS_DIR, kept_upload

DEFAULT_THUMB_SIZE = 224
DEFAULT_QUERY_SIZE = 512
JPEG_QUALITY = 85


class ThumbnailError(Exception):
    """The neighbour's image cannot be shown; the message says why (missing file, remote, corrupt)."""


NOT_KEPT = "uploaded image: only its features were kept (a service keeps it as sent with VMEM_KEEP_UPLOADS=true)"


def encode_jpeg(img: Image.Image, longest_side: int, quality: int = JPEG_QUALITY) -> bytes:
    """Shrink so the longest side is at most `longest_side` (never enlarge) and encode as JPEG."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    scale = longest_side / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def local_path(source: str, roots: Sequence[str] | None = None) -> Path:
    """The file behind a memory point's source, or `ThumbnailError` when it has none (or is outside `roots`)."""
    if source.startswith("file://"):
        path = Path(source[len("file://"):])
    elif source.startswith(("upload:", "mem:")):
        raise ThumbnailError(NOT_KEPT)
    elif "://" in source:
        raise ThumbnailError("remote source is not fetched")
    else:
        path = Path(source)
    if roots is not None and not is_under(path, roots):
        raise ThumbnailError("image outside the memory's source roots")
    return path


def image_file(source: str, roots: Sequence[str] | None = None, point_id: str | None = None,
               keep_uploads_in: str | None = None) -> tuple[Path, Sequence[str] | None]:
    """(the file to show a point's image from, the folders to read it under), or `ThumbnailError`: an upload's
    image is the one a service kept as sent in the memory's folder `keep_uploads_in` (VMEM_KEEP_UPLOADS, by point
    id: `kept_upload`, as `vmem copy` embeds it again), read only under that folder's uploads; any other source's
    is its file under `roots`."""
    if source.startswith("upload:") and point_id is not None and keep_uploads_in is not None:
        if (kept := kept_upload(Path(keep_uploads_in), point_id)) is None:
            raise ThumbnailError(NOT_KEPT)
        return kept, [str(Path(keep_uploads_in) / UPLOADS_DIR)]
    return local_path(source, roots), roots


@dataclass
class ThumbStats:
    hits: int = 0
    decodes: int = 0
    failures: int = 0


class ThumbnailCache:
    """LRU of encoded thumbnails keyed by (path, mtime, size, longest side), bounded in bytes."""

    def __init__(self, longest_side: int = DEFAULT_THUMB_SIZE, max_bytes: int = 128 * 2**20,
                 quality: int = JPEG_QUALITY) -> None:
        self.longest_side = longest_side
        self.quality = quality
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._decoding: dict[tuple, threading.Lock] = {}  # one decoder per key; concurrent askers wait for it
        self.stats = ThumbStats()

    def get(self, source: str, roots: Sequence[str] | None = None, *, point_id: str | None = None,
            keep_uploads_in: str | None = None) -> bytes:
        """JPEG bytes of the thumbnail of `source`, read only from under `roots` when given; of an upload, the image
        kept as sent of point `point_id` in the memory's folder `keep_uploads_in` (`image_file`).

        Raises:
            ThumbnailError: no local file (an upload not kept), outside the roots, file missing, or not decodable.
        """
        path, roots = image_file(source, roots, point_id, keep_uploads_in)
        try:
            st = path.stat()
        except OSError as exc:
            with self._lock:
                self.stats.failures += 1
            raise ThumbnailError(f"image file missing ({exc.strerror or 'not found'})") from exc
        key = (str(path), st.st_mtime_ns, st.st_size, self.longest_side, self.quality)
        data = self._lookup(key)
        if data is not None:
            return data
        with self._lock:
            key_lock = self._decoding.setdefault(key, threading.Lock())
        with key_lock:
            data = self._lookup(key)  # decoded by another thread while this one waited
            if data is not None:
                return data
            try:
                # A big JPEG decodes at a reduced scale (shorter side still >= longest_side): a 12 MP photo's
                # thumbnail is a fraction of the work, and a prompt may need 50 of them at once.
                # Read from the file opened, checked again there: a link swapped in since `local_path` (by whoever
                # may write in an image folder) would lead out of the roots
                if roots is None:
                    image = load_image(path, min_side=self.longest_side)
                else:
                    with open_under(path, roots) as f:
                        image = load_image(decodable(f), min_side=self.longest_side, name=str(path))
                data = encode_jpeg(image, self.longest_side, self.quality)
            except (ImageDecodeError, OutsideFolders, OSError) as exc:
                with self._lock:
                    self.stats.failures += 1
                    self._decoding.pop(key, None)
                raise ThumbnailError("image outside the memory's source roots" if isinstance(exc, OutsideFolders)
                                     else f"image not decodable ({exc})") from exc
            with self._lock:  # stored before the key's lock is dropped, so no one decodes it twice
                self.stats.decodes += 1
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes and self._items:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old)
                self._decoding.pop(key, None)
        return data

    def _lookup(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.stats.hits += 1
            return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.stats = ThumbStats()

    def __len__(self) -> int:
        return len(self._items)
