// Element-wise, normalisation and reduction kernels of the CUDA backend.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <cfloat>
#include <cstdint>

#include <utility>

#include "cuda-common.cuh"
#include "../elementwise.h"
#include "../quant.h"

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

// grid (rows, heads + kvHeads), one thread per channel pair: each block rotates one query or key head of one row
// (angle in double, so positions in the millions keep their phase); key blocks also write the rotated key pair and
// the value pair into the caches at slot positions[row].
template <typename T>
__global__ void ropeWriteCacheKernel(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies,
                                     int heads, int kvHeads, int headDim, bool interleaved, T* keyCache, T* valueCache,
                                     int64_t capacity, StreamingLayout streaming) {
  const int half = headDim / 2;
  const int64_t row = blockIdx.x;
  const int head = blockIdx.y;
  const bool isQuery = head < heads;
  const int h = isQuery ? head : head - heads;
  float* base = isQuery ? q + (row * heads + h) * static_cast<int64_t>(headDim) : k + (row * kvHeads + h) * static_cast<int64_t>(headDim);
  // Positions are written only between steps (or by the host before the chunk) and frequencies never: the first angle
  // is computed before waiting for the matmul that writes q/k/v (chained launches).
  auto angle = [&](int i, float& c, float& s) {
    double sine, cosine;
    sincos(static_cast<double>(positions[row]) * static_cast<double>(frequencies[i]), &sine, &cosine);
    c = static_cast<float>(cosine);
    s = static_cast<float>(sine);
  };
  float firstCosine = 1.0f, firstSine = 0.0f;
  if (static_cast<int>(threadIdx.x) < half) angle(threadIdx.x, firstCosine, firstSine);
  dependOnPrevious();
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float c = firstCosine, s = firstSine;
    if (i != static_cast<int>(threadIdx.x)) angle(i, c, s);
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float first = base[a], second = base[b];
    const float rotatedA = first * c - second * s, rotatedB = first * s + second * c;
    base[a] = rotatedA;
    base[b] = rotatedB;
    if (!isQuery) {
      const bool streams = streaming.streams(h);
      T* keys = streams ? static_cast<T*>(streaming.key) : keyCache;
      T* values = streams ? static_cast<T*>(streaming.value) : valueCache;
      const int64_t slot = streams ? streaming.element(h, positions[row], headDim)
                                   : streaming.fullElement(h, positions[row], capacity, headDim);
      keys[slot + a] = fromFloat<T>(rotatedA);
      keys[slot + b] = fromFloat<T>(rotatedB);
      const float* value = v + (row * kvHeads + h) * static_cast<int64_t>(headDim);
      values[slot + a] = fromFloat<T>(value[a]);
      values[slot + b] = fromFloat<T>(value[b]);
    }
  }
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

