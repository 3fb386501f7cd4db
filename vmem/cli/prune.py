"""`vmem prune`: down-weight or exclude the memory points that keep causing wrong decisions (reversible)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from tqdm import tqdm

from ._common import DEFAULT_MEMORY, MemoryOpt, QdrantUrlOpt, open_memory, require_points


def prune(
    memory: MemoryOpt = DEFAULT_MEMORY,
    qdrant_url: QdrantUrlOpt = None,
    mode: Annotated[str, typer.Option(
        help="soft: reliability 1.75/(1+count); hard: exclude count >= threshold")] = "soft",
    threshold: Annotated[int, typer.Option(min=1, help="hard pruning: blame count that excludes a point")] = 128,
    k: Annotated[int, typer.Option(min=1, max=1000, help="neighbours per leave-one-out decision")] = 100,
    blame: Annotated[str, typer.Option(help="all: every neighbour of a wrong decision; voters: only those "
                                            "with the wrongly chosen label")] = "all",
    undo: Annotated[bool, typer.Option("--undo", help="restore every point and factor, then stop")] = False,
) -> None:
    """Prune the memory by querying it against itself (rank voting); `--undo` reverses it."""
    from eval.pruning import PruneMode, prune_store, undo_pruning

    if mode not in {m.value for m in PruneMode}:
        raise typer.BadParameter("choose soft or hard", param_hint="--mode")
    if blame not in ("all", "voters"):
        raise typer.BadParameter("choose all or voters", param_hint="--blame")
    mem = open_memory(memory, qdrant_url)
    with mem:
        store = mem.store
        if undo:
            n = undo_pruning(store)
            typer.echo(f"pruning undone: {n} points restored; {store.count()} points in memory")
            return
        require_points(mem)
        with tqdm(total=store.count(), desc="self-search", unit="pt", file=sys.stderr, disable=None) as bar:
            report = prune_store(store, mode, threshold=threshold, k=k, blame=blame,  # type: ignore[arg-type]
                                 progress=bar.update)
    typer.echo(report.summary())
