// Float64 reference input gradients (vector-Jacobian products) of the ops the gate trainer backpropagates through,
// and a central finite-difference check. Weights are frozen, so only inputs (and the attention gates) get gradients.
import { type AttentionShape, attentionWeights, type Matrix, referenceAttention, referenceRope } from './reference.js';

/** d(x · Wᵀ)/dx applied to `gradOut` ([n, m]) for weight [m, k]: gradOut · W ([n, k]). */
export function referenceMatmulBackward(gradOut: Matrix, weight: Matrix): Matrix {
  const inner = weight[0]?.length ?? 0;
  return gradOut.map((row) => {
    const out = new Float64Array(inner);
    row.forEach((g, j) => {
      const w = weight[j] ?? new Float64Array(inner);
      for (let i = 0; i < inner; i++) out[i] = (out[i] ?? 0) + g * (w[i] ?? 0);
    });
    return out;
  });
}

/** RMSNorm y = x · r · w with r = (mean(x²) + eps)^(−1/2): dx = r · (w ⊙ dy) − r³ / n · x · Σ(x ⊙ w ⊙ dy). */
export function referenceRmsNormBackward(x: Matrix, weight: ArrayLike<number>, eps: number, gradOut: Matrix): Matrix {
  return x.map((row, r) => {
    const n = row.length;
    const inverse = 1 / Math.sqrt(row.reduce((sum, v) => sum + v * v, 0) / n + eps);
    const scaled = row.map((_, i) => (weight[i] ?? 0) * (gradOut[r]?.[i] ?? 0));
    const dot = row.reduce((sum, v, i) => sum + v * (scaled[i] ?? 0), 0);
    return row.map((v, i) => inverse * (scaled[i] ?? 0) - ((inverse ** 3 * dot) / n) * v);
  });
}

/** RoPE is a rotation: its gradient rotates `gradOut` back by the same angles. */
export function referenceRopeBackward(
  gradOut: Matrix,
  positions: ArrayLike<number>,
  inverseFrequencies: ArrayLike<number>,
  heads: number,
  headDim: number,
  interleaved: boolean,
): Matrix {
  return referenceRope(gradOut, positions, inverseFrequencies, heads, headDim, interleaved, -1);
}

/** out = silu(gate) · up: dGate = dOut · up · silu′(gate), dUp = dOut · silu(gate). */
export function referenceSwigluBackward(gate: Matrix, up: Matrix, gradOut: Matrix): { gate: Matrix; up: Matrix } {
  const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));
  return {
    gate: gate.map((row, r) =>
      row.map((g, i) => {
        const s = sigmoid(g);
        return (gradOut[r]?.[i] ?? 0) * (up[r]?.[i] ?? 0) * s * (1 + g * (1 - s));
      }),
    ),
    up: gate.map((row, r) => row.map((g, i) => (gradOut[r]?.[i] ?? 0) * g * sigmoid(g))),
  };
}

export interface AttentionGradients {
  query: Matrix;
  /** Per KV head, per key position. */
  keys: Float64Array[][];
  values: Float64Array[][];
}

/** Gradients of `referenceAttention(query, keys, values, options)` for `gradOut` (same shape as its output). */
export function referenceAttentionBackward(
  query: Matrix,
  keys: Float64Array[][],
  values: Float64Array[][],
  options: AttentionShape,
  gradOut: Matrix,
): AttentionGradients {
  const { heads, kvHeads, headDim, scale, keyLength, queryStart } = options;
  const group = heads / kvHeads;
  const zeros = () =>
    Array.from({ length: kvHeads }, () => Array.from({ length: keyLength }, () => new Float64Array(headDim)));
  const result: AttentionGradients = {
    query: query.map((row) => new Float64Array(row.length)),
    keys: zeros(),
    values: zeros(),
  };
  query.forEach((row, r) => {
    for (let h = 0; h < heads; h++) {
      const kvHead = Math.floor(h / group);
      const { indices, weights: p } = attentionWeights(row, h, queryStart + r, keys, options);
      const dot = (a: Float64Array, offset: number, b: Float64Array) => {
        let sum = 0;
        for (let i = 0; i < headDim; i++) sum += (a[offset + i] ?? 0) * (b[i] ?? 0);
        return sum;
      };
      const key = (j: number) => keys[kvHead]?.[j] ?? new Float64Array(headDim);
      const value = (j: number) => values[kvHead]?.[j] ?? new Float64Array(headDim);
      const gradRow = gradOut[r] ?? new Float64Array(heads * headDim);
      // dP_j = dO · v_j; dS_j = P_j (dP_j − Σ_l P_l dP_l).
      const dp = indices.map((j) => dot(gradRow, h * headDim, value(j)));
      const mean = p.reduce((sum, pj, n) => sum + pj * (dp[n] ?? 0), 0);
      indices.forEach((j, n) => {
        const pj = p[n] ?? 0;
        const ds = pj * ((dp[n] ?? 0) - mean);
        const dv = result.values[kvHead]?.[j] as Float64Array;
        const dk = result.keys[kvHead]?.[j] as Float64Array;
        const dq = result.query[r] as Float64Array;
        const k = key(j);
        for (let i = 0; i < headDim; i++) {
          dv[i] = (dv[i] ?? 0) + pj * (gradRow[h * headDim + i] ?? 0);
          dk[i] = (dk[i] ?? 0) + scale * ds * (row[h * headDim + i] ?? 0);
          dq[h * headDim + i] = (dq[h * headDim + i] ?? 0) + scale * ds * (k[i] ?? 0);
        }
      });
    }
  });
  return result;
}

