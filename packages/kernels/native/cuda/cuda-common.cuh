// Shared CUDA helpers: checked calls, dtype loads/stores in registers, warp reductions, launch declarations.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "../common.h"

namespace duo {
namespace cuda {

// Throws duo::Error with code DUO_CUDA_<name> (e.g. DUO_CUDA_cudaErrorMemoryAllocation) when `status` is an error.
inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::string name = cudaGetErrorName(status);
  std::string code = status == cudaErrorMemoryAllocation ? "DUO_OOM" : "DUO_CUDA_" + name;
  throw Error(code, std::string(what) + ": " + name + " (" + cudaGetErrorString(status) + ")");
}
// Checks the launch that just happened.
inline void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline unsigned blocksFor(int64_t work, unsigned threads) {
  int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 2147483647 ? 2147483647 : blocks));
}

__host__ __device__ __forceinline__ int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

// Programmatic dependent launch (Hopper): the kernels of a decode step are launched with launchChained, so the next
// kernel's blocks can be scheduled (and its launch latency hidden) while the current one finishes. Every chained kernel
// calls dependOnPrevious() first: it waits until the previous kernel has completed and its writes are visible, then
// lets the next kernel launch. Waiting before any global access keeps every read-after-write and write-after-read
// order of the stream; on GPUs before sm_90 both are no-ops.
__device__ __forceinline__ void dependOnPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The launch rules' knobs from Device::Tuning, set by CudaDevice::tune. Process-wide, because the launchers are free
// functions that every environment's device shares; parsed once here, read without locks on every launch.
void setChainLaunches(bool allowed);
void setGemvTuning(const Device::Tuning& tuning);
// The decode attention's knob decodeMmaBlocks (resident blocks of the tensor-core kernel over 16-bit caches, 2 or 3).
// Throws DUO_ARG out of range.
void setDecodeTuning(const Device::Tuning& tuning);
// Whether chained launches may overlap: compute capability 9.0 or later, unless the tuning turns it off (A/B runs).
bool chainLaunches();

template <typename... Params, typename... Args>
void launchChained(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream, Args... args) {
  if (!chainLaunches()) {
    kernel<<<grid, block, shared, stream>>>(static_cast<Params>(args)...);
    return;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  check(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...), "cudaLaunchKernelEx");
}

// Starts a 16-byte copy from global to shared memory (cp.async; completes at the next wait_group).
__device__ __forceinline__ void copyAsync16(void* shared, const void* global) {
  unsigned target = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(target), "l"(global));
}
// The same, writing zeros where the source is outside the operand (`valid` false: nothing is read).
__device__ __forceinline__ void copyOrZero16(void* shared, const void* global, bool valid) {
  const unsigned target = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(target), "l"(global), "r"(bytes));
}
// Closes this thread's copies so far into a group; waits until at most N groups are still in flight.
__device__ __forceinline__ void commitGroup() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// The "memory" clobbers keep the compiler from moving shared-memory reads above the wait (a reader that has no barrier
// after it — the quantized prefill's copying threads — relies on that).
template <int N>
__device__ __forceinline__ void waitGroups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }

// Loads 16 bytes (8 half-width or 4 f32 values) and widens them to f32.
template <typename T> struct Vec16;
template <> struct Vec16<float> {
  static constexpr int kCount = 4;
  __device__ __forceinline__ static uint4 raw(const float* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ static void widen(uint4 v, float* out) {
    out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y); out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
  }
  __device__ __forceinline__ static void load(const float* p, float* out) {
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  }
};
template <> struct Vec16<__nv_bfloat16> {
  static constexpr int kCount = 8;
  __device__ __forceinline__ static uint4 raw(const __nv_bfloat16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ static void widen(uint4 v, float* out) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static void load(const __nv_bfloat16* p, float* out) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};
template <> struct Vec16<__half> {
  static constexpr int kCount = 8;
  __device__ __forceinline__ static uint4 raw(const __half* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ static void widen(uint4 v, float* out) {
    const __half2* pairs = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float2 f = __half22float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ __forceinline__ static void load(const __half* p, float* out) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __half2* pairs = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float2 f = __half22float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

// Loads N consecutive elements (N = 1, 2, 4 or 8) with one vector load where the width allows, widened to f32.
template <typename T, int N>
__device__ __forceinline__ void loadChannels(const T* p, float* out) {
  if constexpr (sizeof(T) == 2 && N == 4) {
    uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) out[i] = toFloat(h[i]);
  } else if constexpr (sizeof(T) == 2 && N == 8) {
    Vec16<T>::load(p, out);
  } else if constexpr (sizeof(T) == 4 && N == 4) {
    Vec16<float>::load(reinterpret_cast<const float*>(p), out);
  } else {
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = toFloat(p[i]);
  }
}

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Calls `body` with the C++ element type of a float dtype.
template <typename F>
void dispatchFloat(DType dtype, F body) {
  switch (dtype) {
    case DType::F32: body(float{}); break;
    case DType::BF16: body(__nv_bfloat16{}); break;
    case DType::F16: body(__half{}); break;
    default: throw Error("DUO_ARG", std::string("expected a float dtype but received ") + dtypeName(dtype));
  }
}

// Launchers (one file per kernel family).
void launchConvert(const void* source, DType sourceType, void* target, DType targetType, int64_t count, cudaStream_t stream);
void launchFillRandom(void* data, DType dtype, int64_t count, uint64_t seed, float std, cudaStream_t stream);
void launchEmbedding(const void* table, DType dtype, const int32_t* ids, float* out, int64_t rows, int64_t dim, cudaStream_t stream);
void launchRmsNorm(const float* x, const void* weight, DType weightType, float* out, int64_t rows, int64_t dim, float eps,
                   cudaStream_t stream);
void launchRope(float* x, const int32_t* positions, const float* frequencies, int64_t rows, int64_t stride, int heads,
                int headDim, bool interleaved, bool inverse, cudaStream_t stream);
// out[i] = op(inputs[0][i], …) for the element-wise ops of ops.def (elementwiseInputs(op) inputs).
void launchElementwise(ElementwiseOp op, const float* const* inputs, float* out, int64_t count, cudaStream_t stream);
void launchBiasResidual(float* out, const float* bias, const float* residual, int64_t rows, int64_t cols, cudaStream_t stream);
void launchWriteCache(const float* source, int64_t rows, int64_t sourceStride, void* cache, DType cacheType, int64_t kvHeads,
                      int64_t capacity, int64_t headDim, int64_t start, cudaStream_t stream);
size_t argmaxScratch(int64_t rows);
void launchArgmax(const float* logits, int32_t* out, int64_t rows, int64_t vocab, void* scratch, cudaStream_t stream);
// One token per row by Device::sample's rule (sample.cu); settings [rows, 4]: temperature, topK, topP, u.
void launchSample(const float* logits, const float* settings, int32_t* out, int64_t rows, int64_t vocab, cudaStream_t stream);
void launchSoftmax(const float* logits, float* out, int64_t rows, int64_t vocab, float temperature, cudaStream_t stream);
// out[r, j] = x[r] · W[j] (+ bias[j]) (+ residual[r, j]) for any r count; weight-streaming kernel for few rows.
void launchGemv(const float* x, int64_t rows, int64_t k, const void* weight, DType weightType, int64_t m, float* out,
                const float* bias, const float* residual, cudaStream_t stream);
// Up to three matmuls of the same x (decode q/k/v) in one launch; falls back to one launch each.
struct GemvTarget { const void* weight; float* out; const float* bias; int64_t m; };
void launchGemvGroup(const float* x, int64_t rows, int64_t k, DType weightType, const GemvTarget* targets, int count,
                     cudaStream_t stream);
// out = silu(x · gateᵀ) ⊙ (x · upᵀ) for 1–2 rows in one weight-streaming pass.
void launchGemvSwiglu(const float* x, int64_t rows, int64_t k, const void* gate, const void* up, DType weightType, int64_t m,
                      float* out, cudaStream_t stream);
bool gemvFusable(int64_t rows, int64_t k, DType weightType, const void* x);
// The multiprocessors of the current device, and its compute capability's major number (each read once).
int multiprocessorCount();
// Blocks of `kernel` (with `threads` threads and `shared` bytes of dynamic shared memory) an SM holds at once, at least
// 1 (cudaOccupancyMaxActiveBlocksPerMultiprocessor, asked once per kernel and size).
int residentBlocks(const void* kernel, int threads, size_t shared);
int computeCapabilityMajor();

// The weight-streaming matmuls' work (gemv.cu, gemm-skinny.cu): up to three matrices share x (q/k/v), each cut into
// units of columns (a kernel's own width: GEMV column groups, skinny blocks of 128 rows); unit u of the launch belongs to
// matrix i where first[i] <= u < first[i + 1]. In SwiGLU mode weight 0 is gate and weight 1 up, and out[0] gets
// silu(gate)·up.
template <typename T>
struct WeightJob {
  const T* weight[3];
  float* out[3];
  const float* bias[3];
  const float* residual[3];
  int64_t m[3];
  int64_t first[4];
  int count;
};
// The job of `count` targets (weights, outputs, biases, rows) of one x; no residuals.
template <typename T>
WeightJob<T> weightJobFor(const GemvTarget* targets, int count) {
  WeightJob<T> job{};
  job.count = count;
  for (int i = 0; i < count; i++) {
    job.weight[i] = static_cast<const T*>(targets[i].weight);
    job.out[i] = targets[i].out;
    job.bias[i] = targets[i].bias;
    job.m[i] = targets[i].m;
  }
  return job;
}

// Matrix products over block-format weights (gemv-blocks.cu, ADR 0010): up to blockGemvRowsMax() rows of x, each
// weight row streamed once per 8 rows and dequantized in registers; `count` ≤ 3 matrices of one dtype share x (the
// residual applies to the first). SwiGLU: out = silu(x · gateᵀ) ⊙ (x · upᵀ).
int64_t blockGemvRowsMax();
// `workspace`: blockGemvWorkspaceBytes(dtype, rows, k) bytes of device memory (x quantized once for the integer
// products of Q8_0 and Q4_K; 0 bytes, and null allowed, for the others), free until the launch's kernels have run.
size_t blockGemvWorkspaceBytes(DType dtype, int64_t rows, int64_t k);
void launchBlockGemv(const float* x, void* workspace, int64_t rows, int64_t k, DType dtype, const GemvTarget* targets, int count,
                     const float* residual, cudaStream_t stream);
void launchBlockGemvSwiglu(const float* x, void* workspace, int64_t rows, int64_t k, const void* gate, const void* up, DType dtype,
                           int64_t m, float* out, cudaStream_t stream);
// Rows rowBegin … rowBegin + rows − 1 of a block-format [*, k] matrix decoded to bf16 `out` [rows, k] (prefill's slice).
void launchDecodeBlockRows(const void* weight, DType dtype, int64_t k, int64_t rowBegin, int64_t rows, void* out,
                           cudaStream_t stream);
// Rows `ids` of a block-format table decoded to f32.
void launchBlockEmbedding(const void* table, DType dtype, const int32_t* ids, float* out, int64_t rows, int64_t dim,
                          cudaStream_t stream);
// Row-tiled matmul (8 rows a launch pass) whose result for a row does not depend on the row count: f32 weights in the
// batch-invariant mode.
void launchGemvRowTiles(const float* x, int64_t rows, int64_t k, const void* weight, DType weightType, int64_t m, float* out,
                        const float* bias, const float* residual, cudaStream_t stream);
// Skinny matmul on tensor cores (gemm-skinny.cu, sm_80 and later): 1 to kSkinnyRowsMax rows a pass, bf16 / f16
// weights streamed once per pass through a cp.async pipeline, k split across a thread-block cluster (Hopper); x rounded
// to the weight dtype (`rounded`, when given, already holds it so: wide token tiles then stage half the bytes). Up to
// three targets of the same x (q/k/v); `residual` is added to target 0's output. In the invariant mode the k split
// depends on the matrix shape alone, so a row's result does not depend on the other rows; `slices` > 0 pins the split
// (benchmarks).
constexpr int64_t kSkinnyRowsMax = 64;
struct SkinnyOptions {
  bool invariant = false;
  int slices = 0;  // > 0: pins the k split (benchmarks)
  int depth = 0;   // 64 or 128: pins k per pipeline stage (benchmarks; never changes a result)
  // Which kernel (benchmarks): the rule (Hopper with more than 8 rows rounded beforehand: warpgroup MMAs), the warp
  // MMAs, or the warpgroup MMAs (an error where they cannot run).
  enum Kernel { kRule = 0, kWarp = 1, kWarpgroup = 2 };
  int kernel = kRule;
};
// Whether the warpgroup-MMA kernels (the skinny matmul's wide kernel, the Hopper prefill attention) can run here:
// Hopper, and this build's machine code for them (sm_90a); probes once.
bool wgmmaCompiled();
bool skinnySupported(int64_t k, DType weightType, const void* x, const void* const* weights, int count);
void launchSkinny(const float* x, const void* rounded, int64_t rows, int64_t k, DType weightType, const GemvTarget* targets,
                  const float* residual, int count, const SkinnyOptions& options, cudaStream_t stream);
void launchSkinnySwiglu(const float* x, const void* rounded, int64_t rows, int64_t k, const void* gate, const void* up,
                        DType weightType, int64_t m, float* out, const SkinnyOptions& options, cudaStream_t stream);
void launchRopeWriteCache(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int64_t rows,
                          int heads, int kvHeads, int headDim, bool interleaved, void* keyCache, void* valueCache, DType cacheType,
                          int64_t capacity, const StreamingLayout& streaming, cudaStream_t stream);
void launchDecodeAdvance(const int32_t* next, int32_t* ids, int32_t* positions, cudaStream_t stream);
// Hopper prefill attention on warpgroup MMAs (attention-prefill-wgmma.cu): 16-bit and quantized caches, head dims 64
// and 128, where the build has sm_90a code. launchAttentionPrefill routes there by setPrefillWgmma's mode: 1 (the
// default) full heads' tiles by the tensor memory accelerator, 2 every tile by cp.async (to compare), 0 never (the
// mma.sync kernel).
bool prefillWgmmaServes(const float* q, int64_t qStride, int64_t rows, const AttentionArgs& args, DType cacheType);
void launchAttentionPrefillWgmma(const float* q, int64_t qStride, const void* k, const void* v, DType cacheType, int64_t capacity,
                                 float* out, int64_t rows, const AttentionArgs& args, cudaStream_t stream, int64_t outStride);
void setPrefillWgmma(int mode);
int prefillWgmmaMode();
// Context parallelism: the rank-ordered log-sum-exp merge of attentionPartial rows (Device::mergeAttention).
void launchMergeAttention(const float* parts, float* out, int64_t rows, int partCount, int heads, int headDim, cudaStream_t stream);
// `outStride`: floats between out's rows (0: qStride); context parallelism's chunks (args.partial, a shard) take the
// CUDA-core kernel, partial rows with each head's log-sum-exp after its outputs.
void launchAttentionPrefill(const float* q, int64_t qStride, const void* k, const void* v, DType cacheType, int64_t capacity,
                            float* out, int64_t rows, const AttentionArgs& args, cudaStream_t stream, int64_t outStride = 0);
// How one decode launch spreads over the KV heads: full heads get `full` splits of their keys each, streaming heads (a
// short window) `stream` each; one block per (head, split), the full heads' blocks first (region order, see
// StreamingLayout::headAt); partials laid out [query head][stride]. `streamingHeads` is the layout's head map.
struct DecodeSplits {
  int retrievalKvHeads = 0, kvHeads = 0, full = 1, stream = 1, stride = 1;
  HeadMask streamingHeads;
  int blocks(int heads) const { return retrievalKvHeads * full + (heads - retrievalKvHeads) * stream; }
  __host__ __device__ bool streams(int kvHead) const { return streamingHeads.has(kvHead); }
  __host__ __device__ int of(int kvHead) const { return streams(kvHead) ? stream : full; }
  __device__ void locate(int block, const StreamingLayout& layout, int& kvHead, int& split, int& splits) const {
    if (block < retrievalKvHeads * full) {
      kvHead = layout.headAt(block / full, kvHeads);
      split = block % full;
      splits = full;
      return;
    }
    block -= retrievalKvHeads * full;
    kvHead = layout.headAt(retrievalKvHeads + block / stream, kvHeads);
    split = block % stream;
    splits = stream;
  }
};
// Needs scratch of attentionDecodeScratch(...) bytes.
size_t attentionDecodeScratch(const AttentionArgs& args, const DecodeSplits& splits);
// `share`: the part of one wave of blocks the op may fill (a batch divides the wave among its sequences).
DecodeSplits attentionDecodeSplits(const AttentionArgs& args, DType cacheType, int multiprocessors, double share = 1.0);
// `arrivals`: kDecodeArrivals ints, zero before the first launch on the stream (the kernels leave them zero): each
// head's splits count themselves in there and the last one merges them.
constexpr int kDecodeArrivalsPerSequence = 128;  // one per KV head (HeadMask's most)
constexpr int kDecodeArrivals = 64 * kDecodeArrivalsPerSequence;  // a batched launch's 64 sequences
void launchAttentionDecode(const float* q, const void* k, const void* v, DType cacheType, int64_t capacity, float* out,
                           const AttentionArgs& args, const DecodeSplits& splits, float* scratch, int* arrivals, cudaStream_t stream);
// Batched decode (attentionBatch's one-row slices): sequences that share the cache dtype, KV scheme, heads and head dim
// run in one launch (plus its combine) per 64, each with its own caches, layout, quantization and length.
struct DecodeSlice {
  const float* q;  // the sequence's query row
  float* out;
  const void* k;
  const void* v;
  int64_t capacity;
  AttentionArgs args;  // keyLength, streaming and quant of this sequence (lengthFrom unused)
  DecodeSplits splits;
};
// Whether a decode of `args` has a split-K kernel to batch (not the one-row prefill fallback).
bool decodeBatchable(const AttentionArgs& args, DType cacheType);
size_t attentionDecodeBatchScratch(const DecodeSlice* slices, int count);
// longSplitsFirst: the grid is (sequences, blocks), so every sequence's first blocks (the full heads' long splits) are
// scheduled before any sequence's later ones; else (blocks, sequences), sequence after sequence.
void launchAttentionDecodeBatch(const DecodeSlice* slices, int count, DType cacheType, float* scratch, int* arrivals,
                                bool longSplitsFirst, cudaStream_t stream);
// attentionBatch's slices sorted for launching: the one-row slices with a split-K kernel grouped by cache dtype and KV
// scheme (one batched launch each, all sized by scratchBytes), and the rest (prefill chunks, other head dims).
struct DecodeBatchPlan {
  struct Group {
    DType cacheType;
    int scheme;
    std::vector<DecodeSlice> slices;
  };
  std::vector<Group> groups;
  std::vector<BatchSlice> rest;
  size_t scratchBytes = 0;
};
DecodeBatchPlan planDecodeBatch(const Tensor& q, Tensor& out, const AttentionArgs& shape, const std::vector<BatchSlice>& slices,
                                int multiprocessors, bool alone);

// Quantized KV-cache writes (quantize.cu; one warp per row and KV head, codes equal to quant.h's quantizeKvRow).
void launchWriteCacheQuantized(const float* source, int64_t rows, int64_t stride, int64_t kvHeads, int headDim, uint8_t* codes,
                               uint16_t* scales, int64_t capacity, int64_t start, int scheme, cudaStream_t stream);
// RoPE on q and k, then k and v quantized into the code / scale planes at positions[r] (streaming heads: their region).
void launchRopeWriteCacheQuantized(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies,
                                   int64_t rows, int heads, int kvHeads, int headDim, bool interleaved, void* keyCodes,
                                   void* valueCodes, int64_t capacity, const StreamingLayout& streaming, const KvQuantPlanes& quant,
                                   cudaStream_t stream);
// launchRopeWriteCache / launchRopeWriteCacheQuantized for every slice of a batched step in one launch (per 64
// slices): each row finds its slice, and writes its own caches by their layout and scheme.
void launchRopeWriteCacheBatch(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int heads,
                               int kvHeads, int headDim, bool interleaved, const std::vector<BatchSlice>& slices, cudaStream_t stream);

// Input gradients (backward.cu).
void launchRmsNormBackward(const float* x, const void* weight, DType weightType, const float* gradOut, float* gradInput,
                           int64_t rows, int64_t dim, float eps, bool accumulate, cudaStream_t stream);
void launchSwigluBackward(const float* gate, const float* up, const float* gradOut, float* gradGate, float* gradUp, int64_t count,
                          cudaStream_t stream);
// gradOut [rows, m] · weight [m, k] into out [rows, k]: the fallback when cuBLAS is not there.
void launchMatmulBackward(const float* gradOut, int64_t rows, int64_t m, const void* weight, DType weightType, int64_t k,
                          float* out, bool accumulate, cudaStream_t stream);
void launchGateMix(const float* streaming, const float* full, const float* gates, float* out, int64_t count,
                   const GateMixArgs& args, cudaStream_t stream);
size_t gateMixBackwardScratch(int64_t rows, int kvHeads);
void launchGateMixBackward(const float* gradOut, const float* streaming, const float* full, const float* gates,
                           float* gradStreaming, float* gradGates, int64_t rows, const GateMixArgs& args, float* scratch,
                           cudaStream_t stream);
size_t attentionBackwardScratch(const AttentionBackwardArgs& args);
void launchAttentionBackward(const float* query, const void* keys, const void* values, DType cacheType, const float* out,
                             const float* gradOut, float* gradQuery, float* gradKey, float* gradValue,
                             const AttentionBackwardArgs& args, float* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace duo
