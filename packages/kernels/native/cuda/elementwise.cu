// Element-wise (every DUO_ELEMENTWISE of ops.def), normalisation, RoPE, cache-write and reduction kernels of the CUDA
// backend.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <cfloat>
#include <cstdint>

#include <utility>

#include "cuda-common.cuh"
#include "rope-write.cuh"
#include "../elementwise.h"

namespace duo {
namespace cuda {

namespace {

template <typename S, typename T>
__global__ void convertKernel(const S* source, T* target, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    target[i] = fromFloat<T>(toFloat(source[i]));
}

template <typename T>
__global__ void fillRandomKernel(T* data, int64_t count, uint64_t seed, float std) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    data[i] = fromFloat<T>(randomNormal(seed, static_cast<uint64_t>(i)) * std);
}

template <typename T>
__global__ void embeddingKernel(const T* table, const int32_t* ids, float* out, int64_t dim) {
  dependOnPrevious();
  int64_t row = blockIdx.y;
  const T* source = table + static_cast<int64_t>(ids[row]) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < dim; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[row * dim + i] = toFloat(source[i]);
}

// One block per row: sum of squares in f32 with a block reduction; 16-byte loads when the row allows. When each thread
// holds one 16-byte chunk (a decode row), its gain is loaded before waiting for the previous kernel (gains are constant).
template <typename T>
__global__ void rmsNormKernel(const float* x, const T* weight, float* out, int64_t dim, float eps) {
  __shared__ float partial[32];
  const bool vector = (dim & 3) == 0;
  const bool single = vector && dim <= static_cast<int64_t>(blockDim.x) * 4;
  const int64_t mine = static_cast<int64_t>(threadIdx.x) * 4;
  float gain[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (single && mine < dim)
#pragma unroll
    for (int j = 0; j < 4; j++) gain[j] = toFloat(weight[mine + j]);
  dependOnPrevious();
  const float* row = x + blockIdx.x * dim;
  float* target = out + blockIdx.x * dim;
  float sum = 0;
  float4 held = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (single) {
    if (mine < dim) held = *reinterpret_cast<const float4*>(row + mine);
    sum = held.x * held.x + held.y * held.y + held.z * held.z + held.w * held.w;
  } else if (vector) {
    for (int64_t i = mine; i < dim; i += blockDim.x * 4) {
      const float4 value = *reinterpret_cast<const float4*>(row + i);
      sum += value.x * value.x + value.y * value.y + value.z * value.z + value.w * value.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += row[i] * row[i];
  }
  sum = warpSum(sum);
  const unsigned lane = threadIdx.x & 31;
  if (lane == 0) partial[threadIdx.x >> 5] = sum;
  __syncthreads();
  // Every warp adds the warps' sums with shuffles (one shared read per lane, not one per warp in sequence).
  const float total = warpSum(lane < (blockDim.x >> 5) ? partial[lane] : 0.0f);
  const float inverse = rsqrtf(total / static_cast<float>(dim) + eps);
  if (single) {
    if (mine < dim)
      *reinterpret_cast<float4*>(target + mine) =
          make_float4(held.x * inverse * gain[0], held.y * inverse * gain[1], held.z * inverse * gain[2], held.w * inverse * gain[3]);
  } else if (vector) {
    for (int64_t i = mine; i < dim; i += blockDim.x * 4) {
      const float4 value = *reinterpret_cast<const float4*>(row + i);
      *reinterpret_cast<float4*>(target + i) = make_float4(value.x * inverse * toFloat(weight[i]), value.y * inverse * toFloat(weight[i + 1]),
                                                           value.z * inverse * toFloat(weight[i + 2]), value.w * inverse * toFloat(weight[i + 3]));
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) target[i] = row[i] * inverse * toFloat(weight[i]);
  }
}

// One thread per (row, channel pair); the angle in double so positions in the millions keep their phase.
__global__ void ropeKernel(float* x, const int32_t* positions, const float* frequencies, int64_t rows, int64_t stride, int heads,
                           int headDim, bool interleaved, double direction) {
  int half = headDim / 2;
  int64_t total = rows * half;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t row = t / half;
    int i = static_cast<int>(t % half);
    double sine, cosine;
    sincos(direction * static_cast<double>(positions[row]) * static_cast<double>(frequencies[i]), &sine, &cosine);
    float s = static_cast<float>(sine), c = static_cast<float>(cosine);
    for (int h = 0; h < heads; h++) {
      float* head = x + row * stride + static_cast<int64_t>(h) * headDim;
      int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
      float first = head[a], second = head[b];
      head[a] = first * c - second * s;
      head[b] = first * s + second * c;
    }
  }
}

__global__ void decodeAdvanceKernel(const int32_t* next, int32_t* ids, int32_t* positions) {
  dependOnPrevious();
  ids[0] = next[0];
  positions[0] += 1;
}

// grid (rows, heads + kvHeads), one thread per channel pair (rope-write.cuh).
template <typename T>
__global__ void ropeWriteCacheKernel(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies,
                                     int heads, int kvHeads, int headDim, bool interleaved, T* keyCache, T* valueCache,
                                     int64_t capacity, StreamingLayout streaming) {
  ropeWriteCacheBlock<T>(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, keyCache, valueCache, capacity,
                         streaming, blockIdx.x, static_cast<int>(blockIdx.y));
}

// Any DUO_ELEMENTWISE op of ops.def: out[i] = Op{}(inputs[0][i], …), grid-stride.
struct ElementwiseInputs { const float* data[kMaxElementwiseInputs]; };

template <typename Op, size_t... I>
__global__ void elementwiseKernel(ElementwiseInputs inputs, float* out, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = Op{}(inputs.data[I][i]...);
}

__global__ void biasResidualKernel(float* out, const float* bias, const float* residual, int64_t rows, int64_t cols) {
  int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] += (bias ? bias[i % cols] : 0.0f) + (residual ? residual[i] : 0.0f);
}

template <typename T>
__global__ void writeCacheKernel(const float* source, int64_t rows, int64_t sourceStride, T* cache, int64_t kvHeads, int64_t capacity,
                                 int64_t headDim, int64_t start) {
  int64_t total = rows * kvHeads * headDim;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t row = t / (kvHeads * headDim);
    int64_t rest = t % (kvHeads * headDim);
    int64_t head = rest / headDim, channel = rest % headDim;
    cache[(head * capacity + start + row) * headDim + channel] = fromFloat<T>(source[row * sourceStride + rest]);
  }
}

// Stage one: each block reduces one slice of one row to (value, index); stage two: one block per row reduces the
// slices. Ties resolve to the lowest index, like the CPU backend.
constexpr int kArgmaxSlices = 64;

__device__ __forceinline__ void argmaxMerge(float& best, int64_t& index, float otherValue, int64_t otherIndex) {
  if (otherValue > best || (otherValue == best && otherIndex < index)) {
    best = otherValue;
    index = otherIndex;
  }
}

__device__ void blockArgmax(float& best, int64_t& index) {
  __shared__ float values[32];
  __shared__ int64_t indices[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    argmaxMerge(best, index, __shfl_xor_sync(0xffffffffu, best, offset), __shfl_xor_sync(0xffffffffu, index, offset));
  if ((threadIdx.x & 31) == 0) {
    values[threadIdx.x >> 5] = best;
    indices[threadIdx.x >> 5] = index;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (unsigned w = 1; w < (blockDim.x >> 5); w++) argmaxMerge(best, index, values[w], indices[w]);
}

__global__ void argmaxSliceKernel(const float* logits, int64_t vocab, float* sliceValues, int64_t* sliceIndices) {
  dependOnPrevious();
  const int64_t row = blockIdx.y, slice = blockIdx.x;
  const int64_t length = (vocab + kArgmaxSlices - 1) / kArgmaxSlices;
  const int64_t begin = slice * length, end = lesser(vocab, begin + length);
  const float* values = logits + row * vocab;
  float best = -FLT_MAX;
  int64_t index = vocab;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) argmaxMerge(best, index, values[i], i);
  blockArgmax(best, index);
  if (threadIdx.x == 0) {
    sliceValues[row * kArgmaxSlices + slice] = best;
    sliceIndices[row * kArgmaxSlices + slice] = index;
  }
}

__global__ void argmaxFinalKernel(const float* sliceValues, const int64_t* sliceIndices, int32_t* out) {
  dependOnPrevious();
  float best = -FLT_MAX;
  int64_t index = INT64_MAX;
  if (threadIdx.x < kArgmaxSlices) {
    best = sliceValues[blockIdx.x * kArgmaxSlices + threadIdx.x];
    index = sliceIndices[blockIdx.x * kArgmaxSlices + threadIdx.x];
  }
  blockArgmax(best, index);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(index);
}

__device__ float blockReduce(float value, bool isMax, float* shared) {
  value = isMax ? warpMax(value) : warpSum(value);
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = value;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? shared[threadIdx.x] : (isMax ? -FLT_MAX : 0.0f);
    v = isMax ? warpMax(v) : warpSum(v);
    if (threadIdx.x == 0) shared[0] = v;
  }
  __syncthreads();
  float result = shared[0];
  __syncthreads();
  return result;
}

__global__ void softmaxKernel(const float* logits, float* out, int64_t vocab, float temperature) {
  __shared__ float shared[32];
  const float* row = logits + blockIdx.x * vocab;
  float* target = out + blockIdx.x * vocab;
  float maximum = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) maximum = fmaxf(maximum, row[i]);
  maximum = blockReduce(maximum, true, shared);
  float sum = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    float e = expf((row[i] - maximum) / temperature);
    target[i] = e;
    sum += e;
  }
  sum = blockReduce(sum, false, shared);
  float inverse = 1.0f / sum;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) target[i] *= inverse;
}

