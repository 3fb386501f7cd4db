"""Images to vectors, and vectors to labelled neighbours: featurizers, the Qdrant memory, voting."""

import sys
from typing import TYPE_CHECKING, Any

if sys.platform == "win32":  # one sentence, not "No module named 'fcntl'" from somewhere inside
    raise ImportError("vmem runs on Linux and macOS: a memory's files are locked with fcntl, which Windows lacks. "
                      "On Windows, run it under WSL.")

from . import _openmp  # noqa: F401 - first: it sets libgomp's spin count before torch is imported
from .images import ImageDecodeError, ImageInput, load_image
from .ingest import (
    BuildReport,
    DatasetError,
    LabelledImage,
    build_memory,
    find_label_names_file,
    first_occurrences,
    imagenet_label_names,
    read_label_names,
    read_labelled,
    read_manifest,
    scan_imagefolder,
    unique_sources,
)
from .preprocessing import EmbedFailure, EmbedResult, FeaturizerError, FeaturizerSpec, Preprocessing
from .store import (
    EdgeMemoryStore,
    FeaturizerMismatchError,
    IndexSettings,
    IndexUpkeep,
    MemoryDamagedError,
    MemoryError,
    MemoryFullError,
    MemoryGoneError,
    MemoryInUseError,
    MemoryMeta,
    MemoryReadOnlyError,
    MemoryStore,
    MemoryStoreError,
    MemoryUnavailableError,
    MemoryWriteFailedError,
    Neighbor,
    NoMemoryError,
    QdrantServerStore,
    StoredPoint,
    is_local_source,
    normalize_source,
    open_store,
    point_id_for,
)
from .voting import DEFAULT_ALPHA, DEFAULT_TAU, VoteOutcome, VoteRule, neighbor_weights, vote, vote_all_k, vote_last_k

if TYPE_CHECKING:
    from .featurizers import (
        Dinov2Featurizer,
        EfficientNetLiteFeaturizer,
        Featurizer,
        featurizer_names,
        featurizer_spec,
        load_featurizer,
    )

# The encoders import torch (a second or more): loaded when first asked for, so that the commands and services that
# only read or edit a memory start without it.
_FROM_FEATURIZERS = ("Dinov2Featurizer", "EfficientNetLiteFeaturizer", "Featurizer", "featurizer_names",
                     "featurizer_spec", "load_featurizer")


if not TYPE_CHECKING:  # a module __getattr__ seen by a type checker makes every misspelt name exist, as Any

    def __getattr__(name: str) -> Any:
        if name in _FROM_FEATURIZERS:
            from ._uninterrupted import interrupt_after

            with interrupt_after():  # a Ctrl-C halfway through torch's import left it unimportable in the process
                from . import featurizers

            return getattr(featurizers, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TAU",
    "BuildReport",
    "DatasetError",
    "Dinov2Featurizer",
    "EdgeMemoryStore",
    "EfficientNetLiteFeaturizer",
    "EmbedFailure",
    "EmbedResult",
    "Featurizer",
    "FeaturizerError",
    "FeaturizerMismatchError",
    "FeaturizerSpec",
    "ImageDecodeError",
    "ImageInput",
    "IndexSettings",
    "IndexUpkeep",
    "LabelledImage",
    "MemoryDamagedError",
    "MemoryError",
    "MemoryFullError",
    "MemoryGoneError",
    "MemoryInUseError",
    "MemoryMeta",
    "MemoryReadOnlyError",
    "MemoryStore",
    "MemoryStoreError",
    "MemoryUnavailableError",
    "MemoryWriteFailedError",
    "Neighbor",
    "NoMemoryError",
    "Preprocessing",
    "QdrantServerStore",
    "StoredPoint",
    "VoteOutcome",
    "VoteRule",
    "build_memory",
    "featurizer_names",
    "featurizer_spec",
    "find_label_names_file",
    "first_occurrences",
    "imagenet_label_names",
    "is_local_source",
    "load_featurizer",
    "load_image",
    "neighbor_weights",
    "normalize_source",
    "open_store",
    "point_id_for",
    "read_label_names",
    "read_labelled",
    "read_manifest",
    "scan_imagefolder",
    "unique_sources",
    "vote",
    "vote_all_k",
    "vote_last_k",
]
