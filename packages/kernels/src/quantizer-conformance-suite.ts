// Test support: a backend's quantized cache writes against the reference quantizer, code for code and scale for scale,
// for every scheme, several head sizes and awkward rows (zeros, a constant row, a wide range, ties). Used by the CPU
// and CUDA tests.
import type { KvQuantScheme } from '@duoattn/core';
import { randomArray } from '@duoattn/core';
import { kvQuantLayout, quantizeRow } from '@duoattn/kv-quant';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';

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

    it.each(SCHEMES)(
      '%s: ropeWriteCache quantizes the rotated keys and the values into both regions, ring wrap included',
      async (scheme) => {
        const b = backend() as NativeBackend;
        const heads = 6;
        const kvHeads = 3;
        const headDim = 64;
        const rows = 10;
        const sink = 2;
        const recent = 4;
        const capacity = 24;
        const slots = sink + recent + rows; // positions 16 … 19 wrap onto ring slots 2 … 5
        const { codeBytes, scaleHalves } = kvQuantLayout(scheme, headDim);
        const frequencies = b.upload(
          'f32',
          [headDim / 2],
          Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** (-(2 * i) / headDim)),
        );
        const plane = (heads: number, slotCount: number, width: number, dtype: 'u8' | 'f16') =>
          dtype === 'u8'
            ? b.upload('u8', [heads, slotCount, width], new Uint8Array(heads * slotCount * width))
            : b.upload('f16', [heads, slotCount, width], new Uint16Array(heads * slotCount * width));
        const keyCodes = plane(1, capacity, codeBytes, 'u8');
        const valueCodes = plane(1, capacity, codeBytes, 'u8');
        const keyScales = plane(1, capacity, scaleHalves, 'f16');
        const valueScales = plane(1, capacity, scaleHalves, 'f16');
        const streamKeyCodes = plane(2, slots, codeBytes, 'u8');
        const streamValueCodes = plane(2, slots, codeBytes, 'u8');
        const streamKeyScales = plane(2, slots, scaleHalves, 'f16');
        const streamValueScales = plane(2, slots, scaleHalves, 'f16');
        // KV head 1 keeps every key; heads 0 and 2 stream (region rows 0 and 1): the map, not a prefix.
        const streaming = { retrievalHeads: [1], keyCache: streamKeyCodes, valueCache: streamValueCodes, sink, recent };
        const quant = { scheme, keyScales, valueScales, streamKeyScales, streamValueScales };
        // What each (plane, head, slot) should hold: the last row written there, quantized by the reference.
        const expected = new Map<string, { codes: Uint8Array; scales: Uint16Array }>();
        const transient: NativeBackendTensor[] = [];
        for (const start of [0, rows]) {
          const query = b.upload('f32', [rows, heads * headDim], randomArray(rows * heads * headDim, 50 + start));
          const key = b.upload('f32', [rows, kvHeads * headDim], randomArray(rows * kvHeads * headDim, 60 + start, 2));
          const value = b.upload('f32', [rows, kvHeads * headDim], randomArray(rows * kvHeads * headDim, 70 + start));
          const positions = b.upload(
            'i32',
            [rows],
            Int32Array.from({ length: rows }, (_, r) => start + r),
          );
          transient.push(query, key, value, positions);
          b.ropeWriteCache(query, key, value, positions, frequencies, keyCodes, valueCodes, {
            heads,
            kvHeads,
            headDim,
            interleaved: false,
            streaming,
            quant,
          });
          const rotated = (await b.read(key)) as Float32Array;
          const values = (await b.read(value)) as Float32Array;
          for (let r = 0; r < rows; r++) {
            const position = start + r;
            for (let head = 0; head < kvHeads; head++) {
              const streams = head !== 1;
              const slot = !streams
                ? position
                : position < sink
                  ? position
                  : sink + ((position - sink) % (slots - sink));
              for (const [kind, data] of [
                ['key', rotated],
                ['value', values],
              ] as const) {
                const row = data.subarray((r * kvHeads + head) * headDim, (r * kvHeads + head + 1) * headDim);
                const reference = quantizeRow(scheme, row);
                const scales = scheme === 'int4' ? interleave(reference.scales, reference.zeros) : reference.scales;
                expected.set(`${kind} ${head} ${slot}`, { codes: reference.codes, scales });
              }
            }
          }
        }
        let mismatches = 0;
        let checked = 0;
        for (const [kind, mainCodes, mainScales, regionCodes, regionScales] of [
          ['key', keyCodes, keyScales, streamKeyCodes, streamKeyScales],
          ['value', valueCodes, valueScales, streamValueCodes, streamValueScales],
        ] as const) {
          const held = {
            mainCodes: (await b.read(mainCodes)) as Uint8Array,
            mainScales: (await b.read(mainScales)) as Uint16Array,
            regionCodes: (await b.read(regionCodes)) as Uint8Array,
            regionScales: (await b.read(regionScales)) as Uint16Array,
          };
          for (const [key, want] of expected) {
            const [wantKind, headText, slotText] = key.split(' ');
            if (wantKind !== kind) continue;
            const head = Number(headText);
            const slot = Number(slotText);
            const streams = head !== 1;
            const row = streams ? (head > 1 ? head - 1 : head) * slots + slot : slot;
            const codes = (streams ? held.regionCodes : held.mainCodes).subarray(
              row * codeBytes,
              (row + 1) * codeBytes,
            );
            const scales = (streams ? held.regionScales : held.mainScales).subarray(
              row * scaleHalves,
              (row + 1) * scaleHalves,
            );
            codes.forEach((code, i) => {
              if (code !== want.codes[i]) mismatches++;
            });
            scales.forEach((bits, i) => {
              if (bits !== want.scales[i]) mismatches++;
            });
            checked++;
          }
        }
        // 20 positions of the full head, 2 sinks + 14 ring slots of each streaming head, keys and values.
        expect(checked).toBe(2 * (2 * rows + 2 * slots));
        expect(mismatches).toBe(0);
        for (const tensor of [
          ...transient,
          frequencies,
          keyCodes,
          valueCodes,
          keyScales,
          valueScales,
          streamKeyCodes,
          streamValueCodes,
          streamKeyScales,
          streamValueScales,
        ])
          tensor.dispose();
      },
    );
  });
}

type NativeBackendTensor = ReturnType<NativeBackend['alloc']>;

/** int4's scales plane holds each group's scale then its zero. */
function interleave(scales: Uint16Array, zeros: Uint16Array): Uint16Array {
  const out = new Uint16Array(scales.length * 2);
  scales.forEach((scale, g) => {
    out[2 * g] = scale;
    out[2 * g + 1] = zeros[g] ?? 0;
  });
  return out;
}