constexpr unsigned kThreads = 256;
unsigned gridFor(int64_t count) { return blocksFor(count, kThreads) > 65535u * 8 ? 65535u * 8 : blocksFor(count, kThreads); }

}  // namespace

void launchConvert(const void* source, DType sourceType, void* target, DType targetType, int64_t count, cudaStream_t stream) {
  dispatchFloat(sourceType, [&](auto s) {
    dispatchFloat(targetType, [&](auto t) {
      using S = decltype(s);
      using T = decltype(t);
      convertKernel<S, T><<<gridFor(count), kThreads, 0, stream>>>(static_cast<const S*>(source), static_cast<T*>(target), count);
    });
  });
  checkLaunch("convert");
}

void launchFillRandom(void* data, DType dtype, int64_t count, uint64_t seed, float std, cudaStream_t stream) {
  dispatchFloat(dtype, [&](auto t) {
    using T = decltype(t);
    fillRandomKernel<T><<<gridFor(count), kThreads, 0, stream>>>(static_cast<T*>(data), count, seed, std);
  });
  checkLaunch("fillRandom");
}

void launchEmbedding(const void* table, DType dtype, const int32_t* ids, float* out, int64_t rows, int64_t dim, cudaStream_t stream) {
  if (rows == 0) return;
  dispatchFloat(dtype, [&](auto t) {
    using T = decltype(t);
    dim3 grid(blocksFor(dim, kThreads), static_cast<unsigned>(rows));
    launchChained(embeddingKernel<T>, grid, dim3(kThreads), 0, stream, static_cast<const T*>(table), ids, out, dim);
  });
  checkLaunch("embedding");
}

