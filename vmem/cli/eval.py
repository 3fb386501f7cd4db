"""`vmem eval`: score a memory on a labelled dataset, every voting rule at every k (optionally with re-ranking)."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from prompts import TemplateError
from retrieval import (
    DEFAULT_ALPHA,
    DEFAULT_TAU,
    DatasetError,
    FeaturizerError,
    MemoryStore,
    VoteRule,
    find_label_names_file,
    imagenet_label_names,
    read_label_names,
)
from retrieval.files import os_error_reason
from retrieval.text import counted, visible, without_secrets

from ..results import VoteSettings
from ._common import (
    DEFAULT_MEMORY,
    MemoryOpt,
    QdrantUrlOpt,
    WaitOpt,
    check_reranker_settings,
    check_vote_value,
    dataset_format,
    feature_cache_root,
    open_memory,
    read_classes_option,
    require_points,
    unread_file_said,
)


class SearchMode(StrEnum):
    auto = "auto"
    exact = "exact"
    index = "index"  # type: ignore[assignment]  # the choice's name hides str.index


def _fail(exc: Exception, hint: str | None = None) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=hint)


def eval(
    dataset: Annotated[Path, typer.Option("--dataset", "-d", help="the evaluation set (folder, or .csv)")],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="imagefolder | imagenet-val | imagenet-v2 | imagenet-a | imagenet-r | "
        "imagenet-sketch | real | csv")] = "imagefolder",
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for results.json, CSVs, table.md, plots")] = Path(
        "eval-results"),
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    memory_dataset: Annotated[Path | None, typer.Option(
        help="use a labelled dataset's cached features as the memory instead of a built one")] = None,
    memory_format: Annotated[str, typer.Option(help="layout of --memory-dataset")] = "imagefolder",
    featurizer: Annotated[str | None, typer.Option(help="encoder for --memory-dataset")] = None,
    classes: Annotated[Path | None, typer.Option(
        "--classes", "--label-names", help="wnid-to-name file (classes.tsv, LOC_synset_mapping.txt)")] = None,
    labels_file: Annotated[Path | None, typer.Option(
        help="imagenet-val: LOC_val_solution.csv or the devkit ground truth (default: the nearest of them upwards, 4 "
             "levels); real: real.json")] = None,
    devkit_synsets: Annotated[Path | None, typer.Option(help="imagenet-val devkit meta.mat (or wnid per line)")] = None,
    k_max: Annotated[int, typer.Option(
        min=1, max=1000, help="neighbours searched; every k up to this is scored")] = 100,
    alpha: Annotated[float | None, typer.Option(
        help=f"rank voting offset (default: the memory's tuned α, else {DEFAULT_ALPHA:g})")] = None,
    tau: Annotated[float | None, typer.Option(
        help=f"softmax temperature (default: the memory's tuned τ, else {DEFAULT_TAU:g})")] = None,
    search: Annotated[SearchMode, typer.Option(
        help="exact (vectors in RAM), index (Qdrant), or auto (exact when the memory fits)")] = SearchMode.auto,
    limit: Annotated[int | None, typer.Option(  # --sample as classify names it; --limit elsewhere pages
        "--limit", "--sample", min=1, help="evaluate a fixed random sample of this many queries")] = None,
    seed: Annotated[int, typer.Option(help="seed of --limit's sample")] = 0,
    rerank: Annotated[bool, typer.Option(
        help="also re-rank the queries scored with the VLM (every one, or --limit's sample: a request each) and "
             "compare with rank voting on them; score the re-ranked answers' confidence (the vote's share of the "
             "VLM's label): the --min-confidence of classify --rerank")] = False,
    template: Annotated[str | None, typer.Option(help="re-ranker prompt template")] = None,
    rerank_k: Annotated[int, typer.Option(min=1, max=1000, help="neighbours shown to the re-ranker")] = 50,
    dmn: Annotated[bool, typer.Option(
        "--dmn", help="also classify the queries with the dmn rule (no stream), as vmem dmn classify does, and "
                      "score its confidence, the fused probability: the --min-confidence of vmem dmn classify that "
                      "keeps each target accuracy")] = False,
    price_in: Annotated[float | None, typer.Option(help="USD per 1M prompt tokens, for the cost estimate")] = None,
    price_out: Annotated[float | None, typer.Option(help="USD per 1M output tokens, for the cost estimate")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", "--feature-cache", help="feature cache (default "
                                               "$VMEM_FEATURE_CACHE or $VMEM_HOME/features)")] = None,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
) -> None:
    """Score a memory on a dataset: all voting rules at every k, hit rate, calibration (resumable)."""
    from eval.datasets import (
        RESTRICTED_FORMATS,
        DatasetFormat,
        align_labels,
        read_dataset,
        sample_items,
    )
    from eval.dmn_eval import evaluate_dmn
    from eval.harness import (
        MAX_EXACT_BYTES,
        MemoryArrays,
        RunInfo,
        environment,
        evaluate,
        memory_fingerprint,
        memory_from_dataset,
        queries_fingerprint,
        query_set,
        store_index,
        vectors_fingerprint,
        write_report,
    )
    from eval.rerank_eval import evaluate_rerank
    from vmem import __version__

    # Refused before any work: an evaluation takes minutes, and a bad α or τ had scored 0 % curves with exit 0
    for name, value in (("alpha", alpha), ("tau", tau)):
        if value is not None:
            check_vote_value(name, value, f"--{name}")
    if template is not None and not rerank:  # as classify refuses it: it chooses the re-ranker's prompt
        raise typer.BadParameter("it chooses the re-ranker's prompt: give --rerank too", param_hint="--template")
    if rerank:
        check_reranker_settings()
    out_shown = visible(str(out))  # as every line of output names a file: a newline or U+202E as its escape
    if out.exists() and not out.is_dir():  # found once every number was computed, as a traceback
        raise typer.BadParameter(f"{out_shown} is a file: give a folder for the run's files", param_hint="--out")
    if (out / "results.json").exists():
        typer.echo(f"note: the run in {out_shown} will be replaced by this one", err=True)
    try:
        fmt = DatasetFormat(dataset_format(dataset, format))
    except ValueError as exc:
        raise _fail(exc, "--format") from exc
    cache_root = feature_cache_root(cache)
    try:
        ds = read_dataset(dataset, fmt, labels_file, devkit_synsets)
    except (DatasetError, OSError) as exc:
        raise typer.BadParameter(unread_file_said(exc), param_hint="--dataset") from exc
    names = read_classes_option(classes)  # its refusal names --classes, not --dataset
    t_start = time.perf_counter()
    mem = None
    n_points: int | None = None
    if memory_dataset is not None:
        if rerank or dmn:
            raise typer.BadParameter(f"{'--rerank' if rerank else '--dmn'} needs a built memory (--memory), not "
                                     "--memory-dataset")
        if featurizer is None:
            raise typer.BadParameter("--memory-dataset needs --featurizer")
        try:
            from retrieval import load_featurizer

            feat = load_featurizer(featurizer)
            mem_ds = read_dataset(memory_dataset, dataset_format(memory_dataset, memory_format))
        except (FeaturizerError, DatasetError, OSError, ValueError) as exc:  # ValueError: an unknown layout name
            raise _fail(exc) from exc
        memory_obj: MemoryArrays | MemoryStore
        memory_obj = memory_from_dataset(mem_ds, feat, cache_root)
        memory_name, memory_labels = str(memory_dataset), memory_obj.labels
        search_used = "exact"
    else:
        mem = open_memory(memory, qdrant_url, wait=wait)
        try:
            require_points(mem)
            if rerank:  # an unknown template, before the vote's evaluation (it had been a traceback after it)
                try:
                    mem.check_template(rerank, template)
                except (TemplateError, ValueError) as exc:
                    raise typer.BadParameter(str(exc), param_hint="--template") from exc
        except typer.BadParameter:
            mem.close()
            raise
        feat = mem.featurizer
        store = mem.store
        memory_name = without_secrets(store.location)  # results.json and table.md are shared
        fits = store.count() * store.dim * 4 <= MAX_EXACT_BYTES
        if search is SearchMode.exact or (search is SearchMode.auto and fits):
            memory_obj = MemoryArrays.from_store(store)
            memory_labels = memory_obj.labels
            search_used = "exact"
        else:
            memory_obj = store
            memory_labels = list(store.label_counts())
            search_used = "index"
            # Hard-pruned points stay stored but are never returned (counted now: the pruning's own count goes
            # stale once an excluded point is forgotten or relabelled).
            n_points = store.count(searchable=True)
    # The memory's tuned settings (vmem tune) are the defaults; explicit --alpha/--tau win.
    tuned = dict(mem.store.meta.settings.get("vote") or {}) if mem is not None else {}
    alpha = alpha if alpha is not None else tuned.get("alpha", DEFAULT_ALPHA)
    tau = tau if tau is not None else tuned.get("tau", DEFAULT_TAU)
    ds = align_labels(ds, memory_labels, names)
    items = ds.items
    dataset_items = len(items)
    sampled = (drawn := sample_items(items, limit, seed)) is not None
    if drawn is not None:
        items = ds.items = drawn
    t_feat = time.perf_counter()
    queries = query_set(ds, feat, cache_root)
    t_search = time.perf_counter()
    restrict = ds.classes if fmt in RESTRICTED_FORMATS else None
    run = RunInfo(dataset=str(dataset), format=fmt.value, queries=len(queries.sources),
                  failed_queries=len(queries.failed), skipped_queries=len(ds.skipped), memory=memory_name,
                  memory_points=n_points if n_points is not None else len(memory_labels),
                  featurizer=feat.name, search=search_used, k_max=k_max, alpha=alpha, tau=tau,
                  # a --limit at or above the dataset's size drew no sample: none is recorded
                  dataset_items=dataset_items, limit=limit if sampled else None, seed=seed if sampled else None,
                  vmem_version=__version__, featurizer_spec=feat.spec.model_dump(mode="json"),
                  index=store_index(memory_obj), memory_fingerprint=memory_fingerprint(memory_obj),
                  vectors_fingerprint=vectors_fingerprint(memory_obj), queries_fingerprint=queries_fingerprint(queries),
                  device=str(getattr(feat, "device", "")) or None, environment=environment())
    run.seconds["features"] = round(t_search - t_feat, 3)
    held = set(memory_labels)
    run.classes_not_in_memory = sorted({lab for labs in queries.correct_labels for lab in labs} - held)
    run.queries_not_in_memory = sum(not held.intersection(labs) for labs in queries.correct_labels)
    if run.queries and run.queries_not_in_memory == run.queries and memory_labels:  # every score 0: said at once
        typer.echo(f"note: none of the queries' classes is a label of the memory (theirs: "
                   f"{visible(run.classes_not_in_memory[0])}, ...; the memory's: {visible(memory_labels[0])}, ...): "
                   "every answer will be wrong; a memory labelled by name needs --classes FILE (label -> name) to "
                   "score wnid folders", err=True)
    # Per-class results for the decision classify makes with this memory: its tuned rule and k, else the defaults.
    decision = mem.vote_settings() if mem is not None else VoteSettings()
    report = evaluate(memory_obj, queries, run, restrict_to=restrict,
                      per_class=(VoteRule(decision.rule).value, decision.k, decision.soft_pruning))
    if tuned.get("rule") in {"plurality", "distance", "softmax", "rank"} and tuned.get("k", 0) <= k_max:
        curves = report.variants["all"].accuracy
        soft = tuned.get("soft_pruning", True) and f"{tuned['rule']}+soft" in curves
        name = tuned["rule"] + ("+soft" if soft else "")
        run.tuned = {**tuned, "accuracy": curves[name][tuned["k"] - 1],
                     "scored_with": {"alpha": alpha, "tau": tau}}
    if rerank:
        assert mem is not None
        embedded = set(queries.sources)
        sample = [it for it in ds.items if it.source in embedded]
        rr = evaluate_rerank(mem, sample, k=rerank_k, template=template, labels=restrict,
                             price_in=price_in, price_out=price_out, seed=seed, alpha=alpha)
        report.rerank = rr.model_dump(mode="json")
        report.rerank_answers = rr.answers
    dmn_refused: str | None = None
    if dmn:
        assert mem is not None
        try:
            report.dmn = evaluate_dmn(mem, queries.features, queries.sources, queries.correct_labels,
                                      labels=restrict, exact=search_used == "exact")
            run.seconds["dmn"] = report.dmn.seconds
        except ValueError as exc:  # a memory dmn cannot answer from: the vote's numbers, minutes of work, are kept
            dmn_refused = str(exc)
    run.seconds["total"] = round(time.perf_counter() - t_start, 3)
    # Names for the per-class table: the memory's (or the names file beside --memory-dataset, as `vmem build` would
    # have named them), else --classes', else vmem's own for ImageNet-1k ids.
    label_names = {**imagenet_label_names(), **(names or {}),
                   **(mem.store.meta.label_names if mem is not None else _names_beside(memory_dataset))}
    try:
        written = write_report(report, out, plots=plots, names=label_names)
    except OSError as exc:  # a full disk: after minutes of work, one line, and what the folder holds now
        typer.echo(f"Error: the results could not be written into {out_shown} ({os_error_reason(exc)}): it holds the "
                   "files it held before, as they were", err=True)
        raise typer.Exit(1) from None
    finally:
        if mem is not None:
            mem.close()
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    if run.tuned:
        t = run.tuned
        used = t["scored_with"]
        # Explicit --alpha/--tau scored every curve, the tuned rule's too: say so rather than credit the tuned values.
        given = ("" if (used["alpha"], used["tau"]) == (t.get("alpha"), t.get("tau"))
                 else f" (scored with the given α={used['alpha']:g}, τ={used['tau']:g})")
        typer.echo(f"the memory's tuned settings ({t['rule']}, k={t['k']}, α={t['alpha']:g}, τ={t['tau']:g}): "
                   f"{100 * t['accuracy']:.2f}% top-1 here{given}")
    if report.rerank:  # its accuracy is in table.md, printed above; what it cost is this run's alone
        r = report.rerank
        cached = (f" ({counted(r['cached'], 'answer')} of {r['queries']:,} from the cache, asked in an earlier run)"
                  if r["cached"] else "")
        usage = r["usage"]
        typer.echo(f"re-rank tokens {usage.get('total_tokens', 0):,} in {counted(usage.get('requests', 0), 'request')}"
                   + (f", about ${r['estimated_cost_usd']:.4f}" if r["estimated_cost_usd"] is not None else "")
                   + cached)
    if report.dmn is not None:
        d = report.dmn
        kept = ", ".join(f"{100 * a.target:g}% at --min-confidence {a.min_confidence:.6g} ({100 * a.coverage:.1f}% "
                         "kept)" for a in d.selective.at_accuracy if a.min_confidence is not None)
        typer.echo(f"dmn ({d.mode}, no stream) on {counted(d.queries, 'query', 'queries')}: "
                   f"{100 * d.accuracy:.2f}% right; "
                   + (kept or "no threshold reaches 90% accuracy"))
    for f in queries.failed[:20]:
        typer.echo(f"skipped {f}", err=True)
    if len(queries.failed) > 20:
        typer.echo(f"... and {counted(len(queries.failed) - 20, 'more query', 'more queries')} skipped "
                   "(failed_queries in results.json)",
                   err=True)
    left_out = memory_obj.skipped if isinstance(memory_obj, MemoryArrays) and memory_dataset is not None else []
    for f in left_out[:20]:  # --memory-dataset's images that are not in the memory scored
        typer.echo(f"left out of the memory: {f}", err=True)
    if len(left_out) > 20:
        typer.echo(f"... and {len(left_out) - 20:,} more left out of the memory", err=True)
    typer.echo(f"wrote {counted(len(written), 'file')} to {out_shown}", err=True)
    if dmn_refused is not None:  # after the vote's results, written: exit 2 still, as --dmn was not done
        raise typer.BadParameter(f"dmn was not scored ({dmn_refused}); the vote's results are written to {out_shown}",
                                 param_hint="--dmn")


def _names_beside(dataset: Path | None) -> dict[str, str]:
    """The label names a names file beside a dataset gives (classes.tsv, words.txt, ...), as `vmem build` finds it."""
    found = find_label_names_file(dataset) if dataset is not None else None
    if found is None:
        return {}
    try:
        return read_label_names(found)
    except (DatasetError, OSError):
        return {}
