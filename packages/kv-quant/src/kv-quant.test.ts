// The schemes' bytes, the reference quantizer's codes and round-trip bounds, e4m3, and the error metrics.
import { f16ToNumber, numberToF16, randomArray } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { attentionOutputError, meanSquaredError, signalToNoiseDb } from './metrics.js';
import { decodeE4m3, dequantizeRow, encodeE4m3, quantizeRow, roundHalfEven, roundTrip } from './reference.js';
import { int4Groups, kvBytesPerTokenHead } from './scheme.js';

/** Largest |a − b| over the elements. */
function largestError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return worst;
}

describe('kvBytesPerTokenHead', () => {
  it('counts codes and fp16 scales exactly (68 B for int4 at head dim 128, as the reference)', () => {
    expect(kvBytesPerTokenHead('none', 128, 'bf16')).toBe(256);
    expect(kvBytesPerTokenHead('none', 128, 'f32')).toBe(512);
    expect(kvBytesPerTokenHead('int8', 128)).toBe(130);
    expect(kvBytesPerTokenHead('fp8', 128)).toBe(130);
    expect(kvBytesPerTokenHead('int4', 128)).toBe(68);
    expect(kvBytesPerTokenHead('int4', 64)).toBe(36);
    expect(kvBytesPerTokenHead('int4', 256)).toBe(136);
    expect(int4Groups(96)).toEqual({ count: 1, width: 96 });
  });

  it('rejects unknown schemes and odd head sizes by name', () => {
    expect(() => kvBytesPerTokenHead('int3' as never, 128)).toThrow(
      /`kvQuant` to be one of none, int8, int4, fp8 but received int3/,
    );
    expect(() => kvBytesPerTokenHead('int8', 127)).toThrow(/even `headDim`/);
  });
});

describe('e4m3', () => {
  it('encodes every finite code back to itself and saturates at ±448', () => {
    for (let code = 0; code < 256; code++) {
      const value = decodeE4m3(code);
      if (Number.isNaN(value)) continue;
      expect(encodeE4m3(value)).toBe(Object.is(value, 0) && code === 0x80 ? 0x80 : code);
    }
    expect(decodeE4m3(0x7e)).toBe(448);
    expect(decodeE4m3(0x01)).toBe(2 ** -9);
    expect(encodeE4m3(1e6)).toBe(0x7e);
    expect(encodeE4m3(-1e6)).toBe(0xfe);
    // Halfway between 1 (0x38) and 1.125 (0x39): ties go to the even code.
    expect(encodeE4m3(1.0625)).toBe(0x38);
    expect(encodeE4m3(1.1875)).toBe(0x3a);
  });

  it('rounds half to even like the kernels', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6].map(roundHalfEven)).toEqual([0, 2, 2, 0, -2, 2, 3]);
  });
});

