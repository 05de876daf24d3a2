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
// time: a tile's keys are transposed once into [channel][key] so a query's scores are FMAs of a broadcast query
// channel with a key row, and the value rows are read once per block rather than once per query row and head. The
// softmax runs online (running maximum and sum, as FlashAttention does). The body is compiled for AVX-512 (16 lanes,
// up to four query heads at a time: sixteen independent FMA chains that share each key and value load), for AVX2 +
// FMA (8 lanes, one head at a time) and for the baseline, and picked once per process by what the CPU supports.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyTile = 64;
constexpr int64_t kMaxHeadDim = 256;

// The vector types of a lane width, and how many query heads share a pass over a tile.
template <int W>
struct Width;
template <>
struct Width<8> {
  typedef float Vec __attribute__((vector_size(32)));
  typedef int32_t Ints __attribute__((vector_size(32)));
  static constexpr int kHeads = 1;
};
template <>
struct Width<16> {
  typedef float Vec __attribute__((vector_size(64)));
  typedef int32_t Ints __attribute__((vector_size(64)));
  static constexpr int kHeads = 4;
};

template <int W>
inline typename Width<W>::Vec loadVec(const float* p) {
  typename Width<W>::Vec v;
  memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
inline void storeVec(float* p, typename Width<W>::Vec v) {
  memcpy(p, &v, sizeof(v));
}

// The sum of a vector's lanes, halves first.
template <int W>
__attribute__((always_inline)) inline float sumLanes(typename Width<W>::Vec v) {
  typedef float Vec4 __attribute__((vector_size(16)));
  Vec4 four;
  if constexpr (W == 16) {
    typedef float Vec8 __attribute__((vector_size(32)));
    const Vec8 eight = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                       __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    four = __builtin_shufflevector(eight, eight, 0, 1, 2, 3) + __builtin_shufflevector(eight, eight, 4, 5, 6, 7);
  } else {
    four = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  }
  return (four[0] + four[2]) + (four[1] + four[3]);
}

// What every block of one attention call shares.
struct AttentionCall {
  const Tensor& q;
  Tensor& out;
  const AttentionArgs& args;
  const RowReader& keys;
  const RowReader& values;
  int64_t rows, headDim, group;
};

// Per-thread scratch of one call's blocks (scores: a tile's row for each of up to four heads of a pass).
struct BlockScratch {
  std::vector<float> keyBuffer, valueBuffer, transposed, scores, accumulator, maxima, sums;
  std::vector<const float*> keyRows, valueRows;
  std::vector<int64_t> keyPositions;
  BlockScratch(int64_t headDim, int64_t group)
      : keyBuffer(kKeyTile * headDim), valueBuffer(kKeyTile * headDim), transposed(headDim * kKeyTile),
        scores(4 * kKeyTile), accumulator(kQueryBlock * group * headDim), maxima(kQueryBlock * group),
        sums(kQueryBlock * group), keyRows(kKeyTile), valueRows(kKeyTile), keyPositions(kKeyTile) {}
};

// e^x lane by lane: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r (relative error about 2e-7) and 2^n
// from the exponent bits; −∞ (a masked score) gives exactly 0.
template <int W>
__attribute__((always_inline)) inline typename Width<W>::Vec expLanes(typename Width<W>::Vec x) {
  using Vec = typename Width<W>::Vec;
  using Ints = typename Width<W>::Ints;
  const Vec c = x < -87.0f ? Vec{} - 87.0f : x;
  const Vec t = c * 1.44269504f + 0.5f;
  Ints n = __builtin_convertvector(t, Ints);  // truncates: one less where t < 0 and not whole
  const Vec truncated = __builtin_convertvector(n, Vec);
  n = truncated > t ? n - 1 : n;
  const Vec fn = __builtin_convertvector(n, Vec);
  const Vec r = (c - fn * 0.693145752f) - fn * 1.42860677e-6f;
  const Vec p =
      1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f + r * 0.00138888892f)))));
  const Ints bits = (n + 127) << 23;
  Vec scale;
  memcpy(&scale, &bits, sizeof(scale));
  const Vec result = p * scale;
  return x < -87.0f ? Vec{} : result;
}

