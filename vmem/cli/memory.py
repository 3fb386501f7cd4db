"""Commands that build, query and edit a memory: build, classify, forget, info."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_args

import typer
from pydantic import ValidationError
from tqdm import tqdm

from prompts import TemplateError
from retrieval import (
    DatasetError,
    FeaturizerError,
    ImageDecodeError,
    IndexSettings,
    MemoryFullError,
    MemoryInUseError,
    VoteRule,
    find_label_names_file,
    imagenet_label_names,
    read_label_names,
    read_labelled,
    unique_sources,
)
from retrieval.files import LATEST_BACKUP, holder_note, link_latest, os_error_reason
from retrieval.images import failure_line
from retrieval.ingest import unlabelled_rows_message
from retrieval.journal import JournalEntry, JournalOp, LeftNote, label_counts
from retrieval.store import WaitInterrupted, is_embedded_location, local_folder, point_id_for, wait_until_created
from retrieval.text import counted, quoted, utf8_text, visible, visible_json, without_secrets

from ..answer_log import AnswerLog
from ..export import check_export_path
from ..import_points import PointsFileError, read_points_file
from ..novelty import OOD_PERCENTILE, out_of_distribution
from ..results import FewPoints, HistoryPage, MemoryPoint
from ..visual_memory import (
    COPY_SIMILARITY,
    NoSuchLabelsError,
    UnknownPointError,
    VisualMemory,
    VoteOptionError,
    disk_usage_of,
    history_at_rest,
    history_from_files,
    label_counts_from_files,
    local_source_prefix,
    name_hints,
    parse_point_id,
    stats_from_files,
)
from ._common import (
    DEFAULT_MEMORY,
    LISTED_BY,
    CreatedWaitOpt,
    MemoryOpt,
    QdrantUrlOpt,
    Quantization,
    VectorsDtype,
    WaitOpt,
    answers_right,
    at_rest_location,
    check_label_filter,
    check_memory_location,
    check_reranker_settings,
    expand_images,
    finish_classify,
    label_history,
    memory_location,
    n_points,
    named_label,
    one_line,
    open_failure,
    open_memory,
    parse_tags,
    require_points,
    say_few_points,
    served_note,
    sigterm_as_interrupt,
    true_labels,
    unread_file_said,
)

# The voting rules plus `dmn` (Dual Memory Networks, vmem.dmn_classifier), which is not a neighbour vote.
VoteChoice = StrEnum("VoteChoice", {**{r.value: r.value for r in VoteRule}, "dmn": "dmn"})  # type: ignore[misc]  # from VoteRule


_T = TypeVar("_T")
_SEARCH_SETTING_NAMES = {"hnsw_ef": "search ef", "rescore": "rescoring"}


def _shown(value: object) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def build(
    dataset: Annotated[Path, typer.Argument(help="ImageFolder root (ROOT/<label>/<image>) or a path,label CSV; "
                                                 "with --label, a folder (or image) of one class")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    featurizer: Annotated[str | None, typer.Option(help=(
        "encoder for a new memory (default dinov2-small): dinov2-small|base|large|giant, dinov2:DIR, "
        "efficientnet-lite0|1|2, clip-vit-b16|b32|l14, clip:DIR, hf:HUB_ID_OR_DIR (any "
        "transformers vision model, preprocessed as its saved image processor; #cls, #mean, #pooler or #image after "
        "it chooses the feature), python:package.module:factory "
        "(your own torch model; README, \"Your own encoder\")"))] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int | None, typer.Option(help="decode workers (default: cores - 1)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE stored on every point; repeatable")] = None,
    feature_cache: Annotated[
        Path | None, typer.Option("--feature-cache", "--cache",
                                  help="reuse features cached by file content in this directory (and add new ones)")
    ] = None,
    quantization: Annotated[
        Quantization | None,
        typer.Option(help=f"new memory: int8 = scalar quantization (default {IndexSettings().quantization}); "
                          "turboquant8 = TurboQuant 8-bit codes, as small, closer to the true similarities "
                          "(matters with --no-rescore); docs/benchmarks.md"),
    ] = None,
    vectors_on_disk: Annotated[
        bool | None, typer.Option("--vectors-on-disk/--vectors-in-ram",
                                  help="new memory: original vectors on disk, mapped and read as needed (the "
                                       "default), or loaded into RAM")
    ] = None,
    vectors_dtype: Annotated[
        VectorsDtype | None,
        typer.Option(help="new memory: storage type of the original vectors; float16 (the default) halves their "
                          "disk and the RAM to rescore at full speed, float32 keeps every bit"),
    ] = None,
    hnsw_ef: Annotated[
        int | None,
        typer.Option(min=8, help=f"HNSW candidates while searching (default {IndexSettings().hnsw_ef}); a search "
                                 "setting, so it also changes an existing memory. Higher: better recall, slower; "
                                 "1280-d synthetic features needed ~192 for recall@50 0.99 (docs/benchmarks.md)"),
    ] = None,
    rescore: Annotated[
        bool | None,
        typer.Option("--rescore/--no-rescore",
                     help="quantized memory: re-rank the candidates by their original vectors (the default), or "
                          "answer from the codes alone, never reading the originals: for a server without the RAM "
                          "to cache them (recall@50 on real features 0.99 with turboquant8, 0.98 with int8; "
                          "docs/benchmarks.md). A search setting, so it also changes an existing memory"),
    ] = None,
    label_names: Annotated[
        Path | None,
        typer.Option("--label-names", "--classes",
                     help="file naming the labels (classes.tsv, words.txt, LOC_synset_mapping.txt: label<TAB>name "
                          "or 'label name, ...' lines; or a label,name CSV); default: such a file in DATASET's "
                          "folder or the one above. Results show the names; the re-ranker shows Gemini the names "
                          "instead of the labels (WordNet ids say nothing to it)"),
    ] = None,
    relabel: Annotated[
        bool, typer.Option(help="an image already in memory under another label takes the listed one (not embedded "
                                "again); without it, it keeps its stored label and is reported")
    ] = False,
    skip_forgotten: Annotated[
        bool, typer.Option(help="leave out images the memory's journal says were forgotten from it (without it they "
                                "are added again, and listed)")
    ] = False,
    label: Annotated[str | None, typer.Option(
        help="every image below DATASET, a folder of one class's images (or one image), takes this label: a class "
             "added from the folder it came in")] = None,
    rescore_doubtful: Annotated[
        bool | None,
        typer.Option("--rescore-doubtful",
                     help="new quantized memory, with --no-rescore: answer from the codes, then re-rank only the "
                          "candidates too close to the k-th best to call, by original vectors vmem keeps in a file "
                          "of its own (a handful of reads a query; recall of rescoring with the RAM of the codes "
                          "alone; docs/benchmarks.md). Embedded memory only"),
    ] = None,
) -> None:
    """Embed a labelled image set into the memory (resumable; bad images are skipped and listed)."""
    unlabelled: list[int] = []  # a review queue's rows a person left with no label: skipped, and said
    try:
        items = read_labelled(dataset, label, unlabelled)
        unique_sources(items)  # a file given two labels: refused before the memory is created or touched
    except (DatasetError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="DATASET") from exc
    dataset_labels = {i.label for i in items}
    names, names_file = _dataset_label_names(dataset, label_names, dataset_labels)
    tags = parse_tags(tag)
    # Only what the user gave: asking for the default explicitly must still be compared with the memory.
    asked: dict[str, Any] = {"quantization": quantization.value} if quantization is not None else {}
    if vectors_on_disk is not None:
        asked["vectors_on_disk"] = vectors_on_disk
    if vectors_dtype is not None:
        asked["vectors_dtype"] = vectors_dtype.value
    if rescore_doubtful:
        # Explicit, rather than switching rescoring off behind the user's back on an existing memory.
        if rescore is not False:
            raise typer.BadParameter("it re-ranks what the codes alone found: give --no-rescore with it",
                                     param_hint="--rescore-doubtful")
        if qdrant_url:
            raise typer.BadParameter("it keeps a file beside an embedded memory; a Qdrant server rescores on its "
                                     "own (--rescore)", param_hint="--rescore-doubtful")
        asked["rescore_doubtful"] = True
    searching = {name: value for name, value in (("hnsw_ef", hnsw_ef), ("rescore", rescore)) if value is not None}
    try:
        index = IndexSettings(**asked, **searching)
    except ValueError as exc:  # pydantic's, e.g. --rescore-doubtful on a memory without codes
        raise typer.BadParameter(str(exc.errors()[0]["msg"]) if hasattr(exc, "errors") else str(exc)) from exc
    mem = open_memory(memory, qdrant_url, featurizer, create=True, index=index, wait=wait)
    stored = mem.store.meta.index
    if rescore_doubtful and not stored.rescore_doubtful:
        # Refused before --no-rescore is saved: alone it would leave the memory answering from its codes.
        mem.close()
        raise typer.BadParameter("this memory was made without it, and index settings are fixed when a memory is "
                                 "made: build a new memory with --no-rescore --rescore-doubtful",
                                 param_hint="--rescore-doubtful")
    try:  # before anything is stored or changed
        mem.check_added_labels(mem.stored_labels(sorted(dataset_labels)))
    except ValueError as exc:
        mem.close()
        raise typer.BadParameter(str(exc), param_hint="--label" if label is not None else "DATASET") from None
    changed = {name: value for name, value in searching.items() if getattr(stored, name) != value}
    if changed:
        # Read at every search, not built into the index: an existing memory can take a new value.
        for name, value in changed.items():
            typer.echo(f"{_SEARCH_SETTING_NAMES[name]} of this memory: {_shown(getattr(stored, name))} -> "
                       f"{_shown(value)}", err=True)
        mem.set_search_settings(**changed)
        stored = mem.store.meta.index
    if rescore is not None and not stored.quantized:
        typer.echo("note: this memory is not quantized: its searches use the original vectors, so --rescore and "
                   "--no-rescore change nothing", err=True)
    # An existing memory keeps its settings; say so when the user asked for others.
    if any(getattr(stored, name) != value for name, value in asked.items()):
        typer.echo(f"note: index settings are fixed when a memory is created; this one keeps "
                   f"{stored.model_dump()}", err=True)
    # Images already stored take no more room (a resumed build)
    stored_already = len(mem.store.existing_ids([point_id_for(it.source) for it in items
                                                 if utf8_text(it.source) == it.source]))  # the rest are skipped
    if (shortfall := _disk_shortfall(mem, len(items) - stored_already)) is not None:
        typer.echo(f"warning: {shortfall}", err=True)
    # Drawn into a log too (stderr no terminal): a build's progress is what a long one's log is read for, and the
    # crash tests read it there
    with mem, tqdm(total=len(items), unit="img", desc="build", file=sys.stderr) as bar:
        # Through the bar, which clears its line first: echoed, these lines were glued onto the bar's first one.
        bar.write(f"memory {visible(without_secrets(mem.store.location))}: {mem.store.meta.featurizer.name}, "
                  f"{counted(len(items), 'image')} in {counted(len(dataset_labels), 'label')}", file=sys.stderr)
        if label_names is None:
            # Found beside the dataset (or vmem's own): a fallback, naming only labels without a name. A resume is
            # the same command run again, and must not undo names given since (--label-names, PUT label-names).
            names = {lab: name for lab, name in names.items() if lab not in mem.store.meta.label_names}
        if names:
            new = {lab: name for lab, name in names.items() if mem.store.meta.label_names.get(lab) != name}
            if new:
                mem.set_label_names(new)
            bar.write(f"label names: {len(names)} of {counted(len(dataset_labels), 'label')} named by "
                      f"{visible(names_file or '')}"
                      + (f" ({len(new)} new or changed)" if len(new) != len(names) else ""), file=sys.stderr)
        mem.store.on_segment_indexing = lambda n: bar.write(
            f"indexing {n:,} points as a segment of their own (minutes for 640k; the bar resumes after)",
            file=sys.stderr)
        try:
            with sigterm_as_interrupt():
                report = mem.build(items, batch_size=batch_size, num_workers=workers, tags=tags,
                                   progress=bar.update, feature_cache=feature_cache, relabel=relabel,
                                   skip_forgotten=skip_forgotten)
        except MemoryFullError as exc:  # as Ctrl-C: what was added before is kept and journaled
            bar.write(f"stopped: {exc}. The memory holds {counted(mem.store.count(), 'point')}; once there is room, "
                      "run the same command again to resume (images already in it are skipped)", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C: what was added is kept (and journaled); say so, and how to go on
            bar.write(f"interrupted: the memory holds {counted(mem.store.count(), 'point')}; run the same command "
                      "again to resume (images already in it are skipped)", file=sys.stderr)
            raise typer.Exit(130) from None
        few = mem.few_point_labels(mem.stored_labels(sorted(dataset_labels)))
    typer.echo(report.summary(failures=False))
    if unlabelled:
        typer.echo(unlabelled_rows_message(dataset, unlabelled))
    say_few_points(few)
    if report.failed:  # notes, on stderr, as classify's skipped images are: stdout is the summary alone
        typer.echo(report.failures(), err=True)
    # As vmem classify does when nothing could be classified: a script can tell. Whether or not the memory held
    # points before: a daily add from a mount gone bad had exited 0 into a memory that was not empty.
    if report.failed and not (report.added or report.skipped_existing or report.duplicates or report.relabelled):
        every = "the 1 image" if len(report.failed) == 1 else f"all {len(report.failed):,} images"
        typer.echo(f"nothing could be added: {every} failed", err=True)
        raise typer.Exit(1)


# Bytes an embedded memory takes per point and vector dimension, as measured: Tiny-ImageNet with
# EfficientNet-Lite0 (1,280-d, int8 codes and float16 originals) took 135 MB for 20,100 points, 5.2 a dimension;
# with room for the engine's write-ahead log (32 MB files) and a segment rebuilt beside the old one.
DISK_BYTES_PER_DIMENSION = 8
DISK_BYTES_FIXED = 100_000_000


def _disk_shortfall(mem, images: int) -> str | None:
    """A warning when the disk holding an embedded memory has less room than its build may need: the engine
    writes through mapped files, and a full disk kills it with a bus error and no message."""
    from retrieval.store import EDIT_HEADROOM_BYTES

    folder = local_folder(mem.store.location)
    if folder is None or not folder.exists():
        return None
    need = images * mem.store.dim * DISK_BYTES_PER_DIMENSION + DISK_BYTES_FIXED
    free = shutil.disk_usage(folder).free
    if free >= need:
        return None
    return (f"the disk holding {folder} has {free / 1e9:.2f} GB free, and {images:,} images of {mem.store.dim} "
            f"dimensions may need about {need / 1e9:.2f} GB: the build stops when {EDIT_HEADROOM_BYTES >> 20} MB are "
            "left (what was added before is kept; free some space and run the same command again)")


BUILTIN_NAMES = "vmem's ImageNet-1k names"


def _dataset_label_names(dataset: Path, given: Path | None, labels: set[str]) -> tuple[dict[str, str], str | None]:
    """The names of a build's labels (and where they came from): from `given`, else a file found beside the
    dataset, else vmem's own ImageNet-1k names when every label is an ImageNet-1k WordNet id. A file given that
    cannot be read, or names none of the labels, is refused; one found is skipped with a note (it may be
    something else of the same name)."""
    path = given or find_label_names_file(dataset)
    if path is None:
        imagenet = imagenet_label_names()
        if labels and labels <= imagenet.keys():
            return {label: imagenet[label] for label in sorted(labels)}, BUILTIN_NAMES
        return {}, None
    try:
        names = read_label_names(path)
    except (DatasetError, OSError) as exc:
        if given:
            raise typer.BadParameter(unread_file_said(exc), param_hint="--label-names") from exc
        why = os_error_reason(exc) if isinstance(exc, OSError) else str(exc)
        typer.echo(f"note: {visible(str(path))} looks like a file of label names but is not readable as one ({why}); "
                   "labels stay unnamed", err=True)
        return {}, None
    named = {label: names[label] for label in sorted(labels) if label in names}
    if not named and given:
        raise typer.BadParameter(f"{visible(str(path))} names none of the dataset's {len(labels)} labels (e.g. "
                                 f"{quoted(sorted(labels)[0])}; it names {quoted(next(iter(names)))}, ...)",
                                 param_hint="--label-names")
    return named, str(path)


def classify(
    images: Annotated[list[Path], typer.Argument(help="image files or directories of images")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    k: Annotated[int | None, typer.Option("--k", min=1, max=1000,
                                          help="neighbours (default: the memory's tuned k, else 50)")] = None,
    vote: Annotated[VoteChoice | None,
                    typer.Option(help="voting rule (default: the memory's tuned rule, else rank)")] = None,
    dmn_stream: Annotated[str | None, typer.Option(help="--vote dmn: the dynamic memory stream (default off)")] = None,
    alpha: Annotated[float | None, typer.Option(help="rank voting offset (default: tuned, else 2)")] = None,
    tau: Annotated[float | None, typer.Option(help="softmax temperature (default: tuned, else 0.07)")] = None,
    label: Annotated[list[str] | None, typer.Option(help="only neighbours with this label; repeatable")] = None,
    rerank: Annotated[bool, typer.Option(help="ask the VLM re-ranker (falls back to voting)")] = False,
    template: Annotated[str | None, typer.Option(help="re-ranker prompt template")] = None,
    exact: Annotated[bool, typer.Option(help="search every point exactly, not through the index: the answers any "
                                             "build or copy of the memory gives (slower on a large memory)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per image")] = False,
    sample: Annotated[int | None, typer.Option(min=1, help="classify a fixed random sample of the images")] = None,
    seed: Annotated[int, typer.Option(help="seed of --sample")] = 0,
    truth_from_dirs: Annotated[
        bool, typer.Option(help="the folder an image is in, directly under a folder given as IMAGES (as vmem build "
                                "reads an ImageFolder), or its parent folder, is its true label: print accuracy")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    answer_log: Annotated[Path | None, typer.Option(
        help="log each answer to this file, one JSON line (the image's sha256, the label, the neighbours): "
             "`vmem answers` reads it")] = None,
    ood: Annotated[bool, typer.Option(
        "--ood", help="flag images unlike the memory's own: novelty (mean cosine distance to the k neighbours) above "
                      f"the {OOD_PERCENTILE:g}th percentile of the memory's points' own, as vmem serve flags them; "
                      "--json adds ood_threshold and out_of_distribution")] = False,
    why_not: Annotated[str | None, typer.Option(
        "--why-not", metavar="LABEL",
        help="say, for each image, why the vote did not answer this label: its nearest points and their ranks, "
             "its vote against the winner's, a k at which it wins (--json: why_not)")] = None,
    min_confidence: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, metavar="SHARE",
        help="mark an answer whose confidence (the vote share of its label) is under this as unsure: its label a "
             "suggestion, for a person to check (--json: confidence, unsure, unsure_reason); vmem eval's table.md "
             "gives the threshold that keeps a target accuracy")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", metavar="FILE",
        help="also write every answer to this CSV: path, label, label_name, confidence, unsure, reason (added to "
             "as each part of the images is done)")] = None,
    review_csv: Annotated[Path | None, typer.Option(
        "--review-csv", metavar="FILE",
        help="with --min-confidence: write the unsure answers to this CSV as path,label rows, the suggestion as the "
             "label, for a person to correct (or empty a label to skip the image) and add with `vmem build FILE`")
    ] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="with --csv: go on with a run stopped or killed: the images the --csv sheet answered "
                         "already are not classified again, and the answers of the others are added to it (and "
                         "to --review-csv's); refused where the sheet was answered with other settings (memory, "
                         "its points, k, vote, ...). Without it, --csv begins the sheet afresh once its run "
                         "finished, and is refused where it holds answers of a run that did not")] = False,
) -> None:
    """Classify images from their nearest labelled neighbours (exit 1 when none could be classified)."""
    if template is not None and not rerank:
        raise typer.BadParameter("it chooses the re-ranker's prompt: give --rerank too", param_hint="--template")
    if ood and ((vote is not None and vote.value == "dmn") or dmn_stream is not None):
        # dmn's novelty is over its wide search's 256 neighbours, or none at all from its text classifier alone
        raise typer.BadParameter("--vote dmn fuses text, static and dynamic memories rather than voting over k "
                                 "neighbours, and no threshold is calibrated for it: flag unfamiliar images with a "
                                 "neighbour vote (--vote rank, plurality, distance or softmax)", param_hint="--ood")
    if rerank:
        check_reranker_settings()
    paths = expand_images(images, sample, seed)
    if not paths:
        raise typer.BadParameter("no images found", param_hint="IMAGES")
    from .answer_sheets import AnswerSheets  # here: a command imports only its own modules

    sheets = AnswerSheets.checked(csv_out, review_csv, min_confidence, resume)
    # The --csv sheet is this run's until it ends: another run given it is refused meanwhile (AnswerSheets.hold)
    with sheets if sheets is not None else contextlib.nullcontext():
        if answer_log is not None:  # asked to log, it does not answer unlogged (a service goes on: it serves others)
            try:
                with open(answer_log.expanduser(), "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise typer.BadParameter(f"cannot write {visible(str(answer_log))} ({os_error_reason(exc)})",
                                         param_hint="--answer-log") from None
        mem = open_memory(memory, qdrant_url, wait=wait)
        if answer_log is not None:
            mem.answer_log = AnswerLog(answer_log)
        with mem:
            if vote is None or vote.value != "dmn" or mem.dmn.resolve_mode("auto") == "memory-only":
                require_points(mem)  # dmn answers from its text classifier alone only with CLIP
            check_label_filter(mem, label or [])
            if why_not is not None:  # before any image is embedded, with its option named
                _check_why_not(mem, why_not, label,
                               (vote is not None and vote.value == "dmn") or dmn_stream is not None)
            flags = _novelty_flags(mem, k, label, exact) if ood else None  # once, before any image is embedded
            if sheets is not None:
                sheets.begin({  # what makes an answer what it is: a resumed sheet must have been answered so
                    "memory": run_location(str(mem.store.location)), "points": mem.store.count(),
                    "featurizer": mem.store.meta.featurizer.model_dump(mode="json"), "k": k,
                    "vote": vote and vote.value, "alpha": alpha, "tau": tau, "dmn_stream": dmn_stream,
                    "label": sorted(label or []), "rerank": rerank, "template": template, "exact": exact,
                    "min_confidence": min_confidence, "ood": ood,
                    "review_csv": sheets.review and os.path.abspath(sheets.review)})
                if sheets.resumed:
                    left = [p for p in paths if not sheets.answered_already(p)]
                    typer.echo(f"resuming: {len(paths) - len(left):,} of the {counted(len(paths), 'image')} are "
                               f"answered in {sheets.answers} already; classifying the other {len(left):,}", err=True)
                    if not left:
                        sheets.finish()
                        return
                    paths = left
            results, failed = classify_in_parts(
                mem, paths, desc="classify", batch_size=batch_size, rerank=rerank, json_out=json_out, k=k,
                rule=vote and vote.value, alpha=alpha, tau=tau, labels=label, template=template, dmn_stream=dmn_stream,
                exact=exact, flags=flags, why_not=why_not, min_confidence=min_confidence,
                on_part=sheets.add if sheets is not None else None)
            if sheets is not None:  # every image answered or failed: begun afresh, its sheet needs no --resume
                sheets.finish()
            known = set(mem.store.label_counts()) if truth_from_dirs else None
        if sheets is not None and sheets.resumed and not results and failed:
            # Only images that failed before were left: the run as a whole did classify (exit 0, as one run of the
            # same images does), and "no image could be classified: give image files" would misread it
            typer.echo(f"none of the {counted(len(failed), 'image')} left could be classified "
                       f"(skipped, above); {sheets.summary()}", err=True)
            return
        correct = finish_classify(results, failed, images, skips_said=True, known_labels=known)
        if truth_from_dirs:
            s = results[0].vote
            typer.echo(f"accuracy {100 * correct / len(results):.2f}% ({correct}/{len(results)}) "
                       f"with {s.rule} voting, k={s.k} ({s.origin} settings); {counted(len(failed), 'image')} skipped",
                       err=json_out)
        if min_confidence is not None:
            typer.echo(unsure_summary(results, min_confidence, images if truth_from_dirs else None), err=json_out)
        if sheets is not None:
            typer.echo(sheets.summary(), err=True)
        if flags is not None:
            typer.echo(flags.summary(results), err=True)


def run_location(location: str) -> str:
    """The memory as a --csv run keeps it: a folder by its absolute path (a resume from another folder, or with
    `-m` spelled otherwise, names the same memory so; a relative one named another memory there)."""
    return os.path.abspath(os.path.expanduser(location)) if is_embedded_location(location) else location


def unsure_summary(results: list, min_confidence: float, images: list[Path] | None) -> str:
    """How many answers --min-confidence left for a person, and (with the truth, `images`' folders) how often the
    answers kept and those left were right."""
    sure = [not r.unsure for r in results]
    kept = sum(sure)
    said = (f"unsure: {len(results) - kept:,} of {counted(len(results), 'answer')} under min confidence "
            f"{min_confidence:g} (for a person to check); {kept:,} answered ({100 * kept / len(results):.1f}%)")
    if images is None:
        return said
    right = answers_right(results, true_labels(results, images))
    kept_right = sum(r for r, s in zip(right, sure, strict=True) if s)
    left_right = sum(right) - kept_right

    def share(n: int, of: int) -> str:
        return f"{100 * n / of:.2f}% ({n}/{of})" if of else "none"

    return (f"{said}: right {share(kept_right, kept)}; the unsure ones' suggestions right "
            f"{share(left_right, len(results) - kept)}")


def _check_why_not(mem, why_not: str, labels: list[str] | None, dmn: bool) -> None:
    """BadParameter for a --why-not label the vote cannot answer: one the memory lacks (naming those spelled or
    named like it), one --label leaves out, or with --vote dmn."""
    try:
        mem.check_why_not(why_not, mem.stored_labels(labels) if labels else None, dmn, LISTED_BY)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--why-not") from None


class NoveltyFlags:
    """`vmem classify --ood`: the threshold for the k and labels of the run, and how each answer is marked."""

    def __init__(self, threshold: float | None, k: int, labels: list[str] | None) -> None:
        self.threshold, self.k, self.labels = threshold, k, labels

    def flag(self, res) -> bool | None:
        return out_of_distribution(res.novelty, self.threshold)

    def json_line(self, res) -> str:
        """The answer's JSON object as without --ood, and after its keys the two an HTTP answer has besides."""
        return (res.model_dump_json()[:-1] + f',"ood_threshold":{json.dumps(self.threshold)},'
                f'"out_of_distribution":{json.dumps(self.flag(res))}}}')

    def marker(self, res) -> str:
        return f" [out of distribution: novelty {res.novelty:.3f} > {self.threshold:.3f}]" if self.flag(res) else ""

    def summary(self, results: list) -> str:
        among = f" among {counted(len(self.labels), 'label')}" if self.labels else ""
        if self.threshold is None:
            return (f"out of distribution: none flagged: the memory has too few points{among} to calibrate a "
                    f"novelty threshold at k={self.k} (2 are needed)")
        n = sum(bool(self.flag(r)) for r in results)
        return (f"out of distribution: {n:,} of {counted(len(results), 'image')} flagged "
                f"(novelty above {self.threshold:.4f}, the {OOD_PERCENTILE:g}th percentile of the memory's points' "
                f"own at k={self.k}{among})")


def _novelty_flags(mem, k: int | None, labels: list[str] | None, exact: bool) -> NoveltyFlags:
    try:
        used_k = mem.vote_settings(k=k).k  # the k the vote reads: given, else the memory's tuned k, else 50
        return NoveltyFlags(mem.novelty_threshold(used_k, labels or None, exact=exact), used_k, labels or None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


# The largest part of a classify's images done at once (see `classify`): 4,096 images are ~40 s on 2 CPU cores.
CLASSIFY_PART_MAX = 4096


def classify_in_parts(mem, paths: list, *, desc: str, batch_size: int, rerank: bool, json_out: bool,
                      flags: NoveltyFlags | None = None, on_part: Callable[[list], None] | None = None,
                      **options) -> tuple[list, list]:
    """`mem.classify_many(paths, rerank=rerank, **options)`, printed as each part is done (answers on stdout,
    skips on stderr), for `vmem classify` and `vmem dmn classify`; `flags` marks the unfamiliar ones (--ood);
    `on_part` is given each part's answers once they are printed (--csv). Returns (answers, failures): the answers
    `for_summaries`, without what was printed of them only."""
    names = mem.label_names
    results: list = []
    failed: list = []
    # Answers are printed as each part is done, not after the last image: `| head`, a log, and a Ctrl-C after
    # hours keep what was done. Parts grow so that the first answers come at once and a large folder pays each
    # part's start (a loader's workers) rarely.
    started, gone = time.monotonic(), 0
    with tqdm(total=len(paths), unit="img", desc=desc, file=sys.stderr, disable=None, leave=False) as bar:
        for part in growing_parts(paths, first=batch_size, largest=CLASSIFY_PART_MAX):
            try:
                done, part_failed = mem.classify_many(part, batch_size=batch_size, rerank=rerank, **options)
            except ValidationError as exc:  # the option and its bound, not pydantic's
                raise typer.BadParameter("; ".join(f"--{e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"]
                                                   for e in exc.errors())) from None
            except VoteOptionError as exc:  # --alpha nan, --tau 0: said as the option is spelled here
                raise typer.BadParameter(f"--{exc.option} {exc.value}: takes {exc.takes}") from None
            except (FeaturizerError, ImageDecodeError, TemplateError, ValueError) as exc:
                raise typer.BadParameter(str(exc)) from exc
            bar.clear()  # the answers on their own lines, the bar (a terminal's only) below them
            for res in done:
                print_classification(res, names, rerank, json_out, flags)
            for f in part_failed:  # with its part: a run interrupted later still said it
                typer.echo(f"skipped {failure_line(f.source, f.reason, escaped=True)}", err=True)
            if on_part is not None:
                on_part(done)
            results += map(for_summaries, done)
            failed += part_failed
            bar.update(len(part))
            gone += len(part)
            if bar.disable and gone < len(paths):  # no terminal (nohup, a log): how far, a line each part
                typer.echo(progress_line(desc, gone, len(paths), time.monotonic() - started), err=True)
    return results, failed


def progress_line(desc: str, done: int, total: int, seconds: float) -> str:
    """What the progress bar says, as a line for a log: a run left overnight with stderr to a file showed nothing
    between its first answers and its summary."""
    rate = done / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate else None
    eta = "" if left is None else (f", about {left / 3600:.1f} h left" if left >= 5400 else
                                   f", about {round(left / 60)} min left" if left >= 90 else
                                   f", about {round(left)} s left")
    return f"{desc}: {done:,} of {counted(total, 'image')} ({100 * done / total:.1f}%), {rate:.1f} images/s{eta}"


def for_summaries(res):
    """An answer as a run keeps it once printed, for its summaries (accuracy, unsure, out of distribution): its
    neighbours, the other labels' scores and why-not left out. Kept whole (50 neighbours each at the default k), a
    run held 70 KB more each answer, 7 GB at 100,000 images; so, 1.7 KB (docs/benchmarks.md, "A long classify
    run")."""
    own = {res.label: res.scores[res.label]} if res.label in res.scores else {}
    return res.model_copy(update={"neighbors": [], "scores": own, "why_not": None, "trace": None})


def growing_parts(items: list, first: int, largest: int):
    """`items` in consecutive parts of `first`, then twice as many each time, up to `largest`."""
    size, start = max(1, first), 0
    while start < len(items):
        yield items[start : start + size]
        start += size
        size = min(size * 2, max(largest, first))


def print_classification(res, names: dict[str, str], rerank: bool, json_out: bool,
                         flags: NoveltyFlags | None = None) -> None:
    if json_out:
        # every key, null when empty: a script reads the same keys each time (with --ood, two more at the end)
        typer.echo(res.model_dump_json() if flags is None else flags.json_line(res))
    else:  # for people: the vote's runners-up by name where the memory names its labels
        top = ", ".join(f"{one_line(names.get(lab, lab))} {s:.2f}" for lab, s in list(res.scores.items())[:3])
        # Which template answered: a run with a user's template is told apart from the built-in's in the output
        said = f" [re-ranked: {res.template}]" if res.template else " [re-ranked]"
        extra = said if res.reranked else (f" [fallback: {res.fallback_reason}]" if rerank else "")
        extra += flags.marker(res) if flags is not None else ""
        if res.unsure:
            extra += (" [unsure: no answer]" if res.confidence is None else
                      f" [unsure: confidence {res.confidence:.3f} < {res.min_confidence:g}]")
        named = f" ({one_line(res.label_name)})" if res.label_name else ""
        typer.echo(f"{one_line(res.source)}\t{one_line(res.label)}{named}\t({top}){extra}")
        if (why := res.why_not) is not None:  # indented under its answer: a line per image stays first
            asked = one_line(why.label) + (f" ({one_line(why.label_name)})" if why.label_name else "")
            typer.echo(f"  why not {asked}: {why.reason}" + (f" ({why.note})" if why.note else ""))  # escaped


def forget(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    id: Annotated[list[str] | None, typer.Option("--id", help="point id; repeatable")] = None,
    label: Annotated[str | None, typer.Option(help="forget every point with this label")] = None,
    source: Annotated[str | None, typer.Option(help="forget every point whose source starts with this")] = None,
    like: Annotated[Path | None, typer.Option(
        "--like", help="forget every point whose image looks like this one: the image itself wherever it was "
                       "stored (an upload too), and its copies re-saved, recompressed or enlarged; or a point id "
                       "(as `vmem classify --json` prints it): that point and its copies")] = None,
    min_similarity: Annotated[float | None, typer.Option(
        "--min-similarity", help=f"with --like: the cosine similarity from which a point is taken for a copy "
                                 f"(default {COPY_SIMILARITY}, measured: README, \"Forgetting\")")] = None,
    erase: Annotated[bool, typer.Option(
        help="also rewrite the memory's files without the forgotten vectors now (embedded memory)")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Delete points from the memory (by id, label, source prefix, or likeness to an image): unlearning without
    retraining."""
    # Ids and the prefix checked here, as the HTTP route does, so the only ValueError left below is erase's.
    id, source = _chosen_points(id, label, source, "forget", like=like)
    if min_similarity is not None and like is None:
        raise typer.BadParameter("chooses copies of the image given with --like: give --like IMAGE too",
                                 param_hint="--min-similarity")
    if like is not None:
        _forget_like(memory, qdrant_url, like, COPY_SIMILARITY if min_similarity is None else min_similarity,
                     erase, dry_run, wait)
        return
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        if erase:
            _check_erase_first(mem)
        if label is not None:  # a name for a label is a mistake in the command, not a label already forgotten
            try:
                mem.check_chosen_label(label)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--label") from None
        if dry_run:
            try:
                chosen = mem.chosen_points(ids=id, label=label, source_prefix=source)
            except NoSuchLabelsError:  # a label never held: 0, with the note the forget would give
                chosen = {}
            _say_chosen(mem, "forget", chosen)
            if not chosen and label is not None:
                typer.echo(f"note: {mem.no_label_note(label, LISTED_BY, label_history)}", err=True)
            return
        started = time.perf_counter()
        try:
            n = mem.forget(ids=id, label=label, source_prefix=source)
        except NoSuchLabelsError:  # a label never held: 0, and the note below says which labels there are
            n = 0
        typer.echo(f"forgot {n_points(n)}; memory now holds {mem.store.count():,}")
        _after_forget(mem, n, erase, started,
                      f"note: {mem.no_label_note(label, LISTED_BY, label_history)}" if n == 0 and label is not None
                      else None)


def _check_erase_first(mem) -> None:
    """BadParameter where the memory cannot erase on demand (a Qdrant server): refused before anything is
    deleted."""
    try:
        mem.check_erase_on_demand()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--erase") from None


def _after_forget(mem, n: int, erase: bool, started: float, note: str | None) -> None:
    """What every forget says and does once its points are gone: thumbnails left by an earlier forget, `note`
    (why nothing went), the pruning that weighed the points, and the erase asked for."""
    # Thumbnails an earlier forget killed midway left behind (this process alone holds an embedded memory:
    # no add is in flight).
    if orphans := mem.remove_orphan_thumbnails():
        typer.echo(f"removed {counted(orphans, 'thumbnail')} of points forgotten earlier")
    if orphans := mem.remove_orphan_uploads():
        typer.echo(f"removed {counted(orphans, 'uploaded image')} of points forgotten earlier")
    if note:
        typer.echo(note, err=True)
    if n and (pruned := mem.store.meta.settings.get("pruning")):
        typer.echo(f"note: the memory's {pruned.get('mode', '')} pruning weighed its points with these among "
                   "them; vmem prune again (or --undo) to judge it without them", err=True)
    if erase:
        # After saying what was forgotten: an erase that fails (no room to rewrite) leaves the forget done.
        _erase_forgotten(mem)
        # "From the memory's files" read as all of them to whoever erases on request; the engine's log is not.
        typer.echo(f"erased the forgotten points' vectors from the memory's segments "
                   f"({time.perf_counter() - started:.1f} s); the engine's write-ahead log keeps its latest writes "
                   "until later ones fill it, theirs among them if recent: a `vmem copy` of the memory into a new "
                   "folder holds none of them (README, \"Forgetting\")")


def _forget_like(memory, qdrant_url, image: Path, min_similarity: float, erase: bool, dry_run: bool,
                 wait: float = 0.0) -> None:
    """`vmem forget --like IMAGE`: the points whose image looks like it, each on stdout as `vmem points` lists a
    point (id, label, source) with its similarity; how many on stderr (a dry run) or after them."""
    if not 0 < min_similarity <= 1:
        raise typer.BadParameter(f"{min_similarity:g} is no similarity to take copies from: give a number above 0 "
                                 f"and at most 1 (default {COPY_SIMILARITY})", param_hint="--min-similarity")
    if image.expanduser().is_dir():
        raise typer.BadParameter(f"{image} is a folder: give one image file, the one whose copies are to go",
                                 param_hint="--like")
    # A point id where no such file is there: the point's stored vector finds its copies (a file wins).
    is_file = image.expanduser().is_file()
    point_id = None if is_file else _as_point_id(str(image))
    if not is_file and point_id is None:
        raise typer.BadParameter(f"{image}: no such file (nor a point id)", param_hint="--like")
    with open_memory(memory, qdrant_url, wait=wait) as mem:
        if erase and not dry_run:
            _check_erase_first(mem)
        started = time.perf_counter()
        try:
            found = mem.forget_like(None if point_id else image.expanduser(), min_similarity, dry_run=dry_run,
                                    point_id=point_id)
        except (ImageDecodeError, UnknownPointError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--like") from None
        except ValueError as exc:  # more points that similar than copies of one image could be
            raise typer.BadParameter(str(exc), param_hint="--min-similarity") from None
        names = mem.label_names
        for d in found:
            typer.echo("\t".join([d.id, named_label(d.label, names), one_line(d.source),
                                  f"{d.similarity:.4f}"]))
        # Said of a dry run too, when it is most wanted: how to see how close the nearest points are.
        nothing = (f"note: no point is at least {min_similarity:g} similar to it; `vmem forget --like {image} "
                   "--dry-run --min-similarity 0.8` lists those nearer than 0.8, each with its similarity")
        if dry_run:
            _say_chosen(mem, "forget", {d.id: d.label for d in found}, listed=False)
            if not found:
                typer.echo(nothing, err=True)
            return
        typer.echo(f"forgot {n_points(len(found))} like {image} (similarity at least {min_similarity:g}); memory now "
                   f"holds {mem.store.count():,}")
        _after_forget(mem, len(found), erase, started, None if found else nothing)


def relabel(
    to: Annotated[str, typer.Option("--to", help="the new label (a label, not a name: see vmem labels)")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    id: Annotated[list[str] | None, typer.Option("--id", help="point id; repeatable")] = None,
    label: Annotated[str | None, typer.Option(help="relabel every point with this label (rename or merge a class)")
                     ] = None,
    source: Annotated[str | None, typer.Option(help="relabel every point whose source starts with this")] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Give points another label (by id, label or source prefix), embedding nothing again: correct a mislabelled
    image, rename or merge classes. Their pruning marks go; each keeps the label it held before."""
    id, source = _chosen_points(id, label, source, "relabel")
    with open_memory(memory, qdrant_url, wait=wait) as mem:
        if label is not None and label == to.strip():
            raise typer.BadParameter(f"the points already have the label {quoted(label)}", param_hint="--to")
        if label is not None:  # a name for a label is a mistake in the command, as forget refuses it
            try:
                mem.check_chosen_label(label)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--label") from None
        new_label = not mem.store.count(label=mem.stored_label(to))
        if dry_run:  # refused as the relabel would refuse it
            try:
                new = mem.check_new_label(to)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--to") from None
            try:
                chosen = mem.chosen_points(ids=id, label=label, source_prefix=source)
            except NoSuchLabelsError:  # a label never held: 0, and the note and exit status the relabel would give
                chosen = {}
            changing = {i: lab for i, lab in chosen.items() if lab != new}
            _say_chosen(mem, f"relabel to {new!r}", changing)
            if not changing:  # what the relabel would say of changing nothing: done already, or nothing there
                done, why = mem.why_nothing_relabelled(new, LISTED_BY, label_history, ids=id, label=label,
                                                       source_prefix=source)
                typer.echo(f"note: {why}", err=True)
                if not done:
                    raise typer.Exit(1)
            return
        try:
            n = mem.relabel(to, ids=id, label=label, source_prefix=source)
        except NoSuchLabelsError:  # a label never held: 0, and the note below says which labels there are
            n = 0
        except ValueError as exc:  # the new label empty, or a name rather than a label
            raise typer.BadParameter(str(exc), param_hint="--to") from None
        to = mem.stored_label(to)
        name = mem.label_names.get(to)
        typer.echo(f"relabelled {n_points(n)} to {quoted(to)}" + (f" ({one_line(name)})" if name else "")
                   + (" (a new label)" if n and new_label else "") + f"; it now has {mem.store.count(label=to)}")
        if n == 0:
            # Points that have the label already, or a label whose points all went (a rename run again): done, as
            # a forget of what is gone is (a corrections script run again after a partial failure had stopped at
            # the first one). Points not found, a label never had: a mistake.
            done, why = mem.why_nothing_relabelled(to, LISTED_BY, label_history, ids=id, label=label,
                                                   source_prefix=source)
            typer.echo(f"note: {why}", err=True)
            if not done:
                raise typer.Exit(1)


DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="say which points it would choose (ids on stdout, one "
                                                         "per line) and change nothing")]


def _say_chosen(mem, verb: str, chosen: dict[str, str], listed: bool = True) -> None:
    """A dry run's answer: the ids chosen on stdout (for a script), how many of which labels on stderr. `listed`
    false: the caller has listed them on stdout itself."""
    for point_id in chosen if listed else ():
        typer.echo(point_id)
    from collections import Counter

    per_label = Counter(chosen.values())
    names = mem.label_names
    shown = ", ".join(f"{named_label(lab, names)}: {n:,}" for lab, n in per_label.most_common(5))
    more = f" and {len(per_label) - 5} more labels" if len(per_label) > 5 else ""
    typer.echo(f"dry run: would {verb} {n_points(len(chosen))}" + (f" ({shown}{more})" if shown else "")
               + "; nothing changed", err=True)


def _chosen_points(ids: list[str] | None, label: str | None, source: str | None,
                   verb: str, like: Path | None = None) -> tuple[list[str] | None, str | None]:
    """Exactly one of --id, --label, --source (forget: or --like), checked before the memory opens: (parsed ids,
    the prefix as given, for the memory to match both as given and made absolute)."""
    if sum(x is not None for x in (ids, label, source, like)) != 1:
        raise typer.BadParameter("give exactly one of --id, --label, --source" + (", --like" if verb == "forget"
                                                                                  else ""))
    if source is not None and not source.strip():  # "" would be the current directory: everything under it
        raise typer.BadParameter(f"is empty: give the folder, file or URI prefix of the images to {verb}",
                                 param_hint="--source")
    if ids is not None:
        ids = [_point_id(i) for i in ids]
    if source is not None:
        try:
            local_source_prefix(source)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--source") from None
    return ids, source


def _as_point_id(text: str) -> str | None:
    try:
        return parse_point_id(text)
    except ValueError:
        return None


def _point_id(text: str) -> str:
    """`parse_point_id`, with BadParameter pointing at `vmem classify --json`, which prints the ids."""
    try:
        return parse_point_id(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a point id (a UUID, as `vmem classify --json` prints in "
                                 "`neighbors`)", param_hint="--id") from None


DESTINATION_OPTIONS = ("--to-memory", "--to-qdrant-url")


def copy(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    to_memory: Annotated[Path | None, typer.Option(help="copy into this embedded memory directory")] = None,
    to_qdrant_url: Annotated[str | None, typer.Option(help="copy into a Qdrant server (http://host:6333)")] = None,
    featurizer: Annotated[str | None, typer.Option(
        help="embed every point again from its image with this encoder (e.g. efficientnet-lite2): the memory "
             "moved to another encoder with its curation; points with no image (uploads, imported vectors, files "
             "gone) are left out and listed")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="--featurizer: images per forward")] = 64,
    workers: Annotated[int | None, typer.Option(help="--featurizer: decode workers (default: cores - 1)")] = None,
) -> None:
    """Copy a memory's points as stored into another memory (embedded or a Qdrant server): nothing is embedded
    again. Ids, labels, sources, tags, pruning, label names, tuned settings, the journal, DMN streams and uploads'
    thumbnails go too; re-run to resume, or to bring a copy up to date (points forgotten here since the last copy
    are forgotten there). With --featurizer, each point is embedded again from its image by that encoder
    instead (pruning marks, tuned vote settings and DMN streams, which judged the old vectors, stay behind)."""
    if (to_memory is None) == (to_qdrant_url is None):
        raise typer.BadParameter("give exactly one of --to-memory DIR or --to-qdrant-url URL")
    check_memory_location(to_memory or DEFAULT_MEMORY, to_qdrant_url, DESTINATION_OPTIONS)
    destination = memory_location(to_memory or DEFAULT_MEMORY, to_qdrant_url)
    mem = open_memory(memory, qdrant_url, wait=wait)
    if featurizer is not None:
        _reembed(mem, destination, featurizer, batch_size, workers, to_memory, to_qdrant_url, wait)
        return
    with mem, tqdm(total=mem.store.count(), unit="pt", desc="copy", file=sys.stderr) as bar:
        started = time.perf_counter()
        try:
            # SIGTERM while it waits for the destination said as the opening's wait says it (it ended unsaid), and
            # mid-copy as Ctrl-C is: what was copied is kept
            with sigterm_as_interrupt():
                dest, notes = mem.copy_to(destination, progress=bar.update, wait=wait)  # --wait for both memories
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--to-memory" if to_memory else "--to-qdrant-url") from exc
        except Exception as exc:
            if (problem := open_failure(to_memory or DEFAULT_MEMORY, to_qdrant_url, exc, DESTINATION_OPTIONS)) is None:
                raise
            raise problem from exc
        with dest:
            for note in notes:
                bar.write(f"note: {note}", file=sys.stderr)
            typer.echo(f"copied {counted(int(bar.n), 'point')} in {time.perf_counter() - started:.1f} s; "
                       f"{dest.location} now holds {counted(dest.count(), 'point')}")


def _reembed(mem, destination: str, featurizer: str, batch_size: int, workers: int | None,
             to_memory: Path | None, to_qdrant_url: str | None, wait: float = 0.0) -> None:
    """`vmem copy --featurizer`: `VisualMemory.reembed_to`, with a progress bar and what was left out said."""
    from retrieval import FeaturizerMismatchError, load_featurizer

    from ..reembed import same_encoder

    hint = "--to-memory" if to_memory else "--to-qdrant-url"
    with mem:
        try:
            feat = load_featurizer(featurizer)
        except Exception as exc:  # an unknown name, weights that cannot be had here
            raise typer.BadParameter(str(exc), param_hint="--featurizer") from None
        if same_encoder(feat.spec, mem.store.meta.featurizer):
            raise typer.BadParameter(f"this memory holds {feat.name} features already: without --featurizer, "
                                     "vmem copy copies it as stored, nothing embedded again",
                                     param_hint="--featurizer")
        with tqdm(total=mem.store.count(), unit="pt", desc=f"re-embed ({feat.name})", file=sys.stderr) as bar:
            try:
                with sigterm_as_interrupt():
                    new, done = mem.reembed_to(destination, feat, batch_size=batch_size, num_workers=workers,
                                               progress=bar.update, wait=wait)
            except FeaturizerMismatchError as exc:
                raise typer.BadParameter(str(exc), param_hint=hint) from None
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint=hint) from None
            except WaitInterrupted:  # only waited for the destination: nothing to resume, as vmem's main says
                raise
            except KeyboardInterrupt:
                bar.write("interrupted: run the same command again to resume (points already embedded there are "
                          "not embedded again)", file=sys.stderr)
                raise typer.Exit(130) from None
            except Exception as exc:
                if (problem := open_failure(to_memory or DEFAULT_MEMORY, to_qdrant_url, exc,
                                            DESTINATION_OPTIONS)) is None:
                    raise
                raise problem from exc
            for s in done.skipped[:20]:
                # A memory handed over may hold any label; a file's name, any character
                bar.write(f"  left out {s.id} ({one_line(s.label)}) {one_line(s.source)}: {one_line(s.reason)}",
                          file=sys.stderr)
            if len(done.skipped) > 20:
                bar.write(f"  ... and {len(done.skipped) - 20:,} more (vmem points --source of each)", file=sys.stderr)
            for note in done.notes:  # naming settings read from the memory's vmem.json, which may hold any text
                bar.write(f"note: {one_line(note)}", file=sys.stderr)
    with new:
        typer.echo(f"re-embedded {counted(done.embedded, 'point')} with {done.featurizer} (from "
                   f"{done.from_featurizer}) in {done.seconds:.1f} s, {done.already_there:,} already there, "
                   f"{len(done.skipped):,} left out; "
                   f"{without_secrets(new.store.location)} now holds {counted(done.memory_points, 'point')}")
        # Its vote is not the old memory's (tuned settings stay behind), and points may have been left out
        say_few_points(new.few_point_labels())
    if done.skipped and not (done.embedded or done.already_there):
        every = "the 1 point was" if len(done.skipped) == 1 else f"all {len(done.skipped):,} points were"
        typer.echo(f"nothing could be embedded again: {every} left out", err=True)
        raise typer.Exit(1)