bool chainLaunches() {
  static const bool enabled = [] {
    const char* off = std::getenv("DUO_NO_PDL");  // 1: ordinary launches (for A/B runs)
    if (off && std::string(off) == "1") return false;
    int device = 0, major = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    return major >= 9;
  }();
  return enabled;
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

namespace {
// Quantizing a row with one warp: lanes hold channel pairs 2j, 2j + 1 (j = lane, lane + 32, …; head dims up to 256),
// the warp reduces the row's (the int4 group's) range, and each lane writes its codes. Element for element this is
// quant.h's quantizeKvRow (max and min are exact in any order, and int4's candidate errors are summed in the order
// int4GroupError emulates), so the codes equal the CPU backend's.
constexpr int kQuantPairs = 4;
constexpr int kInt4Candidates = kInt4Shrinks * kInt4Shrinks;

struct RowPairs {
  float2 x[kQuantPairs];
  int pairs;
};

__device__ __forceinline__ RowPairs loadPairs(const float* row, int headDim, int lane) {
  RowPairs row2;
  row2.pairs = headDim / 2;
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++) {
    const int j = lane + 32 * p;
    row2.x[p] = j < row2.pairs ? make_float2(row[2 * j], row[2 * j + 1]) : make_float2(0.0f, 0.0f);
  }
  return row2;
}

__device__ __forceinline__ bool inGroup(const RowPairs& row, int p, int lane, int width, int group) {
  const int j = lane + 32 * p;
  return j < row.pairs && 2 * j / width == group;
}

// [min, max] of an int4 group, on every lane.
__device__ __forceinline__ void groupRange(const RowPairs& row, int width, int group, int lane, float& minimum, float& maximum) {
  minimum = INFINITY;
  maximum = -INFINITY;
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++) {
    if (inGroup(row, p, lane, width, group)) {
      minimum = fminf(minimum, fminf(row.x[p].x, row.x[p].y));
      maximum = fmaxf(maximum, fmaxf(row.x[p].x, row.x[p].y));
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    minimum = fminf(minimum, __shfl_xor_sync(0xffffffffu, minimum, offset));
    maximum = fmaxf(maximum, __shfl_xor_sync(0xffffffffu, maximum, offset));
  }
}

// The summed squared error of int4 range candidate `candidate` over a group, on every lane (quant.h's order).
__device__ __forceinline__ float candidateError(const RowPairs& row, int width, int group, int lane, float minimum, float maximum,
                                                int candidate) {
  uint16_t scaleBits, zeroBits;
  int4Candidate(minimum, maximum, candidate / kInt4Shrinks, candidate % kInt4Shrinks, scaleBits, zeroBits);
  const float scale = f16ToFloat(scaleBits), zero = f16ToFloat(zeroBits), inverse = reciprocal(scale);
  float error = 0.0f;
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++) {
    if (inGroup(row, p, lane, width, group)) {
      error = plainAdd(error, int4SquaredError(row.x[p].x, scale, inverse, zero));
      error = plainAdd(error, int4SquaredError(row.x[p].y, scale, inverse, zero));
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) error = plainAdd(error, __shfl_xor_sync(0xffffffffu, error, offset));
  return error;
}

// Writes an int4 group's codes and its scale and zero for the chosen candidate.
__device__ __forceinline__ void writeInt4Group(const RowPairs& row, int width, int group, int lane, float minimum, float maximum,
                                               int candidate, uint8_t* codes, uint16_t* scales) {
  uint16_t scaleBits, zeroBits;
  int4Candidate(minimum, maximum, candidate / kInt4Shrinks, candidate % kInt4Shrinks, scaleBits, zeroBits);
  const float scale = f16ToFloat(scaleBits), zero = f16ToFloat(zeroBits), inverse = reciprocal(scale);
  if (lane == 0) {
    scales[2 * group] = scaleBits;
    scales[2 * group + 1] = zeroBits;
  }
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++) {
    if (inGroup(row, p, lane, width, group)) {
      const int j = lane + 32 * p;
      codes[j] = static_cast<uint8_t>(int4Code(row.x[p].x, scale, inverse, zero) | (int4Code(row.x[p].y, scale, inverse, zero) << 4));
    }
  }
}

// int8 / fp8: one scale for the row.
__device__ void quantizeScaledRow(KvQuant scheme, const RowPairs& row, int lane, uint8_t* codes, uint16_t* scales) {
  float largest = 0.0f;
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++)
    if (lane + 32 * p < row.pairs) largest = fmaxf(largest, fmaxf(fabsf(row.x[p].x), fabsf(row.x[p].y)));
  largest = warpMax(largest);
  const bool int8 = scheme == KvQuant::Int8;
  const uint16_t scaleBits = floatToF16(largest / (int8 ? 127.0f : 448.0f));
  const float scale = f16ToFloat(scaleBits);
  if (lane == 0) scales[0] = scaleBits;
  auto code = [&](float value) -> uint8_t {
    if (!(scale > 0.0f)) return 0;
    if (!int8) return encodeE4m3(value / scale);
    float rounded = rintf(value / scale);
    rounded = rounded < -127.0f ? -127.0f : (rounded > 127.0f ? 127.0f : rounded);
    return static_cast<uint8_t>(static_cast<int8_t>(rounded));
  };
#pragma unroll
  for (int p = 0; p < kQuantPairs; p++) {
    const int j = lane + 32 * p;
    if (j < row.pairs) {
      codes[2 * j] = code(row.x[p].x);
      codes[2 * j + 1] = code(row.x[p].y);
    }
  }
}

// One warp quantizes one row: int4 tries its range candidates one after another (bulk writes, where rows are many).
__device__ void quantizeRowWarp(KvQuant scheme, const float* source, int headDim, uint8_t* codes, uint16_t* scales, int lane) {
  const RowPairs row = loadPairs(source, headDim, lane);
  if (scheme != KvQuant::Int4) {
    quantizeScaledRow(scheme, row, lane, codes, scales);
    return;
  }
  const int width = int4GroupWidth(headDim);
  for (int group = 0; group * width < headDim; group++) {
    float minimum, maximum;
    groupRange(row, width, group, lane, minimum, maximum);
    int chosen = 0;
    float best = 0.0f;
#pragma unroll 1
    for (int candidate = 0; candidate < kInt4Candidates; candidate++) {
      const float error = candidateError(row, width, group, lane, minimum, maximum, candidate);
      if (candidate == 0 || error < best) {
        best = error;
        chosen = candidate;
      }
    }
    writeInt4Group(row, width, group, lane, minimum, maximum, chosen, codes, scales);
  }
}

