"""An embedded memory's counts kept beside it, for the commands that only read them (vmem info, labels).

Opening the engine to count takes seconds on a large memory (4-5 s at 300,000 points; docs/benchmarks.md), most
of it the engine loading its segments, for figures that have not changed since the memory was last closed. So
each close writes them to COUNTS_FILE with a fingerprint of the engine's files as the close left them, and a
reader takes them only where both still hold:

* every opening removes the file before the engine touches its files (under the exclusive open lock): a process
  killed between an edit and its close leaves none, and a memory held open has none;
* the fingerprint (each file's and folder's inode, size, mtime and ctime under `shard/`, and vmem.json's) must
  match the files as they are: any opening by the engine rewrites some of them, even one that edits nothing (each
  segment's segment.json is written anew, a new inode, whatever the clock's granularity), so a vmem that does not
  know this file (an older one), or a program opening the shard itself, leaves counts that no longer match, and
  are not used.

Anything else (no file, one this vmem cannot read, a mismatch) answers None: the caller opens the memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .files import read_small_file, write_atomically

log = logging.getLogger(__name__)

COUNTS_FILE = ".vmem-counts.json"
# The files the fingerprint covers, besides every entry under the shard's folder (as store.py names them)
_FINGERPRINTED = ("vmem.json", "original-rows.bin")
_SHARD = "shard"
# The most a counts file is read to (a label and its two counts: ~100 bytes; 1M labels fit): past it, the memory is
# opened, as for any file this vmem cannot take
_MOST_COUNTS_BYTES = 256 << 20


class KeptCounts(BaseModel):
    """What a memory held as it was last closed: its points, searchable ones (not excluded by pruning), per label
    (most points first), and its index upkeep (`IndexUpkeep.as_dict`; None where the engine's files were not
    read)."""

    version: int = 1
    points: int
    searchable: int
    per_label: dict[str, int]
    searchable_per_label: dict[str, int]
    index_upkeep: dict[str, Any] | None = None
    files: str = ""  # `files_fingerprint` as the close left the files


def files_fingerprint(folder: Path) -> str | None:
    """A digest of the engine's files in the memory `folder`: each entry's path, inode, size, mtime and ctime (in
    ns). None where they cannot be read."""
    digest = hashlib.sha256()

    def add(path: Path, rel: str) -> None:
        st = os.lstat(path)
        # The name as the file system holds it: one that is not UTF-8 (a file copied from another system) is read
        # by Python with surrogates, which .encode() refuses, and every opening of the memory had failed so
        digest.update(os.fsencode(rel) + f"\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())

    try:
        for name in _FINGERPRINTED:
            with contextlib.suppress(FileNotFoundError):  # original-rows.bin: only a memory that rescores doubtful
                add(folder / name, name)
        shard = folder / _SHARD
        add(shard, _SHARD)
        for root, dirs, files in os.walk(shard, onerror=_raise):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(root) / name
                add(path, str(path.relative_to(folder)))
    except OSError:
        return None
    return digest.hexdigest()


def _raise(exc: OSError) -> None:
    raise exc


def forget_kept_counts(folder: Path) -> None:
    """Remove the counts of a memory being opened, before the engine touches its files: they stand for the memory
    as it was closed, and from here until its next close, they may not. A folder this user cannot write keeps
    them (and the engine cannot open it either)."""
    with contextlib.suppress(OSError):
        (folder / COUNTS_FILE).unlink(missing_ok=True)


def keep_counts(folder: Path, counts: KeptCounts) -> None:
    """Write `counts` for the memory `folder`, whose engine has just been closed (the open lock still held), with
    the fingerprint of its files as they are now. Nothing is written where they cannot be read or the file
    cannot be written (a full disk): the next reader opens the memory."""
    fingerprint = files_fingerprint(folder)
    if fingerprint is None:
        return
    try:
        write_atomically(folder / COUNTS_FILE, counts.model_copy(update={"files": fingerprint}).model_dump_json(),
                         durable=False)  # a power loss leaves an old or no file: its fingerprint decides
    except OSError as exc:
        log.info("the memory's counts were not kept beside it (%s): the next vmem info opens it", exc)


def read_kept_counts(folder: Path) -> KeptCounts | None:
    """The counts kept beside the memory `folder`, where they still stand for its files; else None. The caller
    holds the memory's open lock (shared, at least): no process edits it meanwhile."""
    try:
        # Read only where it is a plain file, not through a link: every opening reads it, in a folder others may
        # write, where a FIFO of its name had held every command that opens the memory (vmem points too) forever
        counts = KeptCounts.model_validate_json(read_small_file(folder / COUNTS_FILE, _MOST_COUNTS_BYTES))
    except (OSError, ValidationError, ValueError):  # ValueError: NotASmallFile too
        return None
    if counts.version != 1 or not counts.files or counts.files != files_fingerprint(folder):
        return None
    return counts
