"""Novelty, and the one rule that turns it into a decision: is this query unlike what the memory holds?

Every `Classification` carries `novelty`, the mean cosine distance (1 - cos) to its k neighbours. A query is
out of distribution when its novelty is above a threshold calibrated on the memory itself: the first
`OOD_SAMPLE_SIZE` points in id order (ids are UUIDv5 hashes of sources, so a pseudo-random sample, whatever
order the memory was built in), hard-pruned ones left out, each query the memory with its own point left out,
and the threshold is the `OOD_PERCENTILE` percentile of their novelty. `VisualMemory.novelty_threshold`,
`vmem classify --ood`, the HTTP service's `out_of_distribution` and `vmem experiment novelty` all read it here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

# The percentile of the memory's own novelty above which a query is out of distribution, and how many memory
# points are sampled to measure it (the HTTP service's VMEM_OOD_PERCENTILE and VMEM_OOD_SAMPLE_SIZE default to these).
OOD_PERCENTILE = 99.0
OOD_SAMPLE_SIZE = 256


def check_calibration(sample_size: int, percentile: float) -> None:
    """ValueError for a calibration that could not be made: fewer than 2 sample points, a percentile outside 0-100."""
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 2:
        raise ValueError(f"sample_size must be a whole number of at least 2 (got {sample_size!r}): a threshold is a "
                         "percentile of the sampled points' novelty")
    if not 0 <= percentile <= 100:  # NaN too
        raise ValueError(f"percentile must be between 0 and 100 (got {percentile!r})")


def self_excluded_novelties(own: Sequence[Hashable], hit_ids: Sequence[Sequence[Hashable]],
                            hit_similarities: Sequence[Sequence[float]], k: int) -> list[float]:
    """Each sampled point's novelty among the others: the mean cosine distance to its first k hits that are not
    itself (search k + 1 to have k). A point with no other hit has none, and is left out."""
    novelties = []
    for point, ids, sims in zip(own, hit_ids, hit_similarities, strict=True):
        others = [s for i, s in zip(ids, sims, strict=True) if i != point][:k]
        if others:
            novelties.append(float(np.mean(1.0 - np.asarray(others, dtype=np.float64))))
    return novelties


def threshold_of(novelties: Sequence[float] | np.ndarray, percentile: float = OOD_PERCENTILE) -> float | None:
    """The novelty above which a query is out of distribution; None with no sampled novelty to read it from."""
    if len(novelties) == 0:
        return None
    return float(np.percentile(np.asarray(novelties, dtype=np.float64), percentile))


def out_of_distribution(novelty: float | None, threshold: float | None) -> bool | None:
    """Whether a query of this novelty is out of distribution: above the threshold (None when either is unknown)."""
    return None if threshold is None or novelty is None else bool(novelty > threshold)


__all__ = ["OOD_PERCENTILE", "OOD_SAMPLE_SIZE", "check_calibration", "out_of_distribution",
           "self_excluded_novelties", "threshold_of"]