// Where quantized rows go: the main planes [kvHeads, capacity, ·]; streaming heads (layout) the region's planes.
struct QuantTarget {
  uint8_t* codes;
  uint16_t* scales;
  uint8_t* streamCodes;
  uint16_t* streamScales;
};

// The bulk writer (writeCacheQuantized, synthetic fills): one warp per (row, KV head), row r to slot start + r of the
// planes [kvHeads, capacity, ·].
__global__ void quantizeRowsKernel(const float* source, int64_t rows, int64_t stride, int kvHeads, int headDim, int64_t start,
                                   uint8_t* codes, uint16_t* scales, int64_t capacity, int64_t codeBytes, int64_t scaleHalves,
                                   KvQuant scheme) {
  dependOnPrevious();
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (warp >= rows * kvHeads) return;
  const int64_t row = warp / kvHeads, head = warp % kvHeads, slot = head * capacity + start + row;
  quantizeRowWarp(scheme, source + row * stride + head * headDim, headDim, codes + slot * codeBytes, scales + slot * scaleHalves,
                  threadIdx.x & 31);
}

// RoPE and the quantized cache write in one launch (decode runs it once per layer and step). A block of
// kInt4Candidates warps per (row, KV head): warp 0 rotates the key in place; then, for int4, warp w measures range
// candidate w on the key and on the value row (so the search takes one candidate's time, not sixteen), and warps 0
// and 1 write the key's and the value's codes with the best; int8 / fp8 need warps 0 and 1 only. Further blocks rotate
// the query heads, a warp each. The angles are ropeKernel's (double precision).
constexpr int kMaxInt4Groups = 2;

__device__ __forceinline__ void rotatePairs(float* base, int64_t position, const float* frequencies, int headDim, bool interleaved,
                                            int lane) {
  const int half = headDim / 2;
  for (int i = lane; i < half; i += 32) {
    double sine, cosine;
    sincos(static_cast<double>(position) * static_cast<double>(frequencies[i]), &sine, &cosine);
    const float s = static_cast<float>(sine), c = static_cast<float>(cosine);
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float first = base[a], second = base[b];
    base[a] = first * c - second * s;
    base[b] = first * s + second * c;
  }
}

