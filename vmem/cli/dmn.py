"""`vmem dmn`: classify with Dual Memory Networks, and list, show or reset the dynamic-memory streams."""

from __future__ import annotations

import contextlib
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from retrieval.text import counted

from ._common import (
    DEFAULT_MEMORY,
    MemoryOpt,
    QdrantUrlOpt,
    WaitOpt,
    check_label_filter,
    expand_images,
    finish_classify,
    open_memory,
    require_points,
)
from .memory import classify_in_parts, unsure_summary

app = typer.Typer(help="Dual Memory Networks: classify with static + dynamic (+ CLIP text) memories; manage streams.",
                  no_args_is_help=True)

# The modes DmnOptions takes (vmem.dmn_classifier.Mode, not imported with the CLI), as a choice: a wrong one had
# been a raw pydantic error with its web address.
DmnMode = StrEnum("DmnMode", {"auto": "auto", "zero-shot": "zero-shot", "few-shot": "few-shot",
                              "memory-only": "memory-only"})
StreamArg = Annotated[str, typer.Argument(help="stream name")]


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="image files or directories, classified in this order")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    stream: Annotated[str | None, typer.Option("--stream", "--dmn-stream",
                                               help="dynamic memory to write and read (default: off)")] = None,
    mode: Annotated[DmnMode, typer.Option(help="auto: few-shot for a CLIP memory, else memory-only")] = DmnMode.auto,
    alpha_text: Annotated[float, typer.Option(min=0, help="weight of the CLIP text classifier")] = 1.0,
    alpha_dynamic: Annotated[float, typer.Option(min=0, help="weight of the dynamic memory")] = 1.0,
    alpha_static: Annotated[float, typer.Option(min=0, help="weight of the labelled (static) memory")] = 1.0,
    static_k: Annotated[int, typer.Option(min=1, max=1000, help="neighbours of the one wide search")] = 256,
    static_cap: Annotated[int, typer.Option(min=1, help="static entries read out per class")] = 16,
    classes_file: Annotated[Path | None, typer.Option("--classes-file", "--classes", "--label-names",
                                                      help="label<TAB>class name, for the text prompts")] = None,
    update: Annotated[bool, typer.Option(help="write the queries into the stream")] = True,
    label: Annotated[list[str] | None, typer.Option(help="only these labels compete; repeatable")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per image")] = False,
    sample: Annotated[int | None, typer.Option(min=1, help="classify a fixed random sample of the images")] = None,
    seed: Annotated[int, typer.Option(help="seed of --sample")] = 0,
    truth_from_dirs: Annotated[
        bool, typer.Option(help="the folder an image is in, directly under a folder given as IMAGES (as vmem build "
                                "reads an ImageFolder), or its parent folder, is its true label: print accuracy")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    min_confidence: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, metavar="SHARE",
        help="mark an answer whose confidence (the fused DMN probability of its label) is under this as unsure: its "
             "label a suggestion, for a person to check (--json: confidence, unsure, unsure_reason); `vmem eval --dmn` "
             "gives the threshold that keeps a target accuracy (the vote's thresholds are no guide: a probability "
             "is no vote share)")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", metavar="FILE",
        help="also write every answer to this CSV, as vmem classify --csv does: path, label, label_name, confidence "
             "(the DMN probability), unsure, reason")] = None,
    review_csv: Annotated[Path | None, typer.Option(
        "--review-csv", metavar="FILE",
        help="with --min-confidence: write the unsure answers to this CSV as path,label rows, the suggestion as the "
             "label, for a person to correct (or empty a label to skip the image) and add with `vmem build FILE`")
    ] = None,
) -> None:
    """Classify images with the dmn rule (a stream is a sequence: images are processed in order)."""
    from vmem.dmn_classifier import DmnOptions

    from .answer_sheets import AnswerSheets

    paths = expand_images(images, sample, seed)
    if not paths:
        raise typer.BadParameter("no images found", param_hint="IMAGES")
    # Before any image is embedded, as vmem classify checks them: a folder that cannot be written is said now.
    sheets = AnswerSheets.checked(csv_out, review_csv, min_confidence)
    # Held (the --csv sheet's flock) for the run, and let go at its end: in one process (a test, a notebook)
    # a second run given the sheet was refused as if another were writing it.
    with sheets if sheets is not None else contextlib.nullcontext():
        try:
            opts = DmnOptions(mode=mode.value, alpha_text=alpha_text, alpha_dynamic=alpha_dynamic,
                              alpha_static=alpha_static, static_k=static_k, static_cap=static_cap, update=update,
                              classes_file=str(classes_file) if classes_file else None)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        mem = open_memory(memory, qdrant_url, wait=wait)
        with mem:
            try:
                if mem.dmn.resolve_mode(opts.mode) == "memory-only":  # no text classifier to answer from: points only
                    require_points(mem)
            except ValueError as exc:  # zero-shot or few-shot of a memory without CLIP
                raise typer.BadParameter(str(exc), param_hint="--mode") from exc
            check_label_filter(mem, label or [])  # as vmem classify --vote dmn: an empty answer for every image
            # Printed part by part, in order, as vmem classify prints (a stream's images are a sequence either way).
            results, failed = classify_in_parts(mem, paths, desc="dmn", batch_size=batch_size, rerank=False,
                                                json_out=json_out, rule="dmn", dmn_stream=stream, dmn=opts,
                                                labels=label, min_confidence=min_confidence,
                                                on_part=sheets.add if sheets is not None else None)
            known = set(mem.store.label_counts()) if truth_from_dirs else None
        correct = finish_classify(results, failed, images, skips_said=True, known_labels=known)
        if truth_from_dirs:
            d = results[0].dmn
            typer.echo(f"accuracy {100 * correct / len(results):.2f}% ({correct}/{len(results)}) with dmn "
                       f"({d.mode if d else mode}, stream {stream or 'off'}); {counted(len(failed), 'image')} skipped",
                       err=json_out)
        if min_confidence is not None:
            typer.echo(unsure_summary(results, min_confidence, images if truth_from_dirs else None), err=json_out)
        if sheets is not None:
            typer.echo(sheets.summary(), err=True)


