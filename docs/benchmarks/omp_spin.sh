#!/usr/bin/env bash
# OpenMP spinning under load: `vmem bench classify` in-process (single images, 100 timed requests) with libgomp's
# default spin count (300,000), vmem's (20,000, retrieval/_openmp.py) and none (0: OMP_WAIT_POLICY=PASSIVE), on a quiet
# machine and beside two busy loops (another program's work on the same 2 cores). One JSON line per run.
#   bash docs/benchmarks/omp_spin.sh MEMORY [REPEATS] > docs/benchmarks/omp-spin.jsonl
set -euo pipefail
MEMORY=${1:?an embedded memory, e.g. ./memory from scripts/quickstart.sh}
REPEATS=${2:-2}
DATA=${VMEM_DATA:-../shared/data/tiny-imagenet-200}
VMEM=${VMEM:-.venv/bin/vmem}
IMAGES=$(ls -d "$DATA"/val/*/ | head -3)
for rep in $(seq "$REPEATS"); do
  for load in quiet busy; do
    pids=()
    if [ "$load" = busy ]; then
      for _ in 1 2; do python3 -c "while True: pass" & pids+=($!); done
    fi
    for setting in GOMP_SPINCOUNT=300000 GOMP_SPINCOUNT=20000 GOMP_SPINCOUNT=0; do
      result=$(env "$setting" "$VMEM" bench classify $IMAGES --memory "$MEMORY" --requests 100 --no-http 2>/dev/null | tail -1)
      echo "{\"repeat\": $rep, \"load\": \"$load\", \"setting\": \"$setting\", \"result\": $result}"
    done
    [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}"
  done
done
