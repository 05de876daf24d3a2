// Test support: matrix products and embeddings over weights kept in GGUF block formats
// (ADR 0010), against float64 over the values the reference decoder reads from the same bytes. Run by the CPU tests and
// the CUDA ones: both backends read blocks in place.
import { dequantizeWeights, quantizeWeights, type WeightFormat } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';
import { int8Pieces, randomArray, relativeError } from './testing/reference.js';

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

/** Formats whose CUDA decode quantizes x to int8 pieces (integer products; on the CPU, Q8_0 alone). */
const INTEGER_X = new Set<WeightFormat>(['q8_0', 'q4_k']);

/**
 * The shapes each format runs: [rows of x, k, rows of W]. 7 × 512 × 40 crosses the CPU's 256-value k-blocks and
 * 32-column panels; 9 rows take two of CUDA's 8-row passes; 70 rows take CUDA's prefill path (x and a slice of decoded
 * weights rounded to bf16 for cuBLAS: hence its looser tolerance). k = 1312 (Q8_0: 41 blocks) and 1280 (k-quants: 5)
 * start rows at every even byte offset, which CUDA's 16-byte copies must straddle.
 */
function shapes(format: WeightFormat): { n: number; k: number; m: number; bf16Input?: boolean }[] {
  const odd = format === 'q8_0' ? 1312 : 1280;
  return [
    { n: 7, k: 512, m: 40 },
    { n: 9, k: odd, m: 9 },
    { n: 70, k: odd, m: 33, bf16Input: true },
  ];
}

/**
 * Registers the suite; `backend()` is undefined when it is absent (the tests then skip visibly). `integerQ8`: the CPU
 * backend runs with `cpuIntegerQ8` on (its default: Q8_0 products read x rounded to int8 pieces); false: it was tuned
 * with `cpuIntegerQ8: false` (exact x).
 */
