// The step-time fit that projects a training schedule.
import { describe, expect, it } from 'vitest';
import { fitStepTime } from './step-times.js';

describe('fitStepTime', () => {
  it('recovers a quadratic from four points and a line from two', () => {
    const quadratic = (length: number) => 0.2 + 3e-4 * length + 5e-9 * length ** 2;
    const fit = fitStepTime([1000, 8750, 16500, 32000].map((length) => ({ length, seconds: quadratic(length) })));
    for (const length of [1000, 20000, 40000]) expect(Math.abs(fit(length) - quadratic(length))).toBeLessThan(1e-9);
    const line = fitStepTime([
      { length: 1000, seconds: 1 },
      { length: 3000, seconds: 2 },
    ]);
    expect(line(5000)).toBeCloseTo(3, 9);
  });
});
