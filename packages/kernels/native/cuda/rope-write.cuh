// The RoPE + cache write of plain caches, one block's work: shared by the single-sequence kernel (elementwise.cu) and
// the batched one (quantize.cu), so both write the same bits.
#pragma once
#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// One block of the RoPE + cache write of plain (f32 / f16 / bf16) caches, its threads over the channel pairs: it rotates
// query or key head `head` (heads, then KV heads) of row `row` (angle in double, so positions in the millions keep
// their phase); a key block also writes the rotated key pair and the value pair into the caches at positions[row].
template <typename T>
__device__ __forceinline__ void ropeWriteCacheBlock(float* q, float* k, const float* v, const int32_t* positions,
                                                    const float* frequencies, int heads, int kvHeads, int headDim, bool interleaved,
                                                    T* keyCache, T* valueCache, int64_t capacity, const StreamingLayout& streaming,
                                                    int64_t row, int head) {
  const int half = headDim / 2;
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
      if (!streams && !streaming.shard.owns(positions[row])) continue;  // another rank's chunk (context parallelism)
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

}  // namespace cuda
}  // namespace duo
