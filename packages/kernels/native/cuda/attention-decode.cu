// CUDA decode attention, split-K (flash-decoding): each block takes one split of one KV head's keys for all of its
// query heads (GQA) — decodeKernel on the CUDA cores, decodeMmaKernel on the tensor cores, decodeCodesKernel on the
// tensor cores over quantized caches (attention-decode-codes.cuh) — and the last split of a head to finish merges
// them all (mergeWarpStates), or past kMergeInKernel splits decodeCombineKernel does. Reads
// f32 / f16 / bf16 caches [kvHeads, capacity, headDim], or quantized ones (the CUDA-core kernel dequantizes its tiles
// while staging them, quant-rows.cuh; the tensor-core one multiplies the codes), and accumulates in f32. The kernel
// for an op is decodeKernelFor's (attention-common.cuh). One launch serves one sequence (attentionDecode) or many,
// each with its own caches, layout, quantization and length (attentionBatch's decode rows): a grid coordinate picks
// the sequence (y the combine's).
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <memory>
#include <type_traits>

#include "attention-common.cuh"
#include "mma.cuh"
#include "quant-rows.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kDecodeThreads = 128;
// grid (kvHeads, splits), 4 warps. Each warp walks 32-key tiles of its block's split: the tile's keys and values
// are copied into shared memory with coalesced cp.async (key rows padded by 16 bytes so per-lane row reads are
// conflict-free); then each lane scores one key against all G query heads of the KV head, the warp does one
// online-softmax update per tile, and lanes that own D/32 value channels accumulate with the probabilities broadcast.
constexpr int kDecodeWarps = kDecodeThreads / 32;

// One sequence of a decode launch, as its blocks read it: its query row, caches, layout, key count, splits, the
// partials and arrival counts of its heads and its output row.
struct DecodeSequence {
  const float* q;
  const void* k;
  const void* v;
  int64_t capacity, keyLength;
  const int32_t* lengthFrom;  // see AttentionArgs
  StreamingLayout layout;
  KvQuantPlanes quant;
  DecodeSplits splits;
  float* partialAcc;
  float* partialMax;
  float* partialSum;
  float* out;
  int* arrivals;  // per KV head: the splits done so far (zero between launches; the last split resets it)
  int blocks;     // splits.blocks(kvHeads): the blocks of a launch's row past them exit
  int mergeInKernel;  // heads of at most this many splits are merged by the decode kernel, the rest by the combine
  // attentionPartial: where the heads' log-sum-exps start in the output row (after heads · headDim outputs); −1: none.
  int64_t lseAt;
};

// What a decode launch and its combine take: up to N sequences (see decoding() and sequence()), passed by value as one
// __grid_constant__ parameter, so a block reads its sequence's descriptor where it lies (no copy to local memory, no
// upload: launches stay capture-safe). N = 1 is the single-sequence op.
template <int N>
struct DecodeLaunch {
  int group, headDim;
  float scale;
  bool longSplitsFirst;  // a batch's decode grid is (sequences, blocks), else (blocks, sequences)
  DecodeSequence sequences[N];
  // The combine's grid: (heads, sequences).
  __device__ __forceinline__ const DecodeSequence& sequence() const { return sequences[N == 1 ? 0 : blockIdx.y]; }
  // The decode kernel's grid: (blocks, 1) for one sequence; for a batch (sequences, blocks) when longSplitsFirst — every
  // sequence's first blocks, the full heads' long splits, are scheduled before any sequence's later ones and the short
  // streaming splits fill the tail — else (blocks, sequences).
  __device__ __forceinline__ const DecodeSequence& decoding() const {
    return sequences[N == 1 ? 0 : (longSplitsFirst ? blockIdx.x : blockIdx.y)];
  }
  __device__ __forceinline__ int block() const {
    return static_cast<int>(N == 1 || !longSplitsFirst ? blockIdx.x : blockIdx.y);
  }
  // Blocks past the sequence's splits (a batch's grid is as wide as its widest sequence) have nothing to do.
  __device__ __forceinline__ bool idle() const { return N > 1 && block() >= decoding().blocks; }
};
// Sequences per batched launch: 64 descriptors are about 17 KB, within the 32 KB of kernel parameters CUDA 12.1
// allows from Volta on; a larger batch takes several launches.
constexpr int kBatchSequences = 64;
static_assert(sizeof(DecodeLaunch<kBatchSequences>) <= 32764, "a batched decode launch's parameters must fit 32 KB");
static_assert(kBatchSequences * kDecodeArrivalsPerSequence <= kDecodeArrivals, "every sequence of a launch has its arrival counts");

template <typename T, int D>
struct DecodeTile {
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));
  static constexpr int kKeyStride = D + kPad;
  static constexpr size_t kBytesPerWarp = 32 * (kKeyStride + D) * sizeof(T);
};

// What one decode block works on: its KV head, its split of that head's keys (logical indices begin … end − 1 of the
// head's KeyRange) and where the head's keys live. Full heads read the main caches, streaming heads their region.
template <typename T>
struct DecodeWork {
  const T* keys;
  const T* values;
  QuantHead quant;  // quantized caches: the head's code and scale rows instead of keys / values
  StreamingLayout layout;
  KeyRange range;
  bool streams;
  int kvHead, split, splits;
  int64_t begin, end;
  __device__ __forceinline__ int64_t slot(int64_t index) const { return streams ? layout.slot(range.position(index)) : index; }
};

template <typename T, bool kQuant>
__device__ __forceinline__ DecodeWork<T> decodeWork(const DecodeSequence& sequence, int block, int headDim) {
  const void* k = sequence.k;
  const void* v = sequence.v;
  const int64_t capacity = sequence.capacity;
  int64_t keyLength = sequence.keyLength;
  const StreamingLayout& layout = sequence.layout;
  DecodeWork<T> work;
  work.layout = layout;
  sequence.splits.locate(block, layout, work.kvHead, work.split, work.splits);
  if (sequence.lengthFrom) keyLength = static_cast<int64_t>(sequence.lengthFrom[0]) + 1;
  work.streams = layout.streams(work.kvHead);
  work.range = keyRangeFor(layout, work.streams, keyLength, keyLength - 1, keyLength - 1);
  // A rank's shard (context parallelism): a decode row sees every key the rank holds, at slots 0 … held − 1; a partial
  // call on a rank past 0 leaves the streaming heads to rank 0.
  if (!work.streams && layout.shard.active()) {
    const int64_t held = layout.shard.ownedBelow(keyLength);
    work.range = KeyRange{held, held, held};
  }
  if (work.streams && sequence.lseAt >= 0 && layout.shard.rank != 0) work.range.count = 0;
  const int64_t chunk = ((work.range.count + work.splits - 1) / work.splits + 31) / 32 * 32;
  work.begin = static_cast<int64_t>(work.split) * chunk;
  work.end = lesser(work.range.count, work.begin + chunk);
  if constexpr (kQuant) {
    work.quant = quantHead(k, v, capacity, layout, sequence.quant, work.streams, work.kvHead, headDim);
  } else {
    work.keys = headRows<T>(k, layout.key, capacity, layout, work.streams, work.kvHead, headDim);
    work.values = headRows<T>(v, layout.value, capacity, layout, work.streams, work.kvHead, headDim);
  }
  return work;
}

