"""The `dmn` classification rule: Dual Memory Networks (Zhang et al., CVPR 2024) over a vmem memory.

    >>> mem = VisualMemory.open("./memory")
    >>> [r] = mem.classify(["cat.jpg"], rule="dmn", dmn_stream="camera-1")
    >>> r.label, r.dmn.parts["dynamic"]

Three class-probability vectors are fused, P = a_text P_text + a_dynamic P_dynamic + a_static P_static:

    static   the labelled memory: one wide search (`static_k` neighbours), then per class its
             `static_cap` nearest entries, read out with the DMN readout (`retrieval.dmn.readout`);
    dynamic  past queries of a named stream, pseudo-labelled by the static/text prediction
             (`retrieval.dmn.DynamicMemory`), kept apart from the labelled memory, persisted as
             `<dmn home>/<memory key>/<stream>.npz`; off unless a stream is named;
    text     CLIP's prompt-ensemble classifier, when the memory's featurizer is CLIP.

Modes: zero-shot (text + dynamic), few-shot (text + dynamic + static, training-free) and memory-only
(static + dynamic; any featurizer). `auto` picks few-shot for CLIP memories, memory-only otherwise.

As in the original code, each query is written into the dynamic memory *before* it is read out,
so within a batch the queries are processed in order, and a stream is a sequence.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from retrieval import MemoryStore, Neighbor, read_label_names
from retrieval.dmn import (
    DEFAULT_BETA,
    DEFAULT_SCALE,
    DEFAULT_SLOTS,
    DEFAULT_STATIC_CAP,
    DEFAULT_TEMPLATES,
    DynamicMemory,
    check_stream_name,
    entropy,
    fuse,
    readout,
    softmax,
    static_entries,
    text_classifier,
)
from retrieval.files import os_error_reason, remove_stale_temporaries, user_folder
from retrieval.store import DEFAULT_COLLECTION, LOCAL_MODE_PREFIX, local_folder
from retrieval.text import counted, without_secrets

from .results import Classification, DmnDetails, NeighborVote, VoteSettings

DMN_RULE = "dmn"
log = logging.getLogger(__name__)
Mode = Literal["auto", "zero-shot", "few-shot", "memory-only"]
# Scores below this are left out of `Classification.scores` (200 classes would otherwise all be listed).
MIN_SCORE = 1e-4


class DmnOptions(BaseModel):
    """Settings of the `dmn` rule (defaults follow the paper)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(default="auto", description="zero-shot, few-shot, memory-only; auto: few-shot if CLIP")
    alpha_text: float = Field(default=1.0, ge=0, description="weight of P_text")
    alpha_dynamic: float = Field(default=1.0, ge=0, description="weight of P_dynamic")
    alpha_static: float = Field(default=1.0, ge=0, description="weight of P_static")
    beta: float = Field(default=DEFAULT_BETA, ge=0, description="readout sharpness: w = exp(-beta (1 - cos))")
    scale: float = Field(default=DEFAULT_SCALE, gt=0, description="logit scale of every readout")
    slots: int = Field(default=DEFAULT_SLOTS, ge=1, le=10_000, description="dynamic memory slots per class (L)")
    static_cap: int = Field(default=DEFAULT_STATIC_CAP, ge=1, description="static entries read out per class")
    static_k: int = Field(default=256, ge=1, le=1000, description="neighbours fetched by the one wide search")
    update: bool = Field(default=True, description="write queries into the stream (false: read it only)")
    classes_file: str | None = Field(default=None, description="label<TAB>class name lines for the text prompts")
    templates: tuple[str, ...] = Field(default=DEFAULT_TEMPLATES, description="prompt templates with one {}")


def dmn_home() -> Path:
    """Where dynamic memories live: $VMEM_HOME/dmn, else $XDG_DATA_HOME/vmem/dmn, else ~/.local/share/vmem/dmn."""
    if os.environ.get("VMEM_HOME"):
        return Path(os.environ["VMEM_HOME"]).expanduser() / "dmn"
    return user_folder("XDG_DATA_HOME", ".local/share") / "vmem" / "dmn"


