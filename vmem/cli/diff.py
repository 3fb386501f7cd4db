"""`vmem diff A B`: what changed between two memories, a thin layer over `VisualMemory.diff` (vmem/diff.py)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from retrieval.store import META_FILE, is_embedded_location, same_location
from retrieval.text import counted, quoted, visible_json

from ..diff import KINDS, VECTOR_TOLERANCE, DiffKind, MemoryDiff, PointChange, open_to_compare
from ..visual_memory import VisualMemory
from ._common import (
    DEFAULT_MEMORY,
    WaitOpt,
    check_memory_location,
    n_points,
    named_label,
    one_line,
    open_failure,
    sigterm_as_interrupt,
)
from .memory import _edit_line

# Each kind of change as the summary and the details say it.
_SAID: dict[DiffKind, str] = {
    "only_in_a": "only in A", "only_in_b": "only in B", "relabelled": "relabelled", "reembedded": "re-embedded",
    "pruning": "pruning changed", "tags": "tags changed",
}


def diff(
    a: Annotated[str, typer.Argument(metavar="A", show_default=False,
                                     help="the memory before: a folder (a backup's too), http://host:6333 or "
                                          "qdrant-local:DIR")],
    b: Annotated[str, typer.Argument(metavar="B", show_default=False, help="the memory after, named alike")],
    label: Annotated[str | None, typer.Option(help="details of the points with this label in A or B only (the "
                                                   "summary stays whole)")] = None,
    limit: Annotated[int, typer.Option(min=0, help="details: points of each kind, and journal entries, at most "
                                                   "(0: every one)")] = 20,
    tolerance: Annotated[float, typer.Option(min=0.0, max=2.0, help="1 - cosine of a point's two stored vectors "
                                                                    "above which it counts as re-embedded")]
    = VECTOR_TOLERANCE,
    wait: WaitOpt = 0.0,
    json_out: Annotated[bool, typer.Option("--json", help="the whole diff as one JSON object: counts exact, "
                                                          "details as --limit and --label choose")] = False,
) -> None:
    """What changed from memory A to memory B: points only in A or only in B, relabelled, re-embedded, pruning
    or tags changed; per label counts, label names, settings (encoder, index, tuned vote), and the journal's
    edits each holds that the other does not. A summary first, then the points of each kind.

    Points are matched by id (their image's), paged through in id order in both at once: neither memory is held
    in RAM. An embedded memory is read from a private copy of its folder (TMPDIR needs room for it), so it must
    be at rest: one held by a running vmem serve or build is refused (diff a backup of it). Exit 0 whether or
    not they differ."""
    for text, hint in ((a, "A"), (b, "B")):
        _check_location(text, hint)
    if same_location(a, b):
        raise typer.BadParameter(f"A and B are both {a}: give two memories (a memory and its backup, say)",
                                 param_hint="B")
    with ExitStack() as stack:
        mem_a = stack.enter_context(_open(a, "A", wait))
        mem_b = stack.enter_context(_open(b, "B", wait))
        if label is not None and not any(m.store.count(label=m.stored_label(label)) for m in (mem_a, mem_b)):
            raise typer.BadParameter(f"neither memory holds a point labelled {quoted(label)} (vmem labels lists them)",
                                     param_hint="--label")
        total = mem_a.store.count() + mem_b.store.count()
        with tqdm(total=total, unit="pt", desc="diff", file=sys.stderr, disable=total < 50_000) as bar:
            def read(n: int) -> None:
                bar.update(n)

            changes = mem_a.diff(mem_b, label=label, limit=limit or None, tolerance=tolerance, progress=read)
        names = {**mem_a.label_names, **mem_b.label_names}
    if json_out:
        typer.echo(changes.model_dump_json())
        return
    _say(changes, names)


def _check_location(text: str, hint: str) -> None:
    """BadParameter for a location that names no memory: a folder without one, a URL that is not a server's."""
    if not text.strip():
        raise typer.BadParameter("is empty: give a memory's folder or a Qdrant server's URL", param_hint=hint)
    if not is_embedded_location(text):
        check_memory_location(DEFAULT_MEMORY, text, (hint, hint))
        return
    folder = Path(text).expanduser()
    if not (folder / META_FILE).is_file():
        what = "no such folder" if not folder.exists() else "not a folder" if not folder.is_dir() else \
            f"no {META_FILE} in it"
        raise typer.BadParameter(f"{text} holds no memory ({what}): give the folder of a memory or of a backup "
                                 "(vmem backup)", param_hint=hint)


def _open(location: str, hint: str, wait: float) -> VisualMemory:
    try:
        with sigterm_as_interrupt():  # SIGTERM as it waits (--wait): said as open_memory's wait says it, not -15
            return open_to_compare(location, wait)
    except Exception as exc:
        embedded = is_embedded_location(location)
        problem = open_failure(Path(location) if embedded else DEFAULT_MEMORY, None if embedded else location, exc,
                               (hint, hint))
        if problem is None:
            raise
        raise problem from exc


def _say(d: MemoryDiff, names: dict[str, str]) -> None:
    """The summary, then the details, tab-separated where they are tables."""
    typer.echo(f"A\t{one_line(d.a)}\t{n_points(d.points_a)}")
    typer.echo(f"B\t{one_line(d.b)}\t{n_points(d.points_b)}")
    typer.echo("memory\t" + ("the same memory (B is a backup or replica of A, or A of B)" if d.same_memory
                             else "two memories (a copy is a memory of its own)"))
    counts = ", ".join(f"{d.counts[kind]:,} {_SAID[kind]}" for kind in KINDS)
    typer.echo(f"points\t{counts}, {d.unchanged:,} unchanged")
    if d.vectors_note:
        typer.echo(f"vectors\t{d.vectors_note}")
    else:
        typer.echo(f"vectors\tcompared: re-embedded where 1 - cosine > {d.tolerance:g}")
    typer.echo(f"labels\t{len(d.labels):,} changed" + (" (label, A, B, +added, -forgotten, relabelled in, out, "
                                                         "re-embedded)" if d.labels else ""))
    for c in d.labels:
        typer.echo("\t".join(["", named_label(c.label, names), f"{c.a:,}", f"{c.b:,}", f"+{c.added:,}",
                              f"-{c.forgotten:,}", f"in {c.relabelled_in:,}", f"out {c.relabelled_out:,}",
                              f"re-embedded {c.reembedded:,}"]))
    typer.echo(f"names\t{len(d.names):,} changed")
    for n in d.names:
        typer.echo(f"\t{one_line(n.label)}\t{_name(n.a)} -> {_name(n.b)}")
    typer.echo(f"settings\t{len(d.settings):,} changed")
    for s in d.settings:
        typer.echo(f"\t{s.key}\t{_value(s.a)} -> {_value(s.b)}")
    j = d.journal
    if j.shared == 0 and (j.only_in_a or j.only_in_b):
        history = "no edit in common: not one memory's history"
    elif j.b_continues_a:
        history = f"B holds A's {_entries(j.shared)} and {j.only_in_b:,} more"
    else:
        history = (f"{_entries(j.shared)} in common; {j.only_in_a:,} only in A (B does not continue A: it is older, "
                   "or they parted)")
    typer.echo(f"journal\t{history}")
    for side, entries, total in (("A", j.entries_only_in_a, j.only_in_a), ("B", j.entries_only_in_b, j.only_in_b)):
        if entries:
            typer.echo(f"\njournal entries only in {side} ({total:,}; oldest first)")
            for e in entries:
                typer.echo(_edit_line(e, names))
            if total > len(entries):
                typer.echo(f"... and {total - len(entries):,} more (--limit)")
    for kind in KINDS:
        shown = d.details[kind]
        if not shown:
            continue
        chosen = f" labelled {quoted(d.label)} in A or B" if d.label is not None else ""
        typer.echo(f"\n{_SAID[kind]} ({d.counts[kind]:,}; the first {len(shown):,}{chosen}, in id order)")
        for p in shown:
            typer.echo(_point_line(kind, p, names))
        if d.label is None and d.counts[kind] > len(shown):
            typer.echo(f"... and {d.counts[kind] - len(shown):,} more (--limit)")


def _entries(n: int) -> str:
    return counted(n, "entry", "entries")


def _name(name: str | None) -> str:
    return quoted(name) if name is not None else "(none)"


def _value(value: object) -> str:
    """A setting as a person reads it, escaped once: repr's escapes, escaped again, had doubled their backslashes."""
    return quoted(value) if isinstance(value, str) else visible_json(value) if isinstance(value, list | dict) \
        else one_line(repr(value))


def _point_line(kind: DiffKind, p: PointChange, names: dict[str, str]) -> str:
    """One point of a kind: id, label (A -> B where both), source, and what changed."""
    if p.label_a is not None and p.label_b is not None and p.label_a != p.label_b:
        label = f"{named_label(p.label_a, names)} -> {named_label(p.label_b, names)}"
    else:
        label = named_label(p.label_a if p.label_a is not None else p.label_b or "", names)
    what = ""
    if kind == "reembedded" and p.cosine is not None:
        what = f"cosine {p.cosine:.6f}"
    elif kind == "pruning":
        what = f"{_pruned(p.excluded_a, p.reliability_a)} -> {_pruned(p.excluded_b, p.reliability_b)}"
    elif kind == "tags":
        what = f"{visible_json(p.tags_a)} -> {visible_json(p.tags_b)}"
    return "\t".join(x for x in (p.id, label, one_line(p.source), what) if x)


def _pruned(excluded: bool | None, reliability: float | None) -> str:
    if excluded:
        return "excluded"
    return f"reliability {reliability:g}" if reliability is not None and reliability != 1 else "kept"