describe('quantizeRow / dequantizeRow', () => {
  const headDim = 128;
  const rows = 64;
  const data = randomArray(rows * headDim, 5, 3);

  it('int8: codes within ±127, every value within half a step of its scale', () => {
    for (let r = 0; r < rows; r++) {
      const row = data.subarray(r * headDim, (r + 1) * headDim);
      const quantized = quantizeRow('int8', row);
      const scale = f16ToNumber(quantized.scales[0] ?? 0);
      const back = dequantizeRow(quantized, headDim);
      expect(largestError(row, back)).toBeLessThanOrEqual(scale * 0.5 + 1e-6);
      expect(Math.max(...Array.from(quantized.codes, (code) => Math.abs((code << 24) >> 24)))).toBeLessThanOrEqual(127);
    }
  });

  it('int4: two codes per byte; values in the chosen range within half a step, clipped ones at the nearest end', () => {
    const row = data.subarray(0, headDim);
    const quantized = quantizeRow('int4', row);
    expect(quantized.codes.length).toBe(64);
    expect(quantized.scales.length).toBe(1);
    const scale = f16ToNumber(quantized.scales[0] ?? 0);
    const zero = f16ToNumber(quantized.zeros[0] ?? 0);
    const back = dequantizeRow(quantized, headDim);
    // The zero is rounded to fp16, which can move every value by up to its half-ulp as well.
    const slack = Math.abs(zero) * 2 ** -11 + 1e-6;
    const top = zero + 15 * scale;
    row.forEach((value, c) => {
      const outside = value < zero ? zero - value : value > top ? value - top : 0;
      expect(Math.abs(value - (back[c] ?? 0))).toBeLessThanOrEqual(outside + scale * 0.5 + slack);
    });
    expect(zero).toBeGreaterThanOrEqual(f16ToNumber(numberToF16(Math.min(...row))) - slack);
    expect(top).toBeLessThanOrEqual(Math.max(...row) + scale);
  });

  it('a constant group keeps its value (the fp16 scale rounds to 0)', () => {
    const row = new Float32Array(headDim).fill(0.75);
    expect(Array.from(dequantizeRow(quantizeRow('int4', row), headDim))).toEqual(Array.from(row));
    expect(Array.from(dequantizeRow(quantizeRow('int8', new Float32Array(headDim)), headDim))).toEqual(
      new Array(headDim).fill(0),
    );
  });

  it('int4 picks the range with the least error: never worse than min / max, about 15 % less on Gaussian rows', () => {
    const width = 64;
    const rows = randomArray(300 * width, 91);
    const fp16 = (value: number) => f16ToNumber(numberToF16(value));
    let searched = 0;
    let plain = 0;
    for (let r = 0; r < 300; r++) {
      const row = rows.subarray(r * width, (r + 1) * width);
      const back = dequantizeRow(quantizeRow('int4', row), width);
      // The reference's min / max range alone, in float64 with the fp16 scale and zero.
      const low = Math.min(...row);
      const scale = fp16(Math.fround((Math.max(...row) - low) / 15) + 1e-8);
      const zero = fp16(low);
      const minMax = Array.from(row, (v) => Math.min(15, Math.max(0, Math.round((v - zero) / scale))) * scale + zero);
      const errorSearched = meanSquaredError(row, back);
      const errorPlain = meanSquaredError(row, minMax);
      expect(errorSearched).toBeLessThanOrEqual(errorPlain * (1 + 1e-5));
      searched += errorSearched;
      plain += errorPlain;
    }
    expect(searched / plain).toBeLessThan(0.9);
    expect(searched / plain).toBeGreaterThan(0.75);
  });

  it('orders the schemes by error on random rows: int8 < fp8 < int4, with SNRs a scheme of that width should reach', () => {
    const snr = Object.fromEntries(
      (['int8', 'fp8', 'int4'] as const).map((scheme) => [
        scheme,
        signalToNoiseDb(data, roundTrip(scheme, data, headDim)),
      ]),
    );
    expect(snr.int8).toBeGreaterThan(38); // uniform data: ~6 dB per bit
    expect(snr.fp8).toBeGreaterThan(25);
    expect(snr.int4).toBeGreaterThan(18);
    expect(snr.int8).toBeGreaterThan(snr.fp8 as number);
    expect(snr.fp8).toBeGreaterThan(snr.int4 as number);
    expect(signalToNoiseDb(data, roundTrip('none', data, headDim))).toBe(Number.POSITIVE_INFINITY);
  });
});

describe('metrics', () => {
  it('MSE and SNR of known differences', () => {
    expect(meanSquaredError([1, 2, 3], [1, 2, 5])).toBeCloseTo(4 / 3, 12);
    expect(signalToNoiseDb([3, 4], [3, 3])).toBeCloseTo(10 * Math.log10(25), 12);
  });

  it('attention output error grows with the quantization error and is 0 for an exact cache', () => {
    const headDim = 64;
    const length = 200;
    const keys = randomArray(length * headDim, 8, 2);
    const values = randomArray(length * headDim, 9);
    const queries = randomArray(8 * headDim, 10, 2);
    const exact = { keys, values, length, headDim };
    const error = (scheme: 'none' | 'int8' | 'int4') =>
      attentionOutputError(queries, exact, {
        keys: roundTrip(scheme, keys, headDim),
        values: roundTrip(scheme, values, headDim),
        length,
        headDim,
      });
    expect(error('none')).toBe(0);
    expect(error('int8')).toBeLessThan(0.02);
    expect(error('int8')).toBeLessThan(error('int4'));
    expect(error('int4')).toBeLessThan(0.3);
  });
});
