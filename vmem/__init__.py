"""vmem: a visual-memory image classifier whose knowledge can be added, removed and inspected.

The errors a user of `VisualMemory` meets, to catch by name:
    MemoryStoreError         no memory there, it is open in another process, or it is closed
                             (`retrieval.MemoryError`; named so as not to shadow Python's own MemoryError); of it:
      NoMemoryError          no memory at the location: make one with `create=True` (or `vmem build`)
      MemoryInUseError       open in another process (or by another object here): retry once it lets go (`wait=`)
      MemoryFullError        an edit refused before any write: its disk has too little room
      MemoryUnavailableError its Qdrant server did not answer: retry once it does
      MemoryDamagedError     its engine's files do not load, or fail a search: restore a backup, or build again
    FeaturizerMismatchError  an encoder (or retrained weights) other than the memory's own
    ImageDecodeError         an image that does not decode (`classify`; `classify_many` and `add` skip and report)
    NoSuchLabelsError        a label filter that no point passes; a label to forget or relabel the memory never had
    UnknownPointError        a point id the memory does not hold (`near_duplicates`, `forget_like`)
    NothingToSearchError     a classify of a memory that holds no point a search can return (empty, all pruned)
    UnknownTemplateError, TemplateLoadError   a re-ranker template that is not there or does not load
    VoteOptionError          a vote option classify does not take (k < 1, an unknown rule), in one line naming it
Other bad options are `ValueError`s (VoteOptionError and NoSuchLabelsError are `ValueError`s too).
"""

from importlib import metadata as _metadata

from prompts import TemplateLoadError, UnknownTemplateError
from retrieval import (
    FeaturizerMismatchError,
    ImageDecodeError,
    MemoryDamagedError,
    MemoryFullError,
    MemoryInUseError,
    MemoryStoreError,
    MemoryUnavailableError,
    NoMemoryError,
)
from retrieval.journal import JournalEntry

from .diff import MemoryDiff
from .results import (
    AddResult,
    BackupResult,
    Classification,
    DmnDetails,
    FailedImage,
    FewPoints,
    HistoryPage,
    MemoryPoint,
    NearDuplicate,
    NeighborVote,
    PointPage,
    ReembedResult,
    SkippedPoint,
    VoteSettings,
    WhyNot,
    WhyNotPoint,
)
from .visual_memory import (
    COPY_SIMILARITY,
    DEFAULT_FEATURIZER,
    NoSuchLabelsError,
    NothingToSearchError,
    UnknownPointError,
    VisualMemory,
    VoteOptionError,
    upload_content,
    upload_source,
)

try:
    __version__ = _metadata.version("vmem")
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "COPY_SIMILARITY",
    "DEFAULT_FEATURIZER",
    "AddResult",
    "BackupResult",
    "Classification",
    "DmnDetails",
    "FailedImage",
    "FeaturizerMismatchError",
    "FewPoints",
    "HistoryPage",
    "ImageDecodeError",
    "JournalEntry",
    "MemoryDamagedError",
    "MemoryDiff",
    "MemoryFullError",
    "MemoryInUseError",
    "MemoryPoint",
    "MemoryStoreError",
    "MemoryUnavailableError",
    "NearDuplicate",
    "NeighborVote",
    "NoMemoryError",
    "NoSuchLabelsError",
    "NothingToSearchError",
    "PointPage",
    "ReembedResult",
    "SkippedPoint",
    "TemplateLoadError",
    "UnknownPointError",
    "UnknownTemplateError",
    "VisualMemory",
    "VoteOptionError",
    "VoteSettings",
    "WhyNot",
    "WhyNotPoint",
    "__version__",
    "upload_content",
    "upload_source",
]
