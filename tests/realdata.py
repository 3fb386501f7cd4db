"""Real Tiny-ImageNet features with EfficientNet-Lite0, computed once and cached by file content."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval import LabelledImage, scan_imagefolder
from retrieval.feature_cache import FeatureCache


@dataclass
class LabelledFeatures:
    items: list[LabelledImage]
    features: np.ndarray  # [n, dim], aligned with items

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]


def val_sample(root: Path, n: int, seed: int = 0) -> list[LabelledImage]:
    """A fixed sample of `val` (same images on every machine: sorted, then seeded)."""
    items = scan_imagefolder(root / "val")
    return sorted(random.Random(seed).sample(items, n), key=lambda it: it.source)


def cached_features(cache_dir: Path, featurizer, items: list[LabelledImage]) -> LabelledFeatures:
    from tqdm import tqdm

    cache = FeatureCache(cache_dir, featurizer)
    with tqdm(total=len(items), desc=f"features {featurizer.name}", unit="img", mininterval=5) as bar:
        feats, ok, failures = cache.features_for([it.source for it in items], on_batch=bar.update)
    assert not failures, failures[:3]
    return LabelledFeatures([items[i] for i in ok], feats)
