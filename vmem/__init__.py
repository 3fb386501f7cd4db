"""vmem: a visual-memory image classifier whose knowledge can be added, removed and inspected."""

from .results import Classification, FailedImage, NeighborVote, VoteSettings
from .visual_memory import DEFAULT_FEATURIZER, VisualMemory, upload_source

__all__ = [
    "DEFAULT_FEATURIZER",
    "Classification",
    "FailedImage",
    "NeighborVote",
    "VisualMemory",
    "VoteSettings",
    "upload_source",
]
