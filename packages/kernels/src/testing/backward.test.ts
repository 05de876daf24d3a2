import { describe, expect, it } from 'vitest';
import {
  finiteDifferences,
  innerProduct,
  referenceAttentionBackward,
  referenceGatedAttention,
  referenceMatmulBackward,
  referenceRmsNormBackward,
  referenceRopeBackward,
  referenceSwigluBackward,
} from './backward.js';
import {
  type Matrix,
  randomArray,
  referenceAttention,
  referenceMatmul,
  referenceRmsNorm,
  referenceRope,
  referenceSwiglu,
  relativeError,
  toMatrix,
} from './reference.js';

// Each reference gradient against central finite differences of the forward reference, L = ⟨dY, f(x)⟩.
const flat = (m: Matrix) => Float64Array.from(m.flatMap((row) => Array.from(row)));
const view = (data: Float64Array, rows: number, cols: number): Matrix =>
  Array.from({ length: rows }, (_, r) => data.subarray(r * cols, (r + 1) * cols));
const random = (rows: number, cols: number, seed: number) => toMatrix(randomArray(rows * cols, seed), rows, cols);

describe('float64 reference gradients match finite differences', () => {
  it('matmul, RMSNorm, RoPE (both pairings) and SwiGLU', () => {
    const x = flat(random(3, 8, 1));
    const weight = random(5, 8, 2);
    const gradMatmul = random(3, 5, 3);
    const matmulLoss = () => innerProduct(gradMatmul, referenceMatmul(view(x, 3, 8), weight));
    expect(
      relativeError(flat(referenceMatmulBackward(gradMatmul, weight)), finiteDifferences(x, matmulLoss)),
    ).toBeLessThan(1e-7);

    const gain = randomArray(8, 4);
    const gradNorm = random(3, 8, 5);
    const normLoss = () => innerProduct(gradNorm, referenceRmsNorm(view(x, 3, 8), gain, 1e-5));
    const normGradient = flat(referenceRmsNormBackward(view(x, 3, 8), gain, 1e-5, gradNorm));
    expect(relativeError(normGradient, finiteDifferences(x, normLoss))).toBeLessThan(1e-7);

    const positions = [0, 7, 1000];
    const frequencies = [1, 0.1, 0.01, 0.001];
    for (const interleaved of [false, true]) {
      const ropeLoss = () =>
        innerProduct(gradNorm, referenceRope(view(x, 3, 8), positions, frequencies, 1, 8, interleaved));
      const ropeGradient = flat(referenceRopeBackward(gradNorm, positions, frequencies, 1, 8, interleaved));
      expect(relativeError(ropeGradient, finiteDifferences(x, ropeLoss))).toBeLessThan(1e-7);
    }

    const gate = flat(random(3, 8, 6));
    const up = flat(random(3, 8, 7));
    const swigluLoss = () => innerProduct(gradNorm, referenceSwiglu(view(gate, 3, 8), view(up, 3, 8)));
    const swiglu = referenceSwigluBackward(view(gate, 3, 8), view(up, 3, 8), gradNorm);
    expect(relativeError(flat(swiglu.gate), finiteDifferences(gate, swigluLoss))).toBeLessThan(1e-7);
    expect(relativeError(flat(swiglu.up), finiteDifferences(up, swigluLoss))).toBeLessThan(1e-7);
  });

  // GQA: 4 query heads over 2 KV heads, head dim 4, 7 keys, query rows at positions 4–6.
  const shape = { heads: 4, kvHeads: 2, headDim: 4, scale: 0.5, keyLength: 7, queryStart: 4 };
  const q = flat(random(3, 16, 10));
  const k = flat(random(14, 4, 11));
  const v = flat(random(14, 4, 12));
  const perHead = (data: Float64Array) => [view(data.subarray(0, 28), 7, 4), view(data.subarray(28), 7, 4)];
  const gradOut = random(3, 16, 13);
  const streamingVisible = (p: number, j: number) => j <= p && (j < 1 || p - j < 2);

  it('causal attention: query, key and value gradients', () => {
    const loss = () => innerProduct(gradOut, referenceAttention(view(q, 3, 16), perHead(k), perHead(v), shape));
    const gradients = referenceAttentionBackward(view(q, 3, 16), perHead(k), perHead(v), shape, gradOut);
    expect(relativeError(flat(gradients.query), finiteDifferences(q, loss))).toBeLessThan(1e-7);
    expect(relativeError(flat(gradients.keys.flat()), finiteDifferences(k, loss))).toBeLessThan(1e-7);
    expect(relativeError(flat(gradients.values.flat()), finiteDifferences(v, loss))).toBeLessThan(1e-7);
  });

  it('the gate mix (1 − α)·streaming + α·full with the Λ mask: q/k/v and ∂L/∂α', () => {
    const gates = Float64Array.of(0.3, 0.8);
    const options = { ...shape, gates, streamingVisible };
    const loss = () =>
      innerProduct(gradOut, referenceGatedAttention(view(q, 3, 16), perHead(k), perHead(v), options).out);
    const { gradients } = referenceGatedAttention(view(q, 3, 16), perHead(k), perHead(v), options, gradOut);
    if (!gradients) throw new Error('no gradients');
    expect(relativeError(gradients.gates, finiteDifferences(gates, loss))).toBeLessThan(1e-7);
    expect(relativeError(flat(gradients.query), finiteDifferences(q, loss))).toBeLessThan(1e-7);
    expect(relativeError(flat(gradients.keys.flat()), finiteDifferences(k, loss))).toBeLessThan(1e-7);
    expect(relativeError(flat(gradients.values.flat()), finiteDifferences(v, loss))).toBeLessThan(1e-7);

    // The reference's training: the full term comes from the teacher's Q/K/V, constant for the student.
    const teacher = { q: q.slice(), k: k.slice(), v: v.slice() };
    const studentLoss = () => {
      const full = referenceAttention(view(teacher.q, 3, 16), perHead(teacher.k), perHead(teacher.v), shape);
      const stream = referenceAttention(view(q, 3, 16), perHead(k), perHead(v), {
        ...shape,
        visible: streamingVisible,
      });
      const mixed = stream.map((row, r) =>
        row.map((value, i) => {
          const gate = gates[Math.floor(Math.floor(i / 4) / 2)] ?? 0;
          return (1 - gate) * value + gate * (full[r]?.[i] ?? 0);
        }),
      );
      return innerProduct(gradOut, mixed);
    };
    const constantFull = referenceGatedAttention(
      view(q, 3, 16),
      perHead(k),
      perHead(v),
      { ...options, fullIsConstant: true },
      gradOut,
    );
    if (!constantFull.gradients) throw new Error('no gradients');
    expect(relativeError(flat(constantFull.gradients.query), finiteDifferences(q, studentLoss))).toBeLessThan(1e-7);
    expect(relativeError(flat(constantFull.gradients.keys.flat()), finiteDifferences(k, studentLoss))).toBeLessThan(
      1e-7,
    );
    expect(relativeError(constantFull.gradients.gates, gradients.gates)).toBe(0);
  });
});
