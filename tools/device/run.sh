#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after `pnpm device:prepare` here and with `.device` carried.
# Usage: bash tools/device/run.sh STEP...   (steps below; default: tests engine torch peer)
# Everything lands in $OUT (the device tool brings it back). A/B against an earlier build: `bash
# tools/device/base-bundle.sh REV` here first (e.g. issue 14's decode check against c027df3:
# `DUO_AB="base|DUO_BASE=1;new|;base2|DUO_BASE=1;new2|" bash tools/device/run.sh tests duo-ab`). The tree that travels
# must stay under 64 MiB: leave .device/shared and gutenberg.tar.xz out when two bundles travel.
set -uo pipefail
OUT=${OUT:-/tmp/duo-out}
mkdir -p "$OUT" /tmp/duo-node
xz -dc .device/node.xz > /tmp/duo-node/node && chmod +x /tmp/duo-node/node
for file in duoattn.node device-tests.mjs duo-bench.mjs duo-serve.mjs engine-worker-main.js group-rank-main.js; do
  [ -f ".device/$file.xz" ] && xz -dc ".device/$file.xz" > "/tmp/duo-node/$file"
done
# Addon variants for A/Bs (.device/variant-NAME.node.xz; a step's knobs pick one with DUO_VARIANT=NAME, variantAddon).
for file in .device/variant-*.node.xz; do [ -f "$file" ] && xz -dc "$file" > "/tmp/duo-node/$(basename "$file" .xz)"; done
# duo-serve's engine worker (engine-worker-main.js beside duo-serve.mjs) is an ES module: .js files here are ESM.
echo '{ "type": "module" }' > /tmp/duo-node/package.json
[ -f .device/gutenberg.tar.xz ] && mkdir -p .device/shared/data && tar -xJf .device/gutenberg.tar.xz -C .device/shared/data
# The figures' font where the bundles' require finds the dejavu-fonts-ttf package.
[ -f .device/fonts.tar.xz ] && mkdir -p /tmp/duo-node/node_modules/dejavu-fonts-ttf/ttf &&
  tar -xJf .device/fonts.tar.xz -C /tmp/duo-node/node_modules/dejavu-fonts-ttf/ttf
export PATH=/tmp/duo-node:$PATH
# DUO_VARIANT=NAME (set for the whole script) runs every step on that addon variant instead of the bundle's; the A/B
# steps' own knobs still pick theirs.
native=duoattn; [ -n "${DUO_VARIANT:-}" ] && native=variant-$DUO_VARIANT
export DUO_NATIVE_PATH=/tmp/duo-node/$native.node DUO_SHARED_DIR=$PWD/.device/shared DUO_REPO_DIR=$PWD
export DUO_COMMIT=$(cat .device/commit.txt) PYTHONUNBUFFERED=1
# NCCL for the communicator tests and multi-GPU runs: PyTorch's wheel (nvidia-nccl) when the machine has no other;
# NVLink multicast stays off (the machines' rule).
[ -z "${DUO_NCCL_PATH:-}" ] && DUO_NCCL_PATH=$(python3 -c "import nvidia.nccl as n, os; print(os.path.join(list(n.__path__)[0], 'lib'))" 2>/dev/null) &&
  export DUO_NCCL_PATH
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
# The serving benchmark (step `serve`): duo-serve in the background on loopback (random bf16 weights at
# DUO_SERVE_SHAPE, default llama-3-8b-1048k: Llama-3-8B's matrices with a context that holds 32K prompts; the prefix
# cache off, and every prompt distinct anyway), /health polled until it says ok (600 s at most; a server that exits
# first fails the step with its log's tail), then duo-bench serve-load against it, then SIGTERM (SIGKILL after 60 s).
serve_load() {
  # A parallel group (step serve-group: DUO_SERVE_GROUP="--gpus 2 --split keys") keeps no prefixes and runs one request at
  # a time; its files are named serve-group-*.
  local name=serve-llama-3-8b cache="--prefix-cache 0"
  [ -n "${DUO_SERVE_GROUP:-}" ] && name=serve-group-llama-3-8b cache=
  local port=${DUO_SERVE_PORT:-8765} log=$OUT/$name.server.log ready= pid result
  local url=http://127.0.0.1:$port
  # shellcheck disable=SC2086 # DUO_SERVE_FLAGS and DUO_SERVE_GROUP are lists of flags
  node /tmp/duo-node/duo-serve.mjs --shape "${DUO_SERVE_SHAPE:-llama-3-8b-1048k}" --device cuda --dtype bf16 \
    --host 127.0.0.1 --port "$port" $cache --log-level warn ${DUO_SERVE_GROUP:-} ${DUO_SERVE_FLAGS:-} > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "serve: duo-serve exited before it was ready:"; tail -20 "$log"; return 1; fi
    if node -e "fetch('$url/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; then ready=1; break; fi
    sleep 1
  done
  if [ -z "$ready" ]; then echo "serve: duo-serve not ready after 600 s:"; tail -20 "$log"; kill -KILL "$pid"; return 1; fi
  echo "serve: $(grep 'ready on' "$log")"
  # shellcheck disable=SC2086
  node /tmp/duo-node/duo-bench.mjs serve-load --url "$url" --attention full,duo --sparsity 0.5 --sink 128 --recent 256 \
    --concurrency "${DUO_SERVE_CONCURRENCY:-1,8,32}" --prompt-tokens "${DUO_SERVE_PROMPT:-32k}" \
    --output-tokens "${DUO_SERVE_OUTPUT:-64}" ${DUO_SERVE_REQUESTS:+--requests $DUO_SERVE_REQUESTS} \
    --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
  result=${PIPESTATUS[0]}
  kill -TERM "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then echo "serve: duo-serve did not drain in 60 s; killed"; kill -KILL "$pid"; result=1; fi
  wait "$pid" 2>/dev/null
  [ "$result" -eq 0 ] || echo "serve: serve-load failed (status $result); the server's log: $log"
  return "$result"
}

