// KV-cache quantization on CUDA: a warp per row writes the codes of quant.h's quantizeKvRow (bulk writes), the
// decode step's fused RoPE + quantized cache write (docs/decisions/0006-kv-quantization.md), and the batched RoPE +
// cache write of continuous batching, whose sequences each bring a plain or quantized cache.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../quant.h"
#include "cuda-common.cuh"
#include "rope-write.cuh"

namespace duo {
namespace cuda {

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

// Block `item` of row `row` (KV heads first, then the query blocks); blockDim is kInt4Candidates warps.
__device__ __forceinline__ void ropeQuantizeBlock(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies,
                                                  int heads, int kvHeads, int headDim, bool interleaved, const QuantTarget& keyTarget,
                                                  const QuantTarget& valueTarget, int64_t capacity, int64_t codeBytes,
                                                  int64_t scaleHalves, const StreamingLayout& layout, KvQuant scheme, int64_t row,
                                                  int item) {
  __shared__ float errors[2][kMaxInt4Groups][kInt4Candidates];
  dependOnPrevious();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
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
  if (!streams && !layout.shard.owns(position)) return;  // another rank's chunk (the whole block leaves together)
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

__global__ void __launch_bounds__(kInt4Candidates * 32)
    ropeQuantizeKernel(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int heads, int kvHeads,
                       int headDim, bool interleaved, QuantTarget keyTarget, QuantTarget valueTarget, int64_t capacity,
                       int64_t codeBytes, int64_t scaleHalves, StreamingLayout layout, KvQuant scheme) {
  const int queryBlocks = (heads + kInt4Candidates - 1) / kInt4Candidates;
  ropeQuantizeBlock(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, keyTarget, valueTarget, capacity, codeBytes,
                    scaleHalves, layout, scheme, blockIdx.x / (kvHeads + queryBlocks), static_cast<int>(blockIdx.x % (kvHeads + queryBlocks)));
}

// The planes a quantized cache write fills.
QuantTarget keyTargetOf(void* keyCodes, const StreamingLayout& streaming, const KvQuantPlanes& quant) {
  return QuantTarget{static_cast<uint8_t*>(keyCodes), const_cast<uint16_t*>(quant.keyScales), static_cast<uint8_t*>(streaming.key),
                     const_cast<uint16_t*>(quant.streamKeyScales)};
}
QuantTarget valueTargetOf(void* valueCodes, const StreamingLayout& streaming, const KvQuantPlanes& quant) {
  return QuantTarget{static_cast<uint8_t*>(valueCodes), const_cast<uint16_t*>(quant.valueScales), static_cast<uint8_t*>(streaming.value),
                     const_cast<uint16_t*>(quant.streamValueScales)};
}

// One sequence of a batched RoPE + cache write: its rows of the step and its caches (plain: `cacheType`; quantized:
// the targets and the scheme).
struct RopeSequence {
  int64_t rowStart, rows;
  void* keyCache;
  void* valueCache;
  DType cacheType;
  int64_t capacity;
  StreamingLayout layout;
  KvQuant scheme;  // KvQuant::None: a plain cache
  QuantTarget keyTarget, valueTarget;
  int64_t codeBytes, scaleHalves;
};
// Up to kRopeSequences sequences per launch, passed by value (__grid_constant__, read in place: capture-safe).
constexpr int kRopeSequences = 64;
struct RopeBatch {
  int count;
  RopeSequence sequences[kRopeSequences];
  // The sequence that holds `row` (rows follow the sequences in order; sequences without rows are left out).
  __device__ __forceinline__ const RopeSequence& holding(int64_t row) const {
    int low = 0, high = count - 1;
    while (low < high) {
      const int middle = (low + high + 1) / 2;
      if (sequences[middle].rowStart <= row) low = middle;
      else high = middle - 1;
    }
    return sequences[low];
  }
};
static_assert(sizeof(RopeBatch) <= 32764, "a batched RoPE launch's parameters must fit 32 KB");

// grid (rows of the launch, heads + kvHeads): block (r, y) runs ropeWriteCacheKernel's block y of row `firstRow + r`
// for a plain cache, or ropeQuantizeKernel's item y (KV heads, then query blocks; the rest exit) for a quantized one,
// each with its row's own caches, layout and scheme. A launch with quantized rows has kInt4Candidates warps a block.
__global__ void __launch_bounds__(kInt4Candidates * 32)
    ropeWriteCacheBatchKernel(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int heads,
                              int kvHeads, int headDim, bool interleaved, int64_t firstRow, const __grid_constant__ RopeBatch batch) {
  const int64_t row = firstRow + blockIdx.x;
  const int item = static_cast<int>(blockIdx.y);
  const RopeSequence& sequence = batch.holding(row);
  if (sequence.scheme != KvQuant::None) {
    if (item >= kvHeads + (heads + kInt4Candidates - 1) / kInt4Candidates) return;
    ropeQuantizeBlock(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, sequence.keyTarget, sequence.valueTarget,
                      sequence.capacity, sequence.codeBytes, sequence.scaleHalves, sequence.layout, sequence.scheme, row, item);
    return;
  }
  switch (sequence.cacheType) {
    case DType::BF16:
      ropeWriteCacheBlock(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved,
                          static_cast<__nv_bfloat16*>(sequence.keyCache), static_cast<__nv_bfloat16*>(sequence.valueCache),
                          sequence.capacity, sequence.layout, row, item);
      break;
    case DType::F16:
      ropeWriteCacheBlock(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, static_cast<__half*>(sequence.keyCache),
                          static_cast<__half*>(sequence.valueCache), sequence.capacity, sequence.layout, row, item);
      break;
    default:
      ropeWriteCacheBlock(q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, static_cast<float*>(sequence.keyCache),
                          static_cast<float*>(sequence.valueCache), sequence.capacity, sequence.layout, row, item);
      break;
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
  const QuantTarget keys = keyTargetOf(keyCodes, streaming, quant);
  const QuantTarget values = valueTargetOf(valueCodes, streaming, quant);
  const KvQuant scheme = static_cast<KvQuant>(quant.scheme);
  const int64_t blocks = rows * (kvHeads + (heads + kInt4Candidates - 1) / kInt4Candidates);
  launchChained(ropeQuantizeKernel, dim3(static_cast<unsigned>(blocks)), dim3(kInt4Candidates * 32), 0, stream, q, k, v, positions,
                frequencies, heads, kvHeads, headDim, interleaved, keys, values, capacity,
                static_cast<int64_t>(kvCodeBytes(scheme, headDim)), static_cast<int64_t>(kvScaleHalves(scheme, headDim)), streaming,
                scheme);
  checkLaunch("ropeQuantize");
}

void launchRopeWriteCacheBatch(float* q, float* k, const float* v, const int32_t* positions, const float* frequencies, int heads,
                               int kvHeads, int headDim, bool interleaved, const std::vector<BatchSlice>& slices, cudaStream_t stream) {
  RopeBatch batch{};
  bool quantized = false;
  const auto launch = [&]() {
    if (batch.count == 0) return;
    const RopeSequence& last = batch.sequences[batch.count - 1];
    const int64_t firstRow = batch.sequences[0].rowStart, rows = last.rowStart + last.rows - firstRow;
    const unsigned threads = quantized ? kInt4Candidates * 32
                                       : static_cast<unsigned>(std::min(256, std::max(32, (headDim / 2 + 31) / 32 * 32)));
    launchChained(ropeWriteCacheBatchKernel, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(heads + kvHeads)), dim3(threads),
                  0, stream, q, k, v, positions, frequencies, heads, kvHeads, headDim, interleaved, firstRow, batch);
    checkLaunch("ropeWriteCacheBatch");
    batch.count = 0;
    quantized = false;
  };
  for (const BatchSlice& slice : slices) {
    if (slice.rows == 0) continue;
    RopeSequence& sequence = batch.sequences[batch.count++];
    sequence = RopeSequence{};
    sequence.rowStart = slice.rowStart;
    sequence.rows = slice.rows;
    sequence.keyCache = slice.keyCache->data;
    sequence.valueCache = slice.valueCache->data;
    sequence.cacheType = slice.keyCache->dtype;
    sequence.capacity = slice.keyCache->shape[1];
    sequence.layout = slice.streaming;
    sequence.scheme = static_cast<KvQuant>(slice.quant.scheme);
    if (sequence.scheme != KvQuant::None) {
      requireQuantHeadDim(headDim);
      quantized = true;
      sequence.keyTarget = keyTargetOf(slice.keyCache->data, slice.streaming, slice.quant);
      sequence.valueTarget = valueTargetOf(slice.valueCache->data, slice.streaming, slice.quant);
      sequence.codeBytes = static_cast<int64_t>(kvCodeBytes(sequence.scheme, headDim));
      sequence.scaleHalves = static_cast<int64_t>(kvScaleHalves(sequence.scheme, headDim));
    }
    if (batch.count == kRopeSequences) launch();
  }
  launch();
}

}  // namespace cuda
}  // namespace duo