namespace {
std::atomic<bool> chainingAllowed{true};  // Device::Tuning::chainLaunches
}  // namespace

void setChainLaunches(bool allowed) { chainingAllowed.store(allowed, std::memory_order_relaxed); }

bool chainLaunches() {
  return computeCapabilityMajor() >= 9 && chainingAllowed.load(std::memory_order_relaxed);
}

void launchRmsNorm(const float* x, const void* weight, DType weightType, float* out, int64_t rows, int64_t dim, float eps,
                   cudaStream_t stream) {
  if (rows == 0) return;
  dispatchFloat(weightType, [&](auto t) {
    using T = decltype(t);
    // One block per row, wide enough that a 4096-wide row takes a single pass (a lone row is latency-bound).
    unsigned threads = static_cast<unsigned>(std::min<int64_t>(1024, std::max<int64_t>(32, ((dim + 3) / 4 + 31) / 32 * 32)));
    launchChained(rmsNormKernel<T>, dim3(static_cast<unsigned>(rows)), dim3(threads), 0, stream, x, static_cast<const T*>(weight), out,
                  dim, eps);
  });
  checkLaunch("rmsNorm");
}

void launchRope(float* x, const int32_t* positions, const float* frequencies, int64_t rows, int64_t stride, int heads, int headDim,
                bool interleaved, bool inverse, cudaStream_t stream) {
  int64_t work = rows * (headDim / 2);
  if (work == 0) return;
  ropeKernel<<<gridFor(work), kThreads, 0, stream>>>(x, positions, frequencies, rows, stride, heads, headDim, interleaved,
                                                     inverse ? -1.0 : 1.0);
  checkLaunch("rope");
}