# The floors' bandwidth in TB/s: DUO_BANDWIDTH, else the card's copy bandwidth (tools/device/copy_bandwidth.py, measured
# once a call into $OUT/copy-bandwidth.json; an H100 80GB HBM3 copied at 3.01 TB/s).
cardBandwidth() {
  if [ -n "${DUO_BANDWIDTH:-}" ]; then echo "$DUO_BANDWIDTH"; return; fi
  [ -s "$OUT/copy-bandwidth.json" ] || python3 tools/device/copy_bandwidth.py --json > "$OUT/copy-bandwidth.json"
  python3 -c "import json; print(json.load(open('$OUT/copy-bandwidth.json'))['copyTBps'])"
}

# The addon a variant's knobs name with DUO_VARIANT=NAME (unpacked above), else $2.
variantAddon() {
  case " $1 " in
    *" DUO_VARIANT="*) local name=${1##*DUO_VARIANT=}; echo "/tmp/duo-node/variant-${name%% *}.node" ;;
    *) echo "$2" ;;
  esac
}

# Nsight Compute: on PATH, or where the toolkit installs it (the profiling steps).
ncuPath() { command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1; }
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests engine torch peer)
status=0
for step in "${steps[@]}"; do
  echo "=== $step"
  case "$step" in
    # The prefill attention kernels alone (no bundle needed): tools/device/prefill-bench.cu via prefill-sweep.sh.
    prefill) bash tools/device/prefill-sweep.sh || status=1 ;;
    # The prefill attention kernel through the engine's op, with PyTorch's SDPA in the same run (issue 18's lengths; the
    # figure is drawn off the device: duo-bench attention --from attention.json --plot attention.svg).
    # DUO_ATTENTION_QUANT=none,int8,int4,fp8 adds quantized caches (the same kernel dequantizing its tiles).
    attention) node /tmp/duo-node/duo-bench.mjs attention --device cuda --lengths ${DUO_ATTENTION_LENGTHS:-16k,32k,64k,128k,512k} \
             --streaming 0,0.5 --sink 128 --recent 256 --kv-quant ${DUO_ATTENTION_QUANT:-none} --repeats ${DUO_ATTENTION_REPEATS:-3} \
             --out "$OUT/attention.json" || status=1 ;;
    skinny)
      # Decode projections at 1-64 rows: skinny tensor-core matmul (every cluster size), GEMV, cuBLAS.
      N=packages/kernels/native
      nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I$N -I$N/cuda \
        tools/device/skinny-bench.cu $N/cuda/gemm-skinny.cu $N/cuda/gemv.cu $N/cuda/elementwise.cu \
        $N/cuda/cublas-loader.cc -ldl -o /tmp/skinny-bench &&
        /tmp/skinny-bench "${DUO_COMMIT:-unknown}" > "$OUT/skinny.json" 2> >(tee "$OUT/skinny.log" >&2) || status=1 ;;
    # Under DUO_VARIANT=NAME the records are named for the variant (device-tests-NAME.json).
    tests) tag=${DUO_VARIANT:+-$DUO_VARIANT}
           DUO_TEST_JSON=$OUT/device-tests$tag.json node /tmp/duo-node/device-tests.mjs 2>&1 | tee "$OUT/device-tests$tag.log" || status=1 ;;
    tune-unroll) for variant in /tmp/duo-node/duoattn.node $PWD/.device/duoattn-variant.node; do echo "binary $variant"; \
                 DUO_NATIVE_PATH=$variant DUO_CUDA_PROFILE=1 node /tmp/duo-node/duo-bench.mjs kernels --device cuda | grep -E "gemv|matmul"; \
                 DUO_NATIVE_PATH=$variant node /tmp/duo-node/duo-bench.mjs speed --shape llama-3-8b --device cuda --prefill 0 \
                   --contexts 4096,32768 --steps 64 | grep decode; done ;;
    tune-gemv) for slice in 512 1024 2048; do echo "min slice $slice"; DUO_GEMV_MIN_SLICE=$slice DUO_CUDA_PROFILE=1 \
                 node /tmp/duo-node/duo-bench.mjs kernels --device cuda | grep -E "gemv|matmul"; DUO_GEMV_MIN_SLICE=$slice \
                 node /tmp/duo-node/duo-bench.mjs speed --shape llama-3-8b --device cuda --prefill 0 --contexts 4096 --steps 64 | grep decode; done ;;
    kernels-profile) DUO_CUDA_PROFILE=1 node /tmp/duo-node/duo-bench.mjs kernels --device cuda --out "$OUT/kernels-profile.json" || status=1 ;;
    kernels) node /tmp/duo-node/duo-bench.mjs kernels --device cuda --out "$OUT/kernels.json" || status=1 ;;
    engine) node /tmp/duo-node/duo-bench.mjs speed --shape llama-3-8b --device cuda --dtype bf16 --prefill 4096 \
              --contexts 4096,32768 --steps 64 --warmup 8 --out "$OUT/engine-llama-3-8b.json" || status=1 ;;
    engine-profile) DUO_NO_GRAPHS=1 DUO_CUDA_PROFILE=1 node /tmp/duo-node/duo-bench.mjs speed --shape llama-3-8b --device cuda --dtype bf16 --prefill 4096 \
              --contexts 4096,32768 --steps 16 --warmup 4 --profile --out "$OUT/engine-profile.json" || status=1 ;;
    passkey) node /tmp/duo-node/duo-bench.mjs passkey --model models/duo-demo --haystack .device/shared/data/gutenberg/1342.txt \
              --device cuda --lengths 2k,4k,8k,16k --depths 10 --trials 20 --out "$OUT/passkey-duo-demo.json" || status=1 ;;
    torch) python3 tools/device/torch_llama_bench.py --prefill 4096 --contexts 4096,32768 --steps 64 --warmup 8 \
              --out "$OUT/torch-llama-3-8b.json" || status=1 ;;
    profile) NCU=$(ncuPath)
             "$NCU" --target-processes all -s "${DUO_PROFILE_SKIP:-0}" -k "regex:${DUO_PROFILE_KERNEL:-decodeKernel|gemvStream|Combine}" -c "${DUO_PROFILE_COUNT:-6}" \
               --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
               --section WarpStateStats node /tmp/duo-node/duo-bench.mjs kernels --device cuda --repeats 1 > "$OUT/ncu.txt" 2>&1 || status=1
             grep -E "decodeKernel|gemvStream|Combine|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Stall" "$OUT/ncu.txt" | head -80 ;;
    peer) python3 .device/shared/peer/torch_baseline.py > "$OUT/peer-baseline.json" || status=1 ;;
    # DuoAttention at Llama-3-8B shapes (issue 4): decode (synthetic caches) and prefill runs, the PyTorch reference
    # method at the same contexts, then one merged report with the plot.
    duo-decode) node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b --device cuda --attention full,duo --sparsity 0.5 \
              --sink 128 --recent 256 --contexts 32k,128k,256k --max-context --prefill none --steps 32 --warmup 8 \
              --out "$OUT/efficiency-decode.json" || status=1 ;;
    # A/B of decode variants in one call: "label|knobs" in DUO_AB (knobs are env settings); DUO_AB_QUANTS the
    # --kv-quant schemes (default none), DUO_AB_CONTEXTS, DUO_AB_STEPS (default 48). DUO_BUNDLE=name runs the
    # bundle .device/name-duo-bench.mjs.xz with its addon .device/name-duoattn.node.xz (an earlier build; DUO_BASE=1 is
    # DUO_BUNDLE=base); DUO_VARIANT=name the addon .device/variant-name.node.xz with this bundle; decode only.
    duo-ab) IFS=';' read -ra variants <<< "${DUO_AB:-base|DUO_BASE=1;new|;base again|DUO_BASE=1}"
            for file in .device/*-duo-bench.mjs.xz .device/*-duoattn.node.xz; do
              [ -f "$file" ] && name=$(basename "$file" .xz) && xz -dc "$file" > "/tmp/duo-node/$name"
            done
            for variant in "${variants[@]}"; do
              label=${variant%%|*}; knobs=${variant#*|}; echo "--- $label: $knobs"
              bench=/tmp/duo-node/duo-bench.mjs native=/tmp/duo-node/duoattn.node
              bundle=; case " $knobs " in *" DUO_BASE=1 "*) bundle=base ;; *" DUO_BUNDLE="*) bundle=${knobs##*DUO_BUNDLE=}; bundle=${bundle%% *} ;; esac
              [ -n "$bundle" ] && bench=/tmp/duo-node/$bundle-duo-bench.mjs native=/tmp/duo-node/$bundle-duoattn.node
              # The bundle's own commit (.device/NAME-commit.txt) goes into its records, not this bundle's.
              commit=$DUO_COMMIT; [ -n "$bundle" ] && [ -f ".device/$bundle-commit.txt" ] && commit=$(cat ".device/$bundle-commit.txt")
              native=$(variantAddon "$knobs" "$native")
              env $knobs DUO_COMMIT=$commit DUO_NATIVE_PATH=$native node $bench efficiency --shape llama-3-8b --device cuda --attention full,duo \
                --sparsity 0.5 --sink 128 --recent 256 --contexts ${DUO_AB_CONTEXTS:-32k,256k} --kv-quant ${DUO_AB_QUANTS:-none} \
                --prefill none --steps ${DUO_AB_STEPS:-48} --warmup 8 \
                --out "$OUT/ab-${label// /-}.json" | grep -E "decode @|speed" || status=1
            done ;;
    # Continuous batching (issue 16): step time and tokens/s versus batch size at 4K and 32K (Llama-3-8B shape, random
    # bf16 weights) for full and duo 50 %, with each step's bytes floor; then the running sequences' inter-token latency
    # while a 128K prompt is admitted into a batch of 16 at 32K (DUO_ADMIT_CHUNK tokens per prefill chunk).
    batch) node /tmp/duo-node/duo-bench.mjs batch --shape llama-3-8b --device cuda --attention ${DUO_BATCH_ATTENTION:-full,duo} \
             --sparsity 0.5 --sink 128 --recent 256 --kv-quant ${DUO_BATCH_QUANTS:-none} --batch ${DUO_BATCHES:-1,4,16,64} \
             --contexts ${DUO_BATCH_CONTEXTS:-4k,32k} --steps 32 --warmup 4 --bandwidth $(cardBandwidth) \
             --out "$OUT/batch-llama-3-8b.json" || status=1 ;;
    # The batch benchmark once per `label|knobs` of DUO_BATCH_AB (run-time knobs, e.g. "lsf|DUO_LONG_SPLITS_FIRST=1;
    # seq|DUO_LONG_SPLITS_FIRST=0", or DUO_VARIANT=name for the addon .device/variant-name.node.xz), duo 50 % at
    # DUO_BATCHES × DUO_BATCH_CONTEXTS, one JSON each.
    batch-ab) IFS=';' read -ra variants <<< "${DUO_BATCH_AB:?DUO_BATCH_AB lists label|knobs;…}"
              for variant in "${variants[@]}"; do
                label=${variant%%|*}; knobs=${variant#*|}; echo "--- $label: $knobs"
                native=$(variantAddon "$knobs" /tmp/duo-node/duoattn.node)
                env $knobs DUO_NATIVE_PATH=$native node /tmp/duo-node/duo-bench.mjs batch --shape llama-3-8b --device cuda --attention duo --sparsity 0.5 \
                  --sink 128 --recent 256 --batch ${DUO_BATCHES:-4,16,64} --contexts ${DUO_BATCH_CONTEXTS:-4k,32k} --steps 32 \
                  --warmup 4 --out "$OUT/batch-ab-$label.json" || status=1
              done ;;
    # Issue 20 on a kind of several GPUs: duo-bench context-parallel --gpus (one process per GPU over NCCL), Llama-3-8B
    # shape, duo 50 % + int4 KV: decode at DUO_CP_CONTEXT_PER_GPU (default 3.5m) × GPUs, 32 steps, and a DUO_CP_PREFILL
    # (default 1m) prefill, on DUO_CP_GPUS (default 1,2,4,8 up to the GPUs present): context-parallel.json + .svg.
    # DUO_CP_SPLIT=weights splits the weights instead (tensor parallelism; set DUO_CP_CONTEXT_PER_GPU to what fits).
    context-parallel)
      present=$(nvidia-smi -L | wc -l); gpus=${DUO_CP_GPUS:-$(for n in 1 2 4 8; do [ "$n" -le "$present" ] && echo -n "$n,"; done | sed 's/,$//')}
      node /tmp/duo-node/duo-bench.mjs context-parallel --gpus "$gpus" --shape llama-3-8b-1048k --device cuda --attention duo \
        --sparsity 0.5 --sink 128 --recent 256 --kv-quant int4 --context-per-rank "${DUO_CP_CONTEXT_PER_GPU:-3.5m}" --steps 32 \
        --warmup 4 --prefill "${DUO_CP_PREFILL:-1m}" --split "${DUO_CP_SPLIT:-keys}" --out "$OUT/context-parallel.json" \
        --plot "$OUT/context-parallel.svg" || status=1 ;;
    # Device time and DRAM bytes of every kernel of batch decode steps (Nsight Compute: kernels serialized, caches kept,
    # clocks as they are), duo 50 % at DUO_BATCHES (default 16) × DUO_BATCH_CONTEXTS (4K), no graphs: batch-ncu-B.csv.
    batch-ncu) NCU=$(ncuPath)
             for batch in ${DUO_BATCHES:-16}; do
               DUO_NO_GRAPHS=1 "$NCU" --clock-control none --cache-control none --target-processes all \
                 -k "regex:decode|skinny|gemv|rmsNorm|rope|embedding|argmax|sample|convert|biasResidual|gemm|sm90|nvjet|cutlass|elementwise" \
                 -s "${DUO_NCU_SKIP:-400}" -c "${DUO_NCU_COUNT:-400}" --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
                 --csv --page raw node /tmp/duo-node/duo-bench.mjs batch --shape llama-3-8b --device cuda --attention duo --sparsity 0.5 \
                 --sink 128 --recent 256 --batch "$batch" --contexts "${DUO_BATCH_CONTEXTS:-4k}" --steps 2 --warmup 1 \
                 > "$OUT/batch-ncu-$batch.csv" 2>&1 || status=1
             done ;;
    # Device time per op of the batch engine's steps (events after every op, so slower than unprofiled steps).
    batch-profile) DUO_CUDA_PROFILE=1 node /tmp/duo-node/duo-bench.mjs batch --shape llama-3-8b --device cuda --attention duo \
             --sparsity 0.5 --sink 128 --recent 256 --batch ${DUO_BATCHES:-16,64} --contexts ${DUO_BATCH_CONTEXTS:-4k} \
             --steps 8 --warmup 2 --profile --out "$OUT/batch-profile.json" || status=1 ;;
    batch-admit) node /tmp/duo-node/duo-bench.mjs batch --shape llama-3-8b --device cuda --attention duo --sparsity 0.5 \
             --sink 128 --recent 256 --batch 16 --contexts 32k --steps 16 --warmup 4 --admit ${DUO_ADMIT:-128k} \
             --admit-batch 16 --admit-context 32k --admit-chunk ${DUO_ADMIT_CHUNK:-1024} --out "$OUT/batch-admit.json" || status=1 ;;
    # Serving (issue 17): TTFT, ITL p50/p99 and throughput at concurrency 1, 8, 32 with 32K-token prompts and 64 output
    # tokens (ignore_eos), full and duo 50 % (sink 128, recent 256) per request on one duo-serve: serve-llama-3-8b.json
    # (+ .log, .server.log); draw it here: duo-bench serve-load --from FILE --plot FILE.svg. Knobs: DUO_SERVE_SHAPE,
    # DUO_SERVE_CONCURRENCY (1,8,32), DUO_SERVE_PROMPT (32k), DUO_SERVE_OUTPUT (64), DUO_SERVE_REQUESTS (per level;
    # default max(2, concurrency)), DUO_SERVE_FLAGS (more duo-serve flags, e.g. --step-tokens 2048), DUO_SERVE_PORT.
    # About 6 minutes on an H100 at the defaults (32K prompts prefill at ~8-10K tokens/s; the level of 32 is ~2 minutes
    # per policy).
    serve) serve_load || status=1 ;;
    # duo-serve over a group of GPUs (a kind of several): one long prompt at a time, context parallelism by default
    # (DUO_SERVE_GPUS, default every GPU; DUO_SERVE_SPLIT keys|weights), duo 50 % and full at DUO_SERVE_PROMPT (default
    # 128k) tokens, concurrency 1 (the group serves requests one at a time; more only queue).
    serve-group)
      gpus=${DUO_SERVE_GPUS:-$(nvidia-smi -L | wc -l)}
      DUO_SERVE_GROUP="--gpus $gpus --split ${DUO_SERVE_SPLIT:-keys}" DUO_SERVE_CONCURRENCY=${DUO_SERVE_CONCURRENCY:-1} \
        DUO_SERVE_PROMPT=${DUO_SERVE_PROMPT:-128k} DUO_SERVE_REQUESTS=${DUO_SERVE_REQUESTS:-2} serve_load || status=1 ;;
    # The llama.cpp peer (node-llama-cpp's CUDA prebuilt) decoding 16 sequences at 4K and 32K; its kit (.peer/) came with
    # an earlier call on this machine (tools/device/llamacpp/README.md).
    llamacpp) bash tools/device/llamacpp/run.sh || status=1 ;;
    # Issue 19: decode ms/token at DUO_WQ_CONTEXTS (default 4096,32768) for random bf16 weights and for GGUF files of
    # the Llama-3-8B shape (1048k context) in each of DUO_WQ_TYPES (default "f16 q8_0 q4_k"), written by duo-bench gguf
    # into DUO_WQ_DIR (default /tmp/duo-gguf, kept for reruns and for weights-peer: ~29 GB for the three). Floors at
    # DUO_BANDWIDTH TB/s (default: the card's copy bandwidth, measured first by tools/device/copy_bandwidth.py).
    weights-decode)
      dir=${DUO_WQ_DIR:-/tmp/duo-gguf}; contexts=${DUO_WQ_CONTEXTS:-4096,32768}; mkdir -p "$dir"
      bandwidth=$(cardBandwidth); echo "bandwidth: $bandwidth TB/s"
      node /tmp/duo-node/duo-bench.mjs speed --shape llama-3-8b-1048k --device cuda --dtype bf16 --prefill 0 \
        --contexts "$contexts" --steps 64 --warmup 8 --bandwidth "$bandwidth" --out "$OUT/weights-bf16.json" || status=1
      # DUO_WQ_AB="label|knobs;…" (knobs as batch-ab's, DUO_VARIANT=name included) runs each file once per variant,
      # in turn; the records go into one file, weights-decode.json ({type: {label: record}}): a call brings back eight.
      IFS=';' read -ra variants <<< "${DUO_WQ_AB:-|}"; mkdir -p "$OUT/weights"
      for type in ${DUO_WQ_TYPES:-f16 q8_0 q4_k}; do
        file=$dir/llama-3-8b-$type.gguf
        [ -s "$file" ] || node /tmp/duo-node/duo-bench.mjs gguf --shape llama-3-8b-1048k --type "$type" --out "$file" \
          || { status=1; continue; }
        for variant in "${variants[@]}"; do
          label=${variant%%|*}; knobs=${variant#*|}; native=$(variantAddon "$knobs" /tmp/duo-node/duoattn.node)
          echo "--- $type ${label:-default}: $knobs"
          env $knobs DUO_NATIVE_PATH=$native node /tmp/duo-node/duo-bench.mjs speed --model "$file" --device cuda --prefill 0 \
            --contexts "$contexts" --steps 64 --warmup 8 --bandwidth "$bandwidth" --out "$OUT/weights/$type${label:+-$label}.json" || status=1
        done
      done
      python3 -c "
import glob, json, os
merged = {}
for path in sorted(glob.glob('$OUT/weights/*.json')):
    type, _, label = os.path.basename(path)[:-5].partition('-')
    merged.setdefault(type, {})[label or 'default'] = json.load(open(path))
json.dump(merged, open('$OUT/weights-decode.json', 'w'), indent=1)" && rm -r "$OUT/weights" ;;
    # Issue 19's capacity: duo 50 % + int4 KV at the longest context the planner fits, for the files weights-decode
    # wrote in DUO_WQ_CAPACITY_TYPES (default "q8_0 q4_k"): cache filled, 32 decode steps, peak against the planner;
    # DUO_WQ_RESERVE GB (default 2.0: ran on an H100 80GB with the peak at 82.93 of its 85.52 GB) kept free beside the
    # planner's bytes.
    weights-capacity)
      dir=${DUO_WQ_DIR:-/tmp/duo-gguf}
      bandwidth=$(cardBandwidth)
      for type in ${DUO_WQ_CAPACITY_TYPES:-q8_0 q4_k}; do
        node /tmp/duo-node/duo-bench.mjs efficiency --model "$dir/llama-3-8b-$type.gguf" --device cuda --attention duo \
          --sparsity 0.5 --sink 128 --recent 256 --kv-quant int4 --contexts none --max-context --reserve "${DUO_WQ_RESERVE:-2.0}" \
          --prefill none --steps 32 \
          --warmup 4 --bandwidth "$bandwidth" --out "$OUT/weights-capacity-$type.json" || status=1
      done ;;
    # Where the block-format decode spends its time: Nsight Compute on four block matmuls of a 4K decode step (no graphs)
    # for each file weights-decode wrote in DUO_WQ_PROFILE_TYPES (default "q8_0 q4_k").
    weights-profile)
      dir=${DUO_WQ_DIR:-/tmp/duo-gguf}; NCU=$(ncuPath)
      for type in ${DUO_WQ_PROFILE_TYPES:-q8_0 q4_k}; do
        DUO_NO_GRAPHS=1 timeout 150 "$NCU" --target-processes all -k "regex:blockGemvKernel" -s ${DUO_WQ_PROFILE_SKIP:-40} -c 4 \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
          --section SchedulerStats --section ComputeWorkloadAnalysis --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
          node /tmp/duo-node/duo-bench.mjs speed --model "$dir/llama-3-8b-$type.gguf" \
          --device cuda --prefill 0 --contexts 4096 --steps 2 --warmup 2 > "$OUT/ncu-weights-$type.txt" 2>&1 || status=1
        echo "--- $type"; grep -E "blockGemvKernel|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Grid Size|Dynamic Shared|issue_stalled" \
          "$OUT/ncu-weights-$type.txt" | awk '!/issue_stalled/ || $NF + 0 >= 0.5' | head -90
      done ;;
    # llama.cpp (node-llama-cpp's CUDA build, flash attention, f16 KV, one sequence) on the files weights-decode wrote:
    # run `bash tools/device/llamacpp/run.sh prepare` with .peer carried first, on the same warm machine.
    weights-peer)
      dir=${DUO_WQ_DIR:-/tmp/duo-gguf}
      for type in ${DUO_WQ_TYPES:-f16 q8_0 q4_k}; do
        OUT=$OUT/llamacpp-$type GGUF=$dir/llama-3-8b-$type.gguf SEQUENCES=1 FALLBACK_SEQUENCES= KV=f16 \
          CONTEXTS=${DUO_WQ_CONTEXTS:-4096,32768} bash tools/device/llamacpp/run.sh || status=1
      done ;;
    # Per-op device time of the decode step (no graphs, CUDA events between ops) for several bundles side by side:
    # DUO_PROFILE_BUNDLES="base new" (new: this bundle), at DUO_AB_CONTEXTS (default 32k), full and duo 50 %.
    profile-ab) for file in .device/*-duo-bench.mjs.xz .device/*-duoattn.node.xz; do
                  [ -f "$file" ] && name=$(basename "$file" .xz) && xz -dc "$file" > "/tmp/duo-node/$name"
                done
                for bundle in ${DUO_PROFILE_BUNDLES:-base new}; do
                  bench=/tmp/duo-node/duo-bench.mjs native=/tmp/duo-node/duoattn.node
                  [ "$bundle" != new ] && bench=/tmp/duo-node/$bundle-duo-bench.mjs native=/tmp/duo-node/$bundle-duoattn.node
                  echo "--- $bundle"
                  DUO_NO_GRAPHS=1 DUO_CUDA_PROFILE=1 DUO_NATIVE_PATH=$native node $bench efficiency --shape llama-3-8b --device cuda \
                    --attention full,duo --sparsity 0.5 --sink 128 --recent 256 --contexts ${DUO_AB_CONTEXTS:-32k} --prefill none \
                    --steps 16 --warmup 4 --profile --out "$OUT/profile-$bundle.json" | grep -E "decode @|ms/token over" || status=1
                done ;;
    duo-prefill) node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b --device cuda --attention full,duo --sparsity 0.5 \
              --sink 128 --recent 256 --contexts none --prefill 128k --prefill-chunk 32768 --out "$OUT/efficiency-prefill.json" || status=1 ;;
    # A million-token prompt (1m = 1 048 576; the 1048K model's shape) with duo 50 % and int4 KV in 32K chunks: time and
    # the allocator's peak (issue 18; about 5 minutes on an H100, one timed run after a one-chunk warm-up).
    prefill-1m) node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b-1048k --device cuda --attention duo --sparsity 0.5 \
              --sink 128 --recent 256 --kv-quant int4 --contexts none --prefill ${DUO_LONG_PREFILL:-1m} --prefill-chunk 32768 \
              --out "$OUT/efficiency-prefill-1m.json" || status=1 ;;
    # The PyTorch reference method's 128K prefill in 32K chunks alone (issue 18's peer), full and duo 50 %.
    prefill-torch) python3 tools/device/torch_duo_bench.py --contexts '' --prefill 131072 --chunk 32768 --sink 128 --recent 256 \
              --retrieval 4 --out "$OUT/torch-prefill.json" || status=1 ;;
    duo-torch) maxima=$(node -e "const d = require('$OUT/efficiency-decode.json'); \
                 console.log(d.decode.filter((r) => r.maxContext).map((r) => r.policy + '=' + r.context).join(','))")
              python3 tools/device/torch_duo_bench.py --contexts 32768,131072,262144 --max-context "$maxima" --prefill 131072 \
                --chunk 32768 --sink 128 --recent 256 --retrieval 4 --out "$OUT/torch-duo.json" || status=1 ;;
    duo-report) node /tmp/duo-node/duo-bench.mjs efficiency --from "$OUT/efficiency-decode.json,$OUT/efficiency-prefill.json" \
              --peer "$OUT/torch-duo.json" --out "$OUT/efficiency-llama-3-8b.json" --plot "$OUT/efficiency-llama-3-8b.svg" || status=1 ;;
    duo-passkey) for policy in full streaming duo; do
                   extra=(); [ "$policy" = streaming ] && extra=(--sink 64 --recent 256); [ "$policy" = duo ] && extra=(--sparsity 0)
                   node /tmp/duo-node/duo-bench.mjs passkey --model models/duo-demo --haystack .device/shared/data/gutenberg/1342.txt \
                     --device cuda --lengths 1k,2k,4k,8k,16k --depths 10 --trials 20 --attention "$policy" "${extra[@]}" \
                     --out "$OUT/passkey-$policy.json" --heatmap "$OUT/passkey-$policy.svg" || status=1
                 done ;;
    # Gate training (issue 5): a short run on the demo model (step time), one step of a Llama-3-8B shape at 1K–32K
    # (time, memory, projection of the 2000-step schedule), the demo pattern, and passkey accuracy with it.
    gates-smoke) node /tmp/duo-node/duo-bench.mjs train-gates --model models/duo-demo --device cuda \
                   --haystack .device/shared/data/gutenberg --steps ${DUO_GATE_SMOKE_STEPS:-20} --ctx-min 2000 --ctx-max 16000 \
                   --out "$OUT/gates-smoke" || status=1 ;;
    gates-8b) node /tmp/duo-node/duo-bench.mjs train-gates --shape llama-3-8b --device cuda --haystack .device/shared/data/gutenberg \
                --ctx-min 1000 --ctx-max 32000 --measure-steps ${DUO_GATE_LENGTHS:-1000,8750,16500,32000} --out "$OUT/gates-8b" || status=1 ;;
    gates-demo) node /tmp/duo-node/duo-bench.mjs train-gates --model models/duo-demo --device cuda \
                  --haystack .device/shared/data/gutenberg --steps ${DUO_GATE_STEPS:-300} --ctx-min 2000 --ctx-max 16000 \
                  --format ${DUO_GATE_FORMAT:-magic-number} --passkeys 10 --words 5 --full-term ${DUO_FULL_TERM:-student} \
                  --out "$OUT/${DUO_GATE_NAME:-duo-demo-pattern}" || status=1 ;;
    gates-eval) pattern=${DUO_PATTERN:-$OUT/duo-demo-pattern}; DUO_EVAL_NAME=${DUO_EVAL_NAME:-passkey-}; mkdir -p "$OUT/gates-eval"
                for run in "full|--attention full" "streaming|--attention streaming --sink 128 --recent 256" \
                           "duo-50|--attention duo --pattern $pattern --sparsity 0.5" "duo-25|--attention duo --pattern $pattern --sparsity 0.75" \
                           "inverted-50|--attention duo --pattern $pattern --sparsity 0.5 --invert"; do
                  name=${run%%|*}; read -ra flags <<< "${run#*|}"
                  node /tmp/duo-node/duo-bench.mjs passkey --model models/duo-demo --haystack .device/shared/data/gutenberg/1342.txt \
                    --device cuda --lengths ${DUO_EVAL_LENGTHS:-4k,8k,16k} --depths 10 --trials ${DUO_EVAL_TRIALS:-10} "${flags[@]}" \
                    --out "$OUT/gates-eval/$DUO_EVAL_NAME$name.json" --heatmap "$OUT/gates-eval/$DUO_EVAL_NAME$name.svg,$OUT/gates-eval/$DUO_EVAL_NAME$name.png" \
                    | grep -E "passkey @|wrote" || status=1
                done ;;
    # KV quantization (issue 6): decode at 128K / 512K for {full, duo 50 %} × {bf16, int8, int4} with floors; the
    # capacity run (duo 50 % + int4 at the longest context the planner fits beside bf16 weights, 32 decode steps);
    # passkey at 16K and perplexity on the held-out book on the demo model with its trained pattern.
    quant-decode) node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b --device cuda --attention full,duo --sparsity 0.5 \
              --sink 128 --recent 256 --kv-quant ${DUO_QUANT_SCHEMES:-none,int8,int4,fp8} --contexts ${DUO_QUANT_CONTEXTS:-128k,512k} --prefill none \
              --steps 32 --warmup 8 --bandwidth $(cardBandwidth) --out "$OUT/quant-decode.json" --plot "$OUT/quant-decode.svg" || status=1 ;;
    quant-capacity) node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b --device cuda --attention duo --sparsity 0.5 \
              --sink 128 --recent 256 --kv-quant int4 --contexts none --max-context --prefill none --steps 32 --warmup 4 \
              --out "$OUT/quant-capacity.json" || status=1 ;;
    quant-passkey) for scheme in none int8 int4; do
                     node /tmp/duo-node/duo-bench.mjs passkey --model models/duo-demo --haystack .device/shared/data/gutenberg/1342.txt \
                       --device cuda --lengths ${DUO_QUANT_LENGTHS:-16k} --depths 10 --trials ${DUO_QUANT_TRIALS:-100} --attention duo \
                       --pattern models/duo-demo/pattern --sparsity 0.5 --kv-quant $scheme --out "$OUT/quant-passkey-duo50-$scheme.json" \
                       --heatmap "$OUT/quant-passkey-duo50-$scheme.svg" | grep -E "passkey @|wrote" || status=1
                   done ;;
    quant-ppl) node /tmp/duo-node/duo-bench.mjs perplexity --model models/duo-demo --text .device/shared/data/gutenberg/1342.txt \
              --device cuda --length 16k --windows ${DUO_PPL_WINDOWS:-4} --attention full,duo --pattern models/duo-demo/pattern \
              --sparsity 0.5 --kv-quant none,int8,int4,fp8 --out "$OUT/quant-perplexity.json" || status=1 ;;
    # Nsight Compute on the decode attention kernel at 128K (duo 50 %), per --kv-quant scheme in DUO_PROFILE_QUANTS
    # (bf16 caches run decodeMmaKernel, quantized ones decodeCodesKernel).
    quant-profile) NCU=$(ncuPath)
             for scheme in ${DUO_PROFILE_QUANTS:-none int8 int4}; do
               DUO_NO_GRAPHS=1 "$NCU" --clock-control none --target-processes all -k "regex:decodeMmaKernel|decodeCodesKernel" -s 64 -c 1 --section SpeedOfLight \
                 --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
                 node /tmp/duo-node/duo-bench.mjs efficiency --shape llama-3-8b --device cuda --attention duo --sparsity 0.5 --sink 128 \
                 --recent 256 --kv-quant $scheme --contexts 128k --prefill none --steps 2 --warmup 2 > "$OUT/ncu-$scheme.txt" 2>&1 || status=1
               echo "--- $scheme"; grep -E "decodeMmaKernel|decodeCodesKernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Issued Ipc|No Eligible|Stall|Warp Cycles Per Issued|Dynamic Shared" "$OUT/ncu-$scheme.txt" | head -30
             done ;;
    # ACCS (issue 7): the demo model on the held-out book for full, duo (its pattern at 50 % and 25 %) and streaming;
    # stories260K (512-token context) the same way with an even duo split; the demo model on synthetic sequences whose
    # noise dials compressibility; and the speed case (100 documents, 4K prefixes, 512-token suffixes, full attention).
    accs-demo) node /tmp/duo-node/duo-bench.mjs accs --model models/duo-demo --device cuda --data .device/shared/data/gutenberg/1342.txt \
              --prefix 4k --suffix 512 --samples ${DUO_ACCS_SAMPLES:-100} --attention full,duo,streaming --pattern models/duo-demo/pattern \
              --sparsity 0.5,0.75 --sink 128 --recent 256 --out "$OUT/accs/demo-book.json" --csv "$OUT/accs/demo-book.csv" \
              --plots "$OUT/accs/demo-book" || status=1 ;;
    accs-stories) node /tmp/duo-node/duo-bench.mjs accs --model .device/shared/models/stories260K/stories260K.bin --device cuda \
              --data .device/shared/data/gutenberg/1342.txt --prefix 384 --suffix 127 --samples ${DUO_ACCS_SAMPLES:-100} \
              --attention full,duo,streaming --pattern bench/results/accs/stories260K-pattern --sparsity 0.5,0.75 --sink 16 --recent 64 --out "$OUT/accs/stories-book.json" \
              --csv "$OUT/accs/stories-book.csv" --plots "$OUT/accs/stories-book" || status=1 ;;
    accs-synthetic) node /tmp/duo-node/duo-bench.mjs accs --model models/duo-demo --device cuda --data synthetic --period 64 \
              --noise 0,0.05,0.2,0.5,1 --prefix 1k --suffix 256 --samples 50 --attention full,streaming --sink 128 --recent 256 \
              --out "$OUT/accs/demo-synthetic.json" --csv "$OUT/accs/demo-synthetic.csv" --plots "$OUT/accs/demo-synthetic" || status=1 ;;
    accs-speed) start=$SECONDS; node /tmp/duo-node/duo-bench.mjs accs --model models/duo-demo --device cuda \
              --data .device/shared/data/gutenberg/1342.txt --prefix 4k --suffix 512 --samples 100 --attention full \
              --out "$OUT/accs/speed-h100.json" || status=1; echo "accs-speed wall $((SECONDS - start)) s (model load included)" ;;
    # The machine code of the addon's kernels whose names match DUO_SASS_KERNELS (default blockGemvKernel), for
    # counting a loop's instructions (the toolkit's cuobjdump; this machine's has none): sass.txt.xz.
    sass) tool=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
          if [ -z "$tool" ]; then echo "sass: no cuobjdump"; status=1; else
            "$tool" -sass /tmp/duo-node/duoattn.node | awk -v pattern="${DUO_SASS_KERNELS:-blockGemvKernel}" \
              '/Function :/ { keep = ($0 ~ pattern) } keep' | xz -6 > "$OUT/sass.txt.xz" || status=1
          fi ;;
    *) echo "unknown step $step"; status=2 ;;
  esac
done
# The device tool brings back at most eight files (16 MiB each, two folders deep): more are packed into one archive.
count=$(find "$OUT" -type f | wc -l)
if [ "$count" -gt 8 ]; then
  tar -C "$OUT" -cJf /tmp/duo-results.tar.xz . && find "$OUT" -mindepth 1 -delete && mv /tmp/duo-results.tar.xz "$OUT/results.tar.xz"
  echo "[run.sh] $count files packed into results.tar.xz (unpack with tar -xJf under bench/results/DATE-CARD-WHAT/)"
fi
exit $status
