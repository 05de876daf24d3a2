// Conformance of the gate trainer's backward ops on every backend, against the float64 reference gradients (which
// backward.test.ts checks by finite differences): matmul, RMSNorm, SwiGLU, attention (causal and Λ), the gate mix.
import { DuoArgumentError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { perHead, readF32, uploadAs } from './conformance-helpers.js';
import type { NativeBackend } from './native-backend.js';
import type { Tensor } from './tensor.js';
import {
  referenceAttentionBackward,
  referenceMatmulBackward,
  referenceRmsNormBackward,
  referenceSwigluBackward,
} from './testing/backward.js';
import { randomArray, referenceAttention, relativeError, toMatrix } from './testing/reference.js';

/** Relative error allowed per op; a bf16 weight rounds `gradOut` to bf16 on CUDA's tensor cores, as the forward does. */
const TOLERANCE = {
  matmul: { f32: 1e-5, bf16: 1e-2 } as Record<string, number>,
  rmsNorm: 1e-5,
  swiglu: 1e-5,
  attention: 1e-4,
  gateMix: 1e-5,
};

/** Per-head key gradients `[kvHeads][length]` laid out as the projections' rows `[length, kvHeads · headDim]`. */
function projectionLayout(gradients: Float64Array[][], length: number): Float64Array {
  const kvHeads = gradients.length;
  const headDim = gradients[0]?.[0]?.length ?? 0;
  const out = new Float64Array(length * kvHeads * headDim);
  gradients.forEach((rows, g) => {
    for (let j = 0; j < length; j++) out.set(rows[j] ?? [], (j * kvHeads + g) * headDim);
  });
  return out;
}

interface AttentionCase {
  name: string;
  dtype: 'f32' | 'bf16';
  heads: number;
  kvHeads: number;
  headDim: number;
  length: number;
  window?: { sink: number; recent: number };
}

const ATTENTION_CASES: AttentionCase[] = [
  { name: 'causal, GQA 4/2, f32', dtype: 'f32', heads: 4, kvHeads: 2, headDim: 16, length: 37 },
  {
    name: 'Λ sink 3 recent 5, GQA 4/2, f32',
    dtype: 'f32',
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    length: 37,
    window: { sink: 3, recent: 5 },
  },
  {
    name: 'Λ sink 0 recent 8, MHA, headDim 12, f32',
    dtype: 'f32',
    heads: 3,
    kvHeads: 3,
    headDim: 12,
    length: 41,
    window: { sink: 0, recent: 8 },
  },
  {
    name: 'Λ sink 4 recent 6, GQA 8/2, bf16 caches',
    dtype: 'bf16',
    heads: 8,
    kvHeads: 2,
    headDim: 32,
    length: 70,
    window: { sink: 4, recent: 6 },
  },
];

/** Registers the suite for one backend; `backend()` returns undefined when it is absent (tests then skip visibly). */
export function backwardConformanceSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`backward conformance: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    const b = () => backend() as NativeBackend;

    it.each(['f32', 'bf16'] as const)(
      'matmulBackward (%s weight) matches gradOut · W, and accumulates',
      async (dtype) => {
        const m = 48;
        const k = 40;
        const [weight, weightHeld] = uploadAs(b(), dtype, [m, k], randomArray(m * k, 31, 0.5));
        for (const rows of [1, 3, 29]) {
          const gradient = randomArray(rows * m, 32 + rows);
          const gradOut = b().upload('f32', [rows, m], gradient);
          const start = randomArray(rows * k, 33 + rows);
          const gradInput = b().upload('f32', [rows, k], start);
          const expected = referenceMatmulBackward(toMatrix(gradient, rows, m), toMatrix(weightHeld, m, k));
          b().matmulBackward(gradOut, weight, gradInput, { accumulate: true });
          const accumulated = expected.map((row, r) => row.map((v, i) => v + (start[r * k + i] ?? 0)));
          expect(relativeError(await readF32(b(), gradInput), accumulated)).toBeLessThan(TOLERANCE.matmul[dtype] ?? 0);
          b().matmulBackward(gradOut, weight, gradInput);
          expect(relativeError(await readF32(b(), gradInput), expected)).toBeLessThan(TOLERANCE.matmul[dtype] ?? 0);
          gradOut.dispose();
          gradInput.dispose();
        }
        weight.dispose();
      },
    );

    it('rmsNormBackward matches the reference, and accumulates', async () => {
      const rows = 7;
      const dim = 96;
      const x = randomArray(rows * dim, 41, 2);
      const weight = randomArray(dim, 42);
      const gradient = randomArray(rows * dim, 43);
      const start = randomArray(rows * dim, 44);
      const xs = b().upload('f32', [rows, dim], x);
      const ws = b().upload('f32', [dim], weight);
      const gs = b().upload('f32', [rows, dim], gradient);
      const out = b().upload('f32', [rows, dim], start);
      const expected = referenceRmsNormBackward(toMatrix(x, rows, dim), weight, 1e-5, toMatrix(gradient, rows, dim));
      b().rmsNormBackward(xs, ws, gs, out, 1e-5, { accumulate: true });
      const accumulated = expected.map((row, r) => row.map((v, i) => v + (start[r * dim + i] ?? 0)));
      expect(relativeError(await readF32(b(), out), accumulated)).toBeLessThan(TOLERANCE.rmsNorm);
      b().rmsNormBackward(xs, ws, gs, out, 1e-5);
      expect(relativeError(await readF32(b(), out), expected)).toBeLessThan(TOLERANCE.rmsNorm);
      for (const t of [xs, ws, gs, out]) t.dispose();
    });

    it('swigluBackward matches the reference', async () => {
      const rows = 5;
      const width = 70;
      const gate = randomArray(rows * width, 51, 4);
      const up = randomArray(rows * width, 52, 2);
      const gradient = randomArray(rows * width, 53);
      const tensors = [gate, up, gradient].map((values) => b().upload('f32', [rows, width], values));
      const [gs, us, ds] = tensors as [Tensor, Tensor, Tensor];
      const gradGate = b().alloc('f32', [rows, width]);
      const gradUp = b().alloc('f32', [rows, width]);
      b().swigluBackward(gs, us, ds, gradGate, gradUp);
      const expected = referenceSwigluBackward(
        toMatrix(gate, rows, width),
        toMatrix(up, rows, width),
        toMatrix(gradient, rows, width),
      );
      expect(relativeError(await readF32(b(), gradGate), expected.gate)).toBeLessThan(TOLERANCE.swiglu);
      expect(relativeError(await readF32(b(), gradUp), expected.up)).toBeLessThan(TOLERANCE.swiglu);
      for (const t of [...tensors, gradGate, gradUp]) t.dispose();
    });

    it.each(ATTENTION_CASES)('attentionBackward matches the reference: $name', async (c) => {
      const { heads, kvHeads, headDim, length, window } = c;
      const capacity = length + 3;
      const scale = 1 / Math.sqrt(headDim);
      const [keys, keysHeld] = uploadAs(
        b(),
        c.dtype,
        [kvHeads, capacity, headDim],
        randomArray(kvHeads * capacity * headDim, 61, 2),
      );
      const [values, valuesHeld] = uploadAs(
        b(),
        c.dtype,
        [kvHeads, capacity, headDim],
        randomArray(kvHeads * capacity * headDim, 62),
      );
      const query = randomArray(length * heads * headDim, 63, 2);
      const gradient = randomArray(length * heads * headDim, 64);
      const visible = window
        ? (i: number, j: number) => j <= i && (j < window.sink || i - j < window.recent)
        : (i: number, j: number) => j <= i;
      const shape = { heads, kvHeads, headDim, scale, keyLength: length, queryStart: 0, visible };
      const keyRows = perHead(keysHeld, kvHeads, capacity, headDim);
      const valueRows = perHead(valuesHeld, kvHeads, capacity, headDim);
      const queryMatrix = toMatrix(query, length, heads * headDim);
      const forward = referenceAttention(queryMatrix, keyRows, valueRows, shape);
      const expected = referenceAttentionBackward(
        queryMatrix,
        keyRows,
        valueRows,
        shape,
        toMatrix(gradient, length, heads * headDim),
      );
      const rowShape = [length, heads * headDim];
      const qs = b().upload('f32', rowShape, query);
      const out = b().upload('f32', rowShape, Float32Array.from(forward.flatMap((row) => Array.from(row))));
      const gs = b().upload('f32', rowShape, gradient);
      const gradQuery = b().alloc('f32', rowShape);
      const gradKey = b().alloc('f32', [length, kvHeads * headDim]);
      const gradValue = b().alloc('f32', [length, kvHeads * headDim]);
      const run = async () => {
        b().attentionBackward(qs, keys, values, out, gs, gradQuery, gradKey, gradValue, {
          heads,
          kvHeads,
          headDim,
          scale,
          length,
          ...(window ? { window } : {}),
        });
        return [await readF32(b(), gradQuery), await readF32(b(), gradKey), await readF32(b(), gradValue)] as const;
      };
      const [dq, dk, dv] = await run();
      expect(relativeError(dq, expected.query)).toBeLessThan(TOLERANCE.attention);
      expect(relativeError(dk, projectionLayout(expected.keys, length))).toBeLessThan(TOLERANCE.attention);
      expect(relativeError(dv, projectionLayout(expected.values, length))).toBeLessThan(TOLERANCE.attention);
      // Deterministic: a second run gives the same bits.
      const again = await run();
      expect(Array.from(again[1])).toEqual(Array.from(dk));
      expect(Array.from(again[2])).toEqual(Array.from(dv));
      for (const t of [keys, values, qs, out, gs, gradQuery, gradKey, gradValue]) t.dispose();
    });

    it('gateMix and gateMixBackward: the mix, (1 − α)·gradOut and ∂L/∂α per KV head, gates clamped to [0, 1]', async () => {
      const heads = 6;
      const kvHeads = 3;
      const headDim = 8;
      const rows = 150; // more than one 64-row part of the deterministic sum
      const width = heads * headDim;
      const gates = Float32Array.from([0.3, -0.2, 1.4]);
      const clamped = Array.from(gates, (g) => Math.min(1, Math.max(0, g)));
      const streaming = randomArray(rows * width, 71);
      const full = randomArray(rows * width, 72);
      const gradient = randomArray(rows * width, 73);
      const [ss, fs, gs] = [streaming, full, gradient].map((v) => b().upload('f32', [rows, width], v)) as [
        Tensor,
        Tensor,
        Tensor,
      ];
      const gateTensor = b().upload('f32', [kvHeads], gates);
      const out = b().alloc('f32', [rows, width]);
      const gradStreaming = b().alloc('f32', [rows, width]);
      const gradGates = b().alloc('f32', [kvHeads]);
      const attributes = { heads, kvHeads, headDim };
      b().gateMix(ss, fs, gateTensor, out, attributes);
      b().gateMixBackward(gs, ss, fs, gateTensor, gradStreaming, gradGates, attributes);
      const gateOf = (e: number) => clamped[Math.floor((e % width) / headDim / (heads / kvHeads))] ?? 0;
      const expectedOut = Array.from(streaming, (s, e) => (1 - gateOf(e)) * s + gateOf(e) * (full[e] ?? 0));
      const expectedGradStreaming = Array.from(gradient, (g, e) => (1 - gateOf(e)) * g);
      const expectedGates = new Float64Array(kvHeads);
      gradient.forEach((g, e) => {
        const kvHead = Math.floor((e % width) / headDim / (heads / kvHeads));
        expectedGates[kvHead] = (expectedGates[kvHead] ?? 0) + g * ((full[e] ?? 0) - (streaming[e] ?? 0));
      });
      expect(relativeError(await readF32(b(), out), expectedOut)).toBeLessThan(TOLERANCE.gateMix);
      expect(relativeError(await readF32(b(), gradStreaming), expectedGradStreaming)).toBeLessThan(TOLERANCE.gateMix);
      const gateGradients = await readF32(b(), gradGates);
      for (let g = 0; g < kvHeads; g++) {
        expect(relativeError([gateGradients[g] ?? 0], [expectedGates[g] ?? 0])).toBeLessThan(TOLERANCE.gateMix);
      }
      for (const t of [ss, fs, gs, gateTensor, out, gradStreaming, gradGates]) t.dispose();
    });

    it('rejects bad arguments with messages naming them', () => {
      const gradOut = b().alloc('f32', [2, 4]);
      const weight = b().alloc('f32', [5, 3]);
      const gradInput = b().alloc('f32', [2, 3]);
      expect(() => b().matmulBackward(gradOut, weight, gradInput)).toThrow(
        /\[n, 5\] for `gradOut` but received f32 \[2, 4\]/,
      );
      const keys = b().alloc('f32', [2, 8, 4]);
      const rows = b().alloc('f32', [9, 8]);
      const keyRows = b().alloc('f32', [9, 8]);
      expect(() =>
        b().attentionBackward(rows, keys, keys, rows, rows, rows, keyRows, keyRows, {
          heads: 3,
          kvHeads: 2,
          headDim: 4,
          scale: 0.5,
          length: 8,
        }),
      ).toThrow(DuoArgumentError);
      expect(() =>
        b().attentionBackward(rows, keys, keys, rows, rows, rows, keyRows, keyRows, {
          heads: 2,
          kvHeads: 2,
          headDim: 4,
          scale: 0.5,
          length: 9,
        }),
      ).toThrow(/`length` to be an integer in \[0, 8\] but received 9/);
      for (const t of [gradOut, weight, gradInput, keys, rows, keyRows]) t.dispose();
    });
  });
}
