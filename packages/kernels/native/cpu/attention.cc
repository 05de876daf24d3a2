// CPU attention: causal (prefill and decode) with GQA over [kvHeads, capacity, headDim] caches of any float dtype.
#include <algorithm>
#include <cmath>

#include "cpu-device.h"

namespace duo {

namespace {

void attend(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  int64_t rows = q.rows();
  int64_t capacity = k.shape[1];
  int64_t headDim = args.headDim;
  int64_t group = args.heads / args.kvHeads;
  pool.parallelFor(rows * args.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, key(headDim), value(headDim), accumulator(headDim);
    for (int64_t task = begin; task < end; task++) {
      int64_t r = task / args.heads, head = task % args.heads, kvHead = head / group;
      int64_t visible = std::min(args.keyLength, args.queryStart + r + 1);
      const float* query = q.as<float>() + r * q.cols() + head * headDim;
      float* target = out.as<float>() + r * out.cols() + head * headDim;
      if (visible <= 0) {
        std::fill(target, target + headDim, 0.0f);
        continue;
      }
      scores.resize(visible);
      float maximum = -INFINITY;
      for (int64_t j = 0; j < visible; j++) {
        loadFloats(k.data, k.dtype, (kvHead * capacity + j) * headDim, headDim, key.data());
        float dot = 0;
        for (int64_t i = 0; i < headDim; i++) dot += query[i] * key[i];
        scores[j] = dot * args.scale;
        maximum = std::max(maximum, scores[j]);
      }
      std::fill(accumulator.begin(), accumulator.end(), 0.0f);
      float sum = 0;
      for (int64_t j = 0; j < visible; j++) {
        float weight = std::exp(scores[j] - maximum);
        sum += weight;
        loadFloats(v.data, v.dtype, (kvHead * capacity + j) * headDim, headDim, value.data());
        for (int64_t i = 0; i < headDim; i++) accumulator[i] += weight * value[i];
      }
      for (int64_t i = 0; i < headDim; i++) target[i] = accumulator[i] / sum;
    }
  });
}

}  // namespace

void CpuDevice::attentionPrefill(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  attend(pool_, q, k, v, out, args);
}

void CpuDevice::attentionDecode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  AttentionArgs decode = args;
  decode.queryStart = args.keyLength - 1;
  attend(pool_, q, k, v, out, decode);
}

}  // namespace duo
