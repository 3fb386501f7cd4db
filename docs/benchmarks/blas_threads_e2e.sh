#!/usr/bin/env bash
# `vmem bench classify` (in-process and over HTTP) and `vmem bench load` with OpenBLAS at its default threads and
# at 1 (OPENBLAS_NUM_THREADS=1, read when numpy loads), alternating, REPEATS times. One JSON line per run.
#   bash docs/benchmarks/blas_threads_e2e.sh MEMORY [REPEATS] > docs/benchmarks/blas-threads-e2e.jsonl
set -euo pipefail
MEMORY=${1:?an embedded memory}
REPEATS=${2:-2}
DATA=${VMEM_DATA:-../shared/data/tiny-imagenet-200}
VMEM=${VMEM:-.venv/bin/vmem}
IMAGES=$(ls -d "$DATA"/val/*/ | head -3)
for rep in $(seq "$REPEATS"); do
  for setting in default 1; do
    [ $((rep % 2)) = 0 ] && setting=$([ "$setting" = default ] && echo 1 || echo default)
    run() { if [ "$setting" = default ]; then env -u OPENBLAS_NUM_THREADS "$@"; else OPENBLAS_NUM_THREADS=1 "$@"; fi; }
    load=$(cut -d' ' -f1 /proc/loadavg)
    c=$(run "$VMEM" bench classify $IMAGES --memory "$MEMORY" --requests 100 2>>"${LOG:-/dev/null}" | tail -1)
    echo "{\"repeat\": $rep, \"openblas_threads\": \"$setting\", \"loadavg\": $load, \"bench\": \"classify\", \"result\": $c}"
    l=$(run "$VMEM" bench load $(for d in $IMAGES; do echo --images "$d"; done) --memory "$MEMORY" --clients 4 --duration 20 2>>"${LOG:-/dev/null}" | tail -1)
    echo "{\"repeat\": $rep, \"openblas_threads\": \"$setting\", \"loadavg\": $load, \"bench\": \"load\", \"result\": $l}"
  done
done