// A lane's part of its warp's state for the block merge, from the tensor-core kernels' Oᵀ accumulators: its head's max
// and sum (the lanes of pair 0) and its columns of Oᵀ — heads 2·pair and 2·pair + 1, those below G — into
// stateAcc[warp][head][channel], where `channel(m, r)` is the channel of row r of m-tile m.
template <int D, int MAXG, int TILES, typename Channel>
__device__ __forceinline__ void storeWarpState(float (&stateMax)[kDecodeWarps][MAXG], float (&stateSum)[kDecodeWarps][MAXG],
                                               float* stateAcc, const float (&out)[TILES][4], float maximum, float sum, int group,
                                               int warp, int row, int pair, const Channel& channel) {
  if (row < group && pair == 0) {
    stateMax[warp][row] = maximum;
    stateSum[warp][row] = sum;
  }
#pragma unroll
  for (int column = 0; column < 2; column++) {
    const int head = 2 * pair + column;
    if (head < group) {
      float* state = stateAcc + (warp * MAXG + head) * D;
#pragma unroll
      for (int m = 0; m < TILES; m++) {
        state[channel(m, row)] = out[m][column];
        state[channel(m, row + 8)] = out[m][2 + column];
      }
    }
  }
}

// Heads of at most this many splits are merged by the decode kernel's last block to finish (a batch's short
// sequences: no combine launch per layer); more, by decodeCombineKernel, which spreads a head's reads over 256
// threads (one block merging four heads' 66 splits at 32K measured 1 ms a token slower: docs/performance-notes.md).
// At 32 the int8 / fp8 caches' heads at 128K and 512K (up to 32 splits) decoded 5–12 % slower than with the combine
// kernel (bench/results/2026-12-07-h100-decode), so only short heads merge in the kernel. A batch's sequences take
// Tuning::decodeBatchMerge instead, 16 by default: at 4K a batch of 4 splits its heads 16 ways, and merging them in
// the kernel rather than a combine launch a layer took 0.4–1.5 % off its step (bench/results/2026-12-07-h100-batch-merge).
constexpr int kMergeInKernel = 8;
std::atomic<int> batchMergeKnob{16};

// Warp `warp` … of the last split's block to arrive merges head `head`'s `splits` partials into its output row: the
// maxima and sums with lanes over the splits, then the rows split after split (lanes over channels). The partials are
// read through L2 (other blocks wrote them).
template <int D>
__device__ __forceinline__ void mergeSplits(const DecodeSequence& sequence, int64_t head, int splits, int lane) {
  constexpr int kChannels = D >= 32 ? D / 32 : 1;
  const int64_t base = head * sequence.splits.stride;
  const float* maxima = sequence.partialMax + base;
  const float* sums = sequence.partialSum + base;
  const float* acc = sequence.partialAcc + base * D;
  float largest = -INFINITY;
  for (int split = lane; split < splits; split += 32) largest = fmaxf(largest, __ldcg(maxima + split));
  const float overall = warpMax(largest);
  float total = 0.0f;
  for (int split = lane; split < splits; split += 32) {
    const float maximum = __ldcg(maxima + split);
    total += maximum == -INFINITY ? 0.0f : __expf(maximum - overall) * __ldcg(sums + split);
  }
  total = warpSum(total);
  float value[kChannels] = {};
#pragma unroll 8
  for (int split = 0; split < splits; split++) {
    const float maximum = __ldcg(maxima + split);
    const float weight = maximum == -INFINITY ? 0.0f : __expf(maximum - overall);
#pragma unroll
    for (int c = 0; c < kChannels; c++) {
      const int channel = lane + 32 * c;
      if (channel < D) value[c] += __ldcg(acc + static_cast<int64_t>(split) * D + channel) * weight;
    }
  }
#pragma unroll
  for (int c = 0; c < kChannels; c++) {
    const int channel = lane + 32 * c;
    if (channel < D) sequence.out[head * D + channel] = total > 0.0f ? value[c] / total : 0.0f;
  }
  if (sequence.lseAt >= 0 && lane == 0) sequence.out[sequence.lseAt + head] = total > 0.0f ? overall + logf(total) : -INFINITY;
}