__global__ void __launch_bounds__(kInt4Candidates * 32)
    ropeQuantizeKernel(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int heads, int kvHeads,
                       int headDim, bool interleaved, QuantTarget keyTarget, QuantTarget valueTarget, int64_t capacity,
                       int64_t codeBytes, int64_t scaleHalves, StreamingLayout layout, KvQuant scheme) {
  __shared__ float errors[2][kMaxInt4Groups][kInt4Candidates];
  dependOnPrevious();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int queryBlocks = (heads + kInt4Candidates - 1) / kInt4Candidates;
  const int64_t row = blockIdx.x / (kvHeads + queryBlocks);
  const int item = static_cast<int>(blockIdx.x % (kvHeads + queryBlocks));
  const int64_t position = positions[row];
  if (item >= kvHeads) {
    const int head = (item - kvHeads) * kInt4Candidates + warp;
    if (head < heads) rotatePairs(q + (row * heads + head) * static_cast<int64_t>(headDim), position, frequencies, headDim, interleaved, lane);
    return;
  }
  const int head = item;
  float* key = k + (row * kvHeads + head) * static_cast<int64_t>(headDim);
  const float* value = v + (row * kvHeads + head) * static_cast<int64_t>(headDim);
  if (warp == 0) rotatePairs(key, position, frequencies, headDim, interleaved, lane);
  __syncthreads();  // the rotated key is in memory for every warp
  const bool streams = layout.streams(head);
  const auto target = [&](const QuantTarget& planes, uint8_t*& codes, uint16_t*& scales) {
    codes = streams ? planes.streamCodes + layout.element(head, position, codeBytes)
                    : planes.codes + layout.fullElement(head, position, capacity, codeBytes);
    scales = streams ? planes.streamScales + layout.element(head, position, scaleHalves)
                     : planes.scales + layout.fullElement(head, position, capacity, scaleHalves);
  };
  if (scheme != KvQuant::Int4) {
    if (warp > 1) return;
    uint8_t* codes;
    uint16_t* scales;
    target(warp == 0 ? keyTarget : valueTarget, codes, scales);
    quantizeScaledRow(scheme, loadPairs(warp == 0 ? key : value, headDim, lane), lane, codes, scales);
    return;
  }
  const int width = int4GroupWidth(headDim);
  const int groups = (headDim + width - 1) / width;
  const RowPairs rows[2] = {loadPairs(key, headDim, lane), loadPairs(value, headDim, lane)};
  float minimum[2][kMaxInt4Groups], maximum[2][kMaxInt4Groups];
#pragma unroll
  for (int which = 0; which < 2; which++) {
#pragma unroll
    for (int group = 0; group < kMaxInt4Groups; group++) {
      if (group < groups) {
        groupRange(rows[which], width, group, lane, minimum[which][group], maximum[which][group]);
        const float error = candidateError(rows[which], width, group, lane, minimum[which][group], maximum[which][group], warp);
        if (lane == 0) errors[which][group][warp] = error;
      }
    }
  }
  __syncthreads();
  if (warp > 1) return;
  uint8_t* codes;
  uint16_t* scales;
  target(warp == 0 ? keyTarget : valueTarget, codes, scales);
#pragma unroll
  for (int group = 0; group < kMaxInt4Groups; group++) {
    if (group >= groups) break;
    int chosen = 0;
    for (int candidate = 1; candidate < kInt4Candidates; candidate++)
      if (errors[warp][group][candidate] < errors[warp][group][chosen]) chosen = candidate;
    writeInt4Group(rows[warp], width, group, lane, minimum[warp][group], maximum[warp][group], chosen, codes, scales);
  }
}

void requireQuantHeadDim(int headDim) {
  if (headDim > 2 * 32 * kQuantPairs) throw Error("DUO_ARG", "quantized KV caches support head dims up to 256");
}
}  // namespace

void launchWriteCacheQuantized(const float* source, int64_t rows, int64_t stride, int64_t kvHeads, int headDim, uint8_t* codes,
                               uint16_t* scales, int64_t capacity, int64_t start, int scheme, cudaStream_t stream) {
  if (rows == 0) return;
  requireQuantHeadDim(headDim);
  const KvQuant quant = static_cast<KvQuant>(scheme);
  launchChained(quantizeRowsKernel, dim3(blocksFor(rows * kvHeads * 32, 128)), dim3(128), 0, stream, source, rows, stride,
                static_cast<int>(kvHeads), headDim, start, codes, scales, capacity,
                static_cast<int64_t>(kvCodeBytes(quant, headDim)), static_cast<int64_t>(kvScaleHalves(quant, headDim)), quant);
  checkLaunch("quantizeRows");
}

void launchRopeWriteCacheQuantized(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies,
                                   int64_t rows, int heads, int kvHeads, int headDim, bool interleaved, void* keyCodes,
                                   void* valueCodes, int64_t capacity, const StreamingLayout& streaming, const KvQuantPlanes& quant,
                                   cudaStream_t stream) {
  if (rows == 0) return;
  requireQuantHeadDim(headDim);
  const QuantTarget keys{static_cast<uint8_t*>(keyCodes), const_cast<uint16_t*>(quant.keyScales), static_cast<uint8_t*>(streaming.key),
                         const_cast<uint16_t*>(quant.streamKeyScales)};
  const QuantTarget values{static_cast<uint8_t*>(valueCodes), const_cast<uint16_t*>(quant.valueScales),
                           static_cast<uint8_t*>(streaming.value), const_cast<uint16_t*>(quant.streamValueScales)};
  const KvQuant scheme = static_cast<KvQuant>(quant.scheme);
  const int64_t blocks = rows * (kvHeads + (heads + kInt4Candidates - 1) / kInt4Candidates);
  launchChained(ropeQuantizeKernel, dim3(static_cast<unsigned>(blocks)), dim3(kInt4Candidates * 32), 0, stream, q, k, v, positions,
                frequencies, heads, kvHeads, headDim, interleaved, keys, values, capacity,
                static_cast<int64_t>(kvCodeBytes(scheme, headDim)), static_cast<int64_t>(kvScaleHalves(scheme, headDim)), streaming,
                scheme);
  checkLaunch("ropeQuantize");
}

}  // namespace cuda
}  // namespace duo
