// The ACCS estimators against brute force and known cases.
import { seededRandom } from '@duoattn/model';
import { describe, expect, it } from 'vitest';
import { AccsAccumulator, doublingBins, gramAnisotropy, gramMatrix } from './accumulator.js';
import { anisotropyGroup, bootstrapSamples, groupedAnisotropy, pairwiseAnisotropy } from './estimators.js';

/** Gaussian-ish rows (sum of uniforms) around an optional shared direction. */
function randomRows(rows: number, dimension: number, seed: number, shared = 0): Float64Array {
  const random = seededRandom(seed);
  const out = new Float64Array(rows * dimension);
  for (let i = 0; i < out.length; i++)
    out[i] = random() + random() + random() - 1.5 + (i % dimension === 0 ? shared : 0);
  return out;
}

describe('anisotropy', () => {
  it('the grouped estimator equals brute-force pairwise averaging (1e-9), groups of unequal sizes', () => {
    const dimension = 12;
    const groups = [5, 1, 9, 3, 7].map((rows, g) => randomRows(rows, dimension, 10 + g, 1.2));
    const exact = groupedAnisotropy(groups.map((rows) => anisotropyGroup(rows, dimension)));
    const brute = pairwiseAnisotropy(groups, dimension);
    expect(Math.abs(exact - brute)).toBeLessThan(1e-9);
    expect(exact).toBeGreaterThan(0.2); // the shared direction shows
  });

  it('orthogonal states give exactly 0; isotropic random states in high dimension give about 0', () => {
    const dimension = 8;
    // Group g holds basis vectors 2g and 2g + 1: every cross-group pair is orthogonal.
    const basis = (indices: number[]) => {
      const rows = new Float64Array(indices.length * dimension);
      indices.forEach((axis, r) => {
        rows[r * dimension + axis] = 1;
      });
      return rows;
    };
    const orthogonal = [basis([0, 1]), basis([2, 3]), basis([4, 5]), basis([6, 7])];
    expect(groupedAnisotropy(orthogonal.map((rows) => anisotropyGroup(rows, dimension)))).toBe(0);
    const wide = 2048;
    const random = Array.from({ length: 6 }, (_, g) => randomRows(20, wide, 40 + g));
    expect(Math.abs(groupedAnisotropy(random.map((rows) => anisotropyGroup(rows, wide))))).toBeLessThan(0.01);
  });

  it('a resample that repeats a group counts the copies as distinct sequences; one group has no pairs', () => {
    const dimension = 6;
    const groups = [3, 4, 2].map((rows, g) => anisotropyGroup(randomRows(rows, dimension, 70 + g, 0.8), dimension));
    const repeated = groupedAnisotropy(groups, [0, 0, 2]);
    const copy = { sum: Float64Array.from(groups[0]?.sum ?? []), count: groups[0]?.count ?? 0 };
    expect(repeated).toBeCloseTo(groupedAnisotropy([groups[0] as never, copy, groups[2] as never]), 12);
    expect(groupedAnisotropy(groups, [1])).toBeNaN();
    expect(() => groupedAnisotropy(groups, [3])).toThrow(/indices below 3/);
  });

  it('zero rows are left out (they have no direction)', () => {
    const group = anisotropyGroup(Float64Array.of(0, 0, 3, 4), 2);
    expect(group.count).toBe(1);
    expect(Array.from(group.sum)).toEqual([0.6, 0.8]);
    expect(() => anisotropyGroup(Float64Array.of(1, 2, 3), 2)).toThrow(/whole rows of 2/);
  });
});

describe('AccsAccumulator', () => {
  const dimension = 16;
  const layers = [0, 1, 2];
  const suffix = 24;
  const distances = Array.from({ length: suffix }, (_, i) => i);
  const states = (seed: number, shared: number) =>
    new Map(
      layers.map((layer) => [layer, Float32Array.from(randomRows(suffix, dimension, seed * 10 + layer, shared))]),
    );

  it('identical runs give SelfSim 1 at every layer and distance, and ACCS = 1 − A', () => {
    const accumulator = new AccsAccumulator({ layers, dimension, binEdges: doublingBins(suffix) });
    for (let d = 0; d < 5; d++) {
      const clean = states(d, 1);
      accumulator.addDocument(clean, clean, distances);
    }
    const result = accumulator.estimates(200, 3);
    expect(result.documents).toBe(5);
    expect(result.pairs).toBe(5 * suffix);
    for (const row of result.layers) {
      expect(row.selfSimilarity.value).toBeCloseTo(1, 12);
      expect(row.accs.value).toBeCloseTo(1 - row.anisotropy.value, 12);
      expect(row.normalizedAccs.value).toBeCloseTo(1, 12);
    }
    for (const bin of result.bins) expect(bin.selfSimilarity.value).toBeCloseTo(1, 12);
    expect(result.bins.map((bin) => bin.from).slice(0, 6)).toEqual([0, 1, 2, 4, 8, 16]);
  });

  it('unrelated perturbed states give SelfSim about A (ACCS about 0), with intervals around the estimates', () => {
    const accumulator = new AccsAccumulator({ layers, dimension, binEdges: [0, 8] });
    for (let d = 0; d < 40; d++) accumulator.addDocument(states(d, 1), states(d + 1000, 1), distances);
    const result = accumulator.estimates(400, 5);
    for (const row of result.layers) {
      expect(Math.abs(row.accs.value)).toBeLessThan(0.05);
      expect(row.anisotropy.value).toBeGreaterThan(0.1);
      for (const estimate of [row.selfSimilarity, row.anisotropy, row.accs]) {
        expect(estimate.interval[0]).toBeLessThanOrEqual(estimate.value);
        expect(estimate.interval[1]).toBeGreaterThanOrEqual(estimate.value);
        expect(estimate.interval[1] - estimate.interval[0]).toBeLessThan(0.1);
      }
    }
    // The Gram-matrix path the bootstrap uses equals the direct estimator: on all documents and on a resample.
    const groups = Array.from({ length: 40 }, (_, d) =>
      anisotropyGroup(states(d, 1).get(1) as Float32Array, dimension),
    );
    expect(result.layers[1]?.anisotropy.value).toBeCloseTo(groupedAnisotropy(groups), 12);
    const [sample = []] = bootstrapSamples(40, 1, 5);
    expect(new Set(sample).size).toBeLessThan(40); // it does repeat documents
    const gram = gramMatrix(groups);
    const counts = groups.map((group) => group.count);
    expect(gramAnisotropy(gram, counts, sample)).toBeCloseTo(groupedAnisotropy(groups, sample), 12);
  });

  it('names what is wrong with its input', () => {
    expect(() => new AccsAccumulator({ layers: [], dimension, binEdges: [0] })).toThrow(/at least one layer/);
    expect(() => new AccsAccumulator({ layers, dimension, binEdges: [4, 1] })).toThrow(/increasing distance-bin edges/);
    const late = new AccsAccumulator({ layers, dimension, binEdges: [8] });
    expect(() => late.addDocument(states(1, 0), states(2, 0), distances)).toThrow(/distances from 8/);
    const accumulator = new AccsAccumulator({ layers, dimension, binEdges: [0] });
    expect(() => accumulator.addDocument(states(1, 0), new Map(), distances)).toThrow(/layer 0 in both runs/);
    accumulator.addDocument(states(1, 0), states(2, 0), distances);
    expect(() => accumulator.estimates()).toThrow(/at least 2 documents/);
  });
});
