// Named shapes as the apps take them: the config of a known name, a usage error listing the names otherwise.
import { SHAPES } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { namedShape, randomModelLabel } from './model-shapes.js';
import { UsageError } from './usage-error.js';

describe('namedShape', () => {
  it('gives the config of a known shape and refuses an unknown one naming --shape and the names', () => {
    expect(namedShape('llama-3-8b')).toBe(SHAPES['llama-3-8b']);
    let error: unknown;
    try {
      namedShape('llama-9');
    } catch (caught) {
      error = caught;
    }
    expect(UsageError.isInstance(error)).toBe(true);
    expect((error as UsageError).option).toBe('shape');
    expect((error as Error).message).toBe(
      `--shape: expected one of ${Object.keys(SHAPES).join(', ')} but received "llama-9"`,
    );
  });

  it('labels a random-weight model with its shape and dtype', () => {
    expect(randomModelLabel('llama-3-8b', 'bf16')).toBe('llama-3-8b (random bf16 weights made on the device)');
  });
});
