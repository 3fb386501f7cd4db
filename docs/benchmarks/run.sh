#!/usr/bin/env bash
# Reproduces every table in docs/benchmarks.md. Each command prints the machine and its settings on
# stderr and one JSON object on stdout; the JSON is kept here, next to this script.
# Run it on an otherwise idle machine: the figures are throughput, and 2 cores are easily shared.
#   bash docs/benchmarks/run.sh [search|search-1m|search-1m-disk|cold-originals|search-1m-limits|search-1m-latest|exact-buffer|search-1m-codes|search-1m-turboquant8-limits|search-1m-doubtful|quantizers|codes-only-real|random-reads|cold-open|featurize|decode-chunks|resampler|resampler-tiny|jpeg-draft|decode-threads|decode-threads-tiny|featurizers|search-by-dim|classify|startup|forget|forget-1m|eval]...
# The GPU tables: docs/benchmarks/gpu.sh (run on a machine with CUDA).
# With no step: all but the 1.28M steps (each builds for ~9 minutes on 2 cores; cold-originals follows search-1m-disk).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=docs/benchmarks
D=${VMEM_TINY_IMAGENET:-../shared/data/tiny-imagenet-200}
CACHE=${VMEM_FEATURE_CACHE:-.cache/features}
MEMORY=${VMEM_BENCH_MEMORY:-.cache/bench-memory-lite0}
export PATH="$PWD/.venv/bin:$PATH"

