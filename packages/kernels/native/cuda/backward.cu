// CUDA input gradients for the gate trainer: RMSNorm, SwiGLU, the gate mix, attention (causal or Λ) and a matmul
// fallback for when cuBLAS is missing. No atomics: every gradient element is summed by one thread in a fixed order, and
// block reductions use a fixed tree, so a run is bit-for-bit repeatable.
#include "cuda-common.cuh"

namespace duo {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxPerLane = 8;  // headDim ≤ 256: each lane owns channels lane, lane + 32, …

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024) in a fixed order; every thread gets the total.
__device__ float blockSum(float value, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  value = warpSum(value);
  __syncthreads();
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  float total = lane < warps ? shared[lane] : 0.0f;
  total = warpSum(total);
  return total;
}

template <typename T>
__global__ void rmsNormBackwardKernel(const float* x, const T* weight, const float* gradOut, float* gradInput, int64_t dim,
                                      float eps, bool accumulate) {
  __shared__ float partial[32];
  const float* row = x + blockIdx.x * dim;
  const float* grad = gradOut + blockIdx.x * dim;
  float* target = gradInput + blockIdx.x * dim;
  float squares = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    squares += row[i] * row[i];
    dot += row[i] * toFloat(weight[i]) * grad[i];
  }
  squares = blockSum(squares, partial);
  dot = blockSum(dot, partial);
  const float inverse = rsqrtf(squares / static_cast<float>(dim) + eps);
  const float correction = dot / static_cast<float>(dim) * inverse * inverse * inverse;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float value = inverse * toFloat(weight[i]) * grad[i] - correction * row[i];
    target[i] = accumulate ? target[i] + value : value;
  }
}

__global__ void swigluBackwardKernel(const float* gate, const float* up, const float* gradOut, float* gradGate, float* gradUp,
                                     int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float g = gate[i], u = up[i], d = gradOut[i];
  const float sigmoid = 1.0f / (1.0f + __expf(-g));
  gradGate[i] = d * u * sigmoid * (1.0f + g * (1.0f - sigmoid));
  gradUp[i] = d * g * sigmoid;
}

// Fallback when cuBLAS is missing: out[r, c] (+)= Σ_j gradOut[r, j] · W[j, c]; threads across c read W coalesced.
template <typename T>
__global__ void matmulBackwardKernel(const float* gradOut, const T* weight, float* out, int64_t m, int64_t k, bool accumulate) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= k) return;
  const float* grad = gradOut + blockIdx.y * m;
  float sum = 0;
  for (int64_t j = 0; j < m; j++) sum += grad[j] * toFloat(weight[j * k + c]);
  float* target = out + blockIdx.y * k + c;
  *target = accumulate ? *target + sum : sum;
}

__device__ __forceinline__ float clampGate(float gate) { return fminf(1.0f, fmaxf(0.0f, gate)); }

__global__ void gateMixKernel(const float* streaming, const float* full, const float* gates, float* out, int64_t count,
                              GateMixArgs args) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= count) return;
  const int64_t width = static_cast<int64_t>(args.heads) * args.headDim;
  const float gate = clampGate(gates[(e % width) / args.headDim / (args.heads / args.kvHeads)]);
  out[e] = (1.0f - gate) * streaming[e] + gate * full[e];
}

constexpr int kGateRowsPerPart = 64;

// Block (part, kvHead): the group's columns of rows [part · 64, part · 64 + 64); writes gradStreaming there and the
// part's share of ∂L/∂α; gateMixTotalKernel then adds the parts in order.
__global__ void gateMixBackwardKernel(const float* gradOut, const float* streaming, const float* full, const float* gates,
                                      float* gradStreaming, float* partial, int64_t rows, GateMixArgs args) {
  __shared__ float shared[32];
  const int kvHead = blockIdx.y;
  const int64_t width = static_cast<int64_t>(args.heads) * args.headDim;
  const int64_t groupWidth = static_cast<int64_t>(args.heads / args.kvHeads) * args.headDim;
  const int64_t firstRow = static_cast<int64_t>(blockIdx.x) * kGateRowsPerPart;
  const int64_t lastRow = lesser(rows, firstRow + kGateRowsPerPart);
  const float gate = clampGate(gates[kvHead]);
  float sum = 0;
  for (int64_t index = threadIdx.x; index < (lastRow - firstRow) * groupWidth; index += blockDim.x) {
    const int64_t e = (firstRow + index / groupWidth) * width + kvHead * groupWidth + index % groupWidth;
    const float g = gradOut[e];
    sum += g * (full[e] - streaming[e]);
    gradStreaming[e] = (1.0f - gate) * g;
  }
  sum = blockSum(sum, shared);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * args.kvHeads + kvHead] = sum;
}

