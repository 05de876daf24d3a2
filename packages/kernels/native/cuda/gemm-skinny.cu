// Skinny matmul on tensor cores (a batch's decode step, 1–64 rows of x): the weights stream through shared memory
// once for every row, in a cp.async pipeline deep enough to keep HBM busy; a block owns 128 weight rows and one slice
// of k, and the k slices of the same rows form a thread-block cluster that sums its partial products through
// distributed shared memory in slice order (Hopper and later; before it, one slice). A row's result does not depend on how many rows share the launch, nor on
// its place among them: each output is the same sequence of products over the same k order (the k split depends on the
// matrix shape only, in the batch-invariant mode), so a sequence decoded in a batch gets the bits it gets alone.
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda-common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

namespace duo {
namespace cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kRows = 128;              // weight rows a block streams (SwiGLU: 64 gate rows, then the same 64 up rows)
#ifndef DUO_SKINNY_STAGES
#define DUO_SKINNY_STAGES 0
#endif
// A tuning knob at build time (tools/device/skinny-sweep.sh): pipeline stages (0: the rule in Plan).
constexpr int kPartialStride = kRows + 4;
constexpr int kMinDepth = 64;  // k of the shorter stage (DEPTH 64 or 128): k must be a multiple of it
constexpr int kMaxCluster = 8;

// The shape of a launch: TILES tiles of 8 tokens; x staged as f32 (rounded per fragment) or already rounded to the
// weight dtype (ROUNDED: half the shared memory and no conversions, for wide token tiles); a warp owns 16 or 32
// weight rows (two row tiles share every x fragment, halving the shared-memory reads of wide token tiles); DEPTH k a
// stage (64 or 128: a run of 128 or 256 bytes of each weight row). The depth never changes a result: every output
// sums its k in the same 32-wide steps in the same order.
template <int TILES, bool ROUNDED, int DEPTH>
struct Plan {
  static constexpr int kDepth = DEPTH;
  static constexpr int kChunksPerRow = DEPTH / 8;  // 16-byte chunks of a staged row
  static constexpr int kTokenStride = DEPTH + 4;   // floats per staged f32 x row (16 bytes of padding: conflict-free)
  static constexpr int kRowTiles = TILES >= 4 ? 2 : 1;
  static constexpr int kWarps = kRows / (16 * kRowTiles);
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kTokens = TILES * 8;
  static constexpr int kTokenBytes = ROUNDED ? kTokens * kDepth * 2 : kTokens * kTokenStride * 4;
  static constexpr int kStageBytes = kRows * kDepth * 2 + kTokenBytes;
  static constexpr int kStages = DUO_SKINNY_STAGES > 0 ? DUO_SKINNY_STAGES : (kStageBytes > 24 * 1024 ? 3 : 4);
  static constexpr int kPipelineBytes = kStages * kStageBytes;
  static constexpr int kPartialBytes = kTokens * kPartialStride * 4;
  static constexpr int kSharedBytes = kPipelineBytes > kPartialBytes ? kPipelineBytes : kPartialBytes;
};

// A block's 128 weight rows: unit u of the launch (SkinnyJob::first) is matrix `which`'s rows from `row0`.
template <typename T>
using SkinnyJob = WeightJob<T>;

// Staged weight row r keeps its 16-byte chunk c at chunk c ^ 4·(r & 1): a fragment load of rows g and g + 1 by the eight
// lanes of one shared-memory phase then touches every bank once.
template <int DEPTH>
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * DEPTH * 2 + ((chunk ^ ((row & 1) << 2)) << 4); }

// The end of a launch: a block's partial products, [token][staged row] in shared memory, summed over the k slices of
// its cluster in slice order (each block of the cluster finishes a share of the outputs), then SwiGLU or bias and
// residual, written to the outputs.
template <typename T, bool SWIGLU, int THREADS>
__device__ __forceinline__ void finishSlices(float* partial, int rows, int slices, int slice, int64_t row0, int64_t m, int which,
                                             const SkinnyJob<T>& job) {
#if __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  if (slices > 1) cluster.sync();
  else __syncthreads();
#else
  __syncthreads();  // one slice: no cluster before Hopper
#endif

  // Each block of the cluster finishes a share of the outputs, summing the slices' partials in slice order.
  constexpr int kColumns = SWIGLU ? kRows / 2 : kRows;
  const int outputs = rows * kColumns;
  const int share = (outputs + slices - 1) / slices;
  const int from = share * slice, to = min(outputs, from + share);
  for (int e = from + threadIdx.x; e < to; e += THREADS) {
    const int token = e / kColumns, column = e % kColumns;
    const int64_t col = row0 + column;
    if (col >= m) continue;
    float sums[2];
#pragma unroll
    for (int half = 0; half < (SWIGLU ? 2 : 1); half++) {
      const int index = token * kPartialStride + column + half * (kRows / 2);
      float total = 0.0f;
      for (int q = 0; q < slices; q++) {
#if __CUDA_ARCH__ >= 900
        const float* remote = slices > 1 ? cluster.map_shared_rank(partial, q) : partial;
#else
        const float* remote = partial;
#endif
        total += remote[index];
      }
      sums[half] = total;
    }
    const int64_t index = token * m + col;
    if (SWIGLU) {
      job.out[0][index] = sums[0] / (1.0f + __expf(-sums[0])) * sums[1];
    } else {
      job.out[which][index] = sums[0] + (job.bias[which] ? job.bias[which][col] : 0.0f) +
                              (job.residual[which] ? job.residual[which][index] : 0.0f);
    }
  }
  // No block may leave while another still reads its shared memory.
#if __CUDA_ARCH__ >= 900
  if (slices > 1) cluster.sync();
#endif
}

