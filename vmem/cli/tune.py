"""`vmem tune`: choose rule, k, α and τ on a validation split and store them with the memory."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from retrieval import DatasetError
from retrieval.files import write_atomically
from retrieval.text import counted, without_secrets

from ._common import (
    DEFAULT_MEMORY,
    MemoryOpt,
    QdrantUrlOpt,
    WaitOpt,
    check_vote_value,
    dataset_format,
    feature_cache_root,
    open_memory,
    read_classes_option,
    require_points,
    say_few_points,
)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


def _grid(text: str, name: str) -> list[float]:
    """A grid of α or τ values, each one a memory's vote settings accept (else a tuned choice would break it)."""
    values = _floats(text)
    for v in values:
        check_vote_value(name, v, f"--{name}s")
    return values


def _require_validation(val_rows: np.ndarray, correct: Sequence[Sequence[str]], memory_labels: set[str], dataset: Path,
                        failed: list) -> None:
    """BadParameter when the validation split could judge nothing: a choice made on no query (plurality at k=1,
    "val 0.00 %") would be stored as the memory's defaults and used by every classify after it."""
    if not len(val_rows):
        raise typer.BadParameter(f"no validation query could be read from {dataset}"
                                 + (f" ({counted(len(failed), 'image')} failed to decode)" if failed else ""),
                                 param_hint="--dataset")
    if not any(memory_labels.intersection(correct[i]) for i in val_rows):
        theirs = sorted({lab for i in val_rows for lab in correct[i]})
        raise typer.BadParameter(
            f"none of the {len(val_rows)} validation queries has a label the memory holds (theirs: "
            f"{', '.join(theirs[:5]) or 'none'}{', ...' if len(theirs) > 5 else ''}; the memory's: "
            f"{', '.join(sorted(memory_labels)[:5])}{', ...' if len(memory_labels) > 5 else ''}): tune on images "
            "of the memory's classes (a memory labelled by class names and a dataset by WordNet ids: --classes "
            "names the ids as the memory does)", param_hint="--dataset")


def _reset(memory: Path, qdrant_url: str | None, dry_run: bool, wait: float = 0.0) -> None:
    """Drop the memory's tuned vote settings, journaled: the only way back had been tuning again."""
    with open_memory(memory, qdrant_url, wait=wait) as mem:
        before = mem.store.meta.settings.get("vote")
        if before is None:
            typer.echo("the memory has no tuned settings: it votes with the defaults already")
            return
        if dry_run:
            typer.echo(f"dry run: would forget the tuned settings {json.dumps(before)}; nothing changed")
            return
        mem.reset_vote_settings()
        now = mem.vote_settings()
        typer.echo(f"forgot the tuned settings {json.dumps(before)}: the memory votes with the defaults again "
                   f"({now.rule}, k={now.k}, α={now.alpha:g}, τ={now.tau:g})")