def memory_key(location: str) -> str:
    """A directory name per labelled memory, so equal stream names of two memories never mix."""
    loc = location if "://" in location or location.startswith(":") else str(Path(location).resolve())
    slug = "".join(c if c.isalnum() else "-" for c in Path(loc.rstrip("/")).name)[-32:] or "memory"
    return f"{slug}-{hashlib.sha256(loc.encode()).hexdigest()[:12]}"


def stream_dir_key(store: MemoryStore) -> str:
    """The folder of a memory's streams under `dmn_home()`: `MemoryStore.key`, the memory's own name, which follows
    it when its folder is moved and is another for a new memory made where it was (a folder per path had lost a
    moved memory's streams, and given a new memory at the old path the old one's queries). A process-local
    `:memory:` store is a memory of its own too (every such store would otherwise share one folder)."""
    if store.location == ":memory:":
        token = store.__dict__.setdefault("_dmn_stream_token", uuid.uuid4().hex)
        return memory_key(f":memory:{token}")
    return store.key


def path_stream_dir_key(store: MemoryStore) -> str:
    """Where streams were kept before `stream_dir_key`: a folder per location (and collection)."""
    collection = getattr(store, "collection", None)
    if collection is not None and collection != DEFAULT_COLLECTION:  # the default keeps the key it always had
        return memory_key(f"{store.location}#{collection}")
    return memory_key(store.location)


def path_stream_dir_keys(store: MemoryStore) -> list[str]:
    """Every folder older vmem versions kept this memory's streams in: `path_stream_dir_key`, and for a
    `qdrant-local:` memory that of its bare folder, where versions before such locations kept their prefix
    (2026-12-05) kept them."""
    keys = [path_stream_dir_key(store)]
    folder = local_folder(store.location) if store.location.startswith(LOCAL_MODE_PREFIX) else None
    if folder is not None and getattr(store, "collection", DEFAULT_COLLECTION) == DEFAULT_COLLECTION:
        keys.append(memory_key(str(folder)))
    return keys


def read_class_names(path: str | Path) -> dict[str, str]:
    """{label: name} for the text prompts: `retrieval.read_label_names` (TSV, `label name, ...` or a .csv)."""
    return read_label_names(path)