// Where a block's share of a launch lies: unit blockIdx.y is matrix `which`'s weight rows from `row0` (SwiGLU: 64 gate
// rows, then the same 64 up rows), slice blockIdx.x of gridDim.x holds k from `begin`, in `stages` stages of `depth`.
template <typename T, bool SWIGLU>
struct BlockShare {
  int which = 0, stages = 0;
  int64_t m = 0, row0 = 0, begin = 0;
  __device__ __forceinline__ BlockShare(const SkinnyJob<T>& job, int64_t k, int depth) {
    const int64_t unit = blockIdx.y;
    while (which + 1 < job.count && unit >= job.first[which + 1]) which++;
    m = job.m[which];
    row0 = (unit - job.first[which]) * (SWIGLU ? kRows / 2 : kRows);
    const int64_t sliceDepth = k / gridDim.x;
    begin = sliceDepth * blockIdx.x;
    stages = static_cast<int>(sliceDepth / depth);
  }
};

// This thread's staged weight rows (threadIdx.x / CHUNKS_PER_ROW + THREADS / CHUNKS_PER_ROW · i, at chunk `chunk` of
// each): where each starts in its matrix, and whether it lies inside it.
template <typename T, bool SWIGLU, int CHUNKS_PER_ROW, int THREADS, int CHUNKS>
__device__ __forceinline__ void weightSources(const SkinnyJob<T>& job, const BlockShare<T, SWIGLU>& share, int64_t k, int chunk,
                                              const T* (&source)[CHUNKS], bool (&valid)[CHUNKS]) {
#pragma unroll
  for (int i = 0; i < CHUNKS; i++) {
    const int r = threadIdx.x / CHUNKS_PER_ROW + (THREADS / CHUNKS_PER_ROW) * i;
    const int64_t row = share.row0 + (SWIGLU ? r % (kRows / 2) : r);
    valid[i] = row < share.m;
    const T* base = SWIGLU ? job.weight[r < kRows / 2 ? 0 : 1] : job.weight[share.which];
    source[i] = base + (valid[i] ? row : 0) * k + share.begin + chunk * 8;
  }
}

// A pipeline's first STAGES − 1 stages, as one copy group: weights are never written during a step, so they load
// while the previous kernel finishes; x only after it.
template <int STAGES, typename StageWeights, typename StageTokens>
__device__ __forceinline__ void stagePrologue(int stages, const StageWeights& stageWeights, const StageTokens& stageTokens) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++)
    if (s < stages) stageWeights(s);
  dependOnPrevious();
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++)
    if (s < stages) stageTokens(s);
  commitGroup();
}

