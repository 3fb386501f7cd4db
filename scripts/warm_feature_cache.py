"""Compute (or reuse) EfficientNet-Lite0 features of Tiny-ImageNet train and val into the test cache."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FEATURE_CACHE, TINY_IMAGENET
from realdata import cached_features

from retrieval import load_featurizer, scan_imagefolder

feat = load_featurizer("efficientnet-lite0", device="cpu")
for split in sys.argv[1:] or ["train", "val"]:
    lf = cached_features(FEATURE_CACHE, feat, scan_imagefolder(TINY_IMAGENET / split))
    print(split, lf.features.shape, flush=True)