class DmnClassifier:
    """The `dmn` rule over one memory; streams are loaded on first use and saved after each batch."""

    def __init__(self, store: MemoryStore, featurizer: Callable[[], Any], root: str | Path | None = None,
                 save_interval_s: float = 1.0) -> None:
        """`featurizer` returns the memory's encoder, so listing or resetting streams never loads it.

        A full stream is ~50 MB (200 classes x 50 slots x 1280-d), so a stream is saved after a batch
        only when the last save is `save_interval_s` old; `flush()` (also run at exit) saves the rest.
        """
        self.store = store
        self._featurizer = featurizer
        self.dir = Path(root) if root is not None else dmn_home() / stream_dir_key(store)
        # A process-local `:memory:` memory vanishes with its process, and no other can name it: its streams
        # live in memory with it. Files would only pile up, a folder per such memory ever opened.
        self.persistent = root is not None or store.location != ":memory:"
        # A memory opened read-only (a replica: `vmem serve --read-only`) has the memory's key, so its streams' files
        # are the writable memory's: it reads them, and keeps its own updates in its process, as a `:memory:` one
        # does (its saves and the writer's had overwritten each other's)
        self.read_only = store.read_only
        if self.persistent and not self.read_only and root is None and store.location != ":memory:":
            self._take_streams_kept_by_path(store)
        if self.persistent and not self.read_only:
            for leftover in remove_stale_temporaries(self.dir):
                log.warning("removed %s, left by a stream save that did not finish", leftover)
        self._streams: dict[str, DynamicMemory] = {}
        self._lock = threading.Lock()
        self._text_cache: dict[tuple, np.ndarray] = {}
        self.save_interval_s = save_interval_s
        self._last_save: dict[str, float] = {}
        self._dirty: set[str] = set()
        atexit.register(self._flush_at_exit)

    def _take_streams_kept_by_path(self, store: MemoryStore) -> None:
        """Move the streams kept by this memory's location (before `stream_dir_key`) to its own folder, once: only
        streams written there after the memory was made, which are its own (an older memory's, deleted, would be
        older). Run when the memory's streams are first used: a classify with a stream, a listing, a copy, a
        forget of a whole label."""
        for old in (self.dir.parent / key for key in path_stream_dir_keys(store)):
            if old == self.dir or self.dir.exists() or not old.is_dir():
                continue
            try:
                made = datetime.fromisoformat(store.meta.created_at).timestamp()
                # By when each file was written here (its ctime: a copy keeps the source's mtime, and vmem copy
                # had copied streams with it)
                if max((f.stat().st_ctime for f in old.glob("*.npz")), default=0.0) > made:
                    old.rename(self.dir)
                    log.info("DMN streams of %s moved from %s to %s (one folder per memory now)",
                             without_secrets(store.location), old, self.dir)
            except (OSError, ValueError) as exc:  # left where they are: a stream can be built again
                log.warning("DMN streams in %s could not be moved to %s: %s", old, self.dir, exc)

    @property
    def featurizer(self) -> Any:
        return self._featurizer()

    # ---------------------------------------------------------------- streams

    def stream_path(self, name: str) -> Path:
        return self.dir / f"{check_stream_name(name)}.npz"

    def stream(self, name: str, slots: int = DEFAULT_SLOTS) -> DynamicMemory:
        """The named stream's dynamic memory (created empty when new)."""
        with self._lock:
            if name not in self._streams:
                path = self.stream_path(name)
                spec = self.store.meta.featurizer
                if self.persistent and path.exists():
                    mem = DynamicMemory.load(path)
                    if (mem.featurizer, mem.dim) != (spec.name, spec.dim):
                        raise ValueError(f"DMN stream {name!r} holds {mem.featurizer} features ({mem.dim}-d), "
                                         f"this memory uses {spec.name} ({spec.dim}-d); reset the stream")
                else:
                    mem = DynamicMemory(spec.dim, slots, spec.name)
                self._streams[name] = mem
            return self._streams[name]

    def streams(self) -> list[str]:
        if not self.persistent:
            return sorted(self._streams)
        saved = {p.stem for p in self.dir.glob("*.npz")} if self.dir.is_dir() else set()
        return sorted(saved | set(self._streams)) if self.read_only else sorted(saved)

    def save(self, name: str, force: bool = False) -> None:
        """Persist a stream now (force) or when its last save is older than `save_interval_s`."""
        # Lock order is stream lock -> self._lock (classify saves while holding its stream), so the
        # stream's own lock is taken by `mem.save` only after self._lock is released.
        with self._lock:
            mem = self._streams.get(name)
            if mem is None or not self.persistent or self.read_only:
                return
            now = time.monotonic()
            if not force and now - self._last_save.get(name, -np.inf) < self.save_interval_s:
                self._dirty.add(name)
                return
            self._last_save[name] = now
            self._dirty.discard(name)
        with mem.lock:  # the stream's lock, then self._lock (the order classify takes them in)
            with self._lock:
                if self._streams.get(name) is not mem:  # reset meanwhile: its file must stay deleted
                    return
            try:
                mem.save(self.stream_path(name))
            except OSError as exc:
                # Kept in this process and saved at a later save: the answer that wrote it stands (a full disk
                # under $VMEM_HOME had lost a classify's answers to a traceback).
                with self._lock:
                    self._dirty.add(name)
                log.warning("DMN stream %r could not be saved (%s); it is kept here and saved again later", name,
                            os_error_reason(exc))

    def flush(self) -> None:
        """Save every stream with unsaved updates."""
        for name in sorted(self._dirty):
            self.save(name, force=True)

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except OSError as exc:  # e.g. the directory went away with a temporary memory
            log.warning("could not save DMN streams %s: %s", sorted(self._dirty), exc)

    def close(self) -> None:
        """Save what is unsaved, then never write again: the memory is closed. A memory opened again in this
        process (a notebook's cell run twice) has a classifier of its own, whose newer saves this one's exit
        handler had overwritten with its older state."""
        atexit.unregister(self._flush_at_exit)
        self._flush_at_exit()
        with self._lock:
            self.persistent = False  # save() is a no-op from now on
            self._streams.clear()

    def rename_label(self, old: str, new: str) -> int:
        """Carry every stream's entries for label `old` over to `new` (the labelled memory's class renamed or
        merged: a queue of a label the memory no longer holds is emptied at the next classify). Returns the
        entries kept, over all streams."""
        kept = 0
        for name in self.streams():
            stream = self.stream(name)
            if old in stream.counts():  # a full stream is tens of MB: only those that change are written
                kept += stream.rename_label(old, new)
                self.save(name, force=True)
        return kept

    def drop_labels(self, gone: set[str]) -> int:
        """Empty every stream's queues of these labels (forgotten from the labelled memory) and save the streams
        that change, so their files no longer hold those entries' features. Returns the entries removed."""

        def drop(stream: DynamicMemory) -> int:
            with stream.lock:  # a label a classify writes meanwhile must not be emptied with the forgotten ones
                held = set(stream.counts())
                return stream.drop_labels_except(held - gone) if held & gone else 0

        return self._drop_from_streams(drop, "the labels forgotten")

    def drop_similar(self, feature: np.ndarray, min_similarity: float) -> int:
        """Remove from every stream the query features at least `min_similarity` similar to `feature`, or to any
        row of a [n, dim] array (a photo and its copies forgotten by likeness: `VisualMemory.forget_like`; images
        forgotten by path or id: `VisualMemory.forget`), and save the streams that change, so their files no
        longer hold them. Returns the entries removed."""
        return self._drop_from_streams(
            lambda stream: stream.drop_similar(feature, min_similarity) if stream.dim == feature.shape[-1] else 0,
            "the queries like the images forgotten")

    def held_features(self) -> np.ndarray:
        """Every stream's query features [n, dim] (streams of another encoder's features left out)."""
        dim = self.store.meta.featurizer.dim
        held = [np.zeros((0, dim), np.float32)]
        for name in self.streams():
            try:
                held.append(self.stream(name).features())
            except ValueError:  # another encoder's stream: its classify says so, and it holds none of these
                continue
        return np.concatenate(held)

    def _drop_from_streams(self, drop: Callable[[DynamicMemory], int], what: str) -> int:
        """`drop` entries from every stream, saving those it changed; the entries removed."""
        removed = 0
        for name in self.streams():
            try:
                stream = self.stream(name)
            except Exception as exc:  # another encoder's stream, a file that does not load: its classify says so
                log.warning("DMN stream %r left as it is (%s): reset it (vmem dmn reset) to drop %s", name, exc, what)
                continue
            if dropped := drop(stream):
                removed += dropped
                self.save(name, force=True)
        return removed

    def reset(self, name: str) -> bool:
        """Empty a stream and delete its file; True when there was one. MemoryReadOnlyError on a memory opened
        read-only: the file is the writable memory's."""
        self.store.check_writable()
        path = self.stream_path(name)
        with self._lock:
            self._dirty.discard(name)
            self._last_save.pop(name, None)
            mem = self._streams.pop(name, None)
            existed = self.persistent and path.exists()
        # Under the stream's own lock (taken outside self._lock: see `save`): a save already writing finishes
        # first, and then its file goes; one not yet begun finds the stream gone and writes nothing.
        with mem.lock if mem is not None else contextlib.nullcontext():
            if self.persistent:
                path.unlink(missing_ok=True)
            if mem is not None:
                mem.reset()
        return existed or mem is not None

    # ---------------------------------------------------------------- parts

    def resolve_mode(self, mode: Mode) -> Literal["zero-shot", "few-shot", "memory-only"]:
        if mode == "memory-only":
            return mode
        if mode == "auto":  # decided from the stored name, so memory-only never loads the encoder
            return "few-shot" if self.store.meta.featurizer.name.startswith("clip") else "memory-only"
        if not self.store.meta.featurizer.name.startswith("clip") or not hasattr(self.featurizer, "embed_text"):
            raise ValueError(f"DMN {mode} mode needs a CLIP featurizer (text encoder); this memory uses "
                             f"{self.store.meta.featurizer.name}: use mode memory-only")
        return mode

    def text_probs(self, vectors: np.ndarray, classes: Sequence[str], names: dict[str, str],
                   opts: DmnOptions) -> np.ndarray:
        """P_text = softmax(scale * f W^T) with a prompt-ensemble W for these classes (cached)."""
        prompts = tuple(names.get(c, c.replace("_", " ")) for c in classes)
        key = (prompts, opts.templates)
        if key not in self._text_cache:
            self._text_cache[key] = text_classifier(self.featurizer.embed_text, prompts, opts.templates)
        w = self._text_cache[key]
        return softmax(opts.scale * (np.asarray(vectors, np.float64) @ w.T.astype(np.float64)))

    def static_probs(self, vectors: np.ndarray, classes: Sequence[str], opts: DmnOptions,
                     labels: Sequence[str] | None, exact: bool) -> tuple[np.ndarray, list[list[Neighbor]],
                                                                         list[np.ndarray]]:
        """P_static from one wide search per query; also the neighbours and their readout weights."""
        neighbor_lists = self.store.query_batch(vectors, opts.static_k, labels, exact)
        ids = list(dict.fromkeys(n.id for ns in neighbor_lists for n in ns))
        # Searches return no vectors; one retrieve of the union fetches the keys the readout needs.
        keys = {p.id: p.vector for p in self.store.retrieve(ids, with_vectors=True)} if ids else {}
        index = {c: i for i, c in enumerate(classes)}
        probs = np.zeros((len(vectors), len(classes)))
        weights = []
        for qi, (q, ns) in enumerate(zip(vectors, neighbor_lists, strict=True)):
            ns_ok = [n for n in ns if keys.get(n.id) is not None]
            cls = np.array([index.get(n.label, -1) for n in ns_ok], dtype=np.int64)
            kv = np.array([keys[n.id] for n in ns_ok], dtype=np.float32).reshape(-1, len(q))
            chosen = static_entries(kv, cls, opts.static_cap)
            probs[qi] = readout(q, chosen.keys, chosen.class_ids, len(classes), opts.beta, opts.scale)
            # Per neighbour, the readout weight it carried (0 past the per-class cap).
            w = np.zeros(len(ns_ok))
            w[chosen.index] = np.exp(-opts.beta * (1.0 - np.array([ns_ok[j].similarity for j in chosen.index])))
            weights.append(w)
            neighbor_lists[qi] = ns_ok
        return probs, neighbor_lists, weights

    # ---------------------------------------------------------------- classify

    def classify(
        self,
        vectors: np.ndarray,
        stream: str | None = None,
        options: DmnOptions | None = None,
        labels: Sequence[str] | None = None,
        sources: Sequence[str | None] | None = None,
        exact: bool = False,
    ) -> list[Classification]:
        """Classify embedded queries in order; with a stream, each is written to it, then read out.

        Args:
            vectors: float32 [n, dim], L2-normalised, from the memory's featurizer.
            stream: the dynamic memory's name; None leaves the dynamic memory off.
            options: `DmnOptions` (None: defaults).
            labels: only these classes compete.
        """
        opts = options or DmnOptions()
        mode = self.resolve_mode(opts.mode)
        # The text prompts read class names: a classes file's, else the memory's own (vmem build --label-names).
        names = read_class_names(opts.classes_file) if opts.classes_file else dict(self.store.meta.label_names)
        stored = list(self.store.label_counts())
        classes = list(dict.fromkeys(labels)) if labels else (stored or list(names))
        if not classes:
            raise ValueError("the memory holds no labels: give labels (or a classes file) to classify with DMN")
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.store.meta.featurizer.dim)
        n = len(vectors)
        alpha_text = opts.alpha_text if mode != "memory-only" else 0.0
        alpha_static = opts.alpha_static if mode != "zero-shot" else 0.0
        p_text = self.text_probs(vectors, classes, names, opts) if alpha_text or mode == "zero-shot" else None
        p_static, neighbor_lists, weights = (self.static_probs(vectors, classes, opts, labels, exact)
                                             if mode != "zero-shot" else (None, [[] for _ in range(n)],
                                                                          [np.zeros(0)] * n))
        dyn = self.stream(stream, opts.slots) if stream is not None else None
        # L is fixed when a stream is made (created, or loaded from disk): an explicit other L would be ignored.
        if dyn is not None and "slots" in opts.model_fields_set and dyn.slots != opts.slots:
            raise ValueError(f"DMN stream {stream!r} has {counted(dyn.slots, 'slot')} per class, not {opts.slots}: "
                             "reset the stream to change it")
        if dyn is not None and stored:  # whatever the filter: a forgotten label named in it must not come back
            dyn.drop_labels_except(set(stored))  # forgotten labels leave the dynamic memory too
        # Pseudo-labels come from the parts that do not read the dynamic memory (text and/or static).
        base_parts = [(alpha_text, p_text), (alpha_static, p_static)]
        if not any(a and p is not None for a, p in base_parts):
            base_parts = [(1.0, p_text), (1.0, p_static)]
        results = []
        lock = dyn.lock if dyn is not None else threading.RLock()
        with lock:
            for i in range(n):
                base = fuse([(a, None if p is None else p[i]) for a, p in base_parts])
                has_base = base.sum() > 0
                written = None
                ent = float(entropy(base)) if has_base else None
                pseudo = classes[int(np.argmax(base))] if has_base else None
                p_dyn = None
                if dyn is not None:
                    if opts.update and pseudo is not None and ent is not None:
                        written = dyn.write(vectors[i], pseudo, ent)
                    p_dyn = dyn.probabilities(vectors[i], classes, opts.beta, opts.scale)
                parts = {"text": (alpha_text, None if p_text is None else p_text[i]),
                         "dynamic": (opts.alpha_dynamic, p_dyn),
                         "static": (alpha_static, None if p_static is None else p_static[i])}
                results.append(self._result(parts, classes, neighbor_lists[i], weights[i], mode, stream,
                                            pseudo, ent, written, sources[i] if sources else None, opts))
            if dyn is not None and opts.update and stream is not None:
                self.save(stream)
        return results

    def _result(self, parts: dict[str, tuple[float, np.ndarray | None]], classes: Sequence[str],
                neighbors: list[Neighbor], weights: np.ndarray, mode: str, stream: str | None,
                pseudo: str | None, ent: float | None, written: bool | None, source: str | None,
                opts: DmnOptions) -> Classification:
        live = [(a, p) for a, p in parts.values() if p is not None and a and p.sum() > 0]
        p = fuse(live) if live else np.zeros(len(classes))
        order = np.argsort(-p, kind="stable")
        label = classes[int(order[0])] if p.sum() > 0 else None
        scores = {classes[j]: float(p[j]) for j in order if p[j] >= MIN_SCORE or j == order[0]} if label else {}
        top = {name: {classes[j]: round(float(q[j]), 6) for j in np.argsort(-q, kind="stable")[:3] if q[j] > 0}
               for name, (a, q) in parts.items() if q is not None}
        votes = [NeighborVote(id=nb.id, label=nb.label, source=nb.source, similarity=nb.similarity,
                              weight=float(w), rank=r) for r, (nb, w) in enumerate(zip(neighbors, weights,
                                                                                       strict=True))]
        sims = np.array([nb.similarity for nb in neighbors])
        details = DmnDetails(mode=mode, stream=stream,
                             alpha={name: float(a) for name, (a, q) in parts.items() if q is not None},
                             parts=top, pseudo_label=pseudo, entropy=ent, written=written)
        return Classification(source=source, label=label, scores=scores, neighbors=votes,
                              vote=VoteSettings(rule=DMN_RULE, k=opts.static_k, origin="explicit"),
                              novelty=float(np.mean(1.0 - sims)) if len(sims) else None, dmn=details)


__all__ = ["DMN_RULE", "DmnClassifier", "DmnOptions", "dmn_home", "memory_key", "read_class_names"]
