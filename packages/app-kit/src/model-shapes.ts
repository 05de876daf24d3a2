// Named model shapes as the apps take them (--shape NAME: @duoattn/core's SHAPES, random weights made on the device):
// the check with a message listing the names, the seed every such model uses, and how reports name it.
import { type ModelConfig, SHAPES } from '@duoattn/core';
import { UsageError } from './usage-error.js';

/** The seed of every random-weight model the apps make, so two runs of one shape hold the same weights. */
export const RANDOM_WEIGHTS_SEED = 1;

/** The dtypes random weights can be made in (`--dtype`). */
export const RANDOM_WEIGHT_DTYPES = ['bf16', 'f16', 'f32'] as const;

/** The config of --shape NAME; a usage error listing the names when it is unknown. */
export function namedShape(name: string): ModelConfig {
  const config = SHAPES[name];
  if (!config) {
    const expected = `one of ${Object.keys(SHAPES).join(', ')}`;
    throw new UsageError(`--shape: expected ${expected} but received "${name}"`, {
      option: 'shape',
      received: name,
      expected,
    });
  }
  return config;
}

/** How a report names a shape with random weights: "llama-3-8b (random bf16 weights made on the device)". */
export function randomModelLabel(name: string, dtype: string): string {
  return `${name} (random ${dtype} weights made on the device)`;
}
