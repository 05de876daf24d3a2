// The CPU reference quantizer: one token's keys (or values) of one KV head at a time, with f32 arithmetic and
// round-half-to-even as the kernels do (so the CUDA and CPU quantizers can be checked code for code against it).
import type { KvQuantScheme } from '@duoattn/core';
import { f16ToNumber, numberToF16 } from '@duoattn/core';
import { expectKvQuantScheme, int4Groups } from './scheme.js';

/** One quantized row: codes (int8 two's complement, fp8 e4m3 bits, or two int4 codes per byte, low nibble first). */
export interface QuantizedRow {
  scheme: Exclude<KvQuantScheme, 'none'>;
  codes: Uint8Array;
  /** fp16 bits: one per row (int8, fp8) or one per group (int4). */
  scales: Uint16Array;
  /** fp16 bits of each int4 group's zero (its minimum); empty otherwise. */
  zeros: Uint16Array;
}

const f32 = Math.fround;
/** fp16 rounding of an f32 value, as bits and as the value they hold. */
function half(value: number): { bits: number; value: number } {
  const bits = numberToF16(value);
  return { bits, value: f16ToNumber(bits) };
}

/** Round half to even (CUDA's rintf / __float2int_rn). */
export function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction > 0.5) return floor + 1;
  if (fraction < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// fp8 e4m3 (the OCP "FN" variant: no infinities, ±448 largest, 0x7F / 0xFF NaN).
const E4M3_MAX = 448;
const E4M3_MAGNITUDES = Array.from({ length: 127 }, (_, code) => decodeE4m3(code)); // 0x00 … 0x7E, increasing

/** The value of an e4m3 code. */
export function decodeE4m3(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const exponent = (code >> 3) & 0x0f;
  const mantissa = code & 0x07;
  if (exponent === 0x0f && mantissa === 0x07) return Number.NaN;
  if (exponent === 0) return sign * (mantissa / 8) * 2 ** -6;
  return sign * (1 + mantissa / 8) * 2 ** (exponent - 7);
}

/** The nearest e4m3 code (ties to the even code), saturating at ±448. */
export function encodeE4m3(value: number): number {
  if (Number.isNaN(value)) return 0x7f;
  const sign = value < 0 || Object.is(value, -0) ? 0x80 : 0;
  const magnitude = Math.abs(value);
  const last = E4M3_MAGNITUDES.length - 1;
  if (magnitude >= E4M3_MAX) return sign | last;
  // The largest code whose magnitude is ≤ the value, then the nearer of it and the next.
  let low = 0;
  let high = last;
  while (high - low > 1) {
    const middle = (low + high) >> 1;
    if ((E4M3_MAGNITUDES[middle] as number) <= magnitude) low = middle;
    else high = middle;
  }
  const below = magnitude - (E4M3_MAGNITUDES[low] as number);
  const above = (E4M3_MAGNITUDES[high] as number) - magnitude;
  const nearest = below < above ? low : above < below ? high : low % 2 === 0 ? low : high;
  return sign | nearest;
}

/** Quantizes one row of f32 values (`headDim` channels of one token and KV head). */
export function quantizeRow(scheme: Exclude<KvQuantScheme, 'none'>, row: ArrayLike<number>): QuantizedRow {
  const values = Float32Array.from(row as ArrayLike<number>);
  switch (expectKvQuantScheme(scheme)) {
    case 'int8':
    case 'fp8': {
      const limit = scheme === 'int8' ? 127 : E4M3_MAX;
      const largest = values.reduce((most, v) => Math.max(most, Math.abs(v)), 0);
      const scale = half(f32(largest / limit));
      const codes = new Uint8Array(values.length);
      if (scale.value > 0) {
        values.forEach((v, i) => {
          const scaled = f32(v / scale.value);
          codes[i] =
            scheme === 'int8' ? Math.min(127, Math.max(-127, roundHalfEven(scaled))) & 0xff : encodeE4m3(scaled);
        });
      }
      return { scheme, codes, scales: Uint16Array.of(scale.bits), zeros: new Uint16Array(0) };
    }
    default: {
      const { count, width } = int4Groups(values.length);
      const codes = new Uint8Array(values.length / 2);
      const scales = new Uint16Array(count);
      const zeros = new Uint16Array(count);
      for (let g = 0; g < count; g++) {
        const group = values.subarray(g * width, Math.min(values.length, (g + 1) * width));
        const minimum = group.reduce((a, b) => Math.min(a, b), Number.POSITIVE_INFINITY);
        const maximum = group.reduce((a, b) => Math.max(a, b), Number.NEGATIVE_INFINITY);
        const { scale, zero } = int4Range(values, g * width, g * width + group.length, minimum, maximum);
        scales[g] = scale.bits;
        zeros[g] = zero.bits;
        group.forEach((v, i) => {
          const channel = g * width + i;
          // A scale that rounds to 0 in fp16 (a constant group): every code 0, the value is the zero.
          const code = int4Code(v, scale.value, zero.value);
          codes[channel >> 1] = (codes[channel >> 1] as number) | (code << ((channel & 1) * 4));
        });
      }
      return { scheme, codes, scales, zeros };
    }
  }
}

/** Shrink factors of int4's range search (quant.h): each side of [min, max] about its middle; 1 is min / max. */
export const INT4_SHRINKS = [1, 0.95, 0.9, 0.85].map(Math.fround);

/** rint((value − zero) · (1 / scale)) in [0, 15], the native quantizers' arithmetic. */
function int4Code(value: number, scale: number, zero: number): number {
  // A scale that rounds to 0 in fp16 (a constant group): every code 0, the value is the zero.
  return scale > 0 ? Math.min(15, Math.max(0, roundHalfEven(f32(f32(value - zero) * f32(1 / scale))))) : 0;
}

/**
 * int4's scale and zero for channels [first, last) of `row`: among [min, max] shrunk about its middle by each pair of
 * INT4_SHRINKS, the one with the smallest squared error after fp16 rounding (ties: the earlier, min / max first). The
 * errors are summed in the order of the CUDA warp quantizer (lane l sums channel pairs l + 32p, then a butterfly over
 * the 32 lanes), every step rounded to f32, so the choice is the native quantizers' bit for bit.
 */
function int4Range(row: Float32Array, first: number, last: number, minimum: number, maximum: number) {
  const squaredError = (value: number, scale: number, zero: number) => {
    const difference = f32(f32(f32(int4Code(value, scale, zero) * scale) + zero) - value);
    return f32(difference * difference);
  };
  let best: { scale: ReturnType<typeof half>; zero: ReturnType<typeof half> } | undefined;
  let bestError = 0;
  const middle = f32(f32(minimum + maximum) * 0.5);
  for (let low = 0; low < INT4_SHRINKS.length; low++) {
    for (let high = 0; high < INT4_SHRINKS.length; high++) {
      const from = low === 0 ? minimum : f32(middle - f32(f32(middle - minimum) * (INT4_SHRINKS[low] as number)));
      const to = high === 0 ? maximum : f32(middle + f32(f32(maximum - middle) * (INT4_SHRINKS[high] as number)));
      const scale = half(f32(f32(f32(to - from) / 15) + f32(1e-8)));
      const zero = half(from + 0); // + 0: a −0 minimum stores +0, as the native quantizers do
      const lanes = Array.from({ length: 32 }, (_, lane) => {
        let partial = 0;
        for (let pair = lane; pair < row.length / 2; pair += 32) {
          if (2 * pair < first || 2 * pair >= last) continue;
          partial = f32(partial + squaredError(row[2 * pair] as number, scale.value, zero.value));
          partial = f32(partial + squaredError(row[2 * pair + 1] as number, scale.value, zero.value));
        }
        return partial;
      });
      for (let offset = 16; offset > 0; offset >>= 1) {
        const next = lanes.map((value, lane) => f32(value + (lanes[lane ^ offset] as number)));
        lanes.splice(0, 32, ...next);
      }
      const error = lanes[0] as number;
      if (best === undefined || error < bestError) {
        best = { scale, zero };
        bestError = error;
      }
    }
  }
  return best as NonNullable<typeof best>;
}

/** The f32 values a quantized row stands for. */
export function dequantizeRow(quantized: QuantizedRow, headDim: number): Float32Array {
  const out = new Float32Array(headDim);
  const scale = (g: number) => f16ToNumber(quantized.scales[g] ?? 0);
  if (quantized.scheme === 'int4') {
    const { width } = int4Groups(headDim);
    for (let c = 0; c < headDim; c++) {
      const g = Math.floor(c / width);
      const code = ((quantized.codes[c >> 1] ?? 0) >> ((c & 1) * 4)) & 0x0f;
      out[c] = f32(f32(code * scale(g)) + f16ToNumber(quantized.zeros[g] ?? 0));
    }
    return out;
  }
  for (let c = 0; c < headDim; c++) {
    const code = quantized.codes[c] ?? 0;
    const value = quantized.scheme === 'int8' ? (code << 24) >> 24 : decodeE4m3(code);
    out[c] = f32(value * scale(0));
  }
  return out;
}

/** Quantizes and dequantizes `rows` (each `headDim` values, concatenated): what the cache will hand attention. */
export function roundTrip(scheme: KvQuantScheme, rows: Float32Array, headDim: number): Float32Array {
  if (scheme === 'none') return Float32Array.from(rows);
  const out = new Float32Array(rows.length);
  for (let start = 0; start < rows.length; start += headDim) {
    out.set(dequantizeRow(quantizeRow(scheme, rows.subarray(start, start + headDim)), headDim), start);
  }
  return out;
}
