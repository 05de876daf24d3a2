#!/usr/bin/env bash
# llama.cpp peer for issue 16 on the GPU machine: node-llama-cpp 3.22.1's CUDA prebuilt decoding N sequences at once
# on a random-weight Llama-3-8B-shaped F16 GGUF; writes $OUT/llamacpp-batch.json (see bench-batch.mjs).
#
#   bash tools/device/llamacpp/run.sh [prepare]     (from the repository root)
#
# prepare: only unpack the kit, rebuild libggml-cuda.so for sm_90, check it loads and write the GGUF (no node needed);
# without it, those steps (each skipped when already done on this machine) and then the measurement.
# Env (defaults): NODE_BIN (/tmp/duo-node/node: tools/device/run.sh unpacks it there), KIT_TARBALL
# (.peer/nlc-cuda-runtime.tar.xz under the repository root; made by build_kit.sh, not in git), OUT (/tmp/duo-out),
# CONTEXTS (4096,32768), SEQUENCES (16), FALLBACK_SEQUENCES (14,12,8: tried in turn when N sequences' KV does not fit),
# STEPS (64), WARMUP (8), KV (f16,q8_0), FILL (copy: one sequence prefilled, its KV copied to the others; prefill: all
# prefilled), WORK (/tmp/duo-peer-llama), GGUF ($WORK/llama3-8b-random-f16.gguf, 16.06 GB, kept for reruns),
# GGUF_ARGS (make_gguf.py options), CUDA_LIB_DIRS (dir1:dir2 searched first for the CUDA 13 libraries), BENCH_ARGS.
# Tests without a GPU: GPU=false CPU_PKG=path/to/@node-llama-cpp/linux-x64 GGUF_ARGS="--preset tiny" GGUF=/tmp/t.gguf.
# Needs on the machine: python3 + numpy, tar + xz, the NVIDIA driver, libcudart.so.13 + libcublas.so.13 +
# libcublasLt.so.13 (CUDA 13 toolkit or PyTorch's pip nvidia/cu13/lib). Each missing piece stops it with one line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
MODE="${1:-all}"
NODE_BIN="${NODE_BIN:-/tmp/duo-node/node}"
KIT_TARBALL="${KIT_TARBALL:-$ROOT/.peer/nlc-cuda-runtime.tar.xz}"
OUT="${OUT:-/tmp/duo-out}"
CONTEXTS="${CONTEXTS:-4096,32768}"
SEQUENCES="${SEQUENCES:-16}"
FALLBACK_SEQUENCES="${FALLBACK_SEQUENCES:-14,12,8}"
STEPS="${STEPS:-64}"
WARMUP="${WARMUP:-8}"
KV="${KV:-f16,q8_0}"
FILL="${FILL:-copy}"
WORK="${WORK:-/tmp/duo-peer-llama}"
GGUF="${GGUF:-$WORK/llama3-8b-random-f16.gguf}"
GPU="${GPU:-cuda}"
RT="$WORK/rt"
BINS="$RT/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda"
T0=$(date +%s)

log() { echo "[llamacpp $(date +%T)] $*" >&2; }
fail() {
  echo "llamacpp: FAILED: $*" >&2
  printf '%s' "$*" | python3 -c 'import json,sys; print(json.dumps({"engine": "llama.cpp via node-llama-cpp 3.22.1", "error": sys.stdin.read()}))' \
    > "$OUT/llamacpp-batch-error.json" 2>/dev/null || true
  exit 2
}
case "$MODE" in prepare|all) ;; *) echo "usage: bash $0 [prepare]" >&2; exit 1 ;; esac
mkdir -p "$OUT" "$WORK" || { echo "llamacpp: FAILED: cannot create OUT=$OUT or WORK=$WORK" >&2; exit 2; }
command -v python3 >/dev/null || { echo "llamacpp: FAILED: python3 not found (rebuild_cuda.py and make_gguf.py need it)" >&2; exit 2; }

# node first: a bench run without it would waste the unpack and the GGUF
if [ "$MODE" != prepare ]; then
  [ -x "$NODE_BIN" ] || fail "no node at NODE_BIN=$NODE_BIN (tools/device/run.sh unpacks .device/node.xz there; carry .device or set NODE_BIN)"
  log "node $("$NODE_BIN" --version)"
fi

