// The work counts of duo-bench attention against brute force over the masks.
import { describe, expect, it } from 'vitest';
import { causalFlops, visibleFlops, visiblePairs } from './attention-work.js';

/** Visible pairs by enumeration: query i sees key j iff j ≤ i and (full, or j < sink, or i − j < recent). */
function bruteForce(length: number, window?: { sink: number; recent: number }): number {
  let pairs = 0;
  for (let i = 0; i < length; i++)
    for (let j = 0; j <= i; j++) if (!window || j < window.sink || i - j < window.recent) pairs++;
  return pairs;
}

describe('attention work', () => {
  it('counts the pairs a full head and a streaming head (Λ mask) leave visible', () => {
    for (const length of [1, 2, 7, 64, 300]) {
      expect(visiblePairs(length)).toBe(bruteForce(length));
      for (const window of [
        { sink: 0, recent: 1 },
        { sink: 4, recent: 8 },
        { sink: 16, recent: 32 },
        { sink: 128, recent: 256 },
        { sink: 3, recent: 1000 },
      ]) {
        expect(visiblePairs(length, window), `${length} ${JSON.stringify(window)}`).toBe(bruteForce(length, window));
      }
    }
  });

  it('grows linearly for a streaming head and quadratically for a full one', () => {
    const window = { sink: 128, recent: 256 };
    const step = (length: number) => visiblePairs(2 * length, window) - visiblePairs(length, window);
    // Past the window every query sees sink + recent keys.
    expect(step(8192)).toBe(8192 * (128 + 256));
    expect(step(65536)).toBe(65536 * (128 + 256));
    expect(visiblePairs(65536) / visiblePairs(32768)).toBeCloseTo(4, 3);
  });

  it('counts flops as FlashAttention does (causal) and by visible pairs', () => {
    expect(causalFlops(16384, 128, 32)).toBe(4 * 16384 * 16384 * 128 * 32 * 0.5);
    const window = { sink: 16, recent: 32 };
    expect(visibleFlops(100, 64, { full: 3, streaming: 5 }, window)).toBe(
      4 * 64 * (3 * bruteForce(100) + 5 * bruteForce(100, window)),
    );
  });
});