def backup(
    to: Annotated[Path, typer.Option("--to", help="the backup's folder (new; the folders above it are made if "
                                                  "missing, as the service makes VMEM_BACKUP_DIR)")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    link_latest_: Annotated[bool, typer.Option(
        "--link-latest", help="point a link `latest` beside the backup at it, as each backup over HTTP does: "
                              "read-only replicas and scripts start on that one path")] = False,
) -> None:
    """Copy an embedded memory's folder as it is, no index built again, into a new folder: a backup that opens
    as the memory, restored by putting it in the memory's place. A memory `vmem serve` holds is backed up through
    the service (POST /v1/memory/backup)."""
    latest = to.parent / LATEST_BACKUP
    if link_latest_ and to.name == LATEST_BACKUP:
        raise typer.BadParameter(f"{LATEST_BACKUP} is the link --link-latest points at the backup: give the backup "
                                 "another name", param_hint="--to")
    if link_latest_ and os.path.lexists(latest) and not latest.is_symlink():  # before the copy, not after it
        raise typer.BadParameter(f"{latest} is not a link (a folder or file of yours): --link-latest would replace "
                                 "it; move it, or leave out --link-latest", param_hint="--link-latest")
    mem = open_memory(memory, None, wait=wait)
    with mem:
        try:  # the folders above `to` made there, once the memory opened: one that does not, leaves none made
            done = mem.backup(to)
        except MemoryFullError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except (ValueError, FileExistsError, NotADirectoryError) as exc:
            if not isinstance(exc, OSError) or exc.errno is None:  # refused, in its words: none of its folders left
                raise typer.BadParameter(str(exc), param_hint="--to") from None
            where = f": {visible(str(exc.filename))}" if exc.filename else ""  # a file above it
            raise typer.BadParameter(f"could not make the folders above {visible(str(to))} ({os_error_reason(exc)}"
                                     f"{where}): nothing was written", param_hint="--to") from None
        except OSError as exc:  # a folder above it that cannot be made (PermissionError), or the copy failing
            where = f": {visible(str(exc.filename))}" if exc.filename else ""
            typer.echo(f"Error: could not back up to {visible(str(to))} ({os_error_reason(exc)}{where}): nothing was "
                       "written", err=True)
            raise typer.Exit(1) from None
    for path in done.removed_partials:
        typer.echo(f"removed {path}: the folder of a backup killed midway", err=True)
    for path in done.unnamed_partials:
        typer.echo(f"note: {path} may be the folder of a backup killed midway, left by an older vmem (whose it is, "
                   f"nothing tells): once no backup is writing beside it, remove it by hand (rm -r)", err=True)
    typer.echo(f"backed up {counted(done.points, 'point')} ({done.bytes / 2**20:,.1f} MB) to {done.path} in "
               f"{done.seconds:.1f} s")
    if link_latest_:
        try:
            linked = link_latest(Path(done.path).parent, Path(done.path).name)
        except OSError as exc:  # the backup is made: only the link is missing
            typer.echo(f"Error: could not point {latest} at the backup: {exc}", err=True)
            raise typer.Exit(1) from None
        if not linked:  # made meanwhile: a folder of someone's, left as it is
            typer.echo(f"Error: {latest} is not a link: it was left as it is, naming no backup", err=True)
            raise typer.Exit(1)
        typer.echo(f"{latest} -> {Path(done.path).name}")


def erase(memory: MemoryOpt = DEFAULT_MEMORY, wait: WaitOpt = 0.0) -> None:
    """Rewrite an embedded memory's segments without the points forgotten so far, and index the points added
    since: the upkeep a memory edited for months needs (README, "Upkeep"). A memory `vmem serve` holds is
    erased through the service (POST /v1/memory/erase)."""
    mem = open_memory(memory, None, wait=wait)
    with mem:
        if not mem.store.erases_on_demand:  # said of vmem erase itself: forget's --erase message named an option
            raise typer.BadParameter(  # this command has not, and a forget it makes none of
                f"vmem erase rewrites an embedded memory's folder; {memory} is not one: a Qdrant server erases "
                "forgotten points itself, rewriting a segment once its optimizers' deleted_threshold of it is "
                "deleted", param_hint="--memory")
        started = time.perf_counter()
        _erase_forgotten(mem)
        typer.echo(f"rewrote the memory's segments and index without the forgotten points ({mem.store.count():,} "
                   f"points kept, {time.perf_counter() - started:.1f} s)")


def _erase_forgotten(mem) -> None:
    """`VisualMemory.erase_forgotten` for vmem erase and forget --erase: a disk with no room to rewrite the segments
    said in a line, exit 1 (a stuck engine goes to the commands' own handler)."""
    try:
        mem.erase_forgotten()
    except MemoryFullError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


# The points `vmem points` lists and `vmem export` writes: one set of filters, said alike.
PointsLabelOpt = Annotated[str | None, typer.Option("--label", help="only points with this label")]
PointsSourceOpt = Annotated[str | None, typer.Option("--source", help="only points whose source starts with this (a "
                                                                     "folder: the images under it)")]
PointsExcludedOpt = Annotated[bool | None, typer.Option(
    "--excluded/--searchable", help="only points hard pruning took out of search (vmem prune), or only the others")]


def points(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    label: PointsLabelOpt = None,
    source: PointsSourceOpt = None,
    excluded: PointsExcludedOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="points per page")] = 20,
    cursor: Annotated[str | None, typer.Option(help="where a page starts (the previous page's next cursor)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per point")] = False,
    every: Annotated[bool, typer.Option("--all", help="every point (from --cursor on), page after page: e.g. "
                                                      "--all --json > points.jsonl to analyse the memory")] = False,
) -> None:
    """List memory points (id, label, source; excluded if hard-pruned), a page at a time in id order."""
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        if label is not None and not mem.knows_label(label):  # one whose points were all forgotten: none listed
            raise typer.BadParameter(mem.unknown_labels_message([label], LISTED_BY), param_hint="--label")
        while True:
            try:
                page = mem.points(label=label, source_prefix=source, cursor=cursor, limit=1000 if every else limit,
                                  excluded=excluded)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--cursor" if cursor else "--source") from None
            for p in page.points:
                typer.echo(p.model_dump_json() if json_out else _point_line(p))
            if not (every and page.next_cursor):
                break
            cursor = page.next_cursor
    if page.next_cursor:
        typer.echo(f"next page: --cursor {page.next_cursor}", err=True)