__global__ void gateMixTotalKernel(const float* partial, int64_t parts, int kvHeads, float* gradGates) {
  const int kvHead = threadIdx.x;
  if (kvHead >= kvHeads) return;
  double total = 0;
  for (int64_t part = 0; part < parts; part++) total += partial[part * kvHeads + kvHead];
  gradGates[kvHead] = static_cast<float>(total);
}

// ⟨shared vector, row⟩ over headDim channels; 16-byte loads when the width allows.
template <typename T>
__device__ __forceinline__ float dotRow(const float* vector, const T* row, int headDim) {
  float sum = 0;
  if (headDim % 8 == 0) {
    for (int t = 0; t < headDim; t += 8) {
      float values[8];
      loadChannels<T, 8>(row + t, values);
#pragma unroll
      for (int c = 0; c < 8; c++) sum += vector[t + c] * values[c];
    }
  } else {
    for (int t = 0; t < headDim; t++) sum += vector[t] * toFloat(row[t]);
  }
  return sum;
}

// One warp per (query i, head h): the softmax's log-normaliser L and D = ⟨dO, O⟩ for the key-centric pass, and
// dQ = scale · Σ_j P_ij (dP_ij − D) k_j. Lanes take one key each for the dot products, then all lanes add each key's
// row (coalesced) to the channels they own.
template <typename T>
__global__ void attentionBackwardQueryKernel(const float* query, const T* keys, const T* values, const float* out,
                                             const float* gradOut, float* gradQuery, float* logNormaliser, float* outputDot,
                                             AttentionBackwardArgs args) {
  extern __shared__ float shared[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (task >= args.length * args.heads) return;
  const int headDim = args.headDim;
  const int64_t i = task / args.heads;
  const int head = static_cast<int>(task % args.heads), kvHead = head / (args.heads / args.kvHeads);
  const int64_t offset = i * static_cast<int64_t>(args.heads) * headDim + static_cast<int64_t>(head) * headDim;
  float* queryRow = shared + warp * 2 * headDim;
  float* gradRow = queryRow + headDim;
  float d = 0;
  for (int t = lane; t < headDim; t += 32) {
    queryRow[t] = query[offset + t];
    gradRow[t] = gradOut[offset + t];
    d += gradRow[t] * out[offset + t];
  }
  d = warpSum(d);
  __syncwarp();
  const T* headKeys = keys + static_cast<int64_t>(kvHead) * args.capacity * headDim;
  const T* headValues = values + static_cast<int64_t>(kvHead) * args.capacity * headDim;
  const int64_t count = args.keyCount(i);
  float maximum = -INFINITY, sum = 0;
  for (int64_t n = lane; n < count; n += 32) {
    const float score = dotRow(queryRow, headKeys + args.keyAt(i, n) * headDim, headDim) * args.scale;
    const float larger = fmaxf(maximum, score);
    sum = sum * __expf(maximum - larger) + __expf(score - larger);
    maximum = larger;
  }
  const float blockMaximum = warpMax(maximum);
  sum = warpSum(maximum == -INFINITY ? 0.0f : sum * __expf(maximum - blockMaximum));
  const float normaliser = blockMaximum + __logf(sum);
  float accumulator[kMaxPerLane] = {};
  for (int64_t base = 0; base < count; base += 32) {
    const int64_t n = base + lane;
    float ds = 0;
    int64_t key = 0;
    if (n < count) {
      key = args.keyAt(i, n);
      const float p = __expf(dotRow(queryRow, headKeys + key * headDim, headDim) * args.scale - normaliser);
      ds = p * (dotRow(gradRow, headValues + key * headDim, headDim) - d);
    }
    const int held = static_cast<int>(lesser(32, count - base));
    for (int source = 0; source < held; source++) {
      const float weight = __shfl_sync(0xffffffffu, ds, source);
      const T* keyRow = headKeys + __shfl_sync(0xffffffffu, key, source) * headDim;
#pragma unroll
      for (int c = 0; c < kMaxPerLane; c++)
        if (lane + 32 * c < headDim) accumulator[c] += weight * toFloat(keyRow[lane + 32 * c]);
    }
  }
#pragma unroll
  for (int c = 0; c < kMaxPerLane; c++)
    if (lane + 32 * c < headDim) gradQuery[offset + lane + 32 * c] = accumulator[c] * args.scale;
  if (lane == 0) {
    logNormaliser[head * args.length + i] = normaliser;
    outputDot[head * args.length + i] = d;
  }
}

// ⟨shared vector, f32 row⟩ with float4 loads when the width allows.
__device__ __forceinline__ float dotF32(const float* vector, const float* row, int headDim) {
  float sum = 0;
  if (headDim % 4 == 0) {
    for (int t = 0; t < headDim; t += 4) {
      const float4 v = *reinterpret_cast<const float4*>(row + t);
      sum += vector[t] * v.x + vector[t + 1] * v.y + vector[t + 2] * v.z + vector[t + 3] * v.w;
    }
  } else {
    for (int t = 0; t < headDim; t++) sum += vector[t] * row[t];
  }
  return sum;
}

// One warp per (key j, KV head g): dK_j = scale · Σ_{h ∈ g, i sees j} dS_ij q_i and dV_j = Σ P_ij dO_i, with P and dS
// rebuilt from L and D. Lanes take one query each for the dot products, then add each query's rows to their channels.
template <typename T>
__global__ void attentionBackwardKeyKernel(const float* query, const T* keys, const T* values, const float* gradOut,
                                           const float* logNormaliser, const float* outputDot, float* gradKey, float* gradValue,
                                           AttentionBackwardArgs args) {
  extern __shared__ float shared[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (task >= args.length * args.kvHeads) return;
  const int headDim = args.headDim, group = args.heads / args.kvHeads;
  const int64_t j = task / args.kvHeads;
  const int kvHead = static_cast<int>(task % args.kvHeads);
  float* keyRow = shared + warp * 2 * headDim;
  float* valueRow = keyRow + headDim;
  const int64_t cacheOffset = (static_cast<int64_t>(kvHead) * args.capacity + j) * headDim;
  for (int t = lane; t < headDim; t += 32) {
    keyRow[t] = toFloat(keys[cacheOffset + t]);
    valueRow[t] = toFloat(values[cacheOffset + t]);
  }
  __syncwarp();
  const int64_t queryStride = static_cast<int64_t>(args.heads) * headDim;
  const int64_t end = args.queryEnd(j);
  float keyAccumulator[kMaxPerLane] = {}, valueAccumulator[kMaxPerLane] = {};
  for (int head = kvHead * group; head < (kvHead + 1) * group; head++) {
    for (int64_t base = j; base < end; base += 32) {
      const int64_t i = base + lane;
      float p = 0, ds = 0;
      if (i < end) {
        const int64_t offset = i * queryStride + static_cast<int64_t>(head) * headDim;
        p = __expf(dotF32(keyRow, query + offset, headDim) * args.scale - logNormaliser[head * args.length + i]);
        ds = p * (dotF32(valueRow, gradOut + offset, headDim) - outputDot[head * args.length + i]);
      }
      const int held = static_cast<int>(lesser(32, end - base));
      for (int source = 0; source < held; source++) {
        const float weight = __shfl_sync(0xffffffffu, p, source);
        const float keyWeight = __shfl_sync(0xffffffffu, ds, source);
        const int64_t offset = (base + source) * queryStride + static_cast<int64_t>(head) * headDim;
#pragma unroll
        for (int c = 0; c < kMaxPerLane; c++) {
          if (lane + 32 * c < headDim) {
            valueAccumulator[c] += weight * gradOut[offset + lane + 32 * c];
            keyAccumulator[c] += keyWeight * query[offset + lane + 32 * c];
          }
        }
      }
    }
  }
  const int64_t target = j * static_cast<int64_t>(args.kvHeads) * headDim + static_cast<int64_t>(kvHead) * headDim;
#pragma unroll
  for (int c = 0; c < kMaxPerLane; c++) {
    if (lane + 32 * c < headDim) {
      gradKey[target + lane + 32 * c] = keyAccumulator[c] * args.scale;
      gradValue[target + lane + 32 * c] = valueAccumulator[c];
    }
  }
}

}  // namespace

void launchRmsNormBackward(const float* x, const void* weight, DType weightType, const float* gradOut, float* gradInput,
                           int64_t rows, int64_t dim, float eps, bool accumulate, cudaStream_t stream) {
  if (rows == 0) return;
  dispatchFloat(weightType, [&](auto tag) {
    using T = decltype(tag);
    rmsNormBackwardKernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, static_cast<const T*>(weight), gradOut,
                                                                                    gradInput, dim, eps, accumulate);
  });
  checkLaunch("rmsNormBackwardKernel");
}