// The end of a decode block: each warp left its running max and sum per query head in stateMax / stateSum and its
// unnormalised output rows in stateAcc ([warp][head][channel], MAXG heads a warp); the block merges the warps. A head
// of one split is then done: its output is written. Otherwise the block writes its split's partials and, up to
// kMergeInKernel splits, counts itself in: the last split of the KV head to arrive merges them all (split-K in one
// launch), in a fixed order, so a head's result depends only on its own splits.
template <int D, int MAXG, typename T>
__device__ __forceinline__ void mergeWarpStates(const float (&stateMax)[kDecodeWarps][MAXG], const float (&stateSum)[kDecodeWarps][MAXG],
                                                const float* stateAcc, const DecodeSequence& sequence, const DecodeWork<T>& work,
                                                int group) {
  for (int t = threadIdx.x; t < group * D; t += blockDim.x) {
    const int g = t / D, channel = t % D;
    float overall = -INFINITY;
    for (int w = 0; w < kDecodeWarps; w++) overall = fmaxf(overall, stateMax[w][g]);
    float total = 0.0f, value = 0.0f;
    if (overall != -INFINITY) {
      for (int w = 0; w < kDecodeWarps; w++) {
        const float weight = __expf(stateMax[w][g] - overall);
        total += stateSum[w][g] * weight;
        value += stateAcc[(w * MAXG + g) * D + channel] * weight;
      }
    }
    const int64_t head = static_cast<int64_t>(work.kvHead) * group + g;
    if (work.splits == 1) {
      sequence.out[head * D + channel] = total > 0.0f ? value / total : 0.0f;
      if (sequence.lseAt >= 0 && channel == 0) sequence.out[sequence.lseAt + head] = total > 0.0f ? overall + logf(total) : -INFINITY;
      continue;
    }
    const int64_t index = head * sequence.splits.stride + work.split;
    sequence.partialAcc[index * D + channel] = value;
    if (channel == 0) {
      sequence.partialMax[index] = overall;
      sequence.partialSum[index] = total;
    }
  }
  if (work.splits == 1 || work.splits > sequence.mergeInKernel) return;
  __shared__ bool last;
  __threadfence();  // this block's partials are visible device-wide before it counts itself in
  __syncthreads();
  if (threadIdx.x == 0) {
    int* arrivals = sequence.arrivals + work.kvHead;
    last = atomicAdd(arrivals, 1) == work.splits - 1;
    if (last) atomicExch(arrivals, 0);  // ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int g = warp; g < group; g += kDecodeWarps)
    mergeSplits<D>(sequence, static_cast<int64_t>(work.kvHead) * group + g, work.splits, lane);
}

template <typename T, int D, int MAXG, bool kQuant, int N>
__global__ void __launch_bounds__(kDecodeThreads) decodeKernel(const __grid_constant__ DecodeLaunch<N> launch) {
  if (launch.idle()) return;
  dependOnPrevious();
  const DecodeSequence& sequence = launch.decoding();
  const float* __restrict__ q = sequence.q;
  const int group = launch.group;
  const float scale = launch.scale;
  using Tile = DecodeTile<T, D>;
  constexpr int kVec = Vec16<T>::kCount;
  constexpr int kChannels = D >= 32 ? D / 32 : 1;
  constexpr int kElementsPerCopy = 16 / static_cast<int>(sizeof(T));
  constexpr int kChunksPerRow = D / kElementsPerCopy;
  __shared__ __align__(16) float queries[MAXG][D];
  __shared__ float stateMax[kDecodeWarps][MAXG];
  __shared__ float stateSum[kDecodeWarps][MAXG];
  extern __shared__ __align__(16) unsigned char tiles[];
  const DecodeWork<T> work = decodeWork<T, kQuant>(sequence, launch.block(), D);
  const int kvHead = work.kvHead;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  T* keyTile = reinterpret_cast<T*>(tiles + warp * Tile::kBytesPerWarp);
  T* valueTile = keyTile + 32 * Tile::kKeyStride;
  for (int t = threadIdx.x; t < MAXG * D; t += blockDim.x) {
    int g = t / D;
    queries[g][t % D] = g < group ? q[(static_cast<int64_t>(kvHead) * group + g) * D + t % D] * scale : 0.0f;
  }
  __syncthreads();
  const int64_t begin = work.begin, end = work.end;
  const bool channelLane = lane * kChannels < D;

  float maximum[MAXG], sum[MAXG], acc[MAXG][kChannels];
#pragma unroll
  for (int g = 0; g < MAXG; g++) {
    maximum[g] = -INFINITY;
    sum[g] = 0.0f;
#pragma unroll
    for (int c = 0; c < kChannels; c++) acc[g][c] = 0.0f;
  }
  for (int64_t tile = begin + static_cast<int64_t>(warp) * 32; tile < end; tile += kDecodeWarps * 32) {
    const int count = static_cast<int>(lesser(32, end - tile));
    if constexpr (kQuant) {
      stageQuantTile<T, D, 32, 32>(keyTile, Tile::kKeyStride, valueTile, D, work.quant, tile, count, lane,
                                   [&](int64_t index) { return work.slot(index); });
    } else {
      for (int piece = lane; piece < count * kChunksPerRow; piece += 32) {
        const int row = piece / kChunksPerRow, column = (piece % kChunksPerRow) * kElementsPerCopy;
        const int64_t slot = work.slot(tile + row) * D + column;
        copyAsync16(keyTile + row * Tile::kKeyStride + column, work.keys + slot);
        copyAsync16(valueTile + row * D + column, work.values + slot);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncwarp();
    const bool valid = lane < count;
    float score[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) score[g] = 0.0f;
    if (valid) {
      const T* key = keyTile + lane * Tile::kKeyStride;
#pragma unroll
      for (int c = 0; c < D; c += kVec) {
        float kv[kVec];
        Vec16<T>::load(key + c, kv);
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
          if (g < group) {
#pragma unroll
            for (int i = 0; i < kVec; i += 4) {
              const float4 qv = *reinterpret_cast<const float4*>(&queries[g][c + i]);
              score[g] += qv.x * kv[i] + qv.y * kv[i + 1] + qv.z * kv[i + 2] + qv.w * kv[i + 3];
            }
          }
        }
      }
    }
    float p[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
      p[g] = 0.0f;
      if (g < group) {
        const float s = valid ? score[g] : -INFINITY;
        const float updated = fmaxf(maximum[g], warpMax(s));
        const float correction = __expf(maximum[g] - updated);
        p[g] = valid ? __expf(s - updated) : 0.0f;
        sum[g] = sum[g] * correction + warpSum(p[g]);
#pragma unroll
        for (int c = 0; c < kChannels; c++) acc[g][c] *= correction;
        maximum[g] = updated;
      }
    }
#pragma unroll 4
    for (int kk = 0; kk < count; kk++) {
      float value[kChannels];
#pragma unroll
      for (int c = 0; c < kChannels; c++) value[c] = 0.0f;
      if (channelLane) loadChannels<T, kChannels>(valueTile + kk * D + lane * kChannels, value);
#pragma unroll
      for (int g = 0; g < MAXG; g++) {
        if (g < group) {
          const float pk = __shfl_sync(0xffffffffu, p[g], kk);
#pragma unroll
          for (int c = 0; c < kChannels; c++) acc[g][c] += pk * value[c];
        }
      }
    }
    __syncwarp();  // every lane is done with this tile before the next copy overwrites it
  }
  // The tiles are no longer needed: their space holds each warp's accumulators for the block merge.
  __syncthreads();
  float* stateAcc = reinterpret_cast<float*>(tiles);  // [warp][g][channel]
#pragma unroll
  for (int g = 0; g < MAXG; g++) {
    if (g < group) {
      if (lane == 0) {
        stateMax[warp][g] = maximum[g];
        stateSum[warp][g] = sum[g];
      }
      if (channelLane) {
#pragma unroll
        for (int c = 0; c < kChannels; c++) stateAcc[(warp * MAXG + g) * D + lane * kChannels + c] = acc[g][c];
      }
    }
  }
  __syncthreads();
  mergeWarpStates<D, MAXG>(stateMax, stateSum, stateAcc, sequence, work, group);
}

// Blocks of the tensor-core decode kernel a multiprocessor holds (its template's BLOCKS, the launch bound): two by
// default (Tuning::decodeMmaBlocks), or three (at most 168 registers a thread, shared memory 3 × 68 KB at D = 128;
// 1–6 % slower before the query's two parts shared one product, not measured since).
std::atomic<int> decodeMmaBlocksKnob{2};

// Tensor-core decode for 16-bit caches, head dim 64 or 128, up to 8 query heads per KV head (GQA). Same grid, tiles
// and merge as decodeKernel, but per 32-key tile the scores Q·Kᵀ and the update are mma.sync m16n8k16 products:
// q is split into a 16-bit high part and a 16-bit remainder so the scores keep about 16 mantissa bits, the high parts
// rows 0…7 of A (the G query heads; rows past G zero) and the remainders rows 8…15, so one product a k-step serves
// both (its row halves added); P is rounded to 16 bits for the update, as FlashAttention
// does, which runs as Oᵀ = Vᵀ·Pᵀ (query heads as N: a lane's probabilities are already the B fragments, and half the
// accumulators of P·V, whose rows 8…15 would be zero). Quantized caches take decodeCodesKernel
// (attention-decode-codes.cuh).
template <typename T, int D, int N, int BLOCKS>
__global__ void __launch_bounds__(kDecodeThreads, BLOCKS) decodeMmaKernel(const __grid_constant__ DecodeLaunch<N> launch) {
  if (launch.idle()) return;
  const DecodeSequence& sequence = launch.decoding();
  const float* __restrict__ q = sequence.q;
  const int group = launch.group;
  const float scale = launch.scale;
  constexpr int kStride = D + 8;       // padded rows: conflict-free fragment loads and ldmatrix
  constexpr int kSteps = D / 16;       // k-steps of Q·Kᵀ
  constexpr int kOutTiles = D / 16;    // m-tiles of Oᵀ
  constexpr int kMaxHeads = 8;
  __shared__ float stateMax[kDecodeWarps][kMaxHeads];
  __shared__ float stateSum[kDecodeWarps][kMaxHeads];
  extern __shared__ __align__(16) unsigned char tiles[];
  // The key count (positions) is only written between steps, and the cached keys other than the newest one are not
  // written by the kernel before this one (RoPE + cache write): a warp whose first tile ends before the newest key
  // stages it before waiting for that kernel, so its first cache read overlaps it (chained launches).
  const DecodeWork<T> work = decodeWork<T, false>(sequence, launch.block(), D);
  const int kvHead = work.kvHead;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row = lane >> 2, pair = lane & 3;
  T* keyTile = reinterpret_cast<T*>(tiles) + static_cast<int64_t>(warp) * 2 * 32 * kStride;
  T* valueTile = keyTile + 32 * kStride;
  const int64_t firstTile = work.begin + static_cast<int64_t>(warp) * 32;
  const bool early = firstTile + 32 < work.range.count && firstTile < work.end;
  auto slotOf = [&](int64_t index) { return work.slot(index); };
  auto stage = [&](int64_t tile, int count) {
    stageTile<T, D>(keyTile, valueTile, work.keys, work.values, tile, count, 32, lane, 32, slotOf);
  };
  if (early) stage(firstTile, static_cast<int>(lesser(32, work.end - firstTile)));
  dependOnPrevious();
  // A fragments of Q for this lane: row `row` (a query head), columns 16s + 2·pair (+1) and 16s + 8 + 2·pair (+1).
  uint32_t qHigh[kSteps][2], qLow[kSteps][2];
#pragma unroll
  for (int step = 0; step < kSteps; step++)
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int column = 16 * step + 8 * half + 2 * pair;
      float x0 = 0.0f, x1 = 0.0f;
      if (row < group) {
        const float* source = q + (static_cast<int64_t>(kvHead) * group + row) * D + column;
        x0 = source[0] * scale;
        x1 = source[1] * scale;
      }
      splitQuery<T>(x0, x1, qHigh[step][half], qLow[step][half]);
    }
  const int64_t end = work.end;
  float maximum = -INFINITY, sum = 0.0f;
  float out[kOutTiles][4];
#pragma unroll
  for (int t = 0; t < kOutTiles; t++) out[t][0] = out[t][1] = out[t][2] = out[t][3] = 0.0f;

  for (int64_t tile = firstTile; tile < end; tile += kDecodeWarps * 32) {
    const int count = static_cast<int>(lesser(32, end - tile));
    if (tile != firstTile || !early) stage(tile, count);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncwarp();
    // Scores of 32 keys: n-tile t holds keys 8t + 2·pair (+1) for query head `row`.
    float score[4][4];
#pragma unroll
    for (int t = 0; t < 4; t++) {
      score[t][0] = score[t][1] = score[t][2] = score[t][3] = 0.0f;
#pragma unroll
      for (int step = 0; step < kSteps; step++) {
        const T* key = keyTile + (8 * t + row) * kStride + 16 * step + 2 * pair;
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(key);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(key + 8);
        mma16816<T>(score[t], qHigh[step][0], qLow[step][0], qHigh[step][1], qLow[step][1], b0, b1);
      }
      score[t][0] += score[t][2];  // the high parts' products (rows 0–7) and the remainders' (rows 8–15)
      score[t][1] += score[t][3];
    }
    float tileMax = -INFINITY;
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const bool valid = 8 * t + 2 * pair + j < count;
        score[t][j] = valid ? score[t][j] : -INFINITY;
        tileMax = fmaxf(tileMax, score[t][j]);
      }
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
    const float updated = fmaxf(maximum, tileMax);
    const float correction = __expf(maximum - updated);
    float probability[4][2];
    float rowSum = 0.0f;
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        probability[t][j] = score[t][j] == -INFINITY ? 0.0f : __expf(score[t][j] - updated);
        rowSum += probability[t][j];
      }
    rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 1);
    rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 2);
    sum = sum * correction + rowSum;
    maximum = updated;
    // Oᵀ's columns are the heads 2·pair and 2·pair + 1, rows 2·pair and 2·pair + 1 of the scores: their corrections.
    const float correctionLow = __shfl_sync(0xffffffffu, correction, 8 * pair);
    const float correctionHigh = __shfl_sync(0xffffffffu, correction, 8 * pair + 4);
