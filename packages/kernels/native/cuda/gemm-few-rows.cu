// Tensor-core matmul for a few rows (a batch's decode step, 1–64 rows): the weights are streamed once for every row,
// 16 output columns per warp through m16n8k16 products with f32 accumulation; x is rounded to the weight dtype as it
// is loaded. A row's result does not depend on how many rows share the launch, nor on its place among them: each output
// is the same sequence of products over the same k order (the k split depends on the matrix shape only), so a
// sequence decoded in a batch gets the bits it gets alone (the batch-invariant mode routes single rows here too).
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cuda-common.cuh"
#include "mma.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;  // 32-element steps of k in flight per warp
constexpr int kMaxSplit = 8;
constexpr int kStep = 32;   // k per step: two m16n8k16 products over a permuted k order

// A warp's 16 columns: `slab` of one matrix (or of gate and up together in SwiGLU mode).
template <typename T>
using FewRowsJob = WeightJob<T>;

// Thread (g = lane / 4, t = lane % 4) holds weight rows g and g + 8 of its slab at k = 8t … 8t + 7 of each 32-step and
// token g of each 8-token tile at the same k: logical k 2t, 2t + 1 / 2t + 8, 2t + 9 of the first product are physical
// 8t + 0, 1 / 8t + 2, 3, of the second 8t + 4, 5 / 8t + 6, 7 (the same permutation on both operands).
template <typename T>
__device__ __forceinline__ void packTokens(float4 low, float4 high, uint32_t (&b)[4]) {
  b[0] = packPair<T>(low.x, low.y);
  b[1] = packPair<T>(low.z, low.w);
  b[2] = packPair<T>(high.x, high.y);
  b[3] = packPair<T>(high.z, high.w);
}

// Resident blocks per multiprocessor the register budget is set for: three where one token tile of one matrix leaves
// registers to spare.
constexpr int residentBlocks(int tiles, bool swiglu, bool prefetch) { return tiles == 1 && !swiglu && !prefetch ? 3 : 2; }

