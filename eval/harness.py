"""The evaluation run: features (cached), one search at k_max, all scores, files on disk.

    >>> queries = query_set(read_dataset("val", "imagefolder"), featurizer, cache_root)
    >>> report = evaluate(memory_arrays, queries, info)
    >>> write_report(report, "results/")

Outputs in the run directory:

    results.json             every number below, keyed by variant and rule, plus the run's parameters
    accuracy.csv             variant,rule,k,accuracy
    table.md                 accuracy at k = 10, 20, ..., 100 and the best k per rule (each variant), the images the
                             dataset's protocol left out and the queries' classes the memory lacks, the hardest
                             classes, when to trust an answer; with --dmn and --rerank their accuracy and trust
    hit_rate.csv             variant,k,hit_rate
    neighbor_accuracy.csv    variant,rank,accuracy
    calibration.csv          variant,k,votes,queries,accuracy (plurality agreement among the first k)
    risk_coverage.csv        variant,rule,k,min_confidence,kept,coverage,accuracy: answers kept when their
                             confidence (vote share) is at least min_confidence, under classify's decision
    reliability.csv          variant,rule,k,lower,upper,queries,mean_confidence,accuracy (the reliability diagram)
    per_class.csv            variant,rule,k,label,name,queries,correct,accuracy,confused_with (one rule at one k;
                             confused_with a JSON object, label -> queries taken for it, top 3: {"n01": 3})
    predictions.csv          variant,rule,k,source,right_labels,predicted,predicted_name,correct,nearest,
                             nearest_similarity,confidence: each query's answer under that decision, in query
                             order (confidence: its vote share, as classify's);
                             right_labels a JSON list, the labels that count as right: ["n01", "n02"];
                             with --rerank, each re-ranked query's final answer too (rule rerank, k shown to the VLM)
    *.png                    accuracy against k, hit rate against k, neighbour reliability by rank, per-class
                             accuracy (hardest classes named), risk-coverage and reliability diagram
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, MemoryStore
from retrieval.feature_cache import FeatureCache
from retrieval.files import user_folder, write_atomically
from retrieval.images import failure_line
from retrieval.text import counted, not_utf8_problem, visible
from vmem.results import DEFAULT_K, DEFAULT_RULE
from vmem.visual_memory import NothingToSearchError

if TYPE_CHECKING:
    from retrieval import Featurizer

from .datasets import EvalDataset
from .dmn_eval import DmnReport
from .plots import PLOT_FILES, plot_all, plot_trust
from .rerank_eval import RerankAnswer
from .scoring import (
    K_MAX,
    TABLE_KS,
    MemoryArrays,
    NeighborTable,
    PerClass,
    Scores,
    Selective,
    neighbors_exact,
    neighbors_from_store,
    score,
    truth_arrays,
)
from .selective import decision_name

# Exact search loads the memory's vectors: do so up to this size, else use the Qdrant index.
MAX_EXACT_BYTES = 8 << 30


def default_feature_cache_dir() -> Path:
    """Where dataset features are cached: $VMEM_FEATURE_CACHE, else $VMEM_HOME/features, else
    $XDG_CACHE_HOME/vmem/features, else ~/.cache/vmem/features (beside the re-ranker's answers, which took
    XDG_CACHE_HOME where this did not)."""
    if os.environ.get("VMEM_FEATURE_CACHE"):
        return Path(os.environ["VMEM_FEATURE_CACHE"]).expanduser()
    if os.environ.get("VMEM_HOME"):
        return Path(os.environ["VMEM_HOME"]).expanduser() / "features"
    return user_folder("XDG_CACHE_HOME", ".cache") / "vmem" / "features"


@dataclass
class QuerySet:
    """Embedded queries with what counts as right for each."""

    features: np.ndarray  # float32 [n, dim]
    sources: list[str]
    correct_labels: list[tuple[str, ...]]
    failed: list[str]  # `SOURCE: REASON` of each query that could not be read or decoded

    def subset(self, idx: Sequence[int]) -> QuerySet:
        return QuerySet(self.features[list(idx)], [self.sources[i] for i in idx],
                        [self.correct_labels[i] for i in idx], self.failed)


def cached_features(
    sources: Sequence[str], featurizer: Featurizer, cache_root: str | Path, desc: str = "features"
) -> tuple[np.ndarray, list[int], list[str]]:
    """Features for files, computed once per featurizer and file content (resumable: the cache checkpoints).

    Returns:
        (features [n_ok, dim], indices of the sources they belong to, `SOURCE: REASON` of each that could not
        be read or decoded)
    """
    cache = FeatureCache(cache_root, featurizer)
    with tqdm(total=len(sources), desc=f"{desc} ({featurizer.name})", unit="img", file=sys.stderr,
              mininterval=2, disable=None) as bar:
        feats, ok, failures = cache.features_for(list(sources), on_batch=bar.update)
    return feats, ok, [failure_line(f.source, f.reason, escaped=True) for f in failures]


def _utf8_named(items: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The items whose path and labels (every accepted one) are UTF-8 text, and `SOURCE: REASON` for the others:
    left out, as a build leaves them out (`not_utf8_problem`)."""
    ok, failed = [], []
    for it in items:
        labels = [getattr(it, "label", ""), *getattr(it, "accepted", ())]
        if (problem := not_utf8_problem(it.source, labels)) is None:
            ok.append(it)
        else:
            failed.append(failure_line(it.source, problem, escaped=True))  # unambiguous, as a build's skipped image
    return ok, failed