namespace {
template <typename Op, size_t... I>
void launchElementwiseOf(const ElementwiseInputs& inputs, float* out, int64_t count, cudaStream_t stream, std::index_sequence<I...>) {
  elementwiseKernel<Op, I...><<<gridFor(count), kThreads, 0, stream>>>(inputs, out, count);
}
}  // namespace

void launchElementwise(ElementwiseOp op, const float* const* inputs, float* out, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  ElementwiseInputs packed{};
  for (int i = 0; i < elementwiseInputs(op); i++) packed.data[i] = inputs[i];
  dispatchElementwise(op, [&](auto functor) {
    using Op = decltype(functor);
    launchElementwiseOf<Op>(packed, out, count, stream, std::make_index_sequence<elementwise::kInputs<Op>>{});
  });
  checkLaunch(elementwiseName(op));
}

void launchBiasResidual(float* out, const float* bias, const float* residual, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0 || (!bias && !residual)) return;
  biasResidualKernel<<<gridFor(rows * cols), kThreads, 0, stream>>>(out, bias, residual, rows, cols);
  checkLaunch("biasResidual");
}

void launchWriteCache(const float* source, int64_t rows, int64_t sourceStride, void* cache, DType cacheType, int64_t kvHeads,
                      int64_t capacity, int64_t headDim, int64_t start, cudaStream_t stream) {
  int64_t work = rows * kvHeads * headDim;
  if (work == 0) return;
  dispatchFloat(cacheType, [&](auto t) {
    using T = decltype(t);
    writeCacheKernel<T><<<gridFor(work), kThreads, 0, stream>>>(source, rows, sourceStride, static_cast<T*>(cache), kvHeads, capacity,
                                                                headDim, start);
  });
  checkLaunch("writeCache");
}

void launchRopeWriteCache(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int64_t rows,
                          int heads, int kvHeads, int headDim, bool interleaved, void* keyCache, void* valueCache, DType cacheType,
                          int64_t capacity, const StreamingLayout& streaming, cudaStream_t stream) {
  if (rows == 0) return;
  dispatchFloat(cacheType, [&](auto t) {
    using T = decltype(t);
    const unsigned threads = static_cast<unsigned>(std::min(256, std::max(32, (headDim / 2 + 31) / 32 * 32)));
    launchChained(ropeWriteCacheKernel<T>, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(heads + kvHeads)), dim3(threads), 0,
                  stream, q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, static_cast<T*>(keyCache),
                  static_cast<T*>(valueCache), capacity, streaming);
  });
  checkLaunch("ropeWriteCache");
}

size_t argmaxScratch(int64_t rows) { return static_cast<size_t>(rows) * kArgmaxSlices * (sizeof(float) + sizeof(int64_t)); }

void launchDecodeAdvance(const int32_t* next, int32_t* ids, int32_t* positions, cudaStream_t stream) {
  launchChained(decodeAdvanceKernel, dim3(1), dim3(1), 0, stream, next, ids, positions);
  checkLaunch("decodeAdvance");
}

void launchArgmax(const float* logits, int32_t* out, int64_t rows, int64_t vocab, void* scratch, cudaStream_t stream) {
  if (rows == 0) return;
  float* sliceValues = static_cast<float*>(scratch);
  int64_t* sliceIndices = reinterpret_cast<int64_t*>(sliceValues + rows * kArgmaxSlices);
  launchChained(argmaxSliceKernel, dim3(kArgmaxSlices, static_cast<unsigned>(rows)), dim3(256), 0, stream, logits, vocab, sliceValues,
                sliceIndices);
  checkLaunch("argmax");
  launchChained(argmaxFinalKernel, dim3(static_cast<unsigned>(rows)), dim3(kArgmaxSlices), 0, stream, sliceValues, sliceIndices, out);
  checkLaunch("argmaxFinal");
}

void launchSoftmax(const float* logits, float* out, int64_t rows, int64_t vocab, float temperature, cudaStream_t stream) {
  if (rows == 0) return;
  softmaxKernel<<<static_cast<unsigned>(rows), 1024, 0, stream>>>(logits, out, vocab, temperature);
  checkLaunch("softmax");
}

}  // namespace cuda
}  // namespace duo
