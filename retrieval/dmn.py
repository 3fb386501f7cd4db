"""Dual Memory Networks (Zhang et al., CVPR 2024) as pure numpy: memory readouts, the dynamic memory, fusion.

A readout turns a set of memory entries k_j with class labels into class probabilities for a query q
(all vectors L2-normalised):

    w_j = exp(-beta * (1 - cos(q, k_j)))          beta = 5.5
    m_c = normalise(sum_{j in c} w_j k_j)         one prototype per class that has entries
    P   = softmax(scale * <m_c, q>)               scale = 100

A class without entries gets probability 0. The original code reads out each class's entries together with its
text embedding (and, few-shot, its labelled shots), so an empty class's prototype is its text vector, with a logit
of 100 * cos(q, t_c), about 20-35 for CLIP against about 80 for image prototypes: nearly 0 after the softmax too.
Here the dynamic memory holds the queries alone.

Two memories are read out this way:
    static   the labelled memory, per class only its entries nearest the query (`static_entries`);
    dynamic  per class up to L = 50 past *query* features with pseudo-labels (`DynamicMemory`).

and fused with an optional text classifier: P = a1 P_text + a2 P_dynamic + a3 P_static.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import write_atomically

DEFAULT_BETA = 5.5
DEFAULT_SCALE = 100.0
DEFAULT_SLOTS = 50
DEFAULT_STATIC_CAP = 16
# Classification templates for CLIP prompt ensembles: the 7 that CLIP's authors selected for ImageNet
# ("Prompt_Engineering_for_ImageNet.ipynb"), which DMN-style methods also use.
DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
_STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax that treats -inf as probability 0 (and an all -inf row as all zeros)."""
    z = np.asarray(logits, dtype=np.float64)
    top = np.max(z, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(z - top)
    total = e.sum(axis=axis, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of probability rows (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


def readout(
    query: np.ndarray,
    keys: np.ndarray,
    class_ids: np.ndarray,
    n_classes: int,
    beta: float = DEFAULT_BETA,
    scale: float = DEFAULT_SCALE,
) -> np.ndarray:
    """Class probabilities of one query from memory entries (the DMN readout; values = keys).

    Args:
        query: float [d], L2-normalised.
        keys: float [n, d], L2-normalised memory entries (n may be 0).
        class_ids: int [n], each entry's class in 0..n_classes-1.
        n_classes: length of the output.

    Returns:
        float64 [n_classes] summing to 1 over the classes with entries (all zeros when n = 0).

    Example:
        >>> q = np.array([1.0, 0.0]); keys = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> readout(q, keys, np.array([0, 1]), 2).round(3)
        array([1., 0.])
    """
    keys = np.asarray(keys, dtype=np.float64).reshape(-1, len(query))
    class_ids = np.asarray(class_ids, dtype=np.int64)
    logits = np.full(n_classes, -np.inf)
    if len(keys) == 0:
        return softmax(logits)
    q = np.asarray(query, dtype=np.float64)
    w = np.exp(-beta * (1.0 - keys @ q))
    # Prototypes only of the classes that have entries, each its entries' sum in their order (the same sums, bit
    # for bit, as np.add.at into [n_classes, d], which was ~5-10 ms of each query: most of a DMN readout).
    present, row = np.unique(class_ids, return_inverse=True)
    weighted = w[:, None] * keys
    protos = np.stack([weighted[row == i].sum(axis=0) for i in range(len(present))])
    norms = np.linalg.norm(protos, axis=1)
    has = norms > 0
    logits[present[has]] = scale * (protos[has] @ q) / norms[has]
    return softmax(logits)


@dataclass(frozen=True)
class StaticEntries:
    """The labelled entries one query reads out: at most `cap` nearest per class."""

    keys: np.ndarray  # float32 [n, d]
    class_ids: np.ndarray  # int64 [n]
    index: np.ndarray  # int64 [n]: positions of the kept entries among the neighbours


def static_entries(
    neighbor_keys: np.ndarray,
    neighbor_class_ids: np.ndarray,
    cap: int = DEFAULT_STATIC_CAP,
) -> StaticEntries:
    """Keep, per class, the first `cap` of a query's neighbours (given nearest first).

    One wide search followed by this grouping replaces a filtered search per class: a class
    with no entry among the wide neighbours then gets no static probability, which is what makes
    the static memory scale to many labels (its probability would be ~exp(-scale * gap) anyway).
    Neighbours with class id -1 (labels outside the class list) are dropped.
    """
    ids = np.asarray(neighbor_class_ids, dtype=np.int64)
    keep = np.zeros(len(ids), dtype=bool)
    seen: dict[int, int] = {}
    for i, c in enumerate(ids.tolist()):
        if c < 0 or seen.get(c, 0) >= cap:
            continue
        seen[c] = seen.get(c, 0) + 1
        keep[i] = True
    return StaticEntries(np.asarray(neighbor_keys, dtype=np.float32)[keep], ids[keep], np.flatnonzero(keep))


def fuse(
    parts: Sequence[tuple[float, np.ndarray | None]],
) -> np.ndarray:
    """P = sum_i alpha_i P_i over the parts that are present, renormalised to sum to 1.

    Args:
        parts: (alpha, probabilities [..., C] or None for a memory that is off).
    """
    used = [(a, np.asarray(p, dtype=np.float64)) for a, p in parts if p is not None and a != 0]
    if not used:
        raise ValueError("DMN fusion needs at least one memory with a non-zero weight")
    total = sum(a * p for a, p in used)
    norm = total.sum(axis=-1, keepdims=True)  # type: ignore[union-attr]  # `used` is not empty: an array, not sum()'s 0
    return np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)


def pick_alpha(
    parts: dict[str, np.ndarray],
    truth: np.ndarray,
    grid: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    fixed: str | None = None,
) -> tuple[dict[str, float], float]:
    """Fusion weights with the best accuracy on a *validation* split (never on the reported images).

    Only ratios matter to the argmax, so the `fixed` part (default: the first) keeps weight 1 and every
    other part takes each value of `grid`. Ties go to the weights closest to all ones (the default).

    Args:
        parts: name -> class probabilities [n, C] of the validation queries.
        truth: int [n] true class ids.

    Returns:
        ({name: alpha}, validation accuracy in [0, 1]).
    """
    import itertools

    names = list(parts)
    fixed = fixed or names[0]
    free = [n for n in names if n != fixed]
    best: tuple[float, float, dict[str, float]] | None = None
    for combo in itertools.product(grid, repeat=len(free)):
        alpha = {fixed: 1.0, **dict(zip(free, combo, strict=True))}
        try:
            pred = fuse([(alpha[n], parts[n]) for n in names]).argmax(axis=1)
        except ValueError:
            continue
        acc = float(np.mean(pred == truth))
        distance = sum(abs(np.log(max(a, 1e-3))) for a in alpha.values())
        if best is None or (acc, -distance) > (best[0], -best[1]):
            best = (acc, distance, alpha)
    assert best is not None
    return best[2], best[0]


# ---------------------------------------------------------------- text classifier


def text_classifier(
    encode_text: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """Prompt-ensemble class weights W [C, d]: per class the mean of its normalised prompt embeddings, normalised.

    `encode_text` maps strings to text features [n, d] (e.g. `ClipFeaturizer.embed_text`).
    P_text = softmax(100 * f @ W.T) for an image feature f.
    """
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = np.asarray(encode_text(prompts), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    w = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- dynamic memory


class DynamicMemory:
    """Per class up to `slots` past query features with pseudo-labels and prediction entropies.

    Update rule (DMN): a query goes to its pseudo-label's queue; while the queue has a free slot it
    is appended; when full, it replaces the highest-entropy entry if its own entropy is lower,
    otherwise it is dropped. Classes are labels (strings), so the label set may grow.

    Held densely ([classes, slots, dim]) with each class's Gram matrix of its entries, so that a
    readout is one matrix-vector product: <m_c, q> = w.s / sqrt(w^T G_c w) with s_j = cos(q, k_j).
    Persisted as one `.npz` per stream (`save`/`load`); a process-local lock guards updates.
    """

    def __init__(self, dim: int, slots: int = DEFAULT_SLOTS, featurizer: str = "") -> None:
        if slots < 1:
            raise ValueError("a dynamic memory needs at least one slot per class")
        self.dim = dim
        self.slots = slots
        self.featurizer = featurizer
        self.updates = 0  # queries offered (stored or dropped)
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        self._feats = np.zeros((0, slots, dim), np.float32)
        self._ents = np.zeros((0, slots))
        self._gram = np.zeros((0, slots, slots))  # per class, dot products of its entries
        self._n = np.zeros(0, np.int64)  # used slots per class
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return int(self._n.sum())

    def counts(self) -> dict[str, int]:
        return {lab: int(self._n[i]) for i, lab in enumerate(self.labels) if self._n[i]}

    def entries(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, dim], entropies [n]) held for a label, in slot order."""
        i = self._index.get(label)
        if i is None:
            return np.zeros((0, self.dim), np.float32), np.zeros(0)
        n = self._n[i]
        return self._feats[i, :n].copy(), self._ents[i, :n].copy()

    def features(self) -> np.ndarray:
        """Every entry's feature [n, dim], whatever its label."""
        with self.lock:
            return np.concatenate([np.zeros((0, self.dim), np.float32),
                                   *(self._feats[i, : self._n[i]] for i in range(len(self.labels)))])

    def _row(self, label: str) -> int:
        i = self._index.get(label)
        if i is not None:
            return i
        i = len(self.labels)
        if i == len(self._feats):  # grow by doubling
            grow = max(8, i)
            self._feats = np.concatenate([self._feats, np.zeros((grow, self.slots, self.dim), np.float32)])
            self._ents = np.concatenate([self._ents, np.zeros((grow, self.slots))])
            self._gram = np.concatenate([self._gram, np.zeros((grow, self.slots, self.slots))])
            self._n = np.concatenate([self._n, np.zeros(grow, np.int64)])
        self.labels.append(label)
        self._index[label] = i
        return i

    def write(self, feature: np.ndarray, label: str, ent: float) -> bool:
        """Offer one query feature with its pseudo-label; True when it was stored."""
        f = np.asarray(feature, dtype=np.float32).reshape(self.dim)
        with self.lock:
            self.updates += 1
            i = self._row(label)
            n = int(self._n[i])
            if n < self.slots:
                slot = n
                self._n[i] = n + 1
            else:
                slot = int(np.argmax(self._ents[i]))
                if not ent < self._ents[i, slot]:
                    return False
            self._feats[i, slot] = f
            self._ents[i, slot] = float(ent)
            self._update_gram(i, slot)
            return True

    def _update_gram(self, i: int, slot: int) -> None:
        # einsum, as the readout's similarities: the same products however many slots a class has (BLAS picks its
        # kernel by the row count), ~0.03 ms an update.
        feats = self._feats[i].astype(np.float64)
        row = np.einsum("nd,d->n", feats, feats[slot])
        self._gram[i, slot, :] = row
        self._gram[i, :, slot] = row

    def probabilities(self, query: np.ndarray, classes: Sequence[str], beta: float = DEFAULT_BETA,
                      scale: float = DEFAULT_SCALE) -> np.ndarray:
        """The readout over `classes` (labels the memory does not hold, or not listed, get 0)."""
        q = np.asarray(query, dtype=np.float32)
        with self.lock:
            held = len(self.labels)
            logits = np.full(len(classes), -np.inf)
            if not held:
                return np.zeros(len(classes))
            feats = self._feats[:held].reshape(-1, self.dim)
            used = np.arange(self.slots)[None, :] < self._n[:held, None]
            filled = np.flatnonzero(used.ravel())
            # By einsum, which runs on this thread, full stream or young: BLAS's threads, beside other work on 2
            # cores, took 4.0 ms p50 (p99 16 ms) for 600 rows against 0.15 ms, and 11.7 ms (p99 85 ms) for a full
            # stream's 10,000 against 4.1 ms (docs/benchmarks.md, "BLAS threads"). One way also keeps a stream's
            # answers the same bit for bit however full it is.
            if 2 * len(filled) < len(feats):
                # Mostly empty slots (a young stream: 600 queries fill 600 of 200 classes x 50): only the used rows
                # are read, not all 51 MB of 200 classes' slots.
                flat = np.zeros(len(feats), np.float32)
                flat[filled] = np.einsum("nd,d->n", feats[filled], q)
                sims = flat.reshape(held, self.slots).astype(np.float64)
            else:
                sims = np.einsum("nd,d->n", feats, q).reshape(held, self.slots).astype(np.float64)
            w = np.where(used, np.exp(-beta * (1.0 - sims)), 0.0)
            # <normalise(sum_j w_j k_j), q> = (w . s) / sqrt(w^T G w), without forming the prototypes; over the
            # slots any class uses (w is 0 past them), by matmul (einsum's three-operand loop was ~2 ms a query).
            m = int(self._n[:held].max())
            wm = w[:, :m]
            norm2 = (wm * np.matmul(self._gram[:held, :m, :m], wm[:, :, None])[:, :, 0]).sum(axis=1)
            dots = (w * sims).sum(axis=1)
            pos = [(j, self._index[c]) for j, c in enumerate(classes) if c in self._index]
        for j, i in pos:
            if norm2[i] > 0:
                logits[j] = scale * dots[i] / np.sqrt(norm2[i])
        return softmax(logits)

    def drop_labels_except(self, keep: set[str]) -> int:
        """Empty the queues of labels no longer in the labelled memory; returns entries removed."""
        with self.lock:
            n = 0
            for lab, i in self._index.items():
                if lab not in keep:
                    n += int(self._n[i])
                    self._n[i] = 0
            return n

    def drop_similar(self, feature: np.ndarray, min_similarity: float) -> int:
        """Remove every entry at least `min_similarity` cosine-similar to `feature`, or to any row of a [n, dim]
        array of features (a photo forgotten from the labelled memory by likeness, or forgotten images, once
        queries here too); the others keep their slot order. Returns entries removed."""
        f = np.asarray(feature, dtype=np.float64).reshape(-1, self.dim)
        f /= np.where((lengths := np.linalg.norm(f, axis=1, keepdims=True)) > 0, lengths, 1.0)
        removed = 0
        with self.lock:
            for i in range(len(self.labels)):
                n = int(self._n[i])
                if not n:
                    continue
                feats = self._feats[i, :n].astype(np.float64)
                norms = np.linalg.norm(feats, axis=1)
                sims = (feats @ f.T).max(axis=1) / np.where(norms > 0, norms, 1.0)
                keep = np.flatnonzero(sims < min_similarity)
                if len(keep) == n:
                    continue
                removed += n - len(keep)
                self._feats[i, : len(keep)] = self._feats[i, keep]
                self._ents[i, : len(keep)] = self._ents[i, keep]
                self._feats[i, len(keep) : n] = 0  # not kept in RAM either
                self._n[i] = len(keep)
                for slot in range(len(keep)):
                    self._update_gram(i, slot)
        return removed

    def rename_label(self, old: str, new: str) -> int:
        """Move a label's entries to another label (its class renamed, or merged into another, in the labelled
        memory), each offered to the new queue as `write` would: a full queue keeps its lowest-entropy entries.
        Returns the entries kept; the queries-seen count is unchanged."""
        with self.lock:
            i = self._index.get(old)
            if old == new or i is None or not self._n[i]:
                return 0
            feats, ents = self.entries(old)
            self._n[i] = 0
            seen = self.updates
            kept = sum(self.write(f, new, float(e)) for f, e in zip(feats, ents, strict=True))
            self.updates = seen
            return kept

    def reset(self) -> None:
        with self.lock:
            self._n[:] = 0
            self.updates = 0

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename), so a crash never leaves a torn stream."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            rows = [(lab, i) for i, lab in enumerate(self.labels) if self._n[i]]
            owner = np.array([lab for lab, i in rows for _ in range(self._n[i])], dtype=str)
            feats = np.concatenate([self._feats[i, : self._n[i]] for _, i in rows]) if rows else \
                np.zeros((0, self.dim), np.float32)
            ents = np.concatenate([self._ents[i, : self._n[i]] for _, i in rows]) if rows else np.zeros(0)
            meta = np.array([self.featurizer, str(self.dim), str(self.slots), str(self.updates)])
            write_atomically(path, lambda fh: np.savez(fh, labels=owner, features=feats, entropies=ents, meta=meta))

    @classmethod
    def load(cls, path: str | Path) -> DynamicMemory:
        """Read a stream written by `save` (slot order within a class is kept)."""
        with np.load(Path(path), allow_pickle=False) as z:
            featurizer, dim, slots, updates = (str(x) for x in z["meta"])
            labels, feats, ents = z["labels"], z["features"], z["entropies"]
        mem = cls(int(dim), int(slots), featurizer)
        for lab in dict.fromkeys(labels.tolist()):
            rows = np.flatnonzero(labels == lab)
            i = mem._row(lab)
            mem._feats[i, : len(rows)] = feats[rows]
            mem._ents[i, : len(rows)] = ents[rows]
            mem._n[i] = len(rows)
            for slot in range(len(rows)):
                mem._update_gram(i, slot)
        mem.updates = int(updates)
        return mem


def check_stream_name(name: str) -> str:
    """Stream names become file names: letters, digits, `_.-`, at most 64 characters."""
    if not _STREAM_NAME.fullmatch(name):  # match's $ lets a final newline through ("evil\n")
        raise ValueError(f"invalid DMN stream name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    return name