#pragma unroll
    for (int m = 0; m < kOutTiles; m++) {
      out[m][0] *= correctionLow;
      out[m][1] *= correctionHigh;
      out[m][2] *= correctionLow;
      out[m][3] *= correctionHigh;
    }
    // Oᵀ += Vᵀ·Pᵀ over two 16-key steps.
#pragma unroll
    for (int step = 0; step < 2; step++) {
      accumulateValuesTransposed<T, D>(out, packPair<T>(probability[2 * step][0], probability[2 * step][1]),
                                       packPair<T>(probability[2 * step + 1][0], probability[2 * step + 1][1]), valueTile, step, lane);
    }
    __syncwarp();
  }
  __syncthreads();
  float* stateAcc = reinterpret_cast<float*>(tiles);  // [warp][head][channel], over the finished tiles
  storeWarpState<D>(stateMax, stateSum, stateAcc, out, maximum, sum, group, warp, row, pair,
                    [](int m, int r) { return 16 * m + r; });
  __syncthreads();
  mergeWarpStates<D, kMaxHeads>(stateMax, stateSum, stateAcc, sequence, work, group);
}

#include "attention-decode-codes.cuh"

// grid (heads, sequences), 256 threads, for heads of more than kMergeInKernel splits (the decode kernel merged the
// others): the split weights exp(m_s − M) are computed once into shared memory, then the 8 warps each sum a strided
// subset of the splits (lanes over channels) and the block adds the 8 partial sums. Every load of the first
// kHeldSplits splits per warp is issued at once at the start (one round trip to L2 instead of three).
constexpr int kCombineThreads = 256;
constexpr int kMaxSplits = 1024;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kHeldSplits = 12;           // per warp, values held in registers (96 splits per head)
constexpr int kHeldChannels = 4;          // per lane: head dims up to 128
constexpr int kSplitsPerThread = kMaxSplits / kCombineThreads;