// x: f32 rows, or (ROUNDED) rows already rounded to T.
template <typename T, int TILES, bool SWIGLU, bool ROUNDED, int DEPTH>
__global__ void __launch_bounds__(Plan<TILES, ROUNDED, DEPTH>::kThreads, 1)
    skinnyKernel(const void* __restrict__ xData, int rows, int64_t k, SkinnyJob<T> job) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using P = Plan<TILES, ROUNDED, DEPTH>;
  constexpr int kStages = P::kStages, kTokens = P::kTokens, kStageBytes = P::kStageBytes, kThreads = P::kThreads;
  constexpr int kDepth = DEPTH, kChunksPerRow = P::kChunksPerRow, kTokenStride = P::kTokenStride;
  constexpr int kChunks = kRows * kChunksPerRow / kThreads;  // 16-byte weight chunks a thread stages per stage
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  extern __shared__ __align__(128) unsigned char shared[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int slices = gridDim.x, slice = blockIdx.x;
  const BlockShare<T, SWIGLU> share(job, k, kDepth);
  const int which = share.which, stages = share.stages;
  const int64_t m = share.m, row0 = share.row0, begin = share.begin;
  // This thread's weight chunks of a stage: staged rows threadIdx.x / kChunksPerRow + kRowsPerPass·i, one chunk.
  const int chunk = threadIdx.x % kChunksPerRow;
  const T* source[kChunks];
  bool valid[kChunks];
  weightSources<T, SWIGLU, kChunksPerRow, kThreads>(job, share, k, chunk, source, valid);
  auto stageWeights = [&](int stage) {
    unsigned char* target = shared + (stage % kStages) * kStageBytes;
#pragma unroll
    for (int i = 0; i < kChunks; i++) {
      const int r = threadIdx.x / kChunksPerRow + kRowsPerPass * i;
      copyOrZero16(target + swizzled<kDepth>(r, chunk), source[i] + static_cast<int64_t>(stage) * kDepth, valid[i]);
    }
  };
  // x: kTokens rows of kDepth values a stage (f32: kDepth / 4 chunks a row, padded; rounded: kDepth / 8 chunks,
  // swizzled like the weights); rows past `rows` are zeros.
  auto stageTokens = [&](int stage) {
    unsigned char* target = shared + (stage % kStages) * kStageBytes + kRows * kDepth * 2;
    constexpr int kParts = ROUNDED ? kDepth / 8 : kDepth / 4;
    for (int piece = threadIdx.x; piece < kTokens * kParts; piece += kThreads) {
      const int token = piece / kParts, part = piece % kParts;
      const bool live = token < rows;
      const int64_t offset = (live ? token : 0) * k + begin + static_cast<int64_t>(stage) * kDepth;
      if constexpr (ROUNDED) {
        copyOrZero16(target + swizzled<kDepth>(token, part), static_cast<const T*>(xData) + offset + part * 8, live);
      } else {
        copyOrZero16(target + (token * kTokenStride + part * 4) * 4, static_cast<const float*>(xData) + offset + part * 4, live);
      }
    }
  };

  stagePrologue<kStages>(stages, stageWeights, stageTokens);

  constexpr int kRowTiles = P::kRowTiles;
  float acc[kRowTiles][TILES][4];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; rt++)
#pragma unroll
    for (int tile = 0; tile < TILES; tile++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[rt][tile][i] = 0.0f;
  const int rowA = 16 * kRowTiles * warp + g;
  for (int s = 0; s < stages; s++) {
    if (s == 0) waitGroups<0>();
    else waitGroups<kStages - 2>();
    __syncthreads();
    // The buffer of stage s − 1 is free: every thread has passed the barrier after computing it.
    if (s + kStages - 1 < stages) {
      stageWeights(s + kStages - 1);
      stageTokens(s + kStages - 1);
    }
    commitGroup();
    const unsigned char* weights = shared + (s % kStages) * kStageBytes;
    const unsigned char* tokens = weights + kRows * kDepth * 2;
    // 32-wide steps of k. Lane (g, t) holds weight rows g and g + 8 of its warp at k 8t … 8t + 7 of the step and
    // token g of each 8-token tile at the same k: logical k 2t, 2t + 1 / 2t + 8, 2t + 9 of the first product are
    // physical 8t + 0, 1 / 8t + 2, 3, of the second 8t + 4, 5 / 8t + 6, 7 (one permutation on both operands).
#pragma unroll
    for (int step = 0; step < kDepth / 32; step++) {
      const int c = 4 * step + t;
      uint4 a0[kRowTiles], a1[kRowTiles];
#pragma unroll
      for (int rt = 0; rt < kRowTiles; rt++) {
        a0[rt] = *reinterpret_cast<const uint4*>(weights + swizzled<kDepth>(rowA + 16 * rt, c));
        a1[rt] = *reinterpret_cast<const uint4*>(weights + swizzled<kDepth>(rowA + 16 * rt + 8, c));
      }
#pragma unroll
      for (int tile = 0; tile < TILES; tile++) {
        uint4 b;
        if constexpr (ROUNDED) {
          b = *reinterpret_cast<const uint4*>(tokens + swizzled<kDepth>(tile * 8 + g, c));
        } else {
          const float* p = reinterpret_cast<const float*>(tokens) + (tile * 8 + g) * kTokenStride + 32 * step + 8 * t;
          const float4 low = *reinterpret_cast<const float4*>(p), high = *reinterpret_cast<const float4*>(p + 4);
          b = make_uint4(packPair<T>(low.x, low.y), packPair<T>(low.z, low.w), packPair<T>(high.x, high.y), packPair<T>(high.z, high.w));
        }
#pragma unroll
        for (int rt = 0; rt < kRowTiles; rt++) {
          mma16816<T>(acc[rt][tile], a0[rt].x, a1[rt].x, a0[rt].y, a1[rt].y, b.x, b.y);
          mma16816<T>(acc[rt][tile], a0[rt].z, a1[rt].z, a0[rt].w, a1[rt].w, b.z, b.w);
        }
      }
    }
  }
  waitGroups<0>();
  __syncthreads();

  // Partial products, [token][staged row]: c0, c1 are row g of the row tile, tokens 2t and 2t + 1 of the token tile;
  // c2, c3 row g + 8.
  float* partial = reinterpret_cast<float*>(shared);
#pragma unroll
  for (int rt = 0; rt < kRowTiles; rt++)
#pragma unroll
    for (int tile = 0; tile < TILES; tile++)
#pragma unroll
      for (int i = 0; i < 4; i++)
        partial[(tile * 8 + 2 * t + (i & 1)) * kPartialStride + rowA + 16 * rt + (i >> 1) * 8] = acc[rt][tile][i];
  finishSlices<T, SWIGLU, kThreads>(partial, rows, slices, slice, row0, m, which, job);
#endif
}