def export(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="the .npz file to write", show_default=False)],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    label: PointsLabelOpt = None,
    source: PointsSourceOpt = None,
    excluded: PointsExcludedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace FILE if it exists")] = False,
) -> None:
    """Write the memory's points with their vectors to one .npz file, to analyse elsewhere (numpy, UMAP, a
    linear probe, another index); the points vmem points lists, with the same filters.

    One row per point, in id order: vectors (float32, n x dim, as stored: unit length), ids, labels, sources,
    excluded (hard-pruned: searches skip it), reliability (soft pruning's vote factor, 1 if unset), tags (a JSON
    object each), added_at (ISO 8601); and meta, a
    JSON string: featurizer (name, dim, preprocessing), dim, vmem_version, index settings, vote settings (rule,
    k, alpha, tau), label names, the filters. numpy alone reads it (no pickle): f = np.load("points.npz");
    X, y = f["vectors"], f["labels"]; meta = json.loads(f["meta"].item()).

    Read a page at a time, never whole in RAM: the disk holding FILE needs room for twice the vectors while it
    runs. FILE appears whole or not at all; one that exists is kept unless --force.
    """
    try:  # before the memory opens and its points are read: not after
        check_export_path(path, overwrite=force)
    except FileExistsError:
        raise typer.BadParameter(f"{visible(str(path))} exists: give --force to replace it, or another name",
                                 param_hint="FILE") from None
    except OSError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    if source is not None and not source.strip():
        raise typer.BadParameter("is empty: give the folder, file or URI prefix of the images to export",
                                 param_hint="--source")
    mem = open_memory(memory, qdrant_url, wait=wait)
    with mem:
        if label is not None and not mem.knows_label(label):  # one whose points were all forgotten: none listed
            raise typer.BadParameter(mem.unknown_labels_message([label], LISTED_BY), param_hint="--label")
        total = _export_total(mem, label, source, excluded)
        started = time.perf_counter()
        # SIGTERM as Ctrl-C: the temporary file beside FILE goes (it had stayed, as large as the export)
        with tqdm(total=total, unit="pt", desc="export", file=sys.stderr) as bar, sigterm_as_interrupt():
            try:
                n = mem.export_points(path, label=label, source_prefix=source, excluded=excluded, overwrite=force,
                                      progress=bar.update)
            except FileExistsError:  # made meanwhile
                raise typer.BadParameter(f"{visible(str(path))} exists: give --force to replace it, or another name",
                                         param_hint="FILE") from None
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--source") from None
            except OSError as exc:  # a full disk: nothing written, the file there before (if any) as it was
                typer.echo(f"Error: {path} could not be written ({os_error_reason(exc)}): nothing was written"
                           + (", the file there is as it was" if path.exists() else ""), err=True)
                raise typer.Exit(1) from None
        dim = mem.store.dim
    typer.echo(f"wrote {n_points(n)} ({dim}-d vectors) to {path} ({_size(path.stat().st_size)}) in "
               f"{time.perf_counter() - started:.1f} s")