template <int N>
__global__ void __launch_bounds__(kCombineThreads) decodeCombineKernel(const __grid_constant__ DecodeLaunch<N> launch) {
  dependOnPrevious();
  const DecodeSequence& sequence = launch.sequence();
  const float* partialAcc = sequence.partialAcc;
  const float* partialMax = sequence.partialMax;
  const float* partialSum = sequence.partialSum;
  const DecodeSplits& layout = sequence.splits;
  const int group = launch.group, headDim = launch.headDim;
  float* out = sequence.out;
  __shared__ float weights[kMaxSplits];
  __shared__ float reduce[kCombineWarps];
  __shared__ float partial[kCombineWarps][256];
  const int head = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int splits = layout.of(head / group);
  if (splits <= sequence.mergeInKernel) return;  // merged by the decode kernel
  partialAcc += static_cast<int64_t>(head) * layout.stride * headDim;
  partialMax += static_cast<int64_t>(head) * layout.stride;
  partialSum += static_cast<int64_t>(head) * layout.stride;
  // Every split's max and sum (thread t holds splits t, t + 256, ...) and this warp's first accumulators.
  float maxima[kSplitsPerThread], sums[kSplitsPerThread];
#pragma unroll
  for (int j = 0; j < kSplitsPerThread; j++) {
    const int split = threadIdx.x + j * kCombineThreads;
    maxima[j] = split < splits ? partialMax[split] : -INFINITY;
    sums[j] = split < splits ? partialSum[split] : 0.0f;
  }
  const bool holds = headDim <= 32 * kHeldChannels;
  float held[kHeldSplits][kHeldChannels];
#pragma unroll
  for (int j = 0; j < kHeldSplits; j++)
#pragma unroll
    for (int c = 0; c < kHeldChannels; c++) {
      const int split = warp + j * kCombineWarps, channel = lane + 32 * c;
      held[j][c] = holds && split < splits && channel < headDim ? partialAcc[static_cast<int64_t>(split) * headDim + channel] : 0.0f;
    }
  float localMax = -INFINITY;
#pragma unroll
  for (int j = 0; j < kSplitsPerThread; j++) localMax = fmaxf(localMax, maxima[j]);
  localMax = warpMax(localMax);
  if (lane == 0) reduce[warp] = localMax;
  __syncthreads();
  float overall = -INFINITY;
  for (int w = 0; w < kCombineWarps; w++) overall = fmaxf(overall, reduce[w]);
  __syncthreads();
  float localSum = 0.0f;
#pragma unroll
  for (int j = 0; j < kSplitsPerThread; j++) {
    const int split = threadIdx.x + j * kCombineThreads;
    const float weight = maxima[j] == -INFINITY ? 0.0f : __expf(maxima[j] - overall);
    if (split < splits) weights[split] = weight;
    localSum += weight * sums[j];
  }
  localSum = warpSum(localSum);
  if (lane == 0) reduce[warp] = localSum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kCombineWarps; w++) total += reduce[w];
  if (holds) {
#pragma unroll
    for (int c = 0; c < kHeldChannels; c++) {
      const int channel = lane + 32 * c;
      if (channel >= headDim) break;
      float value = 0.0f;
#pragma unroll
      for (int j = 0; j < kHeldSplits; j++) {
        const int split = warp + j * kCombineWarps;
        if (split < splits) value += held[j][c] * weights[split];
      }
#pragma unroll 8
      for (int split = warp + kHeldSplits * kCombineWarps; split < splits; split += kCombineWarps)
        value += partialAcc[static_cast<int64_t>(split) * headDim + channel] * weights[split];
      partial[warp][channel] = value;
    }
  } else {
    for (int channel = lane; channel < headDim; channel += 32) {
      float value = 0.0f;
#pragma unroll 8
      for (int split = warp; split < splits; split += kCombineWarps)
        value += partialAcc[static_cast<int64_t>(split) * headDim + channel] * weights[split];
      partial[warp][channel] = value;
    }
  }
  __syncthreads();
  for (int channel = threadIdx.x; channel < headDim; channel += blockDim.x) {
    float value = 0.0f;
    for (int w = 0; w < kCombineWarps; w++) value += partial[w][channel];
    out[static_cast<int64_t>(head) * headDim + channel] = total > 0.0f ? value / total : 0.0f;
  }
  if (sequence.lseAt >= 0 && threadIdx.x == 0) out[sequence.lseAt + head] = total > 0.0f ? overall + logf(total) : -INFINITY;
}

