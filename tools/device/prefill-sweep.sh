# Runs on the device (bash tools/device/run.sh prefill): builds tools/device/prefill-bench.cu with the prefill kernels
# straight from the tree (no bundle needed) and writes $OUT/prefill.json; PREFILL_LENGTHS overrides 4096 16384 65536.
N=packages/kernels/native; F="-O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I$N -I$N/cuda"
mkdir -p "$OUT" /tmp/p
for f in attention-prefill attention-prefill-wgmma gemm-skinny gemv elementwise; do nvcc -c $F $N/cuda/$f.cu -o /tmp/p/$f.o & done
nvcc -c $F tools/device/prefill-bench.cu -o /tmp/p/bench.o &
wait
nvcc -o /tmp/prefill-bench /tmp/p/*.o -lcudart &&
  /tmp/prefill-bench "${DUO_COMMIT:-unknown}" ${PREFILL_LENGTHS:-} > "$OUT/prefill.json" 2> >(tee "$OUT/prefill.log" >&2)