// acc[h] = acc[h] · correction[h] + Σ_j p[h][j] · v_j over LANES vectors of W channels from channel `base`, for the H
// heads of a pass: H · LANES chains in registers, each value load shared by the heads.
template <int W, int H, int LANES>
__attribute__((always_inline)) inline void accumulateValues(float* const (&acc)[H], const float* const (&p)[H],
                                                            const float (&correction)[H], const float* const* valueRows,
                                                            int64_t count, int64_t base) {
  using Vec = typename Width<W>::Vec;
  Vec value[H][LANES];
  for (int h = 0; h < H; h++)
    for (int l = 0; l < LANES; l++) value[h][l] = loadVec<W>(acc[h] + base + l * W) * correction[h];
  for (int64_t j = 0; j < count; j++) {
    const float* row = valueRows[j] + base;
    for (int l = 0; l < LANES; l++) {
      const Vec v = loadVec<W>(row + l * W);
      for (int h = 0; h < H; h++) value[h][l] += p[h][j] * v;
    }
  }
  for (int h = 0; h < H; h++)
    for (int l = 0; l < LANES; l++) storeVec<W>(acc[h] + base + l * W, value[h][l]);
}

// One tile for query heads g … g + H − 1 of row r: scores (from the transposed keys, or `direct`ly from the key rows),
// the online softmax's update, and the values.
template <int W, int H>
__attribute__((always_inline)) inline void attendHeads(const AttentionCall& call, BlockScratch& scratch, int64_t first,
                                                       int64_t r, int64_t g, int kvHead, bool streams, bool allVisible,
                                                       bool direct, int64_t count) {
  using Vec = typename Width<W>::Vec;
  constexpr int kChunks = kKeyTile / W;
  const AttentionArgs& args = call.args;
  const int64_t headDim = call.headDim, position = args.queryStart + r;
  const float* query[H];
  for (int h = 0; h < H; h++) query[h] = call.q.as<float>() + r * call.q.cols() + (kvHead * call.group + g + h) * headDim;
  if (direct) {
    // Few rows share the tile: each key's dot products directly (lanes over channels, then summed), no transposition.
    for (int64_t j = 0; j < count; j++) {
      const float* key = scratch.keyRows[j];
      Vec parts[H] = {};
      for (int64_t c = 0; c < headDim; c += W) {
        const Vec keys = loadVec<W>(key + c);
        for (int h = 0; h < H; h++) parts[h] += loadVec<W>(query[h] + c) * keys;
      }
      for (int h = 0; h < H; h++) scratch.scores[h * kKeyTile + j] = sumLanes<W>(parts[h]) * args.scale;
    }
  } else {
    // H · kChunks independent chains of FMAs, so the latency of each hides behind the others.
    Vec sums[H][kChunks] = {};
    const float* transposed = scratch.transposed.data();
    for (int64_t c = 0; c < headDim; c++) {
      for (int chunk = 0; chunk < kChunks; chunk++) {
        const Vec keys = loadVec<W>(transposed + c * kKeyTile + chunk * W);
        for (int h = 0; h < H; h++) sums[h][chunk] += query[h][c] * keys;
      }
    }
    for (int h = 0; h < H; h++)
      for (int chunk = 0; chunk < kChunks; chunk++)
        storeVec<W>(scratch.scores.data() + h * kKeyTile + chunk * W, sums[h][chunk] * args.scale);
  }
  float* acc[H];
  const float* p[H];
  float correction[H];
  for (int h = 0; h < H; h++) {
    const int64_t vector = (r - first) * call.group + g + h;
    float* scores = scratch.scores.data() + h * kKeyTile;
    if (!allVisible) {
      for (int64_t j = 0; j < kKeyTile; j++)
        if (j >= count || !keyVisible(args.streaming, streams, position, scratch.keyPositions[j], args.queryStart))
          scores[j] = -INFINITY;
    }
    Vec largest = loadVec<W>(scores);
    for (int chunk = 1; chunk < kChunks; chunk++) {
      const Vec next = loadVec<W>(scores + chunk * W);
      largest = next > largest ? next : largest;
    }
    float tileMax = largest[0];
    for (int i = 1; i < W; i++) tileMax = std::max(tileMax, largest[i]);
    acc[h] = scratch.accumulator.data() + vector * headDim;
    p[h] = scores;
    if (tileMax == -INFINITY) {  // nothing visible: the head's state stays as it is
      std::fill(scores, scores + kKeyTile, 0.0f);
      correction[h] = 1.0f;
      continue;
    }
    float& maximum = scratch.maxima[vector];
    const float updated = std::max(maximum, tileMax);
    correction[h] = maximum == -INFINITY ? 0.0f : std::exp(maximum - updated);
    maximum = updated;
    Vec total = {};
    for (int chunk = 0; chunk < kChunks; chunk++) {
      const Vec weights = expLanes<W>(loadVec<W>(scores + chunk * W) - updated);
      storeVec<W>(scores + chunk * W, weights);
      total += weights;
    }
    scratch.sums[vector] = scratch.sums[vector] * correction[h] + sumLanes<W>(total);
  }
  // Channels in passes of 8 (for one or two heads), 4, 2 and 1 vectors of W: at most 16 sums in registers.
  const int64_t lanes = headDim / W;
  const float* const* valueRows = scratch.valueRows.data();
  int64_t lane = 0;
  if constexpr (H <= 2)
    for (; lane + 8 <= lanes; lane += 8) accumulateValues<W, H, 8>(acc, p, correction, valueRows, count, lane * W);
  for (; lane + 4 <= lanes; lane += 4) accumulateValues<W, H, 4>(acc, p, correction, valueRows, count, lane * W);
  if (lane + 2 <= lanes) {
    accumulateValues<W, H, 2>(acc, p, correction, valueRows, count, lane * W);
    lane += 2;
  }
  if (lane < lanes) accumulateValues<W, H, 1>(acc, p, correction, valueRows, count, lane * W);
}

