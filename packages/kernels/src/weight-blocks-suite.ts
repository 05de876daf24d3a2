// Test support: matrix products, embeddings and the matmul's backward over weights kept in GGUF block formats
// (ADR 0010), against float64 over the values the reference decoder reads from the same bytes. Used by the CPU tests
// (the CPU reads blocks in place) and the CUDA ones (which refuse them by name until their kernels land).
import { dequantizeWeights, quantizeWeights, type WeightFormat } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';
import { randomArray, relativeError } from './testing/reference.js';

const FORMATS: WeightFormat[] = ['q8_0', 'q4_k', 'q5_k', 'q6_k'];

/** x · Wᵀ in float64: x [n, k], W [m, k] (row-major). */
function product(x: ArrayLike<number>, weights: ArrayLike<number>, n: number, k: number, m: number): Float64Array {
  const out = new Float64Array(n * m);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < m; c++) {
      let sum = 0;
      for (let i = 0; i < k; i++) sum += (x[r * k + i] as number) * (weights[c * k + i] as number);
      out[r * m + c] = sum;
    }
  return out;
}

/** Registers the suite; `backend()` is undefined when it is absent (the tests then skip visibly). */
export function weightBlocksSuite(label: string, backend: () => NativeBackend | undefined, skipReason?: string): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`weights in block formats: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    // k = 512: two 256-value k-blocks of the CPU's packed panels; m = 40 crosses a 32-column panel; n = 7 rows.
    const [n, k, m] = [7, 512, 40];
    it.each(FORMATS)(
      '%s: matmul, matmulGroup, matmulSwiglu and embedding equal float64 over the decoded values',
      async (format) => {
        const b = backend() as NativeBackend;
        if (b.device === 'cuda') {
          const weight = b.upload(format, [m, k], quantizeWeights(format, randomArray(m * k, 1, 0.1)));
          const x = b.alloc('f32', [n, k]);
          const out = b.alloc('f32', [n, m]);
          expect(() => b.matmul(x, weight, out)).toThrow(`the CUDA kernels do not read ${format} blocks yet`);
          for (const tensor of [weight, x, out]) tensor.dispose();
          return;
        }
        const values = [randomArray(m * k, 11, 0.1), randomArray(m * k, 12, 0.1)];
        const bytes = values.map((v) => quantizeWeights(format, v));
        const decoded = bytes.map((v) => dequantizeWeights(format, v, m * k));
        const input = randomArray(n * k, 13, 1);
        const [first, second] = bytes.map((v) => b.upload(format, [m, k], v)) as [
          ReturnType<typeof b.upload>,
          ReturnType<typeof b.upload>,
        ];
        const x = b.upload('f32', [n, k], input);
        const outs = [b.alloc('f32', [n, m]), b.alloc('f32', [n, m])];
        const expected = decoded.map((w) => product(input, w, n, k, m));
        b.matmul(x, first, outs[0] as never);
        expect(
          relativeError((await b.read(outs[0] as never)) as Float32Array, expected[0] as Float64Array),
        ).toBeLessThan(1e-5);
        b.matmulGroup(x, [first, second], outs as never);
        for (const i of [0, 1])
          expect(
            relativeError((await b.read(outs[i] as never)) as Float32Array, expected[i] as Float64Array),
          ).toBeLessThan(1e-5);
        // SwiGLU: silu(x · gateᵀ) ⊙ (x · upᵀ).
        b.matmulSwiglu(x, first, second, outs[0] as never);
        const swiglu = (expected[0] as Float64Array).map(
          (g, i) => (g / (1 + Math.exp(-g))) * ((expected[1] as Float64Array)[i] as number),
        );
        expect(relativeError((await b.read(outs[0] as never)) as Float32Array, swiglu)).toBeLessThan(1e-5);
        // Embedding rows 3, 0 and 39 of the first matrix, decoded.
        const ids = b.upload('i32', [3], Int32Array.of(3, 0, 39));
        const rows = b.alloc('f32', [3, k]);
        b.embedding(first, ids, rows);
        const table = decoded[0] as Float64Array;
        const wanted = [3, 0, 39].flatMap((row) => Array.from(table.subarray(row * k, row * k + k)));
        expect(relativeError((await b.read(rows)) as Float32Array, wanted)).toBeLessThan(1e-6);
        // The bytes read back as written.
        expect(Array.from((await b.read(first, 34, 10)) as Uint8Array)).toEqual(
          Array.from((bytes[0] as Uint8Array).subarray(34, 44)),
        );
        for (const tensor of [first, second, x, ...outs, ids, rows]) tensor.dispose();
      },
    );

    it('refuses rows of partial blocks and element-wise ops on blocks, by name', () => {
      const b = backend() as NativeBackend;
      expect(() => b.alloc('q4_k', [4, 300])).toThrow(
        'Expected rows of whole 256-value blocks for a q4_k tensor but received shape [4, 300]',
      );
      const weight = b.alloc('q8_0', [2, 64]);
      const floats = b.alloc('f32', [2, 64]);
      expect(() => b.convert(weight, floats)).toThrow(/`source`.*q8_0/);
      for (const tensor of [weight, floats]) tensor.dispose();
    });
  });
}
