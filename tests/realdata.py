"""Real Tiny-ImageNet features with EfficientNet-Lite0, computed once and cached by file content."""

from __future__ import annotations

import fcntl
import functools
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval import LabelledImage, scan_imagefolder
from retrieval.feature_cache import FeatureCache, featurizer_key


@dataclass
class LabelledFeatures:
    items: list[LabelledImage]
    features: np.ndarray  # [n, dim], aligned with items

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]


# The realdata tests' memory: the first 30 train images of each of the 202 classes (6,060 of 20,200). A fresh
# machine (CI's, with an empty feature cache) embeds these and the 1,000-image val sample (the 600-image samples
# are among it): 7,060 images, a third of the 21,200 (all of train with the sample) the tests embedded before,
# which took ~340 s on 2 quiet cores and more on CI. The figures in docs/ are measured with all of train; each
# test says what it measured with this subset.
TRAIN_PER_CLASS = 30


@functools.cache
def _scanned(split: Path) -> tuple[LabelledImage, ...]:
    """A split's images, listed once per test run: listing train's 20,200 files took 2-3 s on 2 cores, and each
    real-data test (a dozen) listed it again, and val's 10,100 (1.5 s)."""
    return tuple(scan_imagefolder(split))


def train_subset(root: Path, per_class: int = TRAIN_PER_CLASS) -> list[LabelledImage]:
    """The first `per_class` images of each class of `train`, in `scan_imagefolder`'s order (sorted by file name:
    the same images on every machine)."""
    taken: Counter[str] = Counter()
    subset = []
    for it in _scanned(Path(root) / "train"):
        if taken[it.label] < per_class:
            taken[it.label] += 1
            subset.append(it)
    return subset


def val_sample(root: Path, n: int, seed: int = 0) -> list[LabelledImage]:
    """A fixed sample of `val` (same images on every machine: sorted, then seeded)."""
    items = list(_scanned(Path(root) / "val"))
    return sorted(random.Random(seed).sample(items, n), key=lambda it: it.source)


def cached_features(cache_dir: Path, featurizer, items: list[LabelledImage]) -> LabelledFeatures:
    """The items' features, read from the cache (computed on first use); the same items asked again in this run
    are answered from memory (no file looked up again), read-only so that no test changes another's data."""
    key = (str(cache_dir), featurizer_key(featurizer), tuple(items))
    if key not in _already_read:
        _already_read[key] = _read_features(Path(cache_dir), featurizer, items)
    found = _already_read[key]
    return LabelledFeatures(list(found.items), found.features)


_already_read: dict[tuple[str, str, tuple[LabelledImage, ...]], LabelledFeatures] = {}


def _read_features(cache_dir: Path, featurizer, items: list[LabelledImage]) -> LabelledFeatures:
    # One test worker embeds what the cache lacks while the other waits, then reads it: two pytest-xdist workers
    # embedding the same 7,060 images at once on a fresh machine would share its 2 cores and each take twice as long.
    # The lock file lies beside the cache, not in it, which is the product's folder.
    lock = Path(f"{cache_dir}.tests-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return _features_from_cache(cache_dir, featurizer, items)


def _features_from_cache(cache_dir: Path, featurizer, items: list[LabelledImage]) -> LabelledFeatures:
    from tqdm import tqdm

    cache = FeatureCache(cache_dir, featurizer)
    with tqdm(total=len(items), desc=f"features {featurizer.name}", unit="img", mininterval=5) as bar:
        feats, ok, failures = cache.features_for([it.source for it in items], on_batch=bar.update)
    assert not failures, failures[:3]
    feats.flags.writeable = False
    return LabelledFeatures([items[i] for i in ok], feats)