// The wide kernel (Hopper, 9–64 rows): the same 128 weight rows a block and the same cluster split of k, but the
// products are warpgroup MMAs that read both operands from shared memory (weight rows 0–63 and 64–127 as two m64
// products, the tokens as N), so no warp loads fragments into registers: the mma.sync kernel's x fragment loads grow
// with the token count and made it shared-memory bound past 16 rows. Stages are 64 of k (one 128-byte swizzled row of
// each operand); N tokens (16, 32 or 64), rows past `rows` zeros. x comes rounded to T beforehand (staged like the
// weights), or (X_F32) as f32 rows that each stage stages as they are and the block rounds into one swizzled tile
// just before its products — no rounding launch, at the cost of a second barrier a stage.
template <int N, bool X_F32>
struct WidePlan {
  static constexpr int kThreads = 128;
  static constexpr int kWeightBytes = kRows * 128;
  static constexpr int kTileBytes = N * 128;                      // the x tile the products read (T, swizzled)
  static constexpr int kStageBytes = kWeightBytes + (X_F32 ? N * 64 * 4 : kTileBytes);
  static constexpr int kFixedBytes = X_F32 ? kTileBytes : 0;      // the rounded tile, after the stages
  // As many stages as leave room for two blocks a multiprocessor (about 113 KB each).
  static constexpr int kFit = (112 * 1024 - kFixedBytes) / kStageBytes;
  static constexpr int kStages = kFit > 8 ? 8 : kFit;
  static constexpr int kPipelineBytes = kStages * kStageBytes + kFixedBytes;
  static constexpr int kPartialBytes = N * kPartialStride * 4;
  // 1 KB of slack: the swizzled tiles must start on 1024-byte boundaries.
  static constexpr int kSharedBytes = (kPipelineBytes > kPartialBytes ? kPipelineBytes : kPartialBytes) + 1024;
};