def query_set(dataset: EvalDataset, featurizer: Featurizer, cache_root: str | Path) -> QuerySet:
    named, not_utf8 = _utf8_named(dataset.items)
    feats, ok, failed = cached_features([it.source for it in named], featurizer, cache_root, "queries")
    items = [named[i] for i in ok]
    return QuerySet(feats, [it.source for it in items], [it.correct_labels for it in items], not_utf8 + failed)


def queries_fingerprint(queries: QuerySet) -> str:
    """sha256 over the sorted (source, labels that count as right) of the queries scored: equal for two runs over
    the same queries, whatever the order or the folder they were read from."""
    digest = hashlib.sha256()
    for source, correct in sorted(zip(queries.sources, queries.correct_labels, strict=True)):
        digest.update(f"{source}\t{','.join(correct)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def vectors_fingerprint(memory: MemoryArrays | MemoryStore) -> str | None:
    """sha256 over a memory's vectors in point-id order, in RAM (exact search); None otherwise. Two memories of
    the same points stored at other precisions (float16 or float32 originals) differ here, and in their curves."""
    if not isinstance(memory, MemoryArrays):
        return None
    digest = hashlib.sha256()
    for i in sorted(range(len(memory.ids)), key=memory.ids.__getitem__):
        digest.update(np.ascontiguousarray(memory.features[i], dtype=np.float32).tobytes())
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """What else a run's numbers and times depend on: the software's versions and the machine."""
    import platform

    import torch

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()}


def memory_from_dataset(dataset: EvalDataset, featurizer: Featurizer, cache_root: str | Path) -> MemoryArrays:
    """A memory made of a labelled dataset's cached features (dataset-vs-dataset evaluation); the images left out
    (not UTF-8, not decoded) in its `skipped`, as a build lists them: they had been left out without a word."""
    named, not_utf8 = _utf8_named(dataset.items)  # left out, as a build leaves them out
    feats, ok, failed = cached_features([it.source for it in named], featurizer, cache_root, "memory")
    return MemoryArrays(feats, [named[i].label for i in ok], [named[i].source for i in ok], skipped=not_utf8 + failed)


