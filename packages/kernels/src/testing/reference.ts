// Float64 reference implementations of every backend op, for the conformance suite and model tests.

export { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16, randomArray } from '@duoattn/core';

/** A matrix as float64 rows. */
export type Matrix = Float64Array[];

export function toMatrix(data: ArrayLike<number>, rows: number, cols: number): Matrix {
  return Array.from({ length: rows }, (_, r) => Float64Array.from({ length: cols }, (_, c) => data[r * cols + c] ?? 0));
}

export function referenceEmbedding(table: Matrix, ids: ArrayLike<number>): Matrix {
  return Array.from(ids, (id) => Float64Array.from(table[id] ?? []));
}

export function referenceRmsNorm(x: Matrix, weight: ArrayLike<number>, eps: number): Matrix {
  return x.map((row) => {
    const meanSquare = row.reduce((sum, v) => sum + v * v, 0) / row.length;
    const inverse = 1 / Math.sqrt(meanSquare + eps);
    return row.map((v, i) => v * inverse * (weight[i] ?? 0));
  });
}

/** Rounds half to even, as CUDA's __float2int_rn. */
function roundHalfEven(value: number): number {
  const rounded = Math.round(value);
  return Math.abs(value % 1) === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

/**
 * x as integer products read it (CUDA's Q8_0 and Q4_K decode, cuda/gemv-blocks.cu; the CPU's Q8_0 matmul,
 * cpu/gemm-tiles.inc; ADR 0010): every 32-value piece of f32 values
 * rounded to int8 steps of max|x| / 127, each step and code computed in f32 as the kernel does.
 */
export function int8Pieces(x: ArrayLike<number>): Float64Array {
  const out = new Float64Array(x.length);
  for (let start = 0; start < x.length; start += 32) {
    let largest = 0;
    for (let i = start; i < start + 32; i++) largest = Math.max(largest, Math.abs(x[i] as number));
    const step = Math.fround(largest / 127);
    const inverse = largest > 0 ? Math.fround(127 / largest) : 0;
    for (let i = start; i < start + 32; i++) out[i] = roundHalfEven(Math.fround((x[i] as number) * inverse)) * step;
  }
  return out;
}

export function referenceMatmul(x: Matrix, weight: Matrix, bias?: ArrayLike<number>, residual?: Matrix): Matrix {
  return x.map((row, r) =>
    Float64Array.from(weight, (w, j) => {
      let sum = 0;
      for (let i = 0; i < row.length; i++) sum += (row[i] ?? 0) * (w[i] ?? 0);
      return sum + (bias?.[j] ?? 0) + (residual?.[r]?.[j] ?? 0);
    }),
  );
}

/**
 * Rotates each head of each row at its position; `interleaved` pairs (2i, 2i+1), else (i, i + d/2). `direction` −1
 * rotates back (RoPE's gradient).
 */
export function referenceRope(
  x: Matrix,
  positions: ArrayLike<number>,
  inverseFrequencies: ArrayLike<number>,
  heads: number,
  headDim: number,
  interleaved: boolean,
  direction: 1 | -1 = 1,
): Matrix {
  const half = headDim / 2;
  return x.map((row, r) => {
    const out = Float64Array.from(row);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const angle = direction * (positions[r] ?? 0) * (inverseFrequencies[i] ?? 0);
        const a = h * headDim + (interleaved ? 2 * i : i);
        const b = h * headDim + (interleaved ? 2 * i + 1 : i + half);
        const first = row[a] ?? 0;
        const second = row[b] ?? 0;
        out[a] = first * Math.cos(angle) - second * Math.sin(angle);
        out[b] = first * Math.sin(angle) + second * Math.cos(angle);
      }
    }
    return out;
  });
}

export function referenceSwiglu(gate: Matrix, up: Matrix): Matrix {
  return gate.map((row, r) => row.map((g, i) => (g / (1 + Math.exp(-g))) * (up[r]?.[i] ?? 0)));
}

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  keyLength: number;
  queryStart: number;
  visible?: (queryPosition: number, keyPosition: number, head: number) => boolean;
}

