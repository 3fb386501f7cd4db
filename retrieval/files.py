"""Writing a file so that readers, and a crash, see the old contents or the new, never a torn mix."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomically(path: str | Path, data: bytes | str | Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Replace `path` with `data` (bytes, text as UTF-8, or a function writing to a binary file).

    A temporary file beside it is written, then renamed over it. With `durable` the temporary file is
    flushed to disk before the rename and the directory after it, so that a power loss cannot leave
    an empty file under the new name (a rename can reach the disk before the data it names).
    The temporary file is made with open(), so the result has the usual permissions (umask), as
    write_text's would: a memory directory may be read by a service running as another user.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