int maxGroupFor(int group) {
  if (group == 1) return 1;
  if (group <= 4) return 4;
  if (group <= 8) return 8;
  throw Error("DUO_ARG", "CUDA attention supports up to 8 query heads per KV head, not " + std::to_string(group));
}


}  // namespace

namespace {
// Splits of `keyCount` keys for `heads` heads: enough blocks for `share` of one wave (each block loops over its split,
// so more would only add a tail), at least 128 keys each, in whole 32-key tiles.
int splitsFor(int64_t keyCount, int heads, int64_t resident, int multiprocessors, double share) {
  const double wave = static_cast<double>(multiprocessors) * static_cast<double>(resident) * share;
  const int64_t wanted = std::max<int64_t>(1, static_cast<int64_t>(wave / std::max(1, heads)));
  const int64_t most = std::max<int64_t>(1, (keyCount + 127) / 128);
  const int64_t splits = std::min({wanted, most, static_cast<int64_t>(kMaxSplits)});
  int64_t chunk = (keyCount + splits - 1) / splits;
  chunk = std::max<int64_t>(32, (chunk + 31) / 32 * 32);
  return static_cast<int>(std::max<int64_t>(1, (keyCount + chunk - 1) / chunk));
}

// The dynamic shared memory of a decode kernel; T: its tiles' element type (tileBytes).
template <typename T, int D, bool kQuant>
size_t decodeShared(const AttentionArgs& args) {
  if constexpr (decodeKernelFor(static_cast<int>(sizeof(T)), D, kQuant) == AttentionKernel::TensorCores) {
    if constexpr (kQuant) {
      switch (static_cast<KvQuant>(args.quant.scheme)) {
        case KvQuant::Int4: return CodeRing<D, static_cast<int>(KvQuant::Int4)>::kSharedBytes;
        case KvQuant::Int8: return CodeRing<D, static_cast<int>(KvQuant::Int8)>::kSharedBytes;
        default: return CodeRing<D, static_cast<int>(KvQuant::Fp8)>::kSharedBytes;
      }
    }
    return static_cast<size_t>(kDecodeWarps) * 2 * 32 * (D + 8) * sizeof(T);
  } else {
    return kDecodeWarps * DecodeTile<T, D>::kBytesPerWarp;
  }
}

// Launches the decode kernel of `args` (its tiles, head dim, scheme and group; not PrefillRow) over `sequences`
// sequences of up to `blocks` blocks each, then the combine where a head has more than kMergeInKernel splits.
template <int N>
void launchDecode(const DecodeLaunch<N>& launch, int sequences, unsigned blocks, const AttentionArgs& args, DType cacheType,
                  cudaStream_t stream) {
  const int maxGroup = maxGroupFor(launch.group);
  if (N > 1 && launch.longSplitsFirst && blocks > 65535)
    throw Error("DUO_ARG", "decode attention: " + std::to_string(blocks) + " blocks per sequence exceed a grid's 65535 rows");
  const dim3 grid = N == 1 ? dim3(blocks)
                   : launch.longSplitsFirst ? dim3(static_cast<unsigned>(sequences), blocks)
                                            : dim3(blocks, static_cast<unsigned>(sequences));
  auto start = [&](auto kernel, size_t shared) {
    allowSharedMemory(kernel, shared);
    launchChained(kernel, grid, dim3(kDecodeThreads), shared, stream, launch);
  };
  // T: the cache's element type, or for a quantized cache (kQuant) the type of its staged tiles.
  dispatchTile(args, cacheType, [&](auto t, auto quantized) {
    // Decayed: in a generic lambda of a template, GCC takes decltype of the parameter in the nested lambda as a reference.
    using T = std::decay_t<decltype(t)>;
    constexpr bool kQuant = std::decay_t<decltype(quantized)>::value;
    dispatchHeadDim(args.headDim, [&](auto dim) {
      constexpr int D = std::decay_t<decltype(dim)>::value;
      constexpr AttentionKernel kKernel = decodeKernelFor(static_cast<int>(sizeof(T)), D, kQuant);
      if constexpr (kQuant && tileBytes(true, D, 0) != static_cast<int>(sizeof(T))) {
        throw Error("DUO_ARG", "internal: quantized decode stages 16-bit tiles only for the tensor-core kernel");
      } else if constexpr (kKernel == AttentionKernel::TensorCores) {
        // Tensor cores: any G ≤ 8 shares one kernel (rows past G are zero); quantized caches read their codes.
        const size_t shared = decodeShared<T, D, kQuant>(args);
        if constexpr (!kQuant) {
          if (decodeMmaBlocksKnob.load(std::memory_order_relaxed) == 2) start(decodeMmaKernel<T, D, N, 2>, shared);
          else start(decodeMmaKernel<T, D, N, 3>, shared);
        } else {
          switch (static_cast<KvQuant>(args.quant.scheme)) {
            case KvQuant::Int8: start(decodeCodesKernel<D, static_cast<int>(KvQuant::Int8), N>, shared); break;
            case KvQuant::Int4: start(decodeCodesKernel<D, static_cast<int>(KvQuant::Int4), N>, shared); break;
            default: start(decodeCodesKernel<D, static_cast<int>(KvQuant::Fp8), N>, shared); break;
          }
        }
      } else if constexpr (kKernel == AttentionKernel::CudaCores) {
        static_assert(Vec16<T>::kCount == 16 / static_cast<int>(sizeof(T)), "decodeKernelFor assumes 16-byte rows");
        const size_t shared = decodeShared<T, D, kQuant>(args);
        if (maxGroup == 1) start(decodeKernel<T, D, 1, kQuant, N>, shared);
        else if (maxGroup == 4) start(decodeKernel<T, D, 4, kQuant, N>, shared);
        else start(decodeKernel<T, D, 8, kQuant, N>, shared);
      } else {
        throw Error("DUO_ARG", "internal: head dim " + std::to_string(D) + " has no decode kernel");
      }
    });
  });
  checkLaunch("attentionDecode");
  // Heads of at most kMergeInKernel splits were merged by the decode kernel.
  bool combines = false;
  for (int i = 0; i < sequences; i++) combines = combines || launch.sequences[i].splits.stride > launch.sequences[i].mergeInKernel;
  if (!combines) return;
  launchChained(decodeCombineKernel<N>, dim3(static_cast<unsigned>(args.heads), static_cast<unsigned>(sequences)),
                dim3(kCombineThreads), 0, stream, launch);
  checkLaunch("attentionDecodeCombine");
}

// The descriptor of one sequence whose partials start at `scratch` (attentionDecodeScratch's layout).
DecodeSequence decodeSequence(const float* q, const void* k, const void* v, int64_t capacity, float* out, const AttentionArgs& args,
                              const DecodeSplits& splits, float* scratch, int* arrivals, int mergeInKernel) {
  DecodeSequence sequence{};
  sequence.mergeInKernel = mergeInKernel;
  sequence.lseAt = args.partial ? static_cast<int64_t>(args.heads) * args.headDim : -1;
  sequence.q = q;
  sequence.k = k;
  sequence.v = v;
  sequence.capacity = capacity;
  sequence.keyLength = args.keyLength;
  sequence.lengthFrom = args.lengthFrom;
  sequence.layout = args.streaming;
  sequence.quant = args.quant;
  sequence.splits = splits;
  sequence.partialAcc = scratch;
  sequence.partialMax = scratch + static_cast<int64_t>(args.heads) * splits.stride * args.headDim;
  sequence.partialSum = sequence.partialMax + static_cast<int64_t>(args.heads) * splits.stride;
  sequence.out = out;
  sequence.arrivals = arrivals;
  sequence.blocks = splits.blocks(args.kvHeads);
  return sequence;
}

template <int N>
DecodeLaunch<N> decodeLaunchFor(const AttentionArgs& args) {
  DecodeLaunch<N> launch;
  launch.group = args.heads / args.kvHeads;
  launch.headDim = args.headDim;
  launch.scale = args.scale;
  launch.longSplitsFirst = false;
  return launch;
}
}  // namespace

