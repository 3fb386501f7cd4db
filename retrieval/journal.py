"""The memory's journal: one entry per edit (add, forget, relabel, erase, names, prune, tune), kept with it.

A forgotten point leaves nothing else behind, so the journal is where "was this image forgotten, when, and
how" is answered: a forget's entry lists the ids of the points it deleted (a point's id is the UUIDv5 of
its source, so a source can be looked up without the journal keeping any path). Adds are recorded as counts
per label: an added point carries its own `added_at`.

An entry is written after its edit has succeeded, so the journal never claims an edit that was not made. A
forget, relabel, naming, erase, prune or unprune of an embedded memory is also noted before its first write
(`FileJournal.intend`, a file in `journal.pending/` naming the points and their labels before, or the names), and
the note removed once its entry is written: a process killed in between leaves the note, and the memory's next
opening journals what the points (names; an erase: the memory's files; a prune: its marks and report) show was done
(`settle`), so that no forget, erasure or pruning is missing from `vmem history`. An add (a build, an import) is
noted as it begins, and the ids and labels of each batch are appended beside its note (`FileJournal.note_adds`)
before the batch is written: the next opening journals those of them the memory holds that no entry of the add
counted. Copies are not noted (docs/reliability.md says why). A journal on a Qdrant server keeps its notes in a
collection beside its own (`CollectionJournal`), and an opening settles only those of processes known to have ended,
as others may be editing the memory meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import functools
import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from .files import error_line, os_error_reason, process_running, process_start
from .schema_types import IsoTime, PointIdText
from .text import counted, short_repr

log = logging.getLogger(__name__)
JournalOp = Literal["add", "forget", "relabel", "erase", "name", "prune", "unprune", "tune", "copy", "settings"]
# The edits noted before they are made (`PendingEdit`).
NotedOp = Literal["forget", "relabel", "name", "erase", "prune", "unprune", "add", "tune", "settings"]
JOURNAL_FILE = "journal.jsonl"
# Beside it: one note per forget, relabel, naming or erase in progress (`PendingEdit`), removed once its entry is
# written.
PENDING_DIR = "journal.pending"
# Beside an add's note: a line per point it is about to write, `["id", "label"]`, appended batch by batch.
ADDS_SUFFIX = ".adds"
# In an add's entries' detail: its note's token, so that settling the note counts that add's own entries alone
ADD_NOTE_KEY = "note"
_AT_OPENING = '{"at":"'  # how an entry's JSON line begins: its time is read without parsing the rest
# Ids per entry: a forget of more points is written as several entries (parts), each within a Qdrant
# server's request size limit (32 MB by default; an id is 36 characters of JSON, plus quotes).
IDS_PER_ENTRY = 100_000
# A server memory's notes (`CollectionJournal.intend`) are kept in the collection beside its journal's of this name
# (`vmem-journal-pending`); a list of a note's points is a point of it per this many points.
PENDING_COLLECTION_SUFFIX = "-pending"
PAIRS_PER_LIST = 20_000
# The payload keys a server journal's lookups filter by, and their kinds (Qdrant's payload schema types): a server
# without an index on a key reads every point's payload to filter by it, and an opening's settling reads the journal
# so for each note (`_holds_entry_of`, `_changed_by_others_since`, `_journaled_adds`; `newest`'s `--op`); each edit
# deletes its note by `token`, and the notes' lists are read by `token` and `kind`.
JOURNAL_INDEXES = {"op": "keyword", "host": "keyword", "pid": "integer", f"detail.{ADD_NOTE_KEY}": "keyword"}
PENDING_INDEXES = {"token": "keyword", "kind": "keyword"}
# The collections (journal, notes) this process was refused the indexes of: said once
_TOLD_UNINDEXED: set[str] = set()
# The namespace of the ids of entries written by settling a note (`CollectionJournal._append_settled`)
_SETTLED_IDS = uuid.UUID("6f1e3c52-8a8e-4b8f-9d55-2f0a4c1b7e31")
# The name of the API key the request being served came with (the service sets it as it checks the key; None: no
# key): the journal records it as who made an edit (`by`), the answer log as who asked for a re-rank.
KEY_NAME: ContextVar[str | None] = ContextVar("vmem_key_name", default=None)


class JournalEntry(BaseModel):
    """One edit of the memory."""

    at: IsoTime = Field(description="when the edit finished (UTC, ISO 8601)")
    op: JournalOp = Field(description="the kind of edit")
    points: int = Field(default=0,
                        description="points the edit added, deleted or relabelled (the whole edit's, repeated "
                                       "in each of its parts: count an edit once, by its part 0)")
    labels: dict[str, int] = Field(default_factory=dict,
                                   description="points per label the edit added or deleted (relabel: per old label)")
    ids: list[PointIdText] = Field(default_factory=list,
                                   description="forget and relabel: the ids of the points changed")
    to: str | None = Field(default=None, description="relabel: the new label")
    selector: dict[str, Any] = Field(default_factory=dict,
                                     description="how the points were chosen: label, source_prefix, ids asked for, or "
                                                 "like_sha256 (the sha256 of an image whose copies were forgotten) "
                                                 "and min_similarity")
    detail: dict[str, Any] = Field(default_factory=dict, description="what else the edit was: names set, settings")
    via: str = Field(default="python", description="python, cli or http")
    by: str | None = Field(default=None, description="http: the name of the API key the edit was made with "
                                                     "(VMEM_API_KEY's is `default`; none without authentication)")
    host: str = Field(default_factory=socket.gethostname, description="the machine of the process that edited")
    pid: int = Field(default_factory=os.getpid, description="that process's id")
    part: int | None = Field(default=None,
                             description="an edit of more than 100,000 points: which of its entries, from 0; "
                                               "each carries its share of `ids` and the whole edit's totals")

    def cites(self, point_id: str) -> bool:
        return point_id in self.ids

    def __repr__(self) -> str:
        """The entry with its ids (and long label counts) cut short: a history of label forgets shown in a notebook
        ran to 40 characters an id. `.ids` holds them all."""
        return short_repr(self)

    __str__ = __repr__

    def touches(self, label: str) -> bool:
        """Whether the edit added, deleted or relabelled points of this label, relabelled to it, or named it (or
        dropped its name)."""
        return (label in self.labels or self.to == label or self.selector.get("label") == label
                or label in self.detail.get("names", {}) or label in self.detail.get("dropped", ()))

    def key(self) -> tuple[Any, ...]:
        """What tells one recorded edit from another (a copy of an entry has the same)."""
        return self.at, self.op, self.host, self.pid, self.part


class PendingEdit(BaseModel):
    """A forget, relabel, naming, erase, prune, tune or add about to be made, noted before its first write
    (`FileJournal.intend`): what its entry will say, and each point it is to change with its label before, so that
    what the points (a naming: the memory's label names; an erase: its files; a tune: its settings) show afterwards
    says how much of it was made. An add's points are listed beside the note as it goes (`Journal.note_adds`)."""

    token: str = Field(description="the note's name in journal.pending/")
    begun: IsoTime = Field(description="when the edit began: the entry's `at` if the edit is journaled by `settle`")
    op: NotedOp
    before: dict[PointIdText, str] = Field(default_factory=dict,
                                           description="each point the edit is to change, and its label before")
    fields: dict[str, Any] = Field(default_factory=dict,
                                   description="the rest of its entry: to, selector, detail, via, by")
    host: str
    pid: int
    journal_size: int = Field(description="the journal file's length when the edit began: its entry comes after")
    begun_with: dict[str, Any] = Field(default_factory=dict,
                                       description="prune, unprune: the memory's points marked by pruning "
                                                   "(`marked`) and its pruning's time (`pruning_at`) as it began")

    def pruning_entry(self, pruning_now: Mapping[str, Any] | None,
                      marked_now: int) -> tuple[int, dict[str, Any]] | None:
        """A prune's or unprune's entry (points, detail) as the memory shows it made, given its pruning report and
        points marked now; None where it shows nothing made. A prune is whole where the memory holds a report made
        after it began (written after its marks), an unprune where nothing is marked or reported; an edit killed
        between its marks is journaled as far as it went, with `detail.incomplete` (run again, it ends whole)."""
        at_now = (pruning_now or {}).get("at")
        if self.op == "prune" and pruning_now is not None and at_now is not None and at_now >= self.begun:
            marked = pruning_now.get("down_weighted" if pruning_now.get("mode") == "soft" else "excluded")
            return int(marked or 0), dict(pruning_now)
        if (marked_now, at_now) == (self.begun_with.get("marked"), self.begun_with.get("pruning_at")):
            return None  # as it began: killed before its first write
        if self.op == "prune":
            return marked_now, {"incomplete": True}
        return (max(0, int(self.begun_with.get("marked") or 0) - marked_now),
                {"incomplete": True} if marked_now or at_now else {})

    def settings_made(self, settings: Mapping[str, Any], index: Mapping[str, Any]) -> bool:
        """A tune's or a search settings' change (one write of vmem.json: whole or not at all): whether the memory's
        settings (`settings`; its index settings, `index`) are as it left them. A tune that set what was there
        already shows made, as it is journaled run whole."""
        detail = self.fields.get("detail", {})
        if self.op == "settings":
            return all(index.get(name) == value for name, value in detail.get("search", {}).items())
        if detail.get("reset"):
            return "vote" not in settings
        return settings.get("vote") == detail.get("vote") and (
            "tuning" not in detail or settings.get("tuning") == detail["tuning"])

    def made(self, labels_now: Mapping[str, str], names_now: Mapping[str, str], erased: bool = False) -> list[str]:
        """The points the edit shows made, given the labels of those of its points that exist now: a forget's
        are gone, a relabel's hold its new label. A naming (one write of vmem.json: whole or not at all): the
        labels it named or dropped the names of, where the memory's names (`names_now`) are as it left them. An
        erase: one item, "erase", where the memory's files hold no vector of a deleted point (`erased`), what an
        erase leaves (and what its entry tells an audit)."""
        if self.op in ("erase", "tune", "settings"):  # `erased`: what the memory shows of it (`settings_made`)
            return [self.op] if erased else []
        if self.op == "forget":
            return [pid for pid in self.before if pid not in labels_now]
        if self.op == "relabel":
            return [pid for pid in self.before if labels_now.get(pid) == self.fields.get("to")]
        named, dropped = self.fields.get("detail", {}).get("names", {}), self.fields.get("detail", {}).get(
            "dropped", [])
        whole = all(names_now.get(label) == name for label, name in named.items()) and not any(
            label in names_now for label in dropped)
        return [*named, *dropped] if whole else []


@dataclass(frozen=True)
class JournalQuery:
    """Which entries a history asks for; None: any."""

    op: JournalOp | None = None
    point_id: str | None = None  # the edits that forgot or relabelled this point
    label: str | None = None  # the edits that touched this label
    since: str | None = None  # ISO 8601 in UTC, as entries' `at`: at or after it
    by: str | None = None  # the edits made with the API key of this name
    until: str | None = None  # ISO 8601 in UTC, as entries' `at`: at or before it (a history read a page at a time)

    def matches(self, e: JournalEntry) -> bool:
        return ((self.op is None or e.op == self.op) and (self.point_id is None or e.cites(self.point_id))
                and (self.label is None or e.touches(self.label)) and (self.since is None or e.at >= self.since)
                and (self.until is None or e.at <= self.until) and (self.by is None or e.by == self.by))

    def may_match(self, line: str) -> bool:
        """False for an entry's JSON line that cannot match: its op, the point id, the label or `by` is not in it.
        Parsing is what a long journal's history costs, and most lines are rejected here without it."""
        if self.op is not None and f'"op":"{self.op}"' not in line:
            return False
        if self.point_id is not None and self.point_id not in line:
            return False
        # A key's name or a label that JSON writes as it is (_plain) is in the line as is.
        if self.by is not None and _plain(self.by) and f'"by":"{self.by}"' not in line:
            return False
        return not (self.label is not None and _plain(self.label) and self.label not in line)

    @property
    def selective(self) -> bool:
        """Whether an entry must be parsed to know (beyond `since` and `until`) that it matches."""
        return self.op is not None or self.point_id is not None or self.label is not None or self.by is not None


class JournalPage(NamedTuple):
    """A page of a history (`Journal.page`): its entries, newest first, how many older ones match too, and the
    cursor of the next page (None after the last)."""

    entries: list[JournalEntry]
    earlier: int
    next_cursor: str | None


# An entry's place in its journal's order, oldest first: its `at`, then what orders the entries of one time (a line
# number; a server's `seq` and point id). A cursor names the oldest entry of a page by it: a page ending inside the
# entries of one time (a forget's parts) goes on with the next of them, where an `until` of that time stalled.
Position = tuple[Any, ...]


def _cursor_of(position: Position) -> str:
    """A position as a cursor: URL-safe base64 of its JSON (an `at`'s `+` read as a space in a URL's query)."""
    return base64.urlsafe_b64encode(json.dumps(list(position), separators=(",", ":")).encode()).decode().rstrip("=")


def _position_of(cursor: str, kinds: tuple[type, ...]) -> Position:
    """The position a cursor names, with these kinds of items; ValueError for a cursor that is none (of a journal
    of another kind: an embedded memory's, given to a server's)."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        position = None
    if not (isinstance(position, list) and len(position) == len(kinds) and all(
            isinstance(item, kind) and not isinstance(item, bool) for item, kind in zip(position, kinds, strict=True))
            and _is_time(position[0])):
        # Said for every door: HTTP answers the cursor as `next_cursor`, the CLI as "next page: --cursor ..."
        raise ValueError(f"{cursor!r} is no cursor of this memory's history: give the next page's cursor that the "
                         f"page before it gave")
    return tuple(position)


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        return False


def _plain(text: str) -> bool:
    """Whether JSON writes the text as it is: no quote, backslash or control character to escape."""
    return not any(c in '"\\' or c < " " for c in text)


def now() -> str:
    return datetime.now(UTC).isoformat()


def entries_for(op: JournalOp, ids: Sequence[str] = (), at: str | None = None, **fields: Any) -> list[JournalEntry]:
    """The entries of one edit (at `at`, default now): one, or one per 100,000 ids."""
    at = at or now()
    if len(ids) <= IDS_PER_ENTRY:
        return [JournalEntry(at=at, op=op, ids=list(ids), **fields)]
    return [JournalEntry(at=at, op=op, ids=list(ids[start : start + IDS_PER_ENTRY]), part=i, **fields)
            for i, start in enumerate(range(0, len(ids), IDS_PER_ENTRY))]


def add_note_detail(note: PendingEdit | None) -> dict[str, str]:
    """What an add's entry adds to its detail: the add's note (`ADD_NOTE_KEY`), where it has one."""
    return {ADD_NOTE_KEY: note.token} if note is not None else {}


def label_counts(labels: Mapping[str, str] | Sequence[str]) -> dict[str, int]:
    """Points per label, most first, from labels (or {id: label})."""
    values = labels.values() if isinstance(labels, Mapping) else labels
    return most_first(Counter(values))


def most_first(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# What is known of the process that wrote a note left unjournaled (`LeftNote`)
NoteProcess = Literal["ended", "running", "unknown"]


@dataclass(frozen=True)
class LeftNote:
    """A note of an edit begun and not journaled yet (`Journal.notes`: `vmem history --notes`), with what this process
    can tell of the process that wrote it: `ended` (on this host, in this pid namespace, and no longer running: any
    opening journals it), `running` (here, still running: its edit is in progress, for it to journal), or `unknown`
    (on another host or container, where nothing here tells; an operator who knows it gone settles it by hand,
    `VisualMemory.settle_notes`)."""

    note: PendingEdit  # its points (`before`) with the lists written beside it
    process: NoteProcess


class Journal(ABC):
    """Where a memory's entries are kept."""

    @abstractmethod
    def append(self, entries: Sequence[JournalEntry]) -> None: ...

    @property
    def newest_at(self) -> str | None:
        """The time of the newest edit recorded (the answer log's `edit_at`), None before the first."""
        return None

    def record(self, op: JournalOp, ids: Sequence[str] = (), **fields: Any) -> bool:
        """Record an edit that has been made (`entries_for`); whether it was. A journal that cannot be written is
        logged, not raised: the edit stands, and failing its call would say it did not."""
        try:
            self.append(entries_for(op, ids, **fields))
            return True
        except OSError as exc:  # a full or read-only disk: the reason is the whole story, no traceback each edit
            log.error("the memory's journal could not record a %s of %s (%s: %s); the edit itself was made",
                      op, counted(fields.get("points", len(ids)), "point"), os_error_reason(exc),
                      getattr(exc, "filename", None) or "")
        except Exception:
            log.error("the memory's journal could not record a %s of %s; the edit itself was made", op,
                      counted(fields.get("points", len(ids)), "point"), exc_info=True)
        return False

    def intend(self, op: NotedOp, before: Mapping[str, str], begun_with: Mapping[str, Any] | None = None,
               **fields: Any) -> PendingEdit | None:
        """Note a forget or relabel of these points ({id: label before}), or a naming or an erase, before its first
        write, where this journal keeps notes (`FileJournal`, `CollectionJournal`); None where it keeps none, or
        where the note could not be written (logged: the edit goes on, journaled after it as before). `begun_with`:
        a prune's or unprune's state of the memory as it begins (`PendingEdit.begun_with`)."""
        return None

    def settled(self, note: PendingEdit | None) -> None:  # noqa: B027  # no notes kept here: nothing to remove
        """The noted edit's entry is written (or the edit made nothing): its note goes."""

    def pending(self) -> list[PendingEdit]:
        """The notes of edits begun and never settled: their process was killed (or could not write the entry)."""
        return []

    def notes(self) -> list[LeftNote]:
        """Every note of an edit begun and not journaled yet that this vmem can read, oldest first, its points listed
        (an add's too). An embedded memory is held by one process at a time: a note of another is of one ended, and
        its opening journals it (only this process's own threads' are running)."""
        here = socket.gethostname()
        return [LeftNote(note.model_copy(update={"before": self.noted_adds(note)}) if note.op == "add" else note,
                         "running" if (note.host, note.pid) == (here, os.getpid()) else "ended")
                for note in self.pending()]

    def settle(self, note: PendingEdit, labels_now: Mapping[str, str], names_now: Mapping[str, str],
               at_open: bool = True, erased: bool = False,
               pruning: tuple[Mapping[str, Any] | None, int] | None = None, by_hand: bool = False) -> int:
        """Journal what a noted edit made, as the labels of its points that exist now (a naming: the memory's
        names) show it (`PendingEdit.made`), unless its entry was written before the note could go; then remove
        the note. Returns the points (labels named) journaled here. Only for a memory no process is editing: what
        it shows is then what the edit left. `at_open`: a note a dead process left, journaled at the edit's start
        with `detail.journaled_at_open` saying when; else the edit's own process, whose edit failed midway, now.
        `by_hand`: settled because an operator said its process was gone (`vmem history --settle`), not because
        this process saw it ended: `detail.settled_by_hand`, for an audit to tell."""
        opened = {"journaled_at_open": now(), **({"settled_by_hand": True} if by_hand else {})} if at_open else {}
        if note.op == "add":  # `before`: the points it listed (`noted_adds`); those held and counted by no entry of it
            counts = Counter(note.before[pid] for pid in note.before if pid in labels_now) - self._journaled_adds(note)
            if counts:
                # Naming its note as the add's own entries do: an opening killed before the note went counts it then
                fields = {**note.fields, "detail": {**note.fields.get("detail", {}), **add_note_detail(note),
                                                    **opened}}
                self._append_settled(note, entries_for(
                    "add", at=note.begun if at_open else None, host=note.host, pid=note.pid,
                    points=sum(counts.values()), labels=most_first(counts), **fields))
            self.settled(note)
            return sum(counts.values())
        if note.op in ("prune", "unprune"):  # what the memory's pruning report and marks show (`pruning`)
            entry = note.pruning_entry(*pruning) if pruning is not None else None
            made: list[str] = [note.op] if entry is not None else []
        else:
            made = note.made(labels_now, names_now, erased)
        if made and note.op in ("forget", "relabel", "name") and (later := self._changed_by_others_since(note)):
            # An older vmem (a rollback) keeps no notes and left this one: its edits since judge these points
            # (names), not the note; a point it forgot was still there, so this edit had not forgotten it
            made = [] if note.op == "name" else [pid for pid in made if pid not in later]
        if made and not self._holds_entry_of(note):
            fields = ({**note.fields, "detail": {**note.fields.get("detail", {}), **opened}}
                      if at_open else note.fields)
            at = note.begun if at_open else None
            if note.op in ("prune", "unprune"):
                points, detail = entry  # type: ignore[misc]  # not None where made
                fields = {**fields, "detail": {**detail, **fields.get("detail", {})}}
                self._append_settled(note, entries_for(note.op, at=at, host=note.host, pid=note.pid, points=points,
                                                       **fields))
            elif note.op in ("name", "erase", "tune", "settings"):
                self._append_settled(note, entries_for(note.op, at=at, host=note.host, pid=note.pid, **fields))
            else:
                self._append_settled(note, entries_for(note.op, made, at=at, points=len(made),
                                                       labels=label_counts([note.before[pid] for pid in made]),
                                                       host=note.host, pid=note.pid, **fields))
        else:
            made = []
        self.settled(note)
        return len(made)

    def _append_settled(self, note: PendingEdit, entries: Sequence[JournalEntry]) -> None:
        """Append the entries `settle` makes of a note (`CollectionJournal`: under ids of the note's, so that two
        processes settling one note at once write one entry)."""
        self.append(entries)

    def _holds_entry_of(self, note: PendingEdit) -> bool:
        return False

    def note_adds(self, note: PendingEdit | None, ids: Sequence[str],  # noqa: B027  # no notes kept here
                  labels: Sequence[str]) -> None:
        """List points an add is about to write beside its note (`FileJournal`); nothing where no notes are kept."""

    def noted_adds(self, note: PendingEdit) -> dict[str, str]:
        """The points an add's note lists ({id: label}), as far as they were written whole."""
        return dict(note.before)

    def _journaled_adds(self, note: PendingEdit) -> Counter[str]:
        """Points per label that the noted add's own entries (those naming its note, `add_note_detail`) journaled."""
        return Counter()

    def _changed_by_others_since(self, note: PendingEdit) -> set[str]:
        """The points (a naming: labels) that entries of other processes, written since the noted edit began,
        forgot, relabelled or named."""
        return set()

    # The kinds of a position's items (`Position`)
    _POSITION: tuple[type, ...] = (str, int)

    def read(self) -> list[JournalEntry]:
        """Every entry, oldest first."""
        return [e for _, e in self._positioned()]

    @abstractmethod
    def _positioned(self) -> list[tuple[Position, JournalEntry]]:
        """Every entry with its position, oldest first."""

    def newest(self, query: JournalQuery, limit: int | None = None) -> tuple[list[JournalEntry], int]:
        """The newest `limit` entries that match (all of them for None), newest first, and how many older ones
        match too. Read whole here (`Journal.page`); the journals read less."""
        entries, earlier, _ = Journal.page(self, query, limit)
        return entries, earlier

    def page(self, query: JournalQuery, limit: int | None = None, cursor: str | None = None) -> JournalPage:
        """`newest` of the entries older than those a page showed (`cursor`: its `next_cursor`), with the cursor of
        the next page: the oldest entry's position where older ones match too. ValueError for a cursor that is
        none."""
        after = _position_of(cursor, self._POSITION) if cursor is not None else None
        found = [(position, e) for position, e in reversed(self._positioned())
                 if (after is None or position < after) and query.matches(e)]
        shown = found if limit is None else found[:limit]
        earlier = len(found) - len(shown)
        return JournalPage([e for _, e in shown], earlier, _cursor_of(shown[-1][0]) if earlier and shown else None)

    def not_held(self, other: Journal) -> list[JournalEntry]:
        """The entries of `other` this journal does not hold yet, oldest first."""
        held = {e.key() for e in self.read()}
        return [e for e in other.read() if e.key() not in held]

    def carry_from(self, other: Journal, entries: Sequence[JournalEntry] | None = None) -> int:
        """Append the entries of `other` this journal does not hold yet (a memory copied here: its history comes
        along; a copy run again adds none twice), or those `entries` of them. Returns how many."""
        new = list(entries) if entries is not None else self.not_held(other)
        for start in range(0, len(new), 256):
            self.append(new[start : start + 256])
        return len(new)


class FileJournal(Journal):
    """JSON lines in a file beside an embedded memory, appended to and synced with each edit; the notes of edits in
    progress in `journal.pending/` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending_dir = path.with_name(PENDING_DIR)
        # The service's threads edit at once: a large entry (a forget's ids) can take several writes, which
        # must not interleave with another thread's. (One process holds an embedded memory.)
        self._lock = threading.Lock()
        self._newest_at: str | bool | None = False  # False: not read yet

    @property
    def newest_at(self) -> str | None:
        """The newest entry's time: read from the file's last line once (an embedded memory is open in one process
        at a time, so no other writes it meanwhile), then kept as entries are appended."""
        with self._lock:
            if self._newest_at is False:
                self._newest_at = _last_time(self.path)
            return self._newest_at  # type: ignore[return-value]  # not False once read

    def append(self, entries: Sequence[JournalEntry]) -> None:
        if not entries:
            return
        data = "".join(e.model_dump_json() + "\n" for e in entries).encode()
        # Whole lines appended, then synced: a crash leaves at most a torn last line.
        with self._lock, open(self.path, "ab") as f:
            self._cut_torn_tail(f)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if self._newest_at is not False:
                self._newest_at = max(self._newest_at or "", *(e.at for e in entries))

    def intend(self, op: NotedOp, before: Mapping[str, str], begun_with: Mapping[str, Any] | None = None,
               **fields: Any) -> PendingEdit | None:
        try:
            with self._lock, open(self.path, "ab") as f:
                # Cut now, not at the entry's append: the entry then begins at or after `journal_size`.
                self._cut_torn_tail(f)
                size = f.seek(0, os.SEEK_END)
            note = PendingEdit(token=uuid.uuid4().hex, begun=now(), op=op, before=dict(before), fields=fields,
                               host=socket.gethostname(), pid=os.getpid(), journal_size=size,
                               begun_with=dict(begun_with or {}))
            self.pending_dir.mkdir(exist_ok=True)
            # Written whole before the edit's first write: a note cut short was never followed by one (`pending`
            # removes it). Not synced: a process killed keeps what it wrote, and syncing a new file made a one-point
            # forget 6 ms slower, 8 times the edit (docs/benchmarks/journal_note.py); a power loss is not covered
            # (docs/reliability.md).
            with open(self.pending_dir / f"{note.token}.json", "xb") as n:
                n.write(note.model_dump_json().encode())
            return note
        except OSError as exc:
            log.error("the memory's journal could not note a %s of %d points before making it (%s: %s): a crash "
                      "before its entry would leave it unjournaled", op, len(before), os_error_reason(exc),
                      getattr(exc, "filename", None) or "")
            return None

    def settled(self, note: PendingEdit | None) -> None:
        if note is not None:
            # The list first: a note whose list is gone was settled (its entry written), one without its note is
            # never read
            (self.pending_dir / f"{note.token}{ADDS_SUFFIX}").unlink(missing_ok=True)
            (self.pending_dir / f"{note.token}.json").unlink(missing_ok=True)

    def note_adds(self, note: PendingEdit | None, ids: Sequence[str], labels: Sequence[str]) -> None:
        if note is None or not ids:
            return
        # Appended, not synced, as the note is written (`intend`): one write a batch. A kill leaves whole lines and
        # at most one torn line, of a batch not yet written to the memory.
        data = "".join(json.dumps([pid, label], ensure_ascii=False) + "\n" for pid, label in zip(ids, labels,
                                                                                                 strict=True))
        try:
            with open(self.pending_dir / f"{note.token}{ADDS_SUFFIX}", "ab") as f:
                f.write(data.encode())
        except OSError as exc:  # the add goes on: a crash before its entry would leave these points unjournaled
            log.error("the memory's journal could not note %d points before adding them (%s: %s)", len(ids),
                      os_error_reason(exc), getattr(exc, "filename", None) or "")

    def noted_adds(self, note: PendingEdit) -> dict[str, str]:
        path = self.pending_dir / f"{note.token}{ADDS_SUFFIX}"
        listed = dict(note.before)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.endswith("\n"):
                        break  # torn by a kill as it was written: its batch was not written
                    try:
                        pid, label = json.loads(line)
                    except ValueError:
                        continue
                    listed[str(pid)] = str(label)
        except FileNotFoundError:
            pass
        return listed

    def _journaled_adds(self, note: PendingEdit) -> Counter[str]:
        # Only the add's own entries, which name its note (`ADD_NOTE_KEY`): by process and kind, the entry of a later
        # add of the same label (a service going on after this one's entry could not be written) or of a second
        # import of the same file counted as this one's, and its points were never journaled
        counts: Counter[str] = Counter()
        if not self.path.exists():
            return counts
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(min(note.journal_size, self.path.stat().st_size))
            for line in f:
                if (line.endswith("\n") and note.token in line and (e := _parsed(line)) is not None
                        and (e.op, e.host, e.pid) == ("add", note.host, note.pid)
                        and e.detail.get(ADD_NOTE_KEY) == note.token):
                    counts.update(e.labels)
        return counts

    def pending(self) -> list[PendingEdit]:
        if not self.pending_dir.is_dir():
            return []
        notes = []
        for path in sorted(self.pending_dir.glob("*.json")):
            data = path.read_bytes()
            try:
                notes.append(PendingEdit.model_validate_json(data))
            except ValueError:
                if _whole_object(data):
                    # Whole, but of an edit this vmem does not know (a newer vmem's, before a rollback): left for
                    # that vmem to settle. The vmem of 4f6c9ae removed such a note as cut short, and with it the
                    # journaling of the add or tune it noted.
                    log.warning("left %s in %s, a note of an edit this vmem cannot read (a newer vmem's?): the vmem "
                                "that wrote it journals that edit when it opens the memory again", path.name,
                                self.pending_dir)
                    continue
                # cut short by a crash as it was written: its edit had not begun
                log.warning("removed %s, a note of an edit whose process died before the edit began", path.name)
                path.unlink(missing_ok=True)
                (self.pending_dir / f"{path.stem}{ADDS_SUFFIX}").unlink(missing_ok=True)
        listed = {path.stem for path in self.pending_dir.glob("*.json")}
        for orphan in sorted(self.pending_dir.glob(f"*{ADDS_SUFFIX}")):
            if orphan.stem not in listed:  # its note was removed by a vmem that knows no add notes (4f6c9ae)
                points = orphan.read_bytes().count(b"\n")
                log.warning("removed %s, the points (%d) an add listed before writing them, whose note an older vmem "
                            "removed: if a kill stopped that add before its entry, the points it added are not in "
                            "the history", orphan.name, points)
                orphan.unlink(missing_ok=True)
        return sorted(notes, key=lambda n: n.begun)

    def _holds_entry_of(self, note: PendingEdit) -> bool:
        """Whether the journal holds the noted edit's entry: one of its process, op and points (a naming: its
        names; an erase, prune or unprune: its op alone), after where the journal ended as it began (its own lines
        only, however long the journal)."""
        if not self.path.exists():
            return False
        pid, op = f'"pid":{note.pid}', f'"op":"{note.op}"'
        with open(self.path, encoding="utf-8", errors="replace") as f:  # a torn tail may cut a character (`_entries`)
            f.seek(min(note.journal_size, self.path.stat().st_size))
            for line in f:
                if (line.endswith("\n") and op in line and pid in line
                        and (e := _parsed(line)) is not None and e.host == note.host and e.pid == note.pid
                        and e.op == note.op and _is_entry_of(note, e.ids, e.detail)):
                    return True
        return False

    def _changed_by_others_since(self, note: PendingEdit) -> set[str]:
        # Entries after where the journal ended as the edit began, by another process: only a vmem that keeps no
        # notes writes them before the memory's next opening settles this one (`MemoryStore.settle_journal`)
        if not self.path.exists():
            return set()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(min(note.journal_size, self.path.stat().st_size))
            others = (e for line in f if line.endswith("\n") and (e := _parsed(line)) is not None
                      and (e.host, e.pid) != (note.host, note.pid))  # read as judged: a journal may be long
            return _changed_of(note, ((e.op, e.ids, e.detail) for e in others))

    @staticmethod
    def _cut_torn_tail(f: Any) -> None:
        """Cut off a last line a crash left without its newline: appended to, it and the next entry made one line
        that no reader could parse, and every history failed from then on. (Its edit was made; its entry is lost.)"""
        end = f.seek(0, os.SEEK_END)
        if not end:
            return
        with open(f.name, "rb") as r:
            r.seek(end - 1)
            if r.read(1) == b"\n":
                return
            # The torn line begins after the last newline before it (read back in blocks: an entry may be long).
            start, pos = 0, end
            while pos > 0:
                step = min(1 << 16, pos)
                r.seek(pos - step)
                if (i := r.read(step).rfind(b"\n")) >= 0:
                    start = pos - step + i + 1
                    break
                pos -= step
        log.warning("the memory's journal ended in a line torn by a crash (%d bytes): cut off", end - start)
        f.truncate(start)
        f.seek(start)

    def _positioned(self) -> list[tuple[Position, JournalEntry]]:
        """Each entry at (its `at`, its line's number): in time order, as entries carried from a copied memory are
        appended after this one's own, and in the order written within one time. The file is only appended to, so
        a line's number stays its own."""
        if not self.path.exists():
            return []
        return sorted((((entry.at, number), entry) for number, line in enumerate(self._whole_lines())
                       if (entry := _parsed(line)) is not None), key=lambda pair: pair[0])

    def newest(self, query: JournalQuery, limit: int | None = None) -> tuple[list[JournalEntry], int]:
        entries, earlier, _ = self.page(query, limit)
        return entries, earlier

    def page(self, query: JournalQuery, limit: int | None = None, cursor: str | None = None) -> JournalPage:
        """As `Journal.page`, parsing only the lines that may match and the `limit` newest that do: the page's
        "recent edits" of a journal of 100,000 one-image adds took 1.1 s of the service's GIL when every line
        was parsed (README, "The journal")."""
        after = _position_of(cursor, self._POSITION) if cursor is not None else None
        if limit is None or not self.path.exists():
            return super().page(query, limit, cursor)
        newest: list[tuple[str, int, str]] = []  # the `limit` newest matches as (at, line number, line), a heap
        matched = 0
        for number, line in enumerate(self._whole_lines()):
            if line.startswith(_AT_OPENING) and (end := line.find('"', len(_AT_OPENING))) > 0:
                at = line[len(_AT_OPENING) : end]
                if ((query.since is not None and at < query.since) or (query.until is not None and at > query.until)
                        or not query.may_match(line)):
                    continue
                if query.selective and not ((entry := _parsed(line)) is not None and query.matches(entry)):
                    continue
            else:  # not as this version writes an entry: parsed to be sure
                if (entry := _parsed(line)) is None or not query.matches(entry):
                    continue
                at = entry.at
            if after is not None and (at, number) >= after:  # shown by the pages before
                continue
            matched += 1
            if len(newest) < limit:
                heapq.heappush(newest, (at, number, line))
            elif limit:
                heapq.heappushpop(newest, (at, number, line))
        # Each line as this vmem writes an entry counts as one edit, shown or earlier. The one such line that is no
        # entry is an earlier vmem's torn line with the next entry appended to it (`_parsed`): it holds that whole
        # entry, which no history shows, so it is counted as one earlier edit (`Journal.newest`, parsing every line,
        # counts none: looking for it in each line cost a tenth of the page's list). A read passing as a torn line
        # was cut off made another such line, and one that parsed (`_whole_lines`): no more.
        shown = sorted(newest, reverse=True)
        entries = [e for *_, line in shown if (e := _parsed(line)) is not None]
        # The next page goes on after the oldest line shown (parsed or not), where older ones match
        return JournalPage(entries, matched - len(entries),
                           _cursor_of(shown[-1][:2]) if shown and matched > len(shown) else None)

    def _whole_lines(self) -> Iterator[str]:
        """The journal's whole lines, each with its newline, as it ended when the read began: those up to its last
        newline then. A crash's torn last line is cut off by the next append (`_cut_torn_tail`), and a read passing
        then read the torn bytes and, after them, the end of the entry written in their place, as one line: no entry
        (skipped, yet counted by `newest` among the earlier edits), or one that parsed, an entry of the torn one's
        time and the new one's edit. Bytes before a newline are never rewritten (appends only; a cut takes only what
        follows the last newline), so those lines are read whole, by this process or another (`vmem history` beside
        a running `vmem serve`) with no lock; entries appended meanwhile are the next read's."""
        end = _whole_end(self.path)
        lines = 0
        with open(self.path, "rb") as f:  # counted a block at a time: a few ms for 100,000 entries
            while end > 0 and (block := f.read(min(1 << 20, end))):
                end -= len(block)
                lines += block.count(b"\n")
        # Decoded with replacement: a write stopped partway (a kill during a long write, a full disk) may cut a
        # character in two at the torn line's end, which raised UnicodeDecodeError (no history, and no opening
        # where a note was to be settled); the torn line itself is not read (the edit was made; its entry is lost).
        with open(self.path, encoding="utf-8", errors="replace") as f:
            yield from itertools.islice(f, lines)


def _whole_object(data: bytes) -> bool:
    """Whether a note's bytes are a whole JSON object: one that is not a `PendingEdit` this vmem reads was written
    whole by another vmem, not cut short by a kill."""
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def _whole_end(path: Path) -> int:
    """Where a journal file's last whole line ends (after its newline): 0 for none, or no file."""
    try:
        with open(path, "rb") as f:
            pos = f.seek(0, os.SEEK_END)
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                if (i := f.read(step).rfind(b"\n")) >= 0:
                    return pos - step + i + 1
                pos -= step
    except FileNotFoundError:
        pass
    return 0


def _last_time(path: Path) -> str | None:
    """The `at` of a journal file's last whole line (read back from its end, in blocks), or None."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            tail = b""
            while end > 0:
                step = min(1 << 16, end)
                end -= step
                f.seek(end)
                tail = f.read(step) + tail
                lines = tail.split(b"\n")
                # lines[-1]: after the last newline (empty, or torn by a crash); a whole line needs the one before it
                if len(lines) >= 3 or (end == 0 and len(lines) >= 2):
                    last = lines[-2].decode("utf-8", "replace")
                    if last.startswith(_AT_OPENING) and (close := last.find('"', len(_AT_OPENING))) > 0:
                        return last[len(_AT_OPENING) : close]
                    return entry.at if (entry := _parsed(last + "\n")) is not None else None
    except OSError:
        return None
    return None


def _parsed(line: str) -> JournalEntry | None:
    """The entry on a line; None (said in the log) for one that is not an entry: a torn line that an earlier
    vmem appended to (fixed since) made one such line, and it must not fail every history after it."""
    try:
        return JournalEntry.model_validate_json(line)
    except ValueError:
        log.warning("the memory's journal holds a line that is no entry (%d characters): skipped", len(line))
        return None


class CollectionJournal(Journal):
    """Entries as the payloads of points of their own collection beside the memory's on a Qdrant server (one
    1-d vector each: every collection needs vectors), so that every process sharing the memory writes it. The notes
    of edits in progress (`intend`), and the lists of their points, are points of a second collection beside it."""

    def __init__(self, client: Any, collection: str, local_mode: bool = False) -> None:
        self.client = client
        self.collection = collection
        # qdrant-client's local mode keeps no payload index (and reads every payload anyway): asked for one, it
        # only warns, "Payload indexes have no effect in the local Qdrant"
        self._indexes = not local_mode
        # The notes of edits in progress, and the lists of their points (`intend`), in a collection of their own:
        # the journal's is read whole by histories and copies, which would take a note for an entry.
        self.pending_collection = f"{collection}{PENDING_COLLECTION_SUFFIX}"
        self._pending_exists = False
        self._exists = False  # known to exist: asked once per process, not once per edit
        self._time_indexed = False  # its `at` indexed by this process (a journal written by an older vmem is not)
        self._unordered = False  # the server refused to order it by `at`: no `newest_at` asked of it again

    def _create(self) -> None:
        if not self._exists:
            self._make(self.collection)
        self._exists = True

    def _make(self, collection: str) -> None:
        from qdrant_client import models as qm

        if not self.client.collection_exists(collection):
            try:
                self.client.create_collection(collection, vectors_config=qm.VectorParams(
                    size=1, distance=qm.Distance.DOT), on_disk_payload=True)
            except Exception:
                if not self.client.collection_exists(collection):  # not made by another process meanwhile
                    raise
                return  # made by that process, which indexes it
            self._index(collection, {})

    def index_lookups(self) -> None:
        """At an opening: the payload indexes the journal's and the notes' lookups filter by (`JOURNAL_INDEXES`,
        `PENDING_INDEXES`), on those of their collections that exist, made by a vmem before these indexes (or by
        this one where the server refused them). A server that holds them is asked for none (its `payload_schema`);
        qdrant-client's local mode, which keeps no payload index and lists none, is asked each time (its warning
        filtered, retrieval/store.py). A collection not made yet is indexed when it is made (`_make`)."""
        from qdrant_client.http.exceptions import UnexpectedResponse

        for collection in (self.collection, self.pending_collection):
            try:
                schema = self.client.get_collection(collection).payload_schema or {}
            except (UnexpectedResponse, ValueError):  # none (a server's 404; local mode's ValueError)
                continue
            if collection == self.collection:
                self._exists = True
            else:
                self._pending_exists = True
            self._index(collection, schema)

    def _index(self, collection: str, schema: Mapping[str, Any]) -> None:
        """Ask for the lookups' indexes of `collection` that `schema` (its payload schema) lacks. Asked again, an
        index a server holds changes nothing. A refusal (a key that may write points but not make indexes) leaves
        the lookups to read every payload, as before: said once, at INFO."""
        from qdrant_client import models as qm
        from qdrant_client.http.exceptions import UnexpectedResponse

        if not self._indexes:
            return
        wanted = PENDING_INDEXES if collection == self.pending_collection else JOURNAL_INDEXES
        try:
            for key, kind in wanted.items():
                if key not in schema:
                    # Not waited for: a long journal's index is built in the server's own time (a wait could
                    # time out, failing an opening); lookups find the same points before it is there
                    self.client.create_payload_index(collection, key, qm.PayloadSchemaType(kind), wait=False)
        except UnexpectedResponse as exc:
            if collection not in _TOLD_UNINDEXED:
                _TOLD_UNINDEXED.add(collection)
                log.info("the Qdrant server refused payload indexes on %s (%s): its lookups read every point's "
                         "payload, slower on a long journal; an opening with a key that may make indexes makes them",
                         collection, error_line(exc))

    def _index_time(self) -> None:
        """A datetime index on `at`: a Qdrant server orders by a payload key only through a range index on it.
        Made by the first history, not by an edit, which it would fail where the key may not make indexes.
        (Asking again for an index that exists changes nothing.)"""
        from qdrant_client import models as qm

        if not self._time_indexed:
            if self._indexes:  # local mode orders without one
                self.client.create_payload_index(self.collection, "at", qm.PayloadSchemaType.DATETIME)
            self._time_indexed = True

    @property
    def newest_at(self) -> str | None:
        """The newest entry's time, asked of the server each time (one request ordered by `at`, made only for
        the answer log): every process sharing the memory writes this journal, so no process can keep it. Its
        existence is asked until it is found, then remembered: asked at every classify, it was a second request.
        A server that will not order the entries (a key that may read but not index) leaves it None."""
        from qdrant_client import models as qm
        from qdrant_client.http.exceptions import UnexpectedResponse

        if self._unordered or not (self._exists or self.client.collection_exists(self.collection)):
            return None
        self._exists = True
        try:
            self._index_time()
            recs, _ = self.client.scroll(self.collection, limit=1, with_payload=["at"], with_vectors=False,
                                         order_by=qm.OrderBy(key="at", direction=qm.Direction.DESC))
        except (UnexpectedResponse, ValueError) as exc:  # a server's refusal; local mode's "not found"
            if not self.client.collection_exists(self.collection):
                # Dropped since it was found (by another process sharing the memory): no journal now, which the
                # next edit makes again, its index with it; the server refused nothing
                self._exists = self._time_indexed = False
                return None
            if not isinstance(exc, UnexpectedResponse):
                raise
            # Said once: asked again, it was a refused request and a warning an answer
            log.warning("the journal's server would not order its entries (%s): no edit_at for the answer log", exc)
            self._unordered = True
            return None
        return (recs[0].payload or {}).get("at") if recs else None

    def append(self, entries: Sequence[JournalEntry]) -> None:
        self._append(entries, [str(uuid.uuid4()) for _ in entries])

    def _append(self, entries: Sequence[JournalEntry], ids: Sequence[str]) -> None:
        from qdrant_client import models as qm

        if not entries:
            return
        self._create()
        seq = time.time_ns()  # orders the entries of one edit, and edits within a clock tick
        self.client.upsert(self.collection, wait=True, points=[
            qm.PointStruct(id=pid, vector=[1.0], payload={**e.model_dump(mode="json"), "seq": seq + i})
            for i, (pid, e) in enumerate(zip(ids, entries, strict=True))])

    def _append_settled(self, note: PendingEdit, entries: Sequence[JournalEntry]) -> None:
        # Two processes opening the memory at once both find a dead process's note: each writes its entries under
        # the same ids, so that the second overwrites the first's, and the edit is journaled once.
        self._append(entries, [str(uuid.uuid5(_SETTLED_IDS, f"{note.token}/{i}")) for i in range(len(entries))])

    # ---- notes of edits in progress: points of `pending_collection`, each carrying its note's token and the
    # process that wrote it (host, pid, and when it started: a later process given the same id is not it)

    def _write_pending(self, note: PendingEdit, points: Sequence[tuple[str, dict[str, Any]]]) -> None:
        from qdrant_client import models as qm

        if not points:
            return
        if not self._pending_exists:
            self._make(self.pending_collection)
            self._pending_exists = True
        writer = {"token": note.token, "host": note.host, "pid": note.pid, "started": _started_here(),
                  "pids": _pid_namespace()}
        self.client.upsert(self.pending_collection, wait=True, points=[
            qm.PointStruct(id=pid, vector=[1.0], payload={**writer, **payload}) for pid, payload in points])

    def _write_list(self, note: PendingEdit, pairs: Sequence[tuple[str, str]],
                    then: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        """The pairs as points of the notes' collection, in parts within a server's request size limit (a forget's
        points can be a million); `then`, points written with the last part, in its request."""
        parts = [[list(p) for p in pairs[start : start + PAIRS_PER_LIST]]
                 for start in range(0, len(pairs), PAIRS_PER_LIST)] or [[]]
        for i, part in enumerate(parts):
            points = [(str(uuid.uuid4()), {"kind": "list", "pairs": part})] if part else []
            self._write_pending(note, [*points, *(then if i == len(parts) - 1 else ())])

    def intend(self, op: NotedOp, before: Mapping[str, str], begun_with: Mapping[str, Any] | None = None,
               **fields: Any) -> PendingEdit | None:
        note = PendingEdit(token=uuid.uuid4().hex, begun=now(), op=op, fields=fields, host=socket.gethostname(),
                           pid=os.getpid(), journal_size=0, begun_with=dict(begun_with or {}))
        try:
            # Few points go in the note itself, one point written; more, in lists before it, the note with their last
            # part: a list whose note was never written is never read, and is removed once its process is gone
            # (`pending`). Written with `wait`: applied before the edit's first write.
            few = len(before) <= PAIRS_PER_LIST
            shown = note.model_copy(update={"before": dict(before)}) if few else note
            the_note = (str(uuid.UUID(hex=note.token)), {"kind": "note", "note": shown.model_dump(mode="json")})
            self._write_list(note, [] if few else list(before.items()), then=[the_note])
        except Exception as exc:  # the server refusing it (a read-only key) or gone: the edit goes on, or fails itself
            log.error("the memory's journal could not note a %s of %d points before making it (%s): a crash before "
                      "its entry would leave it unjournaled", op, len(before), exc)
            return None
        return note.model_copy(update={"before": dict(before)})

    def note_adds(self, note: PendingEdit | None, ids: Sequence[str], labels: Sequence[str]) -> None:
        if note is None or not ids:
            return
        try:
            self._write_list(note, list(zip(ids, labels, strict=True)))
        except Exception as exc:  # the add goes on: a crash before its entry would leave these points unjournaled
            log.error("the memory's journal could not note %d points before adding them (%s)", len(ids), exc)

    def _lists(self, token: str) -> dict[str, str]:
        from qdrant_client import models as qm

        listed: dict[str, str] = {}
        for p in self._payloads(qm.Filter(must=[_matches("token", token), _matches("kind", "list")]),
                                self.pending_collection):
            listed.update((str(pid), str(label)) for pid, label in p.get("pairs", []))
        return listed

    def noted_adds(self, note: PendingEdit) -> dict[str, str]:
        return {**note.before, **self._lists(note.token)}

    def settled(self, note: PendingEdit | None) -> None:
        from qdrant_client import models as qm

        if note is None:
            return
        try:  # the note and its lists, in one request
            self.client.delete(self.pending_collection, wait=True, points_selector=qm.FilterSelector(
                filter=qm.Filter(must=[_matches("token", note.token)])))
        except Exception as exc:  # its entry is written: the next opening finds it, and removes the note then
            log.warning("the note of a %s could not be removed once journaled (%s): the memory's next opening "
                        "removes it", note.op, exc)

    def pending(self) -> list[PendingEdit]:
        """The notes of processes known to have ended: on this host, a process id no longer running (or running a
        later process). A note of a running process is an edit in progress, that process's to journal; one written
        on another host is left for an opening there, as nothing here tells whether its process is still running."""
        if not self.client.collection_exists(self.pending_collection):
            return []
        notes, writers = self._read_notes()
        ended = [token for token, p in writers.items() if p and _writer_ended(p)]
        for token in ended:
            if token not in notes:  # lists whose note was never written: that process died before its edit began
                self.settled(PendingEdit(token=token, begun="", op="add", host="", pid=0, journal_size=0))
        here = (socket.gethostname(), _pid_namespace())
        elsewhere = Counter(str(p.get("host")) for token, p in writers.items()
                            if token in notes and (p.get("host"), p.get("pids")) != here)
        if elsewhere:
            # Said, not settled: nothing here tells whether their processes are running. Nor whether their container
            # (pid namespace) still exists: one started again (`docker restart`) has the same hostname and a new
            # namespace, so no opening anywhere settles its notes, and an operator who knows it gone does
            # (`vmem history --settle`). Deleting the note, as this line had offered, dropped its edit for good.
            log.info("%d edits noted by processes on other hosts or containers (%s) are not journaled yet: an opening "
                     "of the memory on the same host, in the same container, journals each once its process has "
                     "stopped. A note of a container started again since (same hostname, new pid namespace) or of a "
                     "host gone is never journaled by an opening: `vmem history --notes` lists the notes (in %s), and "
                     "`vmem history --settle TOKEN` journals what the memory shows its edit made, once its process is "
                     "surely gone (docs/reliability.md, \"Not covered\")",
                     elsewhere.total(), ", ".join(f"{host}: {n}" for host, n in sorted(elsewhere.items())),
                     self.pending_collection)
        found = [notes[token].model_copy(update={"before": {**notes[token].before, **self._lists(token)}})
                 for token in ended if token in notes]
        return sorted(found, key=lambda n: n.begun)

    def notes(self) -> list[LeftNote]:
        """Every note this vmem can read, whoever wrote it (`LeftNote.process`: ended, running here, or unknown: on
        another host or container), oldest first, its points listed."""
        if not self.client.collection_exists(self.pending_collection):
            return []
        notes, writers = self._read_notes()
        here = (socket.gethostname(), _pid_namespace())
        left = [LeftNote(note.model_copy(update={"before": {**note.before, **self._lists(token)}}),
                         "ended" if _writer_ended(writer := writers[token]) else
                         "running" if (writer.get("host"), writer.get("pids")) == here else "unknown")
                for token, note in notes.items()]
        return sorted(left, key=lambda n: n.note.begun)

    def _read_notes(self) -> tuple[dict[str, PendingEdit], dict[str, dict[str, Any]]]:
        """The notes this vmem can read by token, and the writer (host, pid, started, pids) of each token's points:
        {} for a note it cannot read, whose lists stay with it."""
        self._pending_exists = True
        notes: dict[str, PendingEdit] = {}
        writers: dict[str, dict[str, Any]] = {}
        # Whose each point is, and the notes: not the lists' points, read for the notes to settle alone (`_lists`)
        for p in self._payloads(None, self.pending_collection, ("token", "kind", "host", "pid", "started", "pids",
                                                                 "note")):
            token = str(p.get("token"))
            writers.setdefault(token, p)
            if p.get("kind") == "note":
                try:
                    notes[token] = PendingEdit.model_validate(p.get("note"))
                except ValueError:  # written whole (`wait`): a newer vmem's edit, for that vmem to settle
                    log.warning("left the note %s of an edit this vmem cannot read (a newer vmem's?) in %s", token,
                                self.pending_collection)
                    writers[token] = {}  # its lists stay too
        return notes, writers

    def _holds_entry_of(self, note: PendingEdit) -> bool:
        """Whether the journal holds the noted edit's entry: one of its process and op at or after its start, and
        of its points (a naming: its names)."""
        from qdrant_client import models as qm

        if not self.client.collection_exists(self.collection):
            return False
        flt = qm.Filter(must=[_matches("host", note.host), _matches("pid", note.pid), _matches("op", note.op)])
        return any(p.get("at", "") >= note.begun and _is_entry_of(note, p.get("ids", []), p.get("detail", {}))
                   for p in self._payloads(flt))

    def _journaled_adds(self, note: PendingEdit) -> Counter[str]:
        from qdrant_client import models as qm

        counts: Counter[str] = Counter()
        if self.client.collection_exists(self.collection):
            flt = qm.Filter(must=[_matches("op", "add"), _matches("host", note.host), _matches("pid", note.pid),
                                  _matches(f"detail.{ADD_NOTE_KEY}", note.token)])
            for p in self._payloads(flt):
                counts.update(p.get("labels", {}))
        return counts

    def _changed_by_others_since(self, note: PendingEdit) -> set[str]:
        # Other processes share a memory on a server: the points (names) their entries since this edit began say
        # they forgot, relabelled or named are theirs, not this edit's
        from qdrant_client import models as qm

        if not self.client.collection_exists(self.collection):
            return set()
        flt = qm.Filter(must=[qm.FieldCondition(key="op", match=qm.MatchAny(any=["forget", "relabel", "name"]))])
        others = [p for p in self._payloads(flt)
                  if p.get("at", "") >= note.begun and (p.get("host"), p.get("pid")) != (note.host, note.pid)]
        return _changed_of(note, [(p.get("op"), p.get("ids", []), p.get("detail", {})) for p in others])

    # A position: (at, seq, the entry's point id): `seq` orders the entries of one edit and edits within a clock
    # tick; the id, two processes' entries of one `seq` (and those of a vmem before `seq`, all 0)
    _POSITION = (str, int, str)

    def _positioned(self) -> list[tuple[Position, JournalEntry]]:
        if not self.client.collection_exists(self.collection):
            return []
        return sorted(((_position(pid, p), _entry(p)) for pid, p in self._records()), key=lambda pair: pair[0])

    def newest(self, query: JournalQuery, limit: int | None = None) -> tuple[list[JournalEntry], int]:
        entries, earlier, _ = self.page(query, limit)
        return entries, earlier

    def page(self, query: JournalQuery, limit: int | None = None, cursor: str | None = None) -> JournalPage:
        """As `Journal.page`, with the server filtering and ordering: the page's "recent edits" is one count
        and one page of `limit` entries, not every entry of a shared memory's journal sent here. A label query
        reads them all, as before: an entry names a label in four places, two of them as keys of a map."""
        after = _position_of(cursor, self._POSITION) if cursor is not None else None
        if limit is None or query.label is not None:
            return super().page(query, limit, cursor)
        if not self.client.collection_exists(self.collection):
            return JournalPage([], 0, None)
        from qdrant_client import models as qm
        from qdrant_client.http.exceptions import UnexpectedResponse

        must = [qm.FieldCondition(key=key, match=qm.MatchValue(value=value))
                for key, value in (("op", query.op), ("ids", query.point_id), ("by", query.by)) if value is not None]
        if query.since is not None or query.until is not None:
            must.append(qm.FieldCondition(key="at", range=qm.DatetimeRange(gte=query.since, lte=query.until)))
        try:
            self._index_time()
            # After a cursor: the entries of its time older than it (a forget's other parts; read whole, as the
            # server orders one time's entries any way), then those of earlier times, as the server orders them
            tied: list[tuple[Position, dict[str, Any]]] = []
            if after is not None:
                tied = [(position, p) for pid, p in self._records(qm.Filter(must=[*must, _at_is(after[0])]))
                        if (position := _position(pid, p)) < after]
                must.append(qm.FieldCondition(key="at", range=qm.DatetimeRange(lt=after[0])))
            matched = len(tied) + self.client.count(self.collection, count_filter=qm.Filter(must=must),
                                                    exact=True).count
            if not limit or not matched:
                return JournalPage([], matched, None)
            # One more than shown: whether the page ends between two edits, or inside one.
            recs, _ = self.client.scroll(self.collection, scroll_filter=qm.Filter(must=must),
                                         limit=max(1, limit + 1 - len(tied)), with_payload=True, with_vectors=False,
                                         order_by=qm.OrderBy(key="at", direction=qm.Direction.DESC))
        except UnexpectedResponse as exc:  # e.g. a key that may read but not index: the whole journal, as before
            log.warning("the journal's server would not order its entries (%s); reading them all", exc)
            return super().page(query, limit, cursor)
        found = sorted(tied, reverse=True) + [(_position(str(r.id), r.payload or {}), r.payload or {}) for r in recs]
        if len(found) > limit and found[limit][0][0] == (last := found[limit - 1][0][0]) and (
                after is None or last != after[0]):
            # The entries of one edit share its time, and the server orders them any way: all of them are read,
            # to be put in the order `read` gives (and to drop the same ones it would).
            found = [pair for pair in found if pair[0][0] != last] + [
                (_position(pid, p), p) for pid, p in self._records(qm.Filter(must=[*must, _at_is(last)]))]
        shown = sorted(found, reverse=True)[:limit]
        return JournalPage([_entry(p) for _, p in shown], matched - len(shown),
                           _cursor_of(shown[-1][0]) if matched > len(shown) else None)

    def _payloads(self, flt: Any = None, collection: str | None = None,
                  keys: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        yield from (payload for _, payload in self._records(flt, collection, keys))

    def _records(self, flt: Any = None, collection: str | None = None,
                 keys: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """The (id, payload) of each point of the collection (the journal's) that `flt` chooses."""
        offset = None
        while True:
            recs, offset = self.client.scroll(collection or self.collection, scroll_filter=flt, limit=256,
                                              offset=offset, with_payload=True if keys is None else list(keys),
                                              with_vectors=False)
            yield from ((str(r.id), r.payload or {}) for r in recs)
            if offset is None or not recs:
                return


def _is_entry_of(note: PendingEdit, ids: Collection[str], detail: Mapping[str, Any]) -> bool:
    """Whether an entry of the noted edit's process and op, with these ids and detail, is its entry: of its points (a
    forget, a relabel), of its names (a naming); any such entry, for the others. Both journals judge so."""
    if note.op in ("forget", "relabel"):
        return bool(set(ids) & note.before.keys())
    return detail == note.fields.get("detail", {}) if note.op == "name" else True


def _changed_of(note: PendingEdit, entries: Iterable[tuple[str | None, Sequence[str], Mapping[str, Any]]]
                ) -> set[str]:
    """Of the noted edit's points (a naming: its labels), those these entries of other processes (op, ids, detail),
    written since it began, forgot, relabelled or named: theirs, not this edit's."""
    changed: set[str] = set()
    for op, ids, detail in entries:
        if op in ("forget", "relabel"):
            changed.update(ids)
        elif op == "name":
            changed.update(detail.get("names", {}), detail.get("dropped", []))
    if note.op != "name":
        return changed & note.before.keys()
    named = note.fields.get("detail", {})
    return changed & {*named.get("names", {}), *named.get("dropped", [])}


def _matches(key: str, value: Any) -> Any:
    from qdrant_client import models as qm

    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _started_here() -> int:
    """When this process started (clock ticks after boot; 0 where unknown), as its notes record it. Kept by process
    id: a child forked after an edit (multiprocessing's fork) had written its parent's time, and an opening
    elsewhere took it, running, for a later process given its id, and journaled its edit in progress."""
    return _started(os.getpid())


@functools.cache
def _started(pid: int) -> int:
    return process_start(pid) or 0


@functools.cache
def _pid_namespace() -> str:
    """Which process ids this process sees (Linux's pid namespace; "" where unknown): a container sharing the host's
    name (`--network host`) numbers its processes apart, and its process 7 is not the host's."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _writer_ended(payload: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a point of the notes' collection is known to have ended: on this host, among
    the process ids this process sees, and its id no longer that of a running process that started when it did.
    Never this process (another thread's edit)."""
    pid = payload.get("pid")
    if (payload.get("host"), payload.get("pids")) != (socket.gethostname(), _pid_namespace()) or (
            not isinstance(pid, int) or pid == os.getpid()):
        return False
    return not process_running(pid, int(payload.get("started") or 0))


def _position(point_id: str, payload: Mapping[str, Any]) -> Position:
    """A server journal's entry's position (`CollectionJournal._POSITION`), from its point's id and payload."""
    return payload.get("at", ""), int(payload.get("seq") or 0), point_id


def _at_is(at: str) -> Any:
    """The condition of the entries of this time (`at`)."""
    from qdrant_client import models as qm

    return qm.FieldCondition(key="at", range=qm.DatetimeRange(gte=at, lte=at))


def _entry(payload: dict[str, Any]) -> JournalEntry:
    return JournalEntry.model_validate({k: v for k, v in payload.items() if k != "seq"})
