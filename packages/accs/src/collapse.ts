// Collapse diagnostics of next-token distributions (METHOD.md): entropy, KL to the uniform distribution and KL to the
// corpus unigram prior, in nats and float64 — as prefixes become less compressible, distributions drift toward one
// of the two.
import { DuoArgumentError } from '@duoattn/core';

export interface CollapseDiagnostics {
  /** Mean entropy (nats) of the distributions. */
  readonly entropy: number;
  /** Mean KL(p ‖ uniform) = log V − H. */
  readonly klUniform: number;
  /** Mean KL(p ‖ unigram prior). */
  readonly klUnigram: number;
}

/** Token frequencies over `documents` with add-one smoothing (every id below vocabSize has some mass). */
export function unigramPrior(documents: readonly (readonly number[])[], vocabSize: number): Float64Array {
  const counts = new Float64Array(vocabSize).fill(1);
  let total = vocabSize;
  for (const document of documents) {
    for (const token of document) {
      if (token >= 0 && token < vocabSize) {
        (counts[token] as number)++;
        total++;
      }
    }
  }
  return counts.map((count) => count / total);
}

/** Means over the rows of `logits` (rows of `vocabSize`), each turned into a distribution by a float64 softmax. */
export function collapseDiagnostics(logits: Float32Array, vocabSize: number, prior: Float64Array): CollapseDiagnostics {
  if (logits.length === 0 || logits.length % vocabSize !== 0 || prior.length !== vocabSize) {
    throw new DuoArgumentError(
      'logits',
      `Expected rows of ${vocabSize} logits and a prior of ${vocabSize} but received ${logits.length} and ${prior.length} values`,
    );
  }
  const rows = logits.length / vocabSize;
  const logPrior = Float64Array.from(prior, Math.log);
  let entropy = 0;
  let klUnigram = 0;
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * vocabSize, (r + 1) * vocabSize);
    let maximum = Number.NEGATIVE_INFINITY;
    for (const value of row) maximum = Math.max(maximum, value);
    let sum = 0;
    for (const value of row) sum += Math.exp(value - maximum);
    const logSum = maximum + Math.log(sum);
    let h = 0;
    let kl = 0;
    for (let i = 0; i < vocabSize; i++) {
      const logP = (row[i] as number) - logSum;
      const p = Math.exp(logP);
      if (p === 0) continue;
      h -= p * logP;
      kl += p * (logP - (logPrior[i] as number));
    }
    entropy += h;
    klUnigram += kl;
  }
  entropy /= rows;
  return { entropy, klUniform: Math.log(vocabSize) - entropy, klUnigram: klUnigram / rows };
}
