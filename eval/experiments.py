"""The reference paper's analyses, runnable on your own data (Geirhos et al. 2025, sections 3-4).

Each experiment takes a memory and queries as arrays (cached features + labels) and uses exact search,
so it runs in seconds to minutes and does not depend on index recall. `unlearning` alone goes through
a real Qdrant memory, because what it shows is that deleted points never come back from a search.

    scaling         accuracy as the memory grows (1, 2, 5, 10, ... exemplars per class); log-log fit of error
    corruption      x% of memory labels replaced by random ones
    ood-classes     add classes the memory never had: old-class accuracy before/after, new-class accuracy
    granularity     leave classes out, then add their exemplars back one by one (k = 1)
    pruning         hard and soft pruning against none (counts from the memory queried against itself)
    unlearning      forget a class and a random sample of points; no result cites them afterwards
    label-noise     flip a fraction of memory labels to other classes; how well the label audit finds them
    novelty         hold classes out of the memory: does novelty tell their queries apart (AUROC), what does the
                    out-of-distribution threshold flag, and are the familiar queries it flags more often wrong?
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from retrieval import DEFAULT_ALPHA, VoteRule
from retrieval.files import write_atomically
from retrieval.text import counted
from retrieval.voting import vote_last_k
from vmem.novelty import OOD_PERCENTILE, OOD_SAMPLE_SIZE, check_calibration, self_excluded_novelties, threshold_of
from vmem.results import DEFAULT_K

from .harness import short_name, write_csv
from .label_audit import DEFAULT_MIN_SHARE, leave_one_out_votes
from .pruning import SOFT_GAMMA, soft_factors, wrong_decision_counts
from .scoring import K_MAX, NeighborTable, Scores, exact_search, score, self_search, table_from_hits, truth_arrays

RULES = tuple(r.value for r in VoteRule)


@dataclass
class LabelledArrays:
    """Features with one label each (a memory, or queries); a memory's point ids where known (the novelty
    threshold samples the first points in id order, as a memory does)."""

    features: np.ndarray
    labels: list[str]
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: Sequence[int] | np.ndarray) -> LabelledArrays:
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledArrays(self.features[idx], [self.labels[i] for i in idx],
                              None if self.ids is None else [self.ids[i] for i in idx])

    def where(self, keep: Callable[[str], bool]) -> LabelledArrays:
        return self.take([i for i, lab in enumerate(self.labels) if keep(lab)])


class ExperimentResult(BaseModel):
    name: str
    params: dict[str, Any]
    rows: list[dict[str, Any]] = Field(description="one row per setting, accuracies as fractions")
    fit: dict[str, Any] | None = None
    summary: str = ""
    seconds: float = 0.0


def _classes(*sets: LabelledArrays) -> list[str]:
    return sorted({lab for s in sets for lab in s.labels})


def _table(memory: LabelledArrays, queries: LabelledArrays, classes: list[str], k: int,
           reliability: np.ndarray | None = None) -> tuple[NeighborTable, np.ndarray]:
    idx, sims = exact_search(queries.features, memory.features, k)
    return table_from_hits(idx, sims, memory.labels, classes, reliability), idx


def _score(memory: LabelledArrays, queries: LabelledArrays, k: int = K_MAX, alpha: float = DEFAULT_ALPHA,
           reliability: np.ndarray | None = None) -> Scores:
    classes = _classes(memory, queries)
    # k, not min(k, len(memory)): exact search pads a small memory, so every size yields the same k columns
    # (the rows of one experiment share their keys) and a k past the memory votes with all of it.
    table, _ = _table(memory, queries, classes, k, reliability)
    truth, _ = truth_arrays([(lab,) for lab in queries.labels], classes)
    return score(table, truth, alpha=alpha)


def _row(s: Scores, ks: Sequence[int]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for rule, curve in s.accuracy.items():
        for k in ks:
            if k <= len(curve):
                row[f"{rule}@{k}"] = curve[k - 1]
        row[f"{rule}_best"] = s.best[rule].best_accuracy
        row[f"{rule}_best_k"] = s.best[rule].best_k
    return row


def _per_class_order(labels: list[str], seed: int) -> dict[str, list[int]]:
    """Each class's rows in a seeded random order (prefixes give nested subsets)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by.setdefault(lab, []).append(i)
    return {lab: [rows[j] for j in rng.permutation(len(rows))] for lab, rows in sorted(by.items())}


# ---------------------------------------------------------------------------------------------- scaling


