// Gathers one document at a time (clean and perturbed states at the suffix positions, per layer) into running sums
// — per document, layer and distance bin the summed cosine and the pair count, per document and layer the unit-state
// sum of the clean run — and turns them into the ACCS report with bootstrap intervals over documents.
import { DuoArgumentError } from '@duoattn/core';
import {
  type AnisotropyGroup,
  accsOf,
  anisotropyGroup,
  bootstrapSamples,
  percentileInterval,
  rowCosine,
  type StateRows,
} from './estimators.js';

/** A point estimate and its bootstrap interval (2.5 % – 97.5 % over resampled documents). */
export interface Estimate {
  readonly value: number;
  readonly interval: readonly [number, number];
}

export interface AccsLayer {
  /** 0 is the embedding output, l the residual stream after layer l. */
  readonly layer: number;
  readonly selfSimilarity: Estimate;
  readonly anisotropy: Estimate;
  /** SelfSim − A: low means the suffix's states depend strongly on the prefix. */
  readonly accs: Estimate;
  /** (SelfSim − A) / (1 − A): ACCS on the scale left above the anisotropy floor. */
  readonly normalizedAccs: Estimate;
}

export interface AccsBin {
  readonly layer: number;
  /** Distances from the prefix boundary in [from, to): 0 is the first suffix token. */
  readonly from: number;
  readonly to: number;
  readonly pairs: number;
  readonly selfSimilarity: Estimate;
  readonly accs: Estimate;
}

export interface AccsEstimates {
  readonly documents: number;
  /** Matched suffix positions, over all documents. */
  readonly pairs: number;
  readonly resamples: number;
  readonly layers: readonly AccsLayer[];
  readonly bins: readonly AccsBin[];
}

export interface AccumulatorOptions {
  /** Layers captured, in the order the state maps are read. */
  readonly layers: readonly number[];
  /** Values per state (the hidden size). */
  readonly dimension: number;
  /** Lower edges of the distance bins, increasing (the first ≤ every distance added); the last bin is open-ended. */
  readonly binEdges: readonly number[];
}

/**
 * Distance-bin edges start, start + 1, start + 2, start + 4, … below start + `suffix` (doubling widths, as distance
 * effects are roughly logarithmic).
 */
export function doublingBins(suffix: number, start = 0): number[] {
  const edges = [start];
  for (let edge = 1; edge < suffix; edge *= 2) edges.push(start + edge);
  return edges;
}

export class AccsAccumulator {
  readonly layers: readonly number[];
  readonly dimension: number;
  readonly binEdges: readonly number[];
  /** [document][layer index][bin] summed cosines, and pair counts per [document][bin]. */
  readonly #cosines: Float64Array[] = [];
  readonly #counts: Float64Array[] = [];
  /** [layer index][document] unit-state sums of the clean run. */
  readonly #groups: AnisotropyGroup[][];

  constructor(options: AccumulatorOptions) {
    const { layers, dimension, binEdges } = options;
    if (layers.length === 0) throw new DuoArgumentError('layers', 'Expected at least one layer to accumulate');
    if (
      binEdges.length === 0 ||
      (binEdges[0] as number) < 0 ||
      binEdges.some((edge, i) => i > 0 && edge <= (binEdges[i - 1] as number))
    ) {
      throw new DuoArgumentError(
        'binEdges',
        `Expected increasing distance-bin edges from 0 up but received [${binEdges.join(', ')}]`,
      );
    }
    this.layers = [...layers];
    this.dimension = dimension;
    this.binEdges = [...binEdges];
    this.#groups = layers.map(() => []);
  }

  get documents(): number {
    return this.#cosines.length;
  }

