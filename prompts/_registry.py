"""Finding templates by name: the built-ins shipped with the package, plus a user directory.

A user template with a built-in's name replaces it (so a team can pin its own `neighbors-v1`);
the origin is recorded so `vmem templates list` can show which one is in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from retrieval.text import quoted, visible

from ._template import (
    MAX_TEMPLATE_BYTES,
    PromptTemplate,
    TemplateLoadError,
    UnknownTemplateError,
    load_template_file,
)

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES_DIR_ENV = "VMEM_TEMPLATES_DIR"
DEFAULT_TEMPLATE = "neighbors-v1"
RECENT_S = 2  # a template changed this recently is told from its last read by its bytes, not its timestamps


def _template_files(directory: Path) -> list[Path]:
    """The folder's `*.yaml` and `*.yml` files, hidden ones left out: no name starts with a dot, and an editor's lock
    file beside the one being edited (Emacs' `.#mine.yaml`) had been listed as a broken template."""
    return [p for p in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")) if not p.name.startswith(".")]


@dataclass(frozen=True)
class TemplateEntry:
    template: PromptTemplate
    path: Path
    origin: str  # "builtin" or "user"


class TemplateRegistry:
    """Templates by name. The user directory is read again whenever its files change (a template added, edited
    or mended takes effect without a restart), checked by their sizes, inodes and times (and their bytes while
    they were changed in the last 2 s).

    >>> reg = TemplateRegistry()
    >>> reg.get("labels-only").version
    1
    """

    def __init__(self, user_dir: str | Path | None = None, include_builtin: bool = True) -> None:
        if user_dir is None and os.environ.get(TEMPLATES_DIR_ENV):
            user_dir = os.environ[TEMPLATES_DIR_ENV]
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else None
        self.include_builtin = include_builtin
        self._lock = threading.Lock()
        self._entries: dict[str, TemplateEntry] = {}
        self.errors: dict[str, TemplateLoadError] = {}  # by file stem: templates that failed to load
        self._read: tuple = ()  # the user directory's files as last read
        self.reload()

    def _user_files(self) -> tuple:
        """What tells that a template file in the user directory changed: its name, size, inode, modification and
        change times, and, while it was changed less than `RECENT_S` ago, a hash of its bytes.

        Timestamps move in the file system's tick (a few ms on ext4), and an edit of the same length within one
        tick of the read (a script writing twice, an editor saving twice quickly) had left the old prompt in use
        until the next restart; hashing a template only while it is that recent keeps the usual check to a stat.
        A file read while recent is read once more after (its key then has no hash): harmless."""
        if self.user_dir is None or not self.user_dir.is_dir():
            return ()
        files = []
        now = time.time_ns()
        for path in _template_files(self.user_dir):
            with contextlib.suppress(OSError):  # gone between the listing and the stat
                st = path.stat()
                recent = now - max(st.st_mtime_ns, st.st_ctime_ns) < RECENT_S * 1_000_000_000
                digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                          if recent and st.st_size <= MAX_TEMPLATE_BYTES else None)  # a larger one will not load
                files.append((path.name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, digest))
        return tuple(files)

    def _reload_if_changed(self) -> None:
        if self.user_dir is not None and self._user_files() != self._read:
            self.reload()

    def reload(self) -> None:
        read = self._user_files()
        entries: dict[str, TemplateEntry] = {}
        errors: dict[str, TemplateLoadError] = {}
        dirs = ([(BUILTIN_DIR, "builtin")] if self.include_builtin else []) + (
            [(self.user_dir, "user")] if self.user_dir is not None else [])
        for directory, origin in dirs:
            if not directory.is_dir():
                if origin == "user":  # a mistyped $VMEM_TEMPLATES_DIR must not pass for "no templates of mine"
                    errors[f"${TEMPLATES_DIR_ENV}"] = TemplateLoadError(
                        "not a directory: none of your templates were loaded", directory)
                continue
            files: dict[str, list[Path]] = {}
            for path in _template_files(directory):
                files.setdefault(path.stem, []).append(path)
            for stem, paths in sorted(files.items()):
                if len(paths) > 1:  # which one is meant? Neither is used: the .yml had silently won
                    errors[stem] = TemplateLoadError(
                        f"{visible(paths[0].name)} and {visible(paths[1].name)} both define the template "
                        f"{quoted(stem)}; keep one of them (neither is used until then)", paths[0])
                    entries.pop(stem, None)  # nor the built-in it may have meant to replace
                    continue
                [path] = paths
                try:
                    t = load_template_file(path)
                except TemplateLoadError as exc:
                    errors[path.stem] = exc
                    # A broken override must not pass for the built-in it meant to replace: asking for
                    # the name raises this error instead of silently answering with the built-in.
                    entries.pop(path.stem, None)
                    continue
                errors.pop(t.name, None)
                entries[t.name] = TemplateEntry(t, path, origin)
        with self._lock:
            self._entries, self.errors, self._read = entries, errors, read

    def names(self) -> list[str]:
        self._reload_if_changed()
        return sorted(self._entries)

    def problems(self) -> list[str]:
        """A line for each template that cannot be used and for a templates folder that is none, as `vmem templates
        list` and `vmem serve` say them: "template mine cannot be used: FILE: why", "$VMEM_TEMPLATES_DIR: FOLDER: not
        a directory: ...". They had worded them apart ("broken template mine", "template mine is not offered")."""
        self._reload_if_changed()
        return [f"{stem}: {err}" if stem.startswith("$") else f"template {visible(stem)} cannot be used: {err}"
                for stem, err in sorted(self.errors.items())]

    def entries(self) -> list[TemplateEntry]:
        return [self._entries[n] for n in self.names()]

    def entry(self, name: str) -> TemplateEntry:
        self._reload_if_changed()
        if name in self.errors and name not in self._entries:
            raise self.errors[name]
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "none"  # names are [a-z0-9._-]: as they are
            where = f" (user templates are read from {visible(str(self.user_dir))})" if self.user_dir else (
                f" (add your own in a directory named by ${TEMPLATES_DIR_ENV})")
            raise UnknownTemplateError(f"unknown template {quoted(name)}; available: {available}{where}") from None

    def get(self, name: str | None = None) -> PromptTemplate:
        """The template called `name` (None: `neighbors-v1`).

        Raises:
            UnknownTemplateError: no such template; the message lists the available ones.
            TemplateLoadError: the file with that name exists but is invalid.
        """
        # Only None is the default: an empty name (a script's unset variable) had silently been neighbors-v1
        return self.entry(DEFAULT_TEMPLATE if name is None else name).template

    def __contains__(self, name: object) -> bool:
        self._reload_if_changed()
        return name in self._entries


_default: TemplateRegistry | None = None
_default_key: str | None = None


def default_registry() -> TemplateRegistry:
    """The registry for the current `$VMEM_TEMPLATES_DIR` (rebuilt when the variable changes)."""
    global _default, _default_key
    key = os.environ.get(TEMPLATES_DIR_ENV, "")
    if _default is None or key != _default_key:
        _default, _default_key = TemplateRegistry(), key
    return _default