template <typename T, int N, bool SWIGLU, bool X_F32>
__global__ void __launch_bounds__(WidePlan<N, X_F32>::kThreads, 1)
    skinnyWideKernel(const void* __restrict__ xData, int rows, int64_t k, SkinnyJob<T> job) {
#if defined(DUO_WGMMA)
  using P = WidePlan<N, X_F32>;
  constexpr int kStages = P::kStages, kStageBytes = P::kStageBytes, kThreads = P::kThreads;
  constexpr int kChunks = kRows * 8 / kThreads;  // 16-byte weight chunks a thread stages per stage
  constexpr int kRowsPerPass = kThreads / 8;
  extern __shared__ __align__(1024) unsigned char raw[];
  unsigned char* shared = raw + ((1024 - static_cast<unsigned>(__cvta_generic_to_shared(raw)) % 1024) % 1024);
  unsigned char* tile = shared + kStages * kStageBytes;  // X_F32: the rounded x tile of the current stage
  const int slices = gridDim.x, slice = blockIdx.x;
  const BlockShare<T, SWIGLU> share(job, k, 64);
  const int which = share.which, stages = share.stages;
  const int64_t m = share.m, row0 = share.row0, begin = share.begin;
  const int chunk = threadIdx.x % 8;
  const T* source[kChunks];
  bool valid[kChunks];
  weightSources<T, SWIGLU, 8, kThreads>(job, share, k, chunk, source, valid);
  auto stageWeights = [&](int stage) {
    unsigned char* target = shared + (stage % kStages) * kStageBytes;
#pragma unroll
    for (int i = 0; i < kChunks; i++)
      copyOrZero16(target + swizzle128(threadIdx.x / 8 + kRowsPerPass * i, chunk), source[i] + static_cast<int64_t>(stage) * 64, valid[i]);
  };
  // x: rounded rows swizzled like the weights, or f32 rows of 256 bytes (16 chunks) as they are.
  auto stageTokens = [&](int stage) {
    unsigned char* target = shared + (stage % kStages) * kStageBytes + P::kWeightBytes;
    constexpr int kParts = X_F32 ? 16 : 8;
#pragma unroll
    for (int piece = threadIdx.x; piece < N * kParts; piece += kThreads) {
      const int token = piece / kParts, part = piece % kParts;
      const bool live = token < rows;
      const int64_t offset = (live ? token : 0) * k + begin + static_cast<int64_t>(stage) * 64;
      if constexpr (X_F32) {
        copyOrZero16(target + token * 256 + part * 16, static_cast<const float*>(xData) + offset + part * 4, live);
      } else {
        copyOrZero16(target + swizzle128(token, part), static_cast<const T*>(xData) + offset + part * 8, live);
      }
    }
  };

  stagePrologue<kStages>(stages, stageWeights, stageTokens);

  float acc[2][N / 2];
#pragma unroll
  for (int half = 0; half < 2; half++)
#pragma unroll
    for (int i = 0; i < N / 2; i++) acc[half][i] = 0.0f;
  for (int s = 0; s < stages; s++) {
    if (s == 0) waitGroups<0>();
    else waitGroups<kStages - 2>();
    fenceProxyAsync();
    __syncthreads();
    // Every thread has waited for the products of stage s − 1: its buffer (and the rounded tile) is free.
    if (s + kStages - 1 < stages) {
      stageWeights(s + kStages - 1);
      stageTokens(s + kStages - 1);
    }
    commitGroup();
    const unsigned char* weights = shared + (s % kStages) * kStageBytes;
    const unsigned char* tokens = weights + P::kWeightBytes;
    if constexpr (X_F32) {
      // Round this stage's f32 rows into the swizzled tile: 8 values (one 16-byte chunk) at a time.
#pragma unroll
      for (int piece = threadIdx.x; piece < N * 8; piece += kThreads) {
        const int token = piece / 8, part = piece % 8;
        const float4 low = *reinterpret_cast<const float4*>(tokens + token * 256 + part * 32);
        const float4 high = *reinterpret_cast<const float4*>(tokens + token * 256 + part * 32 + 16);
        *reinterpret_cast<uint4*>(tile + swizzle128(token, part)) =
            make_uint4(packPair<T>(low.x, low.y), packPair<T>(low.z, low.w), packPair<T>(high.x, high.y), packPair<T>(high.z, high.w));
      }
      fenceProxyAsync();
      __syncthreads();
      tokens = tile;
    }
    const uint64_t a0 = sharedTileDescriptor(weights), a1 = sharedTileDescriptor(weights + 64 * 128);
    const uint64_t b = sharedTileDescriptor(tokens);
    pinRegisters(acc[0]);
    pinRegisters(acc[1]);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < 4; step++) {
      Wgmma<T, N>::run(acc[0], a0 + 2 * step, b + 2 * step);
      Wgmma<T, N>::run(acc[1], a1 + 2 * step, b + 2 * step);
    }
    wgmmaCommit();
    wgmmaWait<0>();
    pinRegisters(acc[0]);
    pinRegisters(acc[1]);
  }
  waitGroups<0>();
  __syncthreads();

  // Thread t holds rows 16·(t / 32) + (t % 32) / 4 (+ 8) of each 64-row half, tokens 8·(i / 4) + 2·(t % 4) (+ 1).
  float* partial = reinterpret_cast<float*>(shared);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; half++)
#pragma unroll
    for (int i = 0; i < N / 2; i++) {
      const int row = 64 * half + 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
      const int token = 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
      partial[token * kPartialStride + row] = acc[half][i];
    }
  finishSlices<T, SWIGLU, kThreads>(partial, rows, slices, slice, row0, m, which, job);
#endif
}

// Whether this build's device code has the wide kernel's products (sm_90a machine code): a probe launch, once.
__global__ void wgmmaProbe(int* compiled) {
#if defined(DUO_WGMMA)
  *compiled = 1;
#else
  *compiled = 0;
#endif
}

// The k split: a cluster of 1, 2, 4 or 8 slices. Batch-invariant launches take the split of the matrix shape alone
// (never of the row count, so a row's bits do not depend on it): the one whose blocks fill two per multiprocessor best
// (ties: fewer slices, less to sum). Otherwise the split also weighs the row count, from the H100 sweep of
// tools/device/skinny-bench.cu (bench/results/2026-12-06-h100-skinny/): up to 16 rows many small blocks balance best
// (slices until each streams 512 of k), wider token tiles pay more for the cluster sum and take fewer.
bool hopper() { return computeCapabilityMajor() >= 9; }


// How a launch streams its weights: the k split (a cluster of 1, 2, 4 or 8 slices) and the stage depth.
struct Streaming {
  int slices = 1;
  int depth = kMinDepth;
};

// Measured on the H100 (tools/device/skinny-bench.cu, bench/results/2026-12-06-h100-skinny/) for the Llama-3-8B
// projections at up to 8 rows, where the rule below is a few µs off: {rows over the launch's matrices, k, matrices},
// then the depth and slices that streamed fastest.
struct Tuned {
  int64_t rows, k;
  int count;
  Streaming streaming;
};
constexpr Tuned kTuned[] = {
    {4096 + 1024 + 1024, 4096, 3, {4, 128}},  // q/k/v
    {4096, 4096, 1, {8, 64}},                 // o_proj
    {2 * 14336, 4096, 2, {2, 128}},           // gate + up
    {4096, 14336, 1, {4, 64}},                // down
    {128256, 4096, 1, {4, 128}},              // lm_head
};