// PREFETCH (Tuning::fewRowsPrefetch, up to two token tiles): x is loaded with the weights a group of steps ahead
// instead of at its use; the same values meet the same products, so the bits do not change.
template <typename T, int TILES, bool SWIGLU, int SPLIT, bool PREFETCH>
__global__ void __launch_bounds__(kWarps * 32, residentBlocks(TILES, SWIGLU, PREFETCH))
    fewRowsKernel(const float* __restrict__ x, int rows, int64_t k, FewRowsJob<T> job) {
  constexpr int kMatrices = SWIGLU ? 2 : 1;
  // Loads in flight per warp, within the register budget of two blocks per multiprocessor.
  constexpr int kU = TILES * kMatrices >= 8 || (PREFETCH && SWIGLU) ? 2 : kUnroll;
  constexpr int kSlabsPerBlock = kWarps / SPLIT;
  __shared__ float partial[kWarps][TILES * 4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int slot = warp / SPLIT, slice = warp % SPLIT;
  const int64_t slab = static_cast<int64_t>(blockIdx.x) * kSlabsPerBlock + slot;
  int which = 0;
  while (which + 1 < job.count && slab >= job.first[which + 1]) which++;
  const bool active = slab < job.first[job.count];
  const int64_t m = job.m[which];
  const int64_t column0 = (slab - job.first[which]) * 16;
  // Rows past m read row 0 (their products are never stored).
  const int64_t rowA = active && column0 + g < m ? column0 + g : 0, rowB = active && column0 + g + 8 < m ? column0 + g + 8 : 0;
  const T* weights[kMatrices][2];
#pragma unroll
  for (int mat = 0; mat < kMatrices; mat++) {
    const T* base = SWIGLU ? job.weight[mat] : job.weight[which];
    weights[mat][0] = base + rowA * k + 8 * t;
    weights[mat][1] = base + rowB * k + 8 * t;
  }
  const int64_t steps = k / kStep;
  const int64_t begin = steps * slice / SPLIT, end = steps * (slice + 1) / SPLIT;
  float acc[kMatrices][TILES][4];
#pragma unroll
  for (int mat = 0; mat < kMatrices; mat++)
#pragma unroll
    for (int tile = 0; tile < TILES; tile++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[mat][tile][i] = 0.0f;
  uint4 raw[kU][kMatrices][2];
  auto fetch = [&](int64_t from) {
#pragma unroll
    for (int u = 0; u < kU; u++)
      if (active && from + u < end)
#pragma unroll
        for (int mat = 0; mat < kMatrices; mat++)
#pragma unroll
          for (int half = 0; half < 2; half++)
            raw[u][mat][half] = __ldg(reinterpret_cast<const uint4*>(weights[mat][half] + (from + u) * kStep));
  };
  float4 staged[PREFETCH ? kU : 1][PREFETCH ? TILES : 1][2];
  auto fetchTokens = [&](int64_t from) {
    if constexpr (PREFETCH) {
#pragma unroll
      for (int u = 0; u < kU; u++)
#pragma unroll
        for (int tile = 0; tile < TILES; tile++) {
          const int token = tile * 8 + g;
          if (active && from + u < end && token < rows) {
            const float* p = x + token * k + (from + u) * kStep + 8 * t;
            staged[u][tile][0] = __ldg(reinterpret_cast<const float4*>(p));
            staged[u][tile][1] = __ldg(reinterpret_cast<const float4*>(p + 4));
          }
        }
    }
  };
  int64_t step = begin;
  fetch(step);
  // Weights are never written during a step: their first loads overlap the previous kernel's tail.
  dependOnPrevious();
  fetchTokens(step);
  for (; step < end; step += kU) {
#pragma unroll
    for (int u = 0; u < kU; u++) {
      if (!active || step + u >= end) continue;
      const int64_t kk = (step + u) * kStep + 8 * t;
#pragma unroll
      for (int tile = 0; tile < TILES; tile++) {
        const int token = tile * 8 + g;
        uint32_t b[4] = {0, 0, 0, 0};
        if constexpr (PREFETCH) {
          if (token < rows) packTokens<T>(staged[u][tile][0], staged[u][tile][1], b);
        } else if (token < rows) {
          const float* p = x + token * k + kk;
          packTokens<T>(__ldg(reinterpret_cast<const float4*>(p)), __ldg(reinterpret_cast<const float4*>(p + 4)), b);
        }
#pragma unroll
        for (int mat = 0; mat < kMatrices; mat++) {
          const uint4 a0 = raw[u][mat][0], a1 = raw[u][mat][1];
          mma16816<T>(acc[mat][tile], a0.x, a1.x, a0.y, a1.y, b[0], b[1]);
          mma16816<T>(acc[mat][tile], a0.z, a1.z, a0.w, a1.w, b[2], b[3]);
        }
      }
    }
    fetch(step + kU);
    fetchTokens(step + kU);
  }
  // The SPLIT warps of a slab add their slices in slice order through shared memory (one matrix at a time); the
  // sums replace the first slice's accumulators.
#pragma unroll
  for (int mat = 0; mat < kMatrices; mat++) {
    if (SPLIT > 1) {
      if (mat > 0) __syncthreads();
#pragma unroll
      for (int tile = 0; tile < TILES; tile++)
#pragma unroll
        for (int i = 0; i < 4; i++) partial[warp][tile * 4 + i][lane] = acc[mat][tile][i];
      __syncthreads();
    }
#pragma unroll
    for (int tile = 0; tile < TILES; tile++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        if (SPLIT > 1) {
          float total = 0.0f;
#pragma unroll 1
          for (int w = 0; w < SPLIT; w++) total += partial[slot * SPLIT + w][tile * 4 + i][lane];
          acc[mat][tile][i] = total;
        }
      }
  }
  if (!active || slice != 0) return;
  // c0, c1: column g, tokens 2t and 2t + 1 of the tile; c2, c3: column g + 8, the same tokens.
#pragma unroll
  for (int tile = 0; tile < TILES; tile++)
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int token = tile * 8 + 2 * t + (i & 1);
      const int64_t column = column0 + g + (i >> 1) * 8;
      if (token >= rows || column >= m) continue;
      const int64_t index = token * m + column;
      if (SWIGLU) {
        const float gate = acc[0][tile][i], up = acc[kMatrices - 1][tile][i];
        job.out[0][index] = gate / (1.0f + __expf(-gate)) * up;
      } else {
        job.out[which][index] = acc[0][tile][i] + (job.bias[which] ? job.bias[which][column] : 0.0f) +
                                (job.residual[which] ? job.residual[which][index] : 0.0f);
      }
    }
}

// The k split of a matrix shape (never of the row count, so results do not depend on it): a warp streams 16 weight
// rows, so a matrix has few of them per multiprocessor; k is split (slices of at least 4 steps) until about 24 warps
// per multiprocessor stream (o_proj and down of Llama-3-8B: 8, q/k/v 8, gate+up 4, the head 1).
int splitFor(int64_t slabs, int64_t k) {
  const int64_t target = static_cast<int64_t>(multiprocessorCount()) * 24;
  int split = 1;
  while (split < kMaxSplit && k / kStep / (split * 2) >= 4 && slabs * split < target) split *= 2;
  return split;
}

std::atomic<bool> prefetchKnob{false};

template <typename T, int TILES, bool SWIGLU, bool PREFETCH>
void launchSplit(const float* x, int rows, int64_t k, const FewRowsJob<T>& job, cudaStream_t stream) {
  const int64_t slabs = job.first[job.count];
  const int split = splitFor(slabs, k);
  auto grid = [&](int s) { return dim3(static_cast<unsigned>((slabs + kWarps / s - 1) / (kWarps / s))); };
  const dim3 threads(kWarps * 32);
  switch (split) {
    case 8: launchChained(fewRowsKernel<T, TILES, SWIGLU, 8, PREFETCH>, grid(8), threads, 0, stream, x, rows, k, job); break;
    case 4: launchChained(fewRowsKernel<T, TILES, SWIGLU, 4, PREFETCH>, grid(4), threads, 0, stream, x, rows, k, job); break;
    case 2: launchChained(fewRowsKernel<T, TILES, SWIGLU, 2, PREFETCH>, grid(2), threads, 0, stream, x, rows, k, job); break;
    default: launchChained(fewRowsKernel<T, TILES, SWIGLU, 1, PREFETCH>, grid(1), threads, 0, stream, x, rows, k, job); break;
  }
  checkLaunch("fewRows");
}

template <typename T, int TILES, bool SWIGLU>
void launchTiles(const float* x, int rows, int64_t k, const FewRowsJob<T>& job, cudaStream_t stream) {
  if constexpr (TILES <= 2) {
    if (prefetchKnob.load(std::memory_order_relaxed)) {
      launchSplit<T, TILES, SWIGLU, true>(x, rows, k, job, stream);
      return;
    }
  }
  launchSplit<T, TILES, SWIGLU, false>(x, rows, k, job, stream);
}

template <typename T, bool SWIGLU>
void launchJob(const float* x, int64_t rows, int64_t k, FewRowsJob<T>& job, cudaStream_t stream) {
  job.first[0] = 0;
  for (int i = 0; i < job.count; i++) job.first[i + 1] = job.first[i] + (job.m[i] + 15) / 16;
  if (job.first[job.count] == 0 || rows == 0) return;
  // More than kFewRowsMax rows: tiles of kFewRowsMax, each streaming the weights again (results stay per row).
  for (int64_t first = 0; first < rows; first += kFewRowsMax) {
    const int count = static_cast<int>(std::min<int64_t>(kFewRowsMax, rows - first));
    FewRowsJob<T> tile = job;
    for (int i = 0; i < job.count; i++) {
      tile.out[i] = job.out[i] ? job.out[i] + first * job.m[i] : nullptr;
      tile.residual[i] = job.residual[i] ? job.residual[i] + first * job.m[i] : nullptr;
    }
    const float* xs = x + first * k;
    if (count <= 8) launchTiles<T, 1, SWIGLU>(xs, count, k, tile, stream);
    else if (count <= 16) launchTiles<T, 2, SWIGLU>(xs, count, k, tile, stream);
    else if (count <= 32) launchTiles<T, 4, SWIGLU>(xs, count, k, tile, stream);
    else launchTiles<T, 8, SWIGLU>(xs, count, k, tile, stream);
  }
}

template <typename F>
void dispatchHalf(DType type, F&& body) {
  if (type == DType::BF16) body(__nv_bfloat16{});
  else if (type == DType::F16) body(__half{});
  else throw Error("DUO_ARG", "the few-rows matmul takes bf16 or f16 weights");
}

}  // namespace

