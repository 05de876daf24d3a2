// What the device benchmarks share (skinny-bench.cu, prefill-bench.cu): deterministic fills — a hash of the index and
// a seed, uniform in [−scale/2, scale/2), as bf16 or f32 — and the median of timings.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <vector>

__global__ void fillHalf(__nv_bfloat16* w, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    w[i] = __float2bfloat16((static_cast<float>(h) / 4294967296.0f - 0.5f) * scale);
  }
}
__global__ void fillFloat(float* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2246822519u ^ seed;
    h ^= h >> 15; h *= 2654435761u; h ^= h >> 13;
    x[i] = (static_cast<float>(h) / 4294967296.0f - 0.5f) * scale;
  }
}

inline double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}
