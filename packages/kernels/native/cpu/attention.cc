// CPU attention: causal (prefill and decode) with GQA over [kvHeads, capacity, headDim] caches of any float dtype or
// quantized (u8 code planes with fp16 scales), with DuoAttention's streaming heads (sinks + a ring, Λ mask) where the
// layout asks for them.
#include <algorithm>
#include <cmath>

#include "../quant.h"
#include "cpu-device.h"

namespace duo {

namespace {

// One cached key or value row as f32: a pointer into an f32 cache, or the row widened / dequantized into `buffer`.
class RowReader {
 public:
  RowReader(const Tensor& cache, const void* streamData, const uint16_t* scales, const uint16_t* streamScales,
            const AttentionArgs& args)
      : main_(cache.data), stream_(streamData), scales_(scales), streamScales_(streamScales), dtype_(cache.dtype),
        capacity_(cache.shape[1]), headDim_(args.headDim), quant_(static_cast<KvQuant>(args.quant.scheme)),
        codeBytes_(args.quant.codeBytes), scaleHalves_(args.quant.scaleHalves), layout_(args.streaming) {}

  // Row `slot` of KV head `kvHead` (in the streaming region when `streams`).
  const float* row(bool streams, int kvHead, int64_t slot, float* buffer) const {
    const int64_t index = streams ? (kvHead - layout_.retrievalKvHeads) * layout_.slots() + slot
                                  : static_cast<int64_t>(kvHead) * capacity_ + slot;
    const void* base = streams ? stream_ : main_;
    if (quant_ != KvQuant::None) {
      dequantizeKvRow(quant_, static_cast<const uint8_t*>(base) + index * codeBytes_,
                      (streams ? streamScales_ : scales_) + index * scaleHalves_, static_cast<int>(headDim_), buffer);
      return buffer;
    }
    if (dtype_ == DType::F32) return static_cast<const float*>(base) + index * headDim_;
    loadFloats(base, dtype_, index * headDim_, headDim_, buffer);
    return buffer;
  }

 private:
  const void* main_;
  const void* stream_;
  const uint16_t* scales_;
  const uint16_t* streamScales_;
  DType dtype_;
  int64_t capacity_, headDim_;
  KvQuant quant_;
  int64_t codeBytes_, scaleHalves_;
  StreamingLayout layout_;
};

void attend(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  const bool quantized = args.quant.scheme != 0;
  if (quantized ? k.dtype != DType::U8 : !(k.dtype == DType::F32 || k.dtype == DType::BF16 || k.dtype == DType::F16)) {
    throw Error("DUO_ARG", quantized ? "quantized attention caches must be u8 code planes"
                                     : "attention caches must be f32, f16 or bf16");
  }
  const int64_t rows = q.rows(), headDim = args.headDim;
  const int64_t group = args.heads / args.kvHeads;
  const StreamingLayout& layout = args.streaming;
  const RowReader keys(k, layout.key, args.quant.keyScales, args.quant.streamKeyScales, args);
  const RowReader values(v, layout.value, args.quant.valueScales, args.quant.streamValueScales, args);
  // Work per task is proportional to the visible keys; small problems run on the calling thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, args.keyLength * headDim));
  pool.parallelFor(rows * args.heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, accumulator(headDim), buffer(headDim);
    std::vector<int64_t> slots;
    for (int64_t task = begin; task < end; task++) {
      const int64_t r = task / args.heads, head = task % args.heads;
      const int kvHead = static_cast<int>(head / group);
      const int64_t position = args.queryStart + r;
      const int64_t keyEnd = std::min(args.keyLength, position + 1);
      const bool streams = layout.streams(kvHead);
      const KeyRange range = keyRangeFor(layout, streams, keyEnd, position, args.queryStart);
      const float* query = q.as<float>() + r * q.cols() + head * headDim;
      float* target = out.as<float>() + r * out.cols() + head * headDim;
      if (range.count <= 0) {
        std::fill(target, target + headDim, 0.0f);
        continue;
      }
      scores.resize(range.count);
      slots.resize(range.count);
      float maximum = -INFINITY;
      for (int64_t index = 0; index < range.count; index++) {
        const int64_t key = range.position(index);
        slots[index] = streams ? layout.slot(key) : key;
        const float dot = dotProduct(query, keys.row(streams, kvHead, slots[index], buffer.data()), headDim);
        scores[index] = keyVisible(layout, streams, position, key, args.queryStart) ? dot * args.scale : -INFINITY;
        maximum = std::max(maximum, scores[index]);
      }
      std::fill(accumulator.begin(), accumulator.end(), 0.0f);
      float sum = 0;
      for (int64_t index = 0; index < range.count; index++) {
        if (scores[index] == -INFINITY) continue;
        const float weight = std::exp(scores[index] - maximum);
        sum += weight;
        addScaled(weight, values.row(streams, kvHead, slots[index], buffer.data()), accumulator.data(), headDim);
      }
      const float inverse = 1.0f / sum;
      for (int64_t i = 0; i < headDim; i++) target[i] = accumulator[i] * inverse;
    }
  });
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
