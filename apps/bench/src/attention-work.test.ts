// The work counts of duo-bench attention against brute force over the masks.
import { describe, expect, it } from 'vitest';
import { causalFlops, visibleFlops, visiblePairs, visitedTiles } from './attention-work.js';

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

  it('walks key tiles as the kernels do: every visible pair in a visited tile, the tiles of a streaming head bounded', () => {
    const tiles = { queryRows: 8, keyTile: 4 };
    for (const length of [5, 33, 100]) {
      for (const window of [undefined, { sink: 3, recent: 5 }, { sink: 0, recent: 9 }]) {
        // Each block's keys as the kernels take them: the sinks, then the window of its first query up to its last.
        for (let first = 0; first < length; first += tiles.queryRows) {
          const keyEnd = Math.min(length, first + tiles.queryRows);
          const windowFirst = window ? Math.max(window.sink, first - window.recent + 1) : 0;
          const walked = (key: number) =>
            window ? key < Math.min(window.sink, keyEnd) || (key >= windowFirst && key < keyEnd) : key < keyEnd;
          for (let i = first; i < keyEnd; i++)
            for (let j = 0; j <= i; j++)
              if (!window || j < window.sink || i - j < window.recent)
                expect(walked(j), `${length} ${i} ${j}`).toBe(true);
        }
        expect(visitedTiles(length, tiles, window)).toBeLessThanOrEqual(visitedTiles(length, tiles));
      }
    }
    // Full heads: the causal triangle of 64 × 64 tiles; streaming heads: at most (sink + recent + 64) / 64 + 1 a block.
    const kernel = { queryRows: 64, keyTile: 64 };
    expect(visitedTiles(64 * 100, kernel)).toBe((100 * 101) / 2);
    const window = { sink: 128, recent: 256 };
    const blocks = 1024;
    const streaming = visitedTiles(64 * blocks, kernel, window);
    expect(streaming).toBeLessThanOrEqual(blocks * (Math.ceil((128 + 256 + 64) / 64) + 1));
    // Linear: doubling the length doubles the tiles (past the first blocks).
    const twice = visitedTiles(64 * 2 * blocks, kernel, window);
    expect(twice / streaming).toBeGreaterThan(1.99);
    expect(twice / streaming).toBeLessThan(2.01);
  });
});
