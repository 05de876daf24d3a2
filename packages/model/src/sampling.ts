// Token sampling on the host: greedy, temperature, top-k, top-p, with a seeded generator.
import { DuoArgumentError } from '@duoattn/core';

/** How to pick the next token. temperature 0 (the default) is greedy. */
export interface SamplingOptions {
  /** Softmax temperature; 0 picks the argmax. Default 0. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = all). Default 0. */
  topK?: number;
  /** Keep the smallest set whose probability reaches p (1 = all). Default 1. */
  topP?: number;
  /** Seed of the sampler's generator. Default 0. */
  seed?: number;
}

/** Validates sampling options, with messages naming the option. */
export function checkSampling(options: SamplingOptions): Required<SamplingOptions> {
  const { temperature = 0, topK = 0, topP = 1, seed = 0 } = options;
  if (!(Number.isFinite(temperature) && temperature >= 0)) {
    throw new DuoArgumentError(
      'temperature',
      `Expected \`temperature\` to be a number ≥ 0 but received ${temperature}`,
    );
  }
  if (!(Number.isInteger(topK) && topK >= 0)) {
    throw new DuoArgumentError('topK', `Expected \`topK\` to be an integer ≥ 0 but received ${topK}`);
  }
  if (!(topP > 0 && topP <= 1)) {
    throw new DuoArgumentError('topP', `Expected \`topP\` to be in (0, 1] but received ${topP}`);
  }
  if (!Number.isInteger(seed))
    throw new DuoArgumentError('seed', `Expected \`seed\` to be an integer but received ${seed}`);
  return { temperature, topK, topP, seed };
}

/** A small seeded generator (mulberry32) returning numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Index of the largest logit (the lowest index on ties). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if ((logits[i] ?? 0) > (logits[best] ?? 0)) best = i;
  return best;
}

/** Samples one token id from `logits` with temperature, top-k and top-p. */
export function sampleToken(
  logits: ArrayLike<number>,
  options: Required<SamplingOptions>,
  random: () => number,
): number {
  if (options.temperature === 0) return argmax(logits);
  let candidates = Array.from({ length: logits.length }, (_, id) => id);
  candidates.sort((a, b) => (logits[b] ?? 0) - (logits[a] ?? 0));
  if (options.topK > 0) candidates = candidates.slice(0, options.topK);
  const maximum = logits[candidates[0] ?? 0] ?? 0;
  let weights = candidates.map((id) => Math.exp(((logits[id] ?? 0) - maximum) / options.temperature));
  let total = weights.reduce((a, b) => a + b, 0);
  if (options.topP < 1) {
    let cumulative = 0;
    let keep = 0;
    while (keep < weights.length && cumulative < options.topP * total) cumulative += weights[keep++] ?? 0;
    candidates = candidates.slice(0, keep);
    weights = weights.slice(0, keep);
    total = cumulative;
  }
  let threshold = random() * total;
  for (let i = 0; i < candidates.length; i++) {
    threshold -= weights[i] ?? 0;
    if (threshold <= 0) return candidates[i] ?? 0;
  }
  return candidates[candidates.length - 1] ?? 0;
}