/**
 * The gate mix of one layer, `out_h = (1 − α_g) · Stream_h + α_g · Full_h` for query head h of KV group g, and its
 * gradients: ∂L/∂α_g = Σ_{h ∈ g} ⟨∂L/∂out_h, Full_h − Stream_h⟩; q/k/v get (1 − α)-weighted streaming gradients plus,
 * unless `fullIsConstant` (the reference's teacher Q/K/V), α-weighted full-attention gradients.
 */
export function referenceGatedAttention(
  query: Matrix,
  keys: Float64Array[][],
  values: Float64Array[][],
  options: AttentionShape & {
    gates: ArrayLike<number>;
    streamingVisible: NonNullable<AttentionShape['visible']>;
    fullIsConstant?: boolean;
  },
  gradOut?: Matrix,
): { out: Matrix; gradients?: AttentionGradients & { gates: Float64Array } } {
  const { heads, kvHeads, headDim, gates } = options;
  const group = heads / kvHeads;
  const full = referenceAttention(query, keys, values, options);
  const streamOptions = { ...options, visible: options.streamingVisible };
  const stream = referenceAttention(query, keys, values, streamOptions);
  const gateOf = (h: number) => gates[Math.floor(h / group)] ?? 0;
  const out = stream.map((row, r) =>
    row.map((v, i) => {
      const gate = gateOf(Math.floor(i / headDim));
      return (1 - gate) * v + gate * (full[r]?.[i] ?? 0);
    }),
  );
  if (!gradOut) return { out };
  const weighted = (weight: (h: number) => number) =>
    gradOut.map((row) => row.map((g, i) => g * weight(Math.floor(i / headDim))));
  const streamGradients = referenceAttentionBackward(
    query,
    keys,
    values,
    streamOptions,
    weighted((h) => 1 - gateOf(h)),
  );
  const gateGradients = new Float64Array(kvHeads);
  gradOut.forEach((row, r) => {
    row.forEach((g, i) => {
      const kvHead = Math.floor(Math.floor(i / headDim) / group);
      gateGradients[kvHead] = (gateGradients[kvHead] ?? 0) + g * ((full[r]?.[i] ?? 0) - (stream[r]?.[i] ?? 0));
    });
  });
  if (options.fullIsConstant) return { out, gradients: { ...streamGradients, gates: gateGradients } };
  const fullGradients = referenceAttentionBackward(query, keys, values, options, weighted(gateOf));
  const add = (a: Float64Array[], b: Float64Array[]) => a.map((row, n) => row.map((v, i) => v + (b[n]?.[i] ?? 0)));
  return {
    out,
    gradients: {
      query: add(streamGradients.query, fullGradients.query),
      keys: streamGradients.keys.map((head, h) => add(head, fullGradients.keys[h] ?? [])),
      values: streamGradients.values.map((head, h) => add(head, fullGradients.values[h] ?? [])),
      gates: gateGradients,
    },
  };
}

/**
 * Central finite differences of the scalar `loss` at `point` (changed in place and restored): one derivative per
 * entry, with step `h` relative to the entry's size.
 */
export function finiteDifferences(point: Float64Array, loss: () => number, h = 1e-6): Float64Array {
  return point.map((value, i) => {
    const step = h * Math.max(1, Math.abs(value));
    point[i] = value + step;
    const above = loss();
    point[i] = value - step;
    const below = loss();
    point[i] = value;
    return (above - below) / (2 * step);
  });
}

/** ⟨a, b⟩ over matrices of the same shape. */
export function innerProduct(a: Matrix, b: Matrix): number {
  return a.reduce((sum, row, r) => sum + row.reduce((s, v, i) => s + v * (b[r]?.[i] ?? 0), 0), 0);
}
