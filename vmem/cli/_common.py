"""Options and helpers shared by the command groups."""

from __future__ import annotations

import random
from enum import StrEnum
from pathlib import Path
from typing import Annotated, get_args

import typer

from retrieval import FeaturizerError, IndexSettings, MemoryError
from retrieval.images import is_image_path

MemoryOpt = Annotated[Path, typer.Option("--memory", "-m", help="embedded memory directory")]
QdrantUrlOpt = Annotated[
    str | None, typer.Option("--qdrant-url", help="use a Qdrant server (http://host:6333) instead")
]
DEFAULT_MEMORY = Path("memory")
# Derived from IndexSettings so the CLI offers exactly what the store accepts.
Quantization = StrEnum("Quantization", {q: q for q in get_args(IndexSettings.model_fields["quantization"].annotation)})
VectorsDtype = StrEnum("VectorsDtype", {t: t for t in get_args(IndexSettings.model_fields["vectors_dtype"].annotation)})


def memory_location(memory: Path, qdrant_url: str | None) -> str:
    return qdrant_url or str(memory)


def open_memory(memory: Path, qdrant_url: str | None, featurizer: str | None = None, create: bool = False,
                index: IndexSettings | None = None):
    from vmem import VisualMemory

    try:
        return VisualMemory.open(memory_location(memory, qdrant_url), featurizer=featurizer, create=create,
                                 index=index)
    except (MemoryError, FeaturizerError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def expand_images(paths: list[Path], sample: int | None = None, seed: int = 0) -> list[Path]:
    """Files as given; directories expanded to their images (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
        else:
            out.append(p)
    if sample is not None and sample < len(out):
        out = sorted(random.Random(seed).sample(out, sample))
    return out
