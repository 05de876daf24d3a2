// CPU matmul: out = x · Wᵀ (+ residual, + bias). Every output is one dot product over k in one fixed order — sixteen
// lane sums over k in steps of 16, folded by a fixed tree, then the tail, the residual and the bias — so a row's result
// is bitwise the same whatever rows share the call (decode alone or in a batch) and however the threads split the work.
// Weights are read where they lie, converted in registers (f16 by F16C, bf16 by a shift, block formats a 32-value piece
// at a time, Q8_0 by vector conversions); from 16 rows up a block format's column block is first decoded into a
// per-thread f32 panel (panelGemm) for the float tiles. With Tuning::integerQ8, Q8_0 multiplies integers instead, as
// CUDA's decode and llama.cpp do: x rounded to int8 pieces once per call (into buffers of the calling thread that only
// grow), then exact int32 lane sums of codes (AVX-512 VNNI) scaled per block; from 16 rows up through a per-thread
// integer panel (intPanelGemm: each block pair's codes, lane starts and scales laid out once). Tiles of 4 rows × 6
// columns (float weights, half a 32-value step at a time so 24 sums fit the registers) or 4 × 4 (block formats, and
// fewer rows) share every load (1 row × 8 columns for decode, which prefetches the next tile's rows); threads own
// column ranges, walked in blocks whose weights stay in L2 while every row passes. The tiles (gemm-tiles.inc) are
// compiled for AVX-512 with VNNI, AVX2 + F16C and baseline x86-64; the dot products and helpers below use
// target_clones.
#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "../weight-blocks.h"
#include "cpu-device.h"

