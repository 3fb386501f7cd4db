"""Writing a file so that readers, and a crash, see the old contents or the new, never a torn mix."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, BinaryIO, NamedTuple

from .text import visible

# What a write that finds no room raises: the disk full, the user's quota, a file-size limit (`ulimit -f`).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_error_reason(exc: BaseException) -> str:
    """Why `exc` failed, in words without its path, for a message that names the file itself: the error's own
    words (`Permission denied`), else its number's (`Input/output error`), else what it says, escaped (`visible`).
    `exc.strerror or exc` showed an OSError with no words of its own as `[Errno 5] : '/srv/...'`, the whole path
    again and raw (a newline in a name split the message). Any other exception: what it says, escaped."""
    if isinstance(exc, OSError):
        if exc.strerror:
            return exc.strerror
        if exc.errno:
            return os.strerror(exc.errno)
    return visible(str(exc)) or type(exc).__name__


def error_line(exc: BaseException) -> str:
    """An error's first line, escaped (`visible`), for a log line of its own; else its type's name. A Qdrant
    client's UnexpectedResponse says its status on the first line and the server's whole raw reply after it. Cut at
    a newline only: `splitlines` also cut at a lone \\r or \\x1c, and the rest of that line went unsaid."""
    text = str(exc).strip()
    return visible(text.split("\n", 1)[0].rstrip("\r")) if text else type(exc).__name__


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def on_disk_spelling(path: str | Path) -> str:
    """`path`, if it exists, with each part spelled as its folder lists it; otherwise as given.

    On a case- or normalization-insensitive file system (macOS, Windows) `~/Data` opens `~/data`, and `café`
    typed (NFC) opens `café` decomposed on disk (NFD). Sources are stored as strings: a build resumed under the
    other spelling added every image again, and a forget under it chose nothing. A folder is listed only where
    another spelling of a part exists beside it (one lstat a part on a case-sensitive disk, as Linux's are).
    """
    given = str(path)
    full = os.path.abspath(os.path.expanduser(given))
    if not os.path.lexists(full):
        return given
    parts = Path(full).parts
    spelled = Path(parts[0])
    for name in parts[1:]:
        spelled = spelled / _listed_spelling(spelled, name)
    return given if str(spelled) == full else str(spelled)


def _listed_spelling(folder: Path, name: str) -> str:
    others = {name.swapcase(), unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)} - {name}
    if not any(os.path.lexists(folder / other) for other in others):
        return name
    try:
        names = os.listdir(folder)
    except OSError:
        return name
    if name in names:
        return name
    folded = unicodedata.normalize("NFC", name).casefold()
    found = [n for n in names if unicodedata.normalize("NFC", n).casefold() == folded]
    return found[0] if len(found) == 1 else name


class NoHomeError(OSError):
    """vmem's default folders cannot be placed: no HOME, and a user the system does not know (a container run
    with `--user 12345`). An OSError, as a folder that cannot be written is."""


def user_folder(xdg_variable: str, under_home: str) -> Path:
    """`$XDG_...` (XDG_CACHE_HOME, XDG_DATA_HOME) when set, else `~/under_home` (".cache", ".local/share").

    NoHomeError where neither can be known: Path.home() raised a RuntimeError there, which nothing expected."""
    if value := os.environ.get(xdg_variable):
        return Path(value).expanduser()
    try:
        return Path.home() / under_home
    except RuntimeError:
        raise NoHomeError(f"no folder for vmem's files: HOME and {xdg_variable} are unset, and this user (uid "
                          f"{os.getuid()}) has no home directory; set VMEM_HOME to a writable folder") from None


# A temporary file of write_atomically: `.NAME.PID.THREAD.tmp`.
_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.\d+\.tmp$")
# How old a dead writer's temporary file must be before it is removed: another host or container sharing the
# folder has its own process ids, so a dead-looking id alone could be a write still going on there.
STALE_TEMPORARY_AGE_S = 600.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, min_age_s: float = STALE_TEMPORARY_AGE_S) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in `folder` (a DMN stream's is
    ~50 MB; nothing else ever removes them). Only those whose writer process is gone and that are `min_age_s`
    old; returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = _TEMPORARY_NAME.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m["pid"])
        with suppress(FileNotFoundError):
            if pid == os.getpid() or _process_alive(pid) or now - entry.stat().st_mtime < min_age_s:
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


# A backup's folder while it is written, renamed to NAME once whole: `.NAME.RANDOM.PID.START@HOST.partial`, named
# for its writer (its process id, when that process started, its host) so that a later backup can tell whether the
# writer is gone. One an older vmem wrote is `.NAME.RANDOM.partial`: whose it is, nothing tells.
_WRITER_TAG = r"\.(?P<pid>\d+)\.(?P<start>\d+)@(?P<host>[^@/]+)"  # `_writer_tag`
_PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + _WRITER_TAG + r"\.partial$")
_UNNAMED_PARTIAL_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.partial$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _process_stat(pid: int) -> tuple[bytes, int] | None:
    """Process `pid`'s state and when it started, in clock ticks after boot (Linux's /proc; None where unknown):
    a process id used again by a later process is told from the first one's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[19])  # fields 3 and 22, state and starttime
    except (OSError, ValueError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (None where unknown: not Linux, or no such process).
    With its id, it names one process: a note or a folder named for its writer keeps both (`_writer_tag`, a served
    memory's note, the journal's notes), so that a later process given the same id is not taken for it."""
    return None if (stat := _process_stat(pid)) is None else stat[1]


def process_running(pid: int, start: int) -> bool:
    """Whether process `pid`, started at `start` (`process_start`'s; 0 where it was not known), is still running:
    alive, no zombie, and the same process where both starts are known. True where this cannot be told, so that
    nothing a live process holds is taken from it (its folder removed, its edit journaled as if it had ended)."""
    if not _process_alive(pid):
        return False
    if (stat := _process_stat(pid)) is None:
        return True  # unknown: alive, so that nothing live is removed
    state, started = stat
    # A zombie (killed, its parent yet to wait for it: a script's Popen, a container's init that reaps no orphans)
    # writes nothing more, though signal 0 still finds it
    return state not in (b"Z", b"X") and (not start or started == start)


def _writer_tag() -> str:
    """`.PID.START@HOST`, naming a folder for the process that writes it: this one."""
    pid = os.getpid()
    return f".{pid}.{process_start(pid) or 0}@{_host()}"


def _writer_gone(host: str, pid: int, start: int) -> bool:
    """Whether the writer process `pid` of `host`, started at `start` (a `_WRITER_TAG`'s, a served memory's
    note's), is gone: only one of this host can be told so."""
    return host == _host() and not process_running(pid, start)


def _remove_if_writer_gone(path: str, m: re.Match[str]) -> bool:
    """Delete the folder `path`, named for its writer (`m`, a `_WRITER_TAG` match), if that writer is gone;
    whether it is gone now."""
    if not _writer_gone(m["host"], int(m["pid"]), int(m["start"])):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


# Written by `vmem serve` in the folder of the embedded memory it holds: where to ask it (`mark_served`, `served_by`)
SERVED_FILE = ".vmem-served.json"


def mark_served(folder: str | Path, urls: Sequence[str]) -> Path:
    """Say in an embedded memory's folder that this process serves it, at `urls`: the CLI, refused the memory
    while the service holds it, names where to ask instead (`served_by`). The caller removes the file at close;
    one a killed service left is told by its process being gone, as `remove_dead_partials` tells its folders."""
    pid = os.getpid()
    path = Path(folder) / SERVED_FILE
    write_atomically(path, json.dumps({"pid": pid, "start": process_start(pid) or 0, "host": _host(),
                                       "urls": list(urls), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
                     durable=False)
    return path


# Far more than `mark_served` writes (a pid, a host, a few URLs)
_MOST_NOTE_BYTES = 64 * 1024


class NotASmallFile(ValueError):
    """What `read_small_file` refuses: not a plain file, or (`too_large`) larger than the file it should be."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def read_small_file(path: Path, most_bytes: int, follow_links: bool = False) -> bytes:
    """A small file's bytes, read only where it is a plain file of at most `most_bytes`, opened without waiting
    and (unless `follow_links`) not through a link: in a folder another may write, a link to /dev/zero had been
    read until memory ran out, and a FIFO waited on for a writer forever. NotASmallFile (a ValueError) says which;
    OSError where it cannot be opened (ELOOP: a link not followed)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        # Before fdopen, which refuses a folder with an IsADirectoryError whose filename is the descriptor (a
        # folder named vmem.json ended each command in a TypeError traceback)
        plain = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not plain:
        os.close(fd)
        raise NotASmallFile("not a plain file (a FIFO, a device or a folder)")
    with os.fdopen(fd, "rb") as f:
        data = f.read(most_bytes + 1)
    if len(data) > most_bytes:
        raise NotASmallFile(f"larger than {most_bytes:,} bytes", too_large=True)
    return data


class OutsideFolders(ValueError):
    """A file outside every folder it may be read from (`open_under`, `read_under`)."""


def _real(path: str | Path) -> Path:
    # Links followed and `..` resolved, without raising on a link loop (Path.resolve raised RuntimeError there
    # before Python 3.13): a loop's path is left as it reads, and opening it fails.
    return Path(os.path.realpath(os.path.expanduser(path)))


def is_under(path: str | Path, roots: Sequence[str | Path]) -> bool:
    """Whether `path` is inside one of the folders `roots`, both sides as they really are: links followed and `..`
    resolved (a link in an image folder to a file outside it is outside; a root given as a link holds what its
    target holds), compared by whole names (/data/img2 is not under /data/img).

    The one check of what a memory shows, sends to the re-ranker, embeds again and counts as outside its folders:
    a point's source is data, and may name any file of the machine. A file to be read is opened with `open_under`,
    which checks the file it opened."""
    real = _real(path)
    return any(real.is_relative_to(_real(root)) for root in roots)


def _opened_path(fd: int) -> str | None:
    """The path of the file open as `fd`, as the system names it (Linux's /proc; None where it cannot say)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_under(path: str | Path, roots: Sequence[str | Path]) -> BinaryIO:
    """The file `path` opened to read, only where the file opened is inside `roots` (`is_under`).

    The check is of the file opened, not of its name before: a link swapped in after a check of the name (by
    whoever may write in an image folder) had the service show a file outside every root. OutsideFolders (a
    ValueError) where it is outside; OSError where it cannot be opened or is no plain file."""
    fd = os.open(os.path.expanduser(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO waits for no one
    f = os.fdopen(fd, "rb")
    try:
        opened = _opened_path(fd)
        if opened is None:  # no /proc: the name checked now must name the file opened
            real = _real(path)
            st, now = os.fstat(fd), os.stat(real)
            opened = str(real) if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino) else None
        if opened is None or not any(Path(opened).is_relative_to(_real(root)) for root in roots):
            raise OutsideFolders(f"{path} is outside the folders images are read from")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a plain file", str(path))
    except BaseException:
        f.close()
        raise
    return f


def read_under(path: str | Path, roots: Sequence[str | Path]) -> bytes:
    """The bytes of the file `path`, read only where the file opened is inside `roots` (`open_under`)."""
    with open_under(path, roots) as f:
        return f.read()


def decodable(f: BinaryIO) -> Path | bytes:
    """What `load_image` is to read of a file `open_under` opened: the file opened itself, by its /proc/self/fd name
    (reopened there, it is that file whatever its name leads to now), which a decoder reads as it needs; its bytes
    where the system has no such name. Read whole, a keyless thumbnail of a 1 GB file that is no image held 1 GB
    (57 MB read by name), four at a time."""
    named = Path(f"/proc/self/fd/{f.fileno()}")
    return named if named.exists() else f.read()


def _read_note(path: Path) -> bytes:
    """A note's bytes (`read_small_file`): the folder is any writer's, and every command refused the memory reads
    it."""
    return read_small_file(path, _MOST_NOTE_BYTES)


def served_by(folder: str | Path) -> dict[str, object] | None:
    """What `mark_served` wrote in the folder (pid, host, urls, since; and here: whether that host is this one),
    if the service that wrote it may still run: None where there is no such file, it cannot be read, or its
    process, of this host, is gone."""
    try:
        said = json.loads(_read_note(Path(folder) / SERVED_FILE))
        pid, start, host = int(said["pid"]), int(said.get("start") or 0), str(said["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _writer_gone(host, pid, start):
        return None
    return {**said, "here": host == _host()}


# Held (flock) by the one process that has an embedded memory open; what it holds says who that is (`note_holder`)
OPEN_LOCK_FILE = ".vmem-open.lock"


def _holder_words() -> tuple[list[str], str | None]:
    """This process's command line as a person typed it (`vmem build DATA -m MEM`, `python notebook.py …`), and the
    vmem command it runs (None where it is not the vmem CLI: a Python session). Of another program only what names
    it: the note outlives a killed holder in the folder, and a script's arguments may hold anything (a key)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "vmem" or argv[0].endswith(os.path.join("vmem", "__main__.py"))):
        words = ["vmem", *argv[1:]]  # no option of vmem's takes a secret: keys come from the environment or a file
        return words, next((w for w in argv[1:] if not w.startswith("-")), None)
    orig = list(getattr(sys, "orig_argv", argv)) or ["python"]
    named = 3 if orig[1:2] == ["-m"] else 2  # `python -m ipykernel_launcher`, `python job.py`, `python -c`
    return [Path(orig[0]).name, *orig[1:named], *(["…"] if len(orig) > named else [])], None


def note_holder(fh: IO[str]) -> None:
    """Write who holds an embedded memory open into its lock file, `fh`, whose lock this process has just taken
    (`_hold_open_lock`): a process refused the memory names the holder (`holder_note`) where it had only guessed
    "a running vmem serve or build?". Best effort: the lock, not the note, keeps a second process out; a killed
    holder's note is told by its process being gone, as a served memory's is."""
    pid = os.getpid()
    words, command = _holder_words()
    note = {"pid": pid, "start": process_start(pid) or 0, "host": _host(), "argv": [w[:200] for w in words[:30]],
            "vmem_command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with suppress(OSError):
        fh.seek(0)
        fh.truncate(0)
        fh.write(json.dumps(note))
        fh.flush()


class Holder(NamedTuple):
    """Who holds an embedded memory open (`holder_note`): said as `process 8140 (vmem build data -m memory) since
    ...`, empty where unknown; the vmem command it runs (None: not the vmem CLI); and whether the holder noted is
    gone, a process it started holding the lock it inherited (`orphans`)."""

    who: str
    command: str | None = None
    orphans: tuple[int, ...] = ()


def _processes_with_open(path: Path) -> tuple[list[int], bool | None]:
    """The processes of this user, other than this one, that have `path` open (Linux's /proc; none where it is not
    there), and whether they hold a lock on it: who holds a lock the process that took it is gone from (a fork
    inherits it). True: those whose open file holds one, as their fdinfo's `lock:` lines say (Linux 3.14 on).
    False: /proc says which hold one, and none of these does: they only wait for it (a process waiting for the lock
    opens the file at each try), the holder one this user cannot see (another user's), or none now; they had been
    named as its holders, and told to be killed. None: /proc does not say, and each may hold it."""
    target, found, locking = os.path.realpath(path), list[int](), list[int]()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return found, None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # another user's, or gone
            continue
        opened = [fd for fd in fds if _links_to(f"/proc/{pid}/fd/{fd}", target)]
        if opened:
            found.append(pid)
            if any(_holds_a_lock(f"/proc/{pid}/fdinfo/{fd}") for fd in opened):
                locking.append(pid)
    if locking:
        return locking, True
    return found, (False if found and _fdinfo_says_locks() else None)


@functools.cache
def _fdinfo_says_locks() -> bool:
    """Whether this system's /proc shows an open file's locks in its fdinfo (`lock:` lines): asked of a lock this
    process takes on a file of its own, once."""
    import fcntl

    try:
        with tempfile.TemporaryFile() as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _holds_a_lock(f"/proc/self/fdinfo/{fh.fileno()}")
    except OSError:
        return False


def _links_to(link: str, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:
        return False


def _holds_a_lock(fdinfo: str) -> bool:
    """Whether the open file of /proc's `fdinfo` holds a lock (flock, or a POSIX lock) on its file."""
    try:
        with open(fdinfo, encoding="utf-8", errors="replace") as fh:
            return any(line.startswith("lock:") for line in fh)
    except OSError:
        return False


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return visible(fh.read(64).strip()) or "?"
    except OSError:
        return "?"


def holder_note(folder: str | Path) -> Holder:
    """Who holds the embedded memory in `folder` open, as its lock file says (`note_holder`): `process 8140
    (vmem build data -m memory) since 2026-12-07T04:30:12+0000`. Where that process, of this host, is gone, or
    nothing is noted: the processes that have the lock file open, which hold the lock it took (a worker it forked,
    alive after a kill -9 of it). Empty where neither is known."""
    lock = Path(folder) / OPEN_LOCK_FILE
    try:
        said = json.loads(_read_note(lock))
        pid, start, host = int(said["pid"]), int(said.get("start") or 0), str(said["host"])
        words = [str(w) for w in said.get("argv") or []]
        command = said.get("vmem_command")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pid, host = 0, _host()
    else:
        if not _writer_gone(host, pid, start):
            typed = " ".join(w if w == "…" else shlex.quote(w) for w in words)  # "…": left out (`_holder_words`)
            typed = visible(typed if len(typed) <= 300 else typed[:299] + "…")
            where = "" if host == _host() else f" on {visible(host)}"
            since = f" since {visible(str(said['since']))}" if said.get("since") else ""
            return Holder(f"process {pid}{where} ({typed}){since}",
                          visible(str(command)) if isinstance(command, str) else None)
    if host != _host():
        return Holder("")
    orphans, holding = _processes_with_open(lock)
    if not orphans:
        return Holder("")
    if holding is False:  # each only waits for it: none is to be ended
        return Holder(f"a process this user cannot see (another user's?); {_named(orphans)} of this user only "
                      f"wait{'s' if len(orphans) == 1 else ''} for it")
    inherited = f" the lock it inherited from process {pid}, now gone" if pid else " its lock"
    started = f", holding{inherited}" if holding else f", which may hold{inherited} (/proc does not say)"
    return Holder(f"{_named(orphans)}{started}", None, tuple(orphans))


def _named(pids: Sequence[int]) -> str:
    return ", ".join(f"process {p} ({_process_name(p)})" for p in pids[:5]) + (" ..." if len(pids) > 5 else "")


def lock_openers(folder: str | Path) -> str:
    """The processes of this user, other than this one, that have the open lock file of the memory in `folder`
    open, as `holder_note` names them (`process 8140 (python)`): who holds it shared, to read the memory at rest,
    whom no note names. Empty where none is known (no /proc, another user's, or those seen only wait for it)."""
    openers, holding = _processes_with_open(Path(folder) / OPEN_LOCK_FILE)
    return "" if holding is False else _named(openers)


# In a service's backup folder (VMEM_BACKUP_DIR): a link to its newest backup, what read-only replicas serve
LATEST_BACKUP = "latest"


def link_latest(folder: Path, name: str) -> bool:
    """Point `folder/latest` at the backup `name` beside it: a relative link, replaced in one rename, so that a
    replica started on it meanwhile finds the one backup or the other. False, and left as it is, where `latest`
    is no link (a folder of the operator's)."""
    latest = folder / LATEST_BACKUP
    if os.path.lexists(latest) and not latest.is_symlink():
        return False
    new = folder / f".{LATEST_BACKUP}{_writer_tag()}.link"
    new.unlink(missing_ok=True)
    os.symlink(name, new)
    os.replace(new, latest)
    return True


def make_partial_folder(dest: Path) -> Path:
    """A new hidden folder beside `dest` to write it in before it is renamed `dest`, named for the process writing
    it (see `remove_dead_partials`)."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=f"{_writer_tag()}.partial", dir=dest.parent))


# A private folder of the temporary folder (`make_private_folder`): `PREFIXRANDOM.PID.START@HOST`
def _private_name(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}[a-z0-9_]{{8}}{_WRITER_TAG}$")


def make_private_folder(prefix: str) -> Path:
    """A new private folder (0700) of the temporary folder (TMPDIR), named for the process that uses it, so that
    `remove_dead_private_folders` can remove it once that process is gone without removing it (kill -9, an OOM
    kill: nothing had removed a read-only service's copy of its memory)."""
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=_writer_tag()))


def remove_dead_private_folders(prefix: str) -> list[Path]:
    """Delete the folders `make_private_folder(prefix)` made in the temporary folder for processes of this host
    that are gone; one a live process uses stays, and so does one of another host or another user. Returns them."""
    removed: list[Path] = []
    pattern = _private_name(prefix)
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return removed
    for entry in entries:
        if ((m := pattern.match(entry.name)) is not None and entry.is_dir(follow_symlinks=False)
                and _remove_if_writer_gone(entry.path, m)):
            removed.append(Path(entry.path))
    return removed


def remove_dead_partials(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Delete the hidden folders that backups killed midway left in `folder` (`make_partial_folder`'s): those whose
    writer, a process of this host, is gone. One another process is writing (a service's backup, a `vmem backup`)
    stays, and so does one of another host (its writer cannot be checked from here).

    Returns:
        (the folders removed, the ones an older vmem's backup left: whose they are, nothing tells, so they stay).
    """
    removed: list[Path] = []
    unnamed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed, unnamed
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        if (m := _PARTIAL_NAME.match(entry.name)) is not None:
            if _remove_if_writer_gone(entry.path, m):
                removed.append(Path(entry.path))
        elif _UNNAMED_PARTIAL_NAME.match(entry.name):
            unnamed.append(Path(entry.path))
    return removed, unnamed


def _link_unless_there(tmp: Path, path: Path) -> None:
    """`tmp` named `path` unless a file is there: a rename would replace one made while `tmp` was written (a long
    export's target, checked only when it started)."""
    try:
        os.link(tmp, path)  # refuses an existing name, atomically
    except FileExistsError:
        raise FileExistsError(f"{path} exists (made while this was written): nothing was written") from None
    except OSError:  # no hard links here (a FAT disk, some network shares): checked, then renamed
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists (made while this was written): nothing was written") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_atomically(path: str | Path, data: bytes | str | Callable[[BinaryIO], object], durable: bool = True,
                     replace: bool = True) -> None:
    """Replace `path` with `data` (bytes, text as UTF-8, or a function writing to a binary file); with `replace`
    false, FileExistsError (and nothing written) if a file is at `path` by the time the data is written.

    A temporary file beside it is written, then renamed over it. With `durable` the temporary file is
    flushed to disk before the rename and the directory after it, so that a power loss cannot leave
    an empty file under the new name (a rename can reach the disk before the data it names); a file system
    that cannot sync a folder (`_sync_folder`) leaves the rename to reach the disk in its own time.
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
        if replace:
            os.replace(tmp, path)
        else:
            _link_unless_there(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _sync_folder(path.parent)


def copy_file_sparse(source: str | Path, target: str | Path) -> int:
    """Copy a file's written parts to `target` (made; must not exist), leaving its holes holes, and sync it; returns
    the bytes written.

    The engine preallocates its files sparse (a write-ahead-log file is 32 MB, a few KB of it written): a plain
    copy wrote every hole out as zeros. The data moves in the kernel (copy_file_range), without Python's lock."""
    written = 0
    src = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO does not wait for a writer
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
        try:
            pos = 0
            while pos < st.st_size:
                try:
                    pos = os.lseek(src, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    break  # only a hole is left
                end = os.lseek(src, pos, os.SEEK_HOLE)
                while pos < end:
                    n = _copy_range(src, dst, pos, min(end - pos, 1 << 30))
                    if n == 0:  # the file shrank meanwhile
                        break
                    pos, written = pos + n, written + n
                pos = max(pos, end)
            os.ftruncate(dst, st.st_size)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return written


def _copy_range(src: int, dst: int, pos: int, length: int) -> int:
    """Copy up to `length` bytes at `pos` of `src` to the same place in `dst`; returns how many were copied."""
    try:
        return os.copy_file_range(src, dst, length, pos, pos)
    except OSError as exc:  # a kernel or file system without it (EXDEV across file systems on older kernels)
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    data = os.pread(src, min(length, 8 << 20), pos)
    return os.pwrite(dst, data, pos) if data else 0


def copy_folder_sparse(source: str | Path, target: str | Path, leave_out: Callable[[str], bool]) -> int:
    """Copy the files and folders under `source` into the existing folder `target` (`copy_file_sparse`), but those
    whose path relative to `source` `leave_out` names, and the temporary files of writes going on
    (`write_atomically`'s: the file they replace is copied); returns the bytes written. A link is copied as what it
    points to (a folder moved to another disk and linked is in the copy; a link that points nowhere stays a link);
    what is neither a file nor a folder (a FIFO, a socket) is left out."""
    written, made = 0, [str(target)]
    seen = {_identity(source)}  # folders walked, by what they are: a link back up is not walked round for ever
    for root, dirs, files in os.walk(source, followlinks=True, onerror=_refuse):  # a folder it cannot read is no gap
        rel = os.path.relpath(root, source)
        into = os.path.join(target, rel) if rel != "." else str(target)
        for name in list(dirs):
            path = os.path.normpath(os.path.join(rel, name))
            if leave_out(path) or _identity(os.path.join(root, name)) in seen:
                dirs.remove(name)
                continue
            seen.add(_identity(os.path.join(root, name)))
            os.mkdir(os.path.join(into, name))
            made.append(os.path.join(into, name))
        for name in files:
            path, full = os.path.normpath(os.path.join(rel, name)), os.path.join(root, name)
            if leave_out(path) or _TEMPORARY_NAME.match(name):
                continue
            try:
                mode = os.stat(full).st_mode
            except FileNotFoundError:  # a link that points nowhere
                os.symlink(os.readlink(full), os.path.join(into, name))
                continue
            if stat.S_ISREG(mode):
                written += copy_file_sparse(full, os.path.join(into, name))
            # else a FIFO, a socket or a device: nothing a memory writes; opened, a FIFO had held the copy for good
    for folder in made:  # their entries too, so that a crash after the caller's rename finds every file
        _sync_folder(folder)
    return written


def _refuse(error: OSError) -> None:
    raise error


def _identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# What a file system that cannot sync a folder answers (network shares, FUSE, some containers' mounts); an error
# else (EIO: the disk failed the write) is a write that may not have reached the disk, and is raised
_FOLDER_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EBADF,
                            errno.EISDIR, errno.ENOSYS}


def _sync_folder(folder: str | Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _FOLDER_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FOLDER_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)