// The split: batch-invariant launches take that of the matrix shape alone (never of the row count, so a row's bits do
// not depend on it): the one whose blocks fill two per multiprocessor best (ties: fewer slices, less to sum). Otherwise
// it weighs the row count too (H100 sweep): up to 8 rows many small blocks balance best (slices until each streams 512
// of k), wider token tiles pay more for the cluster sum (slices only while the blocks stay within 1.5 per
// multiprocessor). The depth never changes a result: 128 (longer runs of each row) where a launch has many blocks of
// rows and at most 16 rows, else 64.
template <typename T>
Streaming streamingFor(const SkinnyJob<T>& job, bool swiglu, int64_t k, int rows, const SkinnyOptions& options) {
  const int64_t units = job.first[job.count];
  Streaming chosen;
  chosen.depth = rows <= 16 && units >= 128 && k % 128 == 0 ? 128 : kMinDepth;
  int64_t totalRows = 0;
  for (int i = 0; i < job.count; i++) totalRows += job.m[i] * (swiglu ? 2 : 1);
  const int matrices = swiglu ? 2 : job.count;
  const Tuned* tuned = nullptr;
  if (rows <= 8)
    for (const Tuned& entry : kTuned)
      if (entry.rows == totalRows && entry.k == k && entry.count == matrices) tuned = &entry;
  if (tuned) chosen.depth = tuned->streaming.depth;
  auto valid = [&](int s) { return k % (static_cast<int64_t>(s) * chosen.depth) == 0 && k / s >= 4 * kMinDepth; };
  if (!hopper()) {
    chosen.slices = 1;
  } else if (!options.invariant) {
    chosen.slices = 1;
    for (int s = 2; s <= kMaxCluster; s *= 2) {
      if (!valid(s)) break;
      const bool fits = rows <= 8 ? k / s >= 512 && units * s <= 16LL * multiprocessorCount()
                                  : 2 * units * s <= 3LL * multiprocessorCount();
      if (fits) chosen.slices = s;
    }
    if (tuned && valid(tuned->streaming.slices)) chosen.slices = tuned->streaming.slices;
  } else {
    const double slots = 2.0 * multiprocessorCount();
    double bestFill = 0.0;
    for (int s = 1; s <= kMaxCluster; s *= 2) {
      if (k % (static_cast<int64_t>(s) * kMinDepth) != 0 || k / s < 4 * kMinDepth) break;
      const double blocks = static_cast<double>(units * s);
      const double fill = blocks / (std::ceil(blocks / slots) * slots);
      if (fill > bestFill + 0.02) {
        chosen.slices = s;
        bestFill = fill;
      }
    }
    // A slice must hold whole stages of the chosen depth.
    if ((k / chosen.slices) % chosen.depth != 0) chosen.depth = kMinDepth;
  }
  if (options.slices > 0) chosen.slices = options.slices;
  if (options.depth > 0) chosen.depth = options.depth;
  // Wider token tiles fill the shared memory with 64-deep stages already.
  if (rows > 16) chosen.depth = kMinDepth;
  return chosen;
}

// One launch of `slices`-block clusters along x (one slice: no cluster), chained to the previous kernel where allowed.
template <typename Kernel, typename... Args>
void launchClusters(Kernel kernel, dim3 grid, int threads, int shared, int slices, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<size_t>(shared);
  config.stream = stream;
  cudaLaunchAttribute attributes[2];
  int count = 0;
  if (slices > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = static_cast<unsigned>(slices);
    attributes[count].val.clusterDim.y = 1;
    attributes[count].val.clusterDim.z = 1;
    count++;
  }
  if (chainLaunches()) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count].val.programmaticStreamSerializationAllowed = 1;
    count++;
  }
  config.attrs = attributes;
  config.numAttrs = count;
  check(cudaLaunchKernelEx(&config, kernel, args...), "cudaLaunchKernelEx (skinny matmul)");
}

template <typename T, int TILES, bool SWIGLU, bool ROUNDED, int DEPTH>
void launchTiles(const void* x, int rows, int64_t k, const SkinnyJob<T>& job, int slices, cudaStream_t stream) {
  using P = Plan<TILES, ROUNDED, DEPTH>;
  auto kernel = skinnyKernel<T, TILES, SWIGLU, ROUNDED, DEPTH>;
  static const bool configured = [&] {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, P::kSharedBytes), "cudaFuncSetAttribute");
    return true;
  }();
  (void)configured;
  launchClusters(kernel, dim3(static_cast<unsigned>(slices), static_cast<unsigned>(job.first[job.count])), P::kThreads, P::kSharedBytes,
                 slices, stream, x, rows, k, job);
}