void launchSwigluBackward(const float* gate, const float* up, const float* gradOut, float* gradGate, float* gradUp, int64_t count,
                          cudaStream_t stream) {
  if (count == 0) return;
  swigluBackwardKernel<<<blocksFor(count, kThreads), kThreads, 0, stream>>>(gate, up, gradOut, gradGate, gradUp, count);
  checkLaunch("swigluBackwardKernel");
}

void launchMatmulBackward(const float* gradOut, int64_t rows, int64_t m, const void* weight, DType weightType, int64_t k,
                          float* out, bool accumulate, cudaStream_t stream) {
  if (rows == 0) return;
  dispatchFloat(weightType, [&](auto tag) {
    using T = decltype(tag);
    matmulBackwardKernel<T><<<dim3(blocksFor(k, kThreads), static_cast<unsigned>(rows)), kThreads, 0, stream>>>(
        gradOut, static_cast<const T*>(weight), out, m, k, accumulate);
  });
  checkLaunch("matmulBackwardKernel");
}

void launchGateMix(const float* streaming, const float* full, const float* gates, float* out, int64_t count,
                   const GateMixArgs& args, cudaStream_t stream) {
  if (count == 0) return;
  gateMixKernel<<<blocksFor(count, kThreads), kThreads, 0, stream>>>(streaming, full, gates, out, count, args);
  checkLaunch("gateMixKernel");
}

