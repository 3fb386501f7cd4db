"""What goes into a re-ranking and what comes out (pydantic at the package boundary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field


class RerankNeighbor(BaseModel):
    """One memory point shown to the VLM."""

    id: str
    label: str
    source: str
    similarity: float
    weight: float = 0.0
    rank: int = Field(default=0, description="0 for the nearest")


@dataclass
class RerankRequest:
    """One query: its decoded image, its neighbours best first, and the vote they gave.

    `vector` (the query's feature vector) is needed only by the agentic tools, which search
    the memory again; `labels` restricts the answer like it restricted the search.
    """

    image: Image.Image
    neighbors: list[RerankNeighbor]
    scores: dict[str, float]
    vote_label: str | None
    vector: np.ndarray | None = None
    labels: list[str] | None = None
    source: str | None = None
    template: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Directories neighbour images may be read from (None: anywhere). A source is data: without this,
    # anyone able to write the memory could have any image on the host sent to the VLM.
    source_roots: list[str] | None = None
    # The memory's folder, where a service keeps each uploaded image as sent, by point id (VMEM_KEEP_UPLOADS): an
    # `upload:` neighbour's image is read there, else (None, or not kept) it is shown by its label alone.
    keep_uploads_in: str | None = None
    # label -> the name Gemini reads in its place (WordNet ids say nothing to it); answers come back as labels.
    label_names: dict[str, str] | None = None


class Usage(BaseModel):
    """Tokens as counted by the API (`usageMetadata`), summed over every call a result needed."""

    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    total_tokens: int = 0
    images: int = Field(default=0, description="image parts sent")

    def add(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class RerankOutcome(BaseModel):
    """The re-ranker's decision for one query, or the vote with the reason it was kept."""

    label: str | None
    reranked: bool
    fallback_reason: str | None = None
    error: str | None = Field(default=None, description="the RerankError class behind a fallback")
    template: str | None = Field(default=None, description="name@version")
    template_hash: str | None = None
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cached: bool = False
    cache_checked: bool = Field(default=False,
                                description="the answer cache was looked up (a fallback may come before it)")
    attempts: int = Field(default=0, description="HTTP calls made for this result (0 on a cache hit)")
    latency_s: float = 0.0
    candidates: list[str] = Field(default_factory=list)
    trace: list[dict[str, Any]] = Field(default_factory=list, description="tool calls and notes, in order")


class RerankBatch(BaseModel):
    """Outcomes in request order, with the tokens they used in total."""

    outcomes: list[RerankOutcome]
    usage: Usage
    reranked: int
    cached: int
    fallbacks: dict[str, int] = Field(description="fallback count by error class")
