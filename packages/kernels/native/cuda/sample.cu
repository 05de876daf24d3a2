// CUDA sampling (Device::sample): one block per row picks a token by the documented rule — the argmax at temperature
// 0, else top-k, top-p and the inverse CDF at u over the tokens in order of falling logit — without sorting. Each cut
// of that order ("the tokens before this one") is a pair (key, index): every token with a larger logit, and the tokens
// of this logit up to this index. A cut is found by bisection on the logit's ordered bits (each step one pass over the
// row, counting and summing weights with a block reduction), then, among the tokens of the logit found, the n-th by
// index. Weights are f32 (expf) summed in a fixed order per launch: where u · total (or topP · total) falls within
// float rounding of a cumulative weight, the pick may differ from the CPU's float64 sums; logits that compare equal
// but differ in bits (−0 and +0) are ordered by their bits here.
#include <cfloat>
#include <cstdint>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;

// A float's bits, mapped so that unsigned order is float order.
__device__ __forceinline__ uint32_t orderedKey(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float keyValue(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The tokens before a cut of the falling order: logit key above `key`, or equal to it with index ≤ `index`.
struct Cut {
  uint32_t key;
  int index;
  __device__ __forceinline__ bool holds(uint32_t tokenKey, int token) const {
    return tokenKey > key || (tokenKey == key && token <= index);
  }
};
__device__ __forceinline__ Cut everything() { return Cut{0u, INT32_MAX}; }

struct Tally {
  float weight;
  int count;
};

// Sums `value` over the block; every thread gets the total. `scratch`: kSampleWarps entries.
template <typename T>
__device__ __forceinline__ T blockSum(T value, T* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // the scratch's last readers are done
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kSampleWarps; w++) total += scratch[w];
  return total;
}

struct SampleRow {
  const float* logits;
  int vocab;
  float maximum, temperature;
  float* floatScratch;
  int* intScratch;

  __device__ __forceinline__ float weight(float logit) const { return expf((logit - maximum) / temperature); }

  // Count and weight of the tokens within `outer` and `inner` whose key is at least `threshold`.
  __device__ Tally tally(uint32_t threshold, const Cut& outer, const Cut& inner) const {
    float weightSum = 0.0f;
    int count = 0;
    for (int token = threadIdx.x; token < vocab; token += kSampleThreads) {
      const float logit = logits[token];
      const uint32_t key = orderedKey(logit);
      if (key >= threshold && outer.holds(key, token) && inner.holds(key, token)) {
        weightSum += weight(logit);
        count++;
      }
    }
    return Tally{blockSum(weightSum, floatScratch), blockSum(count, intScratch)};
  }

  // The largest key whose tokens (within the cuts, that key and above) reach `target` by count (`byCount`) or weight;
  // `above` gets the tally of the keys above it, `atLeast` that of the key and above.
  __device__ uint32_t bisect(uint32_t low, uint32_t high, float target, bool byCount, const Cut& outer, const Cut& inner, Tally& above,
                             Tally& atLeast) const {
    above = Tally{0.0f, 0};
    atLeast = tally(low, outer, inner);
    while (low < high) {
      const uint32_t middle = low + (high - low + 1) / 2;
      const Tally measured = tally(middle, outer, inner);
      if ((byCount ? static_cast<float>(measured.count) : measured.weight) >= target) {
        low = middle;
        atLeast = measured;
      } else {
        high = middle - 1;
        above = measured;
      }
    }
    return low;
  }

  // The index of the n-th (from 1) token of key `key` within the cuts, in index order; threads take contiguous ranges.
  __device__ int nthIndex(uint32_t key, int n, const Cut& outer, const Cut& inner) const {
    const int span = (vocab + kSampleThreads - 1) / kSampleThreads;
    const int first = threadIdx.x * span, last = min(vocab, first + span);
    auto member = [&](int token) {
      const uint32_t tokenKey = orderedKey(logits[token]);
      return tokenKey == key && outer.holds(tokenKey, token) && inner.holds(tokenKey, token);
    };
    int count = 0;
    for (int token = first; token < last; token++) count += member(token);
    // Exclusive prefix of the counts over the threads.
    int inclusive = count;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    __syncthreads();
    if (lane == 31) intScratch[warp] = inclusive;
    __syncthreads();
    int before = inclusive - count, total = 0;
    for (int w = 0; w < kSampleWarps; w++) {
      if (w < warp) before += intScratch[w];
      total += intScratch[w];
    }
    n = max(1, min(n, total));  // float rounding may ask for one past the last
    __syncthreads();
    if (before < n && n <= before + count) {
      int seen = before;
      for (int token = first; token < last; token++) {
        if (member(token) && ++seen == n) {
          intScratch[kSampleWarps] = token;
          break;
        }
      }
    }
    __syncthreads();
    return intScratch[kSampleWarps];
  }
};

// The smallest m ≥ 1 (at most `ties`) with above + m · weight ≥ target.
__device__ __forceinline__ int tiesNeeded(float target, float above, float weight, int ties) {
  const float needed = ceilf((target - above) / weight);
  return max(1, min(ties, needed > static_cast<float>(ties) ? ties : static_cast<int>(needed)));
}

__global__ void __launch_bounds__(kSampleThreads) sampleKernel(const float* logits, const float* settings, int32_t* out, int vocab) {
  dependOnPrevious();
  __shared__ float floatScratch[kSampleWarps];
  __shared__ int intScratch[kSampleWarps + 1];
  __shared__ float bestValue[kSampleWarps];
  __shared__ int bestIndex[kSampleWarps];
  const int64_t row = blockIdx.x;
  logits += row * vocab;
  const float temperature = settings[row * 4], topP = settings[row * 4 + 2], u = settings[row * 4 + 3];
  const int64_t topK = static_cast<int64_t>(settings[row * 4 + 1]);

  // The first maximum, and the smallest key (the bisections' floor).
  float best = -INFINITY;
  int index = INT32_MAX;
  uint32_t lowest = 0xffffffffu;
  for (int token = threadIdx.x; token < vocab; token += kSampleThreads) {
    const float logit = logits[token];
    if (logit > best || index == INT32_MAX) {
      best = logit;
      index = token;
    }
    lowest = min(lowest, orderedKey(logit));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float otherValue = __shfl_xor_sync(0xffffffffu, best, offset);
    const int otherIndex = __shfl_xor_sync(0xffffffffu, index, offset);
    if (otherValue > best || (otherValue == best && otherIndex < index)) {
      best = otherValue;
      index = otherIndex;
    }
    lowest = min(lowest, __shfl_xor_sync(0xffffffffu, lowest, offset));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    bestValue[warp] = best;
    bestIndex[warp] = index;
    intScratch[warp] = static_cast<int>(lowest);
  }
  __syncthreads();
  best = bestValue[0];
  index = bestIndex[0];
  lowest = static_cast<uint32_t>(intScratch[0]);
  for (int w = 1; w < kSampleWarps; w++) {
    if (bestValue[w] > best || (bestValue[w] == best && bestIndex[w] < index)) {
      best = bestValue[w];
      index = bestIndex[w];
    }
    lowest = min(lowest, static_cast<uint32_t>(intScratch[w]));
  }
  if (temperature <= 0.0f) {
    if (threadIdx.x == 0) out[row] = index;
    return;
  }
  const SampleRow sample{logits, vocab, best, temperature, floatScratch, intScratch};
  const uint32_t highest = orderedKey(best);
  const Cut all = everything();
  Tally above, atLeast;

  // Top-k: the cut after the k-th token.
  Cut kept = all;
  if (topK > 0 && topK < vocab) {
    const uint32_t key = sample.bisect(lowest, highest, static_cast<float>(topK), true, all, all, above, atLeast);
    kept = Cut{key, sample.nthIndex(key, static_cast<int>(topK) - above.count, all, all)};
  }
  // Top-p: the shortest prefix of the kept tokens whose weight reaches topP of theirs.
  Cut prefix = all;
  const float total = sample.tally(lowest, kept, all).weight;
  if (topP < 1.0f) {
    const float target = topP * total;
    const uint32_t key = sample.bisect(lowest, highest, target, false, kept, all, above, atLeast);
    const int ties = tiesNeeded(target, above.weight, sample.weight(keyValue(key)), atLeast.count - above.count);
    prefix = Cut{key, sample.nthIndex(key, ties, kept, all)};
  }
  // The first token whose cumulative weight reaches u · the prefix's (summed as the bisection sums, so u < 1 always
  // lands on a token of the prefix).
  const float target = u * (topP < 1.0f ? sample.tally(lowest, kept, prefix).weight : total);
  const uint32_t key = sample.bisect(lowest, highest, target, false, kept, prefix, above, atLeast);
  const int ties = tiesNeeded(target, above.weight, sample.weight(keyValue(key)), atLeast.count - above.count);
  const int chosen = sample.nthIndex(key, ties, kept, prefix);
  if (threadIdx.x == 0) out[row] = chosen;
}

}  // namespace

void launchSample(const float* logits, const float* settings, int32_t* out, int64_t rows, int64_t vocab, cudaStream_t stream) {
  if (rows == 0) return;
  if (vocab > INT32_MAX / 2) throw Error("DUO_ARG", "sample supports vocabularies below 2^30 tokens");
  launchChained(sampleKernel, dim3(static_cast<unsigned>(rows)), dim3(kSampleThreads), 0, stream, logits, settings, out,
                static_cast<int>(vocab));
  checkLaunch("sample");
}

}  // namespace cuda
}  // namespace duo
