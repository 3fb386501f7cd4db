"""How similar an image's copies are to it, against how similar distinct images are: the measurement behind
`VisualMemory.near_duplicates`' default threshold (`COPY_SIMILARITY`, `vmem forget --like`).

    python docs/benchmarks/near_copies.py [--classes 30] [--queries 300] [--featurizer efficientnet-lite0]
                                          [--cache .cache/features] [--pairs 10]

Memory: every train image of `--classes` Tiny-ImageNet classes chosen at random (100 each). Queries: `--queries`
of those images chosen at random; each is copied eight ways (JPEG re-encoded at quality 95, 75 and 50; resized
to twice its size and back; enlarged to twice its size and kept so, as JPEG at quality 95; PNG; the central
90 % crop; mirrored left to right), and each copy's cosine similarity to its original's feature is set against
the similarity of every memory image to its nearest *other* memory image (the closest a distinct image comes).
Prints a Markdown table and one JSON object; `--pairs N` also lists the N most similar distinct pairs (look at
them: a dataset holds some true duplicates, such as one file stored in two classes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retrieval import load_featurizer, scan_imagefolder

DATA = Path(os.environ.get("VMEM_TINY_IMAGENET", Path(__file__).resolve().parents[3] / "shared" / "data"
                           / "tiny-imagenet-200"))


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def copies(path: str) -> dict[str, bytes]:
    """The copies of one image a person might hold: re-saved, resized, cropped, mirrored."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    crop_w, crop_h = round(w * 0.9), round(h * 0.9)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return {
        "jpeg q95": _encoded(img, "JPEG", quality=95),
        "jpeg q75": _encoded(img, "JPEG", quality=75),
        "jpeg q50": _encoded(img, "JPEG", quality=50),
        "resized 2x and back": _encoded(img.resize((2 * w, 2 * h), Image.BICUBIC).resize((w, h), Image.BICUBIC),
                                        "PNG"),
        "enlarged 2x": _encoded(img.resize((2 * w, 2 * h), Image.BICUBIC), "JPEG", quality=95),
        "png": _encoded(img, "PNG"),
        "crop 90%": _encoded(img.crop((left, top, left + crop_w, top + crop_h)), "PNG"),
        "mirrored": _encoded(ImageOps.mirror(img), "PNG"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--featurizer", default="efficientnet-lite0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=0, help="list this many most similar distinct pairs")
    parser.add_argument("--cache", type=Path, default=None,
                        help="a feature cache (.cache/features) for the memory's features: all 202 classes in seconds")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    items = scan_imagefolder(args.data / "train")
    classes = sorted(rng.sample(sorted({it.label for it in items}), args.classes))
    memory = [it for it in items if it.label in classes]
    feat = load_featurizer(args.featurizer, device="cpu")
    started = time.perf_counter()
    if args.cache is not None:
        from retrieval.feature_cache import FeatureCache

        features, _, failures = FeatureCache(args.cache, feat).features_for([it.source for it in memory])
    else:
        res = feat.embed_many([it.source for it in memory], batch_size=64)
        features, failures = res.features, res.failures
    assert not failures, failures[:3]
    vectors = features / np.linalg.norm(features, axis=1, keepdims=True)
    embed_s = time.perf_counter() - started

    nearest_other = np.empty(len(vectors), dtype=np.float32)  # each memory image's most similar distinct image
    nearest_at = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), 2048):  # in blocks: all 20,200 at once would be 1.6 GB
        block = vectors[start : start + 2048] @ vectors.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        nearest_at[start : start + len(block)] = block.argmax(axis=1)
        nearest_other[start : start + len(block)] = block.max(axis=1)

    picked = rng.sample(range(len(memory)), args.queries)
    kinds: dict[str, list[float]] = {}
    beaten: dict[str, int] = {}  # copies more similar to another image than to their original
    for i in picked:
        made = copies(memory[i].source)
        feats = feat.embed(list(made.values()))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        own = feats @ vectors[i]
        others = feats @ vectors.T
        others[:, i] = -np.inf
        for kind, sim, best_other in zip(made, own, others.max(axis=1), strict=True):
            kinds.setdefault(kind, []).append(float(sim))
            beaten[kind] = beaten.get(kind, 0) + int(best_other >= sim)

    def stats(values) -> dict[str, float]:
        v = np.asarray(values)
        return {"min": round(float(v.min()), 4), "p1": round(float(np.percentile(v, 1)), 4),
                "median": round(float(np.median(v)), 4), "max": round(float(v.max()), 4)}

    out = {
        "featurizer": args.featurizer, "memory_images": len(memory), "classes": args.classes,
        "queries": args.queries, "seed": args.seed, "embed_seconds": round(embed_s, 1),
        "copy_to_original": {kind: {**stats(v), "nearer_another_image": beaten[kind]} for kind, v in kinds.items()},
        "nearest_distinct_image": {**stats(nearest_other), "p99": round(float(np.percentile(nearest_other, 99)), 4),
                                   "p999": round(float(np.percentile(nearest_other, 99.9)), 4)},
    }
    for threshold in (0.85, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97):
        out.setdefault("at_threshold", {})[str(threshold)] = {
            "distinct_images_matched": int((nearest_other >= threshold).sum()),
            **{kind: round(float(np.mean(np.asarray(v) >= threshold)), 4) for kind, v in kinds.items()}}
    if args.pairs:
        pairs = {tuple(sorted((int(a), int(b)))): float(nearest_other[a]) for a, b in enumerate(nearest_at)}
        root = str(args.data.resolve()) + "/"
        out["most_similar_pairs"] = [{"similarity": round(sim, 4), "a": memory[a].source.removeprefix(root),
                                      "b": memory[b].source.removeprefix(root)}
                                     for (a, b), sim in sorted(pairs.items(), key=lambda kv: -kv[1])[: args.pairs]]

    print(f"| copy of the image ({args.queries} images) | min | 1st pct | median | nearer another image |")
    print("|---|---|---|---|---|")
    for kind, s in out["copy_to_original"].items():
        print(f"| {kind} | {s['min']:.4f} | {s['p1']:.4f} | {s['median']:.4f} | {s['nearer_another_image']} |")
    n = out["nearest_distinct_image"]
    print(f"| nearest distinct image ({len(memory):,} images) | max {n['max']:.4f} | 99.9th pct {n['p999']:.4f} | "
          f"median {n['median']:.4f} | |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