export function weightBlocksSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  skipReason?: string,
  integerQ8 = false,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`weights in block formats: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    it.each(FORMATS)(
      '%s: matmul, matmulGroup, matmulSwiglu and embedding equal float64 over the decoded values',
      async (format) => {
        const b = backend() as NativeBackend;
        for (const { n, k, m, bf16Input } of shapes(format)) {
          // f32 products on the CPU and in CUDA's decode path; CUDA's prefill path rounds to bf16 (8 bits).
          const tolerance = bf16Input && b.device === 'cuda' ? 1e-2 : 1e-5;
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
          // Integer products over x rounded to int8 pieces (CUDA's decode path for Q8_0 / Q4_K; the CPU's Q8_0 product
          // under `cpuIntegerQ8`): the reference rounds x the same way.
          const integerX = b.device === 'cuda' ? !bf16Input && INTEGER_X.has(format) : integerQ8 && format === 'q8_0';
          const seen = integerX ? int8Pieces(input) : input;
          const expected = decoded.map((w) => product(seen, w, n, k, m));
          const shape = `${format} [${n}, ${k}] · [${m}, ${k}]ᵀ`;
          b.matmul(x, first, outs[0] as never);
          expect(
            relativeError((await b.read(outs[0] as never)) as Float32Array, expected[0] as Float64Array),
            shape,
          ).toBeLessThan(tolerance);
          // A residual added to the product.
          b.matmul(x, first, outs[1] as never, { residual: outs[0] as never });
          expect(
            relativeError(
              (await b.read(outs[1] as never)) as Float32Array,
              (expected[0] as Float64Array).map((v) => 2 * v),
            ),
            `${shape} + residual`,
          ).toBeLessThan(tolerance);
          b.matmulGroup(x, [first, second], outs as never);
          for (const i of [0, 1])
            expect(
              relativeError((await b.read(outs[i] as never)) as Float32Array, expected[i] as Float64Array),
              `${shape} group ${i}`,
            ).toBeLessThan(tolerance);
          // SwiGLU: silu(x · gateᵀ) ⊙ (x · upᵀ).
          b.matmulSwiglu(x, first, second, outs[0] as never);
          const swiglu = (expected[0] as Float64Array).map(
            (g, i) => (g / (1 + Math.exp(-g))) * ((expected[1] as Float64Array)[i] as number),
          );
          expect(
            relativeError((await b.read(outs[0] as never)) as Float32Array, swiglu),
            `${shape} SwiGLU`,
          ).toBeLessThan(tolerance);
          // Embedding rows 3, 0 and the last of the first matrix, decoded.
          const picked = [3, 0, m - 1];
          const ids = b.upload('i32', [3], Int32Array.from(picked));
          const rows = b.alloc('f32', [3, k]);
          b.embedding(first, ids, rows);
          const table = decoded[0] as Float64Array;
          const wanted = picked.flatMap((row) => Array.from(table.subarray(row * k, row * k + k)));
          expect(relativeError((await b.read(rows)) as Float32Array, wanted), `${shape} embedding`).toBeLessThan(1e-6);
          // The bytes read back as written.
          expect(Array.from((await b.read(first, 34, 10)) as Uint8Array)).toEqual(
            Array.from((bytes[0] as Uint8Array).subarray(34, 44)),
          );
          for (const tensor of [first, second, x, ...outs, ids, rows]) tensor.dispose();
        }
      },
    );

    it.each(FORMATS)('%s: many more output columns than resident warps, two chunks a column', async (format) => {
      // CUDA's decode warps are persistent: each streams several columns' chunks through one ring, the next column's
      // first chunks in flight while the last one's partial chunk finishes. 9 001 rows (18 002 columns in a group of
      // two) outnumber the warps an H100 or H200 holds; rows repeat 97 distinct quantized rows (a prime, so no warp
      // stride maps a column onto a twin), which keeps the quantization in JavaScript quick.
      const b = backend() as NativeBackend;
      const k = format === 'q8_0' ? 1312 : 1280;
      const [n, m, distinct] = [2, 9001, 97];
      const bases = [21, 22].map((seed) => quantizeWeights(format, randomArray(distinct * k, seed, 0.1)));
      const rowBytes = (bases[0] as Uint8Array).length / distinct;
      const tiled = bases.map((base) => {
        const bytes = new Uint8Array(rowBytes * m);
        for (let r = 0; r < m; r++)
          bytes.set(base.subarray((r % distinct) * rowBytes, ((r % distinct) + 1) * rowBytes), r * rowBytes);
        return bytes;
      });
      const input = randomArray(n * k, 23, 1);
      const integerX = b.device === 'cuda' ? INTEGER_X.has(format) : integerQ8 && format === 'q8_0';
      const seen = integerX ? int8Pieces(input) : input;
      const expected = bases.map((base) => {
        const distinctProduct = product(seen, dequantizeWeights(format, base, distinct * k), n, k, distinct);
        return Float64Array.from(
          { length: n * m },
          (_, i) => distinctProduct[Math.floor(i / m) * distinct + ((i % m) % distinct)] as number,
        );
      });
      const [first, second] = tiled.map((bytes) => b.upload(format, [m, k], bytes)) as [
        ReturnType<typeof b.upload>,
        ReturnType<typeof b.upload>,
      ];
      const x = b.upload('f32', [n, k], input);
      const outs = [b.alloc('f32', [n, m]), b.alloc('f32', [n, m])];
      b.matmulGroup(x, [first, second], outs as never);
      for (const i of [0, 1])
        expect(
          relativeError((await b.read(outs[i] as never)) as Float32Array, expected[i] as Float64Array),
          `${format} group ${i}`,
        ).toBeLessThan(1e-5);
      b.matmulSwiglu(x, first, second, outs[0] as never);
      const swiglu = (expected[0] as Float64Array).map(
        (g, i) => (g / (1 + Math.exp(-g))) * ((expected[1] as Float64Array)[i] as number),
      );
      expect(relativeError((await b.read(outs[0] as never)) as Float32Array, swiglu), `${format} SwiGLU`).toBeLessThan(
        1e-5,
      );
      for (const tensor of [first, second, x, ...outs]) tensor.dispose();
    });

    it.each(FORMATS)('%s: a row gets the same bits alone as among the rows of its call', async (format) => {
      const b = backend() as NativeBackend;
      // 9 rows: CUDA's 8-row pass plus one; the CPU's 4-row tiles and a row alone. On the CPU also 21 and 19 rows over
      // 50 columns, which it decodes into panels (two column groups of 24 and a tail; f32 for the float tiles, or the
      // integer panel under cpuIntegerQ8) with a remainder of one or three rows, k of 17 blocks (a lone last pair).
      const cases = [
        {
          n: 9,
          k: format === 'q8_0' ? 1312 : 1280,
          m: 9,
          checks: [
            [0, 1],
            [5, 1],
            [3, 4],
          ],
        },
      ];
      if (b.device === 'cpu')
        cases.push(
          {
            n: 21,
            k: format === 'q8_0' ? 544 : 512,
            m: 50,
            checks: [
              [0, 1],
              [7, 1],
              [20, 1],
              [4, 4],
            ],
          },
          {
            n: 19,
            k: 512,
            m: 50,
            checks: [
              [0, 1],
              [17, 2],
              [16, 3],
            ],
          },
        );
      for (const { n, k, m, checks } of cases) {
        const weight = b.upload(format, [m, k], quantizeWeights(format, randomArray(m * k, 21, 0.1)));
        const input = randomArray(n * k, 22, 1);
        const product = async (first: number, rows: number) => {
          const x = b.upload('f32', [rows, k], input.subarray(first * k, (first + rows) * k));
          const out = b.alloc('f32', [rows, m]);
          b.matmul(x, weight, out);
          const values = Array.from((await b.read(out)) as Float32Array);
          for (const tensor of [x, out]) tensor.dispose();
          return values;
        };
        const all = await product(0, n);
        for (const [first, rows] of checks as [number, number][])
          expect(await product(first, rows), `${n} rows: ${first}…${first + rows - 1}`).toEqual(
            all.slice(first * m, (first + rows) * m),
          );
        weight.dispose();
      }
    });

    it('refuses rows of partial blocks and element-wise ops on blocks, by name', () => {
      const b = backend() as NativeBackend;
      expect(() => b.alloc('q4_k', [4, 300])).toThrow(
        'Expected rows of whole 256-value blocks for a q4_k tensor but received shape [4, 300]',
      );
      const weight = b.alloc('q8_0', [2, 64]);
      const floats = b.alloc('f32', [2, 64]);
      expect(() => b.convert(weight, floats)).toThrow(/`source`.*q8_0/);
      if (b.device === 'cuda') {
        const gradOut = b.alloc('f32', [1, 2]);
        const gradInput = b.alloc('f32', [1, 64]);
        expect(() => b.matmulBackward(gradOut, weight, gradInput)).toThrow(
          'the CUDA matmul backward does not read q8_0 blocks',
        );
        for (const tensor of [gradOut, gradInput]) tensor.dispose();
      }
      for (const tensor of [weight, floats]) tensor.dispose();
    });
  });
}