@app.command()
def streams(memory: MemoryOpt = DEFAULT_MEMORY, qdrant_url: QdrantUrlOpt = None, wait: WaitOpt = 0.0) -> None:
    """List this memory's dynamic-memory streams (name, entries, queries seen)."""
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        names = mem.dmn.streams()
        for name in names:
            try:
                s = mem.dmn.stream(name)
            except ValueError as exc:  # e.g. features of the memory's earlier featurizer: still list the rest
                typer.echo(f"{name}\tunusable: {exc}")
                continue
            typer.echo(f"{name}\t{counted(len(s), 'entry', 'entries')} in {counted(len(s.counts()), 'label')}\t"
                       f"{counted(s.updates, 'query', 'queries')} seen")
        if not names:
            typer.echo(f"no streams (they live under {mem.dmn.dir})", err=True)


@app.command()
def show(stream: StreamArg, memory: MemoryOpt = DEFAULT_MEMORY, qdrant_url: QdrantUrlOpt = None,
         json_out: Annotated[bool, typer.Option("--json")] = False, wait: WaitOpt = 0.0) -> None:
    """Show a stream: entries per pseudo-label and their mean prediction entropy."""
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        if stream not in mem.dmn.streams():
            raise typer.BadParameter(f"no stream {stream!r}; have {mem.dmn.streams()}", param_hint="STREAM")
        try:
            s = mem.dmn.stream(stream)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="STREAM") from exc
        per_label = {lab: {"entries": n, "mean_entropy": round(float(s.entries(lab)[1].mean()), 4)}
                     for lab, n in s.counts().items()}
        info = {"stream": stream, "path": str(mem.dmn.stream_path(stream)), "featurizer": s.featurizer,
                "slots": s.slots, "entries": len(s), "queries_seen": s.updates, "labels": per_label}
    if json_out:
        typer.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    typer.echo(f"stream   {stream} ({info['path']})")
    typer.echo(f"entries  {counted(len(s), 'entry', 'entries')} in {counted(len(per_label), 'label')}, "
               f"{counted(s.slots, 'slot')} each; {counted(s.updates, 'query', 'queries')} seen")
    for lab, v in list(per_label.items())[:20]:
        typer.echo(f"  {v['entries']:4d}  {lab}  (mean entropy {v['mean_entropy']:.3f})")
    if len(per_label) > 20:
        typer.echo(f"  ... {len(per_label) - 20} more")


@app.command()
def reset(stream: StreamArg, memory: MemoryOpt = DEFAULT_MEMORY, qdrant_url: QdrantUrlOpt = None,
          wait: WaitOpt = 0.0) -> None:
    """Empty a stream's dynamic memory (the labelled memory is untouched)."""
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        try:
            existed = mem.dmn.reset(stream)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="STREAM") from exc
    typer.echo(f"reset stream {stream}" if existed else f"no stream {stream!r}; nothing to reset",
               err=not existed)
    if not existed:
        sys.exit(1)