# Where a file that cannot be imported as it is points the user: the argument to change.
_IMPORT_OPTIONS = {"featurizer": "--featurizer", "label": "--label"}


def import_(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="the .npz file to read", show_default=False)],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    featurizer: Annotated[str | None, typer.Option(
        help="the encoder that made the vectors, for a file vmem export did not write (e.g. dinov2-small, "
             "dinov2:/path/to/model): the memory embeds its queries with it, so it must be the very encoder that "
             "made them. A vmem export names its own")] = None,
    label: Annotated[str | None, typer.Option("--label", help="only the rows of this label")] = None,
    relabel: Annotated[bool, typer.Option(
        help="a point already in memory under another label takes the file's (journaled as a relabel); without "
             "it, it keeps its stored label and is reported")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be imported and skipped; write "
                                                            "nothing")] = False,
    source_root: Annotated[list[Path] | None, typer.Option(
        "--source-root", metavar="DIR", exists=True, file_okay=False,
        help="a folder whose images the memory may show as thumbnails and send to the re-ranker (its source_roots), "
             "as a build's: the file's own sources record none; repeatable")] = None,
    trust_sources: Annotated[bool, typer.Option(
        help="record the folders of the file's sources that are files here, as a build of them would: for a file "
             "of your own, such as a vmem export of a memory of this machine")] = False,
) -> None:
    """Add points with their vectors from an .npz file, nothing embedded: a file vmem export wrote, or vectors
    made elsewhere (--featurizer). Rows that cannot be points are skipped and listed; re-run: points already in
    the memory are skipped.

    A vmem export (its meta says so) brings its ids, labels, sources, tags, add times, pruning (excluded,
    reliability), the names of its labels (the file's win where both name one) and, into a memory without its
    own, its tuned vote settings. Vectors made elsewhere: arrays vectors (float, n x dim) and labels (str),
    optionally sources (str: a file on this machine as a build stores it, links resolved, others as given; a
    point's id derives from it); a row without a source is import://<the file's sha256, 16 hex>/<row>, so that
    the same file imported again finds its points.

    An existing memory takes only vectors of its own encoder (name, dim, preprocessing); a memory not made yet
    (a directory that does not exist) is made with the file's, and an export's index settings. Refused, with
    nothing written: a file that is no .npz, an array missing or of the wrong shape or type, arrays of Python
    objects (never unpickled). Skipped and listed: rows with NaN or infinite values, zero vectors, empty or bad
    labels. The vectors are read a batch of rows at a time, never whole.

    A file's sources are its writer's: they record no folder whose images the memory may show or send
    (source_roots), unless --trust-sources; --source-root names such folders. The report says what it recorded,
    and how many points' images are files here outside them.
    """
    try:
        points = read_points_file(path, featurizer)
        mem = open_memory(memory, qdrant_url,  # refused: e.g. vectors of another dim than the encoder named makes
                          opener=lambda location: VisualMemory.open_for_import(location, points, create=not dry_run,
                                                                               wait=wait))
    except PointsFileError as exc:
        raise _points_file_problem(exc) from None
    with mem, tqdm(total=points.n, unit="row", desc="import", file=sys.stderr) as bar, sigterm_as_interrupt():
        try:
            report = mem.import_points(points, label=label, relabel=relabel, dry_run=dry_run,
                                       progress=bar.update, source_roots=source_root or (),
                                       trust_sources=trust_sources)
        except PointsFileError as exc:
            raise _points_file_problem(exc) from None
        except ValueError as exc:  # a label that is another label's name, refused before anything is written
            raise typer.BadParameter(str(exc), param_hint="--label" if label is not None else "FILE") from None
        except MemoryFullError as exc:  # as a build: what was imported before is kept and journaled
            bar.write(f"stopped: {exc}. The memory holds {counted(mem.store.count(), 'point')}; once there is room, "
                      "run the same command again (points already in it are skipped)", file=sys.stderr)
            raise typer.Exit(1) from None
    typer.echo(report.summary(skipped=False) + ("\ndry run: nothing was written" if dry_run else ""))
    if report.skipped:  # notes, on stderr, as a build's failed images are: stdout is the summary alone
        typer.echo(report.skipped_lines(), err=True)
    if report.skipped and not (report.added or report.already_in_memory or report.duplicates or report.other_label):
        skipped = sum(report.skipped.values())
        every = "the 1 row was" if skipped == 1 else f"all {skipped:,} rows were"
        typer.echo(f"nothing could be imported: {every} skipped", err=True)
        raise typer.Exit(1)


