// CPU matmul: x · Wᵀ, a packed-panel GEMM (6 × 32 register tiles) for any number of rows. Batch-invariant: each row's
// result is bitwise the same whatever rows share the call (decode alone or in a batch).
// The vector code uses GCC vector extensions and target_clones, so one binary runs AVX-512, AVX2 or SSE.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu-device.h"

namespace duo {

namespace {

typedef float Vec16 __attribute__((vector_size(64)));

constexpr int kTileRows = 6;     // rows of x per micro-tile
constexpr int kPanelWidth = 32;  // output columns per packed weight panel (two vectors)
constexpr int kDepth = 256;      // k per packed block

inline Vec16 loadVec(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storeVec(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

// Packs W[col0 … col0+31, kb … kb+depth) transposed into panel[kk][c], converting to f32, zero-padding past m.
void packPanel(const void* weight, DType type, int64_t k, int64_t m, int64_t col0, int64_t kb, int depth, float* panel,
               float* row) {
  int width = static_cast<int>(std::min<int64_t>(kPanelWidth, m - col0));
  for (int c = 0; c < kPanelWidth; c++) {
    if (c < width) {
      loadFloats(weight, type, (col0 + c) * k + kb, depth, row);
      for (int kk = 0; kk < depth; kk++) panel[kk * kPanelWidth + c] = row[kk];
    } else {
      for (int kk = 0; kk < depth; kk++) panel[kk * kPanelWidth + c] = 0.0f;
    }
  }
}

// acc[kRows][32] = Σ_kk x[r][kk] · panel[kk][:]. Each row is its own chain of FMAs in kk order, so a row's result does
// not depend on how many rows share the tile (kernels for 1 … 6 rows give bitwise the same row).
template <int kRows>
__attribute__((always_inline)) inline void microTileBody(const float* const* rowPointers, int depth, const float* panel,
                                                         float* tile) {
  Vec16 acc[kRows][2] = {};
  for (int kk = 0; kk < depth; kk++) {
    Vec16 b0 = loadVec(panel + kk * kPanelWidth);
    Vec16 b1 = loadVec(panel + kk * kPanelWidth + 16);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; r++) {
      float a = rowPointers[r][kk];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < kRows; r++) {
    storeVec(tile + r * kPanelWidth, acc[r][0]);
    storeVec(tile + r * kPanelWidth + 16, acc[r][1]);
  }
}

#define DUO_MICRO_TILE(rows)                                                                                   \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void microTile##rows(        \
      const float* const* rowPointers, int depth, const float* panel, float* tile) {                          \
    microTileBody<rows>(rowPointers, depth, panel, tile);                                                      \
  }
DUO_MICRO_TILE(1)
DUO_MICRO_TILE(2)
DUO_MICRO_TILE(3)
DUO_MICRO_TILE(4)
DUO_MICRO_TILE(5)
DUO_MICRO_TILE(6)
#undef DUO_MICRO_TILE

// The tile of `rows` (1 … 6) rows.
void microTile(int rows, const float* const* rowPointers, int depth, const float* panel, float* tile) {
  switch (rows) {
    case 1: microTile1(rowPointers, depth, panel, tile); break;
    case 2: microTile2(rowPointers, depth, panel, tile); break;
    case 3: microTile3(rowPointers, depth, panel, tile); break;
    case 4: microTile4(rowPointers, depth, panel, tile); break;
    case 5: microTile5(rowPointers, depth, panel, tile); break;
    default: microTile6(rowPointers, depth, panel, tile); break;
  }
}

constexpr int64_t kRowBlock = 144;  // rows of x per block: 144 × 256 floats stay in L2 while every panel passes

// Each thread owns a contiguous range of output panels. Per k block it packs its panels once, then sweeps x in
// row blocks that stay cache-resident, so x is read from memory about once per k block rather than once per panel.
void gemm(ThreadPool& pool, const float* x, int64_t n, int64_t k, const void* weight, DType type, int64_t m, float* out,
          const float* bias, const float* residual) {
  int64_t panels = (m + kPanelWidth - 1) / kPanelWidth;
  int64_t threads = pool.size();
  int64_t perThread = (panels + threads - 1) / threads;
  pool.parallelFor(panels, perThread, [&](int64_t begin, int64_t end) {
    int64_t owned = end - begin;
    float* packed = static_cast<float*>(std::aligned_alloc(64, owned * kDepth * kPanelWidth * sizeof(float)));
    std::vector<float> row(kDepth);
    float tile[kTileRows * kPanelWidth];
    for (int64_t kb = 0; kb < k; kb += kDepth) {
      int depth = static_cast<int>(std::min<int64_t>(kDepth, k - kb));
      for (int64_t p = begin; p < end; p++)
        packPanel(weight, type, k, m, p * kPanelWidth, kb, depth, packed + (p - begin) * kDepth * kPanelWidth, row.data());
      for (int64_t ib = 0; ib < n; ib += kRowBlock) {
        int64_t rowEnd = std::min(n, ib + kRowBlock);
        for (int64_t p = begin; p < end; p++) {
          const float* panel = packed + (p - begin) * kDepth * kPanelWidth;
          int64_t col0 = p * kPanelWidth;
          int width = static_cast<int>(std::min<int64_t>(kPanelWidth, m - col0));
          for (int64_t i0 = ib; i0 < rowEnd; i0 += kTileRows) {
            int rows = static_cast<int>(std::min<int64_t>(kTileRows, rowEnd - i0));
            const float* rowPointers[kTileRows];
            for (int r = 0; r < rows; r++) rowPointers[r] = x + (i0 + r) * k + kb;
            microTile(rows, rowPointers, depth, panel, tile);
            for (int r = 0; r < rows; r++) {
              float* target = out + (i0 + r) * m + col0;
              const float* add = tile + r * kPanelWidth;
              if (kb == 0) {
                // First block: the residual is read before this tile of `out` is written, so out may alias it.
                const float* res = residual ? residual + (i0 + r) * m + col0 : nullptr;
                for (int c = 0; c < width; c++)
                  target[c] = add[c] + (res ? res[c] : 0.0f) + (bias ? bias[col0 + c] : 0.0f);
              } else {
                for (int c = 0; c < width; c++) target[c] += add[c];
              }
            }
          }
        }
      }
    }
    std::free(packed);
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
               float* out, const float* bias, const float* residual) {
  // One path for every row count: a row's result is the same whether it runs alone (decode) or in a batch.
  gemm(pool, x, n, k, weight, weightType, m, out, bias, residual);
}

}  // namespace duo
