// GGUF block formats (docs/decisions/0010-weight-quantization.md), decoded exactly as @duoattn/core's
// dequantizeWeights defines them (llama.cpp's layouts), on the host and on the device: the CPU's matmul packs a weight
// panel through decodeBlocks (a quantized matrix is only ever decoded a panel's k-block at a time), the CUDA embedding
// and the prefill's bounded dequantization call decodePiece per 32 values. The CUDA decode matmul reads the same
// layouts from shared memory with word loads (cuda/gemv-blocks.cu); the weight-blocks suite holds both to float64.
#pragma once
#include <cstdint>

#include "common.h"

namespace duo {

// Q4_K / Q5_K sub-block j's 6-bit scale and min from the 12 packed bytes (llama.cpp's get_scale_min_k4).
DUO_HD void scaleAndMin(const uint8_t* q, int j, int& scale, int& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
    min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// 32-value pieces of one block: Q8_0 is one piece; the k-quants' 256 values are 8 (their sub-blocks of 32).
DUO_HD int blockPieces(DType dtype) { return dtype == DType::Q8_0 ? 1 : 8; }

// The f16 at `at` (little-endian, any alignment).
DUO_HD float halfAt(const uint8_t* at) { return f16ToFloat(static_cast<uint16_t>(at[0] | (at[1] << 8))); }

// Decodes values 32·piece … 32·piece + 31 of the block at `block` into `y`.
DUO_HD void decodePiece(const uint8_t* block, DType dtype, int piece, float* y) {
  if (dtype == DType::Q8_0) {
    const float d = halfAt(block);
    for (int i = 0; i < 32; i++) y[i] = d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
  } else if (dtype == DType::Q4_K || dtype == DType::Q5_K) {
    // Sub-block `piece`: the low (even) or high (odd) nibbles of bytes 32·(piece / 2) … of qs; Q5_K's fifth bit is bit
    // `piece` of qh[l].
    const bool fifth = dtype == DType::Q5_K;
    int scale, min;
    scaleAndMin(block + 4, piece, scale, min);
    const float d = halfAt(block) * static_cast<float>(scale), m = halfAt(block + 2) * static_cast<float>(min);
    const uint8_t* nibbles = block + (fifth ? 48 : 16) + 32 * (piece / 2);
    const int shift = 4 * (piece & 1);
    for (int l = 0; l < 32; l++) {
      const int high = fifth ? ((block[16 + l] >> piece) & 1) << 4 : 0;
      y[l] = d * static_cast<float>(((nibbles[l] >> shift) & 0xf) + high) - m;
    }
  } else {  // Q6_K: ql[128], qh[64], int8 scales[16], f16 d; sub-block `piece` = half h, quarter q of 32 values
    const int h = piece / 4, q = piece % 4;
    const float d = halfAt(block + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192) + 8 * h + 2 * q;
    const uint8_t* low = block + 64 * h + 32 * (q & 1);
    const uint8_t* high = block + 128 + 32 * h;
    for (int l = 0; l < 32; l++) {
      const int code = ((low[l] >> (4 * (q >> 1))) & 0xf) | (((high[l] >> (2 * q)) & 3) << 4);
      y[l] = d * static_cast<float>(scales[l >> 4]) * static_cast<float>(code - 32);
    }
  }
}

// Decodes `blocks` whole blocks of `dtype` starting at `source` into `out`.
inline void decodeBlocks(const uint8_t* source, DType dtype, int64_t blocks, float* out) {
  const int pieces = blockPieces(dtype);
  for (int64_t b = 0; b < blocks; b++)
    for (int piece = 0; piece < pieces; piece++)
      decodePiece(source + b * blockBytes(dtype), dtype, piece, out + b * blockValues(dtype) + 32 * piece);
}

}  // namespace duo
