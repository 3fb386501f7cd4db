"""Filling a feature cache in 4,096-row checkpoints: the append-only layout against the whole-file rewrite.

Before 2026-12 the cache kept features.npy and index.json and rewrote both whole at every checkpoint of a
long run (`vmem build --feature-cache`, `vmem eval`), so the bytes written grew with the square of the rows.
This times both ways on the same random rows, in one run, each into its own fresh folder:

    python docs/benchmarks/feature_cache_append.py [--rows 20000,40000,80000] [--dim 1280] [--repeats 3]

"whole" is the old checkpoint (np.save of the whole array and the whole JSON index, each written to a
temporary file, fsynced and renamed, as the old code did after this stop's durability fix); "append" is
FeatureCache._write_rows, the code in use. The two alternate in each repeat; seconds are medians over
the repeats (each repeat's in `*_s_all`). Prints a line per row count, then one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval import Featurizer, Preprocessing
from retrieval.feature_cache import FeatureCache
from retrieval.files import write_atomically

CHECKPOINT = 4096


class _Dim(Featurizer):
    """Only a name and a dimension: the cache needs no model to store rows."""

    name = "feature-cache-bench"
    preprocessing = Preprocessing(resize=8, crop=8)

    def __init__(self, dim: int) -> None:
        self.dim = dim
        super().__init__("cpu")

    def forward(self, batch):  # never called: rows are given
        raise NotImplementedError


def _whole(folder: Path, chunks: list[tuple[np.ndarray, list[str]]]) -> int:
    features, index, written = np.zeros((0, chunks[0][0].shape[1]), np.float32), {}, 0
    for rows, hashes in chunks:
        start = len(features)
        features = np.concatenate([features, rows])
        index.update({h: start + i for i, h in enumerate(hashes)})
        write_atomically(folder / "features.npy", lambda fh, whole=features: np.save(fh, whole))
        text = json.dumps(index)
        write_atomically(folder / "index.json", text)
        written += features.nbytes + len(text)
    return written


def _append(folder: Path, chunks: list[tuple[np.ndarray, list[str]]], dim: int) -> int:
    cache = FeatureCache(folder, _Dim(dim))
    written = 0
    for rows, hashes in chunks:
        with cache._locked():
            cache._write_rows(rows, hashes)
            cache._load()
        written += rows.nbytes + 65 * len(hashes)
    return written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="20000,40000,80000")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = {"dim": args.dim, "checkpoint_rows": CHECKPOINT, "repeats": args.repeats, "runs": []}
    rng = np.random.default_rng(0)
    for n in [int(x) for x in args.rows.split(",")]:
        chunks = []
        for start in range(0, n, CHECKPOINT):
            m = min(CHECKPOINT, n - start)
            hashes = [hashlib.sha256(str(start + i).encode()).hexdigest() for i in range(m)]
            chunks.append((rng.standard_normal((m, args.dim)).astype(np.float32), hashes))
        row: dict = {"rows": n}
        for _ in range(args.repeats):
            for way in ("append", "whole"):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    written = _append(Path(tmp), chunks, args.dim) if way == "append" else _whole(Path(tmp), chunks)
                    row.setdefault(f"{way}_s_all", []).append(round(time.perf_counter() - t0, 2))
                    row[f"{way}_mb_written"] = round(written / 1e6)
        for way in ("append", "whole"):
            row[f"{way}_s"] = statistics.median(row[f"{way}_s_all"])
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
