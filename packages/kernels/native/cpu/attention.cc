// CPU attention: causal (prefill and decode) with GQA over [kvHeads, capacity, headDim] caches of any float dtype or
// quantized (u8 code planes with fp16 scales), with DuoAttention's streaming heads (sinks + a ring, Λ mask) where the
// layout asks for them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

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
    const int64_t index = streams ? layout_.streamingBelow(kvHead) * layout_.slots() + slot
                                  : layout_.fullRow(kvHead) * capacity_ + slot;
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

// The kernel takes query rows kQueryBlock at a time with every query head of one KV head (GQA), and keys kKeyTile at a
// time: a tile's keys are transposed once into [channel][key] so a query's 8 scores at a time are FMAs of a broadcast
// query channel with a key row, and the value rows are read once per block rather than once per query row and head.
// The softmax runs online (running maximum and sum, as FlashAttention does). The body is compiled twice — for AVX2 +
// FMA and for the baseline — and picked once per process by what the CPU supports.
constexpr int64_t kQueryBlock = 16;
constexpr int64_t kKeyTile = 64;
constexpr int64_t kMaxHeadDim = 256;

typedef float Vec8 __attribute__((vector_size(32)));

inline Vec8 load8(const float* p) {
  Vec8 v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, Vec8 v) { memcpy(p, &v, sizeof(v)); }

// What every block of one attention call shares.
struct AttentionCall {
  const Tensor& q;
  Tensor& out;
  const AttentionArgs& args;
  const RowReader& keys;
  const RowReader& values;
  int64_t rows, headDim, group;
};

// Per-thread scratch of one call's blocks.
struct BlockScratch {
  std::vector<float> keyBuffer, valueBuffer, transposed, scores, accumulator, maxima, sums;
  std::vector<const float*> keyRows, valueRows;
  std::vector<int64_t> keyPositions;
  BlockScratch(int64_t headDim, int64_t group)
      : keyBuffer(kKeyTile * headDim), valueBuffer(kKeyTile * headDim), transposed(headDim * kKeyTile), scores(kKeyTile),
        accumulator(kQueryBlock * group * headDim), maxima(kQueryBlock * group), sums(kQueryBlock * group),
        keyRows(kKeyTile), valueRows(kKeyTile), keyPositions(kKeyTile) {}
};

// e^x for `count` (a multiple of 8) values in place: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r
// (relative error about 2e-7) and 2^n from the exponent bits; −∞ (a masked score) gives exactly 0.
__attribute__((always_inline)) inline void expInPlace(float* values, int64_t count) {
  typedef int32_t IVec8 __attribute__((vector_size(32)));
  for (int64_t i = 0; i < count; i += 8) {
    const Vec8 x = load8(values + i);
    Vec8 c = x < -87.0f ? Vec8{} - 87.0f : x;
    const Vec8 t = c * 1.44269504f + 0.5f;
    IVec8 n = __builtin_convertvector(t, IVec8);  // truncates: one less where t < 0 and not whole
    const Vec8 truncated = __builtin_convertvector(n, Vec8);
    n = truncated > t ? n - 1 : n;
    const Vec8 fn = __builtin_convertvector(n, Vec8);
    const Vec8 r = (c - fn * 0.693145752f) - fn * 1.42860677e-6f;
    const Vec8 p =
        1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f + r * 0.00138888892f)))));
    const IVec8 bits = (n + 127) << 23;
    Vec8 scale;
    memcpy(&scale, &bits, sizeof(scale));
    const Vec8 result = p * scale;
    store8(values + i, x < -87.0f ? Vec8{} : result);
  }
}