  #bin(distance: number): number {
    if (!(distance >= (this.binEdges[0] as number))) {
      throw new DuoArgumentError(
        'distances',
        `Expected distances from ${this.binEdges[0]} (the first bin edge) up but received ${distance}`,
      );
    }
    let bin = 0;
    while (bin + 1 < this.binEdges.length && distance >= (this.binEdges[bin + 1] as number)) bin++;
    return bin;
  }

  /**
   * Adds one document: per layer, the clean and perturbed states at the same suffix positions (rows in the order of
   * `distances`, each the distance of that position from the prefix boundary).
   */
  addDocument(
    clean: ReadonlyMap<number, StateRows>,
    perturbed: ReadonlyMap<number, StateRows>,
    distances: readonly number[],
  ): void {
    const bins = this.binEdges.length;
    const cosines = new Float64Array(this.layers.length * bins);
    const counts = new Float64Array(bins);
    const binOf = distances.map((distance) => this.#bin(distance));
    for (const bin of binOf) (counts[bin] as number)++;
    this.layers.forEach((layer, index) => {
      const a = clean.get(layer);
      const b = perturbed.get(layer);
      const expected = distances.length * this.dimension;
      if (!a || !b || a.length !== expected || b.length !== expected) {
        throw new DuoArgumentError(
          'states',
          `Expected ${distances.length} × ${this.dimension} states for layer ${layer} in both runs but received ${a?.length ?? 'none'} and ${b?.length ?? 'none'} values`,
        );
      }
      binOf.forEach((bin, row) => {
        (cosines[index * bins + bin] as number) += rowCosine(a, b, row, this.dimension);
      });
      this.#groups[index]?.push(anisotropyGroup(a, this.dimension));
    });
    this.#cosines.push(cosines);
    this.#counts.push(counts);
  }

  /** Point estimates and `resamples` bootstrap draws over documents (seeded). */
  estimates(resamples = 1000, seed = 1): AccsEstimates {
    const documents = this.documents;
    if (documents < 2) {
      throw new DuoArgumentError(
        'documents',
        `ACCS needs at least 2 documents (anisotropy pairs sequences) but has ${documents}`,
      );
    }
    const bins = this.binEdges.length;
    const all = Array.from({ length: documents }, (_, d) => d);
    const draws = bootstrapSamples(documents, resamples, seed);
    const pairs = this.#counts.reduce((sum, counts) => sum + counts.reduce((a, b) => a + b, 0), 0);
    const layers: AccsLayer[] = [];
    const binRows: AccsBin[] = [];
    this.layers.forEach((layer, index) => {
      const gram = gramMatrix(this.#groups[index] as AnisotropyGroup[]);
      const groupCounts = (this.#groups[index] as AnisotropyGroup[]).map((group) => group.count);
      const anisotropy = (sample: readonly number[]) => gramAnisotropy(gram, groupCounts, sample);
      const selfSim = (sample: readonly number[], bin?: number) => {
        let sum = 0;
        let count = 0;
        for (const d of sample) {
          const cosines = this.#cosines[d] as Float64Array;
          const counts = this.#counts[d] as Float64Array;
          for (let b = bin ?? 0; b < (bin === undefined ? bins : bin + 1); b++) {
            sum += cosines[index * bins + b] as number;
            count += counts[b] as number;
          }
        }
        return count > 0 ? sum / count : Number.NaN;
      };
      const drawnAnisotropy = draws.map(anisotropy);
      const drawnSelfSim = draws.map((sample) => selfSim(sample));
      const estimate = (value: number, drawn: number[]): Estimate => ({ value, interval: percentileInterval(drawn) });
      const a = anisotropy(all);
      const s = selfSim(all);
      layers.push({
        layer,
        selfSimilarity: estimate(s, drawnSelfSim),
        anisotropy: estimate(a, drawnAnisotropy),
        accs: estimate(
          accsOf(s, a).accs,
          drawnSelfSim.map((value, i) => accsOf(value, drawnAnisotropy[i] as number).accs),
        ),
        normalizedAccs: estimate(
          accsOf(s, a).normalized,
          drawnSelfSim.map((value, i) => accsOf(value, drawnAnisotropy[i] as number).normalized),
        ),
      });
      for (let b = 0; b < bins; b++) {
        const binPairs = this.#counts.reduce((sum, counts) => sum + (counts[b] as number), 0);
        if (binPairs === 0) continue;
        const drawnBin = draws.map((sample) => selfSim(sample, b));
        const binSelfSim = selfSim(all, b);
        binRows.push({
          layer,
          from: this.binEdges[b] as number,
          to: this.binEdges[b + 1] ?? Number.POSITIVE_INFINITY,
          pairs: binPairs,
          selfSimilarity: estimate(binSelfSim, drawnBin),
          accs: estimate(
            binSelfSim - a,
            drawnBin.map((value, i) => value - (drawnAnisotropy[i] as number)),
          ),
        });
      }
    });
    return { documents, pairs, resamples, layers, bins: binRows };
  }
}

/** ⟨G_g, G_h⟩ for every pair of groups (so each bootstrap draw costs documents², not documents × dimension). */
export function gramMatrix(groups: readonly AnisotropyGroup[]): Float64Array[] {
  return groups.map((a) =>
    Float64Array.from(groups, (b) => {
      let dot = 0;
      for (let i = 0; i < a.sum.length; i++) dot += (a.sum[i] as number) * (b.sum[i] as number);
      return dot;
    }),
  );
}

/** groupedAnisotropy from the Gram matrix of the group sums: repeated groups count as distinct sequences. */
export function gramAnisotropy(
  gram: readonly Float64Array[],
  counts: readonly number[],
  sample: readonly number[],
): number {
  let all = 0;
  let own = 0;
  let count = 0;
  let countSquares = 0;
  for (const g of sample) {
    const row = gram[g] as Float64Array;
    for (const h of sample) all += row[h] as number;
    own += row[g] as number;
    count += counts[g] as number;
    countSquares += (counts[g] as number) ** 2;
  }
  const pairs = count * count - countSquares;
  return pairs > 0 ? (all - own) / pairs : Number.NaN;
}
