// The trainer's ∂loss/∂α on CUDA against finite differences of the float64 loss; skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { checkGateGradients } from './gradient-check.js';

const reason = cudaUnavailableReason();
const suite = reason === undefined ? describe : describe.skip;

suite(`gate gradients (cuda)${reason === undefined ? '' : ` (skipped: ${reason})`}`, () => {
  it.each([
    ['student', 7],
    ['student', 8],
    ['teacher', 7],
  ] as const)(
    'match finite differences of the float64 loss within 1e-3 (full term from the %s, seed %i)',
    async (fullTerm, seed) => {
      const check = await checkGateGradients(createBackend('cuda'), fullTerm, seed);
      expect(check.lossError).toBeLessThan(1e-4);
      expect(check.relativeError).toBeLessThan(1e-3);
      for (const value of check.expected) expect(Math.abs(value)).toBeGreaterThan(1e-6);
    },
  );
});
