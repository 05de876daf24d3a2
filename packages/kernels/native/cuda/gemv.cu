// Weight-streaming matmul for few rows (decode): each warp owns output columns and reads its weight row once with
// 16-byte loads; x is staged in shared memory when it fits. Also the fallback for any row count without cuBLAS.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

namespace {

#ifndef DUO_GEMV_WARPS
#define DUO_GEMV_WARPS 8
#endif
constexpr int kWarps = DUO_GEMV_WARPS;
constexpr int kMaxSplit = kWarps < 8 ? kWarps : 8;  // warps of one column group (kernels exist for 1, 2, 4, 8)
#ifndef DUO_GEMV_UNROLL
#define DUO_GEMV_UNROLL 4
#endif
#ifndef DUO_GEMV_BLOCKS_PER_SM
#define DUO_GEMV_BLOCKS_PER_SM 4
#endif
// 16-byte loads in flight per weight row and lane, and the residency the register budget is set for (tuning knobs).
constexpr int kUnroll = DUO_GEMV_UNROLL;
constexpr size_t kSharedLimit = 64 * 1024;
constexpr int kColumnsPerWarp = 2;
// A column group streams kColumnsPerWarp weight rows (in SwiGLU mode gate row j and up row j).
template <typename T>
using StreamJob = WeightJob<T>;

// A block of 8 warps serves 8/SPLIT column groups; the SPLIT warps of a group each stream one slice of k (16-byte
// loads, kUnroll in flight per column) and are summed through shared memory, so tall-k matrices still fill the GPU.
// Chained launch: the block issues its first weight loads (weights are never written during a step) before it waits
// for the previous kernel, so a step's weight streaming continues while the small kernels between matmuls run.
template <typename T, int ROWS, bool SWIGLU, int SPLIT>
__global__ void __launch_bounds__(kWarps * 32, DUO_GEMV_BLOCKS_PER_SM) gemvStreamKernel(const float* __restrict__ x, int64_t k, StreamJob<T> job) {
  constexpr int kVec = Vec16<T>::kCount;
  constexpr int kGroups = kWarps / SPLIT;
  __shared__ float partial[kWarps][ROWS][kColumnsPerWarp];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp / SPLIT, slice = warp % SPLIT;
  const int64_t global = static_cast<int64_t>(blockIdx.x) * kGroups + group;
  int which = 0;
  while (which + 1 < job.count && global >= job.first[which + 1]) which++;
  const bool active = global < job.first[job.count];
  const int64_t m = job.m[which];
  const int64_t column0 = SWIGLU ? global - job.first[which] : (global - job.first[which]) * kColumnsPerWarp;
  const T* rows[kColumnsPerWarp];
  bool live[kColumnsPerWarp];
#pragma unroll
  for (int c = 0; c < kColumnsPerWarp; c++) {
    const int64_t column = SWIGLU ? column0 : column0 + c;
    live[c] = active && column < m;
    rows[c] = (SWIGLU ? job.weight[c] : job.weight[which]) + (live[c] ? column : 0) * k;
  }
  // This warp's slice of k, in whole 16-byte vectors.
  const int64_t vectors = k / kVec;
  const int64_t sliceBegin = (vectors * slice / SPLIT) * kVec, sliceEnd = (vectors * (slice + 1) / SPLIT) * kVec;
  float acc[ROWS][kColumnsPerWarp];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int c = 0; c < kColumnsPerWarp; c++) acc[r][c] = 0.0f;
  constexpr int64_t kStep = 32 * kVec * kUnroll;
  uint4 raw[kUnroll][kColumnsPerWarp];
  auto fetch = [&](int64_t from) {
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t kk = from + static_cast<int64_t>(u) * 32 * kVec;
#pragma unroll
      for (int c = 0; c < kColumnsPerWarp; c++)
        if (kk < sliceEnd && live[c]) raw[u][c] = Vec16<T>::raw(rows[c] + kk);
    }
  };
  int64_t base = sliceBegin + static_cast<int64_t>(lane) * kVec;
  fetch(base);
  dependOnPrevious();
  for (; base < sliceEnd; base += kStep) {
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t kk = base + static_cast<int64_t>(u) * 32 * kVec;
      if (kk < sliceEnd) {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
          float xv[kVec];
#pragma unroll
          for (int v = 0; v < kVec; v += 4) {
            float4 chunk = __ldg(reinterpret_cast<const float4*>(x + r * k + kk + v));
            xv[v] = chunk.x; xv[v + 1] = chunk.y; xv[v + 2] = chunk.z; xv[v + 3] = chunk.w;
          }
#pragma unroll
          for (int c = 0; c < kColumnsPerWarp; c++) {
            if (live[c]) {
              float wv[kVec];
              Vec16<T>::widen(raw[u][c], wv);
#pragma unroll
              for (int v = 0; v < kVec; v++) acc[r][c] += wv[v] * xv[v];
            }
          }
        }
      }
    }
    fetch(base + kStep);
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int c = 0; c < kColumnsPerWarp; c++) {
      float total = warpSum(acc[r][c]);
      if (SPLIT > 1 && lane == 0) partial[warp][r][c] = total;
      acc[r][c] = total;
    }
  if (SPLIT > 1) __syncthreads();
  if (!active || slice != 0 || lane != 0) return;
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    float sums[kColumnsPerWarp];
#pragma unroll
    for (int c = 0; c < kColumnsPerWarp; c++) {
      sums[c] = acc[r][c];
      if (SPLIT > 1) {
        sums[c] = 0.0f;
#pragma unroll
        for (int w = 0; w < SPLIT; w++) sums[c] += partial[group * SPLIT + w][r][c];
      }
    }
    if (SWIGLU) {
      if (live[0]) job.out[0][r * m + column0] = sums[0] / (1.0f + __expf(-sums[0])) * sums[1];
    } else {
#pragma unroll
      for (int c = 0; c < kColumnsPerWarp; c++) {
        const int64_t column = column0 + c;
        if (!live[c]) continue;
        const int64_t index = r * m + column;
        job.out[which][index] = sums[c] + (job.bias[which] ? job.bias[which][column] : 0.0f) +
                                (job.residual[which] ? job.residual[which][index] : 0.0f);
      }
    }
  }
}

