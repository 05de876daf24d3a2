// GGUF block formats read on the CPU (docs/decisions/0010-weight-quantization.md): whole blocks of a row decoded to
// f32, exactly as @duoattn/core's dequantizeWeights defines them (llama.cpp's layouts). The matmul packs a weight
// panel through them, so a quantized matrix is only ever decoded a panel's k-block at a time.
#pragma once
#include <cstdint>

#include "../common.h"

namespace duo {

// Q4_K / Q5_K sub-block j's 6-bit scale and min from the 12 packed bytes (llama.cpp's get_scale_min_k4).
inline void scaleAndMin(const uint8_t* q, int j, int& scale, int& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
    min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Decodes `blocks` whole blocks of `dtype` starting at `source` into `out`.
inline void decodeBlocks(const uint8_t* source, DType dtype, int64_t blocks, float* out) {
  const auto half = [](const uint8_t* at) { return f16ToFloat(static_cast<uint16_t>(at[0] | (at[1] << 8))); };
  for (int64_t b = 0; b < blocks; b++) {
    const uint8_t* block = source + b * blockBytes(dtype);
    float* y = out + b * blockValues(dtype);
    if (dtype == DType::Q8_0) {
      const float d = half(block);
      for (int i = 0; i < 32; i++) y[i] = d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
    } else if (dtype == DType::Q4_K || dtype == DType::Q5_K) {
      const bool fifth = dtype == DType::Q5_K;
      const float d = half(block), dmin = half(block + 2);
      const uint8_t* nibbles = block + (fifth ? 48 : 16);
      for (int c = 0; c < 4; c++) {
        int scale1, min1, scale2, min2;
        scaleAndMin(block + 4, 2 * c, scale1, min1);
        scaleAndMin(block + 4, 2 * c + 1, scale2, min2);
        const float d1 = d * scale1, m1 = dmin * min1, d2 = d * scale2, m2 = dmin * min2;
        for (int l = 0; l < 32; l++) {
          const int byte = nibbles[32 * c + l], high = fifth ? block[16 + l] : 0;
          y[64 * c + l] = d1 * static_cast<float>((byte & 0xf) + (((high >> (2 * c)) & 1) << 4)) - m1;
          y[64 * c + 32 + l] = d2 * static_cast<float>((byte >> 4) + (((high >> (2 * c + 1)) & 1) << 4)) - m2;
        }
      }
    } else {  // Q6_K: ql[128], qh[64], int8 scales[16], f16 d
      const float d = half(block + 208);
      const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
      for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
          const int low = block[64 * h + l], low2 = block[64 * h + 32 + l], high = block[128 + 32 * h + l];
          const int codes[4] = {(low & 0xf) | ((high & 3) << 4), (low2 & 0xf) | (((high >> 2) & 3) << 4),
                                (low >> 4) | (((high >> 4) & 3) << 4), (low2 >> 4) | (((high >> 6) & 3) << 4)};
          for (int k = 0; k < 4; k++) {
            const int index = 128 * h + 32 * k + l;
            y[index] = d * static_cast<float>(scales[index >> 4]) * static_cast<float>(codes[k] - 32);
          }
        }
    }
  }
}

}  // namespace duo
