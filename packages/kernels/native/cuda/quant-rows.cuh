// Quantized KV rows as the CUDA attention kernels read them (docs/decisions/0006-kv-quantization.md): eight channels at
// a time from the u8 code plane and the fp16 scale plane, dequantized in registers and stored into the kernel's shared
// tile as it would store a plain row. No copy of the cache is ever made; a tile of 32 or 64 rows is all that exists.
#pragma once
#include <cuda_fp8.h>

#include "../quant.h"
#include "cuda-common.cuh"
#include "mma.cuh"

namespace duo {
namespace cuda {

__device__ __forceinline__ float halfBits(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// Byte `index` of `biased` (int8 codes XOR 0x80: b + 128) as the f32 code b, by a byte permute rather than the
// conversion unit: the bits 2²³ + 128 + b, minus 2²³ + 128.
__device__ __forceinline__ float int8Code(uint32_t biased, int index) {
  return __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7540 + index)) - 8388736.0f;
}

// The value of an e4m3 code, built from its bits (quant.h's decodeE4m3 without ldexpf).
__device__ __forceinline__ float e4m3Value(uint32_t code) {
  const uint32_t exponent = (code >> 3) & 0x0f, mantissa = code & 0x07;
  const float magnitude = exponent ? __uint_as_float(((exponent + 120) << 23) | (mantissa << 20)) : mantissa * 0.001953125f;
  return (code & 0x80) ? -magnitude : magnitude;
}

// One KV head's quantized rows: codes [slots, codeBytes] and scales [slots, scaleHalves] of keys and of values.
struct QuantHead {
  const uint8_t* keyCodes;
  const uint8_t* valueCodes;
  const uint16_t* keyScales;
  const uint16_t* valueScales;
  KvQuant scheme;
  int codeBytes, scaleHalves, groupWidth;
};

// KV head `kvHead`'s rows: its full cache (k, v are the main code planes), or, for a streaming head, its part of the
// streaming region.
__device__ __forceinline__ QuantHead quantHead(const void* k, const void* v, int64_t capacity, const StreamingLayout& layout,
                                               const KvQuantPlanes& planes, bool streams, int kvHead, int headDim) {
  QuantHead head;
  head.scheme = static_cast<KvQuant>(planes.scheme);
  head.codeBytes = static_cast<int>(planes.codeBytes);
  head.scaleHalves = static_cast<int>(planes.scaleHalves);
  head.groupWidth = int4GroupWidth(headDim);
  const int64_t codeStart = streams ? layout.headStart(kvHead, planes.codeBytes) : layout.fullRow(kvHead) * capacity * planes.codeBytes;
  const int64_t scaleStart = streams ? layout.headStart(kvHead, planes.scaleHalves) : layout.fullRow(kvHead) * capacity * planes.scaleHalves;
  head.keyCodes = static_cast<const uint8_t*>(streams ? layout.key : k) + codeStart;
  head.valueCodes = static_cast<const uint8_t*>(streams ? layout.value : v) + codeStart;
  head.keyScales = (streams ? planes.streamKeyScales : planes.keyScales) + scaleStart;
  head.valueScales = (streams ? planes.streamValueScales : planes.valueScales) + scaleStart;
  return head;
}

// Channels column … column + 7 of row `slot` (column a multiple of 8; an int4 group never splits them).
__device__ __forceinline__ void dequantize8(const QuantHead& head, const uint8_t* codes, const uint16_t* scales, int64_t slot,
                                            int column, float (&out)[8]) {
  const uint16_t* rowScales = scales + slot * head.scaleHalves;
  if (head.scheme == KvQuant::Int4) {
    const uint32_t packed = __ldg(reinterpret_cast<const uint32_t*>(codes + slot * head.codeBytes + column / 2));
    const int group = column / head.groupWidth;
    const float scale = halfBits(__ldg(rowScales + 2 * group)), zero = halfBits(__ldg(rowScales + 2 * group + 1));
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = static_cast<float>((packed >> (4 * i)) & 0x0f) * scale + zero;
    return;
  }
  const uint2 packed = __ldg(reinterpret_cast<const uint2*>(codes + slot * head.codeBytes + column));
  const float scale = halfBits(__ldg(rowScales));
  const bool fp8 = head.scheme == KvQuant::Fp8;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const uint32_t code = ((i < 4 ? packed.x : packed.y) >> (8 * (i & 3))) & 0xff;
    const float value = fp8 ? e4m3Value(code) : static_cast<float>(static_cast<int8_t>(code));
    out[i] = value * scale;
  }
}