template <typename T, int ROWS, bool SWIGLU>
void launchSplit(const float* x, int64_t k, const StreamJob<T>& job, int split, cudaStream_t stream) {
  const int64_t groups = job.first[job.count];
  auto blocks = [&](int groupsPerBlock) { return static_cast<unsigned>((groups + groupsPerBlock - 1) / groupsPerBlock); };
  // SPLIT warps per column group, so a block serves kWarps / SPLIT groups.
  const dim3 threads(kWarps * 32);
  if constexpr (kWarps >= 8) {
    if (split == 8) {
      launchChained(gemvStreamKernel<T, ROWS, SWIGLU, 8>, blocks(kWarps / 8), threads, 0, stream, x, k, job);
      return;
    }
  }
  if (split >= 4) launchChained(gemvStreamKernel<T, ROWS, SWIGLU, 4>, blocks(kWarps / 4), threads, 0, stream, x, k, job);
  else if (split == 2) launchChained(gemvStreamKernel<T, ROWS, SWIGLU, 2>, blocks(kWarps / 2), threads, 0, stream, x, k, job);
  else launchChained(gemvStreamKernel<T, ROWS, SWIGLU, 1>, blocks(kWarps), threads, 0, stream, x, k, job);
}

// The split rule's knobs (Device::Tuning), for benchmarks and A/B runs: set by setGemvTuning, read on every launch.
using PinnedSplits = std::vector<std::array<int64_t, 3>>;
std::atomic<int64_t> minimumSliceKnob{1024};
std::atomic<int> waveRuleKnob{2};
std::shared_ptr<const PinnedSplits> pinnedSplits = std::make_shared<const PinnedSplits>();