// One (query block, KV head) task.
__attribute__((always_inline)) inline void attendBlockBody(const AttentionCall& call, int64_t task, BlockScratch& scratch) {
  const AttentionArgs& args = call.args;
  const StreamingLayout& layout = args.streaming;
  const int64_t headDim = call.headDim, group = call.group, lanes = headDim / 8;
  const int64_t block = task / args.kvHeads;
  const int kvHead = static_cast<int>(task % args.kvHeads);
  const int64_t first = block * kQueryBlock, last = std::min(call.rows, first + kQueryBlock);
  const int64_t firstPosition = args.queryStart + first, lastPosition = args.queryStart + last - 1;
  const int64_t keyEnd = std::min(args.keyLength, lastPosition + 1);
  const bool streams = layout.streams(kvHead);
  const KeyRange range = keyRangeFor(layout, streams, keyEnd, firstPosition, args.queryStart);
  float* scores = scratch.scores.data();
  float* transposed = scratch.transposed.data();
  std::fill(scratch.accumulator.begin(), scratch.accumulator.end(), 0.0f);
  std::fill(scratch.maxima.begin(), scratch.maxima.end(), -INFINITY);
  std::fill(scratch.sums.begin(), scratch.sums.end(), 0.0f);
  for (int64_t tile = 0; tile < range.count; tile += kKeyTile) {
    const int64_t count = std::min(kKeyTile, range.count - tile);
    for (int64_t j = 0; j < count; j++) {
      scratch.keyPositions[j] = range.position(tile + j);
      const int64_t slot = streams ? layout.slot(scratch.keyPositions[j]) : scratch.keyPositions[j];
      scratch.keyRows[j] = call.keys.row(streams, kvHead, slot, scratch.keyBuffer.data() + j * headDim);
      scratch.valueRows[j] = call.values.row(streams, kvHead, slot, scratch.valueBuffer.data() + j * headDim);
    }
    // Keys as [channel][kKeyTile]; missing keys are zeros (their scores are masked).
    for (int64_t c = 0; c < headDim; c++) {
      float* column = transposed + c * kKeyTile;
      for (int64_t j = 0; j < count; j++) column[j] = scratch.keyRows[j][c];
      for (int64_t j = count; j < kKeyTile; j++) column[j] = 0.0f;
    }
    const int64_t tileLast = scratch.keyPositions[count - 1];
    for (int64_t r = first; r < last; r++) {
      const int64_t position = args.queryStart + r;
      if (scratch.keyPositions[0] > position) continue;  // the whole tile lies after this row
      // Full heads see every key of a tile that ends at or before the row; otherwise (the row's own tile, or a
      // streaming head's Λ mask) each key is checked.
      const bool allVisible = !streams && tileLast <= position && count == kKeyTile;
      for (int64_t g = 0; g < group; g++) {
        const int64_t vector = (r - first) * group + g;
        const float* query = call.q.as<float>() + r * call.q.cols() + (kvHead * group + g) * headDim;
        // Eight independent chains of FMAs (one per 8 keys), so the latency of each hides behind the others.
        Vec8 sums[kKeyTile / 8] = {};
        for (int64_t c = 0; c < headDim; c++) {
          const float channel = query[c];
          for (int64_t chunk = 0; chunk < kKeyTile / 8; chunk++)
            sums[chunk] += channel * load8(transposed + c * kKeyTile + chunk * 8);
        }
        for (int64_t chunk = 0; chunk < kKeyTile / 8; chunk++) store8(scores + chunk * 8, sums[chunk] * args.scale);
        float tileMax = -INFINITY;
        for (int64_t j = 0; j < kKeyTile; j++) {
          if (!allVisible &&
              (j >= count || !keyVisible(layout, streams, position, scratch.keyPositions[j], args.queryStart))) {
            scores[j] = -INFINITY;
          }
          tileMax = std::max(tileMax, scores[j]);
        }
        if (tileMax == -INFINITY) continue;
        float& maximum = scratch.maxima[vector];
        const float updated = std::max(maximum, tileMax);
        const float correction = maximum == -INFINITY ? 0.0f : std::exp(maximum - updated);
        maximum = updated;
        for (int64_t j = 0; j < kKeyTile; j++) scores[j] -= updated;
        expInPlace(scores, kKeyTile);
        float tileSum = 0.0f;
        for (int64_t j = 0; j < count; j++) tileSum += scores[j];
        scratch.sums[vector] = scratch.sums[vector] * correction + tileSum;
        float* acc = scratch.accumulator.data() + vector * headDim;
        // acc = acc · correction + Σ_j p_j · v_j, in groups of eight 8-channel chains held in registers.
        for (int64_t lane = 0; lane < lanes; lane += 8) {
          const int64_t width = lanes - lane >= 8 ? 8 : lanes - lane;
          if (width == 8) {  // the common case, unrolled: eight chains in registers
            Vec8 value[8];
            for (int64_t l = 0; l < 8; l++) value[l] = load8(acc + (lane + l) * 8) * correction;
            for (int64_t j = 0; j < count; j++) {
              const float weight = scores[j];
              const float* row = scratch.valueRows[j] + lane * 8;
              for (int64_t l = 0; l < 8; l++) value[l] += weight * load8(row + l * 8);
            }
            for (int64_t l = 0; l < 8; l++) store8(acc + (lane + l) * 8, value[l]);
            continue;
          }
          Vec8 value[8];
          for (int64_t l = 0; l < width; l++) value[l] = load8(acc + (lane + l) * 8) * correction;
          for (int64_t j = 0; j < count; j++) {
            const float weight = scores[j];
            const float* row = scratch.valueRows[j] + lane * 8;
            for (int64_t l = 0; l < width; l++) value[l] += weight * load8(row + l * 8);
          }
          for (int64_t l = 0; l < width; l++) store8(acc + (lane + l) * 8, value[l]);
        }
      }
    }
  }
  for (int64_t r = first; r < last; r++) {
    for (int64_t g = 0; g < group; g++) {
      const int64_t vector = (r - first) * group + g;
      float* target = call.out.as<float>() + r * call.out.cols() + (kvHead * group + g) * headDim;
      const float* acc = scratch.accumulator.data() + vector * headDim;
      const float inverse = scratch.sums[vector] > 0.0f ? 1.0f / scratch.sums[vector] : 0.0f;
      for (int64_t i = 0; i < headDim; i++) target[i] = acc[i] * inverse;
    }
  }
}

__attribute__((target("avx2,fma"))) void attendBlockWide(const AttentionCall& call, int64_t task, BlockScratch& scratch) {
  attendBlockBody(call, task, scratch);
}
void attendBlockBaseline(const AttentionCall& call, int64_t task, BlockScratch& scratch) { attendBlockBody(call, task, scratch); }

bool wideUnits() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
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
  const bool wide = wideUnits();
  pool.parallelFor(blocks * args.kvHeads, 1, [&](int64_t begin, int64_t end) {
    BlockScratch scratch(args.headDim, group);
    for (int64_t task = begin; task < end; task++) {
      if (wide) attendBlockWide(call, task, scratch);
      else attendBlockBaseline(call, task, scratch);
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
