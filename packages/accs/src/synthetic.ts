// Synthetic sequences with controlled regularity: a random segment of period P repeated, each token replaced by a
// random one with probability `noise` — so compressibility is a dial (P small and no noise: very compressible; noise
// 1: incompressible).
import { DuoArgumentError } from '@duoattn/core';
import { seededRandom } from '@duoattn/model';

export interface SyntheticOptions {
  readonly documents: number;
  readonly length: number;
  /** Tokens in the repeated segment. */
  readonly period: number;
  /** Probability in [0, 1] that a token is replaced by a random one. */
  readonly noise: number;
  /** Tokens are drawn below this, leaving out `special` (BOS, EOS, …). */
  readonly vocabSize: number;
  readonly special?: ReadonlySet<number>;
  readonly seed?: number;
}

/** `documents` sequences of `length` tokens, each with its own random segment and noise. */
export function syntheticDocuments(options: SyntheticOptions): number[][] {
  const { documents, length, period, noise, vocabSize } = options;
  for (const [name, value] of [
    ['documents', documents],
    ['length', length],
    ['period', period],
  ] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new DuoArgumentError(name, `Expected \`${name}\` to be a positive integer but received ${String(value)}`);
    }
  }
  if (!(noise >= 0 && noise <= 1)) {
    throw new DuoArgumentError('noise', `Expected \`noise\` in [0, 1] but received ${String(noise)}`);
  }
  const special = options.special ?? new Set<number>();
  const ordinary = Array.from({ length: vocabSize }, (_, id) => id).filter((id) => !special.has(id));
  if (ordinary.length === 0) throw new DuoArgumentError('vocabSize', `No ordinary token below ${vocabSize}`);
  const random = seededRandom(options.seed ?? 0);
  const draw = () => ordinary[Math.floor(random() * ordinary.length)] as number;
  return Array.from({ length: documents }, () => {
    const segment = Array.from({ length: period }, draw);
    return Array.from({ length }, (_, i) => (random() < noise ? draw() : (segment[i % period] as number)));
  });
}