def tune(
    dataset: Annotated[Path | None, typer.Option("--dataset", "-d", help="labelled queries (folder, or .csv)")
                       ] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="any layout `vmem eval` reads")] = "imagefolder",
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    val_fraction: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="share of --dataset to tune on; the rest is held out and only reported")] = 0.5,
    val_dataset: Annotated[Path | None, typer.Option(
        help="tune on this dataset instead, and report on all of --dataset")] = None,
    val_format: Annotated[str, typer.Option(help="layout of --val-dataset")] = "imagefolder",
    seed: Annotated[int, typer.Option(help="seed of the validation split")] = 0,
    alphas: Annotated[str, typer.Option(help="rank-voting α grid")] = "0.5,1,2,4,8,16",
    taus: Annotated[str, typer.Option(help="softmax τ grid")] = "0.01,0.02,0.03,0.05,0.07,0.1,0.2",
    k_max: Annotated[int, typer.Option(min=1, max=1000, help="k is searched in 1..k_max")] = 100,
    classes: Annotated[Path | None, typer.Option(
        "--classes", "--label-names",
        help="wnid-to-name file, when memory and dataset name classes differently")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", "--feature-cache", help="feature cache directory")] = None,
    out: Annotated[Path | None, typer.Option(help="also write tune.md and tune.json here")] = None,
    dry_run: Annotated[bool, typer.Option(help="report only; leave the memory's settings as they are")] = False,
    reset: Annotated[bool, typer.Option("--reset", help="forget the tuned settings: back to rank voting at k = 50, "
                                                        "α 2, τ 0.07 (journaled)")] = False,
) -> None:
    """Pick the voting rule, k, α and τ on a validation split; store them as the memory's defaults."""
    if reset:
        if dataset is not None:
            raise typer.BadParameter("--reset tunes nothing: give it without --dataset", param_hint="--reset")
        _reset(memory, qdrant_url, dry_run, wait)
        return
    if dataset is None:
        raise typer.BadParameter("give the labelled queries to tune on (or --reset)", param_hint="--dataset")
    from eval.datasets import align_labels, read_dataset
    from eval.harness import MAX_EXACT_BYTES, query_set
    from eval.scoring import neighbors_exact_paged, neighbors_from_store, truth_arrays
    from eval.tuning import split_indices
    from eval.tuning import tune as run_tune

    t0 = time.perf_counter()
    alpha_grid, tau_grid = _grid(alphas, "alpha"), _grid(taus, "tau")
    cache_root = feature_cache_root(cache)
    names = read_classes_option(classes)
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        require_points(mem)
        store = mem.store
        exact = store.count() * store.dim * 4 <= MAX_EXACT_BYTES
        # The labels a search can return (a label whose points are all hard-pruned is none): counted, not read
        counts = store.label_counts()
        memory_labels = list(counts) if store.count(searchable=True) == store.count() else [
            lab for lab in counts if store.count(label=lab, searchable=True)]
        try:
            test_ds = align_labels(read_dataset(dataset, dataset_format(dataset, format)), memory_labels, names)
            val_ds = (align_labels(read_dataset(val_dataset, dataset_format(val_dataset, val_format)), memory_labels,
                                   names) if val_dataset else None)
        except (DatasetError, OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
        featurizer_name = mem.featurizer.name
        test_q = query_set(test_ds, mem.featurizer, cache_root)
        if val_ds is not None:
            val_q = query_set(val_ds, mem.featurizer, cache_root)
            feats = np.concatenate([val_q.features, test_q.features])
            correct = val_q.correct_labels + test_q.correct_labels
            val_rows = np.arange(len(val_q.sources))
            held_rows = np.arange(len(val_q.sources), len(feats))
        else:
            feats, correct = test_q.features, test_q.correct_labels
            val_rows, held_rows = split_indices(len(feats), val_fraction, seed)
        _require_validation(val_rows, correct, set(memory_labels), val_dataset or dataset,
                            (val_q if val_ds is not None else test_q).failed)
        query_labels = {lab for labs in correct for lab in labs}
        classes_list = sorted(set(memory_labels) | query_labels)
        if exact:  # a page of the memory's vectors at a time: 40 queries had held a 200,000-point memory (1 GB)
            table = neighbors_exact_paged(store, feats, classes_list, k_max)[0]
        else:
            table = neighbors_from_store(store, feats, classes_list, k_max)
        truth, accepted = truth_arrays(correct, classes_list)
        report = run_tune(table, truth, val_rows, held_rows, accepted, alpha_grid, tau_grid)
        typer.echo(report.markdown())
        if not dry_run:
            mem.store_vote_settings(report.vote_settings(), {
                "dataset": str(val_dataset or dataset), "val_queries": report.n_val,
                "heldout_queries": report.n_heldout, "val_accuracy": report.chosen.val_accuracy,
                "heldout_accuracy": report.chosen.heldout_accuracy, "seed": seed,
                "val_fraction": None if val_dataset else val_fraction,
                "search": "exact" if exact else "index",
            })
            typer.echo(f"stored as the memory's default vote settings: {json.dumps(report.vote_settings())}")
            say_few_points(mem.few_point_labels())  # chosen on queries in which a class of a few images is rare
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / "tune.md", report.markdown() + "\n")
        from vmem import __version__ as vmem_version

        # With what the choice depends on, as eval's results.json has it: tune.json had held the choice alone
        run = {"dataset": str(dataset), "val_dataset": str(val_dataset) if val_dataset else None,
               "val_fraction": None if val_dataset else val_fraction, "seed": seed, "dry_run": dry_run,
               "memory": without_secrets(str(qdrant_url or memory)), "featurizer": featurizer_name, "k_max": k_max,
               "alphas": alpha_grid, "taus": tau_grid, "vmem_version": vmem_version,
               "created_at": datetime.now(UTC).isoformat(), "seconds": round(time.perf_counter() - t0, 3)}
        write_atomically(out / "tune.json", json.dumps({"run": run, **report.model_dump(mode="json")}, indent=2))
    typer.echo(f"({time.perf_counter() - t0:.1f}s)", err=True)
