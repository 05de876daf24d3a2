// Hopper prefill attention (sm_90a) on warpgroup MMAs, FlashAttention-3's schedule. A block takes 128 query rows of
// one head — two computing warpgroups of 64 — and walks its KV head's keys in tiles of 128 (the KeyRange's logical
// order: a streaming head visits only its sinks and the window of the block's first query, so its cost is linear in
// the chunk). A third warpgroup copies each tile's keys and values into 128-byte-swizzled shared memory; each computing
// warpgroup computes S = Q·Kᵀ with both operands in shared memory, masks the diagonal and window edges, runs the
// online softmax on S in registers, and accumulates O += P·V with P from registers (the accumulator fragment of S is
// the A fragment of P·V) and V read MN-major. q is scaled by the softmax scale times log2(e) and rounded to 16 bits once
// (the softmax uses the SFU's exp2); P is rounded to 16 bits for P·V; sums and O stay f32 — the numerics of
// prefillMmaKernel up to those roundings, not bit for bit. The tensor-memory copies read the cache rows up to the
// call's keyLength (written before the call); rows a block's mask hides get probability 0. Quantized caches (int8,
// int4, fp8) take the same schedule: the copying warpgroup brings each tile's codes in by cp.async and dequantizes them
// into the bf16 stages (quant-rows.cuh's dequantizePiece), so the products never see a code. Context parallelism's
// chunks (ADR 0011) take it too: a sharded full head walks this rank's keys (its local rows, whose positions come from
// the shard: whole chunks before the query's, so only the diagonal tile is masked), and a partial call writes each
// head's log-sum-exp after the row's outputs (rows `outStride` apart; a rank past 0 leaves the streaming heads to rank
// 0), as the CUDA-core prefill kernel does.
#include <cuda.h>

#include <cstdint>
#include <type_traits>

#include "attention-common.cuh"
#include "mma.cuh"
#include "quant-rows.cuh"
#include "wgmma.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kQueryRows = 128;  // a block's query rows: two warpgroups of 64
constexpr int kKeyRows = 128;    // keys a tile

// A [rows × D] tile of 16-bit values in shared memory is D / 64 column tiles of [rows × 64], 128 bytes a row, swizzled
// (swizzle128); column tile c of a tile of `rows` rows starts c · rows · 128 bytes in.
#if defined(DUO_WGMMA)
__device__ __forceinline__ int tileOffset(int rows, int row, int chunk) {
  return (chunk >> 3) * rows * 128 + swizzle128(row, chunk & 7);
}
#endif

// The warp-specialized version (FlashAttention-3's ping-pong): warpgroup 0 copies keys and values into two stages
// with cp.async, each stage's completion counted on its `full` mbarrier; warpgroups 1 and 2 take 64 query rows each
// and take turns issuing their products (named barriers 1 and 2), so one warpgroup's softmax runs under the other's
// matrix products. A turn issues S = Q·Kᵀ of this tile and O += P·V of the previous one, and the softmax of this tile
// runs while that P·V is still on the tensor cores (it rescales O once the P·V is done); a stage's keys are released
// once S has been computed from them, its values once the P·V that read them has completed, so both have two turns
// of lead in two stages. Registers move from the copying warpgroup to the computing ones.
constexpr int kPingPongThreads = 384;
// Build-time knobs for the sweep (tools/device/prefill-sweep.sh): stages of keys and values in flight
// (DUO_PREFILL_STAGES); DUO_PREFILL_NO_OVERLAP waits for the previous P·V before the softmax; DUO_PREFILL_NO_LOADS, a
// diagnostic, skips the copies past the first stages (products over whatever the stages hold).
#ifndef DUO_PREFILL_STAGES
#define DUO_PREFILL_STAGES 2
#endif
constexpr int kPingPongStages = DUO_PREFILL_STAGES;
[[maybe_unused]] constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;

