#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md: featurisation on CUDA (fp16, large batches), fp16-vs-fp32 parity on real
# images, a real memory built and evaluated on the GPU, and single-image classify latency with it.
#   bash docs/benchmarks/gpu.sh TINY_IMAGENET_SUBSET [OUT_DIR [STEP...]]
# STEP: featurize featurize-workers featurize-tiny parity memory (build, eval, classify latency); default all.
# TINY_IMAGENET_SUBSET: an ImageFolder root with train/ and val/ (the GPU run used the first 20 classes of
# Tiny-ImageNet: 2,000 train and 1,000 val images). Each step runs on even if one before it failed, within its
# own time limit; each step's JSON lands in OUT_DIR (default docs/benchmarks) as gpu-STEP.json, all logs in gpu.log.
# PY (default python3) is the interpreter; the project must be importable (pip install -e . or PYTHONPATH).
# On the device machine, which lacks most of the project's packages: docs/benchmarks/gpu-prepare.sh first, here.
set -u
D=${1:?usage: gpu.sh TINY_IMAGENET_SUBSET [OUT_DIR]}
OUT=${2:-docs/benchmarks}
shift $(( $# < 2 ? $# : 2 ))
STEPS=" ${*:-featurize featurize-workers featurize-tiny parity memory} "
want() { [[ $STEPS == *" $1 "* ]]; }
PY=${PY:-python3}
IMAGES=${GPU_BENCH_IMAGES:-3072}      # synthetic 500x375 JPEGs per pipeline run
BATCHES=${GPU_BENCH_BATCHES:-64,256,1024}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
echo "== gpu.sh $(date -u +%FT%TZ):$STEPS" >> "$OUT/gpu.log"

step() {  # name, timeout_s, command...: stdout to $OUT/gpu-name.json (or to the log for "-"), stderr to the log
  local name=$1 limit=$2; shift 2
  local dest="$OUT/gpu-$name.json"
  [ "${name:0:1}" = "-" ] && { name=${name:1}; dest="$OUT/gpu.log"; }
  [ "$dest" = "$OUT/gpu.log" ] || : > "$dest"
  echo "== $name: $*" | tee -a "$OUT/gpu.log" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$dest" 2>> "$OUT/gpu.log"
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/gpu.log" >&2
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >&2 || true
# The whole JPEG pipeline against the raw forward on device-resident crops and against decoding alone.
want featurize && step featurize ${T_FEATURIZE:-220} "$PY" -m vmem bench featurize --images "$IMAGES" \
  --batch-sizes "$BATCHES" --workers auto --models efficientnet-lite0,dinov2-small --repeats 3
# How decoding scales with worker processes (auto: all cores but one), and torch's resize against Pillow's, same run.
want featurize-workers && step featurize-workers ${T_WORKERS:-200} "$PY" -m vmem bench featurize --images "$IMAGES" \
  --batch-sizes 256 --workers 4,8,auto --resamplers torch,pil --models efficientnet-lite0 --repeats 3
# The same on real 64x64 Tiny-ImageNet JPEGs (cheap to decode).
want featurize-tiny && step featurize-tiny ${T_TINY:-60} "$PY" -m vmem bench featurize --dataset "$D/train" --images 2000 \
  --batch-sizes 256 \
  --models efficientnet-lite0,dinov2-small --repeats 3
# fp16 on CUDA against fp32 on CPU, real images and real weights: would the memory answer differently?
want parity && step parity ${T_PARITY:-80} "$PY" docs/benchmarks/gpu_parity.py "$D/train" --images 2000
# A real memory built on the GPU, then evaluated on it (accuracy to compare with the CPU's on the same subset).
want memory && step -build ${T_BUILD:-50} "$PY" -m vmem build "$D/train" --memory "$WORK/memory" --featurizer efficientnet-lite0
want memory && step -eval ${T_EVAL:-50} "$PY" -m vmem eval --memory "$WORK/memory" --dataset "$D/val" --no-plots --out "$WORK/eval"
want memory && cp "$WORK/eval/results.json" "$OUT/gpu-eval-results.json" 2>/dev/null || true
# Single-image classify latency with that memory, in-process and over HTTP on loopback.
want memory && step classify ${T_CLASSIFY:-70} "$PY" -m vmem bench classify "$D/val" --memory "$WORK/memory" --requests 300
rm -rf "$WORK"