/**
 * The softmax weights of query head `head` of `row` (at absolute position `position`) over the keys it sees: the key
 * positions and their probabilities (empty when no key is visible). Keys are given per KV head as [position] vectors.
 */
export function attentionWeights(
  row: Float64Array,
  head: number,
  position: number,
  keys: Float64Array[][],
  options: AttentionShape,
): { indices: number[]; weights: number[] } {
  const { heads, kvHeads, headDim, scale, keyLength } = options;
  const visible = options.visible ?? ((p: number, j: number) => j <= p);
  const kvHead = Math.floor(head / (heads / kvHeads));
  const indices: number[] = [];
  const scores: number[] = [];
  for (let j = 0; j < keyLength; j++) {
    if (!visible(position, j, head)) continue;
    const key = keys[kvHead]?.[j] ?? new Float64Array(headDim);
    let dot = 0;
    for (let i = 0; i < headDim; i++) dot += (row[head * headDim + i] ?? 0) * (key[i] ?? 0);
    scores.push(dot * scale);
    indices.push(j);
  }
  const maximum = Math.max(...scores);
  const exps = scores.map((s) => Math.exp(s - maximum));
  const total = exps.reduce((a, b) => a + b, 0);
  return { indices, weights: exps.map((e) => e / total) };
}

/**
 * Attention of query rows (at absolute positions queryStart + r) over keys/values given per KV head as
 * [kvHeads][position] vectors. `visible(position, key)` decides the mask; the default is causal.
 */
export function referenceAttention(
  query: Matrix,
  keys: Float64Array[][],
  values: Float64Array[][],
  options: AttentionShape,
): Matrix {
  const { heads, kvHeads, headDim, queryStart } = options;
  const group = heads / kvHeads;
  return query.map((row, r) => {
    const out = new Float64Array(heads * headDim);
    for (let h = 0; h < heads; h++) {
      const kvHead = Math.floor(h / group);
      const { indices, weights } = attentionWeights(row, h, queryStart + r, keys, options);
      indices.forEach((j, n) => {
        const value = values[kvHead]?.[j] ?? new Float64Array(headDim);
        const weight = weights[n] ?? 0;
        for (let i = 0; i < headDim; i++) out[h * headDim + i] = (out[h * headDim + i] ?? 0) + weight * (value[i] ?? 0);
      });
    }
    return out;
  });
}

export function referenceSoftmax(logits: Matrix, temperature: number): Matrix {
  return logits.map((row) => {
    const maximum = Math.max(...row);
    const exps = row.map((v) => Math.exp((v - maximum) / temperature));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((v) => v / total);
  });
}

export function referenceArgmax(logits: Matrix): number[] {
  return logits.map((row) => row.reduce((best, v, i) => (v > (row[best] ?? -Infinity) ? i : best), 0));
}

function flatten(values: Matrix | ArrayLike<number>): ArrayLike<number> {
  const first = (values as ArrayLike<unknown>)[0];
  return typeof first === 'object' && first !== null
    ? Float64Array.from((values as Matrix).flatMap((row) => Array.from(row)))
    : (values as ArrayLike<number>);
}

/** Largest |a − b| over all elements. */
export function maxAbsDifference(actual: ArrayLike<number>, expected: Matrix | ArrayLike<number>): number {
  const flat = flatten(expected);
  if (flat.length !== actual.length) return Number.POSITIVE_INFINITY;
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    const diff = Math.abs((actual[i] ?? 0) - (flat[i] ?? 0));
    if (Number.isNaN(diff)) return Number.POSITIVE_INFINITY;
    worst = Math.max(worst, diff);
  }
  return worst;
}

/** ‖a − b‖ / ‖b‖ over all elements (NaN counts as infinite error). */
export function relativeError(actual: ArrayLike<number>, expected: Matrix | ArrayLike<number>): number {
  const flat = flatten(expected);
  if (flat.length !== actual.length) return Number.POSITIVE_INFINITY;
  let num = 0;
  let den = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = (actual[i] ?? 0) - (flat[i] ?? 0);
    num += d * d;
    den += (flat[i] ?? 0) ** 2;
  }
  const error = Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
  return Number.isNaN(error) ? Number.POSITIVE_INFINITY : error;
}