def _points_file_problem(exc: PointsFileError) -> typer.BadParameter:
    """A file vmem import cannot take as it is, pointing at the argument to change."""
    return typer.BadParameter(str(exc), param_hint=_IMPORT_OPTIONS.get(exc.option or "", "FILE"))


def _export_total(mem, label: str | None, source: str | None, excluded: bool | None) -> int | None:
    """How many points an export will write, for its progress bar (None where only reading them tells: a
    --source prefix)."""
    if source is not None:
        return None
    stored = mem.stored_label(label) if label is not None else None
    if excluded is None:
        return mem.store.count(label=stored)
    searchable = mem.store.count(label=stored, searchable=True)
    return searchable if excluded is False else mem.store.count(label=stored) - searchable


def _size(n: int) -> str:
    """Bytes for a person: `512 kB`, `1.2 GB` (SI units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def _point_line(p: MemoryPoint) -> str:
    """One point, tab-separated: id, label (name), source, and what pruning made of it."""
    state = ["excluded"] if p.excluded else [f"reliability {p.reliability:.2f}"] if p.reliability != 1 else []
    if p.prune_count:
        state.append(f"misled {counted(p.prune_count, 'decision')}")
    label = f"{p.label} ({p.label_name})" if p.label_name and p.label_name != p.label else p.label
    return "\t".join([p.id, one_line(label), one_line(p.source), *([", ".join(state)] if state else [])])


JournalOpChoice = StrEnum("JournalOpChoice", {op: op for op in get_args(JournalOp)})  # type: ignore[misc]  # from JournalOp


def history(
    memory: MemoryOpt = DEFAULT_MEMORY,
    qdrant_url: QdrantUrlOpt = None,
    point: Annotated[str | None, typer.Option(
        "--id", help="only the edits that forgot or relabelled this point")] = None,
    source: Annotated[str | None, typer.Option(help="only the edits that forgot or relabelled the image added from "
                                                    "this path or URI")] = None,
    op: Annotated[JournalOpChoice | None, typer.Option(help="only edits of this kind")] = None,
    label: Annotated[str | None, typer.Option(help="only edits that touched this label's points (or named it)")] = None,
    since: Annotated[str | None, typer.Option(help="only edits from this date or time on (2026-12-05, "
                                                   "2026-12-05T14:30; UTC unless it names a zone)")] = None,
    until: Annotated[str | None, typer.Option(help="only edits at or before this date or time (a date: through "
                                                   "that day); not before --since")] = None,
    cursor: Annotated[str | None, typer.Option(help="where a page starts: past the newest --limit, the next page's "
                                                    "cursor is said after the edits (give the same filters)")] = None,
    by: Annotated[str | None, typer.Option(help="only edits made over HTTP with the API key of this name (vmem key "
                                                "NAME; default: VMEM_API_KEY's)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="edits shown, newest first")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per edit, with the ids it changed")] = False,
    wait: CreatedWaitOpt = 0.0,
    notes: Annotated[bool, typer.Option(
        "--notes", help="list the notes of edits begun and not journaled yet (their process killed midway), not the "
                        "edits: on a Qdrant server, those of processes running here or on another host or container")
    ] = False,
    settle: Annotated[list[str] | None, typer.Option(
        metavar="TOKEN", help="journal the edit of this note (--notes lists them) as the memory shows it made, and "
                              "remove the note: for a process surely gone (a container that will not run again, or "
                              "started again since); refused for one running on this host. Repeatable")] = None,
    settle_older_than: Annotated[str | None, typer.Option(
        metavar="DURATION", help="as --settle, every note begun at least this long ago (90m, 12h, 7d), but those of "
                                 "processes running on this host")] = None,
) -> None:
    """The memory's edits, newest first: when, what, how many points of which labels, and who (cli, http,
    python; host and process). A forget lists the ids it deleted: `--source` answers whether and when an image
    was forgotten. `--notes` lists the edits begun and not journaled yet; `--settle` journals one whose process is
    gone."""
    if point is not None and source is not None:
        raise typer.BadParameter("give --id or --source, not both")
    if notes or settle or settle_older_than is not None:
        given = [f"--{name}" for name, value in (("id", point), ("source", source), ("op", op), ("label", label),
                                                 ("since", since), ("until", until), ("by", by),
                                                 ("cursor", cursor))
                 if value is not None]
        if given:
            raise typer.BadParameter(f"{' '.join(given)} chooses edits, not notes: give it without --notes or --settle",
                                     param_hint=given[0])
        _history_notes(memory, qdrant_url, wait, settle or [],
                       _duration(settle_older_than) if settle_older_than is not None else None, json_out)
        return
    point_id = _point_id(point) if point is not None else None
    # An embedded memory at rest, all its edits journaled, asked for no point or label: its journal answers alone,
    # as opening it would (seconds saved on a large memory)
    at_rest = (_edits(lambda: history_at_rest(location, op=cast(JournalOp, op.value) if op else None, limit=limit,
                                             since=since, by=by, until=until, cursor=cursor), since, until, cursor)
               if point is None and source is None and label is None
               and (location := at_rest_location(memory, qdrant_url)) else None)
    if at_rest is not None:
        page, meta = at_rest
        for e in page.entries:
            typer.echo(e.model_dump_json() if json_out else _edit_line(e, dict(meta.label_names)))
        _say_earlier_or_none(page, False, op, label, since, by, until, cursor)
        return
    try:
        mem = _open_to_read(memory, qdrant_url, wait)
    except MemoryInUseError as exc:
        # No folder: open in this process (a notebook's), or being created (no files to read yet): said so
        if qdrant_url is not None or exc.folder is None:
            raise
        # Held by another process (a running vmem serve): its journal is a file of its own, read as it is
        page, meta = _edits(lambda: history_from_files(
            memory, point_id=point_id, source=source, op=cast(JournalOp, op.value) if op else None, limit=limit,
            label=label, since=since, by=by, until=until, cursor=cursor), since, until, cursor)
        entries, names, state = page.entries, dict(meta.label_names), None
        hints = name_hints(names, [label]) if not entries and label is not None else ""
        served = served_note(exc.folder, None) or holder_note(exc.folder).who if exc.folder is not None else ""
        typer.echo(f"read from its files: the memory is open in another process{f' ({served})' if served else ''}",
                   err=True)
    else:
        with mem:
            page = _edits(lambda: mem.history_page(
                point_id=point_id, source=source, op=op.value if op else None, limit=limit, label=label, since=since,
                by=by, until=until, cursor=cursor), since, until, cursor)
            entries = page.entries
            now = mem.point(point_id) if point_id else mem.point(mem.point_id_of_source(source)) if source else None
            names = mem.label_names
            state = (f"in the memory now, labelled {named_label(now.label, names)}, added {now.added_at}"
                     if now is not None else "not in the memory now")
            hints = mem.name_hints([label]) if not entries and label is not None else ""
    if hints:
        raise typer.BadParameter(f"no edits of label {quoted(label or '')} ({hints}): give the label",
                                 param_hint="--label")
    if point_id is not None or source is not None:
        who = point_id or source
        typer.echo(f"{who}: {state or 'whether it is in the memory now, its files do not say'}", err=json_out)
    for e in entries:
        typer.echo(e.model_dump_json() if json_out else _edit_line(e, names))
    _say_earlier_or_none(page, point_id is not None or source is not None, op, label, since, by, until, cursor)


def _history_notes(memory: Path, qdrant_url: str | None, wait: float, tokens: list[str], older_than: float | None,
                   json_out: bool) -> None:
    """vmem history --notes (list), --settle, --settle-older-than (settle, then say what each journaled)."""
    with _open_to_read(memory, qdrant_url, wait) as mem:
        names = mem.label_names
        if not tokens and older_than is None:
            left = mem.notes_left()
            for n in left:
                typer.echo(json.dumps(_note_json(n)) if json_out else _note_line(n, names))
            if not left:
                typer.echo("no notes left: every edit begun is journaled", err=True)
            return
        try:
            settled = mem.settle_notes(tokens, older_than)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--settle") from None
        for n, made in settled:
            what = _noted_edit(n, names)
            typer.echo(json.dumps({**_note_json(n), "journaled": made}) if json_out else
                       f"{n.note.token}\t{what}\t"
                       + (("journaled" + (f" ({n_points(made)})" if n.note.op in ("forget", "relabel", "add") else
                                          f" ({counted(made, 'label')} named)" if n.note.op == "name"
                                          else "")) if made
                          else "nothing more to journal: it made nothing, or its entry was written")
                       + "; note removed")
        if older_than is not None:
            running = [n for n in mem.notes_left() if n.process == "running"]
            if running:
                typer.echo("left 1 note of a process running on this host: its edit is in progress"
                           if len(running) == 1 else f"left {len(running)} notes of processes running on this host: "
                           "their edits are in progress", err=True)
            if not settled:
                typer.echo(f"no notes begun {_age(older_than)} ago or earlier", err=True)


def _noted_edit(n: LeftNote, names: dict[str, str]) -> str:
    """What a note's edit was to do: `forget of 10 points (cat: 10)`, `name`."""
    note = n.note
    if note.op not in ("forget", "relabel", "add"):
        return note.op
    counts = list(label_counts(note.before).items())
    labels = ", ".join(f"{named_label(lab, names)}: {k}" for lab, k in counts[:5])
    more = f" and {len(counts) - 5} more labels" if len(counts) > 5 else ""
    to = f" to {named_label(str(note.fields.get('to') or ''), names)}" if note.op == "relabel" else ""
    return f"{note.op} of {n_points(len(note.before))}" + (f" ({labels}{more})" if labels else "") + to


