// Test support: attention over quantized caches (codes + fp16 scales, dequantized inside the kernels) against float64
// attention over the reference quantizer's round trip — full heads, a streaming head under the Λ mask, prefill and
// decode (long enough to split over the keys), every scheme, head dims that take each kernel family. Used by the CPU
// and CUDA tests.
import type { KvQuantScheme, TensorHandle } from '@duoattn/core';
import { kvQuantLayout, roundTrip } from '@duoattn/kv-quant';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';
import { randomArray, referenceAttention, relativeError, toMatrix } from './testing/reference.js';

const SCHEMES: Exclude<KvQuantScheme, 'none'>[] = ['int8', 'int4', 'fp8'];
// Head dim 16 takes the CUDA-core kernels (f32 tiles), 64 and 128 the tensor-core ones (bf16 tiles); 600 keys split.
// The long chunks give Hopper's warpgroup prefill several 128-row blocks (the last one partial) and 128-key tiles past
// the keys' end, with the streaming head's window crossing tiles.
const SHAPES = [
  { headDim: 16, length: 50, queryRows: 6 },
  { headDim: 64, length: 600, queryRows: 6 },
  { headDim: 128, length: 200, queryRows: 6 },
  { headDim: 64, length: 700, queryRows: 200 },
  { headDim: 128, length: 900, queryRows: 260 },
];
const CASES = SCHEMES.flatMap((scheme) => SHAPES.map((shape) => ({ scheme, ...shape })));
const heads = 8;
const kvHeads = 2;
const sink = 4;
const recent = 9;

/**
 * Registers the suite for one backend; `backend()` returns undefined when it is absent (tests then skip visibly).
 * `tolerance(headDim)`: the relative error allowed against float64 attention over the dequantized values.
 */
