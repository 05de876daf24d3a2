// Hopper warpgroup matrix products (wgmma, sm_90a): both operands in shared memory as K-major tiles of 64 half values a
// row (128 bytes) with the 128-byte swizzle, f32 accumulators in registers. A warpgroup (four warps, 128 threads)
// issues each product together. Compiled only where the target has the sm_90a features (__CUDA_ARCH_FEAT_SM90_ALL);
// elsewhere DUO_WGMMA is undefined and callers keep their other path.
#pragma once
#include <cstdint>

#include "cuda-common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DUO_WGMMA 1
#endif

namespace duo {
namespace cuda {

// The byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile: rows of 128 bytes in groups of eight
// (1024 bytes, the tile's alignment), the chunk index XORed with the row's place in its group, so eight rows' chunks
// of one column land in eight different bank groups.
__host__ __device__ __forceinline__ int swizzle128(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// The matrix descriptor of a swizzled K-major tile that starts at `tile` (1024-byte aligned; a k step of 16 values
// within the 64-wide rows adds 2, i.e. 32 bytes, to the start address field, the hardware applies the swizzle to the
// resulting address): start address >> 4 in bits 0–13, stride between 8-row groups (1024 bytes) >> 4 in bits 32–45,
// layout 1 (128-byte swizzle) in bits 62–63; the leading offset is unused for this layout.
__device__ __forceinline__ uint64_t sharedTileDescriptor(const void* tile) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  uint64_t descriptor = (address & 0x3FFFF) >> 4;
  descriptor |= static_cast<uint64_t>(1) << 16;
  descriptor |= static_cast<uint64_t>(1024 >> 4) << 32;
  descriptor |= static_cast<uint64_t>(1) << 62;
  return descriptor;
}

#if defined(DUO_WGMMA)
// Orders this warpgroup's earlier register and shared-memory accesses before the products that follow.
__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}
// Makes shared-memory writes of the generic proxy (plain stores, cp.async) visible to the async proxy wgmma reads through.
__device__ __forceinline__ void fenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of the accumulators across the asynchronous products.
template <int R>
__device__ __forceinline__ void pinRegisters(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// D (64 × N, f32) += A (64 × 16) · B (N × 16)ᵀ, A and B given by descriptors. Thread t of the warpgroup holds, for
// i < N / 2, D[16·(t / 32) + (t % 32) / 4 + 8·((i / 2) % 2)][8·(i / 4) + 2·(t % 4) + i % 2] in d[i].
template <typename T, int N>
struct Wgmma;

template <>
struct Wgmma<__nv_bfloat16, 16> {
  __device__ static __forceinline__ void run(float (&d)[8], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b));
  }
};

template <>
struct Wgmma<__half, 16> {
  __device__ static __forceinline__ void run(float (&d)[8], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b));
  }
};

template <>
struct Wgmma<__nv_bfloat16, 32> {
  __device__ static __forceinline__ void run(float (&d)[16], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b));
  }
};

template <>
struct Wgmma<__half, 32> {
  __device__ static __forceinline__ void run(float (&d)[16], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b));
  }
};

template <>
struct Wgmma<__nv_bfloat16, 64> {
  __device__ static __forceinline__ void run(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b));
  }
};

template <>
struct Wgmma<__half, 64> {
  __device__ static __forceinline__ void run(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b));
  }
};
#endif  // DUO_WGMMA

}  // namespace cuda
}  // namespace duo