def _note_line(n: LeftNote, names: dict[str, str]) -> str:
    """A note left, tab-separated: its token, when its edit began (how long ago), what, whose, and what is known of
    its process."""
    note, age = n.note, _age(_note_age(n))
    whose = {"ended": "its process has ended: the memory's next opening journals it",
             "running": "its process is running on this host: its edit is in progress",
             "unknown": "another container of this host (or this one before a restart)" if note.host == _hostname()
             else "another host"}[n.process]
    if n.process == "unknown":
        whose += ": whether its process runs, nothing here tells (--settle TOKEN once it is surely gone)"
    return "\t".join([note.token, f"begun {note.begun[:19].replace('T', ' ')} ({age} ago)",
                      one_line(_noted_edit(n, names)), f"on {one_line(note.host)} (pid {note.pid})", whose])


def _note_json(n: LeftNote) -> dict[str, Any]:
    return {**n.note.model_dump(mode="json", include={"token", "begun", "op", "host", "pid", "fields"}),
            "points": len(n.note.before), "labels": label_counts(n.note.before), "process": n.process,
            "age_s": round(_note_age(n))}


def _note_age(n: LeftNote) -> float:
    from datetime import UTC, datetime

    return (datetime.now(UTC) - datetime.fromisoformat(n.note.begun)).total_seconds()