// A quantized cache's codes land in one raw buffer per operand first — a tile's rows, each padded by 16 bytes so the
// copying threads (one row each) read them without bank conflicts — and are dequantized from there into a stage.
template <int D, bool kQuant>
struct PingPongPlan {
  static constexpr int kQueryBytes = kQueryRows * D * 2;
  static constexpr int kKeyBytes = kKeyRows * D * 2;
  static constexpr int kStageBytes = 2 * kKeyBytes;
  static constexpr int kBarrierBytes = 128;  // 4 × kPingPongStages mbarriers, rounded up
  static constexpr int kRawStride = D + 16;  // int8 / fp8 codes of a row (int4 use half), padded
  static constexpr int kRawBytes = kQuant ? 2 * kKeyRows * kRawStride : 0;
  static constexpr int kSharedBytes = kQueryBytes + kPingPongStages * kStageBytes + kBarrierBytes + kRawBytes + 1024;
  static_assert(4 * kPingPongStages * 8 <= kBarrierBytes, "the mbarriers fit their space");
  // A build with more stages must still fit an SM's shared memory (the quantized D = 128 plan is the largest).
  static_assert(kSharedBytes <= 227 * 1024, "a block's shared memory fits the SM (fewer DUO_PREFILL_STAGES)");
};

// The copying warpgroup for a quantized cache: thread r takes row r of every tile — cp.async of its codes into the raw
// buffers (the next tile's, as soon as this tile's are dequantized) and its scale bits by a plain load — and writes its
// row of the stage as bf16, swizzled as the products read it. Keys and values each have one raw buffer and their own
// cp.async group, so the next tile's codes are in flight while the consumers still need both stages.
template <int D, KvQuant kScheme, typename Slot>
__device__ __forceinline__ void produceQuantTiles(const QuantHead& head, int tiles, int64_t count, const Slot& slotOf,
                                                  unsigned char* stages, unsigned char* raw, uint64_t* fullK, uint64_t* fullV,
                                                  uint64_t* emptyK, uint64_t* emptyV) {
#if defined(DUO_WGMMA)
  using P = PingPongPlan<D, true>;
  constexpr int kStages = kPingPongStages;
  constexpr int kCodeBytes = kScheme == KvQuant::Int4 ? D / 2 : D;
  const int r = threadIdx.x;
  unsigned char* rawKeys = raw + r * P::kRawStride;
  unsigned char* rawValues = rawKeys + kKeyRows * P::kRawStride;
  // Starts tile j's copy of this row's codes (one cp.async group, empty past the keys) and returns its scale bits.
  auto fetch = [&](int j, const uint8_t* codes, const uint16_t* scales, unsigned char* target) {
    const int64_t index = static_cast<int64_t>(j) * kKeyRows + r;
    uint32_t bits = 0;
    if (index < count) {
      const int64_t slot = slotOf(index);
      const uint8_t* row = codes + slot * kCodeBytes;
#pragma unroll
      for (int c = 0; c < kCodeBytes / 16; c++) copyAsync16(target + 16 * c, row + 16 * c);
      bits = kScheme == KvQuant::Int4 ? __ldg(reinterpret_cast<const uint32_t*>(scales + slot * 2)) : __ldg(scales + slot);
    }
    commitGroup();
    return bits;
  };
  // Rows past the keys become zeros (their raw bytes are stale, and an fp8 NaN code times a zero scale stays NaN).
  auto convert = [&](int j, const unsigned char* source, uint32_t bits, unsigned char* tile) {
    const bool valid = static_cast<int64_t>(j) * kKeyRows + r < count;
#pragma unroll
    for (int c = 0; c < kCodeBytes / 16; c++) {
      uint4 chunks[kPieceChunks<kScheme>];
      dequantizePiece<kScheme>(valid ? *reinterpret_cast<const uint4*>(source + 16 * c) : make_uint4(0, 0, 0, 0), bits, chunks);
#pragma unroll
      for (int i = 0; i < kPieceChunks<kScheme>; i++) {
        const int chunk = kPieceChunks<kScheme> * c + i;
        *reinterpret_cast<uint4*>(tile + tileOffset(kKeyRows, r, chunk)) = chunks[i];
      }
    }
    fenceProxyAsync();  // the generic stores, before the products read the stage through the async proxy
  };
  uint32_t keyBits = fetch(0, head.keyCodes, head.keyScales, rawKeys);
  uint32_t valueBits = fetch(0, head.valueCodes, head.valueScales, rawValues);
  for (int j = 0; j < tiles; j++) {
    const int s = j % kStages;
    unsigned char* keyStage = stages + s * P::kStageBytes;
    waitGroups<1>();  // this tile's keys (its values may still be in flight)
    if (j >= kStages) barrierWait(&emptyK[s], (j / kStages - 1) & 1);
    convert(j, rawKeys, keyBits, keyStage);
    barrierArrive(&fullK[s]);
    keyBits = fetch(j + 1, head.keyCodes, head.keyScales, rawKeys);
    waitGroups<1>();  // this tile's values
    if (j >= kStages) barrierWait(&emptyV[s], (j / kStages - 1) & 1);
    convert(j, rawValues, valueBits, keyStage + P::kKeyBytes);
    barrierArrive(&fullV[s]);
    valueBits = fetch(j + 1, head.valueCodes, head.valueScales, rawValues);
  }
  waitGroups<0>();
#endif
}

