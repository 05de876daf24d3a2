// Decode GEMV for 16-bit weights on Hopper: a persistent grid (one block per SM) whose thread 0 streams tiles of weight
// rows into a ring of shared-memory stages with bulk copies (cp.async.bulk, completing on mbarriers), while 8 warps
// multiply the stage in use by x (staged once in shared memory). Many bytes stay in flight per SM without the warps
// holding them in registers, and no block retires and relaunches between tiles.
#pragma once
#include "cuda-common.cuh"

namespace duo {
namespace cuda {

constexpr int kBulkRows = 4;         // weight rows per tile (SwiGLU: gate j, j+1 and up j, j+1)
constexpr int kBulkChunk = 2048;     // k elements per stage and row
constexpr int kBulkStages = 6;
constexpr int kBulkWarps = 8;

template <typename T>
struct BulkJob {
  const T* weight[3];
  float* out[3];
  const float* bias[3];
  const float* residual[3];
  int64_t m[3];
  int64_t firstTile[4];  // tiles of matrix i: firstTile[i] … firstTile[i + 1] − 1
  int count;
  bool swiglu;  // weight[0] = gate, weight[1] = up; a tile is 2 outputs
};

__device__ __forceinline__ unsigned sharedAddress(const void* pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void barrierWait(uint64_t* barrier, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned address = sharedAddress(barrier);
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  }
#endif
}

// Where row `r` of tile `tile` lives: its matrix, its weight row, and whether it exists.
template <typename T>
__device__ __forceinline__ const T* tileRow(const BulkJob<T>& job, int64_t tile, int r, int& which, int64_t& row) {
  which = 0;
  while (which + 1 < job.count && tile >= job.firstTile[which + 1]) which++;
  const int64_t local = tile - job.firstTile[which];
  if (job.swiglu) {
    row = local * 2 + (r & 1);
    return row < job.m[0] ? job.weight[r >> 1] : nullptr;
  }
  row = local * kBulkRows + r;
  return row < job.m[which] ? job.weight[which] : nullptr;
}

template <typename T>
__global__ void __launch_bounds__(kBulkWarps * 32, 1) gemvBulkKernel(const float* __restrict__ x, int64_t k, BulkJob<T> job) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char shared[];
  T* stages = reinterpret_cast<T*>(shared);                                        // [stage][row][chunk]
  float* xs = reinterpret_cast<float*>(shared + sizeof(T) * kBulkStages * kBulkRows * kBulkChunk);
  __shared__ __align__(8) uint64_t full[kBulkStages];
  __shared__ float partial[2][kBulkWarps][kBulkRows];  // by tile parity: a tile's sums are read while the next is summed
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t chunks = (k + kBulkChunk - 1) / kBulkChunk;
  const int64_t tiles = job.firstTile[job.count];
  const int64_t myTiles = tiles > blockIdx.x ? (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int64_t steps = myTiles * chunks;

  // Issues step `step` (tile, chunk) into its stage: one bulk copy per existing row, all completing on full[stage].
  auto issue = [&](int64_t step) {
    const int stage = static_cast<int>(step % kBulkStages);
    const int64_t tile = blockIdx.x + (step / chunks) * gridDim.x;
    const int64_t chunk = step % chunks;
    const int64_t begin = chunk * kBulkChunk;
    const unsigned bytes = static_cast<unsigned>((k - begin < kBulkChunk ? k - begin : kBulkChunk) * sizeof(T));
    unsigned total = 0;
    const T* sources[kBulkRows];
    for (int r = 0; r < kBulkRows; r++) {
      int which;
      int64_t row;
      const T* base = tileRow(job, tile, r, which, row);
      sources[r] = base ? base + row * k + begin : nullptr;
      if (sources[r]) total += bytes;
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sharedAddress(&full[stage])), "r"(total) : "memory");
    for (int r = 0; r < kBulkRows; r++) {
      if (!sources[r]) continue;
      T* target = stages + (static_cast<int64_t>(stage) * kBulkRows + r) * kBulkChunk;
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(sharedAddress(target)),
          "l"(sources[r]), "r"(bytes), "r"(sharedAddress(&full[stage]))
          : "memory");
    }
  };

  if (threadIdx.x == 0) {
    for (int s = 0; s < kBulkStages; s++)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sharedAddress(&full[s])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int64_t step = 0; step < steps && step < kBulkStages; step++) issue(step);
  for (int64_t i = threadIdx.x * 4; i < k; i += blockDim.x * 4)
    *reinterpret_cast<float4*>(xs + i) = *reinterpret_cast<const float4*>(x + i);
  __syncthreads();

  float acc[kBulkRows] = {};
  for (int64_t step = 0; step < steps; step++) {
    const int stage = static_cast<int>(step % kBulkStages);
    const int64_t chunk = step % chunks;
    const int64_t begin = chunk * kBulkChunk;
    const int64_t length = k - begin < kBulkChunk ? k - begin : kBulkChunk;
    const int64_t tile = blockIdx.x + (step / chunks) * gridDim.x;
    barrierWait(&full[stage], static_cast<unsigned>((step / kBulkStages) & 1));
    constexpr int kVec = Vec16<T>::kCount;
    for (int64_t v = (static_cast<int64_t>(warp) * 32 + lane) * kVec; v < length; v += kBulkWarps * 32 * kVec) {
      float xv[kVec];
#pragma unroll
      for (int e = 0; e < kVec; e += 4) {
        const float4 chunkX = *reinterpret_cast<const float4*>(xs + begin + v + e);
        xv[e] = chunkX.x; xv[e + 1] = chunkX.y; xv[e + 2] = chunkX.z; xv[e + 3] = chunkX.w;
      }
#pragma unroll
      for (int r = 0; r < kBulkRows; r++) {
        float wv[kVec];
        Vec16<T>::widen(*reinterpret_cast<const uint4*>(stages + (static_cast<int64_t>(stage) * kBulkRows + r) * kBulkChunk + v), wv);
#pragma unroll
        for (int e = 0; e < kVec; e++) acc[r] += wv[e] * xv[e];
      }
    }
    const bool last = chunk == chunks - 1;
    if (last) {
#pragma unroll
      for (int r = 0; r < kBulkRows; r++) {
        const float total = warpSum(acc[r]);
        if (lane == 0) partial[(step / chunks) & 1][warp][r] = total;
        acc[r] = 0.0f;
      }
    }
    __syncthreads();  // the stage is consumed (and the tile's partial sums are in)
    if (threadIdx.x == 0 && step + kBulkStages < steps) issue(step + kBulkStages);
    if (last && threadIdx.x < kBulkRows) {
      const int r = static_cast<int>(threadIdx.x);
      float sum = 0.0f;
      const auto& sums = partial[(step / chunks) & 1];
      for (int w = 0; w < kBulkWarps; w++) sum += sums[w][r];
      int which;
      int64_t row;
      const bool exists = tileRow(job, tile, r, which, row) != nullptr;
      if (job.swiglu) {
        // Rows 0 and 1 are gate j and j + 1; rows 2 and 3 up j and j + 1: thread r < 2 needs its up partner's sum.
        float up = 0.0f;
        for (int w = 0; w < kBulkWarps; w++) up += sums[w][r + 2 < kBulkRows ? r + 2 : r];
        if (r < 2 && exists) job.out[0][row] = sum / (1.0f + __expf(-sum)) * up;
      } else if (exists) {
        job.out[which][row] = sum + (job.bias[which] ? job.bias[which][row] : 0.0f) + (job.residual[which] ? job.residual[which][row] : 0.0f);
      }
    }
  }
#endif
}

}  // namespace cuda
}  // namespace duo
