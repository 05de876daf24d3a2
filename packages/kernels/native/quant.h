// KV-cache quantization of one row (one token's keys or values in one KV head), shared by the CPU and CUDA backends
// so both write the same codes; @duoattn/kv-quant's quantizeRow is the reference it is checked against. f32
// arithmetic, round half to even, scales rounded to fp16 before the codes are computed from them. Layout
// (docs/decisions/0006-kv-quantization.md): codes [heads, capacity, codeBytes] u8, scales [heads, capacity,
// scaleHalves] f16.
#pragma once
#include <cmath>

#include "common.h"

namespace duo {

// The schemes of KvQuantScheme in TypeScript; they cross the native boundary by name (kvQuantNamed).
enum class KvQuant : int { None = 0, Int8 = 1, Int4 = 2, Fp8 = 3 };

// The scheme TypeScript calls `name` ('none', 'int8', 'int4', 'fp8').
inline KvQuant kvQuantNamed(const std::string& name) {
  if (name == "none") return KvQuant::None;
  if (name == "int8") return KvQuant::Int8;
  if (name == "int4") return KvQuant::Int4;
  if (name == "fp8") return KvQuant::Fp8;
  throw Error("DUO_ARG", "unknown KV quantization scheme '" + name + "'");
}

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

// Arithmetic that is never contracted into FMAs, so the int4 range search below picks the same candidate on the CPU,
// on CUDA and in the TypeScript reference (which rounds every step to f32).
DUO_HD float plainAdd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  volatile float sum = a + b;
  return sum;
#endif
}
DUO_HD float plainSub(float a, float b) { return plainAdd(a, -b); }
// 1 / x, correctly rounded (on CUDA the rcp.rn instruction rather than a whole division).
DUO_HD float reciprocal(float x) {
#ifdef __CUDA_ARCH__
  return __frcp_rn(x);
#else
  return 1.0f / x;
#endif
}
DUO_HD float plainMul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  volatile float product = a * b;
  return product;
#endif
}

// int4's range (docs/decisions/0006-kv-quantization.md): [min, max] of the group shrunk about its middle by one of
// these factors on each side, whichever pair gives the smallest squared error after the fp16 rounding of scale and
// zero (factor 1 on both sides is the reference's min / max and wins ties). 16 candidates; about 15 % less error on
// Gaussian groups of 64 than min / max alone. The layout and the dequantization are the reference's; codes are
// rint((x − zero) · (1 / scale)), one division per candidate rather than one per value.
constexpr int kInt4Shrinks = 4;
DUO_HD float int4Shrink(int index) {
  switch (index) {
    case 1: return 0.95f;
    case 2: return 0.9f;
    case 3: return 0.85f;
    default: return 1.0f;
  }
}

// fp16 scale and zero of candidate (low shrink, high shrink) for a group spanning [minimum, maximum].
DUO_HD void int4Candidate(float minimum, float maximum, int low, int high, uint16_t& scaleBits, uint16_t& zeroBits) {
  const float middle = plainMul(plainAdd(minimum, maximum), 0.5f);
  const float from = low == 0 ? minimum : plainSub(middle, plainMul(plainSub(middle, minimum), int4Shrink(low)));
  const float to = high == 0 ? maximum : plainAdd(middle, plainMul(plainSub(maximum, middle), int4Shrink(high)));
  scaleBits = floatToF16(plainAdd(plainSub(to, from) / 15.0f, 1e-8f));
  zeroBits = floatToF16(plainAdd(from, 0.0f));  // + 0: a −0 minimum stores +0 whichever order found it
}

// The code of `value` for a scale (and its reciprocal `inverse` = 1 / scale) and zero.
DUO_HD int int4Code(float value, float scale, float inverse, float zero) {
  if (!(scale > 0.0f)) return 0;  // a constant group: the fp16 scale rounds to 0, every value is the zero
  const float code = rintf(plainMul(plainSub(value, zero), inverse));
  return code < 0.0f ? 0 : (code > 15.0f ? 15 : static_cast<int>(code));
}

DUO_HD float int4SquaredError(float value, float scale, float inverse, float zero) {
  const float code = static_cast<float>(int4Code(value, scale, inverse, zero));
  const float difference = plainSub(plainAdd(plainMul(code, scale), zero), value);
  return plainMul(difference, difference);
}

// The summed squared error of channels [first, last) of `row` in the warp quantizer's order: lane l holds channel pairs
// j = l + 32p (p = 0, 1, …) and sums them in that order, then a butterfly over the 32 lanes adds the partial sums.
DUO_HD float int4GroupError(const float* row, int headDim, int first, int last, float scale, float zero) {
  const float inverse = reciprocal(scale);
  float lanes[32];
  for (int lane = 0; lane < 32; lane++) {
    float partial = 0.0f;
    for (int p = 0; 32 * p < headDim / 2; p++) {
      const int pair = lane + 32 * p;
      if (pair < headDim / 2 && 2 * pair >= first && 2 * pair < last) {
        partial = plainAdd(partial, int4SquaredError(row[2 * pair], scale, inverse, zero));
        partial = plainAdd(partial, int4SquaredError(row[2 * pair + 1], scale, inverse, zero));
      }
    }
    lanes[lane] = partial;
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    float next[32];
    for (int lane = 0; lane < 32; lane++) next[lane] = plainAdd(lanes[lane], lanes[lane ^ offset]);
    for (int lane = 0; lane < 32; lane++) lanes[lane] = next[lane];
  }
  return lanes[0];
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
      uint16_t scaleBits = 0, zeroBits = 0;
      float best = 0.0f;
      for (int candidate = 0; candidate < kInt4Shrinks * kInt4Shrinks; candidate++) {
        uint16_t candidateScale, candidateZero;
        int4Candidate(minimum, maximum, candidate / kInt4Shrinks, candidate % kInt4Shrinks, candidateScale, candidateZero);
        const float error = int4GroupError(row, headDim, first, last, f16ToFloat(candidateScale), f16ToFloat(candidateZero));
        if (candidate == 0 || error < best) {
          best = error;
          scaleBits = candidateScale;
          zeroBits = candidateZero;
        }
      }
      const float scale = f16ToFloat(scaleBits), zero = f16ToFloat(zeroBits), inverse = reciprocal(scale);
      scales[2 * group] = scaleBits;
      scales[2 * group + 1] = zeroBits;
      for (int c = first; c < last; c += 2) {
        uint8_t packed = 0;
        for (int k = 0; k < 2 && c + k < last; k++)
          packed |= static_cast<uint8_t>(int4Code(row[c + k], scale, inverse, zero) << (4 * k));
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