# 1. the kit: node-llama-cpp + its CUDA package, libggml-cuda.so taken out (rebuilt in step 3)
STAMP=""
[ -f "$KIT_TARBALL" ] && STAMP="$(cksum < "$KIT_TARBALL" | cut -d' ' -f1)"
if [ -n "$STAMP" ] && [ "$(cat "$RT/.ready" 2>/dev/null)" = "$STAMP" ]; then
  log "kit already unpacked and rebuilt in $RT"
elif [ -f "$RT/.ready" ] && [ -z "$STAMP" ]; then
  log "kit already unpacked in $RT (no tarball at $KIT_TARBALL: using what is there)"
else
  [ -f "$KIT_TARBALL" ] || fail "no kit at KIT_TARBALL=$KIT_TARBALL (build it with tools/device/llamacpp/build_kit.sh and carry .peer)"
  rm -rf "$RT" && mkdir -p "$RT"
  if ! tar -C "$RT" -xJf "$KIT_TARBALL" 2>/dev/null; then
    rm -rf "$RT" && mkdir -p "$RT"
    python3 -c 'import sys,tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$KIT_TARBALL" "$RT" \
      || fail "cannot unpack $KIT_TARBALL (tar -xJ and python lzma both failed)"
  fi
  log "kit unpacked into $RT"
fi
cp "$HERE/bench-batch.mjs" "$RT/"
if [ -n "${CPU_PKG:-}" ]; then  # tests without CUDA: node-llama-cpp's CPU package beside the kit's CUDA one
  rm -rf "$RT/node_modules/@node-llama-cpp/linux-x64" && cp -r "$CPU_PKG" "$RT/node_modules/@node-llama-cpp/linux-x64"
fi

# 2. the CUDA 13 runtime libraries: CUDA_LIB_DIRS, the toolkit's folders, pip wheels (nvidia/cu13/lib for CUDA 13)
if [ "$GPU" != false ]; then
  command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  [ "$capability" = 9.0 ] || fail "the kit carries sm_90 code only (H100/H200); GPU 0 is '$card' with compute capability '${capability:-unknown}'"
  log "GPU $card (sm_90)"
  candidates=()
  IFS=: read -r -a extra <<< "${CUDA_LIB_DIRS:-}"
  for dir in "${extra[@]}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
             /usr/local/cuda-13*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /opt/cuda/lib64; do
    [ -n "$dir" ] && [ -d "$dir" ] && candidates+=("$dir")
  done
  while IFS= read -r site; do
    [ -d "$site/nvidia" ] || continue
    while IFS= read -r file; do candidates+=("$(dirname "$file")"); done \
      < <(find "$site/nvidia" -maxdepth 4 -name 'lib*.so.13*' 2>/dev/null)
  done < <(python3 -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))' 2>/dev/null | sort -u)
  LIBDIRS=""
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
    found=""
    for dir in "${candidates[@]}"; do [ -e "$dir/$lib" ] && { found="$dir"; break; }; done
    if [ -z "$found" ]; then
      file=$(find /usr/local /opt -maxdepth 7 -name "$lib" 2>/dev/null | head -1 || true)
      [ -n "$file" ] && found=$(dirname "$file")
    fi
    if [ -z "$found" ]; then
      seen=$( (ldconfig -p 2>/dev/null | grep -oE '/[^ ]*lib(cudart|cublas|cublasLt)\.so\.[0-9]+$'; \
               find /usr/local /opt "${candidates[@]}" -maxdepth 6 -name 'lib*.so.1[0-9]' 2>/dev/null \
                 | grep -E 'lib(cudart|cublas|cublasLt)\.so') | sort -u | tr '\n' ' ')
      fail "$lib not found (CUDA 13 toolkit or pip nvidia-cublas/nvidia-cuda-runtime 13; set CUDA_LIB_DIRS); CUDA libraries seen: ${seen:-none}"
    fi
    log "$lib in $found"
    case ":$LIBDIRS:" in *":$found:"*) ;; *) LIBDIRS="${LIBDIRS:+$LIBDIRS:}$found" ;; esac
  done
  export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# 3. libggml-cuda.so: node-llama-cpp's own library with each CUDA module's fatbin replaced by sm_90 SASS