template <typename T>
void launchStream(const float* x, int64_t rows, int64_t k, StreamJob<T>& job, bool swiglu, cudaStream_t stream) {
  job.first[0] = 0;
  for (int i = 0; i < job.count; i++)
    job.first[i + 1] = job.first[i] + (swiglu ? job.m[i] : (job.m[i] + kColumnsPerWarp - 1) / kColumnsPerWarp);
  if (job.first[job.count] == 0) return;
  // Split k so each warp streams at least ~1K elements per column, and only while columns alone leave SMs idle.
  const int64_t groups = job.first[job.count];
  const int64_t minimumSlice = std::max<int64_t>(64, minimumSliceKnob.load(std::memory_order_relaxed));
  int split = 1;
  while (split < kMaxSplit && k / (split * 2) >= minimumSlice && groups * split < static_cast<int64_t>(multiprocessorCount()) * 64) split *= 2;
  // A last wave of blocks that is mostly empty leaves bandwidth unused (gate+up of Llama-3-8B: 3.4 waves at split 1,
  // 6.8 at split 2): take another split where it fills the waves clearly better.
  // The wave rule (Tuning::gemvWaveRule, A/B runs): 0 the fill rule alone, 1 the wave rule below, 2 (default) the
  // chained-launch rule when launches are chained, else the wave rule.
  const int waveRule = waveRuleKnob.load(std::memory_order_relaxed);
  // Waves of resident blocks that split s makes.
  const double slots = static_cast<double>(multiprocessorCount()) * DUO_GEMV_BLOCKS_PER_SM;
  auto waves = [&](int s) { return std::ceil(static_cast<double>(groups) / (kWarps / s)) / slots; };
  if (waveRule == 2 && chainLaunches()) {
    // Chained launches: small blocks (slices down to half the minimum), so one matmul's tail is fine-grained and the
    // next one's blocks move in early — unless a split with short slices makes exactly one nearly full wave (Llama-3-8B
    // on an H100: o_proj split 2, q/k/v, gate+up and down split 8; docs/performance-notes.md).
    int largest = 1, oneWave = 0;
    for (int s = 1; s <= kMaxSplit; s *= 2) {
      if (s > 1 && k / s < minimumSlice / 2) break;
      largest = s;
      if (waves(s) >= 0.9 && waves(s) <= 1.0 && k / s <= 2 * minimumSlice) oneWave = s;
    }
    split = oneWave ? oneWave : largest;
  } else if (waveRule != 0) {
    auto filled = [&](int s) { return waves(s) / std::ceil(waves(s)); };
    int best = split;
    for (int s = 1; s <= kMaxSplit; s *= 2)
      if ((s == 1 || k / s >= minimumSlice) && filled(s) > filled(best) + 0.05) best = s;
    split = best;
  }
  // Pinned splits (Tuning::gemvPinnedSplits): {rows over all matrices, k, split}.
  const std::shared_ptr<const PinnedSplits> pinned = std::atomic_load(&pinnedSplits);
  int64_t totalRows = 0;
  for (int i = 0; i < job.count; i++) totalRows += job.m[i] * (swiglu ? 2 : 1);
  for (const auto& pin : *pinned)
    if (pin[0] == totalRows && pin[1] == k && (pin[2] & (pin[2] - 1)) == 0 && pin[2] >= 1 && pin[2] <= kMaxSplit)
      split = static_cast<int>(pin[2]);
  if (swiglu) {
    if (rows == 1) launchSplit<T, 1, true>(x, k, job, split, stream);
    else launchSplit<T, 2, true>(x, k, job, split, stream);
  } else {
    if (rows == 1) launchSplit<T, 1, false>(x, k, job, split, stream);
    else launchSplit<T, 2, false>(x, k, job, split, stream);
  }
  checkLaunch("gemvStream");
}

