// How much a quantized cache changes what attention sees: element error of K and V (MSE, SNR), and the error of the
// attention output itself against the unquantized cache, in float64.

/** Mean squared difference. */
export function meanSquaredError(reference: ArrayLike<number>, approximation: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < reference.length; i++) sum += ((reference[i] ?? 0) - (approximation[i] ?? 0)) ** 2;
  return sum / Math.max(reference.length, 1);
}

/** Signal-to-noise ratio in dB: 10·log10(Σ x² / Σ (x − x̂)²); Infinity when the two are equal. */
export function signalToNoiseDb(reference: ArrayLike<number>, approximation: ArrayLike<number>): number {
  let signal = 0;
  let noise = 0;
  for (let i = 0; i < reference.length; i++) {
    signal += (reference[i] ?? 0) ** 2;
    noise += ((reference[i] ?? 0) - (approximation[i] ?? 0)) ** 2;
  }
  return noise === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(signal / noise);
}

/** One KV head's cache: `length` rows of `headDim` values, row-major. */
export interface HeadCache {
  keys: ArrayLike<number>;
  values: ArrayLike<number>;
  length: number;
  headDim: number;
}

/** softmax(q·Kᵀ · scale) · V for one query over the first `keyLength` rows, in float64. */
export function attendOne(query: ArrayLike<number>, cache: HeadCache, keyLength = cache.length): Float64Array {
  const { keys, values, headDim } = cache;
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(keyLength);
  let maximum = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < keyLength; j++) {
    let dot = 0;
    for (let c = 0; c < headDim; c++) dot += (query[c] ?? 0) * (keys[j * headDim + c] ?? 0);
    scores[j] = dot * scale;
    maximum = Math.max(maximum, scores[j] as number);
  }
  const out = new Float64Array(headDim);
  let total = 0;
  for (let j = 0; j < keyLength; j++) {
    const weight = Math.exp((scores[j] as number) - maximum);
    total += weight;
    for (let c = 0; c < headDim; c++) out[c] = (out[c] ?? 0) + weight * (values[j * headDim + c] ?? 0);
  }
  return out.map((v) => v / total);
}

/**
 * Relative error ‖o − ô‖ / ‖o‖ of attention outputs for `queries` (each `headDim` values) between the unquantized and
 * the quantized cache, each query seeing every key (the worst case for a long cache).
 */
export function attentionOutputError(queries: ArrayLike<number>, exact: HeadCache, quantized: HeadCache): number {
  let difference = 0;
  let norm = 0;
  for (let start = 0; start + exact.headDim <= queries.length; start += exact.headDim) {
    const query = Array.prototype.slice.call(queries, start, start + exact.headDim) as number[];
    const a = attendOne(query, exact);
    const b = attendOne(query, quantized);
    a.forEach((value, c) => {
      difference += (value - (b[c] ?? 0)) ** 2;
      norm += value ** 2;
    });
  }
  return Math.sqrt(difference) / Math.max(Math.sqrt(norm), 1e-300);
}
