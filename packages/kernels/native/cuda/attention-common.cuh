// What the attention kernels share (attention-decode.cu, attention-prefill.cu): where a KV head's rows live, the head
// dims they are compiled for, the tiles' element type, and the one rule that picks an op's kernel — the launchers
// instantiate and launch by it, and the decode splits and scratch are sized by it.
#pragma once
#include <string>
#include <type_traits>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// Where KV head `kvHead`'s rows start: its full cache, or (streaming) its part of the streaming region.
template <typename T>
__device__ __forceinline__ const T* headRows(const void* cache, const void* region, int64_t capacity, const StreamingLayout& layout,
                                             bool streams, int kvHead, int headDim) {
  return streams ? static_cast<const T*>(region) + layout.headStart(kvHead, headDim)
                 : static_cast<const T*>(cache) + layout.fullRow(kvHead) * capacity * headDim;
}

// Kernels with more than 48 KB of dynamic shared memory must say so before their launch.
template <typename Kernel>
void allowSharedMemory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "cudaFuncSetAttribute");
}

template <typename F>
void dispatchHeadDim(int headDim, F body) {
  switch (headDim) {
    case 8: body(std::integral_constant<int, 8>{}); break;
    case 16: body(std::integral_constant<int, 16>{}); break;
    case 32: body(std::integral_constant<int, 32>{}); break;
    case 64: body(std::integral_constant<int, 64>{}); break;
    case 128: body(std::integral_constant<int, 128>{}); break;
    case 256: body(std::integral_constant<int, 256>{}); break;
    default: throw Error("DUO_ARG", "CUDA attention supports head dims 8, 16, 32, 64, 128 and 256, not " + std::to_string(headDim));
  }
}


// The kernels an attention op may take.
enum class AttentionKernel {
  TensorCores,  // decodeMmaKernel / prefillMmaKernel: 16-bit tiles at head dim 64 or 128
  CudaCores,    // decodeKernel / prefillKernel
  PrefillRow,   // decode only: the tiled prefill kernel with one query row, for head dims no decode kernel serves
};

// Bytes of one element of the tiles the kernels stage and multiply: a quantized cache is dequantized into bf16 tiles
// where the tensor cores read them (head dims 64 and 128) and into f32 tiles elsewhere; a plain cache's tiles hold
// its own dtype (`cacheBytes`).
constexpr int tileBytes(bool quantized, int headDim, int cacheBytes) {
  return quantized ? (headDim == 64 || headDim == 128 ? 2 : 4) : cacheBytes;
}

// Whether tiles of `elementBytes`-byte elements at `headDim` go to the tensor cores (mma.sync m16n8k16).
constexpr bool usesTensorCores(int elementBytes, int headDim) { return elementBytes == 2 && (headDim == 64 || headDim == 128); }

// The kernel of a decode op, from its tiles' element size, head dim and whether the cache is quantized. The CUDA-core
// kernel reads 16-byte rows (16 / elementBytes elements, Vec16) of head dims up to 128, quantized tiles up to 32.
constexpr AttentionKernel decodeKernelFor(int elementBytes, int headDim, bool quantized) {
  if (usesTensorCores(elementBytes, headDim)) return AttentionKernel::TensorCores;
  if (headDim >= 16 / elementBytes && headDim <= 128 && !(quantized && headDim > 32)) return AttentionKernel::CudaCores;
  return AttentionKernel::PrefillRow;
}
inline AttentionKernel decodeKernelFor(const AttentionArgs& args, DType cacheType) {
  const bool quantized = args.quant.scheme != 0;
  const int cacheBytes = quantized ? 0 : static_cast<int>(dtypeBytes(cacheType));
  return decodeKernelFor(tileBytes(quantized, args.headDim, cacheBytes), args.headDim, quantized);
}

// Calls body(T{}, std::bool_constant<quantized>{}) with T the element type of the op's tiles (tileBytes).
template <typename F>
void dispatchTile(const AttentionArgs& args, DType cacheType, F body) {
  if (args.quant.scheme != 0) {
    if (tileBytes(true, args.headDim, 0) == 2) body(__nv_bfloat16{}, std::true_type{});
    else body(float{}, std::true_type{});
  } else {
    dispatchFloat(cacheType, [&](auto t) { body(t, std::false_type{}); });
  }
}

}  // namespace cuda
}  // namespace duo