// A full head's keys and values come by the tensor memory accelerator when the launcher could describe the main caches
// (`maps`: keyMap / valueMap, [full heads][keyLength][D] in boxes of 128 rows × 64 values, 128-byte swizzle, rows past
// keyLength zeros); a streaming head's (sinks, then a ring) by cp.async row by row.
template <typename T, int D, bool kQuant>
__global__ void __launch_bounds__(kPingPongThreads, 1)
    prefillPingPongKernel(const float* __restrict__ q, int64_t qStride, const void* __restrict__ k, const void* __restrict__ v,
                          int64_t capacity, float* __restrict__ out, int64_t outStride, bool partial, int heads, int64_t rows,
                          int64_t keyLength, int64_t queryStart, int group, float scale, StreamingLayout layout,
                          const __grid_constant__ CUtensorMap keyMap, const __grid_constant__ CUtensorMap valueMap, bool maps,
                          KvQuantPlanes quant) {
#if defined(DUO_WGMMA)
  using P = PingPongPlan<D, kQuant>;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(1024) unsigned char raw[];
  unsigned char* const queryTile = alignTo1024(raw);
  unsigned char* const stages = queryTile + P::kQueryBytes;
  // Per stage: its keys / values have landed (fullK, fullV), its keys / values are free again (emptyK, emptyV). Keys
  // are released once S is computed, values once the next turn's P·V has read them.
  constexpr int kStages = kPingPongStages;
  uint64_t* const fullK = reinterpret_cast<uint64_t*>(stages + kStages * P::kStageBytes);
  uint64_t* const fullV = fullK + kStages;
  uint64_t* const emptyK = fullK + 2 * kStages;
  uint64_t* const emptyV = fullK + 3 * kStages;
  // Blocks in launch order: the query heads of one KV head side by side (they read the same keys and values at the
  // same time, so each tile comes from memory once for all of them), row tiles from the longest, KV heads last.
  const int64_t linear = blockIdx.x + static_cast<int64_t>(gridDim.x) * blockIdx.y;
  const int64_t rest = linear / group;
  const int64_t rowTile = static_cast<int64_t>(gridDim.x) - 1 - rest % gridDim.x;
  const int kvHead = static_cast<int>(rest / gridDim.x), head = kvHead * group + static_cast<int>(linear % group);
  const int64_t blockRow0 = rowTile * kQueryRows;
  const int64_t blockLastRow = lesser(rows, blockRow0 + kQueryRows) - 1;
  const int64_t keyEnd = lesser(keyLength, queryStart + blockLastRow + 1);
  const bool streams = layout.streams(kvHead);
  KeyRange range = keyRangeFor(layout, streams, keyEnd, queryStart + blockRow0, queryStart);
  // A sharded full head: this rank's keys below keyEnd, in its local rows (slot = index, as unsharded).
  const ContextShard& shard = layout.shard;
  const bool sharded = !streams && shard.active();
  if (sharded) range.count = shard.ownedBelow(keyEnd);
  if (partial && streams && shard.rank != 0) range.count = 0;
  const int tiles = static_cast<int>((range.count + kKeyRows - 1) / kKeyRows);
  const bool tensorCopies = maps && !streams && !kQuant;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; s++) {
      barrierInit(&fullK[s], tensorCopies ? 1 : 128);
      barrierInit(&fullV[s], tensorCopies ? 1 : 128);
      barrierInit(&emptyK[s], 256);
      barrierInit(&emptyV[s], 256);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // the barriers, before the copies use them
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    // The copying warpgroup: tile j into stage j % 2 once the consumers have released its previous tile.
    releaseRegisters<kProducerRegisters>();
    // A streaming head's slots: the sinks, then the window's positions around the ring — one modulo per block (the
    // window is never longer than the ring), so the rows need no 64-bit division each.
    const int64_t windowBase = streams ? (range.windowFirst - layout.sink) % layout.ring : 0;
    const auto slotOf = [&](int64_t index) {
      if (!streams || index < range.sinkCount) return index;
      const int64_t around = windowBase + (index - range.sinkCount);
      return layout.sink + (around >= layout.ring ? around - layout.ring : around);
    };
    if constexpr (kQuant) {
      const QuantHead head = quantHead(k, v, capacity, layout, quant, streams, kvHead, D);
      unsigned char* raw = stages + kStages * P::kStageBytes + P::kBarrierBytes;
      switch (head.scheme) {
        case KvQuant::Int8: produceQuantTiles<D, KvQuant::Int8>(head, tiles, range.count, slotOf, stages, raw, fullK, fullV, emptyK, emptyV); break;
        case KvQuant::Int4: produceQuantTiles<D, KvQuant::Int4>(head, tiles, range.count, slotOf, stages, raw, fullK, fullV, emptyK, emptyV); break;
        default: produceQuantTiles<D, KvQuant::Fp8>(head, tiles, range.count, slotOf, stages, raw, fullK, fullV, emptyK, emptyV); break;
      }
      return;
    }
    if (tensorCopies) {
      // One thread issues every copy: per tile and operand, D / 64 boxes of 128 rows.
      if (threadIdx.x == 0) {
        const int fullRow = static_cast<int>(layout.fullRow(kvHead));
        for (int j = 0; j < tiles; j++) {
          const int s = j % kStages;
          unsigned char* keyStage = stages + s * P::kStageBytes;
          if (j >= kStages) barrierWait(&emptyK[s], (j / kStages - 1) & 1);
          barrierExpect(&fullK[s], P::kKeyBytes);
#pragma unroll
          for (int c = 0; c < D / 64; c++) tensorLoad3d(keyStage + c * kKeyRows * 128, &keyMap, 64 * c, j * kKeyRows, fullRow, &fullK[s]);
          if (j >= kStages) barrierWait(&emptyV[s], (j / kStages - 1) & 1);
          barrierExpect(&fullV[s], P::kKeyBytes);
#pragma unroll
          for (int c = 0; c < D / 64; c++)
            tensorLoad3d(keyStage + P::kKeyBytes + c * kKeyRows * 128, &valueMap, 64 * c, j * kKeyRows, fullRow, &fullV[s]);
        }
      }
      return;
    }
    const T* keys = headRows<T>(k, layout.key, capacity, layout, streams, kvHead, D);
    const T* values = headRows<T>(v, layout.value, capacity, layout, streams, kvHead, D);
    const int c = threadIdx.x % kChunks;
    auto copyRows = [&](unsigned char* target, const T* source, int j) {
#if defined(DUO_PREFILL_NO_LOADS)
      if (j >= kStages) return;
#endif
      for (int r = threadIdx.x / kChunks; r < kKeyRows; r += 128 / kChunks) {
        const int64_t index = static_cast<int64_t>(j) * kKeyRows + r;
        const bool valid = index < range.count;
        const int64_t element = (valid ? slotOf(index) : 0) * D + c * 8;
        copyOrZero16(target + tileOffset(kKeyRows, r, c), source + element, valid);
      }
    };
    for (int j = 0; j < tiles; j++) {
      const int s = j % kStages;
      unsigned char* keyStage = stages + s * P::kStageBytes;
      if (j >= kStages) barrierWait(&emptyK[s], (j / kStages - 1) & 1);
      copyRows(keyStage, keys, j);
      copiesArrive(&fullK[s]);
      if (j >= kStages) barrierWait(&emptyV[s], (j / kStages - 1) & 1);
      copyRows(keyStage + P::kKeyBytes, values, j);
      copiesArrive(&fullV[s]);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }

  claimRegisters<kConsumerRegisters>();
  const int consumer = (threadIdx.x >> 7) - 1;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // This warpgroup's 64 query rows, scaled by log2(e) and rounded once; rows past the chunk are zeros. Every load is
  // issued before the first store, so a block waits out one memory latency here, not one per piece (3–5 % of a 16K or
  // 32K call on the H100).
  const float qScale = scale * 1.4426950408889634f;
  constexpr int kQueryPieces = 64 * kChunks / 128;
  float4 queryLoads[kQueryPieces][2];
#pragma unroll
  for (int i = 0; i < kQueryPieces; i++) {
    const int piece = (threadIdx.x & 127) + 128 * i;
    const int64_t row = blockRow0 + 64 * consumer + piece / kChunks;
    queryLoads[i][0] = queryLoads[i][1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < rows) {
      const float4* source = reinterpret_cast<const float4*>(q + row * qStride + static_cast<int64_t>(head) * D + (piece % kChunks) * 8);
      queryLoads[i][0] = __ldg(source);
      queryLoads[i][1] = __ldg(source + 1);
    }
  }
#pragma unroll
  for (int i = 0; i < kQueryPieces; i++) {
    const int piece = (threadIdx.x & 127) + 128 * i;
    const float4 low = queryLoads[i][0], high = queryLoads[i][1];
    const uint4 packed = make_uint4(packPair<T>(low.x * qScale, low.y * qScale), packPair<T>(low.z * qScale, low.w * qScale),
                                    packPair<T>(high.x * qScale, high.y * qScale), packPair<T>(high.z * qScale, high.w * qScale));
    *reinterpret_cast<uint4*>(queryTile + tileOffset(kQueryRows, 64 * consumer + piece / kChunks, piece % kChunks)) = packed;
  }
  fenceProxyAsync();
  namedSync(3 + consumer, 128);
  // Consumer 0 takes the first turn.
  if (consumer == 1 && tiles > 0) namedArrive(1, 256);

  const int64_t groupRow0 = blockRow0 + 64 * consumer;
  const int64_t groupLast = queryStart + lesser(rows - 1, groupRow0 + 63);
  const int64_t groupFirst = queryStart + groupRow0;
  int64_t position[2];
  position[0] = queryStart + groupRow0 + 16 * warp + g;
  position[1] = position[0] + 8;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
  float rowMax[2] = {-INFINITY, -INFINITY}, rowSum[2] = {0.0f, 0.0f};
  uint32_t p[kKeyRows / 16][4];
  const unsigned char* queryRows = queryTile + consumer * 64 * 128;
  // Key number `index`'s position (a shard's keys are whole chunks of positions, in order).
  const auto keyPosition = [&](int64_t index) { return sharded ? shard.positionAt(index) : range.position(index); };

  // One tile; kPrevious: the turn also issues the previous tile's P·V (every tile but the first: two instantiations, so
  // no product is issued under a branch, which would make the compiler serialize them).
  auto step = [&](int j, auto previous) {
    constexpr bool kPrevious = decltype(previous)::value;
    const int s = j % kStages, previousStage = (j + kStages - 1) % kStages;
    float corrections[2];
    barrierWait(&fullK[s], (j / kStages) & 1);
    if constexpr (kPrevious) barrierWait(&fullV[previousStage], ((j - 1) / kStages) & 1);
    fenceProxyAsync();
    const unsigned char* keyStage = stages + s * P::kStageBytes;
    float sc[kKeyRows / 2];
    namedSync(1 + consumer, 256);
    pinRegisters(o);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < D / 16; step++) {
      const uint64_t a = sharedTileDescriptor(queryRows + (step >> 2) * kQueryRows * 128) + 2 * (step & 3);
      const uint64_t b = sharedTileDescriptor(keyStage + (step >> 2) * kKeyRows * 128) + 2 * (step & 3);
      Wgmma<T, kKeyRows>::run(sc, a, b, step > 0);
    }
    wgmmaCommit();
    if constexpr (kPrevious) {
      const unsigned char* previousValues = stages + previousStage * P::kStageBytes + P::kKeyBytes;
#pragma unroll
      for (int i = 0; i < kKeyRows / 16; i++)
        WgmmaRegisterA<T, D>::run(o, p[i], mnMajorDescriptor(previousValues + i * 16 * 128, kKeyRows * 128));
      wgmmaCommit();
    }
    if (consumer == 0 || j + 1 < tiles) namedArrive(2 - consumer, 256);
#if defined(DUO_PREFILL_NO_OVERLAP)
    wgmmaWait<0>();
    pinRegisters(p);
    pinRegisters(o);
    if constexpr (kPrevious) barrierArrive(&emptyV[previousStage]);
#else
    // S first: the softmax below runs while the previous tile's P·V is still on the tensor cores.
    if constexpr (kPrevious) wgmmaWait<1>();
    else wgmmaWait<0>();
#endif
    pinRegisters(sc);
    barrierArrive(&emptyK[s]);

    const int64_t tile = static_cast<int64_t>(j) * kKeyRows;
    const int64_t firstKey = keyPosition(tile);
    const int64_t lastIndex = lesser(range.count, tile + kKeyRows) - 1;
    const int64_t lastKey = keyPosition(lastIndex);
    const bool whole = lastIndex == tile + kKeyRows - 1 && lastKey <= groupFirst &&
                       (!streams || lastKey < layout.sink || firstKey >= layout.windowStart(groupLast, queryStart));
    if (!whole) {
#pragma unroll
      for (int i = 0; i < kKeyRows / 2; i++) {
        const int64_t index = tile + 8 * (i >> 2) + 2 * t + (i & 1);
        const bool visible = index < range.count && keyVisible(layout, streams, position[(i >> 1) & 1], keyPosition(index), queryStart);
        if (!visible) sc[i] = -INFINITY;
      }
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
      float tileMax = -INFINITY;
#pragma unroll
      for (int i = 0; i < kKeyRows / 2; i++)
        if (((i >> 1) & 1) == half) tileMax = fmaxf(tileMax, sc[i]);
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
      tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
      const float updated = fmaxf(rowMax[half], tileMax);
      const float base = updated == -INFINITY ? 0.0f : updated;
      const float correction = exp2Fast(rowMax[half] - base);
      float partial = 0.0f;
#pragma unroll
      for (int i = 0; i < kKeyRows / 2; i++)
        if (((i >> 1) & 1) == half) {
          sc[i] = exp2Fast(sc[i] - base);
          partial += sc[i];
        }
      rowSum[half] = rowSum[half] * correction + partial;
      rowMax[half] = updated;
      corrections[half] = correction;
    }
#if !defined(DUO_PREFILL_NO_OVERLAP)
    if constexpr (kPrevious) {
      // The previous P·V is done: O and the previous P's registers are free again.
      wgmmaWait<0>();
      pinRegisters(p);
      pinRegisters(o);
      barrierArrive(&emptyV[previousStage]);
    }
#endif
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] *= corrections[(i >> 1) & 1];
#pragma unroll
    for (int i = 0; i < kKeyRows / 16; i++) {
      p[i][0] = packPair<T>(sc[8 * i + 0], sc[8 * i + 1]);
      p[i][1] = packPair<T>(sc[8 * i + 2], sc[8 * i + 3]);
      p[i][2] = packPair<T>(sc[8 * i + 4], sc[8 * i + 5]);
      p[i][3] = packPair<T>(sc[8 * i + 6], sc[8 * i + 7]);
    }
  };
  if (tiles > 0) step(0, std::false_type{});
  for (int j = 1; j < tiles; j++) step(j, std::true_type{});
  if (tiles > 0) {
    const unsigned char* lastValues = stages + ((tiles - 1) % kStages) * P::kStageBytes + P::kKeyBytes;
    barrierWait(&fullV[(tiles - 1) % kStages], ((tiles - 1) / kStages) & 1);
    fenceProxyAsync();
    pinRegisters(o);
    wgmmaFence();
#pragma unroll
    for (int i = 0; i < kKeyRows / 16; i++) WgmmaRegisterA<T, D>::run(o, p[i], mnMajorDescriptor(lastValues + i * 16 * 128, kKeyRows * 128));
    wgmmaCommit();
    wgmmaWait<0>();
    pinRegisters(o);
  }
