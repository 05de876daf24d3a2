// Summary statistics of repeated measurements (timings over steps and runs), and the decode timing built on them.

/** Median of a list of numbers (0 for an empty list). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[middle] ?? 0) : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

/** The q-quantile (q in [0, 1]) of a list of numbers: the nearest-rank element (0 for an empty list). */
export function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))] ?? 0;
}

/** Decode latency in the steady state: ms between consecutive tokens of one greedy run after `warmup` tokens. */
export interface DecodeTiming {
  msPerToken: number;
  p10: number;
  p90: number;
}

/** What decodeLatency needs of a session: its greedy token stream. */
export interface GreedyDecoder {
  greedyTokens(first: number, steps: number): AsyncIterable<number>;
}

/**
 * Times `steps` greedy tokens after `warmup` from the session's current position (on CUDA a replayed graph with one
 * step in flight, as generate() runs). The host wall clock between consecutive tokens is the latency a user sees.
 */
export async function decodeLatency(session: GreedyDecoder, warmup: number, steps: number): Promise<DecodeTiming> {
  const times: number[] = [];
  let last = performance.now();
  let count = 0;
  for await (const _token of session.greedyTokens(1, warmup + steps)) {
    const now = performance.now();
    if (count >= warmup) times.push(now - last);
    last = now;
    count++;
  }
  return { msPerToken: median(times), p10: quantile(times, 0.1), p90: quantile(times, 0.9) };
}
