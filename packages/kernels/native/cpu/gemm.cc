// CPU matmul: x · Wᵀ. A packed-panel GEMM (6 × 32 register tile) for many rows, a streaming GEMV for few.
// The vector code uses GCC vector extensions and target_clones, so one binary runs AVX-512, AVX2 or SSE.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu-device.h"

namespace duo {

namespace {

typedef float Vec16 __attribute__((vector_size(64)));
typedef uint32_t UVec16 __attribute__((vector_size(64)));
typedef uint16_t HVec16 __attribute__((vector_size(32)));

constexpr int kTileRows = 6;     // rows of x per micro-tile
constexpr int kPanelWidth = 32;  // output columns per packed weight panel (two vectors)
constexpr int kDepth = 256;      // k per packed block
constexpr int64_t kGemvRows = 4; // at most this many rows use the GEMV path

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

// acc[6][32] = Σ_kk x[r][kk] · panel[kk][:]; rows past `rows` read a zero row.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void microTile(const float* const* rowPointers, int depth, const float* panel, float* tile) {
  Vec16 acc[kTileRows][2] = {};
  for (int kk = 0; kk < depth; kk++) {
    Vec16 b0 = loadVec(panel + kk * kPanelWidth);
    Vec16 b1 = loadVec(panel + kk * kPanelWidth + 16);
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; r++) {
      float a = rowPointers[r][kk];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < kTileRows; r++) {
    storeVec(tile + r * kPanelWidth, acc[r][0]);
    storeVec(tile + r * kPanelWidth + 16, acc[r][1]);
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
  static const float zeros[kDepth] = {};
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
            for (int r = 0; r < kTileRows; r++) rowPointers[r] = r < rows ? x + (i0 + r) * k + kb : zeros;
            microTile(rowPointers, depth, panel, tile);
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

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
float dotF32(const float* a, const float* b, int64_t count) {
  Vec16 acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    acc0 += loadVec(a + i) * loadVec(b + i);
    acc1 += loadVec(a + i + 16) * loadVec(b + i + 16);
  }
  for (; i + 16 <= count; i += 16) acc0 += loadVec(a + i) * loadVec(b + i);
  Vec16 acc = acc0 + acc1;
  float sum = 0;
  for (int j = 0; j < 16; j++) sum += acc[j];
  for (; i < count; i++) sum += a[i] * b[i];
  return sum;
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
float dotBf16(const float* a, const uint16_t* b, int64_t count) {
  Vec16 acc0 = {}, acc1 = {};
  int64_t i = 0;
  auto widen = [](const uint16_t* p) {
    HVec16 h;
    std::memcpy(&h, p, sizeof h);
    UVec16 bits = __builtin_convertvector(h, UVec16) << 16;
    Vec16 v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  };
  for (; i + 32 <= count; i += 32) {
    acc0 += loadVec(a + i) * widen(b + i);
    acc1 += loadVec(a + i + 16) * widen(b + i + 16);
  }
  for (; i + 16 <= count; i += 16) acc0 += loadVec(a + i) * widen(b + i);
  Vec16 acc = acc0 + acc1;
  float sum = 0;
  for (int j = 0; j < 16; j++) sum += acc[j];
  for (; i < count; i++) sum += a[i] * bf16ToFloat(b[i]);
  return sum;
}

void gemv(ThreadPool& pool, const float* x, int64_t n, int64_t k, const void* weight, DType type, int64_t m, float* out,
          const float* bias, const float* residual) {
  // Small matrices are not worth waking the pool for.
  pool.parallelFor(m, std::max<int64_t>(16, 65536 / std::max<int64_t>(1, k * n)), [&](int64_t begin, int64_t end) {
    std::vector<float> converted(type == DType::F16 ? k : 0);
    for (int64_t j = begin; j < end; j++) {
      const float* rowF32 = nullptr;
      if (type == DType::F32) rowF32 = static_cast<const float*>(weight) + j * k;
      if (type == DType::F16) {
        loadFloats(weight, type, j * k, k, converted.data());
        rowF32 = converted.data();
      }
      for (int64_t i = 0; i < n; i++) {
        float dot = type == DType::BF16 ? dotBf16(x + i * k, static_cast<const uint16_t*>(weight) + j * k, k)
                                        : dotF32(x + i * k, rowF32, k);
        float value = dot + (bias ? bias[j] : 0.0f) + (residual ? residual[i * m + j] : 0.0f);
        out[i * m + j] = value;
      }
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
               float* out, const float* bias, const float* residual) {
  if (n <= kGemvRows) {
    gemv(pool, x, n, k, weight, weightType, m, out, bias, residual);
  } else {
    gemm(pool, x, n, k, weight, weightType, m, out, bias, residual);
  }
}

}  // namespace duo
