"""Does a GPU memory answer like a CPU one? fp16 CUDA features against fp32 CPU features on real images.

    python docs/benchmarks/gpu_parity.py IMAGEFOLDER [--featurizer efficientnet-lite0] [--images 1000]

On CUDA the featurizers run in half precision (CPU: float32, BatchNorm folded into the convolutions). This
embeds the same real images both ways and reports what would change for a user: the cosine between each
image's two feature vectors, how many of its 50 nearest neighbours among the other images stay the same,
whether rank voting over those neighbours gives the same label, and whether the model's own ImageNet
top-1 class agrees. Prints one JSON object; needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from retrieval import load_featurizer, scan_imagefolder
from vmem.cli.bench_search import machine_info


def rank_vote(sims: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Top-k neighbours (self excluded) and their rank-weighted vote: the default rule, 1/(alpha + rank)."""
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :k]
    weights = 1.0 / (1.0 + np.arange(k))
    n_classes = int(labels.max()) + 1
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(sims)), k), labels[nn].ravel()), np.tile(weights, len(sims)))
    return nn, votes.argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--featurizer", default="efficientnet-lite0")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_parity.py needs a CUDA device")

    items = scan_imagefolder(args.dataset)
    step = max(1, len(items) // args.images)
    items = items[::step][: args.images]
    paths = [it.source for it in items]
    names = sorted({it.label for it in items})
    labels = np.array([names.index(it.label) for it in items])

    feats, logits, secs = {}, {}, {}
    for device in ("cpu", "cuda"):
        feat = load_featurizer(args.featurizer, device=device)
        t = time.perf_counter()
        res = feat.embed_many(paths, batch_size=64)
        secs[device] = time.perf_counter() - t
        assert not res.failures, res.failures[:3]
        feats[device] = res.features
        if hasattr(feat, "logits"):
            logits[device] = np.concatenate([feat.logits(paths[i : i + 64]) for i in range(0, len(paths), 64)])

    cpu, gpu = feats["cpu"], feats["cuda"]
    cos = (cpu * gpu).sum(1)
    nn_cpu, vote_cpu = rank_vote(cpu @ cpu.T, labels, args.k)
    nn_gpu, vote_gpu = rank_vote(gpu @ gpu.T, labels, args.k)
    overlap = np.array([len(set(a) & set(b)) / args.k for a, b in zip(nn_cpu, nn_gpu, strict=True)])
    out = {
        "machine": machine_info(), "featurizer": args.featurizer, "images": len(paths), "classes": len(names),
        "k": args.k, "embed_s": {d: round(s, 2) for d, s in secs.items()},
        "cosine_cpu_vs_cuda": {"min": round(float(cos.min()), 5), "median": round(float(np.median(cos)), 5)},
        "neighbour_overlap_at_k": {"min": round(float(overlap.min()), 3), "mean": round(float(overlap.mean()), 4)},
        "rank_vote_same_label": round(float((vote_cpu == vote_gpu).mean()), 4),
        "rank_vote_accuracy": {"cpu": round(float((vote_cpu == labels).mean()), 4),
                               "cuda": round(float((vote_gpu == labels).mean()), 4)},
    }
    if logits:
        out["imagenet_top1_same_class"] = round(float(
            (logits["cpu"].argmax(1) == logits["cuda"].argmax(1)).mean()), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
