// MMA helpers of the tensor-core attention kernels (decode and prefill): 16-bit fragment packing, the m16n8k16
// product with f32 accumulation, the query split into a high and a low part, cp.async staging of key and value tiles
// into padded shared rows, and P·V (or Oᵀ = Vᵀ·Pᵀ) with V fragments through ldmatrix.
#pragma once
#include <type_traits>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

template <typename T>
__device__ __forceinline__ uint32_t packPair(float low, float high) {
  const T a = fromFloat<T>(low), b = fromFloat<T>(high);
  uint16_t bitsA, bitsB;
  memcpy(&bitsA, &a, 2);
  memcpy(&bitsB, &b, 2);
  return static_cast<uint32_t>(bitsA) | (static_cast<uint32_t>(bitsB) << 16);
}

// One m16n8k16 product with f32 accumulation: A fragments a0–a3 (rows g and g + 8, two column halves), B b0–b1.
template <typename T>
__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// A pair of scaled query values as a 16-bit high part and the 16-bit remainder (about 16 mantissa bits together).
template <typename T>
__device__ __forceinline__ void splitQuery(float x0, float x1, uint32_t& high, uint32_t& low) {
  high = packPair<T>(x0, x1);
  low = packPair<T>(x0 - toFloat(fromFloat<T>(x0)), x1 - toFloat(fromFloat<T>(x1)));
}

// Stages `rows` key and value rows of a tile (logical keys from `tile`, `count` of them valid, row r at cache slot
// slotOf(tile + r)) into padded shared rows with cp.async; rows past `count` are zeroed (probability 0 · NaN would poison P·V). Threads `thread` of `threads`.
template <typename T, int D, typename Slot>
__device__ __forceinline__ void stageTile(T* keyStage, T* valueStage, const T* keys, const T* values, int64_t tile, int count,
                                          int rows, int thread, int threads, const Slot& slotOf) {
  constexpr int kStride = D + 8, kChunksPerRow = D / 8;
  for (int piece = thread; piece < rows * kChunksPerRow; piece += threads) {
    const int r = piece / kChunksPerRow, column = (piece % kChunksPerRow) * 8;
    if (r < count) {
      const int64_t slot = slotOf(tile + r) * D + column;
      copyAsync16(keyStage + r * kStride + column, keys + slot);
      copyAsync16(valueStage + r * kStride + column, values + slot);
    } else {
      *reinterpret_cast<uint4*>(keyStage + r * kStride + column) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(valueStage + r * kStride + column) = make_uint4(0, 0, 0, 0);
    }
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// acc += P · V for one 16-key step of a staged value tile; V fragments through ldmatrix.trans.
template <typename T, int D>
__device__ __forceinline__ void accumulateValues(float (&acc)[D / 8][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 const T* valueTile, int step, int lane) {
  constexpr int kStride = D + 8;
  const int matrix = lane >> 3, matrixRow = lane & 7;
#pragma unroll
  for (int t = 0; t < D / 8; t += 2) {
    const T* address = valueTile + (16 * step + (matrix & 1) * 8 + matrixRow) * kStride + 8 * (t + (matrix >> 1));
    const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(address));
    uint32_t b0, b1, b2, b3;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                 : "r"(shared));
    mma16816<T>(acc[t], a0, a1, a2, a3, b0, b1);
    mma16816<T>(acc[t + 1], a0, a1, a2, a3, b2, b3);
  }
}

// Oᵀ += Vᵀ · Pᵀ for one 16-key step of a staged value tile: m-tile m is channels 16m … 16m + 15 (the rows of A, from
// the value rows through ldmatrix.trans), the columns the query heads 2·pair and 2·pair + 1 (B: b0, b1, a lane's own
// probabilities of the step's keys 2·pair (+1) and 8 + 2·pair (+1) for head lane / 4).
template <typename T, int D>
__device__ __forceinline__ void accumulateValuesTransposed(float (&out)[D / 16][4], uint32_t b0, uint32_t b1, const T* valueTile, int step,
                                                           int lane) {
  constexpr int kStride = D + 8;
  const int matrix = lane >> 3, matrixRow = lane & 7;
  // Matrix j of the x4 load is A register j: keys 8 · (j / 2) on, channels 8 · (j % 2) on.
  const T* row = valueTile + (16 * step + 8 * (matrix >> 1) + matrixRow) * kStride + 8 * (matrix & 1);
#pragma unroll
  for (int m = 0; m < D / 16; m++) {
    const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(row + 16 * m));
    uint32_t a0, a1, a2, a3;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                 : "r"(shared));
    mma16816<T>(out[m], a0, a1, a2, a3, b0, b1);
  }
}

}  // namespace cuda
}  // namespace duo
