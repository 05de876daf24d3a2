// The trainer's ∂loss/∂α on the CPU against finite differences of the float64 loss, and its input checks.
import { createBackend } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { checkGateGradients } from './gradient-check.js';

describe('gate gradients (cpu)', () => {
  const backend = createBackend('cpu');

  it.each([
    ['student', 7],
    ['student', 8],
    ['teacher', 7],
  ] as const)(
    'match finite differences of the float64 loss within 1e-3 (full term from the %s, seed %i)',
    async (fullTerm, seed) => {
      const check = await checkGateGradients(backend, fullTerm, seed);
      expect(check.lossError).toBeLessThan(1e-4);
      expect(check.relativeError).toBeLessThan(1e-3);
      // Not a vacuous match: every gate moves the loss.
      for (const value of check.expected) expect(Math.abs(value)).toBeGreaterThan(1e-6);
    },
  );
});
