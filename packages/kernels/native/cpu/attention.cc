// CPU attention: causal (prefill and decode) with GQA over [kvHeads, capacity, headDim] caches of any float dtype,
// with DuoAttention's streaming heads (sinks + a ring, Λ mask) where the layout asks for them.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu-device.h"

namespace duo {

namespace {

inline float widen(float v) { return v; }
struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };
inline float widen(Bf16 v) { return bf16ToFloat(v.bits); }
inline float widen(F16 v) { return f16ToFloat(v.bits); }

template <typename T>
void attendTyped(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  const int64_t rows = q.rows(), capacity = k.shape[1], headDim = args.headDim;
  const int64_t group = args.heads / args.kvHeads;
  const StreamingLayout& layout = args.streaming;
  // Work per task is proportional to the visible keys; small problems run on the calling thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, args.keyLength * headDim));
  pool.parallelFor(rows * args.heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<int64_t> slots;
    std::vector<float> accumulator(headDim);
    for (int64_t task = begin; task < end; task++) {
      const int64_t r = task / args.heads, head = task % args.heads, kvHead = head / group;
      const int64_t position = args.queryStart + r;
      const int64_t keyEnd = std::min(args.keyLength, position + 1);
      const bool streams = layout.streams(static_cast<int>(kvHead));
      const KeyRange range = keyRangeFor(layout, streams, keyEnd, position, args.queryStart);
      const float* query = q.as<float>() + r * q.cols() + head * headDim;
      float* target = out.as<float>() + r * out.cols() + head * headDim;
      if (range.count <= 0) {
        std::fill(target, target + headDim, 0.0f);
        continue;
      }
      const int64_t start = streams ? layout.headStart(static_cast<int>(kvHead), headDim) : kvHead * capacity * headDim;
      const T* headKeys = static_cast<const T*>(streams ? layout.key : k.data) + start;
      const T* headValues = static_cast<const T*>(streams ? layout.value : v.data) + start;
      scores.resize(range.count);
      slots.resize(range.count);
      float maximum = -INFINITY;
      for (int64_t index = 0; index < range.count; index++) {
        const int64_t key = range.position(index);
        slots[index] = streams ? layout.slot(key) : key;
        const T* keyRow = headKeys + slots[index] * headDim;
        float dot = 0;
        if constexpr (std::is_same_v<T, float>) {
          dot = dotProduct(query, keyRow, headDim);
        } else {
          for (int64_t i = 0; i < headDim; i++) dot += query[i] * widen(keyRow[i]);
        }
        scores[index] = keyVisible(layout, streams, position, key, args.queryStart) ? dot * args.scale : -INFINITY;
        maximum = std::max(maximum, scores[index]);
      }
      std::fill(accumulator.begin(), accumulator.end(), 0.0f);
      float sum = 0;
      for (int64_t index = 0; index < range.count; index++) {
        if (scores[index] == -INFINITY) continue;
        float weight = std::exp(scores[index] - maximum);
        sum += weight;
        const T* value = headValues + slots[index] * headDim;
        if constexpr (std::is_same_v<T, float>) {
          addScaled(weight, value, accumulator.data(), headDim);
        } else {
          for (int64_t i = 0; i < headDim; i++) accumulator[i] += weight * widen(value[i]);
        }
      }
      float inverse = 1.0f / sum;
      for (int64_t i = 0; i < headDim; i++) target[i] = accumulator[i] * inverse;
    }
  });
}

void attend(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  switch (k.dtype) {
    case DType::F32: attendTyped<float>(pool, q, k, v, out, args); break;
    case DType::BF16: attendTyped<Bf16>(pool, q, k, v, out, args); break;
    case DType::F16: attendTyped<F16>(pool, q, k, v, out, args); break;
    default: throw Error("DUO_ARG", "attention caches must be f32, f16 or bf16");
  }
}

}  // namespace

void CpuDevice::attentionPrefill(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  attend(pool_, q, k, v, out, args);
}

void CpuDevice::attentionDecode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  AttentionArgs decode = args;
  if (args.lengthFrom) decode.keyLength = static_cast<int64_t>(args.lengthFrom[0]) + 1;
  decode.queryStart = decode.keyLength - 1;
  attend(pool_, q, k, v, out, decode);
}

}  // namespace duo