void setFewRowsPrefetch(bool prefetch) { prefetchKnob.store(prefetch, std::memory_order_relaxed); }

bool fewRowsSupported(int64_t k, DType weightType, const void* x, const void* const* weights, int count) {
  if (weightType != DType::BF16 && weightType != DType::F16) return false;
  if (k % kStep != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 || count > 3) return false;
  for (int i = 0; i < count; i++)
    if (reinterpret_cast<uintptr_t>(weights[i]) % 16 != 0) return false;
  return true;
}

void launchFewRows(const float* x, int64_t rows, int64_t k, DType weightType, const GemvTarget* targets, const float* residual,
                   int count, cudaStream_t stream) {
  dispatchHalf(weightType, [&](auto type) {
    using T = decltype(type);
    FewRowsJob<T> job{};
    job.count = count;
    for (int i = 0; i < count; i++) {
      job.weight[i] = static_cast<const T*>(targets[i].weight);
      job.out[i] = targets[i].out;
      job.bias[i] = targets[i].bias;
      job.residual[i] = i == 0 ? residual : nullptr;
      job.m[i] = targets[i].m;
    }
    launchJob<T, false>(x, rows, k, job, stream);
  });
}

void launchFewRowsSwiglu(const float* x, int64_t rows, int64_t k, const void* gate, const void* up, DType weightType, int64_t m,
                         float* out, cudaStream_t stream) {
  dispatchHalf(weightType, [&](auto type) {
    using T = decltype(type);
    FewRowsJob<T> job{};
    job.count = 1;
    job.weight[0] = static_cast<const T*>(gate);
    job.weight[1] = static_cast<const T*>(up);
    job.out[0] = out;
    job.m[0] = m;
    launchJob<T, true>(x, rows, k, job, stream);
  });
}

}  // namespace cuda
}  // namespace duo