export function quantizedAttentionSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  tolerance: (headDim: number) => number,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`attention over quantized caches: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    it.each(CASES)(
      '$scheme, head dim $headDim, $length keys, $queryRows query rows: full heads, then one streaming head under the Λ mask',
      async ({ scheme, headDim, length, queryRows }) => {
        const b = backend() as NativeBackend;
        const scale = 1 / Math.sqrt(headDim);
        const limit = tolerance(headDim);
        const keys = [0, 1].map((g) => randomArray(length * headDim, 20 + g, 2));
        const values = [0, 1].map((g) => randomArray(length * headDim, 30 + g));
        const queries = randomArray(queryRows * heads * headDim, 40, 2);
        const held = (rows: Float32Array) => toMatrix(roundTrip(scheme, rows, headDim), length, headDim);
        const heldKeys = keys.map(held);
        const heldValues = values.map(held);
        const queryStart = length - queryRows;
        const tensors: TensorHandle[] = [];
        const keep = <T extends TensorHandle>(tensor: T): T => {
          tensors.push(tensor);
          return tensor;
        };
        const planes = (perHead: Float32Array[], capacity: number) => {
          const { codes, scales } = quantizedPlanes(b, scheme, perHead, length, headDim, capacity);
          return { codes: keep(codes), scales: keep(scales) };
        };
        const query = keep(b.upload('f32', [queryRows, heads * headDim], queries));
        const out = keep(b.alloc('f32', [queryRows, heads * headDim]));
        const queryMatrix = toMatrix(queries, queryRows, heads * headDim);
        const shape = { heads, kvHeads, headDim, scale, keyLength: length, queryStart };

        // Every head full: one pair of planes holds both KV heads.
        const k = planes(keys, length + 16);
        const v = planes(values, length + 16);
        const quant = { scheme, keyScales: k.scales, valueScales: v.scales };
        b.attentionPrefill(query, k.codes, v.codes, out, { ...shape, quant });
        const full = referenceAttention(queryMatrix, heldKeys, heldValues, shape);
        expect(relativeError((await b.read(out)) as Float32Array, full)).toBeLessThan(limit);

        // Decode: the last query row alone.
        const last = keep(b.upload('f32', [1, heads * headDim], queries.subarray((queryRows - 1) * heads * headDim)));
        const lastOut = keep(b.alloc('f32', [1, heads * headDim]));
        b.attentionDecode(last, k.codes, v.codes, lastOut, { ...shape, quant });
        expect(relativeError((await b.read(lastOut)) as Float32Array, full.slice(-1))).toBeLessThan(limit);

        // KV head 1 full, KV head 0 streaming: main planes for head 1, a region (slot = position here) for head 0.
        const mainKeys = planes(keys.slice(1), length + 16);
        const mainValues = planes(values.slice(1), length + 16);
        const regionKeys = planes(keys.slice(0, 1), sink + recent + length);
        const regionValues = planes(values.slice(0, 1), sink + recent + length);
        const streaming = {
          retrievalHeads: [1],
          keyCache: regionKeys.codes,
          valueCache: regionValues.codes,
          sink,
          recent,
        };
        const mixedQuant = {
          scheme,
          keyScales: mainKeys.scales,
          valueScales: mainValues.scales,
          streamKeyScales: regionKeys.scales,
          streamValueScales: regionValues.scales,
        };
        b.attentionPrefill(query, mainKeys.codes, mainValues.codes, out, { ...shape, streaming, quant: mixedQuant });
        const visible = (i: number, j: number, head: number) =>
          j <= i && (Math.floor(head / (heads / kvHeads)) === 1 || j < sink || i - j < recent);
        const mixed = referenceAttention(queryMatrix, heldKeys, heldValues, { ...shape, visible });
        expect(relativeError((await b.read(out)) as Float32Array, mixed)).toBeLessThan(limit);
        b.attentionDecode(last, mainKeys.codes, mainValues.codes, lastOut, { ...shape, streaming, quant: mixedQuant });
        expect(relativeError((await b.read(lastOut)) as Float32Array, mixed.slice(-1))).toBeLessThan(limit);
        for (const tensor of tensors) tensor.dispose();
      },
    );

    it('checks the scale planes against the code planes, by name', () => {
      const b = backend() as NativeBackend;
      const headDim = 64;
      const codes = b.alloc('u8', [kvHeads, 16, headDim]);
      const scales = b.alloc('f16', [kvHeads, 16, 2]);
      const query = b.alloc('f32', [1, heads * headDim]);
      const out = b.alloc('f32', [1, heads * headDim]);
      const attributes = { heads, kvHeads, headDim, scale: 0.125, keyLength: 4, queryStart: 3 };
      expect(() =>
        b.attentionPrefill(query, codes, codes, out, {
          ...attributes,
          quant: { scheme: 'int8', keyScales: scales, valueScales: scales },
        }),
      ).toThrow(/f16 tensor of shape \[2, 16, 1\] for `quant.keyScales` but received f16 \[2, 16, 2\]/);
      expect(() => b.attentionPrefill(query, codes, codes, out, attributes)).toThrow(/`keyCache`/);
      for (const tensor of [codes, scales, query, out]) tensor.dispose();
    });
  });
}

/** KV heads' rows (one array per head, `length` rows each) quantized into fresh planes of `capacity` slots. */
function quantizedPlanes(
  b: NativeBackend,
  scheme: Exclude<KvQuantScheme, 'none'>,
  perHead: Float32Array[],
  length: number,
  headDim: number,
  capacity: number,
) {
  const { codeBytes, scaleHalves } = kvQuantLayout(scheme, headDim);
  const count = perHead.length;
  const interleaved = new Float32Array(length * count * headDim);
  for (let p = 0; p < length; p++) {
    for (const [g, rows] of perHead.entries()) {
      interleaved.set(rows.subarray(p * headDim, (p + 1) * headDim), (p * count + g) * headDim);
    }
  }
  const source = b.upload('f32', [length, count * headDim], interleaved);
  const codes = b.alloc('u8', [count, capacity, codeBytes]);
  const scales = b.alloc('f16', [count, capacity, scaleHalves]);
  b.writeCacheQuantized(source, codes, scales, 0, scheme);
  source.dispose();
  return { codes, scales };
}
