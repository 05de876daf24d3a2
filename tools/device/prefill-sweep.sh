# Runs on the device (bash tools/device/run.sh prefill): builds tools/device/prefill-bench.cu with the prefill kernels
# straight from the tree (no bundle needed) and writes $OUT/prefill[-VARIANT].json. PREFILL_LENGTHS overrides
# 4096 16384 65536; PREFILL_VARIANTS="name:-DFLAG,-DFLAG …" adds builds of attention-prefill-wgmma.cu with those flags
# ("name:@FILE,-DFLAG …": of FILE, e.g. the kernel as an earlier commit had it)
# (PREFILL_KERNELS=1 times only the default warpgroup kernel in them).
N=packages/kernels/native; F="-O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I$N -I$N/cuda"
mkdir -p "$OUT" /tmp/p
for f in attention-prefill attention-prefill-wgmma gemm-skinny gemv elementwise; do nvcc -c $F $N/cuda/$f.cu -o /tmp/p/$f.o & done
nvcc -c $F tools/device/prefill-bench.cu -o /tmp/p/bench.o &
for v in ${PREFILL_VARIANTS:-}; do name=${v%%:*}; flags=${v#*:} source=$N/cuda/attention-prefill-wgmma.cu
  # "@FILE" first among the flags: build that source instead (an earlier version of the kernel, kept beside it).
  case "$flags" in @*) source=${flags%%,*}; source=${source#@}; flags=${flags#*,}; [ "$flags" = "@$source" ] && flags= ;; esac
  nvcc -c $F ${flags//,/ } -I$N/cuda "$source" -o /tmp/p/variant-$name.o & done
wait
common="/tmp/p/bench.o /tmp/p/attention-prefill.o /tmp/p/gemm-skinny.o /tmp/p/gemv.o /tmp/p/elementwise.o"
nvcc -o /tmp/prefill-bench $common /tmp/p/attention-prefill-wgmma.o -lcudart &&
  /tmp/prefill-bench "${DUO_COMMIT:-unknown}" ${PREFILL_LENGTHS:-} > "$OUT/prefill.json" 2> >(tee "$OUT/prefill.log" >&2)
for v in ${PREFILL_VARIANTS:-}; do name=${v%%:*}; echo "--- variant $name: ${v#*:}"
  nvcc -o /tmp/prefill-$name $common /tmp/p/variant-$name.o -lcudart &&
    PREFILL_KERNELS=${PREFILL_KERNELS:-1} /tmp/prefill-$name "${DUO_COMMIT:-unknown} $name" ${PREFILL_LENGTHS:-} > "$OUT/prefill-$name.json" \
      2> >(tee "$OUT/prefill-$name.log" >&2)
done
