// KV-cache quantization of one row (one token's keys or values in one KV head), shared by the CPU and CUDA backends
// so both write the same codes; @duoattn/kv-quant's quantizeRow is the reference it is checked against. f32
// arithmetic, round half to even, scales rounded to fp16 before the codes are computed from them. Layout
// (docs/decisions/0006-kv-quantization.md): codes [heads, capacity, codeBytes] u8, scales [heads, capacity,
// scaleHalves] f16.
#pragma once
#include <cmath>

#include "common.h"

namespace duo {

// Indices match the scheme names' order in TypeScript: none, int8, int4, fp8.
enum class KvQuant : int { None = 0, Int8 = 1, Int4 = 2, Fp8 = 3 };

constexpr int kInt4Group = 128;

DUO_HD int int4GroupWidth(int headDim) { return headDim < kInt4Group ? headDim : kInt4Group; }
DUO_HD int kvCodeBytes(KvQuant scheme, int headDim) { return scheme == KvQuant::Int4 ? headDim / 2 : headDim; }
// fp16 values per row: one scale (int8, fp8), or a scale and a zero per group (int4).
DUO_HD int kvScaleHalves(KvQuant scheme, int headDim) {
  if (scheme != KvQuant::Int4) return 1;
  const int width = int4GroupWidth(headDim);
  return 2 * ((headDim + width - 1) / width);
}

DUO_HD float roundToHalf(float value) { return f16ToFloat(floatToF16(value)); }

// The nearest e4m3 "FN" code (ties to even), saturating at ±448; NaN gives 0x7F.
DUO_HD uint8_t encodeE4m3(float value) {
  if (value != value) return 0x7f;
  uint32_t raw = 0;
  memcpy(&raw, &value, 4);
  const uint8_t sign = (raw >> 31) ? 0x80 : 0x00;
  const float magnitude = fabsf(value);
  if (magnitude >= 448.0f) return sign | 0x7e;
  if (magnitude < 0.015625f) return sign | static_cast<uint8_t>(rintf(magnitude * 512.0f));  // subnormals: m · 2^-9
  int exponent = 0;
  const float fraction = frexpf(magnitude, &exponent);  // magnitude = fraction · 2^exponent, fraction in [0.5, 1)
  float mantissa = rintf(fraction * 16.0f);                    // 8 … 16: 8 + the three mantissa bits
  int biased = exponent + 6;
  if (mantissa == 16.0f) {
    mantissa = 8.0f;
    biased += 1;
  }
  const int bits = static_cast<int>(mantissa) - 8;
  if (biased > 15 || (biased == 15 && bits == 7)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((biased << 3) | bits);
}

// The value of an e4m3 code.
DUO_HD float decodeE4m3(uint8_t code) {
  const float sign = (code & 0x80) ? -1.0f : 1.0f;
  const int exponent = (code >> 3) & 0x0f, mantissa = code & 0x07;
  if (exponent == 0) return sign * ldexpf(static_cast<float>(mantissa), -9);
  return sign * ldexpf(static_cast<float>(8 + mantissa), exponent - 10);
}

// The f32 values of one quantized row (what attention sees), into `out` (headDim values).
DUO_HD void dequantizeKvRow(KvQuant scheme, const uint8_t* codes, const uint16_t* scales, int headDim, float* out) {
  if (scheme == KvQuant::Int4) {
    const int width = int4GroupWidth(headDim);
    for (int c = 0; c < headDim; c++) {
      const int group = c / width;
      const int code = (codes[c / 2] >> (4 * (c & 1))) & 0x0f;
      out[c] = static_cast<float>(code) * f16ToFloat(scales[2 * group]) + f16ToFloat(scales[2 * group + 1]);
    }
    return;
  }
  const float scale = f16ToFloat(scales[0]);
  for (int c = 0; c < headDim; c++) {
    const float value = scheme == KvQuant::Int8 ? static_cast<float>(static_cast<int8_t>(codes[c])) : decodeE4m3(codes[c]);
    out[c] = value * scale;
  }
}

// Quantizes `row` (headDim f32 values) into `codes` (kvCodeBytes) and `scales` (kvScaleHalves fp16 bits).
DUO_HD void quantizeKvRow(KvQuant scheme, const float* row, int headDim, uint8_t* codes, uint16_t* scales) {
  if (scheme == KvQuant::Int4) {
    const int width = int4GroupWidth(headDim);
    for (int first = 0, group = 0; first < headDim; first += width, group++) {
      const int last = first + width < headDim ? first + width : headDim;
      float minimum = row[first], maximum = row[first];
      for (int c = first + 1; c < last; c++) {
        minimum = row[c] < minimum ? row[c] : minimum;
        maximum = row[c] > maximum ? row[c] : maximum;
      }
      const uint16_t scaleBits = floatToF16((maximum - minimum) / 15.0f + 1e-8f);
      const uint16_t zeroBits = floatToF16(minimum + 0.0f);  // + 0: a −0 minimum stores +0 whichever order found it
      const float scale = f16ToFloat(scaleBits), zero = f16ToFloat(zeroBits);
      scales[2 * group] = scaleBits;
      scales[2 * group + 1] = zeroBits;
      for (int c = first; c < last; c += 2) {
        uint8_t packed = 0;
        for (int k = 0; k < 2 && c + k < last; k++) {
          float code = scale > 0.0f ? rintf((row[c + k] - zero) / scale) : 0.0f;
          code = code < 0.0f ? 0.0f : (code > 15.0f ? 15.0f : code);
          packed |= static_cast<uint8_t>(static_cast<int>(code) << (4 * k));
        }
        codes[c / 2] = packed;
      }
    }
    return;
  }
  float largest = 0.0f;
  for (int c = 0; c < headDim; c++) largest = fabsf(row[c]) > largest ? fabsf(row[c]) : largest;
  const float limit = scheme == KvQuant::Int8 ? 127.0f : 448.0f;
  const uint16_t scaleBits = floatToF16(largest / limit);
  const float scale = f16ToFloat(scaleBits);
  scales[0] = scaleBits;
  for (int c = 0; c < headDim; c++) {
    if (!(scale > 0.0f)) {
      codes[c] = 0;
    } else if (scheme == KvQuant::Int8) {
      float code = rintf(row[c] / scale);
      code = code < -127.0f ? -127.0f : (code > 127.0f ? 127.0f : code);
      codes[c] = static_cast<uint8_t>(static_cast<int8_t>(code));
    } else {
      codes[c] = encodeE4m3(row[c] / scale);
    }
  }
}

}  // namespace duo