def memory_fingerprint(memory: MemoryArrays | MemoryStore) -> str | None:
    """sha256 over a memory's sorted (point id, label, soft-pruning factor) rows, when it is in RAM (exact search); None
    for a store searched through its index, whose listing would cost a scroll of every point."""
    if not isinstance(memory, MemoryArrays):
        return None
    digest = hashlib.sha256()
    factors = memory.reliability if memory.reliability is not None else [1.0] * len(memory.ids)
    # With their soft-pruning factors, which the "+soft" scores read (1 for every point when unpruned)
    for point_id, label, factor in sorted(zip(memory.ids, memory.labels, factors, strict=True)):
        digest.update(f"{point_id}\t{label}\t{float(factor)!r}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def store_index(memory: MemoryArrays | MemoryStore) -> dict[str, Any] | None:
    """A store's index settings (what an indexed search's answers depend on); None for a memory in RAM."""
    return memory.meta.index.model_dump(mode="json") if isinstance(memory, MemoryStore) else None


class RunInfo(BaseModel):
    """The parameters a run's numbers depend on."""

    dataset: str
    format: str
    queries: int
    failed_queries: int = 0
    skipped_queries: int = Field(default=0, description="left out by the dataset's protocol (e.g. ReaL without labels)")
    memory: str
    memory_points: int
    featurizer: str
    search: str = Field(description="exact (matrix product) or index (Qdrant HNSW)")
    k_max: int = K_MAX
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_TAU
    restricted_classes: int | None = None
    classes_not_in_memory: list[str] = Field(
        default_factory=list, description="the queries' right labels no memory point carries: their queries cannot be "
                                          "answered right")
    queries_not_in_memory: int = Field(default=0, description="queries none of whose right labels is in the memory")
    # What else the numbers depend on, to reproduce them: a sample (limit, seed) of how many items, by which vmem,
    # from which encoder and preprocessing, through which index settings, over which points.
    dataset_items: int | None = Field(default=None, description="the dataset's items before --limit drew a sample")
    limit: int | None = None
    seed: int | None = Field(default=None, description="the seed --limit drew its sample with")
    vmem_version: str | None = None
    featurizer_spec: dict[str, Any] | None = Field(default=None, description="the encoder and its preprocessing")
    index: dict[str, Any] | None = Field(default=None, description="the memory's index settings (search: index)")
    memory_fingerprint: str | None = Field(
        default=None, description="sha256 over the memory's sorted point ids, labels and soft-pruning factors (search: "
                          "exact): equal for the same points, however built or copied")
    vectors_fingerprint: str | None = Field(
        default=None, description="sha256 over the memory's vectors in point-id order (search: exact)")
    queries_fingerprint: str | None = Field(
        default=None, description="sha256 over the sorted sources and right labels of the queries scored")
    device: str | None = Field(default=None, description="where the queries were embedded (cpu, cuda, mps)")
    environment: dict[str, Any] | None = Field(default=None, description="software versions and the machine")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    seconds: dict[str, float] = Field(default_factory=dict)
    tuned: dict[str, Any] | None = Field(
        default=None,
        description="the memory's tuned vote settings (vmem tune) and their accuracy here, if it has them")


class EvalReport(BaseModel):
    run: RunInfo
    variants: dict[str, Scores] = Field(description="'all': full memory; 'restricted': the dataset's classes only")
    rerank: dict[str, Any] | None = None
    dmn: DmnReport | None = Field(default=None, description="`vmem eval --dmn`: the dmn rule's answers (no stream) "
                                  "and the trust of its confidence, the fused probability")
    # The queries scored, in order, for predictions.csv (kept out of results.json, as the decisions are).
    query_sources: list[str] = Field(default_factory=list, exclude=True)
    query_labels: list[tuple[str, ...]] = Field(default_factory=list, exclude=True)
    # The re-ranked answers of `rerank`'s sample, one a query, for predictions.csv (rule rerank)
    rerank_answers: list[RerankAnswer] = Field(default_factory=list, exclude=True)


def neighbor_table(
    memory: MemoryArrays | MemoryStore,
    queries: QuerySet,
    k_max: int = K_MAX,
    restrict_to: Sequence[str] | None = None,
) -> NeighborTable:
    """One search per query: exact on arrays, the Qdrant index on a store."""
    query_labels = {lab for labs in queries.correct_labels for lab in labs}
    if isinstance(memory, MemoryArrays):
        mem = memory.only_labels(restrict_to) if restrict_to is not None else memory
        classes = sorted(set(memory.labels) | query_labels)
        with tqdm(total=len(queries.sources), desc="search (exact)", unit="q", file=sys.stderr,
                  disable=None) as bar:
            return neighbors_exact(queries.features, mem, classes, k_max, progress=bar.update)
    classes = sorted(set(memory.label_counts()) | query_labels)
    with tqdm(total=len(queries.sources), desc="search (index)", unit="q", file=sys.stderr, disable=None) as bar:
        return neighbors_from_store(memory, queries.features, classes, k_max, restrict_to, progress=bar.update)


def evaluate(
    memory: MemoryArrays | MemoryStore,
    queries: QuerySet,
    run: RunInfo,
    restrict_to: Sequence[str] | None = None,
    per_class: tuple[str, int] | tuple[str, int, bool] = (DEFAULT_RULE.value, DEFAULT_K),
) -> EvalReport:
    """Score every rule at every k; with `restrict_to`, also with the memory cut to those classes.

    `per_class` (rule, k[, soft pruning]) is the decision each class's accuracy and confusions are reported for:
    the one classify makes by default (or the memory's tuned one, as the CLI passes it). NothingToSearchError for
    a memory with no point a search can return (empty, or every point hard-pruned).
    """
    held = memory.count(searchable=True) if isinstance(memory, MemoryStore) else len(memory)
    if not held:  # every score would be 0 %, read as a memory that knows nothing rather than one with nothing in it
        raise NothingToSearchError.of(memory.count() if isinstance(memory, MemoryStore) else 0,
                                      add="nothing to evaluate (vmem build first)")
    variants: dict[str, Scores] = {}
    for name, restriction in [("all", None), ("restricted", restrict_to)]:
        if name == "restricted" and restriction is None:
            continue
        t0 = time.perf_counter()
        table = neighbor_table(memory, queries, run.k_max, restriction)
        t1 = time.perf_counter()
        truth, accepted = truth_arrays(queries.correct_labels, table.classes)
        variants[name] = score(table, truth, accepted, alpha=run.alpha, tau=run.tau, per_class=per_class)
        run.seconds[f"search_{name}"] = round(t1 - t0, 3)
        run.seconds[f"scoring_{name}"] = round(time.perf_counter() - t1, 3)
    if restrict_to is not None:
        run.restricted_classes = len(restrict_to)
    return EvalReport(run=run, variants=variants, query_sources=list(queries.sources),
                      query_labels=list(queries.correct_labels))


def markdown_table(scores: Scores, title: str = "") -> str:
    """Accuracy (%) per rule at k = 10..100, plus the best k."""
    ks = [k for k in TABLE_KS if k <= scores.k_max]
    head = "| rule | " + " | ".join(f"k={k}" for k in ks) + " | best (k) |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|" + "---|" * (len(ks) + 2)]
    for name, b in scores.best.items():
        cells = " | ".join(f"{100 * b.at_k[k]:.2f}" for k in ks)
        lines.append(f"| {name} | {cells} | {100 * b.best_accuracy:.2f} ({b.best_k}) |")
    hit = " | ".join(f"{100 * scores.hit_rate[k - 1]:.2f}" for k in ks)
    lines.append(f"| *hit rate* | {hit} | |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file, written atomically: a run killed while writing leaves the last complete file."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    write_atomically(path, text.getvalue())
    return path


def hardest_classes_table(per_class: PerClass, names: dict[str, str], n: int = 10, scope: str = "") -> str:
    """The `n` classes with the lowest accuracy under one decision, and what their queries were taken for; `scope`
    says which variant's answers they are where a run has two ("all classes: ...")."""

    def shown(label: str) -> str:
        # One cell each: Markdown splits a row at a bar, and a newline ends the table; shown as every line of vmem's
        # output shows a label (`visible`: a U+202E had turned the row around)
        text = f"{label} ({names[label]})" if label in names else label
        return visible(text).replace("|", "\\|")

    lines = [f"**hardest {min(n, len(per_class.classes))} of {counted(len(per_class.classes), 'class', 'classes')}** "
             f"({scope}{per_class.rule} voting, k={per_class.k}; all of them in per_class.csv)", "",
             "| class | queries | accuracy | most often taken for |", "|---|---|---|---|"]
    for c in per_class.classes[:n]:
        taken = ", ".join(f"{shown(lab)} ×{count}" for lab, count in c.confused_with.items())
        lines.append(f"| {shown(c.label)} | {c.queries} | {100 * c.accuracy:.1f} | {taken} |")
    return "\n".join(lines) + "\n"


def trust_table(sel: Selective, command: str = "vmem classify", scope: str = "") -> str:
    """When to trust an answer: the confidence threshold (`--min-confidence` of `command`) that keeps the most
    answers at each target accuracy, and how well calibrated the confidence is; `scope` as hardest_classes_table's."""
    lines = [f"**when to trust an answer of `{command}`** ({scope}{decision_name(sel)}; confidence: the "
             f"{sel.confidence}; risk_coverage.csv, reliability.csv)", "",
             f"all answers: {100 * sel.accuracy:.2f}% right at mean confidence {sel.mean_confidence:.3f}; "
             f"ECE {sel.ece:.4f}, AURC {sel.aurc:.4f}", "",
             "| target accuracy | --min-confidence | answers kept | their accuracy |", "|---|---|---|---|"]
    for a in sel.at_accuracy:
        if a.min_confidence is None:
            lines.append(f"| {100 * a.target:g}% | none reaches it | 0% | |")
        else:
            lines.append(f"| {100 * a.target:g}% | {a.min_confidence:.6g} | {100 * a.coverage:.1f}% | "
                         f"{100 * a.accuracy:.2f}% |")  # type: ignore[operator]  # set with the threshold
    lines += ["", "(thresholds chosen on these queries: on others, expect about the same coverage and accuracy)"]
    return "\n".join(lines) + "\n"


# Why a dataset's protocol leaves images out of the queries (EvalDataset.skipped), by format.
_SKIPPED_WHY = {"real": "ReaL gives them no label", "imagenet-val": "the labels file does not list them"}


def skipped_note(run: RunInfo) -> str | None:
    """The images the dataset's protocol left out of the scores, said where the scores are read (ReaL's val images
    with no label): a table of 179 queries had not said that 21 of the folder's 200 images were not scored."""
    if not run.skipped_queries:
        return None
    why = _SKIPPED_WHY.get(run.format, "the dataset's protocol leaves them out")
    return (f"{counted(run.skipped_queries, 'image')} of the dataset left out, not scored: {why} "
            "(skipped_queries in results.json)")


def vote_said(vote: dict[str, Any] | None, soft_factors: bool) -> str:
    """The vote a re-rank was compared with, where it is not the table's plain rank row at the default α."""
    if not vote:
        return ""
    said = [f"α={vote['alpha']:g}"] if vote.get("alpha") != DEFAULT_ALPHA else []
    if soft_factors and vote.get("soft_pruning", True):
        said.append("the memory's soft-pruning factors weighing: its rank+soft row")
    return f" ({', '.join(said)})" if said else ""


def missing_classes_note(run: RunInfo) -> str | None:
    """The queries' classes the memory lacks, said beside the scores: their queries count as wrong, and where none of
    the classes is in the memory every score is 0 (a memory labelled by name scored on wnid folders without
    --classes), which the table alone had shown without a word."""
    if not run.classes_not_in_memory:
        return None
    missing = run.classes_not_in_memory
    named = ", ".join(visible(c) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
    are = "is" if len(missing) == 1 else "are"
    return (f"{counted(len(missing), 'class', 'classes')} of the queries ({named}) {are} no label of the memory: "
            f"{counted(run.queries_not_in_memory, 'query', 'queries')} cannot be answered "
            "right (classes_not_in_memory in results.json)")


def rerank_lines(r: dict[str, Any], scope: str = "", soft_factors: bool = False) -> str:
    """The re-rank's result as table.md says it: its accuracy against rank voting's on the same queries, with what
    it was asked with and how often it fell back or changed the vote's answer. Tokens and cost are left to stdout:
    a run again answered from the cache costs none, and table.md is the same for the same answers. The vote it is
    compared with is classify's, with the memory's α and, where `soft_factors` (the memory is soft-pruned), its
    points' reliability factors: a rank+soft row of the table, not the rank row, where they weigh."""
    template = (f"{r['template']}" + (f" ({r['template_hash']})" if r.get("template_hash") else "")
                if r["template"] else "none")
    reasons = ", ".join(f"{visible(kind)}: {n:,}" for kind, n in r["fallback_reasons"].items())
    lines = [f"**re-ranking** ({scope}k={r['k']}, template {template}, model {r['model'] or 'none'}): "
             f"re-rank on {counted(r['queries'], 'query', 'queries')}: {100 * r['rerank_accuracy']:.2f}% right against "
             f"rank voting's {100 * r['rank_accuracy']:.2f}%{vote_said(r.get('vote'), soft_factors)} on the same "
             "queries; fallback rate "
             f"{100 * r['fallback_rate']:.1f}%" + (f" ({reasons})" if reasons else "")]
    if (o := r.get("overrode")) and o["queries"]:  # the answers the VLM changed: their confidence is their share
        lines.append(f"the VLM changed {counted(o['queries'], 'answer')} (fixed {r['fixed']:,}, broke "
                     f"{r['broken']:,}): {100 * o['accuracy']:.2f}% right at mean confidence "
                     f"{o['mean_confidence']:.3f}")
    return "\n\n".join(lines) + "\n"


def rerank_selective(report: EvalReport) -> Selective | None:
    """The re-ranked answers' trust, where the run re-ranked (the report keeps the re-rank's as a dict)."""
    found = (report.rerank or {}).get("selective")
    return Selective.model_validate(found) if found else None


def write_report(report: EvalReport, out_dir: str | Path, plots: bool = True,
                 names: dict[str, str] | None = None) -> list[Path]:
    """Every file of a run; `names` (label -> name) go into the per-class files beside the labels.

    Written in a folder of their own inside `out_dir` first, then moved in (renames, which take no room): a run
    whose disk filled midway had left its numbers beside the table and plots of the run before. Failing, the
    folder holds the earlier run's files as they were. Files of an earlier run this one does not write (plots
    not drawn, predictions) go.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".incoming-*"):  # of a run killed while writing (an hour: not one writing now)
        if left.is_dir() and time.time() - left.stat().st_mtime > 3600:
            shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=out))
    try:
        written = [out / f.name for f in _write_files(report, staging, plots, names or {})]
        for f in written:
            os.replace(staging / f.name, f)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prefixes = ("", "restricted_", "dmn_", "rerank_")
    for stale in [out / f"{prefix}{f}" for prefix in prefixes for f in PLOT_FILES] + [out / "predictions.csv"]:
        if stale not in written:
            stale.unlink(missing_ok=True)
    return written


def short_name(location: str) -> str:
    """A dataset's or memory's name for a plot's title: the last two parts of its path ("tiny-imagenet-200/val"),
    or of a server's address (its host and collection); results.json keeps the whole."""
    parts = [p for p in location.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) or location


def _write_files(report: EvalReport, out: Path, plots: bool, names: dict[str, str]) -> list[Path]:
    written = [out / "results.json"]
    write_atomically(written[0], report.model_dump_json(indent=1))
    v = report.variants
    written.append(write_csv(out / "accuracy.csv", ["variant", "rule", "k", "accuracy"], [
        (name, rule, k + 1, f"{a:.6f}") for name, s in v.items() for rule, c in s.accuracy.items()
        for k, a in enumerate(c)]))
    written.append(write_csv(out / "hit_rate.csv", ["variant", "k", "hit_rate"], [
        (name, k + 1, f"{h:.6f}") for name, s in v.items() for k, h in enumerate(s.hit_rate)]))
    written.append(write_csv(out / "neighbor_accuracy.csv", ["variant", "rank", "accuracy"], [
        (name, i, f"{a:.6f}") for name, s in v.items() for i, a in enumerate(s.neighbor_accuracy)]))
    written.append(write_csv(out / "calibration.csv", ["variant", "k", "votes", "queries", "accuracy"], [
        (name, s.calibration_k, b.votes, b.queries, "" if b.accuracy is None else f"{b.accuracy:.6f}")
        for name, s in v.items() for b in s.calibration]))
    # Each decision measured, by the variant its answers came from: the vote's per variant; dmn's and the
    # re-ranker's (rules dmn, rerank) over the dataset's classes where they restrict the answers, else all.
    trusted = [(name, s.selective) for name, s in v.items() if s.selective]
    answered_in = "restricted" if "restricted" in v else "all"
    if report.dmn is not None:
        trusted.append((answered_in, report.dmn.selective))
    reranked = rerank_selective(report)
    if reranked is not None:
        trusted.append((answered_in, reranked))
    written.append(write_csv(out / "risk_coverage.csv", [
        "variant", "rule", "k", "min_confidence", "kept", "coverage", "accuracy"], [
        (name, sel.rule, sel.k, f"{p.min_confidence:.6f}", p.kept, f"{p.coverage:.6f}", f"{p.accuracy:.6f}")
        for name, sel in trusted for p in sel.risk_coverage]))
    written.append(write_csv(out / "reliability.csv", [
        "variant", "rule", "k", "lower", "upper", "queries", "mean_confidence", "accuracy"], [
        (name, sel.rule, sel.k, f"{b.lower:g}", f"{b.upper:g}", b.queries,
         "" if b.mean_confidence is None else f"{b.mean_confidence:.6f}",
         "" if b.accuracy is None else f"{b.accuracy:.6f}")
        for name, sel in trusted for b in sel.reliability]))
    written.append(write_csv(out / "per_class.csv", [
        "variant", "rule", "k", "label", "name", "queries", "correct", "accuracy", "confused_with"], [
        (name, s.per_class.rule, s.per_class.k, c.label, names.get(c.label, ""), c.queries, c.correct,
         f"{c.accuracy:.6f}", json.dumps(c.confused_with, ensure_ascii=False))
        for name, s in v.items() if s.per_class for c in s.per_class.classes]))
    if (report.query_sources and any(s.decisions for s in v.values())) or report.rerank_answers:
        rr_k = (report.rerank or {}).get("k", "")
        written.append(write_csv(out / "predictions.csv", [
            "variant", "rule", "k", "source", "right_labels", "predicted", "predicted_name", "correct", "nearest",
            "nearest_similarity", "confidence"], [
            *((name, d.rule, d.k, source, json.dumps(list(right), ensure_ascii=False), d.predicted[i] or "",
               names.get(d.predicted[i] or "", ""), int(d.correct[i]), d.nearest[i] or "",
               "" if d.nearest_similarity[i] is None else d.nearest_similarity[i],
               d.confidence[i] if d.confidence else "")
              for name, s in v.items() if (d := s.decisions)
              for i, (source, right) in enumerate(zip(report.query_sources, report.query_labels, strict=True))),
            # The re-ranked answers of the same queries (the sample re-ranked), for a paired comparison with the vote
            *((answered_in, "rerank", rr_k, a.source, json.dumps(list(a.right_labels), ensure_ascii=False),
               a.predicted or "", names.get(a.predicted or "", ""), int(a.correct), a.nearest or "",
               "" if a.nearest_similarity is None else a.nearest_similarity, a.confidence)
              for a in report.rerank_answers)]))
    r = report.run
    md = [f"# {visible(r.dataset)} ({r.format}) against {visible(r.memory)}\n",
          f"{counted(r.queries, 'query', 'queries')}, {counted(r.memory_points, 'memory point')}, {r.featurizer}, "
          f"{r.search} search, "
          f"alpha={r.alpha}, tau={r.tau}\n"]
    if note := skipped_note(r):
        md.append(note + "\n")
    if note := missing_classes_note(r):
        md.append(note + "\n")
    md += [markdown_table(s, f"{name} classes" if name == "all"
                          else f"restricted to {counted(r.restricted_classes or 0, 'class', 'classes')}")
           for name, s in v.items()]
    # With a restricted variant (ImageNet-A, -R) the tables below follow its table: say whose answers each holds.
    # The vote's are the whole memory's (as classify answers); dmn's and the re-ranker's, the dataset's classes'.
    whole, among = (("all classes: the whole memory searched; ",
                     f"restricted to the dataset's {counted(r.restricted_classes or 0, 'class', 'classes')}; ")
                    if "restricted" in v else ("", ""))
    if v["all"].per_class:
        md.append(hardest_classes_table(v["all"].per_class, names, scope=whole))
    if v["all"].selective:
        md.append(trust_table(v["all"].selective, scope=whole))
    if report.dmn is not None:
        dm = report.dmn
        md.append(f"**the dmn rule** ({among}{dm.mode}, no stream): {100 * dm.accuracy:.2f}% of "
                  f"{counted(dm.queries, 'query', 'queries')} right\n")
        md.append(trust_table(dm.selective, "vmem dmn classify", scope=among))
    if report.rerank:
        md.append(rerank_lines(report.rerank, scope=among, soft_factors="rank+soft" in v["all"].accuracy))
    if reranked is not None:
        md.append(trust_table(reranked, "vmem classify --rerank", scope=among))
    write_atomically(out / "table.md", "\n".join(md))
    written.append(out / "table.md")
    if plots:
        for name, s in v.items():
            written += plot_all(s, out, prefix="" if name == "all" else f"{name}_",
                                # which run: two memories' plots over one dataset had had one title. Named by
                                # their last two parts: a whole path made a title wider than the plot.
                                title=f"{short_name(r.dataset)} ({name}) against {short_name(r.memory)}, "
                                      f"{r.featurizer}", names=names)
        if reranked is not None and reranked.queries:
            written += plot_trust(reranked, out, "rerank_", f"{short_name(r.dataset)}, re-ranked, against "
                                  f"{short_name(r.memory)}, {r.featurizer}")
        if report.dmn is not None and report.dmn.queries:
            written += plot_trust(report.dmn.selective, out, "dmn_", f"{short_name(r.dataset)}, dmn rule, against "
                                  f"{short_name(r.memory)}, {r.featurizer}")
    return written
