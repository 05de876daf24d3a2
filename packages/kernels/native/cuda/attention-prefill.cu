// CUDA prefill attention, causal over the cache and the chunk (the Λ mask for streaming heads): prefillKernel on the
// CUDA cores (query rows tiled, keys staged in shared memory as f32) and prefillMmaKernel on the tensor cores for 16-bit
// and quantized tiles at head dims 64 and 128 (FlashAttention-2 style). GQA-aware, f32 accumulation; quantized caches
// are dequantized while a tile is staged (quant-rows.cuh).
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <type_traits>

#include "attention-common.cuh"
#include "mma.cuh"
#include "quant-rows.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kPrefillThreads = 128;

// grid (row tiles, heads). Each query row is served by TPR threads that own interleaved groups of 4 channels. It is
// also context parallelism's prefill (ADR 0011): a sharded full head visits this rank's keys (positions from the
// shard, masked in absolute positions as on the CPU), and a partial call writes each head's log-sum-exp after the
// row's outputs (rows `outStride` apart; a rank past 0 leaves the streaming heads to rank 0).
template <typename T, int D, bool kQuant>
__global__ void __launch_bounds__(kPrefillThreads) prefillKernel(const float* __restrict__ q, int64_t qStride, const void* __restrict__ k,
                                                                 const void* __restrict__ v, int64_t capacity, float* __restrict__ out,
                                                                 int64_t outStride, bool partial, int heads, int64_t rows,
                                                                 int64_t keyLength, int64_t queryStart, int group, float scale,
                                                                 StreamingLayout layout, KvQuantPlanes quant) {
  constexpr int kThreadsPerRow = D / 4 < 8 ? D / 4 : 8;
  constexpr int kRowsPerBlock = kPrefillThreads / kThreadsPerRow;
  constexpr int kChunks = D / (4 * kThreadsPerRow);  // float4 chunks per thread
  constexpr int kKeyTile = D >= 256 ? 16 : 32;       // keeps both tiles within 48 KB of static shared memory
  __shared__ float keyTile[kKeyTile][D];
  __shared__ float valueTile[kKeyTile][D];
  const int head = blockIdx.y, kvHead = head / group;
  const int lane = threadIdx.x % kThreadsPerRow;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreadsPerRow;
  const bool active = row < rows;
  const int64_t position = queryStart + row;
  const int64_t lastRow = lesser(rows, static_cast<int64_t>(blockIdx.x + 1) * kRowsPerBlock) - 1;
  const int64_t keyEnd = lesser(keyLength, queryStart + lastRow + 1);
  const bool streams = layout.streams(kvHead);
  const ContextShard& shard = layout.shard;
  const bool sharded = !streams && shard.active();
  KeyRange range = keyRangeFor(layout, streams, keyEnd, queryStart + static_cast<int64_t>(blockIdx.x) * kRowsPerBlock, queryStart);
  if (sharded) range.count = shard.ownedBelow(keyEnd);
  if (partial && streams && shard.rank != 0) range.count = 0;
  // Key j's position (its local slot is j for a full head, sharded or not).
  auto keyPosition = [&](int64_t j) { return sharded ? shard.positionAt(j) : range.position(j); };
  const T* keys = kQuant ? nullptr : headRows<T>(k, layout.key, capacity, layout, streams, kvHead, D);
  const T* values = kQuant ? nullptr : headRows<T>(v, layout.value, capacity, layout, streams, kvHead, D);
  QuantHead quantRows{};
  if constexpr (kQuant) quantRows = quantHead(k, v, capacity, layout, quant, streams, kvHead, D);

  float query[kChunks][4], acc[kChunks][4];
#pragma unroll
  for (int c = 0; c < kChunks; c++)
#pragma unroll
    for (int i = 0; i < 4; i++) {
      int channel = (c * kThreadsPerRow + lane) * 4 + i;
      query[c][i] = active ? q[row * qStride + static_cast<int64_t>(head) * D + channel] * scale : 0.0f;
      acc[c][i] = 0.0f;
    }
  float maximum = -INFINITY, sum = 0.0f;
  for (int64_t tile = 0; tile < range.count; tile += kKeyTile) {
    __syncthreads();
    if constexpr (kQuant) {
      stageQuantTile<float, D, kKeyTile, kPrefillThreads>(
          &keyTile[0][0], D, &valueTile[0][0], D, quantRows, tile, static_cast<int>(lesser(kKeyTile, range.count - tile)),
          threadIdx.x, [&](int64_t j) { return streams ? layout.slot(range.position(j)) : j; });
    } else {
      for (int t = threadIdx.x; t < kKeyTile * D; t += kPrefillThreads) {
        int key = t / D, channel = t % D;
        int64_t j = tile + key;
        const int64_t slot = j < range.count ? (streams ? layout.slot(range.position(j)) : j) * D + channel : 0;
        keyTile[key][channel] = j < range.count ? toFloat(keys[slot]) : 0.0f;
        valueTile[key][channel] = j < range.count ? toFloat(values[slot]) : 0.0f;
      }
    }
    __syncthreads();
    float scores[kKeyTile];
    float tileMax = -INFINITY;
#pragma unroll
    for (int key = 0; key < kKeyTile; key++) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; c++) {
        float4 kv = *reinterpret_cast<const float4*>(&keyTile[key][(c * kThreadsPerRow + lane) * 4]);
        dot += query[c][0] * kv.x + query[c][1] * kv.y + query[c][2] * kv.z + query[c][3] * kv.w;
      }
#pragma unroll
      for (int offset = kThreadsPerRow / 2; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      int64_t j = tile + key;
      scores[key] = (active && j < range.count && keyVisible(layout, streams, position, keyPosition(j), queryStart)) ? dot : -INFINITY;
      tileMax = fmaxf(tileMax, scores[key]);
    }
    float updated = fmaxf(maximum, tileMax);
    if (updated == -INFINITY) continue;
    float correction = __expf(maximum - updated);
    sum *= correction;
#pragma unroll
    for (int c = 0; c < kChunks; c++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[c][i] *= correction;
#pragma unroll
    for (int key = 0; key < kKeyTile; key++) {
      float p = __expf(scores[key] - updated);
      sum += p;
#pragma unroll
      for (int c = 0; c < kChunks; c++) {
        float4 vv = *reinterpret_cast<const float4*>(&valueTile[key][(c * kThreadsPerRow + lane) * 4]);
        acc[c][0] += p * vv.x;
        acc[c][1] += p * vv.y;
        acc[c][2] += p * vv.z;
        acc[c][3] += p * vv.w;
      }
    }
    maximum = updated;
  }
  if (!active) return;
  float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
  for (int c = 0; c < kChunks; c++)
#pragma unroll
    for (int i = 0; i < 4; i++)
      out[row * outStride + static_cast<int64_t>(head) * D + (c * kThreadsPerRow + lane) * 4 + i] = acc[c][i] * inverse;
  // The head's log-sum-exp (of the scaled scores), after the row's heads · D outputs (attentionPartial's layout).
  if (partial && lane == 0) out[row * outStride + static_cast<int64_t>(heads) * D + head] = sum > 0.0f ? maximum + logf(sum) : -INFINITY;
}

