// The one conformance suite: every op against the float64 reference, run once per backend present.
import type { DType } from '@duoattn/core';
import { DuoArgumentError, DuoDisposedError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { perHead, readF32, uploadAs } from './conformance-helpers.js';
import { ELEMENTWISE_NAMES, ELEMENTWISE_OPS, type ElementwiseOp } from './elementwise-ops.js';
import type { NativeBackend } from './native-backend.js';
import type { Tensor } from './tensor.js';
import { referenceRopeBackward } from './testing/backward.js';
import {
  bf16ToNumber,
  f16ToNumber,
  type Matrix,
  maxAbsDifference,
  numberToBf16,
  numberToF16,
  randomArray,
  referenceArgmax,
  referenceAttention,
  referenceEmbedding,
  referenceMatmul,
  referenceRmsNorm,
  referenceRope,
  referenceSoftmax,
  referenceSwiglu,
  relativeError,
  toMatrix,
} from './testing/reference.js';

/** Relative-error tolerance of each op by the dtype of its weight or cache operand. */
const TOLERANCE = {
  rmsNorm: 1e-5,
  rope: 1e-5,
  // CUDA runs matmuls of many rows on tensor cores with x rounded to the weight dtype.
  matmul: { f32: 1e-5, f16: 2e-3, bf16: 1e-2 } as Record<DType, number>,
  attention: { f32: 1e-4, f16: 2e-3, bf16: 1e-2 } as Record<DType, number>,
};

function inverseFrequencies(headDim: number, theta: number): Float32Array {
  return Float32Array.from({ length: headDim / 2 }, (_, i) => theta ** (-(2 * i) / headDim));
}

/** Registers the suite for one backend; `backend()` returns undefined when it is absent (tests then skip visibly). */
export function conformanceSuite(label: string, backend: () => NativeBackend | undefined, skipReason?: string): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`conformance: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    const b = () => backend() as NativeBackend;

    it('round-trips every dtype and copies rows', async () => {
      const values = randomArray(24, 1);
      for (const dtype of ['f32', 'f16', 'bf16'] as const) {
        const [tensor, held] = uploadAs(b(), dtype, [4, 6], values);
        const back = await b().read(tensor);
        const decoded =
          dtype === 'f32'
            ? back
            : Float64Array.from(back, (v) => (dtype === 'bf16' ? bf16ToNumber(v) : f16ToNumber(v)));
        expect(maxAbsDifference(decoded, held)).toBe(0);
        const target = b().alloc(dtype, [3, 6]);
        b().copyRows(tensor, target, 1, 0, 3);
        expect(Array.from(await b().read(target))).toEqual(Array.from(back.slice(6)));
        tensor.dispose();
        target.dispose();
      }
      const ints = b().upload('i32', [3], Int32Array.from([7, -2, 5]));
      expect(Array.from(await b().read(ints))).toEqual([7, -2, 5]);
      ints.dispose();
      // u8: quantized KV codes, raw bytes.
      const bytes = b().upload('u8', [2, 3], Uint8Array.from([0, 1, 127, 128, 200, 255]));
      const moved = b().alloc('u8', [1, 3]);
      b().copyRows(bytes, moved, 1, 0, 1);
      expect(Array.from(await b().read(bytes))).toEqual([0, 1, 127, 128, 200, 255]);
      expect(Array.from(await b().read(moved))).toEqual([128, 200, 255]);
      expect(() => b().upload('u8', [2], Float32Array.from([1, 2]))).toThrow(/Expected a Uint8Array for `data` \(u8\)/);
      bytes.dispose();
      moved.dispose();
    });

    it('converts between dtypes with round-to-nearest-even', async () => {
      const values = randomArray(1000, 2, 100);
      const source = b().upload('f32', [1000], values);
      for (const [dtype, encode] of [
        ['bf16', numberToBf16],
        ['f16', numberToF16],
      ] as const) {
        const target = b().alloc(dtype, [1000]);
        b().convert(source, target);
        expect(Array.from(await b().read(target))).toEqual(Array.from(values, (v) => encode(v)));
        target.dispose();
      }
      source.dispose();
    });

    it('fills random values deterministically with unit variance', async () => {
      const first = b().alloc('f32', [4096]);
      const second = b().alloc('f32', [4096]);
      b().fillRandom(first, 7, 2);
      b().fillRandom(second, 7, 2);
      const a = await readF32(b(), first);
      expect(Array.from(await readF32(b(), second))).toEqual(Array.from(a));
      const mean = a.reduce((s, v) => s + v, 0) / a.length;
      const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
      expect(Math.abs(mean)).toBeLessThan(0.1);
      expect(Math.sqrt(variance)).toBeGreaterThan(1.9);
      expect(Math.sqrt(variance)).toBeLessThan(2.1);
      first.dispose();
      second.dispose();
    });

    it.each(['f32', 'bf16', 'f16'] as const)('embedding reads a %s table', async (dtype) => {
      const [table, held] = uploadAs(b(), dtype, [50, 24], randomArray(50 * 24, 3));
      const ids = b().upload('i32', [5], Int32Array.from([0, 49, 3, 3, 17]));
      const out = b().alloc('f32', [5, 24]);
      b().embedding(table, ids, out);
      const expected = referenceEmbedding(toMatrix(held, 50, 24), [0, 49, 3, 3, 17]);
      expect(maxAbsDifference(await readF32(b(), out), expected)).toBe(0);
      for (const t of [table, ids, out]) t.dispose();
    });

    it('rmsNorm matches the reference', async () => {
      const x = randomArray(7 * 96, 4, 3);
      const w = randomArray(96, 5);
      const [xs, ws] = [b().upload('f32', [7, 96], x), b().upload('f32', [96], w)];
      const out = b().alloc('f32', [7, 96]);
      b().rmsNorm(xs, ws, out, 1e-5);
      expect(relativeError(await readF32(b(), out), referenceRmsNorm(toMatrix(x, 7, 96), w, 1e-5))).toBeLessThan(
        TOLERANCE.rmsNorm,
      );
      for (const t of [xs, ws, out]) t.dispose();
    });

    const matmulShapes: [number, number, number][] = [
      [1, 64, 48],
      [3, 100, 70],
      [17, 300, 130],
      [64, 256, 96],
      // 2–64 rows of half weights: the CUDA skinny tensor-core matmul (token tiles of 8, x rounded beforehand past 8
      // rows, k split over a cluster of up to 8 blocks; on Hopper matmulGroup and matmulSwiglu past 8 rows take its
      // warpgroup kernel, tokens as N = 16, 32 or 64), and cuBLAS (BackendTuning.skinnyRowsMax 0).
      [33, 1024, 200],
      [9, 2048, 24],
      [24, 512, 136],
      // Deep rows: the CUDA weight-streaming kernel splits k over 2, 4 and 8 warps per output.
      [1, 2048, 48],
      [2, 4096, 24],
      [1, 8192, 16],
    ];
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      it.each(matmulShapes)(
        `matmul ${dtype} weights: n=%i k=%i m=%i with bias and in-place residual`,
        async (n, k, m) => {
          const x = randomArray(n * k, n + k, 1);
          const [weight, held] = uploadAs(b(), dtype, [m, k], randomArray(m * k, m, 0.5));
          const bias = randomArray(m, 9);
          const residual = randomArray(n * m, 10);
          const xs = b().upload('f32', [n, k], x);
          const biasTensor = b().upload('f32', [m], bias);
          const out = b().upload('f32', [n, m], residual);
          const expected = referenceMatmul(toMatrix(x, n, k), toMatrix(held, m, k), bias, toMatrix(residual, n, m));
          const expectedPlain = referenceMatmul(toMatrix(x, n, k), toMatrix(held, m, k));
          const plain = b().alloc('f32', [n, m]);
          // Default routing (skinny matmul up to 64 rows of half weights), then cuBLAS for every 2+ rows, then the
          // batch-invariant mode (the skinny matmul's warp-MMA kernel for every row count up to 64).
          const routes =
            dtype !== 'f32' && n >= 2 && n <= 64 ? [{}, { skinnyRowsMax: 0 }, { batchInvariant: true }] : [{}];
          try {
            for (const tuning of routes) {
              b().tune(tuning);
              b().write(out, residual);
              b().matmul(xs, weight, out, { bias: biasTensor, residual: out });
              expect(relativeError(await readF32(b(), out), expected)).toBeLessThan(TOLERANCE.matmul[dtype]);
              b().matmul(xs, weight, plain);
              expect(relativeError(await readF32(b(), plain), expectedPlain)).toBeLessThan(TOLERANCE.matmul[dtype]);
            }
          } finally {
            b().tune({});
            for (const t of [xs, weight, biasTensor, out, plain]) t.dispose();
          }
        },
      );
    }

    it.each([
      ['f32', 1],
      ['bf16', 2],
      ['bf16', 5],
      ['bf16', 17],
      ['bf16', 48],
      ['f16', 1],
    ] as const)('matmulGroup over %s q/k/v weights, %i rows, biases on two', async (dtype, n) => {
      const k = 64;
      const x = randomArray(n * k, 40 + n, 1);
      const xs = b().upload('f32', [n, k], x);
      const shapes = [48, 16, 16];
      const uploaded = shapes.map((m, i) => uploadAs(b(), dtype, [m, k], randomArray(m * k, 50 + i, 0.5)));
      const biases = shapes.map((m, i) => (i < 2 ? randomArray(m, 60 + i) : undefined));
      const biasTensors = biases.map((bias, i) => (bias ? b().upload('f32', [shapes[i] ?? 0], bias) : undefined));
      const outs = shapes.map((m) => b().alloc('f32', [n, m]));
      try {
        // Default routing (skinny matmul up to 64 rows of half weights), then cuBLAS.
        for (const tuning of dtype !== 'f32' && n >= 2 ? [{}, { skinnyRowsMax: 0 }] : [{}]) {
          b().tune(tuning);
          b().matmulGroup(
            xs,
            uploaded.map(([w]) => w),
            outs,
            biasTensors,
          );
          for (const [i, m] of shapes.entries()) {
            const expected = referenceMatmul(toMatrix(x, n, k), toMatrix(uploaded[i]?.[1] ?? [], m, k), biases[i]);
            expect(relativeError(await readF32(b(), outs[i] as Tensor), expected)).toBeLessThan(
              TOLERANCE.matmul[dtype],
            );
          }
        }
      } finally {
        b().tune({});
        for (const t of [xs, ...uploaded.map(([w]) => w), ...outs, ...biasTensors]) t?.dispose();
      }
    });

    it.each([
      ['f32', 1, 96],
      ['bf16', 1, 96],
      ['bf16', 2, 96],
      ['bf16', 7, 96],
      ['f16', 17, 96],
      ['bf16', 40, 1024],
      ['f16', 12, 512],
      // Deep enough that the CUDA weight-streaming kernel splits k over 2, 4 and 8 warps per output.
      ['bf16', 1, 2048],
      ['bf16', 2, 4096],
      ['f16', 1, 8192],
    ] as const)('matmulSwiglu with %s weights, %i rows, k=%i', async (dtype, n, k) => {
      const m = 40;
      const x = randomArray(n * k, 70 + n, 1);
      const xs = b().upload('f32', [n, k], x);
      const [gate, gateHeld] = uploadAs(b(), dtype, [m, k], randomArray(m * k, 71, 0.5));
      const [up, upHeld] = uploadAs(b(), dtype, [m, k], randomArray(m * k, 72, 0.5));
      const out = b().alloc('f32', [n, m]);
      const xm = toMatrix(x, n, k);
      const expected = referenceSwiglu(
        referenceMatmul(xm, toMatrix(gateHeld, m, k)),
        referenceMatmul(xm, toMatrix(upHeld, m, k)),
      );
      try {
        // Default routing (skinny matmul up to 64 rows of half weights on Hopper, 32 before it), then cuBLAS.
        for (const tuning of dtype !== 'f32' && n >= 2 ? [{}, { skinnyRowsMax: 0 }] : [{}]) {
          b().tune(tuning);
          b().matmulSwiglu(xs, gate, up, out);
          expect(relativeError(await readF32(b(), out), expected)).toBeLessThan(TOLERANCE.matmul[dtype]);
        }
      } finally {
        b().tune({});
        for (const t of [xs, gate, up, out]) t.dispose();
      }
    });

    it.each(['f32', 'bf16', 'f16'] as const)(
      'batch invariance (%s weights): a row gets the same bits from matmul, matmulGroup and matmulSwiglu whatever rows share the call',
      async (dtype) => {
        const [n, k, m] = [37, 512, 80];
        const x = randomArray(n * k, 90, 1);
        const [weight] = uploadAs(b(), dtype, [m, k], randomArray(m * k, 91, 0.5));
        const [second] = uploadAs(b(), dtype, [24, k], randomArray(24 * k, 92, 0.5));
        const bias = b().upload('f32', [m], randomArray(m, 93));
        const residualValues = randomArray(n * m, 94);
        // Each op over `rows` rows of x starting at `first`, read back per op.
        const run = async (first: number, rows: number) => {
          const xs = b().upload('f32', [rows, k], x.subarray(first * k, (first + rows) * k));
          const plain = b().alloc('f32', [rows, m]);
          const residual = b().upload('f32', [rows, m], residualValues.subarray(first * m, (first + rows) * m));
          const group = [b().alloc('f32', [rows, m]), b().alloc('f32', [rows, 24])];
          const swiglu = b().alloc('f32', [rows, 24]);
          b().matmul(xs, weight, plain, { bias });
          b().matmul(xs, weight, residual, { residual });
          b().matmulGroup(xs, [weight, second], group, [bias, undefined]);
          b().matmulSwiglu(xs, second, second, swiglu);
          const outs = [plain, residual, ...group, swiglu];
          const values = await Promise.all(outs.map((t) => readF32(b(), t)));
          for (const t of [xs, ...outs]) t.dispose();
          return values;
        };
        // The rows of [first, first + rows) inside a run over all n rows, against that run alone.
        const expectSameRows = (all: Float32Array[], part: Float32Array[], first: number, label: string) => {
          part.forEach((values, op) => {
            const columns = (all[op]?.length ?? 0) / n;
            const rows = values.length / columns;
            const slice = all[op]?.subarray(first * columns, (first + rows) * columns);
            expect(Array.from(values), `${label}, op ${op}`).toEqual(Array.from(slice ?? []));
          });
        };
        try {
          b().tune({ batchInvariant: true });
          const all = await run(0, n);
          for (const [first, rows] of [
            [0, 1],
            [5, 1],
            [3, 2],
            [20, 9],
          ] as const) {
            expectSameRows(
              all,
              await run(first, rows),
              first,
              `batch-invariant, rows ${first}…${first + rows - 1} of ${n}`,
            );
          }
        } finally {
          b().tune({});
          for (const t of [weight, second, bias]) t.dispose();
        }
      },
    );

    it.each([
      [true, 'f32'],
      [false, 'bf16'],
    ] as const)(
      'ropeWriteCache (interleaved=%s, %s cache) rotates q and k and fills the caches',
      async (interleaved, dtype) => {
        const heads = 4;
        const kvHeads = 2;
        const headDim = 16;
        const rows = 3;
        const start = 5;
        const capacity = 12;
        const q = randomArray(rows * heads * headDim, 80);
        const k = randomArray(rows * kvHeads * headDim, 81);
        const v = randomArray(rows * kvHeads * headDim, 82);
        const positions = Int32Array.from([5, 6, 7]);
        const frequencies = inverseFrequencies(headDim, 500000);
        const qs = b().upload('f32', [rows, heads * headDim], q);
        const ks = b().upload('f32', [rows, kvHeads * headDim], k);
        const vs = b().upload('f32', [rows, kvHeads * headDim], v);
        const ps = b().upload('i32', [rows], positions);
        const fs = b().upload('f32', [headDim / 2], frequencies);
        const keyCache = b().alloc(dtype, [kvHeads, capacity, headDim]);
        const valueCache = b().alloc(dtype, [kvHeads, capacity, headDim]);
        b().ropeWriteCache(qs, ks, vs, ps, fs, keyCache, valueCache, { heads, kvHeads, headDim, interleaved });
        const rotatedQ = referenceRope(
          toMatrix(q, rows, heads * headDim),
          positions,
          frequencies,
          heads,
          headDim,
          interleaved,
        );
        const rotatedK = referenceRope(
          toMatrix(k, rows, kvHeads * headDim),
          positions,
          frequencies,
          kvHeads,
          headDim,
          interleaved,
        );
        expect(relativeError(await readF32(b(), qs), rotatedQ)).toBeLessThan(TOLERANCE.rope);
        expect(relativeError(await readF32(b(), ks), rotatedK)).toBeLessThan(TOLERANCE.rope);
        const decode = dtype === 'f32' ? (x: number) => x : bf16ToNumber;
        const keysHeld = Array.from(await b().read(keyCache), decode);
        const valuesHeld = Array.from(await b().read(valueCache), decode);
        const tolerance = dtype === 'f32' ? 1e-5 : 1e-2;
        for (let r = 0; r < rows; r++) {
          for (let h = 0; h < kvHeads; h++) {
            const slot = (h * capacity + start + r) * headDim;
            const cachedKey = keysHeld.slice(slot, slot + headDim);
            const cachedValue = valuesHeld.slice(slot, slot + headDim);
            const wantKey = Array.from(rotatedK[r] ?? []).slice(h * headDim, (h + 1) * headDim);
            const wantValue = Array.from(v.slice((r * kvHeads + h) * headDim, (r * kvHeads + h + 1) * headDim));
            expect(relativeError(cachedKey, wantKey)).toBeLessThan(tolerance);
            expect(relativeError(cachedValue, wantValue)).toBeLessThan(tolerance);
          }
        }
        for (const t of [qs, ks, vs, ps, fs, keyCache, valueCache]) t.dispose();
      },
    );

    it.each([true, false])('rope (interleaved=%s) rotates at absolute positions', async (interleaved) => {
      const heads = 3;
      const headDim = 16;
      const x = randomArray(5 * heads * headDim, 11);
      const positions = Int32Array.from([0, 1, 7, 1000, 131071]);
      const frequencies = inverseFrequencies(headDim, 10000);
      const xs = b().upload('f32', [5, heads * headDim], x);
      const ps = b().upload('i32', [5], positions);
      const fs = b().upload('f32', [headDim / 2], frequencies);
      const reference = (rows: Float32Array, op: typeof referenceRope) =>
        op(toMatrix(rows, 5, heads * headDim), positions, frequencies, heads, headDim, interleaved);
      b().rope(xs, ps, fs, { heads, headDim, interleaved });
      expect(relativeError(await readF32(b(), xs), reference(x, referenceRope))).toBeLessThan(TOLERANCE.rope);
      // The inverse rotation is RoPE's gradient (the float64 reference, itself checked by finite differences), and it
      // brings the rotated rows back.
      const gradient = randomArray(5 * heads * headDim, 12);
      const gs = b().upload('f32', [5, heads * headDim], gradient);
      b().rope(gs, ps, fs, { heads, headDim, interleaved, inverse: true });
      expect(relativeError(await readF32(b(), gs), reference(gradient, referenceRopeBackward))).toBeLessThan(
        TOLERANCE.rope,
      );
      b().rope(xs, ps, fs, { heads, headDim, interleaved, inverse: true });
      expect(relativeError(await readF32(b(), xs), x)).toBeLessThan(TOLERANCE.rope);
      for (const t of [xs, ps, fs, gs]) t.dispose();
    });

    // One case per element-wise op, from its table entry: into a new tensor, then in place over its first input.
    it.each(ELEMENTWISE_NAMES)('%s matches the reference, in place too', async (name) => {
      const { inputs, reference, tolerance }: ElementwiseOp = ELEMENTWISE_OPS[name];
      const values = inputs.map((_, i) => randomArray(6 * 40, 12 + i, 4 / (i + 1)));
      const expected = Array.from({ length: 6 * 40 }, (_, e) => reference(...values.map((input) => input[e] ?? 0)));
      const matches = (actual: Float32Array) =>
        tolerance === 0
          ? expect(maxAbsDifference(actual, expected.map(Math.fround))).toBe(0)
          : expect(relativeError(actual, expected)).toBeLessThan(tolerance);
      const tensors = values.map((input) => b().upload('f32', [6, 40], input));
      const [first] = tensors as [Tensor];
      const out = b().alloc('f32', [6, 40]);
      const op = b()[name].bind(b()) as (...operands: Tensor[]) => void;
      op(...tensors, out);
      matches(await readF32(b(), out));
      op(...tensors, first);
      matches(await readF32(b(), first));
      for (const t of [...tensors, out]) t.dispose();
    });

    const attentionCases: [DType, number, number, number][] = [
      ['f32', 8, 2, 16],
      ['bf16', 8, 2, 64],
      ['f16', 4, 4, 32],
      ['bf16', 32, 8, 128],
      // The CPU's passes of four, two and one query heads and of 8, 4, 2 and 1 vectors of channels, and its 8-lane
      // body for head dims that are not whole 16-lane vectors (CUDA's kernels take other head dims).
      ...(label === 'cpu'
        ? ([
            ['f32', 6, 2, 48],
            ['f32', 14, 2, 16],
            ['f32', 4, 2, 24],
            ['f16', 4, 2, 24],
            ['bf16', 6, 2, 48],
            ['f16', 8, 2, 128],
          ] as [DType, number, number, number][])
        : []),
    ];
    it.each(attentionCases)(
      'attention over a %s cache: %i heads, %i kv heads, head dim %i',
      async (dtype, heads, kvHeads, headDim) => {
        const capacity = 700;
        const filled = 650;
        const scale = 1 / Math.sqrt(headDim);
        const keyCache = b().alloc(dtype, [kvHeads, capacity, headDim]);
        const valueCache = b().alloc(dtype, [kvHeads, capacity, headDim]);
        // Write the cache in two chunks through writeCache, as the model does.
        const keys = randomArray(filled * kvHeads * headDim, 21, 2);
        const values = randomArray(filled * kvHeads * headDim, 22);
        for (const [start, count] of [
          [0, 600],
          [600, 50],
        ] as const) {
          const width = kvHeads * headDim;
          const k = b().upload('f32', [count, width], keys.slice(start * width, (start + count) * width));
          const v = b().upload('f32', [count, width], values.slice(start * width, (start + count) * width));
          b().writeCache(k, keyCache, start);
          b().writeCache(v, valueCache, start);
          k.dispose();
          v.dispose();
        }
        const decode = dtype === 'f32' ? (v: number) => v : dtype === 'bf16' ? bf16ToNumber : f16ToNumber;
        const heldKeys = new Float64Array(await b().read(keyCache)).map(decode);
        const heldValues = new Float64Array(await b().read(valueCache)).map(decode);
        expect(
          maxAbsDifference(
            heldKeys.slice(0, headDim),
            Array.from(keys.slice(0, headDim), (v) =>
              decode(dtype === 'f32' ? v : dtype === 'bf16' ? numberToBf16(v) : numberToF16(v)),
            ),
          ),
        ).toBe(0);
        const rows = 37;
        const queryStart = filled - rows;
        const q = randomArray(rows * heads * headDim, 23, 2);
        const queries = b().upload('f32', [rows, heads * headDim], q);
        const out = b().alloc('f32', [rows, heads * headDim]);
        const attributes = { heads, kvHeads, headDim, scale, keyLength: filled, queryStart };
        b().attentionPrefill(queries, keyCache, valueCache, out, attributes);
        const expected = referenceAttention(
          toMatrix(q, rows, heads * headDim),
          perHead(heldKeys, kvHeads, capacity, headDim),
          perHead(heldValues, kvHeads, capacity, headDim),
          attributes,
        );
        expect(relativeError(await readF32(b(), out), expected)).toBeLessThan(TOLERANCE.attention[dtype]);

        const single = b().upload('f32', [1, heads * headDim], q.slice(0, heads * headDim));
        const singleOut = b().alloc('f32', [1, heads * headDim]);
        b().attentionDecode(single, keyCache, valueCache, singleOut, {
          heads,
          kvHeads,
          headDim,
          scale,
          keyLength: filled,
        });
        const expectedDecode = referenceAttention(
          toMatrix(q, 1, heads * headDim),
          perHead(heldKeys, kvHeads, capacity, headDim),
          perHead(heldValues, kvHeads, capacity, headDim),
          {
            ...attributes,
            queryStart: filled - 1,
          },
        );
        expect(relativeError(await readF32(b(), singleOut), expectedDecode)).toBeLessThan(TOLERANCE.attention[dtype]);
        for (const t of [keyCache, valueCache, queries, out, single, singleOut]) t.dispose();
      },
    );

    it.each(['bf16', 'f32'] as const)(
      'decode attention over 16 384 keys of a %s cache: many splits per head, combined',
      async (dtype) => {
        // One KV head over 16K keys: the CUDA decode splits it into ~128 parts, more than the combine holds in registers.
        const heads = 4;
        const kvHeads = 1;
        const headDim = 128;
        const length = 16384;
        const scale = 1 / Math.sqrt(headDim);
        const keyCache = b().alloc(dtype, [kvHeads, length, headDim]);
        const valueCache = b().alloc(dtype, [kvHeads, length, headDim]);
        const k = b().upload('f32', [length, headDim], randomArray(length * headDim, 31, 2));
        const v = b().upload('f32', [length, headDim], randomArray(length * headDim, 32));
        b().writeCache(k, keyCache, 0);
        b().writeCache(v, valueCache, 0);
        const decode = dtype === 'f32' ? (x: number) => x : bf16ToNumber;
        const rows = (held: Float64Array): Float64Array[][] => [
          Array.from({ length }, (_, j) => held.subarray(j * headDim, (j + 1) * headDim)),
        ];
        const heldKeys = new Float64Array(await b().read(keyCache)).map(decode);
        const heldValues = new Float64Array(await b().read(valueCache)).map(decode);
        const q = randomArray(heads * headDim, 33, 2);
        const query = b().upload('f32', [1, heads * headDim], q);
        const out = b().alloc('f32', [1, heads * headDim]);
        const attributes = { heads, kvHeads, headDim, scale, keyLength: length };
        b().attentionDecode(query, keyCache, valueCache, out, attributes);
        const expected = referenceAttention(toMatrix(q, 1, heads * headDim), rows(heldKeys), rows(heldValues), {
          ...attributes,
          queryStart: length - 1,
        });
        expect(relativeError(await readF32(b(), out), expected)).toBeLessThan(TOLERANCE.attention[dtype]);
        for (const t of [keyCache, valueCache, k, v, query, out]) t.dispose();
      },
    );

    it('decode attention can read its length from the device, and decodeAdvance steps ids and positions', async () => {
      const [heads, kvHeads, headDim, capacity] = [8, 2, 64, 300];
      const keyCache = b().alloc('bf16', [kvHeads, capacity, headDim]);
      const valueCache = b().alloc('bf16', [kvHeads, capacity, headDim]);
      b().fillRandom(keyCache, 90);
      b().fillRandom(valueCache, 91);
      const query = b().upload('f32', [1, heads * headDim], randomArray(heads * headDim, 92));
      const explicit = b().alloc('f32', [1, heads * headDim]);
      const fromDevice = b().alloc('f32', [1, heads * headDim]);
      const attributes = { heads, kvHeads, headDim, scale: 0.125, keyLength: 201 };
      b().attentionDecode(query, keyCache, valueCache, explicit, attributes);
      const position = b().upload('i32', [1], Int32Array.of(199));
      const next = b().upload('i32', [1], Int32Array.of(42));
      const ids = b().upload('i32', [1], Int32Array.of(7));
      b().decodeAdvance(next, ids, position);
      expect(Array.from(await b().read(position))).toEqual([200]);
      expect(Array.from(await b().read(ids))).toEqual([42]);
      // keyLength only sizes the launch here: the 201 keys come from position 200 on the device.
      b().attentionDecode(query, keyCache, valueCache, fromDevice, {
        ...attributes,
        keyLength: 1,
        lengthFrom: position,
      });
      // The launch is split for the whole cache, so sums may associate differently: equal to f32 rounding.
      expect(relativeError(await readF32(b(), fromDevice), await readF32(b(), explicit))).toBeLessThan(1e-6);
      for (const t of [keyCache, valueCache, query, explicit, fromDevice, position, next, ids]) t.dispose();
    });

    it('captured graphs replay the recorded ops (where the backend supports them)', async () => {
      if (!b().supportsGraphs) {
        expect(() => b().captureGraph(() => {})).toThrow('cannot capture graphs');
        return;
      }
      const next = b().upload('i32', [1], Int32Array.of(5));
      const ids = b().upload('i32', [1], Int32Array.of(0));
      const position = b().upload('i32', [1], Int32Array.of(10));
      const a = b().upload('f32', [4], Float32Array.of(1, 2, 3, 4));
      const sum = b().upload('f32', [4], new Float32Array(4));
      const graph = b().captureGraph(() => {
        b().decodeAdvance(next, ids, position);
        b().add(sum, a, sum);
      });
      for (let i = 0; i < 3; i++) b().launchGraph(graph);
      expect(Array.from(await b().read(position))).toEqual([13]);
      expect(Array.from(await b().read(sum))).toEqual([3, 6, 9, 12]);
      b().disposeGraph(graph);
      for (const t of [next, ids, position, a, sum]) t.dispose();
    });

    it('argmax and softmax match the reference', async () => {
      const logits = randomArray(3 * 515, 31, 8);
      logits[2 * 515 + 100] = 50;
      const ls = b().upload('f32', [3, 515], logits);
      const ids = b().alloc('i32', [3]);
      const probabilities = b().alloc('f32', [3, 515]);
      b().argmax(ls, ids);
      b().softmax(ls, probabilities, 0.7);
      const matrix: Matrix = toMatrix(logits, 3, 515);
      expect(Array.from(await b().read(ids))).toEqual(referenceArgmax(matrix));
      expect(relativeError(await readF32(b(), probabilities), referenceSoftmax(matrix, 0.7))).toBeLessThan(1e-5);
      for (const t of [ls, ids, probabilities]) t.dispose();
    });

    it('rejects bad arguments with messages naming them, and disposed tensors', () => {
      const x = b().alloc('f32', [2, 8]);
      const w = b().alloc('bf16', [4, 7]);
      const out = b().alloc('f32', [2, 4]);
      expect(() => b().matmul(x, w, out)).toThrow(DuoArgumentError);
      expect(() => b().matmul(x, w, out)).toThrow(
        'Expected a f32 tensor of shape [n, 7] for `x` but received f32 [2, 8]',
      );
      expect(() => b().alloc('f64' as DType, [2])).toThrow(
        'Expected `dtype` to be one of f32, f16, bf16, i32, u8, q8_0, q4_k, q5_k, q6_k but received "f64"',
      );
      w.dispose();
      expect(() => b().matmul(x, w, out)).toThrow(DuoDisposedError);
      x.dispose();
      out.dispose();
    });
  });
}