template <typename T, int ROWS, bool VECTOR, bool SHARED>
__global__ void __launch_bounds__(kWarps * 32) gemvKernel(const float* __restrict__ x, int64_t totalRows, int64_t k,
                                                          const T* __restrict__ weight, int64_t m, float* out,
                                                          const float* __restrict__ bias, const float* residual) {
  extern __shared__ float staged[];
  const int64_t rowBase = static_cast<int64_t>(blockIdx.y) * ROWS;
  const int rows = static_cast<int>(lesser(ROWS, totalRows - rowBase));
  const float* xs = x + rowBase * k;
  if (SHARED) {
    for (int64_t i = threadIdx.x; i < rows * k; i += blockDim.x) staged[i] = xs[i];
    __syncthreads();
    xs = staged;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + warp; j < m; j += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* w = weight + j * k;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.0f;
    if (VECTOR) {
      constexpr int kVec = Vec16<T>::kCount;
      for (int64_t base = static_cast<int64_t>(lane) * kVec; base < k; base += 32 * kVec * kUnroll) {
        float wv[kUnroll][kVec];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
          int64_t kk = base + static_cast<int64_t>(u) * 32 * kVec;
          if (kk < k) Vec16<T>::load(w + kk, wv[u]);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
          int64_t kk = base + static_cast<int64_t>(u) * 32 * kVec;
          if (kk >= k) break;
#pragma unroll
          for (int r = 0; r < ROWS; r++) {
            if (r >= rows) break;
            const float* xr = xs + r * k + kk;
#pragma unroll
            for (int v = 0; v < kVec; v += 4) {
              float4 xv = *reinterpret_cast<const float4*>(xr + v);
              acc[r] += wv[u][v] * xv.x + wv[u][v + 1] * xv.y + wv[u][v + 2] * xv.z + wv[u][v + 3] * xv.w;
            }
          }
        }
      }
    } else {
      for (int64_t kk = lane; kk < k; kk += 32) {
        float wk = toFloat(w[kk]);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
          if (r < rows) acc[r] += wk * xs[r * k + kk];
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      if (r >= rows) break;
      float sum = warpSum(acc[r]);
      if (lane == 0) {
        int64_t index = (rowBase + r) * m + j;
        out[index] = sum + (bias ? bias[j] : 0.0f) + (residual ? residual[index] : 0.0f);
      }
    }
  }
}

template <typename T, int ROWS>
void launchTyped(const float* x, int64_t totalRows, int64_t k, const T* weight, int64_t m, float* out, const float* bias,
                 const float* residual, cudaStream_t stream, bool streamFewRows = true) {
  constexpr int kVec = Vec16<T>::kCount;
  bool vector = k % kVec == 0 && reinterpret_cast<uintptr_t>(weight) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  size_t shared = static_cast<size_t>(std::min<int64_t>(ROWS, totalRows)) * k * sizeof(float);
  bool useShared = shared <= kSharedLimit;
  unsigned rowTiles = static_cast<unsigned>((totalRows + ROWS - 1) / ROWS);
  // Enough warps to keep every multiprocessor streaming weights; each warp then loops over its columns.
  int64_t columnBlocks = std::min<int64_t>((m + kWarps - 1) / kWarps, static_cast<int64_t>(multiprocessorCount()) * 8);
  dim3 grid(static_cast<unsigned>(std::max<int64_t>(columnBlocks, 1)), rowTiles);
  auto launch = [&](auto kernel, size_t bytes) {
    if (bytes > 48 * 1024) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "cudaFuncSetAttribute");
    kernel<<<grid, kWarps * 32, bytes, stream>>>(x, totalRows, k, weight, m, out, bias, residual);
  };
  if (streamFewRows && vector && totalRows <= 2) {
    StreamJob<T> job{};
    job.weight[0] = weight;
    job.out[0] = out;
    job.bias[0] = bias;
    job.residual[0] = residual;
    job.m[0] = m;
    job.count = 1;
    launchStream(x, totalRows, k, job, false, stream);
    return;
  } else if (vector && useShared) launch(gemvKernel<T, ROWS, true, true>, shared);
  else if (vector) launch(gemvKernel<T, ROWS, true, false>, 0);
  else if (useShared) launch(gemvKernel<T, ROWS, false, true>, shared);
  else launch(gemvKernel<T, ROWS, false, false>, 0);
  checkLaunch("gemv");
}

}  // namespace

int computeCapabilityMajor() {
  static int major = [] {
    int device = 0, value = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    return value;
  }();
  return major;
}

int multiprocessorCount() {
  static int count = [] {
    int device = 0, value = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return value;
  }();
  return count;
}