def _hostname() -> str:
    import socket

    return socket.gethostname()


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """Seconds of a duration as a person writes it: `90m`, `12h`, `7d`, `2w` (s, m, h, d, w)."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise typer.BadParameter(f"{quoted(text)} is no duration: give a number and a unit, s, m, h, d or w (90m, "
                                 "12h, 7d)", param_hint="--settle-older-than")
    return seconds


def _age(seconds: float) -> str:
    """A duration for a person: `3 d 4 h`, `5 h 2 min`, `40 min`, `12 s`."""
    s = max(0, int(seconds))
    for big, big_name, small, small_name in ((86400, "d", 3600, "h"), (3600, "h", 60, "min")):
        if s >= big:
            return f"{s // big} {big_name}" + (f" {s % big // small} {small_name}" if s % big // small else "")
    return f"{s // 60} min" if s >= 60 else f"{s} s"


def _say_earlier_or_none(page: HistoryPage, of_one: bool, op: Any, label: str | None, since: str | None,
                         by: str | None, until: str | None = None, cursor: str | None = None) -> None:
    """After a history's edits: how many more the limit left out and the next page's cursor, or that none matched
    (stderr): past a --cursor, none older than it (a newer edit may match)."""
    if page.earlier:
        more = f"... and {counted(page.earlier, 'earlier edit')}"
        typer.echo(f"{more} (next page: --cursor {page.next_cursor})" if page.next_cursor else more, err=True)
    if not page.entries:
        filters = [f"--{name} {value}" for name, value in (("op", op and op.value), ("label", label),
                                                            ("since", since), ("until", until), ("by", by))
                   if value is not None]
        typer.echo("no edits recorded" + (" for it" if of_one else "") + (" older than --cursor" if cursor else "")
                   + (f" that match {' '.join(filters)}" if filters else ""), err=True)


def _edits(read: Callable[[], _T], since: str | None = None, until: str | None = None,
           cursor: str | None = None) -> _T:
    """A history's edits, a filter it refuses (a --since or --until that is no time, or after the other; a --cursor
    that is none) as a usage error."""
    try:
        return read()
    except ValueError as exc:
        named = [f"--{name}" for name, value in (("since", since), ("until", until), ("cursor", cursor))
                 if value is not None and repr(value) in str(exc)]
        raise typer.BadParameter(str(exc), param_hint=" / ".join(named) or "--since") from None


def _edit_line(e: JournalEntry, names: dict[str, str]) -> str:
    """One edit, tab-separated: when, what, how the points were chosen, who."""
    if e.op == "name":
        n, dropped = len(e.detail.get("names", {})), len(e.detail.get("dropped", ()))
        what = (counted(n, "name") + (f", {dropped:,} dropped" if dropped else "")
                + (" (replacing all)" if e.detail.get("replace") else ""))
    elif e.op == "tune":
        vote = e.detail.get("vote", {})
        what = ("tuned settings forgotten: back to the defaults" if e.detail.get("reset")
                else one_line(f"vote {vote.get('rule')}, k={vote.get('k')}"))
    elif e.op == "settings":
        before = e.detail.get("before", {})
        what = ", ".join(f"{_SEARCH_SETTING_NAMES.get(name, name)} {one_line(_shown(before.get(name)))} -> "
                         f"{one_line(_shown(value))}"
                         for name, value in e.detail.get("search", {}).items())
    elif e.op == "erase":
        what = ""
    else:
        labels = ", ".join(f"{named_label(lab, names)}: {n}" for lab, n in list(e.labels.items())[:5])
        more = f" and {len(e.labels) - 5} more labels" if len(e.labels) > 5 else ""
        what = n_points(e.points) + (f" ({labels}{more})" if labels else "")
        if e.op == "relabel":
            what += f" to {named_label(e.to or '', names)}"
        if e.op == "copy" and (moved := e.detail.get("reembedded")):
            what += one_line(f", embedded again with {moved.get('to')} (from {moved.get('from')})")
    # Each part escaped once, where it is put in: `what` holds labels named_label has escaped already
    chosen = ", ".join(one_line(k) if v is True else f"{one_line(k)} {quoted(v)}" if isinstance(v, str)  # "by build"
                       else one_line(f"{k} {v}") for k, v in e.selector.items())
    part = f" [part {e.part + 1}]" if e.part is not None else ""
    return "\t".join(x for x in (e.at[:19].replace("T", " "), e.op + part, what, f"by {chosen}" if chosen else "",
                                 f"via {one_line(e.via)}{f' (key {one_line(e.by)})' if e.by else ''} on "
                                 f"{one_line(e.host)} (pid {e.pid})")
                     if x)


def labels(
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per label")] = False,
) -> None:
    """Every label of the memory with its points and name, most points first (vmem info shows ten)."""
    kept = label_counts_from_files(location) if (location := at_rest_location(memory, qdrant_url)) else None
    if kept is not None:  # as in vmem info
        counts, searchable, names = kept
    else:
        with open_memory(memory, qdrant_url, wait=wait) as mem:
            counts, names = mem.store.label_counts(), mem.label_names
            searchable = {lab: mem.store.count(label=lab, searchable=True) for lab in counts} if mem.store.count(
                searchable=True) != mem.store.count() else counts
    for lab, n in counts.items():
        if json_out:
            # "label_name" as in every other answer; "name" kept for the scripts that read it
            typer.echo(json.dumps({"label": lab, "label_name": names.get(lab), "name": names.get(lab), "points": n,
                                   "searchable": searchable[lab]},
                                  ensure_ascii=False))
        else:
            pruned = f"\t({n - searchable[lab]} excluded by pruning)" if searchable[lab] != n else ""
            typer.echo(f"{n}\t{one_line(lab)}\t{one_line(names.get(lab, ''))}{pruned}")


def names(
    names_file: Annotated[Path, typer.Argument(metavar="FILE", help="label<TAB>name lines (classes.tsv, words.txt), "
                                               "`label name, ...` lines, or a .csv of label,name rows")],
    memory: MemoryOpt = DEFAULT_MEMORY,
    wait: WaitOpt = 0.0,
    qdrant_url: QdrantUrlOpt = None,
    replace: Annotated[bool, typer.Option(help="the file's names replace all the stored ones (else merged)")] = False,
) -> None:
    """Name labels from a file: what answers, the page and the re-ranker call them (HTTP: PUT
    /v1/memory/label-names)."""
    try:
        given = read_label_names(names_file)
    except (DatasetError, OSError) as exc:
        raise typer.BadParameter(unread_file_said(exc), param_hint="FILE") from exc
    if not given:
        raise typer.BadParameter(f"{names_file} names no label", param_hint="FILE")
    with open_memory(memory, qdrant_url, wait=wait) as mem:
        before = mem.label_names
        try:
            mem.set_label_names(given, replace=replace)
        except ValueError as exc:  # an empty name
            raise typer.BadParameter(str(exc), param_hint="FILE") from exc
        after, held = mem.label_names, mem.store.label_counts()
    changed = sum(before.get(k) != after[k] for k in after)
    dropped = len(before.keys() - after.keys())
    unheld = [label for label in after if label not in held]
    typer.echo(f"{counted(changed, 'name')} new or changed"
               + (f", {dropped:,} dropped" if dropped else "")
               + f"; the memory names {counted(len(after), 'label')}"
               + (f", {len(unheld):,} of them not in it yet (kept for when they come)" if unheld else ""))


def _open_to_read(memory: Path, qdrant_url: str | None, wait: float):
    """`open_memory` for vmem info and history, once a memory another process is creating is made (waited for up
    to `wait` seconds: `wait_until_created`). Not waited for to be let go: a MemoryInUseError for a memory another
    process holds, whose files the caller reads at once (with VMEM_WAIT set for a script's every command, `vmem
    info` beside a running service would otherwise wait out its whole wait)."""
    if wait and qdrant_url is None:
        with sigterm_as_interrupt():  # stopped as it waits: nothing done, said as an opening's wait says it
            wait_until_created(memory, wait)
    return open_memory(memory, qdrant_url)


def info(
    memory: MemoryOpt = DEFAULT_MEMORY,
    qdrant_url: QdrantUrlOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    wait: CreatedWaitOpt = 0.0,
) -> None:
    """Show what the memory holds: points, labels, featurizer, settings."""
    # An embedded memory at rest: the counts its last close kept, where they still stand for it (seconds of
    # opening saved on a large memory); else it is opened, as it always was
    stats = stats_from_files(location) if (location := at_rest_location(memory, qdrant_url)) else None
    if stats is None:
        try:
            mem = _open_to_read(memory, qdrant_url, wait)
        except MemoryInUseError as exc:
            # No folder: open in this process (a notebook's), or being created (no files to read yet): said so
            if qdrant_url is not None or exc.folder is None:
                raise
            _info_from_files(memory, exc, json_out)
            return
        with mem:
            stats = mem.stats()
    if json_out:
        typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))
        return
    _info_head(stats)
    typer.echo(f"points     {stats['points']:,}")
    named = sum(lab in stats["label_names"] for lab in stats["per_label"])
    typer.echo(f"labels     {stats['labels']:,}" + (f" ({named:,} named)" if named else ""))
    for lab, n in list(stats["per_label"].items())[:10]:
        name = stats["label_names"].get(lab)
        typer.echo(f"  {n:6d}  {one_line(lab)}" + (f"  {one_line(name)}" if name else ""))
    if stats["labels"] > 10:
        typer.echo(f"  ... {stats['labels'] - 10:,} more")
    if disk := stats["disk_bytes"]:
        parts = ", ".join(f"{name} {_size(n)}" for name, n in list(disk.items())[1:4])
        typer.echo(f"disk       {_size(disk['total'])} ({parts})")
    _upkeep_lines(stats["index_upkeep"], embedded=is_embedded_location(stats["location"]))
    if stats["settings"]:  # folders' names (source_roots) as they are, but what a terminal would not show
        typer.echo(f"settings   {visible_json(stats['settings'])}")
    say_few_points([FewPoints(**few) for few in stats["few_points"]])


def _upkeep_lines(upkeep: dict[str, Any] | None, embedded: bool) -> None:
    """How far the index has drifted from the points, and the advice to erase where it has (README, "Upkeep")."""
    if upkeep is None:
        typer.echo("upkeep     " + ("not known: the engine's files are not as this vmem reads them" if embedded
                                    else "not tracked: a Qdrant server indexes and vacuums its collection itself"))
        return
    if upkeep["indexed"] == upkeep["deleted_in_index"] == 0:  # a memory of a few thousand points: exact anyway
        typer.echo(f"upkeep     no index: all {counted(upkeep['points'], 'point')} searched in full, exactly (too "
                   "few to index, or added since the last build, import, copy or erase)")
        return
    typer.echo(f"upkeep     {counted(upkeep['indexed'], 'point')} indexed, {upkeep['unindexed']:,} searched in full; "
               f"the index holds {upkeep['deleted_in_index']:,} forgotten or edited "
               f"({upkeep['deleted_share']:.0%} of it)")
    if upkeep["advice"]:
        typer.echo(f"           {upkeep['advice']}")


def _info_head(stats: dict[str, Any]) -> None:
    f = stats["featurizer"]
    typer.echo(f"memory     {stats['location']}")
    pre = f["preprocessing"]
    # A squashing processor (hf: ViT, SigLIP) resizes the whole image to a square, not its shorter side
    resize = f"resize {pre['resize']}x{pre['resize']} (aspect not kept)" if pre.get("squash") else \
        f"resize {pre['resize']}"
    typer.echo(f"featurizer {one_line(f['name'])} ({f['dim']}-d, {resize}, crop {pre['crop']})")
    typer.echo(f"index      {' '.join(f'{k}={v}' for k, v in stats['index'].items())}")


def _info_from_files(memory: Path, exc: MemoryInUseError, json_out: bool) -> None:
    """`vmem info` of an embedded memory another process holds (a running vmem serve): what its files say (its
    encoder, settings, label names, last edit, size), and where to ask for its points."""
    newest, meta = history_from_files(memory, limit=1)
    last = newest.entries
    served = served_note(exc.folder, "info") if exc.folder is not None else ""
    held_by = holder_note(exc.folder).who if exc.folder is not None else ""
    stats: dict[str, Any] = {"location": str(memory), "points": None, "labels": None, "per_label": None,
             "label_names": dict(meta.label_names), "featurizer": meta.featurizer.model_dump(),
             "index": meta.index.model_dump(), "settings": meta.settings, "disk_bytes": disk_usage_of(memory),
             "open_in_another_process": True, "served_by": served or None, "held_by": held_by or None,
             "last_edit": last[0].model_dump() if last else None,
             "index_upkeep": None}  # the files lag the serving engine (it flushes when asked): the service says
    if json_out:
        typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))
        return
    _info_head(stats)
    typer.echo("points     not read: the memory is open in another process"
               + (f", {served}" if served else f" ({held_by or 'a running vmem serve or build?'}); this is what its "
                  "files say"))
    if names := stats["label_names"]:
        typer.echo(f"names      {counted(len(names), 'label')} named")
    if last:
        typer.echo(f"last edit  {_edit_line(last[0], names)}")
    if disk := stats["disk_bytes"]:
        parts = ", ".join(f"{name} {_size(n)}" for name, n in list(disk.items())[1:4])
        typer.echo(f"disk       {_size(disk['total'])} ({parts})")
    if stats["settings"]:
        typer.echo(f"settings   {visible_json(stats['settings'])}")
