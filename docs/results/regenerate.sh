#!/usr/bin/env bash
# Regenerates every figure and table in docs/results/ from Tiny-ImageNet with EfficientNet-Lite0 (and the
# accuracy tables of Lite1 and Lite2).
# Features are computed once and cached by file content (VMEM_FEATURE_CACHE); re-runs take seconds to minutes.
set -euo pipefail
D=${VMEM_TINY_IMAGENET:-../shared/data/tiny-imagenet-200}
OUT=docs/results
# The same cache as docs/benchmarks/run.sh and the tests, so Tiny-ImageNet is embedded once for all three.
export VMEM_FEATURE_CACHE=${VMEM_FEATURE_CACHE:-.cache/features}
COMMON=(--memory-dataset "$D/train" --featurizer efficientnet-lite0)

# Accuracy against k for the four rules, hit rate, neighbour reliability, calibration (+ timing in results.json).
vmem eval "${COMMON[@]}" --dataset "$D/val" --classes "$D/classes.tsv" --out "$OUT/tiny-imagenet-lite0"
# The same for the larger EfficientNet-Lite variants (choosing a featurizer: docs/benchmarks.md).
for v in 1 2; do
  vmem eval --memory-dataset "$D/train" --featurizer efficientnet-lite$v --dataset "$D/val" --classes "$D/classes.tsv" \
    --out "$OUT/tiny-imagenet-lite$v"
done

# The paper's experiments, on the same cached features.
for name in pruning corruption scaling ood-classes granularity unlearning label-noise novelty; do
  vmem experiment "$name" "${COMMON[@]}" --queries "$D/val" --classes "$D/classes.tsv" --out "$OUT/experiments"
done
vmem experiment pruning "${COMMON[@]}" --queries "$D/val" --blame voters --out "$OUT/experiments"
# A class added with 1 to 20 images beside classes of 100, through a real embedded memory (docs/results/eval.md,
# "Adding a class with a few images"; about 9 minutes on 2 shared cores once the features are cached).
VMEM_TINY_IMAGENET=$D python docs/benchmarks/few_shot_classes.py --cache "$VMEM_FEATURE_CACHE"
