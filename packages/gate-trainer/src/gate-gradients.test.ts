// The trainer's ∂loss/∂α on the CPU against finite differences of the float64 loss, and its input checks.
import { createBackend } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { checkGateGradients } from './gradient-check.js';

describe('gate gradients (cpu)', () => {
  const backend = createBackend('cpu');

  it.each([7, 8])('match finite differences of the float64 loss within 1e-3 (seed %i)', async (seed) => {
    const check = await checkGateGradients(backend, seed);
    expect(check.lossError).toBeLessThan(1e-4);
    expect(check.relativeError).toBeLessThan(1e-3);
    // Not a vacuous match: every gate moves the loss.
    for (const value of check.expected) expect(Math.abs(value)).toBeGreaterThan(1e-6);
  });
});
