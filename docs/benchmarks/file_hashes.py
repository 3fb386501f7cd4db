"""Finding cached features: hashing every file against the remembered hashes of unchanged files.

    python docs/benchmarks/file_hashes.py [--files 5000] [--kb 110] [--repeats 3] [--cold]

Writes FILES files of KB kilobytes (an ImageNet photo averages ~110 KB) dated a minute back, lets a
FeatureCache remember their hashes, then times, in each repeat, hashing them all (what every
`features_for` did before) and a fresh cache object's lookup by path, size, mtime and inode (what it
does now). With --cold (root only) the page cache is dropped before one more run of each. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retrieval import Featurizer, Preprocessing
from retrieval.feature_cache import FeatureCache, file_sha256


class _Unused(Featurizer):
    name = "file-hashes-bench"
    dim = 3
    preprocessing = Preprocessing(resize=8, crop=8)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # never called: nothing is embedded
        raise NotImplementedError


def _drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--kb", type=int, default=110)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    files = [root / f"{i}.jpg" for i in range(args.files)]
    past = time.time() - 60
    for f in files:
        f.write_bytes(rng.bytes(args.kb * 1000))
        os.utime(f, (past, past))
    encoder = _Unused("cpu")
    FeatureCache(root / "cache", encoder)._content_hashes(files)  # remembered from now on

    def remembered() -> None:
        cache = FeatureCache(root / "cache", encoder)
        cache._load_file_hashes()
        cache._content_hashes(files)

    ways = {"hash_every_file": lambda: [file_sha256(f) for f in files], "remembered": remembered}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            t0 = time.perf_counter()
            way()
            seconds[name].append(round(time.perf_counter() - t0, 3))
    out = {"files": args.files, "kb": args.kb, "repeats": args.repeats,
           **{f"{name}_s": statistics.median(v) for name, v in seconds.items()},
           **{f"{name}_s_all": v for name, v in seconds.items()}}
    if args.cold:
        for name, way in ways.items():
            _drop_page_cache()
            t0 = time.perf_counter()
            way()
            out[f"{name}_cold_s"] = round(time.perf_counter() - t0, 3)
    shutil.rmtree(root)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
