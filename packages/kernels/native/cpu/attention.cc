// CPU attention: causal (prefill and decode) with GQA over [kvHeads, capacity, headDim] caches of any float dtype or
// quantized (u8 code planes with fp16 scales), with DuoAttention's streaming heads (sinks + a ring, Λ mask) where the
// layout asks for them.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../quant.h"
#include "cpu-device.h"

namespace duo {

namespace {

// One cached key or value row: a pointer into an f32, f16 or bf16 cache (the kernel widens its elements as it reads
// them), or a quantized row dequantized into `buffer` (f32).
class RowReader {
 public:
  RowReader(const Tensor& cache, const void* streamData, const uint16_t* scales, const uint16_t* streamScales,
            const AttentionArgs& args)
      : main_(cache.data), stream_(streamData), scales_(scales), streamScales_(streamScales), dtype_(cache.dtype),
        capacity_(cache.shape[1]), headDim_(args.headDim), quant_(static_cast<KvQuant>(args.quant.scheme)),
        codeBytes_(args.quant.codeBytes), scaleHalves_(args.quant.scaleHalves), layout_(args.streaming) {}

  // The element type of the rows `row` returns: the cache's float dtype, or f32 for a quantized cache.
  DType rowType() const { return quant_ != KvQuant::None ? DType::F32 : dtype_; }

  // Row `slot` of KV head `kvHead` (in the streaming region when `streams`).
  const void* row(bool streams, int kvHead, int64_t slot, float* buffer) const {
    const int64_t index = streams ? layout_.streamingBelow(kvHead) * layout_.slots() + slot
                                  : layout_.fullRow(kvHead) * capacity_ + slot;
    const void* base = streams ? stream_ : main_;
    if (quant_ != KvQuant::None) {
      dequantizeKvRow(quant_, static_cast<const uint8_t*>(base) + index * codeBytes_,
                      (streams ? streamScales_ : scales_) + index * scaleHalves_, static_cast<int>(headDim_), buffer);
      return buffer;
    }
    return static_cast<const char*>(base) + index * headDim_ * dtypeBytes(dtype_);
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

// The kernel takes query rows kQueryBlock at a time with every query head of one KV head (GQA), and keys kKeyTile at a
// time: a tile's keys are transposed once into [channel][key] so a query's scores are FMAs of a broadcast query
// channel with a key row, and the value rows are read once per block rather than once per query row and head. The
// softmax runs online (running maximum and sum, as FlashAttention does). The body (attention-body.inc) is compiled for
// AVX-512 (16 lanes, up to four query heads at a time), for AVX2 + F16C + FMA (8 lanes, one head at a time) and for
// the baseline, and picked once per process by what the CPU supports.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyTile = 64;
constexpr int64_t kMaxHeadDim = 256;

// What every block of one attention call shares.
struct AttentionCall {
  const Tensor& q;
  Tensor& out;
  const AttentionArgs& args;
  const RowReader& keys;
  const RowReader& values;
  int64_t rows, headDim, group;
};

// Per-thread scratch of one call's blocks (scores: a tile's row for each of up to four heads of a pass; the buffers
// hold dequantized rows of a quantized cache).
struct BlockScratch {
  std::vector<float> keyBuffer, valueBuffer, transposed, scores, accumulator, maxima, sums;
  std::vector<const void*> keyRows, valueRows;
  std::vector<int64_t> keyPositions;
  BlockScratch(int64_t headDim, int64_t group, bool quantized)
      : keyBuffer(quantized ? kKeyTile * headDim : 0), valueBuffer(quantized ? kKeyTile * headDim : 0),
        transposed(headDim * kKeyTile), scores(4 * kKeyTile), accumulator(kQueryBlock * group * headDim),
        maxima(kQueryBlock * group), sums(kQueryBlock * group), keyRows(kKeyTile), valueRows(kKeyTile),
        keyPositions(kKeyTile) {}
};

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's _mm512_cvtph_ps (a known false positive)
#define DUO_ATTENTION_ISA 4
namespace v4 {
#include "attention-body.inc"
}  // namespace v4
#undef DUO_ATTENTION_ISA
#pragma GCC diagnostic pop
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define DUO_ATTENTION_ISA 3
namespace v3 {
#include "attention-body.inc"
}  // namespace v3
#undef DUO_ATTENTION_ISA
#pragma GCC pop_options
#define DUO_ATTENTION_ISA 1
namespace base {
#include "attention-body.inc"
}  // namespace base
#undef DUO_ATTENTION_ISA

// 4 (AVX-512), 3 (AVX2 + F16C + FMA) or 1 (baseline): the widest set this CPU runs (checked once).
int attentionIsa() {
  static const int level = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 1;
  return level;
}

void attend(ThreadPool& pool, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) {
  const bool quantized = args.quant.scheme != 0;
  if (quantized ? k.dtype != DType::U8 : !(k.dtype == DType::F32 || k.dtype == DType::BF16 || k.dtype == DType::F16)) {
    throw Error("DUO_ARG", quantized ? "quantized attention caches must be u8 code planes"
                                     : "attention caches must be f32, f16 or bf16");
  }
  if (args.headDim % 8 != 0 || args.headDim > kMaxHeadDim) {
    throw Error("DUO_ARG", "CPU attention supports head dims that are multiples of 8 up to 256, not " + std::to_string(args.headDim));
  }
  const RowReader keys(k, args.streaming.key, args.quant.keyScales, args.quant.streamKeyScales, args);
  const RowReader values(v, args.streaming.value, args.quant.valueScales, args.quant.streamValueScales, args);
  const int64_t rows = q.rows(), group = args.heads / args.kvHeads;
  const AttentionCall call{q, out, args, keys, values, rows, args.headDim, group};
  const int64_t blocks = (rows + kQueryBlock - 1) / kQueryBlock;
  // The 16-lane body needs whole vectors of channels.
  const int isa = attentionIsa() == 4 && args.headDim % 16 != 0 ? 3 : attentionIsa();
  pool.parallelFor(blocks * args.kvHeads, 1, [&](int64_t begin, int64_t end) {
    BlockScratch scratch(args.headDim, group, quantized);
    for (int64_t task = begin; task < end; task++) {
      if (isa == 4) v4::attendBlock(call, task, scratch);
      else if (isa == 3) v3::attendBlock(call, task, scratch);
      else base::attendBlock(call, task, scratch);
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

void CpuDevice::mergeAttention(const Tensor& parts, Tensor& out, int partCount, int heads, int headDim) {
  const int64_t rows = out.rows(), width = parts.cols();
  pool_.parallelFor(rows * heads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; task++) {
      const int64_t r = task / heads, head = task % heads;
      const auto lse = [&](int part) { return parts.as<float>()[(part * rows + r) * width + heads * headDim + head]; };
      float largest = -INFINITY;
      for (int part = 0; part < partCount; part++) largest = std::max(largest, lse(part));
      float* target = out.as<float>() + r * out.cols() + head * headDim;
      std::fill(target, target + headDim, 0.0f);
      if (largest == -INFINITY) continue;  // no part saw a key
      float total = 0.0f;
      for (int part = 0; part < partCount; part++) {
        const float weight = lse(part) == -INFINITY ? 0.0f : std::exp(lse(part) - largest);
        if (weight == 0.0f) continue;
        const float* source = parts.as<float>() + (part * rows + r) * width + head * headDim;
        for (int64_t i = 0; i < headDim; i++) target[i] += weight * source[i];
        total += weight;
      }
      const float inverse = 1.0f / total;
      for (int64_t i = 0; i < headDim; i++) target[i] *= inverse;
    }
  });
}

}  // namespace duo