run() {  # name, command...: JSON to $OUT/name.json, log to $OUT/name.log
  local name=$1; shift
  echo "== $name: $*" >&2
  "$@" > "$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2)
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(search featurize forget classify eval)
for step in "${steps[@]}"; do
  case $step in
    # HNSW at the defaults (m 16, ef_construct 128, hnsw_ef 128, segments of 640k points), float32 and int8 indexes on the same
    # vectors, each with a search-ef sweep, exact BLAS search and faiss flat/HNSW: all in one run.
    # (Measured when the originals were loaded into RAM, as float32, by default; the flags keep that.)
    search) run search vmem bench search --n 200000 --dim 384 --queries 1000 --quantization none \
              --quantization int8 --ef-sweep 100,256 --no-vectors-on-disk --vectors-dtype float32 ;;
    # ImageNet scale: 1.28M x 384, original vectors loaded into RAM. Slow to build on 2 cores; see docs/benchmarks.md.
    search-1m) run search-1m vmem bench search --n 1280000 --dim 384 --queries 1000 --quantization int8 \
                 --ef-sweep 100,192,384 --no-faiss --no-vectors-on-disk --vectors-dtype float32 ;;
    # The same with the original vectors on disk (mmap; the default): what RAM the memory needs at ImageNet scale.
    # --keep: docs/benchmarks/cold_originals.py then opens the kept memory (its path is in the log).
    search-1m-disk) run search-1m-disk vmem bench search --n 1280000 --dim 384 --queries 1000 --vectors-on-disk --keep \
                      --no-faiss --vectors-dtype float32 ;;
    # Float32 and float16 originals on the same vectors, each also served by a fresh process inside a memory
    # cgroup of 0.5-1.5x the raw vector bytes (needs root): what a server with that much RAM gets.
    search-1m-limits) run search-1m-limits vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss \
                        --vectors-dtype float32 --vectors-dtype float16 \
                        --ram-limit 0.5 --ram-limit 1.0 --ram-limit 1.3 --ram-limit 1.5 ;;
    # The defaults at 1.28M, and exact search multiplying each way the CPU can (numpy, torch, bfloat16), five repeats.
    search-1m-latest) run search-1m-latest vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss --repeats 5 ;;
    # Exact search's similarity buffer made up front (and slabs of 8,192) against the way before, same run.
    exact-buffer) python docs/benchmarks/exact_buffer.py --repeats 5 > "$OUT/exact-buffer.json" ;;
    # Uncached random 4 KiB reads a second from this disk, 1-64 threads: the ceiling on rescoring from disk.
    random-reads) python docs/benchmarks/random_reads.py > "$OUT/random-reads.json" ;;
    # A 1.28M memory opened cold (files dropped from the page cache): queries straight away, with the files read
    # beside them, or read first (what vmem serve does).
    cold-open)
      vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss --keep --repeats 1 > /dev/null 2> "$OUT/cold-open.log"
      kept=$(grep -o 'kept the built memories under .*' "$OUT/cold-open.log" | awk '{print $NF}')
      python docs/benchmarks/cold_open.py "$kept/memory-0" --queries 1000 --rounds 6 --repeats 2 > "$OUT/cold-open.json"
      rm -rf "$kept" ;;
    # Then the kept memory with its original vectors evicted from RAM: queries that read them back from disk.
    cold-originals)
      kept=$(grep -o 'kept the built memories under .*' "$OUT/search-1m-disk.log" | awk '{print $NF}')
      python docs/benchmarks/cold_originals.py "$kept/memory-0" --queries 1000 > "$OUT/cold-originals.json"
      rm -rf "$kept" ;;
    # Decoding in-process between forwards (the default on 2 cores) against one worker process, same run.
    featurize) run featurize vmem bench featurize --dataset "$D/val" --images 512 --batch-sizes 16,64 --workers auto,1 ;;
    # ImageNet-size JPEGs (synthetic 500x375) decoded by 2 worker processes in chunks of 16 images or a whole batch each.
    decode-chunks) run decode-chunks vmem bench featurize --images 768 --batch-sizes 256 --workers 2 \
                     --decode-chunks 16,0 --models efficientnet-lite0 --repeats 5 ;;
    # torch's resize against Pillow's, photo-size and Tiny-ImageNet JPEGs; big JPEGs decoded at a reduced scale or not.
    resampler) run resampler vmem bench featurize --images 768 --batch-sizes 64 --workers auto,2 \
                 --resamplers torch,pil --models efficientnet-lite0 --repeats 5 ;;
    resampler-tiny) run resampler-tiny vmem bench featurize --dataset "$D/val" --images 2048 --batch-sizes 16,64 \
                      --resamplers torch,pil --models efficientnet-lite0 --repeats 3 ;;
    jpeg-draft) run jpeg-draft vmem bench featurize --photo-size 4032x3024 --images 64 --batch-sizes 16 \
                  --jpeg-draft on,off --resamplers torch,pil --models efficientnet-lite0 --repeats 3 ;;
    # In-process decoding (2 cores) by a pool of threads or one image at a time, plain JPEGs by simplejpeg or Pillow.
    decode-threads) run decode-threads vmem bench featurize --images 512 --batch-sizes 64 --workers auto \
                      --decode-threads auto,1 --jpeg-decoders simplejpeg,pillow --models efficientnet-lite0 --repeats 5 ;;
    decode-threads-tiny) run decode-threads-tiny vmem bench featurize --dataset "$D/val" --images 1024 --batch-sizes 64 \
                           --workers auto --decode-threads auto,1 --jpeg-decoders simplejpeg,pillow \
                           --models efficientnet-lite0 --repeats 3 ;;
    # Choosing a featurizer: throughput of each shipped model in one run, and what the dimension costs the memory.
    featurizers) run featurizers vmem bench featurize --dataset "$D/val" --images 512 --batch-sizes 64 \
                   --models efficientnet-lite0,efficientnet-lite1,efficientnet-lite2,dinov2-small ;;
    search-by-dim) python docs/benchmarks/search_by_dim.py 200000 384,768,1280 > "$OUT/search-by-dim.json" \
                     2> >(tee "$OUT/search-by-dim.log" >&2) ;;
    # Answering from the codes alone (no rescoring): the engine's int8 and TurboQuant codes compared, 200k x 384.
    quantizers) python docs/benchmarks/quantizers.py 200000 > "$OUT/quantizers.json" 2> >(tee "$OUT/quantizers.log" >&2) ;;
    # The same at 1.28M, int8 and turboquant8 codes without rescoring, also inside hard RAM limits (needs root).
    search-1m-codes) run search-1m-codes vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss \
                       --quantization int8 --quantization turboquant8 --no-rescore --ef-sweep 256 \
                       --ram-limit 0.5 --ram-limit 1.0 ;;
    # turboquant8 codes only at 1.28M, kept, then served inside 0.4x, 0.5x and 4x, three times each, alternating;
    # then inside 0.5x warmed by prefetch or by reading the files whole (as prefetch did up to 7dac189), alternating.
    search-1m-turboquant8-limits)
      run search-1m-turboquant8-limits vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss \
        --quantization turboquant8 --no-rescore --keep --repeats 1
      kept=$(grep -o 'kept the built memories under .*' "$OUT/search-1m-turboquant8-limits.log" | awk '{print $NF}')
      python docs/benchmarks/serve_limits.py "$kept/memory-0" --limits 0.4,0.5,4 --repeats 3 \
        > "$OUT/serve-limits-turboquant8.json" 2> >(tee "$OUT/serve-limits-turboquant8.log" >&2)
      python docs/benchmarks/serve_limits.py "$kept/memory-0" --limits 0.5 --warmups whole-files,prefetch \
        --repeats 3 > "$OUT/prefetch-limits.json" 2> >(tee "$OUT/prefetch-limits.log" >&2)
      rm -rf "$kept" ;;
    # turboquant8 codes at 1.28M, the doubtful candidates re-ranked from vmem's own copy of the originals, kept (the
    # same index also timed on its codes alone); then both served inside 0.5x and 4x, three times each, alternating.
    search-1m-doubtful)
      run search-1m-doubtful vmem bench search --n 1280000 --dim 384 --queries 1000 --no-faiss \
        --quantization turboquant8 --no-rescore --rescore-doubtful --keep --repeats 3
      kept=$(grep -o 'kept the built memories under .*' "$OUT/search-1m-doubtful.log" | awk '{print $NF}')
      python docs/benchmarks/serve_limits.py "$kept/memory-0" --limits 0.5,4 --codes-only-too --repeats 3 \
        > "$OUT/serve-limits-doubtful.json" 2> >(tee "$OUT/serve-limits-doubtful.log" >&2)
      rm -rf "$kept" ;;
    # Codes alone on real features: Tiny-ImageNet, EfficientNet-Lite0, recall and accuracy against exact search.
    codes-only-real) VMEM_FEATURE_CACHE=$CACHE VMEM_TINY_IMAGENET=$D python docs/benchmarks/codes_only_real.py \
                       > "$OUT/codes-only-real.json" 2> >(tee "$OUT/codes-only-real.log" >&2) ;;
    # Three rounds on one memory: forget 500 points one by one, then erase them from the files.
    forget) run forget vmem bench forget --n 200000 --forgets 500 --rounds 3 ;;
    forget-1m) run forget-1m vmem bench forget --n 1280000 --forgets 500 --rounds 3 ;;
    classify)
      # A real memory: Tiny-ImageNet train (20,200 images) embedded with EfficientNet-Lite0.
      [ -d "$MEMORY" ] || vmem build "$D/train" --memory "$MEMORY" --featurizer efficientnet-lite0 \
                              --feature-cache "$CACHE" >&2
      run classify vmem bench classify "$D/val" --memory "$MEMORY" --requests 300 ;;
    startup)
      # Each command's start as a shell loop runs it, on a memory of 5 Tiny-ImageNet classes (500 images).
      # VMEM_STARTUP_BASE=checkout of an earlier commit: timed against it, alternating, in the same run.
      SMALL=.cache/startup-memory
      if [ ! -d "$SMALL" ]; then
        mkdir -p .cache/startup-classes
        for c in $(ls "$D/train" | head -5); do ln -sfn "$(realpath "$D/train/$c")" ".cache/startup-classes/$c"; done
        vmem build .cache/startup-classes --memory "$SMALL" --featurizer efficientnet-lite0 >&2
      fi
      python docs/benchmarks/startup.py "$SMALL" "$(find "$D/val" -name '*.JPEG' -print -quit)" \
        --trees "${VMEM_STARTUP_BASE:+$VMEM_STARTUP_BASE,}." --repeats 5 > "$OUT/startup.json" \
        2> >(tee "$OUT/startup.log" >&2) ;;
    eval)
      # The whole evaluation (10,100 queries x 20,200 memory, four rules, every k up to 100) from cached
      # features, three times: median wall time.
      for i in 1 2 3; do
        /usr/bin/time -f "%e s wall, %M KB max RSS" vmem eval --memory-dataset "$D/train" \
          --featurizer efficientnet-lite0 --dataset "$D/val" --cache "$CACHE" --no-plots \
          --out "$(mktemp -d)" 2>&1 >/dev/null | tail -1
      done | tee "$OUT/eval-timing.txt" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