int residentBlocks(const void* kernel, int threads, size_t shared) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t>, int> known;
  const auto key = std::make_tuple(kernel, threads, shared);
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared), "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return known[key] = std::max(blocks, 1);
}

void setGemvTuning(const Device::Tuning& tuning) {
  minimumSliceKnob.store(tuning.gemvMinSlice, std::memory_order_relaxed);
  waveRuleKnob.store(tuning.gemvWaveRule, std::memory_order_relaxed);
  // "6144x4096:4,4096x14336:2": rows over all matrices × k, then the split (TypeScript checked the form).
  auto pinned = std::make_shared<PinnedSplits>();
  for (const char* p = tuning.gemvPinnedSplits.c_str(); *p;) {
    long long rows = 0, depth = 0, count = 0;
    int used = 0;
    if (std::sscanf(p, "%lldx%lld:%lld%n", &rows, &depth, &count, &used) != 3) break;
    pinned->push_back({rows, depth, count});
    p += used;
    if (*p == ',') p++;
  }
  std::atomic_store(&pinnedSplits, std::shared_ptr<const PinnedSplits>(std::move(pinned)));
}

void launchGemv(const float* x, int64_t rows, int64_t k, const void* weight, DType weightType, int64_t m, float* out,
                const float* bias, const float* residual, cudaStream_t stream) {
  if (rows == 0 || m == 0) return;
  dispatchFloat(weightType, [&](auto t) {
    using T = decltype(t);
    const T* w = static_cast<const T*>(weight);
    if (rows == 1) launchTyped<T, 1>(x, rows, k, w, m, out, bias, residual, stream);
    else if (rows == 2) launchTyped<T, 2>(x, rows, k, w, m, out, bias, residual, stream);
    else if (rows <= 4) launchTyped<T, 4>(x, rows, k, w, m, out, bias, residual, stream);
    else launchTyped<T, 8>(x, rows, k, w, m, out, bias, residual, stream);
  });
}

void launchGemvRowTiles(const float* x, int64_t rows, int64_t k, const void* weight, DType weightType, int64_t m, float* out,
                        const float* bias, const float* residual, cudaStream_t stream) {
  if (rows == 0 || m == 0) return;
  dispatchFloat(weightType, [&](auto t) {
    using T = decltype(t);
    launchTyped<T, 8>(x, rows, k, static_cast<const T*>(weight), m, out, bias, residual, stream, false);
  });
}

bool gemvFusable(int64_t rows, int64_t k, DType weightType, const void* x) {
  int vec = weightType == DType::F32 ? 4 : 8;
  return rows >= 1 && rows <= 2 && k % vec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void launchGemvGroup(const float* x, int64_t rows, int64_t k, DType weightType, const GemvTarget* targets, int count,
                     cudaStream_t stream) {
  bool aligned = gemvFusable(rows, k, weightType, x) && count <= 3;
  for (int i = 0; i < count; i++) aligned = aligned && reinterpret_cast<uintptr_t>(targets[i].weight) % 16 == 0;
  if (!aligned) {
    for (int i = 0; i < count; i++)
      launchGemv(x, rows, k, targets[i].weight, weightType, targets[i].m, targets[i].out, targets[i].bias, nullptr, stream);
    return;
  }
  dispatchFloat(weightType, [&](auto t) {
    using T = decltype(t);
    StreamJob<T> job = weightJobFor<T>(targets, count);
    launchStream(x, rows, k, job, false, stream);
  });
}

void launchGemvSwiglu(const float* x, int64_t rows, int64_t k, const void* gate, const void* up, DType weightType, int64_t m,
                      float* out, cudaStream_t stream) {
  dispatchFloat(weightType, [&](auto t) {
    using T = decltype(t);
    StreamJob<T> job{};
    job.count = 1;
    job.weight[0] = static_cast<const T*>(gate);
    job.weight[1] = static_cast<const T*>(up);
    job.out[0] = out;
    job.m[0] = m;
    launchStream(x, rows, k, job, true, stream);
  });
}

}  // namespace cuda
}  // namespace duo
