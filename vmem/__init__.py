"""vmem: a visual-memory image classifier whose knowledge can be added, removed and inspected."""

from .results import AddResult, Classification, FailedImage, MemoryPoint, NeighborVote, PointPage, VoteSettings
from .visual_memory import DEFAULT_FEATURIZER, NoSuchLabelsError, VisualMemory, upload_source

__all__ = [
    "DEFAULT_FEATURIZER",
    "AddResult",
    "Classification",
    "FailedImage",
    "MemoryPoint",
    "NeighborVote",
    "NoSuchLabelsError",
    "PointPage",
    "VisualMemory",
    "VoteSettings",
    "upload_source",
]