size_t gateMixBackwardScratch(int64_t rows, int kvHeads) {
  return static_cast<size_t>((rows + kGateRowsPerPart - 1) / kGateRowsPerPart) * kvHeads * sizeof(float);
}

void launchGateMixBackward(const float* gradOut, const float* streaming, const float* full, const float* gates,
                           float* gradStreaming, float* gradGates, int64_t rows, const GateMixArgs& args, float* scratch,
                           cudaStream_t stream) {
  const int64_t parts = (rows + kGateRowsPerPart - 1) / kGateRowsPerPart;
  if (parts > 0) {
    gateMixBackwardKernel<<<dim3(static_cast<unsigned>(parts), static_cast<unsigned>(args.kvHeads)), kThreads, 0, stream>>>(
        gradOut, streaming, full, gates, gradStreaming, scratch, rows, args);
    checkLaunch("gateMixBackwardKernel");
  }
  gateMixTotalKernel<<<1, 32 * ((args.kvHeads + 31) / 32), 0, stream>>>(scratch, parts, args.kvHeads, gradGates);
  checkLaunch("gateMixTotalKernel");
}

size_t attentionBackwardScratch(const AttentionBackwardArgs& args) {
  return static_cast<size_t>(2 * args.heads * args.length) * sizeof(float);
}

void launchAttentionBackward(const float* query, const void* keys, const void* values, DType cacheType, const float* out,
                             const float* gradOut, float* gradQuery, float* gradKey, float* gradValue,
                             const AttentionBackwardArgs& args, float* scratch, cudaStream_t stream) {
  if (args.length == 0) return;
  if (args.headDim > 32 * kMaxPerLane) throw Error("DUO_ARG", "attentionBackward supports headDim up to 256 on CUDA");
  float* logNormaliser = scratch;
  float* outputDot = scratch + args.heads * args.length;
  const size_t shared = static_cast<size_t>(kWarpsPerBlock) * 2 * args.headDim * sizeof(float);
  dispatchFloat(cacheType, [&](auto tag) {
    using T = decltype(tag);
    const T* keyCache = static_cast<const T*>(keys);
    const T* valueCache = static_cast<const T*>(values);
    attentionBackwardQueryKernel<T><<<blocksFor(args.length * args.heads, kWarpsPerBlock), kWarpsPerBlock * 32, shared, stream>>>(
        query, keyCache, valueCache, out, gradOut, gradQuery, logNormaliser, outputDot, args);
    checkLaunch("attentionBackwardQueryKernel");
    attentionBackwardKeyKernel<T><<<blocksFor(args.length * args.kvHeads, kWarpsPerBlock), kWarpsPerBlock * 32, shared, stream>>>(
        query, keyCache, valueCache, gradOut, logNormaliser, outputDot, gradKey, gradValue, args);
    checkLaunch("attentionBackwardKeyKernel");
  });
}

}  // namespace cuda
}  // namespace duo