namespace {
// One block a (row, head): the parts' weights exp(lse − max) in rank order, then channel by channel (threads over
// channels) the weighted sum over the parts, divided by the weights' sum — the CPU's order, part after part.
__global__ void mergeAttentionKernel(const float* __restrict__ parts, float* __restrict__ out, int64_t rows, int partCount,
                                     int heads, int headDim) {
  dependOnPrevious();
  const int64_t r = blockIdx.x;
  const int head = blockIdx.y;
  const int64_t width = static_cast<int64_t>(heads) * headDim + heads;
  float largest = -INFINITY;
  for (int part = 0; part < partCount; part++)
    largest = fmaxf(largest, parts[(part * rows + r) * width + static_cast<int64_t>(heads) * headDim + head]);
  float* target = out + r * static_cast<int64_t>(heads) * headDim + static_cast<int64_t>(head) * headDim;
  for (int channel = threadIdx.x; channel < headDim; channel += blockDim.x) {
    float value = 0.0f, total = 0.0f;
    if (largest != -INFINITY) {
      for (int part = 0; part < partCount; part++) {
        const float* row = parts + (part * rows + r) * width;
        const float lse = row[static_cast<int64_t>(heads) * headDim + head];
        const float weight = lse == -INFINITY ? 0.0f : __expf(lse - largest);
        if (weight == 0.0f) continue;
        value += weight * row[static_cast<int64_t>(head) * headDim + channel];
        total += weight;
      }
    }
    target[channel] = total > 0.0f ? value * (1.0f / total) : 0.0f;
  }
}
}  // namespace

void launchMergeAttention(const float* parts, float* out, int64_t rows, int partCount, int heads, int headDim, cudaStream_t stream) {
  if (rows == 0) return;
  launchChained(mergeAttentionKernel, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(heads)), dim3(128), 0, stream, parts, out,
                rows, partCount, heads, headDim);
  checkLaunch("mergeAttention");
}

void setDecodeTuning(const Device::Tuning& tuning) {
  if (tuning.decodeMmaBlocks != 2 && tuning.decodeMmaBlocks != 3)
    throw Error("DUO_ARG", "tuning.decodeMmaBlocks: expected 2 or 3 but received " + std::to_string(tuning.decodeMmaBlocks));
  decodeMmaBlocksKnob.store(tuning.decodeMmaBlocks, std::memory_order_relaxed);
  if (tuning.decodeBatchMerge < 1 || tuning.decodeBatchMerge > 64)
    throw Error("DUO_ARG", "tuning.decodeBatchMerge: expected 1 to 64 but received " + std::to_string(tuning.decodeBatchMerge));
  batchMergeKnob.store(tuning.decodeBatchMerge, std::memory_order_relaxed);
}

DecodeSplits attentionDecodeSplits(const AttentionArgs& args, DType cacheType, int multiprocessors, double share) {
  // 4-warp blocks resident per multiprocessor: the tensor-core kernel keeps decodeMmaBlocks, its quantized form three
  // for int4 and two for int8 / fp8 (CodeRing::kBlocks), the CUDA-core one three (shared memory).
  const bool tensorCores = decodeKernelFor(args, cacheType) == AttentionKernel::TensorCores;
  const bool quantized = args.quant.scheme != 0;
  const int64_t resident = !tensorCores ? 3
                           : !quantized ? decodeMmaBlocksKnob.load(std::memory_order_relaxed)
                           : args.quant.scheme == static_cast<int>(KvQuant::Int4) ? 3 : 2;
  const StreamingLayout& layout = args.streaming;
  DecodeSplits splits;
  splits.retrievalKvHeads = layout.active() ? layout.retrievalKvHeads : args.kvHeads;
  splits.kvHeads = args.kvHeads;
  if (layout.active()) {
    splits.streamingHeads = layout.streamingHeads;
  }
  const int streamingHeads = args.kvHeads - splits.retrievalKvHeads;
  // A rank's shard holds only its chunks' keys (context parallelism).
  if (splits.retrievalKvHeads > 0)
    splits.full = splitsFor(layout.shard.ownedBelow(args.keyLength), splits.retrievalKvHeads, resident, multiprocessors, share);
  if (streamingHeads > 0) {
    // A streaming head sees its sinks and at most recent + 1 window keys (the chunked mask's extra one included).
    const int64_t window = std::min<int64_t>(args.keyLength, layout.sink + layout.recent + 1);
    splits.stream = splitsFor(window, args.kvHeads, resident, multiprocessors, share);
  }
  splits.stride = std::max(splits.full, splits.stream);
  return splits;
}