def scaling(memory: LabelledArrays, queries: LabelledArrays, per_class: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
            ks: Sequence[int] = (1, 10, 50, 100), seed: int = 0) -> ExperimentResult:
    """Accuracy against memory size (n exemplars per class, nested subsets), with a log-log fit of error."""
    t0 = time.perf_counter()
    order = _per_class_order(memory.labels, seed)
    most = max(len(v) for v in order.values())
    rows = []
    for n in sorted({min(n, most) for n in per_class}):
        idx = [i for rows_ in order.values() for i in rows_[:n]]
        s = _score(memory.take(idx), queries)
        rows.append({"per_class": n, "memory_size": len(idx), **_row(s, ks)})
    fit: dict[str, Any] = {}
    for rule in RULES:
        sizes = np.array([r["memory_size"] for r in rows], dtype=np.float64)
        err = np.array([1.0 - r[f"{rule}_best"] for r in rows])
        ok = err > 0
        if ok.sum() >= 2:
            slope, icpt = np.polyfit(np.log10(sizes[ok]), np.log10(100 * err[ok]), 1)
            fit[rule] = {"form": "log10(err%) = a*log10(n) + b", "a": float(slope), "b": float(icpt)}
            big = ok & (sizes > 10)
            if big.sum() >= 2:  # the paper's form, in log10(log10(n))
                a2, b2 = np.polyfit(np.log10(np.log10(sizes[big])), np.log10(100 * err[big]), 1)
                fit[rule]["paper_form"] = {"form": "log10(err%) = a*log10(log10(n)) + b",
                                           "a": float(a2), "b": float(b2)}
    r = fit.get("rank", {})
    summary = (f"rank voting: error falls as memory^{r['a']:.3f} (log-log slope) from {rows[0]['memory_size']} "
               f"to {counted(rows[-1]['memory_size'], 'point')}" if r else "")
    return ExperimentResult(name="scaling", params={"per_class": list(per_class), "ks": list(ks), "seed": seed},
                            rows=rows, fit=fit, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- corruption


def corruption(memory: LabelledArrays, queries: LabelledArrays,
               fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
               ks: Sequence[int] = (1, 10, 50, 100), seed: int = 0) -> ExperimentResult:
    """Replace a fraction of memory labels by labels drawn uniformly from all classes (some stay right by chance).

    The neighbours do not depend on labels, so one search serves every fraction.
    """
    t0 = time.perf_counter()
    classes = _classes(memory, queries)
    pos = {c: i for i, c in enumerate(classes)}
    table, idx = _table(memory, queries, classes, min(K_MAX, len(memory)))
    truth, _ = truth_arrays([(lab,) for lab in queries.labels], classes)
    clean = np.array([pos[lab] for lab in memory.labels], dtype=np.int64)
    mem_classes = np.unique(clean)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(memory))  # nested: the first x% of this order are corrupted
    random_labels = rng.choice(mem_classes, size=len(memory))
    rows = []
    for frac in fractions:
        noisy = clean.copy()
        chosen = perm[: round(frac * len(memory))]
        noisy[chosen] = random_labels[chosen]
        label_ids = np.where(idx >= 0, noisy[np.maximum(idx, 0)], -1)
        s = score(NeighborTable(label_ids, table.similarities, classes), truth)
        rows.append({"fraction": frac, "wrong_labels": float(np.mean(noisy != clean)), **_row(s, ks)})
    best = max(rows, key=lambda r: r["rank_best"] if r["fraction"] >= 0.6 else -1)
    summary = (f"rank voting, best k: {100 * rows[0]['rank_best']:.1f}% clean, "
               f"{100 * best['rank_best']:.1f}% with {100 * best['fraction']:.0f}% random labels; "
               f"1-NN: {100 * rows[0]['rank@1']:.1f}% -> {100 * best['rank@1']:.1f}%")
    return ExperimentResult(name="corruption", params={"fractions": list(fractions), "ks": list(ks), "seed": seed},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- new classes


def _split_classes(labels: list[str], query_labels: list[str], n: int, seed: int) -> tuple[set[str], set[str]]:
    """(kept, held out): `n` memory classes held out, drawn among those the queries have (a class without
    queries measures nothing: "0.00 %" on no query, or nan)."""
    classes = sorted(set(labels))
    asked = sorted(set(classes) & set(query_labels))
    most = min(len(asked), len(classes) - 1)
    if not 0 < n <= most:
        raise ValueError(f"choose between 1 and {counted(most, 'class', 'classes')} to hold out (got {n}): of the "
                         f"memory's {len(classes)} classes, {'1 has' if len(asked) == 1 else f'{len(asked)} have'} "
                         "queries" if most > 0 else
                         "no class of the memory has queries, and one must be kept: nothing to hold out")
    chosen = set(np.random.default_rng(seed).choice(asked, size=n, replace=False).tolist())
    return set(classes) - chosen, chosen


def ood_classes(memory: LabelledArrays, queries: LabelledArrays, new_classes: int = 20, k: int = 50,
                seed: int = 0) -> ExperimentResult:
    """Add `new_classes` classes the memory never had: do the old classes suffer, are the new ones learnt?"""
    t0 = time.perf_counter()
    old, new = _split_classes(memory.labels, queries.labels, new_classes, seed)
    mem_old = memory.where(lambda lab: lab in old)
    q_old, q_new = queries.where(lambda lab: lab in old), queries.where(lambda lab: lab in new)
    k_max = max(K_MAX, k)  # the accuracy at k is read from each curve
    before = _score(mem_old, q_old, k_max)
    after_old = _score(memory, q_old, k_max)
    after_new = _score(memory, q_new, k_max)
    rows: list[dict[str, Any]] = []
    for rule in RULES:
        rows.append({"rule": rule, "k": k, "old_before": before.accuracy[rule][k - 1],
                     "old_after": after_old.accuracy[rule][k - 1], "new_after": after_new.accuracy[rule][k - 1],
                     "old_change": after_old.accuracy[rule][k - 1] - before.accuracy[rule][k - 1]})
    r = next(x for x in rows if x["rule"] == "rank")
    summary = (f"{len(new)} new classes added to {len(old)}: old-class accuracy {100 * r['old_before']:.2f}% -> "
               f"{100 * r['old_after']:.2f}% (rank, k={k}); new classes {100 * r['new_after']:.2f}%")
    return ExperimentResult(name="ood-classes", params={"new_classes": sorted(new), "k": k, "seed": seed},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- granularity


def granularity(memory: LabelledArrays, queries: LabelledArrays, held_out: int = 20,
                exemplars: Sequence[int] = (0, 1, 2, 5, 10, 20, 50, 100), seed: int = 0,
                names: dict[str, str] | None = None) -> ExperimentResult:
    """Leave classes out, then add n exemplars of each back; 1-NN accuracy on them and on the rest.

    An n past the most exemplars a held-out class has is read as that most (one row), as scaling reads its sizes.

    With zero exemplars a held-out class cannot be named; `confused_with` shows where its queries go
    (the paper reads this at genus level on iNaturalist).
    """
    t0 = time.perf_counter()
    kept, out = _split_classes(memory.labels, queries.labels, held_out, seed)
    base = memory.where(lambda lab: lab in kept)
    order = _per_class_order(memory.labels, seed)
    q_lab = np.array(queries.labels)
    is_out = np.isin(q_lab, sorted(out))
    # 1-NN among the kept classes, once.
    b_idx, b_sim = exact_search(queries.features, base.features, 1)
    base_label = np.array(base.labels)[b_idx[:, 0]]
    base_sim = b_sim[:, 0]
    # Similarity to every held-out exemplar, columns in each class's exemplar order.
    cols = {c: order[c] for c in sorted(out)}
    # A count past the held-out classes' exemplars adds no more of them: a row "100" of a memory of 30 a class had
    # said 100 of what was 30. Capped as scaling caps its sizes, the row says what the memory held.
    most = max(len(v) for v in cols.values())
    rows: list[dict[str, Any]] = []
    zero_confusion: dict[str, int] = {}
    for n in sorted({min(n, most) for n in exemplars}):
        idx = [i for c in sorted(out) for i in cols[c][:n]]
        if idx:
            sims = queries.features @ memory.features[idx].T
            j = sims.argmax(axis=1)
            best_new = sims[np.arange(len(q_lab)), j]
            new_label = np.array([memory.labels[i] for i in idx])[j]
            pred = np.where(best_new > base_sim, new_label, base_label)
        else:
            pred = base_label
        kept_q = ~is_out  # none when every class with queries is held out: no kept accuracy (not nan)
        rows.append({"exemplars": n, "held_out_accuracy": float(np.mean(pred[is_out] == q_lab[is_out])),
                     "kept_accuracy": float(np.mean(pred[kept_q] == q_lab[kept_q])) if kept_q.any() else None,
                     "kept_taken_by_new": float(np.mean(np.isin(pred[kept_q], sorted(out)))) if kept_q.any()
                     else None})
        if n == 0:
            for lab in pred[is_out]:
                zero_confusion[str(lab)] = zero_confusion.get(str(lab), 0) + 1
    top = sorted(zero_confusion.items(), key=lambda kv: -kv[1])[:10]
    confused = [{"label": lab, "name": (names or {}).get(lab), "queries": c} for lab, c in top]
    first = next((r for r in rows if r["exemplars"] > 0), rows[0])
    kept_said = (f"kept classes {100 * rows[0]['kept_accuracy']:.1f}% -> {100 * rows[-1]['kept_accuracy']:.1f}%"
                 if rows[0]["kept_accuracy"] is not None else "no queries of the kept classes")
    summary = (f"{len(out)} held-out classes, 1-NN: {100 * first['held_out_accuracy']:.1f}% with "
               f"{first['exemplars']} exemplar(s), {100 * rows[-1]['held_out_accuracy']:.1f}% with "
               f"{rows[-1]['exemplars']}; {kept_said}")
    return ExperimentResult(name="granularity", params={"held_out": sorted(out), "k": 1, "seed": seed,
                                                        "confused_with_at_zero": confused},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- pruning


def pruning(memory: LabelledArrays, queries: LabelledArrays, thresholds: Sequence[int] = (128, 64, 32, 16),
            k: int = K_MAX, ks: Sequence[int] = (10, 50, 100), blame: str = "all") -> ExperimentResult:
    """No pruning, hard pruning at each threshold, soft pruning: all rules, on the same queries."""
    t0 = time.perf_counter()
    counts, wrong = wrong_decision_counts(memory.features, memory.labels, k, blame=blame)  # type: ignore[arg-type]
    rows = [{"variant": "none", "points": len(memory), **_row(_score(memory, queries), ks)}]
    for t in thresholds:
        keep = counts < t
        rows.append({"variant": f"hard>={t}", "points": int(keep.sum()),
                     **_row(_score(memory.take(np.flatnonzero(keep)), queries), ks)})
    soft = _score(memory, queries, reliability=soft_factors(counts))
    soft_row = {key: v for key, v in _row(soft, ks).items() if "+soft" in key}
    rows.append({"variant": f"soft {SOFT_GAMMA}/(1+count)", "points": len(memory),
                 **{key.replace("+soft", ""): v for key, v in soft_row.items()}})
    none, s = rows[0], rows[-1]
    summary = (f"{int(wrong.sum())} of {counted(len(memory), 'point')} misclassified leave-one-out; "
               f"count max {counts.max()}; "
               f"rank best: none {100 * none['rank_best']:.2f}%, soft {100 * s['rank_best']:.2f}%, "
               + ", ".join(f"{r['variant']} ({len(memory) - r['points']} out) {100 * r['rank_best']:.2f}%"
                           for r in rows[1:-1]))
    hist = np.bincount(np.minimum(counts, 256))
    name = "pruning" if blame == "all" else f"pruning-{blame}"
    return ExperimentResult(name=name, params={"k": k, "thresholds": list(thresholds), "blame": blame,
                                                    "count_histogram_capped_256": hist.tolist()},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- unlearning


def unlearning(memory: LabelledArrays, queries: LabelledArrays, forget_fraction: float = 0.01, k: int = 50,
               query_limit: int = 1000, seed: int = 0) -> ExperimentResult:
    """Build a real memory, forget one class and a random sample of points, and check every result.

    Through `VisualMemory` on an embedded Qdrant Edge store: accuracy before/after on the remaining
    classes, that no neighbour of any result is a forgotten point, and the time per deletion.
    """
    from retrieval import FeaturizerSpec, Preprocessing, open_store
    from vmem import VisualMemory

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    classes = sorted(set(memory.labels))
    gone_class = classes[int(rng.integers(len(classes)))]
    spec = FeaturizerSpec(name="precomputed", dim=memory.features.shape[1],
                          preprocessing=Preprocessing(resize=0, crop=0))
    q_idx = np.sort(rng.choice(len(queries), size=min(query_limit, len(queries)), replace=False))
    q = queries.take(q_idx)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"{tmp}/memory", spec)
        ids = []
        for s in range(0, len(memory), 2048):
            ids += store.add(memory.features[s : s + 2048], memory.labels[s : s + 2048],
                             [f"mem:{i}" for i in range(s, min(s + 2048, len(memory)))])
        store.optimize()
        mem = VisualMemory(store, reranker=None)
        settings = mem.vote_settings("rank", k)
        before = mem.classify_vectors(q.features, settings)
        sample = [ids[i] for i in rng.choice(len(ids), size=max(1, round(forget_fraction * len(ids))), replace=False)
                  if memory.labels[i] != gone_class]
        t_del = time.perf_counter()
        n_class = mem.forget(label=gone_class)
        t_mid = time.perf_counter()
        n_sample = mem.forget(ids=sample)
        t_end = time.perf_counter()
        forgotten = set(sample) | {ids[i] for i, lab in enumerate(memory.labels) if lab == gone_class}
        after = mem.classify_vectors(q.features, settings)
        remaining_points = store.count()
        mem.close()
    cited = sum(nb.id in forgotten for r in after for nb in r.neighbors)
    cited_before = sum(nb.id in forgotten for r in before for nb in r.neighbors)
    rest = [i for i, lab in enumerate(q.labels) if lab != gone_class]
    of_class = [i for i, lab in enumerate(q.labels) if lab == gone_class]

    def acc(results: list, rows: list[int]) -> float | None:
        return float(np.mean([results[i].label == q.labels[i] for i in rows])) if rows else None

    rows: list[dict[str, Any]]
    rows = [{"forgot_class": gone_class, "class_points": n_class, "sample_points": n_sample,
             "remaining_points": remaining_points, "queries": len(q),
             "citations_of_forgotten_before": cited_before, "citations_of_forgotten_after": cited,
             "rest_accuracy_before": acc(before, rest), "rest_accuracy_after": acc(after, rest),
             "class_accuracy_before": acc(before, of_class), "class_accuracy_after": acc(after, of_class),
             "forget_class_ms": round(1000 * (t_mid - t_del), 2),
             "forget_sample_ms_per_point": round(1000 * (t_end - t_mid) / max(1, n_sample), 3)}]
    r = rows[0]
    summary = (f"forgot class {gone_class} ({counted(n_class, 'point')}) and {counted(n_sample, 'random point')}: "
               f"{counted(cited, 'citation')} of forgotten points in {counted(len(q), 'result')} (was {cited_before}); "
               f"other classes {100 * (r['rest_accuracy_before'] or 0):.2f}% -> "
               f"{100 * (r['rest_accuracy_after'] or 0):.2f}% (rank, k={k}); "
               f"{r['forget_sample_ms_per_point']} ms per point, amortised over one forget of {n_sample} "
               "(one point alone: vmem bench forget)")
    return ExperimentResult(name="unlearning", params={"forget_fraction": forget_fraction, "k": k,
                                                       "query_limit": query_limit, "seed": seed},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- label noise


def _precision_at(score: np.ndarray, truth: np.ndarray, m: int) -> float:
    """The fraction of true items among the m highest-scoring ones."""
    return float(truth[np.argsort(-score, kind="stable")[:m]].mean()) if m else 0.0


def label_noise(memory: LabelledArrays, queries: LabelledArrays, fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
                k: int = 50, min_share: float = DEFAULT_MIN_SHARE, seed: int = 0) -> ExperimentResult:
    """Give a fraction of memory points another class's label; can the label audit find them?

    For each fraction: how many of the flipped points the audit's ranking puts first (precision at the number
    flipped), against pruning's blame count and chance; how many of its suspects (another label's share >=
    `min_share`) are flipped points, and whether their suggestion is the true label; and accuracy on the
    queries with the clean memory, the noisy one, the noisy one with every suspect relabelled as suggested,
    and with every suspect forgotten.
    """
    t0 = time.perf_counter()
    classes = sorted(set(memory.labels))
    if len(classes) < 2:
        raise ValueError("label-noise needs a memory of at least 2 classes")
    n = len(memory)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # nested: the first x% of this order are flipped
    shift = rng.integers(1, len(classes), size=n)  # to another class, never the same one
    pos = {c: i for i, c in enumerate(classes)}
    clean_ids = np.array([pos[lab] for lab in memory.labels])
    clean_acc = _row(_score(memory, queries), [k])[f"rank@{k}"]
    # The neighbours do not depend on the labels: one self-search serves the audit and the blame count at
    # every fraction.
    k_audit, k_blame = max(1, min(k, n - 1)), min(K_MAX, n - 1)
    idx, sims = self_search(memory.features, max(k_audit, k_blame))
    rows = []
    for frac in fractions:
        flipped = np.sort(order[: round(frac * n)])
        m = len(flipped)
        noisy_ids = clean_ids.copy()
        noisy_ids[flipped] = (clean_ids[flipped] + shift[flipped]) % len(classes)
        noisy = LabelledArrays(memory.features, [classes[i] for i in noisy_ids])
        truth = np.zeros(n, dtype=bool)
        truth[flipped] = True
        suggested, share, own = leave_one_out_votes(memory.features, noisy.labels, k,
                                                    hits=(idx[:, :k_audit], sims[:, :k_audit]))
        counts, _ = wrong_decision_counts(memory.features, noisy.labels, k_blame,
                                          hits=(idx[:, :k_blame], sims[:, :k_blame]))


        suspect = (share >= min_share) & (share > own)
        right_hint = np.array([s == c for s, c in zip(suggested, memory.labels, strict=True)])
        corrected = LabelledArrays(memory.features, [s if flag else lab for s, lab, flag  # type: ignore[misc]  # a suspect has a suggestion
                                                     in zip(suggested, noisy.labels, suspect, strict=True)])
        rows.append({
            "fraction": frac, "flipped": m,
            "audit_precision": _precision_at(share - own, truth, m),
            "blame_precision": _precision_at(counts.astype(float), truth, m),
            "chance_precision": m / n,
            "suspects": int(suspect.sum()), "suspects_flipped": int((suspect & truth).sum()),
            "flipped_found": float((suspect & truth).sum() / m) if m else 0.0,
            "suggestion_true": float((suspect & truth & right_hint).sum() / max(1, (suspect & truth).sum())),
            "clean_accuracy": clean_acc,
            "noisy_accuracy": _row(_score(noisy, queries), [k])[f"rank@{k}"],
            "corrected_accuracy": _row(_score(corrected, queries), [k])[f"rank@{k}"],
            "forgotten_accuracy": _row(_score(noisy.take(np.flatnonzero(~suspect)), queries), [k])[f"rank@{k}"],
        })
    r = rows[min(1, len(rows) - 1)]
    summary = (f"{100 * r['fraction']:g}% of labels flipped ({r['flipped']}): the audit ranks "
               f"{100 * r['audit_precision']:.1f}% flipped among its first {r['flipped']} (pruning's blame count "
               f"{100 * r['blame_precision']:.1f}%, chance {100 * r['chance_precision']:.1f}%); its "
               f"{counted(r['suspects'], 'suspect')} {'holds' if r['suspects'] == 1 else 'hold'} "
               f"{counted(r['suspects_flipped'], 'flipped point')}, "
               f"{100 * r['suggestion_true']:.0f}% of them given back their true label; rank@{k} accuracy "
               f"clean {100 * r['clean_accuracy']:.2f}%, noisy {100 * r['noisy_accuracy']:.2f}%, suspects relabelled "
               f"{100 * r['corrected_accuracy']:.2f}%, suspects forgotten {100 * r['forgotten_accuracy']:.2f}%")
    return ExperimentResult(name="label-noise", params={"fractions": list(fractions), "k": k, "min_share": min_share,
                                                         "seed": seed},
                            rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------------------------------------- novelty


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The area under the ROC curve of a score that should be higher for `positive`: the chance that a positive
    scores above a negative, ties counted half (the Mann-Whitney U statistic, from midranks)."""
    scores = np.concatenate([np.asarray(positive, np.float64), np.asarray(negative, np.float64)])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    midranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based: a tie's ranks, averaged
    n_pos, n_neg = len(positive), len(negative)
    u = midranks[inverse][:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """The share of negatives at or above the highest threshold that keeps at least `tpr` of the positives."""
    pos = np.sort(np.asarray(positive, np.float64))[::-1]
    keep = max(1, int(np.ceil(tpr * len(pos) - 1e-9)))  # 0.95 * 100 is 95.00000000000001 in floats
    return float(np.mean(np.asarray(negative, np.float64) >= pos[keep - 1]))


def _mean_distance(sims: np.ndarray, k: int) -> np.ndarray:
    """Each row's novelty at k: the mean cosine distance to its first k neighbours (`Classification.novelty`)."""
    return np.mean(1.0 - sims[:, :k].astype(np.float64), axis=1)


def calibration_sample(memory: LabelledArrays, sample_size: int = OOD_SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """The rows a memory's novelty threshold is calibrated on: its first `sample_size` points in id order
    (`VisualMemory.novelty_threshold`; a memory's arrays hold only points a search can return), or, for arrays
    without ids, as many drawn at random (ids are hashes: a random draw too)."""
    if memory.ids is not None:
        return np.array(sorted(range(len(memory)), key=memory.ids.__getitem__)[:sample_size], dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(len(memory))[:sample_size])


def novelty_thresholds(memory: LabelledArrays, ks: Sequence[int], sample_size: int = OOD_SAMPLE_SIZE,
                       percentile: float = OOD_PERCENTILE, seed: int = 0) -> dict[int, float | None]:
    """`VisualMemory.novelty_threshold` at each k on arrays, with exact search: the sampled points query the
    memory (k + 1 neighbours, their own left out), and the threshold is the percentile of their novelty."""
    check_calibration(sample_size, percentile)
    rows = calibration_sample(memory, sample_size, seed)
    if len(rows) < 2:
        return dict.fromkeys(ks)
    idx, sims = exact_search(memory.features[rows], memory.features, max(ks) + 1)
    hit_ids = [[int(i) for i in row if i >= 0] for row in idx]
    hit_sims = [row[row > -np.inf].tolist() for row in sims]
    return {k: threshold_of(self_excluded_novelties(rows.tolist(), hit_ids, hit_sims, k), percentile) for k in ks}


def novelty(memory: LabelledArrays, queries: LabelledArrays, new_classes: int = 20,
            ks: Sequence[int] = (1, 10, 50, 100), k: int = DEFAULT_K, sample_size: int = OOD_SAMPLE_SIZE,
            percentile: float = OOD_PERCENTILE, seed: int = 0) -> ExperimentResult:
    """Hold `new_classes` classes out of the memory: their queries are unfamiliar, the kept classes' familiar.
    Does novelty tell them apart, and what does the out-of-distribution threshold flag?

    For each k (capped at the reduced memory's size): the AUROC of novelty separating unfamiliar from familiar
    queries, the familiar share flagged at the novelty that flags 95 % of the unfamiliar (FPR at 95 % TPR), the
    threshold calibrated on the reduced memory by `VisualMemory.novelty_threshold`'s rule (exact search) and the
    shares of unfamiliar and familiar queries above it; and whether the familiar queries it flags are more often
    wrong: rank-vote accuracy at `k` of the familiar queries flagged, and of those not.
    """
    t0 = time.perf_counter()
    kept, held = _split_classes(memory.labels, queries.labels, new_classes, seed)
    reduced = memory.where(lambda lab: lab in kept)
    familiar, unfamiliar = queries.where(lambda lab: lab in kept), queries.where(lambda lab: lab in held)
    if not len(familiar):
        raise ValueError("no query is of a class kept in the memory: hold out fewer than "
                         f"{counted(new_classes, 'class', 'classes')}")
    ks = sorted({min(x, len(reduced)) for x in ks})
    k_vote = min(k, len(reduced))
    thresholds = novelty_thresholds(reduced, ks, sample_size, percentile, seed)
    k_max = max(*ks, k_vote)
    f_idx, f_sims = exact_search(familiar.features, reduced.features, k_max)
    _, u_sims = exact_search(unfamiliar.features, reduced.features, k_max)
    classes = _classes(reduced, familiar)
    table = table_from_hits(f_idx[:, :k_vote], f_sims[:, :k_vote], reduced.labels, classes)
    predicted = vote_last_k(table.label_ids, table.similarities, VoteRule.rank, len(classes), DEFAULT_ALPHA)
    right = np.array(classes)[predicted] == np.array(familiar.labels)
    rows: list[dict[str, Any]] = []
    novelties = {}
    for kk in ks:
        fam, unf = _mean_distance(f_sims, kk), _mean_distance(u_sims, kk)
        novelties[kk] = (fam, unf)
        t = thresholds[kk]
        flagged = fam > t if t is not None else np.zeros(len(fam), dtype=bool)
        rows.append({"k": kk, "auroc": auroc(unf, fam), "fpr@95tpr": fpr_at_tpr(unf, fam), "threshold": t,
                     "unfamiliar_flagged": float(np.mean(unf > t)) if t is not None else None,
                     "familiar_flagged": float(np.mean(flagged)) if t is not None else None,
                     "familiar_flagged_queries": int(flagged.sum()),
                     "accuracy_flagged": float(np.mean(right[flagged])) if flagged.any() else None,
                     "accuracy_unflagged": float(np.mean(right[~flagged])) if (~flagged).any() else None})
    last = rows[-1]
    fam, unf = novelties[last["k"]]
    edges = np.linspace(min(fam.min(), unf.min()), max(fam.max(), unf.max()), 41)
    histogram = {"k": last["k"], "edges": edges.tolist(), "threshold": last["threshold"],
                 "familiar": np.histogram(fam, edges)[0].tolist(), "unfamiliar": np.histogram(unf, edges)[0].tolist()}

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    caught = (f"; rank voting at k={k_vote} gets {pct(last['accuracy_flagged'])} of the familiar ones flagged "
              f"right, {pct(last['accuracy_unflagged'])} of the others" if last["familiar_flagged_queries"] else "")
    summary = (f"{len(held)} of {len(kept) + len(held)} classes held out of the memory: at k={last['k']} novelty "
               f"tells their {counted(len(unfamiliar), 'query', 'queries')} from the {len(familiar):,} of the kept "
               f"classes with AUROC {last['auroc']:.3f} (FPR {pct(last['fpr@95tpr'])} at 95% TPR); the memory's "
               f"p{percentile:g} threshold flags {pct(last['unfamiliar_flagged'])} of the unfamiliar and "
               f"{pct(last['familiar_flagged'])} of the familiar queries{caught}")
    return ExperimentResult(
        name="novelty", params={"new_classes": sorted(held), "ks": ks, "vote_k": k_vote, "rule": "rank",
                                "sample_size": sample_size, "percentile": percentile, "seed": seed,
                                "memory_points_kept": len(reduced), "familiar_queries": len(familiar),
                                "unfamiliar_queries": len(unfamiliar), "calibration_sample":
                                "first points in id order" if reduced.ids is not None else "random",
                                "histogram": histogram},
        rows=rows, summary=summary, seconds=round(time.perf_counter() - t0, 2))


EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    "scaling": scaling,
    "corruption": corruption,
    "ood-classes": ood_classes,
    "granularity": granularity,
    "pruning": pruning,
    "unlearning": unlearning,
    "label-noise": label_noise,
    "novelty": novelty,
}


# ---------------------------------------------------------------------------------------------- output

_PERCENT_MARKS = ("@", "accuracy", "_best", "old_", "new_", "wrong_labels", "taken_by", "_precision", "_found",
                  "suggestion_true", "_flagged")


def _fmt(key: str, v: Any) -> str:
    if isinstance(v, float) and any(m in key for m in _PERCENT_MARKS) and not key.endswith("_best_k"):
        return f"{100 * v:.2f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(result: ExperimentResult, columns: Sequence[str] | None = None) -> str:
    """The result's rows as a Markdown table (accuracies in %), with its summary and fit."""
    cols = list(columns or [c for c in result.rows[0] if not c.endswith("_best_k")])
    lines = [f"## {result.name}", "", result.summary, "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |" for r in result.rows]
    if result.fit:
        lines += ["", "Fits of error against memory size n:", ""]
        for rule, f in result.fit.items():
            lines.append(f"- {rule}: {f['form']}, a = {f['a']:.4f}, b = {f['b']:.4f}"
                         + (f"; {f['paper_form']['form']}, a = {f['paper_form']['a']:.4f}, "
                            f"b = {f['paper_form']['b']:.4f}" if "paper_form" in f else ""))
    return "\n".join(lines) + "\n"


def write_experiment(result: ExperimentResult, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """`<name>.json`, `<name>.csv`, `<name>.md` and, where it has one, `<name>.png`."""
    from .plots import plot_curves, plot_histograms

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / result.name
    written = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".md")]
    write_atomically(written[0], result.model_dump_json(indent=1))
    header = list(result.rows[0])
    write_csv(written[1], header, [[row.get(h, "") for h in header] for row in result.rows])
    write_atomically(written[2], markdown(result))
    rows = result.rows
    png = stem.with_suffix(".png")
    # Which run, as eval's plots say it: two memories' or encoders' plots had had one title
    p = result.params
    run = (f" ({short_name(str(p['queries']))} against {short_name(str(p['memory']))}, {p['featurizer']})"
           if {"queries", "memory", "featurizer"} <= p.keys() else "")
    if plots and result.name == "scaling":
        written.append(plot_curves([r["memory_size"] for r in rows],
                                   {rule: [100 * (1 - r[f"{rule}_best"]) for r in rows] for rule in RULES},
                                   png, "memory size (points)", "top-1 error (%), best k",
                                   "error against memory size" + run,
                                   logx=True, logy=True))
    elif plots and result.name == "corruption":
        curves = {f"{rule} (best k)": [100 * r[f"{rule}_best"] for r in rows] for rule in RULES}
        curves["1-NN"] = [100 * r["rank@1"] for r in rows]
        written.append(plot_curves([100 * r["fraction"] for r in rows], curves, png,
                                   "memory labels replaced at random (%)", "top-1 accuracy (%)",
                                   "label corruption" + run))
    elif plots and result.name == "granularity":
        curves = {"held-out classes": [100 * r["held_out_accuracy"] for r in rows]}
        if rows[0]["kept_accuracy"] is not None:  # no query of a kept class: no such curve
            curves["kept classes"] = [100 * r["kept_accuracy"] for r in rows]
        written.append(plot_curves([r["exemplars"] for r in rows], curves,
                                   png, "exemplars per held-out class in memory", "1-NN accuracy (%)",
                                   "leave-class-out granularity" + run))
    elif plots and result.name == "label-noise":
        written.append(plot_curves([100 * r["fraction"] for r in rows],
                                   {"label audit (vmem suspects)": [100 * r["audit_precision"] for r in rows],
                                    "pruning's blame count": [100 * r["blame_precision"] for r in rows],
                                    "chance": [100 * r["chance_precision"] for r in rows]},
                                   png, "memory labels flipped to another class (%)",
                                   "flipped points among the first m ranked (%)",
                                   "finding the m flipped labels" + run))
    elif plots and result.name == "novelty":
        h = result.params["histogram"]
        lines = {f"threshold (p{result.params['percentile']:g} of the memory's own)": h["threshold"]}
        written.append(plot_histograms(h["edges"], {"familiar: classes in the memory": h["familiar"],
                                                    "unfamiliar: classes held out": h["unfamiliar"]},
                                       png, f"novelty at k={h['k']} (mean cosine distance to the neighbours)",
                                       "novelty of queries of classes the memory holds and does not" + run,
                                       lines if h["threshold"] is not None else None))
    return written