if [ ! -f "$RT/.ready" ]; then
  [ -d "$RT/cuda-rebuild" ] || fail "the kit in $RT has no cuda-rebuild folder (tarball not made by build_kit.sh?)"
  python3 "$HERE/rebuild_cuda.py" --src "$RT/cuda-rebuild" --out "$BINS/libggml-cuda.so" 2>&1 | tail -1 >&2 \
    || fail "rebuild_cuda.py failed on $RT/cuda-rebuild"
  [ -s "$BINS/libggml-cuda.so" ] || fail "rebuild_cuda.py wrote no $BINS/libggml-cuda.so"
  rm -rf "$RT/cuda-rebuild"
  echo "${STAMP:-unknown}" > "$RT/.ready"
fi
if [ "$GPU" != false ]; then
  if ! error=$(python3 -c 'import ctypes,sys; ctypes.CDLL(sys.argv[1])' "$BINS/libggml-cuda.so" 2>&1); then
    ldd "$BINS/libggml-cuda.so" > "$OUT/ldd-libggml-cuda.txt" 2>&1 || true
    fail "libggml-cuda.so does not load ($(echo "$error" | tail -1)); ldd in $OUT/ldd-libggml-cuda.txt"
  fi
  log "libggml-cuda.so loads (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
fi

# 4. the model: random weights, written once per machine
if [ ! -s "$GGUF" ]; then
  python3 -c 'import numpy' 2>/dev/null || fail "python3 has no numpy (make_gguf.py needs it)"
  mkdir -p "$(dirname "$GGUF")"
  need=$(python3 "$HERE/make_gguf.py" "$GGUF" ${GGUF_ARGS:-} --dry-run | sed -n 's/.*would write \([0-9]*\) bytes.*/\1/p')
  avail=$(( $(df -Pk "$(dirname "$GGUF")" | awk 'NR==2{print $4}') * 1024 ))
  [ "$avail" -gt $(( need + 1000000000 )) ] || fail "need $(( need / 1000000000 + 1 )) GB free for $GGUF, have $(( avail / 1000000000 )) GB"
  log "writing $GGUF ($(( need / 1000000 )) MB)"
  # shellcheck disable=SC2086
  python3 "$HERE/make_gguf.py" "$GGUF" ${GGUF_ARGS:-} || { rm -f "$GGUF" "$GGUF.part"; fail "make_gguf.py failed"; }
fi
log "GGUF $GGUF ($(stat -c %s "$GGUF") bytes); prepared in $(( $(date +%s) - T0 )) s"
[ "$MODE" = prepare ] && exit 0

# 5. the measurement
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
cd "$RT"
set +e
# shellcheck disable=SC2086
"$NODE_BIN" bench-batch.mjs --model "$GGUF" --contexts "$CONTEXTS" --sequences "$SEQUENCES" \
  --fallback-sequences "$FALLBACK_SEQUENCES" --steps "$STEPS" --warmup "$WARMUP" --kv "$KV" --fill "$FILL" --gpu "$GPU" \
  ${BENCH_ARGS:-} --out "$OUT/llamacpp-batch.json" > /dev/null 2> >(tee "$OUT/llamacpp-batch.log" >&2)
rc=$?
set -e
wait  # for tee
if [ $rc -ne 0 ]; then
  reason=$(grep -E '^bench-batch: ' "$OUT/llamacpp-batch.log" | tail -1 | sed 's/^bench-batch: //')
  fail "bench-batch.mjs exited $rc: ${reason:-see $OUT/llamacpp-batch.log}"
fi
python3 - "$OUT/llamacpp-batch.json" <<'PY' >&2 || true
import json, sys
report = json.load(open(sys.argv[1]))
print('llama.cpp on %s, %s %s' % (report['card'], report['gguf']['type'], report['gguf']['shape']))
for r in report['results']:
    print('  KV %-4s context %6d x %2d sequences: %7.2f ms/step (p90 %7.2f, decode %7.2f), %7.0f tok/s%s' % (
        r['kvType'], r['context'], r['sequences'], r['stepMs']['median'], r['stepMs']['p90'], r['decodeMs']['median'],
        r['tokensPerSecond'], ', %.2fx batch 1' % r['speedupOverBatch1'] if 'speedupOverBatch1' in r else ''))
for s in report['skipped']:
    print('  skipped KV %s context %d x %d sequences: %s' % (s['kvType'], s['context'], s['sequences'], s['reason']))
PY
log "done in $(( $(date +%s) - T0 )) s: $OUT/llamacpp-batch.json"
