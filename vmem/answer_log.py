"""The answer log: one JSON line per image classified, for answering afterwards which decisions a memory point took
part in (`vmem answers`), and from which state of the memory.

An answer lists its neighbours when it is given; afterwards nothing else records them. Opt-in (`vmem serve` with
`VMEM_ANSWER_LOG`, `vmem classify --answer-log`, `VisualMemory.answer_log`), since it keeps, per image, the sha256
of its bytes (never the bytes) and its file name.

Appended with one write per line under a lock (`logging.handlers.RotatingFileHandler`'s), so lines of concurrent
answers never interleave; rotated at a size into `PATH.1` ... `PATH.N` as that handler names them. A line that
cannot be written (a full or read-only disk) is logged once and counted (`failures`): the answer goes out all the
same.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import logging.handlers
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.files import file_sha256, os_error_reason
from retrieval.journal import JOURNAL_FILE, FileJournal, JournalEntry, now
from retrieval.store import memory_key, read_meta_file

from .results import Classification

log = logging.getLogger(__name__)
DEFAULT_MAX_MB = 100.0
DEFAULT_BACKUPS = 5
TOP_SCORES = 5  # the scores a line keeps: the label's and its runners-up


def image_sha256(path: str | Path) -> str | None:
    """The sha256 of an image file's bytes (its content id, as uploads are named), or None where it cannot be read."""
    try:
        return file_sha256(path)
    except OSError:
        return None


@dataclass(frozen=True)
class Asked:
    """What the log keeps of one image asked about, besides its answer."""

    sha256: str | None = None  # of its bytes
    filename: str | None = None
    cached: bool = False  # answered from the service's cache of recent answers
    # A cached answer's: when the answer it repeats was asked, and the memory's newest edit then. Its search was
    # that one's: a forget journaled since may have cited points it repeats (told to the cache just after)
    repeats: tuple[str, str | None] | None = None


