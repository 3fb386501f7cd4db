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

# When to trust an answer (docs/results/eval.md): a memory of the first 30 classes built as a user builds one, the
# risk-coverage curve, thresholds and reliability diagram of its answers' confidence, and the thresholds checked on
# held-out halves of the queries. About 5 minutes on 2 shared cores (the build embeds 3,000 images).
T=$(mktemp -d)
mkdir -p "$T/train" "$T/val"
for c in $(ls "$D/train" | head -30); do
  ln -s "$(realpath "$D/train/$c")" "$T/train/$c"; ln -s "$(realpath "$D/val/$c")" "$T/val/$c"
done
vmem build "$T/train" --memory "$T/memory" --featurizer efficientnet-lite0 --feature-cache "$VMEM_FEATURE_CACHE"
vmem eval --memory "$T/memory" --dataset "$T/val" --classes "$D/classes.tsv" --out "$T/eval" --dmn
python docs/benchmarks/selective_holdout.py "$T/eval/predictions.csv" --out docs/benchmarks/selective-holdout.json
mkdir -p "$OUT/trust-30-lite0"
cp "$T"/eval/{table.md,results.json,calibration.csv,risk_coverage.csv,reliability.csv,risk_coverage.png,reliability.png} \
  "$T"/eval/dmn_{risk_coverage,reliability}.png \
  "$OUT/trust-30-lite0/"
rm -rf "$T"
