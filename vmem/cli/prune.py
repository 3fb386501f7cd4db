"""Curating the memory by querying it against itself.

`vmem prune` down-weights or excludes the points that keep causing wrong decisions (reversible);
`vmem suspects` lists the points whose own label the rest of the memory disagrees with, for a person to check.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer
from tqdm import tqdm

from retrieval.text import counted, quoted

from ._common import (
    DEFAULT_MEMORY,
    LISTED_BY,
    MemoryOpt,
    QdrantUrlOpt,
    WaitOpt,
    n_points,
    named_label,
    one_line,
    open_memory,
    require_points,
)

# How a self-search finds neighbours (eval.scoring.SelfSearch), without importing eval for every command.
SelfSearchChoice = StrEnum("SelfSearchChoice", {"auto": "auto", "exact": "exact", "index": "index"})
PruneModeChoice = StrEnum("PruneModeChoice", {"soft": "soft", "hard": "hard"})
BlameChoice = StrEnum("BlameChoice", {"label": "label", "all": "all", "voters": "voters"})
SELF_SEARCH_HELP = ("exact: every vector against every other, in RAM (time grows with the square of the points); "
                    "index: each point's neighbours from the memory's index, a page at a time (grows with the "
                    "points); auto: exact up to 100,000 points")


def prune(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    mode: Annotated[PruneModeChoice, typer.Option(
        help="soft: reliability 1.75/(1+count); hard: exclude count >= threshold")] = PruneModeChoice.soft,
    threshold: Annotated[int, typer.Option(min=1, help="hard pruning: blame count that excludes a point")] = 128,
    k: Annotated[int, typer.Option(min=1, max=1000, help="neighbours per leave-one-out decision")] = 100,
    blame: Annotated[BlameChoice, typer.Option(
        help="label: every neighbour of another label than the point that found it (the paper's count); all: every "
             "neighbour of a wrong decision; voters: only those with the wrongly chosen label")] = BlameChoice.all,
    undo: Annotated[bool, typer.Option("--undo", help="restore every point and factor, then stop")] = False,
    search: Annotated[SelfSearchChoice, typer.Option(help=SELF_SEARCH_HELP)] = SelfSearchChoice.auto,
) -> None:
    """Prune the memory by querying it against itself (rank voting); `--undo` reverses it."""
    from eval.pruning import prune_store, undo_pruning

    mode, blame = mode.value, blame.value  # type: ignore[assignment]  # as the pruning takes them
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        store = mem.store
        if undo:
            excluded = store.count() - store.count(searchable=True)
            n = undo_pruning(store, via="cli")
            # Every point with a mark is counted: hard pruning also marks those it kept (their blame counts).
            of_them = f", {n_points(excluded)} of them excluded until now" if excluded else ""
            typer.echo(f"pruning undone: the marks of {n_points(n)} cleared{of_them}; {n_points(store.count())} in "
                       "memory")
            return
        require_points(mem, searchable=False)  # pruning again undoes the earlier pruning first: all may be pruned
        with tqdm(total=store.count(), desc="self-search", unit="pt", file=sys.stderr, disable=None) as bar:
            report = prune_store(store, mode, threshold=threshold, k=k, blame=blame,  # type: ignore[arg-type]
                                 progress=bar.update, via="cli", search=search.value)
    typer.echo(report.summary())


def suspects(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    k: Annotated[int, typer.Option(min=1, max=1000, help="neighbours voting for each point (rank voting)")] = 50,
    min_share: Annotated[float, typer.Option(
        min=0, max=1, help="another label's share of the vote that makes a point a suspect (higher: fewer, "
                           "surer; docs/results/eval.md)")] = 0.5,
    label: Annotated[str | None, typer.Option(help="only suspects with this label, or suggested this label")] = None,
    limit: Annotated[int, typer.Option(min=1, help="suspects shown, most confident first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per suspect")] = False,
    search: Annotated[SelfSearchChoice, typer.Option(help=SELF_SEARCH_HELP)] = SelfSearchChoice.auto,
) -> None:
    """Points that are probably mislabelled: the rest of the memory votes them another label. Check each, then
    `vmem relabel --id ID --to LABEL` (or `vmem forget --id ID`)."""
    from eval.label_audit import audit_labels

    with open_memory(memory, qdrant_url, wait=wait) as mem:
        require_points(mem)
        store = mem.store
        label = mem.stored_label(label) if label is not None else None
        if label is not None and not store.count(label=label):
            raise typer.BadParameter(mem.unknown_labels_message([label], LISTED_BY), param_hint="--label")
        with tqdm(total=store.count(), desc="self-search", unit="pt", file=sys.stderr, disable=None) as bar:
            try:
                votes = audit_labels(store, k=k, progress=bar.update, search=search.value)
            except ValueError as exc:  # fewer than 2 points
                raise typer.BadParameter(str(exc)) from None
        found = votes.suspects(min_share)
        if label is not None:
            found = [s for s in found if label in (s.label, s.suggested)]
        names = mem.label_names

        for s in found[:limit]:
            if as_json:
                typer.echo(json.dumps({**s.model_dump(), "label_name": names.get(s.label),
                                       "suggested_name": names.get(s.suggested)}, ensure_ascii=False))
            else:
                typer.echo(f"{s.id}\t{named_label(s.label, names)}\t-> {named_label(s.suggested, names)}\t"
                           f"share {s.share:.2f} (own {s.own_share:.2f})\t{one_line(s.source)}")
    scope = f" with or toward {quoted(label)}" if label is not None else ""
    typer.echo(f"{counted(len(found), 'suspect')}{scope} among {counted(len(votes.ids), 'point')}: another label "
               f"holds >= {min_share:g} of their {min(k, len(votes.ids) - 1)} nearest others' rank vote"
               + (f"; the first {limit} shown (--limit)" if len(found) > limit else "")
               + ". Check each image, then `vmem relabel --id ID --to LABEL` or `vmem forget --id ID`",
               err=True)