// Tensor-core causal prefill for 16-bit caches at head dim 64 or 128 (FlashAttention-2 style). grid (row tiles of
// 64, heads), 4 warps of 16 query rows; 64-key tiles of K and V are copied into padded shared memory by the block;
// each warp computes S = Q·Kᵀ (q rounded to 16 bits), an online softmax per row and O += P·V with
// mma.sync m16n8k16, then divides by the row sums.
constexpr int kPrefillMmaWarps = 4;
constexpr int kPrefillMmaRows = 16 * kPrefillMmaWarps;
constexpr int kPrefillKeys = 64;

template <typename T, int D, bool kQuant>
__global__ void __launch_bounds__(kPrefillMmaWarps * 32) prefillMmaKernel(const float* __restrict__ q, int64_t qStride,
                                                                          const void* __restrict__ k, const void* __restrict__ v,
                                                                          int64_t capacity, float* __restrict__ out,
                                                                          int64_t rows, int64_t keyLength,
                                                                          int64_t queryStart, int group, float scale,
                                                                          StreamingLayout layout, KvQuantPlanes quant) {
  constexpr int kStride = D + 8;
  constexpr int kSteps = D / 16;
  constexpr int kOutTiles = D / 8;
  extern __shared__ __align__(16) unsigned char tiles[];
  T* keyTile = reinterpret_cast<T*>(tiles);
  const int head = blockIdx.y, kvHead = head / group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row = lane >> 2, pair = lane & 3;
  const int64_t warpRow0 = static_cast<int64_t>(blockIdx.x) * kPrefillMmaRows + warp * 16;
  const int64_t blockLastRow = lesser(rows, static_cast<int64_t>(blockIdx.x + 1) * kPrefillMmaRows) - 1;
  const int64_t keyEnd = lesser(keyLength, queryStart + blockLastRow + 1);
  const bool streams = layout.streams(kvHead);
  const KeyRange range = keyRangeFor(layout, streams, keyEnd, queryStart + static_cast<int64_t>(blockIdx.x) * kPrefillMmaRows, queryStart);
  const T* keys = kQuant ? nullptr : headRows<T>(k, layout.key, capacity, layout, streams, kvHead, D);
  const T* values = kQuant ? nullptr : headRows<T>(v, layout.value, capacity, layout, streams, kvHead, D);
  QuantHead quantRows{};
  if constexpr (kQuant) quantRows = quantHead(k, v, capacity, layout, quant, streams, kvHead, D);
  auto slotOf = [&](int64_t index) { return streams ? layout.slot(range.position(index)) : index; };
  // A fragments of this warp's 16 query rows: rows `row` and `row + 8`, columns 16s + 2·pair (+1) and + 8.
  // Rounded once to 16 bits, as FlashAttention does: prefill is bound by the tensor cores, and the second (low) product
  // that decode uses to keep ~16 mantissa bits in the scores would cost a third of the multiplies here.
  uint32_t qHigh[kSteps][4];
#pragma unroll
  for (int step = 0; step < kSteps; step++)
#pragma unroll
    for (int part = 0; part < 4; part++) {
      const int64_t r = warpRow0 + row + (part & 1) * 8;
      const int column = 16 * step + (part >> 1) * 8 + 2 * pair;
      float x0 = 0.0f, x1 = 0.0f;
      if (r < rows) {
        const float* source = q + r * qStride + static_cast<int64_t>(head) * D + column;
        x0 = source[0] * scale;
        x1 = source[1] * scale;
      }
      qHigh[step][part] = packPair<T>(x0, x1);
    }
  float maximum[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
  float acc[kOutTiles][4];
#pragma unroll
  for (int t = 0; t < kOutTiles; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  const int64_t position[2] = {queryStart + warpRow0 + row, queryStart + warpRow0 + row + 8};

  // Two stages: the copy of tile i + 1 is in flight while the warps multiply tile i.
  auto stage = [&](int64_t tile, int buffer) {
    T* keyStage = keyTile + buffer * 2 * kPrefillKeys * kStride;
    const int count = static_cast<int>(lesser(kPrefillKeys, range.count - tile));
    if constexpr (kQuant) {
      // Synchronous loads, so this tile is only overlapped with other blocks' work; an empty group keeps the waits' counts.
      stageQuantTile<T, D, kPrefillKeys, kPrefillMmaWarps * 32>(keyStage, kStride, keyStage + kPrefillKeys * kStride, kStride,
                                                                quantRows, tile, count, threadIdx.x, slotOf);
      asm volatile("cp.async.commit_group;\n" ::);
    } else {
      stageTile<T, D>(keyStage, keyStage + kPrefillKeys * kStride, keys, values, tile, count, kPrefillKeys, threadIdx.x, blockDim.x,
                      slotOf);
    }
  };
  if (range.count > 0) stage(0, 0);
  int buffer = 0;
  for (int64_t tile = 0; tile < range.count; tile += kPrefillKeys, buffer ^= 1) {
    if (tile + kPrefillKeys < range.count) {
      stage(tile + kPrefillKeys, buffer ^ 1);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    const T* keyTileNow = keyTile + buffer * 2 * kPrefillKeys * kStride;
    const T* valueTileNow = keyTileNow + kPrefillKeys * kStride;
    // Warp-uniform skips (mma.sync needs every lane): rows past the chunk, or a tile after the warp's last position.
    const bool active = warpRow0 < rows && range.position(tile) <= queryStart + warpRow0 + 15;
    if (active) {
    float score[kPrefillKeys / 8][4];
#pragma unroll
    for (int t = 0; t < kPrefillKeys / 8; t++) {
      score[t][0] = score[t][1] = score[t][2] = score[t][3] = 0.0f;
#pragma unroll
      for (int step = 0; step < kSteps; step++) {
        const T* key = keyTileNow + (8 * t + row) * kStride + 16 * step + 2 * pair;
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(key);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(key + 8);
        mma16816<T>(score[t], qHigh[step][0], qHigh[step][1], qHigh[step][2], qHigh[step][3], b0, b1);
      }
    }
    float probability[kPrefillKeys / 8][4];
#pragma unroll
    for (int half = 0; half < 2; half++) {
      float tileMax = -INFINITY;
#pragma unroll
      for (int t = 0; t < kPrefillKeys / 8; t++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const int64_t key = tile + 8 * t + 2 * pair + j;
          float& value = score[t][2 * half + j];
          const bool visible = key < range.count && keyVisible(layout, streams, position[half], range.position(key), queryStart);
          value = visible ? value : -INFINITY;
          tileMax = fmaxf(tileMax, value);
        }
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
      const float updated = fmaxf(maximum[half], tileMax);
      const float correction = updated == -INFINITY ? 1.0f : __expf(maximum[half] - updated);
      float rowSum = 0.0f;
#pragma unroll
      for (int t = 0; t < kPrefillKeys / 8; t++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const float value = score[t][2 * half + j];
          probability[t][2 * half + j] = value == -INFINITY ? 0.0f : __expf(value - updated);
          rowSum += probability[t][2 * half + j];
        }
      rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 1);
      rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 2);
      sum[half] = sum[half] * correction + rowSum;
      maximum[half] = updated;
#pragma unroll
      for (int t = 0; t < kOutTiles; t++) {
        acc[t][2 * half] *= correction;
        acc[t][2 * half + 1] *= correction;
      }
    }
#pragma unroll
    for (int step = 0; step < kPrefillKeys / 16; step++) {
      accumulateValues<T, D>(acc, packPair<T>(probability[2 * step][0], probability[2 * step][1]),
                             packPair<T>(probability[2 * step][2], probability[2 * step][3]),
                             packPair<T>(probability[2 * step + 1][0], probability[2 * step + 1][1]),
                             packPair<T>(probability[2 * step + 1][2], probability[2 * step + 1][3]), valueTileNow, step, lane);
    }
    }
    __syncthreads();  // the buffer is refilled two tiles later
  }
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int64_t r = warpRow0 + row + half * 8;
    if (r >= rows) continue;
    const float inverse = sum[half] > 0.0f ? 1.0f / sum[half] : 0.0f;
    float* target = out + r * qStride + static_cast<int64_t>(head) * D;
#pragma unroll
    for (int t = 0; t < kOutTiles; t++) {
      target[8 * t + 2 * pair] = acc[t][2 * half] * inverse;
      target[8 * t + 2 * pair + 1] = acc[t][2 * half + 1] * inverse;
    }
  }
}

}  // namespace