size_t attentionDecodeScratch(const AttentionArgs& args, const DecodeSplits& splits) {
  return static_cast<size_t>(args.heads) * splits.stride * (args.headDim + 2) * sizeof(float);
}

void launchAttentionDecode(const float* q, const void* k, const void* v, DType cacheType, int64_t capacity, float* out,
                           const AttentionArgs& args, const DecodeSplits& splits, float* scratch, int* arrivals,
                           cudaStream_t stream) {
  if (decodeKernelFor(args, cacheType) == AttentionKernel::PrefillRow) {
    // Head dims past 128 (or too small for 16-byte rows) take the tiled prefill kernel with one query row.
    dispatchHeadDim(args.headDim, [](auto) {});  // an unsupported head dim fails with its own message
    if (args.lengthFrom) throw Error("DUO_ARG", "graph-captured decode needs head dim 8-128");
    if (args.partial || args.streaming.shard.active())
      throw Error("DUO_ARG", "CUDA attentionPartial needs head dim 8-128 (the split-K decode kernels)");
    AttentionArgs single = args;
    single.queryStart = args.keyLength - 1;
    launchAttentionPrefill(q, static_cast<int64_t>(args.heads) * args.headDim, k, v, cacheType, capacity, out, 1, single, stream);
    return;
  }
  DecodeLaunch<1> launch = decodeLaunchFor<1>(args);
  launch.sequences[0] = decodeSequence(q, k, v, capacity, out, args, splits, scratch, arrivals, kMergeInKernel);
  launchDecode(launch, 1, static_cast<unsigned>(launch.sequences[0].blocks), args, cacheType, stream);
}

bool decodeBatchable(const AttentionArgs& args, DType cacheType) {
  return decodeKernelFor(args, cacheType) != AttentionKernel::PrefillRow;
}

size_t attentionDecodeBatchScratch(const DecodeSlice* slices, int count) {
  size_t bytes = 0;
  for (int i = 0; i < count; i++) bytes += attentionDecodeScratch(slices[i].args, slices[i].splits);
  return bytes;
}

void launchAttentionDecodeBatch(const DecodeSlice* slices, int count, DType cacheType, float* scratch, int* arrivals,
                                bool longSplitsFirst, cudaStream_t stream) {
  if (count == 0) return;
  const AttentionArgs& shape = slices[0].args;
  // About 17 KB: off the stack of the JS thread.
  auto launch = std::make_unique<DecodeLaunch<kBatchSequences>>(decodeLaunchFor<kBatchSequences>(shape));
  launch->longSplitsFirst = longSplitsFirst;
  const int mergeInKernel = batchMergeKnob.load(std::memory_order_relaxed);
  for (int first = 0; first < count; first += kBatchSequences) {
    // Consecutive launches run in stream order, so every chunk's partials may start at the same scratch.
    const int sequences = std::min(kBatchSequences, count - first);
    float* partials = scratch;
    int widest = 1;
    for (int i = 0; i < sequences; i++) {
      const DecodeSlice& slice = slices[first + i];
      launch->sequences[i] = decodeSequence(slice.q, slice.k, slice.v, slice.capacity, slice.out, slice.args, slice.splits, partials,
                                            arrivals + i * kDecodeArrivalsPerSequence, mergeInKernel);
      partials += attentionDecodeScratch(slice.args, slice.splits) / sizeof(float);
      widest = std::max(widest, launch->sequences[i].blocks);
    }
    launchDecode(*launch, sequences, static_cast<unsigned>(widest), shape, cacheType, stream);
  }
}

DecodeBatchPlan planDecodeBatch(const Tensor& q, Tensor& out, const AttentionArgs& shape, const std::vector<BatchSlice>& slices,
                                int multiprocessors, bool alone) {
  DecodeBatchPlan plan;
  const int64_t rowWidth = static_cast<int64_t>(shape.heads) * shape.headDim;
  for (const BatchSlice& slice : slices) {
    if (slice.rows == 0) continue;
    const AttentionArgs args = sliceArgs(shape, slice);
    const DType cacheType = slice.keyCache->dtype;
    if (slice.rows != 1 || !decodeBatchable(args, cacheType)) {
      plan.rest.push_back(slice);
      continue;
    }
    auto group = std::find_if(plan.groups.begin(), plan.groups.end(), [&](const DecodeBatchPlan::Group& candidate) {
      return candidate.cacheType == cacheType && candidate.scheme == args.quant.scheme;
    });
    if (group == plan.groups.end()) group = plan.groups.insert(plan.groups.end(), DecodeBatchPlan::Group{cacheType, args.quant.scheme, {}});
    DecodeSlice decode{};
    decode.q = q.as<float>() + slice.rowStart * rowWidth;
    decode.out = out.as<float>() + slice.rowStart * rowWidth;
    decode.k = slice.keyCache->data;
    decode.v = slice.valueCache->data;
    decode.capacity = slice.keyCache->shape[1];
    decode.args = args;
    group->slices.push_back(decode);
  }
  // Each group's launch has the GPU to itself: its sequences share one wave of blocks, in proportion to their keys —
  // or, when `alone` (the batch-invariant mode), each is split as if it ran alone, so its sums do not depend on the
  // others. (Splitting for two or four waves, a shorter tail for more partials, measured slower at 4K: f9f0145.)
  for (DecodeBatchPlan::Group& group : plan.groups) {
    double keys = 0;
    for (const DecodeSlice& slice : group.slices) keys += static_cast<double>(slice.args.keyLength);
    for (DecodeSlice& slice : group.slices)
      slice.splits = attentionDecodeSplits(slice.args, group.cacheType, multiprocessors,
                                           alone ? 1.0 : static_cast<double>(slice.args.keyLength) / keys);
    plan.scratchBytes = std::max(plan.scratchBytes, attentionDecodeBatchScratch(group.slices.data(), static_cast<int>(group.slices.size())));
  }
  return plan;
}

}  // namespace cuda
}  // namespace duo