#pragma unroll
  for (int half = 0; half < 2; half++) {
    float total = rowSum[half];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int64_t row = position[half] - queryStart;
    if (row >= rows) continue;
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
    float* target = out + row * outStride + static_cast<int64_t>(head) * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++)
      *reinterpret_cast<float2*>(target + 8 * j + 2 * t) = make_float2(o[4 * j + 2 * half] * inverse, o[4 * j + 2 * half + 1] * inverse);
    // The head's log-sum-exp of the scaled scores (natural log: the row's maximum is in log2 units), after the row's
    // heads · D outputs; −∞ where the rank sees no key.
    if (partial && t == 0) {
      out[row * outStride + static_cast<int64_t>(heads) * D + head] =
          total > 0.0f ? rowMax[half] * 0.6931471805599453f + logf(total) : -INFINITY;
    }
  }
#endif
}

// cuTensorMapEncodeTiled from the driver, found once through the runtime (the build links no driver library).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                 const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encodeTiled() {
  static const EncodeTiled function = [] {
    void* pointer = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &pointer, 12000, cudaEnableDefault, &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(pointer);
  }();
  return function;
}

// A cache [heads][capacity][D] of 16-bit values as a tensor map of its first `rows` rows per head, in boxes of 128 rows ×
// 64 values with the 128-byte swizzle; false where the driver cannot (the kernel then copies with cp.async).
bool encodeRows(CUtensorMap& map, const void* cache, DType type, int D, int64_t rows, int64_t capacity, int heads) {
  const EncodeTiled encode = encodeTiled();
  if (!encode || rows < 1 || reinterpret_cast<uintptr_t>(cache) % 16 != 0) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(rows), static_cast<cuuint64_t>(heads)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(capacity) * D * 2};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(kKeyRows), 1};
  const cuuint32_t elementStrides[3] = {1, 1, 1};
  return encode(&map, type == DType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, const_cast<void*>(cache),
                dims, strides, box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

bool prefillWgmmaServes(const float* q, int64_t qStride, int64_t rows, const AttentionArgs& args, DType cacheType) {
  // q read 16 bytes at a time; a streaming head's window (recent + the call's rows at most) within its ring, as the
  // copies walk it with one wrap.
  const bool aligned = reinterpret_cast<uintptr_t>(q) % 16 == 0 && qStride % 4 == 0;
  const bool windowFits = !args.streaming.active() || args.streaming.recent + rows <= args.streaming.ring;
  // Quantized caches of any scheme: their tiles are dequantized into bf16 stages (tileBytes).
  const bool tiles16 = args.quant.scheme != 0 || cacheType == DType::BF16 || cacheType == DType::F16;
  return tiles16 && (args.headDim == 64 || args.headDim == 128) && aligned && windowFits && wgmmaCompiled();
}

void launchAttentionPrefillWgmma(const float* q, int64_t qStride, const void* k, const void* v, DType cacheType, int64_t capacity,
                                 float* out, int64_t rows, const AttentionArgs& args, cudaStream_t stream, int64_t outStride) {
  if (rows == 0) return;
  // The main caches' rows the call reads: a shard's, below the whole sequence's keyLength.
  const int64_t keyRows = args.streaming.shard.ownedBelow(args.keyLength);
  const int group = args.heads / args.kvHeads;
  const dim3 grid(static_cast<unsigned>((rows + kQueryRows - 1) / kQueryRows), static_cast<unsigned>(args.heads));
  auto launch = [&](auto type, auto dim, auto quantized) {
    using T = decltype(type);
    constexpr int D = decltype(dim)::value;
    constexpr bool kQuant = decltype(quantized)::value;
    using P = PingPongPlan<D, kQuant>;
    // The main caches as tensor maps (mode 2: cp.async for every head, to compare); quantized caches are dequantized by
    // the copying threads instead.
    const int fullHeads = args.streaming.active() ? args.streaming.retrievalKvHeads : args.kvHeads;
    CUtensorMap keyMap{}, valueMap{};
    const bool maps = !kQuant && prefillWgmmaMode() == 1 && fullHeads > 0 &&
                      encodeRows(keyMap, k, cacheType, D, keyRows, capacity, fullHeads) &&
                      encodeRows(valueMap, v, cacheType, D, keyRows, capacity, fullHeads);
    auto kernel = prefillPingPongKernel<T, D, kQuant>;
    allowSharedMemory(kernel, P::kSharedBytes);
    kernel<<<grid, kPingPongThreads, P::kSharedBytes, stream>>>(q, qStride, k, v, capacity, out, outStride, args.partial, args.heads,
                                                                 rows, args.keyLength, args.queryStart, group, args.scale,
                                                                 args.streaming, keyMap, valueMap, maps, args.quant);
  };
  auto forHeadDim = [&](auto type, auto quantized) {
    if (args.headDim == 128) launch(type, std::integral_constant<int, 128>{}, quantized);
    else launch(type, std::integral_constant<int, 64>{}, quantized);
  };
  if (args.quant.scheme != 0) forHeadDim(__nv_bfloat16{}, std::true_type{});
  else if (cacheType == DType::BF16) forHeadDim(__nv_bfloat16{}, std::false_type{});
  else forHeadDim(__half{}, std::false_type{});
  checkLaunch("attentionPrefill (warpgroup)");
}

}  // namespace cuda
}  // namespace duo
