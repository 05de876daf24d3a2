// Test support: a backend's quantized cache writes against the reference quantizer, code for code and scale for scale,
// for every scheme, several head sizes and awkward rows (zeros, a constant row, a wide range, ties). Used by the CPU
// and CUDA tests.
import type { KvQuantScheme } from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/core';
import type { NativeBackend } from '@duoattn/kernels';
import { randomArray } from '@duoattn/kernels/testing';
import { describe, expect, it } from 'vitest';
import { quantizeRow } from './reference.js';

const SCHEMES: Exclude<KvQuantScheme, 'none'>[] = ['int8', 'int4', 'fp8'];
const CASES = SCHEMES.flatMap((scheme) => [64, 128, 256].map((headDim) => ({ scheme, headDim })));

/** Source rows: random of several magnitudes, then zeros, a constant, values on rounding ties, a huge range. */
function sourceRows(rows: number, width: number, headDim: number): Float32Array {
  const data = randomArray(rows * width, headDim, 3);
  for (let r = 0; r < rows; r++) {
    const row = data.subarray(r * width, (r + 1) * width);
    if (r % 5 === 1) row.fill(0);
    if (r % 5 === 2) row.fill(0.3);
    for (let i = 0; i < row.length; i++) {
      if (r % 5 === 3) row[i] = (i % 17) - 8 + 0.5; // halfway values
      if (r % 5 === 4) row[i] = (row[i] ?? 0) * 10 ** ((i % 9) - 4); // nine decades in one row
    }
  }
  return data;
}

/** Registers the suite for one backend; `backend()` returns undefined when it is absent (tests then skip visibly). */
export function quantizerConformanceSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`quantized cache writes: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    it.each(CASES)(
      '$scheme at head dim $headDim writes the reference codes and scales, and nothing else',
      async ({ scheme, headDim }) => {
        const b = backend() as NativeBackend;
        const kvHeads = 3;
        const rows = 23;
        const capacity = 40;
        const start = 7;
        const { codeBytes, scaleHalves } = kvQuantLayout(scheme, headDim);
        const data = sourceRows(rows, kvHeads * headDim, headDim);
        const source = b.upload('f32', [rows, kvHeads * headDim], data);
        const codes = b.upload(
          'u8',
          [kvHeads, capacity, codeBytes],
          new Uint8Array(kvHeads * capacity * codeBytes).fill(0xaa),
        );
        const scales = b.upload(
          'f16',
          [kvHeads, capacity, scaleHalves],
          new Uint16Array(kvHeads * capacity * scaleHalves).fill(0xabcd),
        );
        b.writeCacheQuantized(source, codes, scales, start, scheme);
        const heldCodes = (await b.read(codes)) as Uint8Array;
        const heldScales = (await b.read(scales)) as Uint16Array;
        let mismatches = 0;
        for (let head = 0; head < kvHeads; head++) {
          for (let slot = 0; slot < capacity; slot++) {
            const codeRow = heldCodes.subarray(
              (head * capacity + slot) * codeBytes,
              (head * capacity + slot + 1) * codeBytes,
            );
            const scaleRow = heldScales.subarray(
              (head * capacity + slot) * scaleHalves,
              (head * capacity + slot + 1) * scaleHalves,
            );
            const row = slot - start;
            if (row < 0 || row >= rows) {
              expect(codeRow.every((code) => code === 0xaa)).toBe(true);
              expect(scaleRow.every((bits) => bits === 0xabcd)).toBe(true);
              continue;
            }
            const expected = quantizeRow(
              scheme,
              data.subarray(row * kvHeads * headDim + head * headDim, row * kvHeads * headDim + (head + 1) * headDim),
            );
            const expectedScales = scheme === 'int4' ? interleave(expected.scales, expected.zeros) : expected.scales;
            codeRow.forEach((code, i) => {
              if (code !== expected.codes[i]) mismatches++;
            });
            scaleRow.forEach((bits, i) => {
              if (bits !== expectedScales[i]) mismatches++;
            });
          }
        }
        expect(mismatches).toBe(0);
        for (const tensor of [source, codes, scales]) tensor.dispose();
      },
    );
  });
}

/** int4's scales plane holds each group's scale then its zero. */
function interleave(scales: Uint16Array, zeros: Uint16Array): Uint16Array {
  const out = new Uint16Array(scales.length * 2);
  scales.forEach((scale, g) => {
    out[2 * g] = scale;
    out[2 * g + 1] = zeros[g] ?? 0;
  });
  return out;
}