template <typename T, int N, bool SWIGLU, bool X_F32>
void launchWide(const void* x, int rows, int64_t k, const SkinnyJob<T>& job, int slices, cudaStream_t stream) {
  using P = WidePlan<N, X_F32>;
  auto kernel = skinnyWideKernel<T, N, SWIGLU, X_F32>;
  static const bool configured = [&] {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, P::kSharedBytes), "cudaFuncSetAttribute");
    return true;
  }();
  (void)configured;
  launchClusters(kernel, dim3(static_cast<unsigned>(slices), static_cast<unsigned>(job.first[job.count])), P::kThreads, P::kSharedBytes,
                 slices, stream, x, rows, k, job);
}

template <typename T, bool SWIGLU, bool X_F32>
void launchWideTokens(const void* x, int rows, int64_t k, const SkinnyJob<T>& job, int slices, cudaStream_t stream) {
  if (rows <= 16) launchWide<T, 16, SWIGLU, X_F32>(x, rows, k, job, slices, stream);
  else if (rows <= 32) launchWide<T, 32, SWIGLU, X_F32>(x, rows, k, job, slices, stream);
  else launchWide<T, 64, SWIGLU, X_F32>(x, rows, k, job, slices, stream);
}

// The wide kernel's k split: the most slices (up to a cluster of 8, whole 64-deep stages, at least 256 of k each)
// that keep the blocks within 1.5 per multiprocessor. The H100 sweep (bench/results/2026-12-06-h100-skinny/) at 16–64
// rows: q/k/v 48 units → 4 slices, o_proj and down 32 → 4, gate+up 224 → 1, the LM head 1002 → 1; one slice more or
// less cost 2–30 %.
template <typename T>
int wideSlices(const SkinnyJob<T>& job, int64_t k) {
  const int64_t units = job.first[job.count], room = 3LL * multiprocessorCount() / 2;
  int best = 1;
  for (int s = 2; s <= kMaxCluster; s *= 2) {
    if (k % (static_cast<int64_t>(s) * 64) != 0 || k / s < 256 || units * s > room) break;
    best = s;
  }
  return best;
}

// Token tiles of up to 16 rows stream 64 or 128 of k a stage; wider ones 64 (their tiles fill the shared memory).
template <typename T, int TILES, bool SWIGLU>
void launchRounding(const float* x, const T* rounded, int rows, int64_t k, const SkinnyJob<T>& job, const Streaming& streaming,
                    cudaStream_t stream) {
  const void* xs = rounded ? static_cast<const void*>(rounded) : static_cast<const void*>(x);
  if constexpr (TILES <= 2) {
    if (streaming.depth == 128) {
      if (rounded) launchTiles<T, TILES, SWIGLU, true, 128>(xs, rows, k, job, streaming.slices, stream);
      else launchTiles<T, TILES, SWIGLU, false, 128>(xs, rows, k, job, streaming.slices, stream);
      return;
    }
  }
  if (rounded) launchTiles<T, TILES, SWIGLU, true, 64>(xs, rows, k, job, streaming.slices, stream);
  else launchTiles<T, TILES, SWIGLU, false, 64>(xs, rows, k, job, streaming.slices, stream);
}

