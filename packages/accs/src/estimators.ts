// The ACCS estimators (METHOD.md, "ACCS"), in float64 and by running sums: self-similarity (mean cosine between a clean
// and a perturbed run's states at matching suffix positions), anisotropy (mean cosine between unit states of
// different sequences, from per-sequence sums — the exact grouped estimator) and ACCS = SelfSim − A, with bootstrap
// intervals over documents.
import { DuoArgumentError } from '@duoattn/core';
import { seededRandom } from '@duoattn/model';

/** Rows of `dimension` values, concatenated (f32 or f64). */
export type StateRows = Float32Array | Float64Array;

function rowCount(states: StateRows, dimension: number, name: string): number {
  if (!Number.isInteger(dimension) || dimension < 1) {
    throw new DuoArgumentError('dimension', `Expected a positive integer \`dimension\` but received ${dimension}`);
  }
  if (states.length % dimension !== 0) {
    throw new DuoArgumentError(
      name,
      `Expected \`${name}\` to hold whole rows of ${dimension} values but received ${states.length} values`,
    );
  }
  return states.length / dimension;
}

function norm(states: StateRows, offset: number, dimension: number): number {
  let sum = 0;
  for (let i = 0; i < dimension; i++) sum += (states[offset + i] as number) ** 2;
  return Math.sqrt(sum);
}

/** Cosine between row `row` of `a` and of `b` (0 when either is the zero vector). */
export function rowCosine(a: StateRows, b: StateRows, row: number, dimension: number): number {
  const offset = row * dimension;
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < dimension; i++) {
    const x = a[offset + i] as number;
    const y = b[offset + i] as number;
    dot += x * y;
    normA += x * x;
    normB += y * y;
  }
  return normA > 0 && normB > 0 ? dot / Math.sqrt(normA * normB) : 0;
}

/** One sequence's contribution to anisotropy: the sum of its unit states and how many there are. */
export interface AnisotropyGroup {
  readonly sum: Float64Array;
  readonly count: number;
}

/** The unit-vector sum of `states` (zero rows are left out: they have no direction). */
export function anisotropyGroup(states: StateRows, dimension: number): AnisotropyGroup {
  const rows = rowCount(states, dimension, 'states');
  const sum = new Float64Array(dimension);
  let count = 0;
  for (let r = 0; r < rows; r++) {
    const length = norm(states, r * dimension, dimension);
    if (!(length > 0)) continue;
    for (let i = 0; i < dimension; i++) (sum[i] as number) += (states[r * dimension + i] as number) / length;
    count++;
  }
  return { sum, count };
}

/**
 * The exact grouped estimator: over M unit vectors in groups g with sums G_g and sizes m_g, the mean cosine of the
 * pairs from different groups is (‖Σ_g G_g‖² − Σ_g ‖G_g‖²) / (M² − Σ_g m_g²). `indices` picks (and may repeat)
 * groups, as a bootstrap resample does; a repeated group counts as a distinct sequence. NaN when no pair exists.
 */
export function groupedAnisotropy(groups: readonly AnisotropyGroup[], indices?: readonly number[]): number {
  const picked = indices ?? groups.map((_, g) => g);
  const first = groups[0];
  if (!first) return Number.NaN;
  const total = new Float64Array(first.sum.length);
  let squares = 0;
  let count = 0;
  let countSquares = 0;
  for (const index of picked) {
    const group = groups[index];
    if (!group)
      throw new DuoArgumentError('indices', `Expected group indices below ${groups.length} but received ${index}`);
    let own = 0;
    for (let i = 0; i < total.length; i++) {
      const value = group.sum[i] as number;
      (total[i] as number) += value;
      own += value * value;
    }
    squares += own;
    count += group.count;
    countSquares += group.count * group.count;
  }
  let all = 0;
  for (const value of total) all += value * value;
  const pairs = count * count - countSquares;
  return pairs > 0 ? (all - squares) / pairs : Number.NaN;
}

/** Anisotropy by brute force: the average cosine over every ordered pair of states from different groups (tests). */
export function pairwiseAnisotropy(groups: readonly StateRows[], dimension: number): number {
  let sum = 0;
  let pairs = 0;
  groups.forEach((a, g) => {
    const rowsA = rowCount(a, dimension, 'groups');
    groups.forEach((b, h) => {
      if (g === h) return;
      const rowsB = rowCount(b, dimension, 'groups');
      for (let i = 0; i < rowsA; i++) {
        for (let j = 0; j < rowsB; j++) {
          let dot = 0;
          for (let c = 0; c < dimension; c++)
            dot += (a[i * dimension + c] as number) * (b[j * dimension + c] as number);
          const lengths = norm(a, i * dimension, dimension) * norm(b, j * dimension, dimension);
          if (!(lengths > 0)) continue;
          sum += dot / lengths;
          pairs++;
        }
      }
    });
  });
  return pairs > 0 ? sum / pairs : Number.NaN;
}

/** ACCS and its normalized variant from a self-similarity and an anisotropy. */
export function accsOf(selfSimilarity: number, anisotropy: number): { accs: number; normalized: number } {
  return { accs: selfSimilarity - anisotropy, normalized: (selfSimilarity - anisotropy) / (1 - anisotropy) };
}

/** The `lower` and `upper` quantiles (linear interpolation) of `values`, NaNs left out. */
export function percentileInterval(values: readonly number[], lower = 0.025, upper = 0.975): [number, number] {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return [Number.NaN, Number.NaN];
  const at = (q: number) => {
    const position = q * (sorted.length - 1);
    const below = Math.floor(position);
    const above = Math.min(sorted.length - 1, below + 1);
    return (sorted[below] as number) + ((sorted[above] as number) - (sorted[below] as number)) * (position - below);
  };
  return [at(lower), at(upper)];
}

/** `resamples` bootstrap draws of `documents` indices with replacement. */
export function bootstrapSamples(documents: number, resamples: number, seed: number): number[][] {
  const random = seededRandom(seed);
  return Array.from({ length: resamples }, () =>
    Array.from({ length: documents }, () => Math.floor(random() * documents)),
  );
}