// Sixteen bytes of one row's codes, dequantized to bf16 pairs for a warpgroup-MMA tile: int8 and fp8 give 16 channels
// (two 8-channel chunks), int4 32 (four chunks; the row's one group, head dims up to 128). `scaleBits` is the row's
// f16 scale (int4: scale | zero << 16); zero bits make every value 0, as rows past a tile's keys need. Codes reach
// f32 by byte permutes (int8: 2²³ + 128 + b, minus 2²³ + 128; int4: 2²³ + n, minus 2²³) rather than the conversion
// unit, and fp8 pairs by the hardware's e4m3x2 conversion (codes 0x7f / 0xff, written only for NaN inputs, read as NaN
// here and as 480 by dequantize8).
template <KvQuant kScheme>
constexpr int kPieceChunks = kScheme == KvQuant::Int4 ? 4 : 2;

template <KvQuant kScheme>
__device__ __forceinline__ void dequantizePiece(uint4 raw, uint32_t scaleBits, uint4 (&chunks)[kPieceChunks<kScheme>]) {
  const float scale = halfBits(static_cast<uint16_t>(scaleBits & 0xffff));
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  uint32_t out[4 * kPieceChunks<kScheme>];
  if constexpr (kScheme == KvQuant::Int4) {
    const float zero = halfBits(static_cast<uint16_t>(scaleBits >> 16));
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const uint32_t even = words[w] & 0x0f0f0f0fu, odd = (words[w] >> 4) & 0x0f0f0f0fu;  // channels 2i and 2i + 1
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float low = __uint_as_float(__byte_perm(even, 0x4b000000u, 0x7540 + i)) - 8388608.0f;
        const float high = __uint_as_float(__byte_perm(odd, 0x4b000000u, 0x7540 + i)) - 8388608.0f;
        out[4 * w + i] = packPair<__nv_bfloat16>(fmaf(low, scale, zero), fmaf(high, scale, zero));
      }
    }
  } else if constexpr (kScheme == KvQuant::Int8) {
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const uint32_t biased = words[w] ^ 0x80808080u;
#pragma unroll
      for (int i = 0; i < 2; i++) {
        out[2 * w + i] = packPair<__nv_bfloat16>(int8Code(biased, 2 * i) * scale, int8Code(biased, 2 * i + 1) * scale);
      }
    }
  } else {
#pragma unroll
    for (int w = 0; w < 4; w++)
#pragma unroll
      for (int i = 0; i < 2; i++) {
        const __half2_raw pair = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(words[w] >> (16 * i)), __NV_E4M3);
        const float2 values = __half22float2(*reinterpret_cast<const __half2*>(&pair));
        out[2 * w + i] = packPair<__nv_bfloat16>(values.x * scale, values.y * scale);
      }
  }
#pragma unroll
  for (int c = 0; c < kPieceChunks<kScheme>; c++) chunks[c] = make_uint4(out[4 * c], out[4 * c + 1], out[4 * c + 2], out[4 * c + 3]);
}

// Eight values as T at a 16-byte aligned `target`.
template <typename T>
__device__ __forceinline__ void store8(T* target, const float (&x)[8]) {
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(target)[0] = make_float4(x[0], x[1], x[2], x[3]);
    reinterpret_cast<float4*>(target)[1] = make_float4(x[4], x[5], x[6], x[7]);
  } else {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const T low = fromFloat<T>(x[2 * i]), high = fromFloat<T>(x[2 * i + 1]);
      uint16_t a, b;
      memcpy(&a, &low, 2);
      memcpy(&b, &high, 2);
      words[i] = static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
    }
    *reinterpret_cast<uint4*>(target) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// Dequantizes rows r < count of a tile (row r is cache slot slotOf(tile + r)) into shared rows of T: keys `keyStride`
// elements apart, values `valueStride` apart; rows count … ROWS − 1 become zeros (probability 0 · NaN would poison
// P·V). Threads `thread` of THREADS share the work.
template <typename T, int D, int ROWS, int THREADS, typename Slot>
__device__ __forceinline__ void stageQuantTile(T* keyStage, int keyStride, T* valueStage, int valueStride, const QuantHead& head,
                                               int64_t tile, int count, int thread, const Slot& slotOf) {
  constexpr int kChunks = D / 8, kPieces = ROWS * kChunks;
#pragma unroll
  for (int i = 0; i < (kPieces + THREADS - 1) / THREADS; i++) {
    const int piece = thread + i * THREADS;
    if (kPieces % THREADS != 0 && piece >= kPieces) break;
    const int r = piece / kChunks, column = (piece % kChunks) * 8;
    float key[8], value[8];
    if (r < count) {
      const int64_t slot = slotOf(tile + r);
      dequantize8(head, head.keyCodes, head.keyScales, slot, column, key);
      dequantize8(head, head.valueCodes, head.valueScales, slot, column, value);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) key[i] = value[i] = 0.0f;
    }
    store8(keyStage + r * keyStride + column, key);
    store8(valueStage + r * valueStride + column, value);
  }
}

}  // namespace cuda
}  // namespace duo
