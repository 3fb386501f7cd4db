"""Kill this process (SIGKILL) just before its Nth write under a folder: scripts/killpoints.py's hook.

Python imports `sitecustomize` at start-up from the first folder of sys.path holding one, so a child run with this
folder first on PYTHONPATH is hooked before any of vmem is imported. Set by the harness, and taken out of the
environment here so that no process the child starts is hooked too:

    VMEM_KILL_UNDER  the folder (the memory's): only writes to paths under it count, and every write of the
                     embedded engine (a shard's update, optimize, flush, close, create)
    VMEM_KILL_AT     N: killed just before write N (from 1); 0 or unset: every write counted, none killed
    VMEM_KILL_LOG    a file each write counted is appended to, as `N<TAB>kind<TAB>path`, before it is made

A write is a file opened for writing (open, io.open, os.open with a write flag: Path.write_text and
write_atomically's temporary file too), a rename or replace, an unlink or rmdir, a folder made, a truncate, and
the engine's calls above. Reads are not counted, and nor are writes elsewhere (a log, a cache) or a forked child's.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
from typing import Any

_UNDER = os.environ.pop("VMEM_KILL_UNDER", "")
_AT = int(os.environ.pop("VMEM_KILL_AT", "0") or 0)
_LOG = os.environ.pop("VMEM_KILL_LOG", "")
_PID = os.getpid()
_count = 0
_open, _os_open = builtins.open, os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ENGINE_WRITES = {"update", "optimize", "flush", "close", "update_from_snapshot", "unpack_snapshot"}


def _full(path: Any, dir_fd: int | None = None) -> str:
    """The absolute path a call names (a name under `dir_fd`, as shutil.rmtree gives, through /proc)."""
    if isinstance(path, int):
        return ""
    path = os.fsdecode(os.fspath(path))
    if path.startswith("/proc/self/fd/"):  # the engine's shard, opened through its folder's descriptor
        return os.path.realpath(path)
    if dir_fd is not None and not os.path.isabs(path):
        try:
            return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        except OSError:
            return path
    return os.path.abspath(path)


def _write(kind: str, path: str) -> None:
    """Count a write about to be made; the Nth kills the process before it."""
    global _count
    if os.getpid() != _PID:
        return
    _count += 1
    if _LOG:
        with _open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{_count}\t{kind}\t{path}\n")
    if _count == _AT:
        os.kill(_PID, signal.SIGKILL)


def _ours(path: str) -> bool:
    return bool(path) and (path == _UNDER or path.startswith(_UNDER.rstrip("/") + "/"))


def _hook_path_call(name: str) -> None:
    original = getattr(os, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if args and _ours(path := _full(args[0], kwargs.get("src_dir_fd", kwargs.get("dir_fd")))):
            _write(name, path)
        return original(*args, **kwargs)

    setattr(os, name, hooked)


def _hooked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if any(c in mode for c in "wax+") and _ours(path := _full(file)):
        _write(f"open {mode}", path)
    return _open(file, mode, *args, **kwargs)


def _hooked_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
    if flags & _WRITE_FLAGS and _ours(full := _full(path, kwargs.get("dir_fd"))):
        _write("os.open", full)
    return _os_open(path, flags, *args, **kwargs)


def _hook_engine() -> None:
    import qdrant_edge

    shard_class = qdrant_edge.EdgeShard

    class Shard:
        """The engine's shard, its writes counted."""

        def __init__(self, shard: Any, path: str) -> None:
            self._shard, self._path = shard, path

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._shard, name)
            if name not in _ENGINE_WRITES:
                return attr

            def write(*args: Any, **kwargs: Any) -> Any:
                if _ours(self._path):
                    _write(f"engine {name}", self._path)
                return attr(*args, **kwargs)

            return write

        @staticmethod
        def load(path: str, *args: Any, **kwargs: Any) -> Shard:
            return Shard(shard_class.load(path, *args, **kwargs), _full(path))

        @staticmethod
        def create(path: str, *args: Any, **kwargs: Any) -> Shard:
            if _ours(_full(path)):
                _write("engine create", _full(path))
            return Shard(shard_class.create(path, *args, **kwargs), _full(path))

    qdrant_edge.EdgeShard = Shard  # type: ignore[misc,assignment]  # vmem reads it as qe.EdgeShard at each call


if _UNDER:
    _UNDER = os.path.abspath(_UNDER)
    builtins.open = io.open = _hooked_open  # type: ignore[assignment]  # pathlib opens through io.open
    os.open = _hooked_os_open  # type: ignore[assignment]
    for _name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "truncate", "symlink", "link"):
        _hook_path_call(_name)
    _hook_engine()