namespace {
std::atomic<int> prefillWgmma{1};
}  // namespace

void setPrefillWgmma(int mode) { prefillWgmma.store(mode, std::memory_order_relaxed); }
int prefillWgmmaMode() { return prefillWgmma.load(std::memory_order_relaxed); }

void launchAttentionPrefill(const float* q, int64_t qStride, const void* k, const void* v, DType cacheType, int64_t capacity,
                            float* out, int64_t rows, const AttentionArgs& args, cudaStream_t stream, int64_t outStride) {
  if (rows == 0) return;
  if (outStride == 0) outStride = qStride;
  // Context parallelism's chunks (a shard, or partial rows) take the warpgroup kernel where it serves, else the
  // CUDA-core kernel; both know them (the mma.sync kernel below does not).
  const bool parallel = args.partial || args.streaming.shard.active();
  // The warpgroup kernel stores outputs in pairs: rows an even number of floats apart (a partial row's log-sum-exps
  // can make it odd).
  if (prefillWgmmaMode() != 0 && outStride % 2 == 0 && prefillWgmmaServes(q, qStride, rows, args, cacheType)) {
    launchAttentionPrefillWgmma(q, qStride, k, v, cacheType, capacity, out, rows, args, stream, outStride);
    return;
  }
  int group = args.heads / args.kvHeads;
  auto body = [&](auto t, auto quantized) {
    using T = decltype(t);
    constexpr bool kQuant = decltype(quantized)::value;
    dispatchHeadDim(args.headDim, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      constexpr bool kTensorCores = usesTensorCores(static_cast<int>(sizeof(T)), D);
      auto cudaCores = [&] {
        constexpr int kThreadsPerRow = D / 4 < 8 ? D / 4 : 8;
        constexpr int kRowsPerBlock = kPrefillThreads / kThreadsPerRow;
        dim3 grid(static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), args.heads);
        prefillKernel<T, D, kQuant><<<grid, kPrefillThreads, 0, stream>>>(q, qStride, k, v, capacity, out, outStride, args.partial,
                                                                           args.heads, rows, args.keyLength, args.queryStart, group,
                                                                           args.scale, args.streaming, args.quant);
      };
      if constexpr (kQuant && tileBytes(true, D, 0) != static_cast<int>(sizeof(T))) {
        throw Error("DUO_ARG", "internal: quantized prefill stages bf16 tiles exactly for head dims 64 and 128");
      } else if constexpr (kTensorCores) {
        if (parallel) {
          cudaCores();
          return;
        }
        // Tensor cores for 16-bit (and quantized) caches.
        auto kernel = prefillMmaKernel<T, D, kQuant>;
        const size_t shared = static_cast<size_t>(4) * kPrefillKeys * (D + 8) * sizeof(T);
        allowSharedMemory(kernel, shared);
        dim3 grid(static_cast<unsigned>((rows + kPrefillMmaRows - 1) / kPrefillMmaRows), args.heads);
        kernel<<<grid, kPrefillMmaWarps * 32, shared, stream>>>(q, qStride, k, v, capacity, out, rows, args.keyLength, args.queryStart,
                                                                group, args.scale, args.streaming, args.quant);
      } else {
        cudaCores();
      }
    });
  };
  dispatchTile(args, cacheType, body);
  checkLaunch("attentionPrefill");
}

}  // namespace cuda
}  // namespace duo
