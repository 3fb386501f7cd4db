"""Named API keys: `VMEM_API_KEYS_FILE`, read again when it changes, beside `VMEM_API_KEY` (named `default`).

One key a line: a name, the key's sha256 in hex, and optionally what it may do (`edit`, `rerank`, comma-separated;
both by default). `#` starts a comment.

    # name   sha256 of the key                                                 may
    alice    5e7f90955ab6db92018dc161092b571c1d6dc39e7ce4abe7a77ade44acbbba62
    kiosk    c70371dce946641c0594d4c49eda0ab7c274c48bc1479c2580b7f9c8f3612622  rerank

The file holds hashes, not keys, so it is no secret to guard (`vmem key NAME` makes a key and its line). Several keys
are valid at once: a key is rotated by adding the new one, moving its clients, then removing the old, with no
restart. The name of the key a request came with is journaled as who made its edits (`by`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from retrieval.files import NotASmallFile, os_error_reason, read_small_file
from retrieval.text import counted

log = logging.getLogger(__name__)

SCOPES = ("edit", "rerank")  # edit: every endpoint that needs a key but a re-ranked classify
DEFAULT_KEY_NAME = "default"  # VMEM_API_KEY's
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
# Far more than any keys file holds (some 12,000 keys): a file past it is not one
_MOST_KEYS_FILE_BYTES = 1 << 20
# A file changed this recently may still be being written (or change again within the clock's tick, its mtime
# unchanged): read again on the next request rather than trusted as read (git's "racy" index entries). Also a file
# read unchanged for this long by the service's own clock: one dated in the future (clock skew, `cp -p`) is never
# changed "over 2 s ago", and was read again on every request with a key.
_SETTLED_S = 2.0


class KeysFileError(ValueError):
    """A keys file that cannot be read, or a line of it that is no key (`line` from 1; None: the whole file)."""

    def __init__(self, path: Path, why: str, line: int | None = None) -> None:
        self.path, self.why, self.line = path, why, line
        super().__init__(f"{path}{f', line {line}' if line else ''}: {why}")


@dataclass(frozen=True)
class ApiKey:
    """A key as the service knows it: its name, its sha256, what it may do."""

    name: str
    digest: bytes
    scopes: frozenset[str]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key_line(name: str, scopes: tuple[str, ...] = ()) -> tuple[str, str]:
    """A new random key and its line for a keys file (which holds only its hash)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is no key name: letters, digits and . _ @ + -, up to 64, a letter or digit first")
    if name == DEFAULT_KEY_NAME:
        raise ValueError(f"the name {name} is taken (VMEM_API_KEY's): give another")
    if unknown := [s for s in scopes if s not in SCOPES]:
        raise ValueError(f"{', '.join(unknown)}: a key may {' or '.join(SCOPES)}")
    key = secrets.token_urlsafe(24)
    return key, " ".join((name, hashlib.sha256(key.encode()).hexdigest(), ",".join(scopes))).rstrip()


def read_keys_file(path: Path) -> list[ApiKey]:
    """The keys of a keys file, read once it is whole as a service serving takes it (`KeyRing`); KeysFileError says
    which line is wrong and how.

    Read at start (settings, the service's keys): a service started while a deploy wrote the file had stopped on its
    cut last line ("rer" is no scope). Read again until the read ends at a line's end and the file did not change
    as it was read, or its last line has not changed for `_SETTLED_S`; refused, saying so, after twice that."""
    started, settling = time.monotonic(), _Settling()
    while True:
        signature = _signature(path)
        text = keys_file_text(path)
        if signature is not None and settling.whole(path, signature, text):
            return keys_in(path, text)
        if time.monotonic() - started > 2 * _SETTLED_S:
            raise KeysFileError(path, f"still being written: it changed as it was read for {2 * _SETTLED_S:g} s; "
                                "start the service again once it is written")
        time.sleep(min(0.05, _SETTLED_S / 4))


def keys_file_text(path: Path) -> str:
    """A keys file's text; KeysFileError where it is not a keys file's size or kind, or cannot be read."""
    try:
        # Only a plain file of a keys file's size (a link to one is fine): a FIFO had been waited on for a writer
        # forever, vmem serve silent at start (or, swapped in while serving, every request with a key)
        text = read_small_file(path, _MOST_KEYS_FILE_BYTES, follow_links=True).decode("utf-8")
    except NotASmallFile as exc:
        raise KeysFileError(path, f"larger than {_MOST_KEYS_FILE_BYTES >> 20} MiB, which no keys file is"
                            if exc.too_large else str(exc)) from None
    except UnicodeDecodeError:
        raise KeysFileError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise KeysFileError(path, f"cannot be read ({os_error_reason(exc)})") from None
    return text


def keys_in(path: Path, text: str) -> list[ApiKey]:
    """The keys of a keys file's `text` (read from `path`, which errors name); KeysFileError says which line is
    wrong and how."""
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise KeysFileError(path, f"{counted(len(fields), 'field')} where a name, the key's sha256 and "
                                "(optionally) what it may do were expected", number)
        name, hashed = fields[:2]
        if not _NAME.fullmatch(name):
            raise KeysFileError(path, f"{name!r} is no key name: letters, digits and . _ @ + -, up to 64", number)
        if name == DEFAULT_KEY_NAME or name in keys:
            raise KeysFileError(path, f"the name {name} is taken" + (
                " (VMEM_API_KEY's)" if name == DEFAULT_KEY_NAME else " by an earlier line"), number)
        if (found := _DIGEST.fullmatch(hashed)) is None:
            # Never echoed: it may be a key pasted where its hash belongs
            raise KeysFileError(path, "the second field is not a sha256 (64 hex digits): the file holds the keys' "
                                "hashes, never the keys (`vmem key NAME` makes a line)", number)
        scopes = frozenset(fields[2].split(",")) if len(fields) == 3 else frozenset(SCOPES)
        if unknown := sorted(scopes - set(SCOPES)):
            raise KeysFileError(path, f"{', '.join(unknown)}: a key may {' or '.join(SCOPES)}", number)
        keys[name] = ApiKey(name, bytes.fromhex(found.group(1)), scopes)
    return list(keys.values())


