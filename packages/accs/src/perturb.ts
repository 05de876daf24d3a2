// Perturbations of a prefix, which destroy its content while the suffix stays as it was: shuffle (the paper's), random
// tokens, another document's prefix, or no prefix at all.
import { DuoArgumentError } from '@duoattn/core';

export const PERTURBATIONS = ['shuffle', 'random', 'document', 'truncate'] as const;
export type PerturbationName = (typeof PERTURBATIONS)[number];

export interface PerturbationContext {
  /** Uniform [0, 1) numbers (seeded, so runs repeat). */
  readonly random: () => number;
  /** `random` draws ids below this, leaving out `special`. */
  readonly vocabSize: number;
  readonly special?: ReadonlySet<number>;
  /** `document`: the donor's tokens (its first prefix.length are used). */
  readonly donor?: readonly number[];
}

export function expectPerturbation(value: unknown): PerturbationName {
  if (!(PERTURBATIONS as readonly unknown[]).includes(value)) {
    throw new DuoArgumentError(
      'perturbation',
      `Expected \`perturbation\` to be one of ${PERTURBATIONS.join(', ')} but received ${String(value)}`,
    );
  }
  return value as PerturbationName;
}

/** The perturbed prefix (a new array; `truncate` gives an empty one). */
export function perturbPrefix(
  name: PerturbationName,
  prefix: readonly number[],
  context: PerturbationContext,
): number[] {
  switch (expectPerturbation(name)) {
    case 'shuffle': {
      const out = [...prefix];
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(context.random() * (i + 1));
        [out[i], out[j]] = [out[j] as number, out[i] as number];
      }
      return out;
    }
    case 'random': {
      const special = context.special ?? new Set<number>();
      if (special.size >= context.vocabSize) {
        throw new DuoArgumentError('vocabSize', `No ordinary token below ${context.vocabSize} to draw`);
      }
      return prefix.map(() => {
        for (;;) {
          const id = Math.floor(context.random() * context.vocabSize);
          if (!special.has(id)) return id;
        }
      });
    }
    case 'document': {
      const donor = context.donor;
      if (!donor || donor.length < prefix.length) {
        throw new DuoArgumentError(
          'donor',
          `perturbation 'document' needs a donor of at least ${prefix.length} tokens but received ${donor?.length ?? 'none'}`,
        );
      }
      return donor.slice(0, prefix.length);
    }
    default:
      return [];
  }
}