class _Handler(logging.handlers.RotatingFileHandler):
    def __init__(self, owner: AnswerLog, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.owner = owner
        self._opened: tuple[int, int] | None = None  # the open file's (device, inode)

    def _open(self) -> Any:
        stream = super()._open()
        st = os.fstat(stream.fileno())
        self._opened = (st.st_dev, st.st_ino)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        # A file deleted (the README's way to drop the trace) or moved aside (logrotate) while open: lines had gone
        # on into it, lost or out of the reader's sight, until the next rotation. Opened again at its path, as
        # WatchedFileHandler does (a stat a line, under the handler's lock).
        if self.stream is not None:
            try:
                st = os.stat(self.baseFilename)
                moved = (st.st_dev, st.st_ino) != self._opened
            except OSError:
                moved = True
            if moved:
                with contextlib.suppress(OSError):
                    self.stream.close()
                self.stream = None  # opened again by the write (delay=True)
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # Not logging's traceback on stderr with every answer: once in the log, then counted.
        self.owner._failed()
        if self.stream is not None:  # a stream broken by a full disk is opened again for the next line
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None


class AnswerLog:
    """Where answers are logged: `record` one line per answer; `read_answers` reads them back."""

    def __init__(self, path: str | Path, max_mb: float = DEFAULT_MAX_MB, backups: int = DEFAULT_BACKUPS,
                 on_failure: Callable[[], None] | None = None) -> None:
        """`max_mb`: the size at which the file is rotated (kept as PATH.1, the older ones renumbered, at most
        `backups` of them); 0 never rotates. `on_failure`: called for each line that could not be written."""
        self.path = Path(path).expanduser()
        self.failures = 0
        self.on_failure = on_failure
        self._warned = False
        self._lock = threading.Lock()
        self._handler = _Handler(self, self.path, int(max_mb * 2**20), backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        """Made if missing, and a line torn by a crash ended, so that it is a line of its own the reader skips, not
        glued to the next answer's. A file that cannot be written is said now, at the start."""
        try:
            with open(self.path, "ab+") as f:
                if f.seek(0, os.SEEK_END):
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
        except OSError as exc:
            log.warning("the answer log %s cannot be written (%s): answers go on, unlogged", self.path,
                        os_error_reason(exc))

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1
            first, self._warned = not self._warned, True
        if first:
            log.error("the answer log %s could not be written; answers go on, unlogged (counted in "
                      "vmem_answer_log_failures_total), and this is said once", self.path, exc_info=True)
        if self.on_failure is not None:
            self.on_failure()

    def record(self, results: Sequence[Classification], asked: Sequence[Asked], *, via: str,
               client: str | None = None, memory: str | None = None, edit_at: str | None = None,
               at: str | None = None, by: str | None = None) -> None:
        """Log one line per answer (`asked`: what was asked, in the same order; `at`: when, default now). Never
        raises: a line that cannot be written is counted in `failures`."""
        try:
            at, host, pid = at or now(), socket.gethostname(), os.getpid()
            for res, a in zip(results, asked, strict=True):
                self._handler.handle(logging.makeLogRecord({"msg": json.dumps(
                    answer_line(res, a, at=at, via=via, client=client, host=host, pid=pid, memory=memory,
                                edit_at=edit_at, by=by), ensure_ascii=False, separators=(",", ":")), "args": None}))
        except Exception:  # a result the line could not be made of: still no answer fails for its log
            self._failed()

    def close(self) -> None:
        self._handler.close()


def answer_line(res: Classification, asked: Asked, *, at: str, via: str, client: str | None, host: str, pid: int,
                memory: str | None, edit_at: str | None, by: str | None = None) -> dict[str, Any]:
    """What the log keeps of one answer (see docs/service.md, "The answer log"); `by`: the name of the API key a
    re-rank was asked with."""
    return {
        "at": at, "via": via, "client": client, "by": by, "host": host, "pid": pid,
        "image_sha256": asked.sha256, "filename": asked.filename, "source": res.source,
        "label": res.label, "scores": dict(list(res.scores.items())[:TOP_SCORES]),
        "reranked": res.reranked, "model": res.model, "template": res.template, "fallback_reason": res.fallback_reason,
        "cached": asked.cached, "cached_at": asked.repeats[0] if asked.repeats else None,
        "k": res.vote.k, "rule": str(res.vote.rule),
        # how sure, and whether it was flagged for a person (`min_confidence` null: no threshold asked for)
        "confidence": res.confidence, "min_confidence": res.min_confidence, "unsure": res.unsure,
        "memory": memory, "edit_at": asked.repeats[1] if asked.repeats else edit_at,
        "neighbors": [{"id": n.id, "label": n.label, "similarity": round(n.similarity, 6), "rank": n.rank}
                      for n in res.neighbors],
    }


def log_files(path: str | Path) -> list[Path]:
    """The log's files, oldest first: its rotated ones (PATH.N ... PATH.1), then PATH."""
    path = Path(path).expanduser()
    rotated = sorted((p for p in path.parent.glob(f"{glob.escape(path.name)}.*")
                      if p.name[len(path.name) + 1:].isdigit()),
                     key=lambda p: -int(p.name[len(path.name) + 1:]))
    return [*rotated, *([path] if path.exists() else [])]


@dataclass
class Skipped:
    """Lines `read_answers` skipped: torn by a crash mid-write, or not JSON."""

    lines: int = 0
    where: str | None = None  # the first, as FILE:LINE


def read_answers(path: str | Path, skipped: Skipped | None = None,
                 may_match: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The logged answers, in the order they were answered (`at` is when each was asked), a line at a time (a log
    of millions of lines is never held whole). `may_match(line)`: False for a line to skip unparsed (parsing is
    most of what reading costs). A line that is no answer (torn by a crash) is counted in `skipped`, not raised."""
    for file in log_files(path):
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                torn = not line.endswith("\n")  # the last, cut short by a crash mid-write (said, whatever matches)
                if not torn and may_match is not None and not may_match(line):
                    continue
                try:
                    answer = json.loads(line)
                    if torn or not isinstance(answer, dict) or "neighbors" not in answer:
                        raise ValueError("not an answer")
                except ValueError:
                    if skipped is not None:
                        skipped.lines += 1
                        skipped.where = skipped.where or f"{file}:{number}"
                    continue
                yield answer

def embedded_forgets(folder: str | Path) -> tuple[str, dict[str, list[str]]]:
    """An embedded memory's key and what it forgot when (`forget_times`), read from its files without opening it:
    a memory a running service holds is open in that process alone, and its journal can still be read.
    MemoryStoreError where the folder holds no memory."""
    folder = Path(folder).expanduser()
    meta = read_meta_file(folder)
    return memory_key(meta), forget_times(FileJournal(folder / JOURNAL_FILE).read())


def forget_times(entries: Iterable[JournalEntry]) -> dict[str, list[str]]:
    """Point id -> when it was forgotten (each time, in order), from a memory's journal entries."""
    times: dict[str, list[str]] = {}
    for e in entries:
        if e.op == "forget":
            for pid in e.ids:
                times.setdefault(pid, []).append(e.at)
    for at in times.values():
        at.sort()
    return times


@dataclass(frozen=True)
class AnswerQuery:
    """Which logged answers `decisions` looks for; None: any."""

    points: frozenset[str] | None = None  # answers with one of these points among their neighbours
    forgotten: Mapping[str, list[str]] | None = None  # (forget_times) answers with a neighbour forgotten after them
    memory: str | None = None  # answers from this memory (its key)
    via: str | None = None
    label: str | None = None
    since: str | None = None  # ISO 8601 in UTC: at or after it
    by: str | None = None  # answers asked with the API key of this name (a re-rank's)
    unsure: bool = False  # only answers flagged unsure (under the min_confidence asked for; older lines: never)

    def may_match(self, line: str) -> bool:
        """False for a line that cannot match, found without parsing it."""
        if self.since is not None and line.startswith('{"at":"') and line[7 : 7 + len(self.since)] < self.since:
            return False
        if self.memory is not None and self.memory not in line:
            return False
        # written as `record` writes it
        if self.by is not None and f'"by":{json.dumps(self.by, ensure_ascii=False)}' not in line:
            return False
        if self.unsure and '"unsure":true' not in line:
            return False
        return self.points is None or any(pid in line for pid in self.points)

    def used(self, answer: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The neighbours of a logged answer that make it match (each with `forgotten_at` where it was forgotten
        after the answer), or None where it does not match."""
        if ((self.memory is not None and answer.get("memory") != self.memory)
                or (self.via is not None and answer.get("via") != self.via)
                or (self.by is not None and answer.get("by") != self.by)
                or (self.label is not None and answer.get("label") != self.label)
                or (self.unsure and answer.get("unsure") is not True)
                or (self.since is not None and str(answer.get("at")) < self.since)):
            return None
        if self.points is None and self.forgotten is None:
            return []
        used = []
        searched = str(answer.get("cached_at") or answer.get("at"))  # a cached answer's: the answer's it repeats
        for n in answer.get("neighbors", []):
            if self.points is not None and n.get("id") not in self.points:
                continue
            if self.forgotten is not None:  # forgotten after the search
                later = [at for at in self.forgotten.get(n.get("id"), ()) if at > searched]
                if not later:
                    continue
                n = {**n, "forgotten_at": later[0]}
            used.append(n)
        return used or None


def decisions(path: str | Path, query: AnswerQuery, skipped: Skipped | None = None
              ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The logged answers that match, in the order answered, each with the neighbours that made it match
    (`AnswerQuery.used`).

    Example:
        >>> for answer, used in decisions("answers.jsonl", AnswerQuery(points=frozenset({point_id}))):
        ...     print(answer["at"], answer["label"], [n["rank"] for n in used])
    """
    for answer in read_answers(path, skipped, query.may_match):
        if (used := query.used(answer)) is not None:
            yield answer, used