namespace duo {

namespace {

typedef float Vec16 __attribute__((vector_size(64)));
typedef uint16_t Short16 __attribute__((vector_size(32)));
typedef uint32_t Word16 __attribute__((vector_size(64)));

inline Vec16 loadVec(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storeVec(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

struct MatmulArgs {
  const float* x;
  int64_t n, k;
  const void* weight;
  DType dtype;
  int64_t m;
  float* out;
  const float* bias;
  const float* residual;
  // Q8_0: x rounded to int8 pieces (k codes and k / 32 steps a row), else null.
  const int8_t* codes;
  const float* steps;
  // The weight row `weight` points at (a decoded panel's first column; else 0).
  int64_t firstRow;
};

// Bytes of a block pair in the integer panel (gemm-tiles.inc, buildIntPanel): 64 codes, 16 lane starts, 16 scales.
constexpr int64_t kIntPairBytes = 192;

using Tile = void (*)(const MatmulArgs&, int64_t, int64_t);
// The tiles of one weight kind: 1 × 8 (decode), r × 4 for r = 1 … 4, and 4 × 6 for the float kinds (else null); and
// the set's rounding of x to int8 pieces (Q8_0's integer products).
struct Tiles {
  Tile wide, rows[5], fourBySix;
  void (*quantize)(const float* x, int64_t pieces, int8_t* codes, float* steps);
  // Block formats: rows [first, first + count) of a weight as f32 rows of k (what the tiles' products read).
  void (*decodeRows)(const void* weight, DType dtype, int64_t k, int64_t first, int64_t count, float* out);
  // The integer panel's set (intPanelTiles): Q8_0 columns [first, first + count) re-laid for its tiles, else null.
  void (*buildPanel)(const void* weight, int64_t k, int64_t first, int64_t count, uint8_t* out);
};

// The tile sets: AVX-512 with VNNI (x86-64-v4 and the byte dot products Ice Lake and Zen 4 added), AVX2 + F16C + FMA
// (x86-64-v3), and baseline x86-64.
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's _mm512_cvtph_ps (a known false positive)
#define DUO_TILE_ISA 4
namespace v4 {
#include "gemm-tiles.inc"
}  // namespace v4
#undef DUO_TILE_ISA
#pragma GCC diagnostic pop
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define DUO_TILE_ISA 3
namespace v3 {
#include "gemm-tiles.inc"
}  // namespace v3
#undef DUO_TILE_ISA
#pragma GCC pop_options
#define DUO_TILE_ISA 1
namespace base {
#include "gemm-tiles.inc"
}  // namespace base
#undef DUO_TILE_ISA

// The best tile set this CPU runs, for a weight dtype (Q8_0: the integer products' or the exact float ones; the check
// runs once).
Tiles tilesFor(DType dtype, bool integer) {
  static const int level = __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512vnni")
                               ? 4
                               : (__builtin_cpu_supports("x86-64-v3") ? 3 : 1);
  return level == 4 ? v4::tilesFor(dtype, integer) : (level == 3 ? v3::tilesFor(dtype, integer) : base::tilesFor(dtype, integer));
}

constexpr int64_t kColumnGroup = 24;           // columns a thread's range is cut in (every tile width divides it)
// Weights of one column block, L2-resident while every row passes: 1 MB (a Zen 5 core's L2; 256 KB blocks held 8
// columns of a k = 14 336 matrix, and every block streamed all of x again: 153 against 203 GFLOPS, 512 rows, two cores).
constexpr size_t kBlockWeightBytes = 1024 << 10;

// Rows of x from which a block-format product decodes each column block into an f32 panel first, so the float tiles
// (4 × 6) run over it and a block's decoding serves every row rather than each tile's four.
constexpr int64_t kPanelRows = 16;

// A panel's f32 weights: half an L2, so x's rows streaming past stay there too (1 MB panels: 150–160 GFLOPS at
// k = 4096 and 512 rows, 512 KB: 170–200, two Zen 5 cores).
constexpr size_t kPanelBytes = 512 << 10;

bool isBlockFormat(DType dtype) { return blockValues(dtype) > 1; }

// The integer products' panel tiles for this CPU (empty where the CPU lacks AVX-512 VNNI).
Tiles intPanelTilesFor() {
  static const bool vnni = __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512vnni");
  return vnni ? v4::intPanelTiles() : Tiles{};
}

// Column groups a piece of many-row work takes: at most `blockGroups` (its weights fit the cache), in as few rounds as
// that allows, spread evenly over the threads — capping pieces at blockGroups alone left 22 groups as 10 + 10 + 2
// (one thread doing 12, the other 10) and 32 as 10 + 10 + 10 + 2 (20 against 12).
int64_t balancedGrain(int64_t groups, int64_t threads, int64_t blockGroups) {
  const int64_t rounds = (groups + threads * blockGroups - 1) / (threads * blockGroups);
  return std::max<int64_t>(1, (groups + threads * rounds - 1) / (threads * rounds));
}

// Every row of x against columns [first, end): 4 × 6 tiles where the set has them, else r × 4.
void multiplyRows(const Tiles& tiles, const MatmulArgs& a, int64_t first, int64_t end) {
  for (int64_t row0 = 0; row0 < a.n; row0 += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, a.n - row0));
    const bool six = rows == 4 && tiles.fourBySix;
    const Tile tile = six ? tiles.fourBySix : tiles.rows[rows];
    for (int64_t c = first; c < end; c += six ? 6 : 4) tile(a, row0, c);
  }
}

// Many rows over panels: each thread re-lays its column blocks, one at a time, into a panel (its own buffer, grown to
// the largest block and kept; L2-sized) with `build(first, count, out)`, and `tiles` multiply it as weights of
// `panelType` whose rows start at the block's first column.
template <typename Build>
void overPanels(ThreadPool& pool, const MatmulArgs& a, int64_t columnBytes, DType panelType, const Tiles& tiles, int64_t groups,
                const Build& build) {
  const int64_t threads = pool.size();
  const int64_t blockGroups = std::max<int64_t>(1, static_cast<int64_t>(kPanelBytes / (columnBytes * kColumnGroup)));
  pool.parallelFor(groups, balancedGrain(groups, threads, blockGroups), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> panel;  // this pool thread's (floats: aligned for either kind)
    for (int64_t block = begin; block < end; block += blockGroups) {
      const int64_t blockEnd = std::min(end, block + blockGroups);
      const int64_t first = block * kColumnGroup, last = std::min(a.m, blockEnd * kColumnGroup);
      const size_t floats = static_cast<size_t>(((last - first) * columnBytes + 3) / 4);
      if (panel.size() < floats) panel.resize(floats);
      build(first, last - first, panel.data());
      MatmulArgs p = a;
      p.weight = panel.data();
      p.dtype = panelType;
      p.firstRow = first;
      multiplyRows(tiles, p, first, blockEnd * kColumnGroup);
    }
  });
}

// A block-format product of many rows over f32 panels: each column block decoded once into f32 rows with the values
// the block tiles would compute, for the float tiles — so a row's products and their order are those of the block
// tiles, alone or in a batch.
void panelGemm(ThreadPool& pool, const MatmulArgs& a, const Tiles& blocks, int64_t groups) {
  overPanels(pool, a, a.k * static_cast<int64_t>(sizeof(float)), DType::F32, tilesFor(DType::F32, false), groups,
             [&](int64_t first, int64_t count, float* out) { blocks.decodeRows(a.weight, a.dtype, a.k, first, count, out); });
}

// Integer Q8_0 products of many rows over integer panels (each block pair's codes, lane starts and scales laid out
// once): the same lanes and float operations as the block tiles, so a row's bits do not depend on the rows beside it.
void intPanelGemm(ThreadPool& pool, const MatmulArgs& a, const Tiles& panelTiles, int64_t groups) {
  overPanels(pool, a, (a.k / 32 + 1) / 2 * kIntPairBytes, DType::Q8_0, panelTiles, groups, [&](int64_t first, int64_t count, float* out) {
    panelTiles.buildPanel(a.weight, a.k, first, count, reinterpret_cast<uint8_t*>(out));
  });
}

void gemm(ThreadPool& pool, MatmulArgs a, bool integerQ8) {
  if (a.n == 0 || a.m == 0) return;
  const bool integer = integerQ8 && a.dtype == DType::Q8_0;
  const Tiles tiles = tilesFor(a.dtype, integer);
  if (integer) {
    // x's codes and steps, in buffers of the calling thread that grow to the largest x seen (a quarter of x's bytes).
    thread_local std::vector<int8_t> codes;
    thread_local std::vector<float> steps;
    const int64_t pieces = a.k / 32;
    if (codes.size() < static_cast<size_t>(a.n * a.k)) codes.resize(a.n * a.k);
    if (steps.size() < static_cast<size_t>(a.n * pieces)) steps.resize(a.n * pieces);
    // The pool's threads see their own thread_locals: they get the pointers.
    int8_t* const codeData = codes.data();
    float* const stepData = steps.data();
    pool.parallelFor(a.n, 1, [&](int64_t begin, int64_t end) {
      tiles.quantize(a.x + begin * a.k, (end - begin) * pieces, codeData + begin * a.k, stepData + begin * pieces);
    });
    a.codes = codeData;
    a.steps = stepData;
  }
  const int64_t groups = (a.m + kColumnGroup - 1) / kColumnGroup;
  const int64_t threads = pool.size();
  if (!integer && isBlockFormat(a.dtype) && a.n >= kPanelRows) {
    panelGemm(pool, a, tiles, groups);
    return;
  }
  if (integer && a.n >= kPanelRows) {
    const Tiles panelTiles = intPanelTilesFor();
    if (panelTiles.buildPanel) {
      intPanelGemm(pool, a, panelTiles, groups);
      return;
    }
  }
  // Column blocks: as many groups as keep their weights in L2, at least one.
  const int64_t blockGroups =
      std::max<int64_t>(1, static_cast<int64_t>(kBlockWeightBytes / std::max<size_t>(1, tensorBytes(a.dtype, a.k) * kColumnGroup)));
  // One piece per thread for decode (each streams a contiguous share of the weights); finer pieces when rows are many.
  const int64_t grain = a.n <= 4 ? (groups + threads - 1) / threads : balancedGrain(groups, threads, blockGroups);
  pool.parallelFor(groups, std::max<int64_t>(1, grain), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; block += blockGroups) {
      const int64_t blockEnd = std::min(end, block + blockGroups);
      if (a.n == 1) {
        for (int64_t c = block * kColumnGroup; c < blockEnd * kColumnGroup; c += 8) tiles.wide(a, 0, c);
        continue;
      }
      multiplyRows(tiles, a, block * kColumnGroup, blockEnd * kColumnGroup);
    }
  });
}

}  // namespace

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
float dotProduct(const float* a, const float* b, int64_t count) {
  Vec16 sums = {};
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) sums += loadVec(a + i) * loadVec(b + i);
  // Fold the lanes in halves (four dependent adds, not fifteen).
  typedef float Vec8 __attribute__((vector_size(32)));
  typedef float Vec4 __attribute__((vector_size(16)));
  const Vec8 eight = __builtin_shufflevector(sums, sums, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(sums, sums, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec4 four = __builtin_shufflevector(eight, eight, 0, 1, 2, 3) + __builtin_shufflevector(eight, eight, 4, 5, 6, 7);
  float sum = (four[0] + four[2]) + (four[1] + four[3]);
  for (; i < count; i++) sum += a[i] * b[i];
  return sum;
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void addScaled(float scale, const float* x, float* y, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) storeVec(y + i, loadVec(y + i) + scale * loadVec(x + i));
  for (; i < count; i++) y[i] += scale * x[i];
}

void cpuMatmul(ThreadPool& pool, const float* x, int64_t n, int64_t k, const void* weight, DType weightType, int64_t m,
               float* out, const float* bias, const float* residual, bool integerQ8) {
  // One path for every row count: a row's result is the same whether it runs alone (decode) or in a batch.
  gemm(pool, MatmulArgs{x, n, k, weight, weightType, m, out, bias, residual, nullptr, nullptr, 0}, integerQ8);
}

}  // namespace duo
