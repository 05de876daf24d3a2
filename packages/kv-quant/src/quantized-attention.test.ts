// Attention over quantized caches on the CPU backend (dequantized in registers) against float64 attention over the
// reference quantizer's round trip: full heads, streaming heads under the Λ mask, prefill and decode, every scheme.
import { type KvQuantScheme, kvQuantLayout, type TensorHandle } from '@duoattn/core';
import { createBackend } from '@duoattn/kernels';
import { randomArray, referenceAttention, relativeError, toMatrix } from '@duoattn/kernels/testing';
import { describe, expect, it } from 'vitest';
import { roundTrip } from './reference.js';

const backend = createBackend('cpu');
const heads = 8;
const kvHeads = 2;
const headDim = 64;
const length = 50;
const sink = 4;
const recent = 9;
const scale = 1 / Math.sqrt(headDim);

/** KV heads' rows (one array per head, `length` rows each) quantized into fresh planes of `capacity` slots. */
function quantizedPlanes(scheme: Exclude<KvQuantScheme, 'none'>, perHead: Float32Array[], capacity: number) {
  const { codeBytes, scaleHalves } = kvQuantLayout(scheme, headDim);
  const heads = perHead.length;
  const interleaved = new Float32Array(length * heads * headDim);
  for (let p = 0; p < length; p++) {
    for (const [g, rows] of perHead.entries()) {
      interleaved.set(rows.subarray(p * headDim, (p + 1) * headDim), (p * heads + g) * headDim);
    }
  }
  const source = backend.upload('f32', [length, heads * headDim], interleaved);
  const codes = backend.alloc('u8', [heads, capacity, codeBytes]);
  const scales = backend.alloc('f16', [heads, capacity, scaleHalves]);
  backend.writeCacheQuantized(source, codes, scales, 0, scheme);
  source.dispose();
  return { codes, scales };
}

describe('attention over quantized caches (cpu)', () => {
  const keys = [0, 1].map((g) => randomArray(length * headDim, 20 + g, 2));
  const values = [0, 1].map((g) => randomArray(length * headDim, 30 + g));
  const queries = randomArray(6 * heads * headDim, 40, 2);

  it.each(['int8', 'int4', 'fp8'] as const)(
    '%s: full heads, then one streaming head under the Λ mask',
    async (scheme) => {
      const held = (rows: Float32Array) => toMatrix(roundTrip(scheme, rows, headDim), length, headDim);
      const heldKeys = keys.map(held);
      const heldValues = values.map(held);
      const queryStart = length - 6;
      const query = backend.upload('f32', [6, heads * headDim], queries);
      const out = backend.alloc('f32', [6, heads * headDim]);
      const queryMatrix = toMatrix(queries, 6, heads * headDim);
      const shape = { heads, kvHeads, headDim, scale, keyLength: length, queryStart };

      // Every head full: one pair of planes holds both KV heads.
      const k = quantizedPlanes(scheme, keys, 64);
      const v = quantizedPlanes(scheme, values, 64);
      const quant = { scheme, keyScales: k.scales, valueScales: v.scales };
      backend.attentionPrefill(query, k.codes, v.codes, out, { ...shape, quant });
      const full = referenceAttention(queryMatrix, heldKeys, heldValues, shape);
      expect(relativeError((await backend.read(out)) as Float32Array, full)).toBeLessThan(1e-4);

      // Decode: the last query row alone.
      const last = backend.upload('f32', [1, heads * headDim], queries.subarray(5 * heads * headDim));
      const lastOut = backend.alloc('f32', [1, heads * headDim]);
      backend.attentionDecode(last, k.codes, v.codes, lastOut, { ...shape, quant });
      expect(relativeError((await backend.read(lastOut)) as Float32Array, full.slice(5))).toBeLessThan(1e-4);

      // KV head 0 full, KV head 1 streaming: main planes for head 0, a region (slot = position here) for head 1.
      const mainKeys = quantizedPlanes(scheme, keys.slice(0, 1), 64);
      const mainValues = quantizedPlanes(scheme, values.slice(0, 1), 64);
      const regionKeys = quantizedPlanes(scheme, keys.slice(1), sink + recent + length);
      const regionValues = quantizedPlanes(scheme, values.slice(1), sink + recent + length);
      backend.attentionPrefill(query, mainKeys.codes, mainValues.codes, out, {
        ...shape,
        streaming: { retrievalKvHeads: 1, keyCache: regionKeys.codes, valueCache: regionValues.codes, sink, recent },
        quant: {
          scheme,
          keyScales: mainKeys.scales,
          valueScales: mainValues.scales,
          streamKeyScales: regionKeys.scales,
          streamValueScales: regionValues.scales,
        },
      });
      const visible = (i: number, j: number, head: number) =>
        j <= i && (Math.floor(head / (heads / kvHeads)) === 0 || j < sink || i - j < recent);
      const mixed = referenceAttention(queryMatrix, heldKeys, heldValues, { ...shape, visible });
      expect(relativeError((await backend.read(out)) as Float32Array, mixed)).toBeLessThan(1e-4);
      const tensors: TensorHandle[] = [query, out, last, lastOut];
      for (const planes of [k, v, mainKeys, mainValues, regionKeys, regionValues])
        tensors.push(planes.codes, planes.scales);
      for (const tensor of tensors) tensor.dispose();
    },
  );

  it('checks the scale planes against the code planes, by name', () => {
    const codes = backend.alloc('u8', [kvHeads, 16, headDim]);
    const scales = backend.alloc('f16', [kvHeads, 16, 2]);
    const query = backend.alloc('f32', [1, heads * headDim]);
    const out = backend.alloc('f32', [1, heads * headDim]);
    const attributes = { heads, kvHeads, headDim, scale, keyLength: 4, queryStart: 3 };
    expect(() =>
      backend.attentionPrefill(query, codes, codes, out, {
        ...attributes,
        quant: { scheme: 'int8', keyScales: scales, valueScales: scales },
      }),
    ).toThrow(/f16 tensor of shape \[2, 16, 1\] for `quant.keyScales` but received f16 \[2, 16, 2\]/);
    expect(() => backend.attentionPrefill(query, codes, codes, out, attributes)).toThrow(/`keyCache`/);
    for (const tensor of [codes, scales, query, out]) tensor.dispose();
  });
});
