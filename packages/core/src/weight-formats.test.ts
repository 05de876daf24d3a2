// The block-quantized weight formats: byte sizes, llama.cpp's bit positions read back from hand-built blocks, and the
// reference encoder's error on Gaussian rows.
import { describe, expect, it } from 'vitest';
import { numberToF16 } from './half.js';
import { randomNormal, seededUniform } from './random.js';
import {
  dequantizeWeights,
  quantizeWeights,
  WEIGHT_FORMATS,
  type WeightFormat,
  weightFormatBytes,
} from './weight-formats.js';

/** Seeded normal values, so failures reproduce. */
const gaussian = (count: number, seed: number, std = 1) =>
  Float64Array.from(randomNormal(count, std, seededUniform(seed)));

const setHalf = (bytes: Uint8Array, at: number, value: number) => {
  const bits = numberToF16(value);
  bytes[at] = bits & 0xff;
  bytes[at + 1] = bits >> 8;
};

describe('weight formats', () => {
  it('sizes blocks as GGUF does and refuses partial blocks, naming the format', () => {
    expect(weightFormatBytes('q8_0', 4096)).toBe(128 * 34);
    expect(weightFormatBytes('q4_k', 4096)).toBe(16 * 144);
    expect(weightFormatBytes('q5_k', 4096)).toBe(16 * 176);
    expect(weightFormatBytes('q6_k', 4096)).toBe(16 * 210);
    expect(() => weightFormatBytes('q4_k', 4000)).toThrow('Q4_K holds whole blocks of 256 values, not 4000');
    expect(() => dequantizeWeights('q8_0', new Uint8Array(10), 32)).toThrow(
      'Q8_0: 32 values need 34 bytes but 10 were given',
    );
    expect(Object.values(WEIGHT_FORMATS).map((f) => f.ggmlType)).toEqual([8, 12, 13, 14]);
  });

  it('reads Q8_0 as d · int8', () => {
    const block = new Uint8Array(34);
    setHalf(block, 0, 0.5);
    block[2] = 3;
    block[3] = 0xff; // −1
    block[33] = 0x81; // −127
    const values = dequantizeWeights('q8_0', block, 32);
    expect([values[0], values[1], values[31]]).toEqual([1.5, -0.5, -63.5]);
  });

  it("reads Q4_K's packed 6-bit scales and mins where llama.cpp puts them (sub-blocks 0–3 and the split 4–7)", () => {
    const block = new Uint8Array(144);
    setHalf(block, 0, 2); // d
    setHalf(block, 2, 0.25); // dmin
    // Sub-block 1: scale 5, min 9 in the low 6 bits of bytes 1 and 5. Sub-block 5: scale 0b110011 (51) = low nibble
    // 0b0011 in byte 9 and high bits 0b11 in byte 1's top; min 0b100010 (34) = nibble 0b0010 in byte 9's top and 0b10
    // in byte 5's top.
    block[4 + 1] = 5 | (0b11 << 6);
    block[4 + 5] = 9 | (0b10 << 6);
    block[4 + 9] = 0b0011 | (0b0010 << 4);
    // Nibbles: chunk 0 holds sub-blocks 0 (low) and 1 (high); chunk 2 holds sub-blocks 4 (low) and 5 (high).
    block[16 + 7] = 0x70; // value 32 + 7 (sub-block 1) gets 7
    block[16 + 64 + 3] = 0xe0; // value 128 + 32 + 3 (sub-block 5) gets 14
    const values = dequantizeWeights('q4_k', block, 256);
    expect(values[39]).toBe(2 * 5 * 7 - 0.25 * 9);
    expect(values[32]).toBe(-0.25 * 9); // code 0 of sub-block 1
    expect(values[163]).toBe(2 * 51 * 14 - 0.25 * 34);
    expect(values[0]).toBe(0);
  });

  it("reads Q5_K's fifth bits (bit 2c: the first 32 of chunk c; 2c + 1: the next 32) and Q6_K's split codes", () => {
    const q5 = new Uint8Array(176);
    setHalf(q5, 0, 1);
    q5[4 + 2] = 1; // sub-block 2 (chunk 1, first half): scale 1, min 0
    q5[4 + 3] = 1; // sub-block 3 (chunk 1, second half)
    q5[16 + 4] = 0b0100; // value 64 + 4: fifth bit (bit 2)
    q5[16 + 6] = 0b1000; // value 96 + 6: fifth bit (bit 3)
    q5[48 + 32 + 4] = 0x03; // value 64 + 4: low nibble 3
    q5[48 + 32 + 6] = 0x50; // value 96 + 6: low nibble 5
    const five = dequantizeWeights('q5_k', q5, 256);
    expect([five[68], five[102], five[64]]).toEqual([19, 21, 0]);

    const q6 = new Uint8Array(210);
    setHalf(q6, 208, 0.5);
    q6[192 + 2] = 3; // sub-block 2: values 32 … 47
    q6[192 + 12] = 0xfe; // sub-block 12: values 192 … 207, scale −2
    q6[5 + 32] = 0x0a; // value 32 + 5 (k = 1): low nibble 10 in ql[32 + l]
    q6[128 + 5] = 0b10 << 2; // its high bits (2k = 2): 2 → code 0b101010 = 42 → 10
    q6[64 + 1] = 0x70; // value 128 + 64 + 1 = 193 (half 1, k = 2): high nibble of ql[64 + 1] → code 7 → −25
    q6[64 + 32 + 1] = 0x70; // value 128 + 96 + 1 = 225 (k = 3): high nibble of ql[96 + 1], sub-block 14 (scale 0)
    const six = dequantizeWeights('q6_k', q6, 256);
    expect(six[37]).toBe(0.5 * 3 * 10);
    expect(six[193]).toBe(0.5 * -2 * -25);
    expect(Math.abs(six[0] as number)).toBe(0); // scale 0
    expect(Math.abs(six[225] as number)).toBe(0);
  });

  const errorBounds: [WeightFormat, number][] = [
    ['q8_0', 0.006],
    ['q6_k', 0.03],
    ['q5_k', 0.06],
    ['q4_k', 0.12],
  ];
  it.each(errorBounds)(
    '%s: the reference encoder keeps Gaussian rows within its relative RMS bound (%f)',
    (format, bound) => {
      const values = gaussian(4096, 7, 0.02);
      const back = dequantizeWeights(format, quantizeWeights(format, values), values.length);
      let error = 0;
      let power = 0;
      for (let i = 0; i < values.length; i++) {
        error += ((back[i] as number) - (values[i] as number)) ** 2;
        power += (values[i] as number) ** 2;
      }
      const relative = Math.sqrt(error / power);
      expect(relative).toBeLessThan(bound);
      // Fewer bits, more error: each format sits above the next finer one's bound's tenth.
      expect(relative).toBeGreaterThan(bound / 20);
    },
  );

  it('refuses values a block cannot hold (non-finite, or past its f16 scales), naming the value', () => {
    const row = new Float64Array(256);
    row[7] = Number.NaN;
    expect(() => quantizeWeights('q4_k', row)).toThrow('Q4_K: value 7 is NaN; expected a finite value within ±4000000');
    row[7] = 1e7;
    expect(() => quantizeWeights('q8_0', row)).toThrow('Q8_0: value 7 is 10000000');
  });

  it('Q8_0 rounds each value to its block step (|error| ≤ d / 2), all-zero blocks stay zero', () => {
    const values = gaussian(256, 3);
    values.fill(0, 32, 64);
    const bytes = quantizeWeights('q8_0', values);
    const back = dequantizeWeights('q8_0', bytes, 256);
    for (let block = 0; block < 8; block++) {
      const d = dequantizeWeights(
        'q8_0',
        Uint8Array.of(bytes[34 * block] as number, bytes[34 * block + 1] as number, 1, ...new Array(31).fill(0)),
        32,
      )[0] as number;
      for (let i = 32 * block; i < 32 * block + 32; i++)
        expect(Math.abs((back[i] as number) - (values[i] as number))).toBeLessThanOrEqual(
          d / 2 + 1e-12 + Math.abs(values[i] as number) * 1e-3,
        );
    }
    expect(Array.from(back.subarray(32, 64))).toEqual(new Array(32).fill(0));
  });
});
