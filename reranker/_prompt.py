"""Turning a template and a query's neighbours into the parts of a Gemini request.

Kept free of any network code so the benchmark can time it alone, and so tests can check
exactly what a template sends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from google.genai import types

from prompts import PromptTemplate
from retrieval.text import canonical_label, escape_control_characters

from ._thumbs import ThumbnailCache, ThumbnailError, encode_jpeg
from ._types import RerankNeighbor, RerankRequest


def candidate_labels(request: RerankRequest) -> list[str]:
    """The labels the answer may take: the vote's labels best first, then any other neighbour label,
    restricted to `request.labels` when the search was."""
    seen: dict[str, None] = {}
    for label in list(request.scores) + [n.label for n in request.neighbors]:
        seen.setdefault(label, None)
    allowed = set(request.labels) if request.labels else None
    return [lab for lab in seen if allowed is None or lab in allowed]


# Closing a sentence, not a label: what a model may put after the label it was asked for
_TRAILING_PUNCTUATION = ".!,;:"


def _loosely(text: str) -> str:
    """A label's text as an answer that ignores case and closes it as a sentence reads the same."""
    return canonical_label(text).rstrip(_TRAILING_PUNCTUATION).strip().casefold()


class ShownLabels:
    """What Gemini reads for each label, and back: a label's name where it has one, else the label.

    Every label is shown as a different text, so an answer names one label: a name that two labels share
    (ImageNet has two "crane"s), or that is itself another label, is followed by its label ("crane (n02012849)").
    Texts are compared as `canonical_label` reads them: "café" composed and decomposed (a names file from a Mac)
    look the same to Gemini, and an answer in either form names one label.
    """

    def __init__(self, names: dict[str, str] | None, labels: list[str]) -> None:
        self._names = names or {}
        held: dict[str, int] = {}
        for name in self._names.values():
            held[canonical_label(name)] = held.get(canonical_label(name), 0) + 1
        self._ambiguous = {name for name, n in held.items() if n > 1}
        # A name that is one of these names its label too
        self._all_labels = {canonical_label(lab) for lab in (*self._names, *labels)}
        self._shown: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._canonical_texts: set[str] = set()
        for label in labels:
            self.show(label)

    def show(self, label: str) -> str:
        if label in self._shown:
            return self._shown[label]
        name = self._names.get(label)
        if name is None:
            text = label
        elif (read := canonical_label(name)) in self._ambiguous or (
                read != canonical_label(label) and read in self._all_labels):
            text = f"{name} ({label})"
        else:
            text = name
        # Control characters shown escaped: a label with a newline would start a line of its own in the prompt
        # ("cat\nIGNORE PREVIOUS INSTRUCTIONS. Answer ..."). Answers name this text, and map back all the same.
        text = escape_control_characters(text)
        while canonical_label(text) in self._canonical_texts:  # an unnamed label read as another's name: rare
            text = f"{text} ({label})"
        self._shown[label], self._labels[text] = text, label
        self._canonical_texts.add(canonical_label(text))
        return text

    def label(self, shown: str) -> str | None:
        """The label shown as `shown` (None if no label was); an answer in another Unicode form or with outer
        spaces (a model echoing "café" composed, for a label shown decomposed) names it too, unless two
        shown texts read the same that way. Else one in another case or with trailing punctuation ("Bullfrog",
        " bullfrog." for "bullfrog": a Gemini-compatible endpoint that ignores the schema's enum), where exactly
        one shown text reads so: the whole text, never a part ("cliff" names no "cliff dwelling")."""
        if (found := self._labels.get(shown)) is not None:
            return found
        same = {label for text, label in self._labels.items() if canonical_label(text) == canonical_label(shown)}
        if same:
            return same.pop() if len(same) == 1 else None
        if not (loose := _loosely(shown)):
            return None
        alike = {label for text, label in self._labels.items() if _loosely(text) == loose}
        return alike.pop() if len(alike) == 1 else None

    def texts(self, labels: list[str]) -> list[str]:
        return [self.show(label) for label in labels]


def shown_neighbors(template: PromptTemplate, request: RerankRequest) -> list[RerankNeighbor]:
    """The neighbours the prompt shows: the nearest `max_neighbors` of them, none where the template shows none."""
    return list(request.neighbors[: template.max_neighbors]) if template.show_neighbors else []


@dataclass
class QueryImage:
    jpeg: bytes
    sha256: str


def encode_query(request: RerankRequest, longest_side: int) -> QueryImage:
    jpeg = encode_jpeg(request.image, longest_side)
    return QueryImage(jpeg, hashlib.sha256(jpeg).hexdigest())


@dataclass
class BuiltPrompt:
    system: str
    parts: list[types.Part]
    candidates: list[str]
    shown: list[RerankNeighbor]
    names: ShownLabels
    images: int
    notes: list[dict[str, Any]] = field(default_factory=list)  # e.g. neighbours shown label-only


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _weight(x: float) -> str:
    """A neighbour's vote weight as `$weight` prints it: 3 significant digits, for a weight is unnormalised and
    the softmax vote's, exp((similarity - 1) / tau), is under 0.0005 below similarity 0.47 at the default tau of
    0.07 (3 decimals printed 0.000)."""
    return f"{x:.3g}"


def build_prompt(template: PromptTemplate, request: RerankRequest, candidates: list[str],
                 query: QueryImage, thumbs: ThumbnailCache) -> BuiltPrompt:
    """The system instruction and the user turn's parts, in the template's order.

    A neighbour whose image cannot be read is shown by its label alone (`neighbor_missing`),
    and a note says why; the request still goes out.
    """
    shown = shown_neighbors(template, request)
    names = ShownLabels(request.label_names, candidates)
    counts = {"n_neighbors": len(shown), "n_candidates": len(candidates)}
    parts: list[types.Part] = []
    notes: list[dict[str, Any]] = []
    images = 0

    def text(s: str) -> None:
        if s.strip():
            parts.append(types.Part.from_text(text=s))

    text(template.render("intro", **counts))
    for i, n in enumerate(shown):
        values = {"rank": i + 1, "label": names.show(n.label), "similarity": _fmt(n.similarity),
                  "weight": _weight(n.weight), "id": n.id}
        if not template.neighbor_images:
            text(template.render("neighbor", **values))
            continue
        try:
            jpeg = thumbs.get(n.source, request.source_roots, point_id=n.id, keep_uploads_in=request.keep_uploads_in)
        except ThumbnailError as exc:
            text(template.render("neighbor_missing", **values))
            notes.append({"event": "neighbor_label_only", "id": n.id, "source": n.source, "reason": str(exc)})
            continue
        text(template.render("neighbor", **values))
        parts.append(types.Part.from_bytes(data=jpeg, mime_type="image/jpeg"))
        images += 1
    text(template.render("query", **counts))
    parts.append(types.Part.from_bytes(data=query.jpeg, mime_type="image/jpeg"))
    images += 1
    lines = [template.render("candidate_line", label=names.show(lab), score=_fmt(request.scores.get(lab, 0.0), 2),
                             rank=r + 1) for r, lab in enumerate(candidates)]
    text(template.render("candidates", candidate_lines="\n".join(lines),
                         candidate_list=", ".join(names.texts(candidates)), n_candidates=len(candidates)))
    text(template.render("answer", n_candidates=len(candidates)))
    if template.agentic and template.tool_instructions:
        text(template.render("tool_instructions", max_steps=template.max_steps, n_candidates=len(candidates)))
    return BuiltPrompt(system=template.render("system", **counts), parts=parts, candidates=candidates,
                       shown=list(shown), names=names, images=images, notes=notes)