template <typename T, bool SWIGLU>
void launchJob(const float* x, const T* rounded, int64_t rows, int64_t k, SkinnyJob<T>& job, const SkinnyOptions& options,
               cudaStream_t stream) {
  const int64_t width = SWIGLU ? kRows / 2 : kRows;
  job.first[0] = 0;
  for (int i = 0; i < job.count; i++) job.first[i + 1] = job.first[i] + (job.m[i] + width - 1) / width;
  if (job.first[job.count] == 0 || rows == 0) return;
  // More than kSkinnyRowsMax rows: passes of kSkinnyRowsMax, each streaming the weights again (results stay per row).
  for (int64_t first = 0; first < rows; first += kSkinnyRowsMax) {
    const int count = static_cast<int>(std::min<int64_t>(kSkinnyRowsMax, rows - first));
    const Streaming streaming = streamingFor(job, SWIGLU, k, count, options);
    const int slices = streaming.slices;
    if ((streaming.depth != 64 && streaming.depth != 128) || slices < 1 || slices > kMaxCluster || (slices > 1 && !hopper()) ||
        k % (static_cast<int64_t>(slices) * streaming.depth) != 0)
      throw Error("DUO_ARG", "skinny matmul: k = " + std::to_string(k) + " does not split into " + std::to_string(slices) +
                                 " slices of whole " + std::to_string(streaming.depth) + "-deep stages");
    SkinnyJob<T> pass = job;
    for (int i = 0; i < job.count; i++) {
      pass.out[i] = job.out[i] ? job.out[i] + first * job.m[i] : nullptr;
      pass.residual[i] = job.residual[i] ? job.residual[i] + first * job.m[i] : nullptr;
    }
    const float* xs = x + first * k;
    // Up to 8 rows stage f32 x (no rounding pass needed); wider tiles take x rounded beforehand when it is given.
    const T* rs = rounded && count > 8 ? rounded + first * k : nullptr;
    // 9–64 rows of q/k/v or gate+up on Hopper: the warpgroup-MMA kernel (unless pinned to the warp MMAs), with x
    // rounded beforehand where it is given, else rounding it itself. A single matrix keeps the warp MMAs (measured
    // faster there in sum: o_proj gains 2 µs at 16 rows, down and the LM head lose 2 and 23), and so does the
    // batch-invariant mode at every row count (one kernel, one summation order).
    const bool shared = SWIGLU || job.count > 1 || options.kernel == SkinnyOptions::kWarpgroup;
    const bool wide = count > 8 && shared && !options.invariant && options.kernel != SkinnyOptions::kWarp && wgmmaCompiled();
    if (options.kernel == SkinnyOptions::kWarpgroup && !wide)
      throw Error("DUO_ARG", "skinny matmul: the warpgroup kernel needs Hopper machine code (sm_90a) and more than 8 rows");
    if (wide) {
      const int split = options.slices > 0 ? options.slices : wideSlices(pass, k);
      if (k % (static_cast<int64_t>(split) * 64) != 0 || split > kMaxCluster)
        throw Error("DUO_ARG", "skinny matmul: k = " + std::to_string(k) + " does not split into " + std::to_string(split) + " slices of 64");
      if (rs) launchWideTokens<T, SWIGLU, false>(rs, count, k, pass, split, stream);
      else launchWideTokens<T, SWIGLU, true>(xs, count, k, pass, split, stream);
      continue;
    }
    if (count <= 8) launchRounding<T, 1, SWIGLU>(xs, nullptr, count, k, pass, streaming, stream);
    else if (count <= 16) launchRounding<T, 2, SWIGLU>(xs, rs, count, k, pass, streaming, stream);
    else if (count <= 32) launchRounding<T, 4, SWIGLU>(xs, rs, count, k, pass, streaming, stream);
    else launchRounding<T, 8, SWIGLU>(xs, rs, count, k, pass, streaming, stream);
  }
}

template <typename F>
void dispatchHalf(DType type, F&& body) {
  if (type == DType::BF16) body(__nv_bfloat16{});
  else if (type == DType::F16) body(__half{});
  else throw Error("DUO_ARG", "the skinny matmul takes bf16 or f16 weights");
}

}  // namespace

// Whether the wide kernel can run: Hopper, and this build's machine code for it has the warpgroup MMAs (a PTX-only or
// sm_90 build does not). The probe runs once, before any graph capture (CudaDevice asks at construction).
bool wgmmaCompiled() {
  static const bool compiled = [] {
    if (computeCapabilityMajor() < 9) return false;
    int* flag = nullptr;
    int value = 0;
    check(cudaMalloc(&flag, sizeof(int)), "cudaMalloc (wgmma probe)");
    wgmmaProbe<<<1, 1>>>(flag);
    check(cudaGetLastError(), "wgmma probe");
    check(cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy (wgmma probe)");
    check(cudaFree(flag), "cudaFree (wgmma probe)");
    return value == 1;
  }();
  return compiled;
}

bool skinnySupported(int64_t k, DType weightType, const void* x, const void* const* weights, int count) {
  if (computeCapabilityMajor() < 8 || (weightType != DType::BF16 && weightType != DType::F16)) return false;
  if (k % kMinDepth != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 || count > 3) return false;
  for (int i = 0; i < count; i++)
    if (reinterpret_cast<uintptr_t>(weights[i]) % 16 != 0) return false;
  return true;
}

void launchSkinny(const float* x, const void* rounded, int64_t rows, int64_t k, DType weightType, const GemvTarget* targets,
                  const float* residual, int count, const SkinnyOptions& options, cudaStream_t stream) {
  dispatchHalf(weightType, [&](auto type) {
    using T = decltype(type);
    SkinnyJob<T> job = weightJobFor<T>(targets, count);
    job.residual[0] = residual;
    launchJob<T, false>(x, static_cast<const T*>(rounded), rows, k, job, options, stream);
  });
}

void launchSkinnySwiglu(const float* x, const void* rounded, int64_t rows, int64_t k, const void* gate, const void* up,
                        DType weightType, int64_t m, float* out, const SkinnyOptions& options, cudaStream_t stream) {
  dispatchHalf(weightType, [&](auto type) {
    using T = decltype(type);
    SkinnyJob<T> job{};
    job.count = 1;
    job.weight[0] = static_cast<const T*>(gate);
    job.weight[1] = static_cast<const T*>(up);
    job.out[0] = out;
    job.m[0] = m;
    launchJob<T, true>(x, static_cast<const T*>(rounded), rows, k, job, options, stream);
  });
}

}  // namespace cuda
}  // namespace duo
