// The gate optimizer's learning-rate schedule (METHOD.md, "Gates and the mixed attention"): linear warm-up over the
// first fifth of the steps, linear decay over the last fifth, never below a tenth of the base rate.
import { expectInteger } from '@duoattn/kernels';

/** `min(1, max((s + 1) / (N / 5), 0.1), max((N − s) / (N / 5), 0.1))` for step `s` (0-based) of `N`. */
export function learningRateMultiplier(step: number, totalSteps: number): number {
  expectInteger('totalSteps', totalSteps, 1);
  expectInteger('step', step, 0, totalSteps - 1);
  const ramp = totalSteps / 5;
  return Math.min(1, Math.max((step + 1) / ramp, 0.1), Math.max((totalSteps - step) / ramp, 0.1));
}