// One (query block, KV head) task.
template <int W>
__attribute__((always_inline)) inline void attendBlockBody(const AttentionCall& call, int64_t task, BlockScratch& scratch) {
  const AttentionArgs& args = call.args;
  const StreamingLayout& layout = args.streaming;
  const int64_t headDim = call.headDim, group = call.group;
  const int64_t block = task / args.kvHeads;
  const int kvHead = static_cast<int>(task % args.kvHeads);
  const int64_t first = block * kQueryBlock, last = std::min(call.rows, first + kQueryBlock);
  const int64_t firstPosition = args.queryStart + first, lastPosition = args.queryStart + last - 1;
  const int64_t keyEnd = std::min(args.keyLength, lastPosition + 1);
  const bool streams = layout.streams(kvHead);
  const KeyRange range = keyRangeFor(layout, streams, keyEnd, firstPosition, args.queryStart);
  // A decode row (or two) scores each key directly: transposing a tile costs more than the few rows it would serve.
  const bool direct = last - first <= 2;
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
    // Keys as [channel][kKeyTile] when enough rows share them; missing keys are zeros (their scores are masked).
    if (!direct) {
      for (int64_t c = 0; c < headDim; c++) {
        float* column = transposed + c * kKeyTile;
        for (int64_t j = 0; j < count; j++) column[j] = scratch.keyRows[j][c];
        for (int64_t j = count; j < kKeyTile; j++) column[j] = 0.0f;
      }
    }
    const int64_t tileLast = scratch.keyPositions[count - 1];
    for (int64_t r = first; r < last; r++) {
      const int64_t position = args.queryStart + r;
      if (scratch.keyPositions[0] > position) continue;  // the whole tile lies after this row
      // Full heads see every key of a tile that ends at or before the row; otherwise (the row's own tile, or a
      // streaming head's Λ mask) each key is checked.
      const bool allVisible = !streams && tileLast <= position && count == kKeyTile;
      int64_t g = 0;
      constexpr int kHeads = Width<W>::kHeads;
      for (; g + kHeads <= group; g += kHeads)
        attendHeads<W, kHeads>(call, scratch, first, r, g, kvHead, streams, allVisible, direct, count);
      if constexpr (kHeads > 2)
        for (; g + 2 <= group; g += 2)
          attendHeads<W, 2>(call, scratch, first, r, g, kvHead, streams, allVisible, direct, count);
      for (; g < group; g++) attendHeads<W, 1>(call, scratch, first, r, g, kvHead, streams, allVisible, direct, count);
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

__attribute__((target("arch=x86-64-v4"))) void attendBlockWidest(const AttentionCall& call, int64_t task,
                                                                 BlockScratch& scratch) {
  attendBlockBody<16>(call, task, scratch);
}
__attribute__((target("avx2,fma"))) void attendBlockWide(const AttentionCall& call, int64_t task, BlockScratch& scratch) {
  attendBlockBody<8>(call, task, scratch);
}
void attendBlockBaseline(const AttentionCall& call, int64_t task, BlockScratch& scratch) {
  attendBlockBody<8>(call, task, scratch);
}

// 16 (AVX-512), 8 (AVX2 + FMA) or 1 (baseline): the widest body this CPU runs (checked once).
int unitWidth() {
  static const int width = __builtin_cpu_supports("x86-64-v4")                                  ? 16
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8
                                                                                                : 1;
  return width;
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
  const int width = unitWidth() == 16 && args.headDim % 16 != 0 ? 8 : unitWidth();
  pool.parallelFor(blocks * args.kvHeads, 1, [&](int64_t begin, int64_t end) {
    BlockScratch scratch(args.headDim, group);
    for (int64_t task = begin; task < end; task++) {
      if (width == 16) attendBlockWidest(call, task, scratch);
      else if (width == 8) attendBlockWide(call, task, scratch);
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