class _Settling:
    """Whether a keys file read is of the whole file (`read_keys_file` at start, `KeyRing` at each change), and when
    it was first read with a signature (mtime_ns, size, inode): one judgement for both reads."""

    def __init__(self) -> None:
        self._first: tuple[tuple[int, int, int] | None, float] = (None, 0.0)  # a signature, first read when

    def settled(self, signature: tuple[int, int, int] | None) -> bool:
        """Whether the file with this signature has not changed for a while: by its modification time, or first
        read with it that long ago (time.monotonic)."""
        if signature is None:
            return False
        now = time.monotonic()
        if self._first[0] != signature:
            self._first = (signature, now)
        return time.time() - signature[0] / 1e9 > _SETTLED_S or now - self._first[1] > _SETTLED_S

    def whole(self, path: Path, signature: tuple[int, int, int] | None, text: str) -> bool:
        """Whether `text`, read from `path` whose signature was `signature` before, is the whole file: it did not
        change as it was read, and its last line is ended, or has settled."""
        return _signature(path) == signature and (text.endswith("\n") or self.settled(signature))


class KeyRing:
    """The keys the service takes: VMEM_API_KEY's and those of VMEM_API_KEYS_FILE, that file read again when its
    modification time, size or inode changes (a stat per request: about a microsecond). A file turned unreadable
    or malformed keeps the keys read before, says so in the log and in `vmem_api_keys_file_valid`; one read while it
    is still being written keeps them too, and is read again at the next request."""

    def __init__(self, api_key: str | None = None, path: Path | None = None) -> None:
        self._default = (ApiKey(DEFAULT_KEY_NAME, digest(api_key), frozenset(SCOPES)),) if api_key else ()
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of the file as last read
        self._settling = _Settling()
        self._from_file: tuple[ApiKey, ...] = ()
        self.file_valid = True
        self._said: str | None = None  # the last problem logged, said once
        if path is not None:
            self._from_file = tuple(read_keys_file(path))  # at start, a bad file is an error, not a warning
            self._remember(_signature(path))
            _say_if_anyone_may_write(path)

    def keys(self) -> tuple[ApiKey, ...]:
        """Every key valid now."""
        if self.path is not None:
            self._reread_if_changed(self.path)
        return self._default + self._from_file

    def find(self, key: str) -> ApiKey | None:
        """The key `key` is, or None: each known key's hash compared in constant time, all of them."""
        sent, found = digest(key), None
        for known in self.keys():
            if hmac.compare_digest(sent, known.digest):
                found = known
        return found

    def _reread_if_changed(self, path: Path) -> None:
        signature = _signature(path)
        if signature is not None and signature == self._seen:
            return
        with self._lock:
            if (signature := _signature(path)) is not None and signature == self._seen:
                return
            try:
                text = keys_file_text(path)
                if not self._settling.whole(path, signature, text):
                    # Still being written (edited in place: truncated, then written): its last line may be cut, a
                    # key's scopes lost from it (which gave it both), or keys not written yet missing. The keys
                    # read before stay until a read finds it whole: this one is not remembered, so the next
                    # request reads it again; a last line with no newline is taken once the file has settled.
                    log.debug("the API keys file %s is changing as it is read: the keys read before are kept", path)
                    return
                keys = keys_in(path, text)
            except KeysFileError as exc:
                self.file_valid = False
                if str(exc) != self._said:
                    self._said = str(exc)
                    log.error("the API keys file %s; the %d keys read from it before are still taken", exc,
                              len(self._from_file))
                return
            self._remember(signature)
            if keys != list(self._from_file) or not self.file_valid:
                log.warning("API keys read again from %s: %s", path, ", ".join(k.name for k in keys) or "none")
            self._from_file, self.file_valid, self._said = tuple(keys), True, None

    def _remember(self, signature: tuple[int, int, int] | None) -> None:
        """Take the file as read until its signature changes, once it has not changed for a while: by its
        modification time, or read with this signature that long ago (time.monotonic)."""
        if signature is not None and self._settling.settled(signature):
            self._seen = signature



def _say_if_anyone_may_write(path: Path) -> None:
    """Warn of a keys file any user of this machine may write: its hashes are no secret, but whoever writes one
    adds a key of their own, which edits the memory under the name they choose."""
    with contextlib.suppress(OSError):
        if (mode := os.stat(path).st_mode) & stat.S_IWOTH:
            log.warning("the API keys file %s may be written by any user of this machine (mode %s): whoever writes "
                        "it can add a key that edits the memory, under any name; chmod o-w %s", path,
                        stat.filemode(mode), path)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeysCollector(Collector):
    """`vmem_api_keys` and `vmem_api_keys_file_valid`, the file checked for changes as they are scraped."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def collect(self) -> Iterator[GaugeMetricFamily]:
        keys = self.ring.keys()
        yield GaugeMetricFamily("vmem_api_keys", "API keys the service takes now (VMEM_API_KEY's and the keys "
                                "file's)", value=len(keys))
        if self.ring.path is not None:
            yield GaugeMetricFamily("vmem_api_keys_file_valid", "1 while VMEM_API_KEYS_FILE reads as keys; 0 once it "
                                    "does not (the log says which line): the keys read before are still taken",
                                    value=float(self.ring.file_valid))
