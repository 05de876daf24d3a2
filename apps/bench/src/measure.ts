// Timing helpers shared by the benchmarks: steady-state decode latency and prefill time of a session.
import { median, quantile } from '@duoattn/app-kit';
import type { Backend } from '@duoattn/core';
import type { Session } from '@duoattn/model';

/**
 * Session options of the timing benchmarks (speed, efficiency): their caches are synthetic K/V or random tokens and
 * only the time counts, so they run at any context, past the model's trained positions too (a shape's real model,
 * e.g. Llama-3-8B-1048k, has a longer context than the config the shape copies).
 */
export const TIMING_ONLY = { allowBeyondContext: true } as const;

/** Decode latency in the steady state: ms between consecutive tokens of one greedy run after `warmup` tokens. */
export interface DecodeTiming {
  msPerToken: number;
  p10: number;
  p90: number;
}

/**
 * Times `steps` greedy tokens after `warmup` from the session's current position (on CUDA a replayed graph with one
 * step in flight, as generate() runs). The host wall clock between consecutive tokens is the latency a user sees.
 */
export async function decodeLatency(session: Session, warmup: number, steps: number): Promise<DecodeTiming> {
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

/**
 * Seconds to prefill `tokens` from position 0 (chunked as the session is), median of `runs` timed runs after one
 * warm-up. `warmupTokens` (default: all of them) shortens the warm-up — one chunk already runs every kernel, and a
 * prompt of a million tokens should not be prefilled twice.
 */
export async function prefillSeconds(
  backend: Backend,
  session: Session,
  tokens: Int32Array,
  runs = 2,
  warmupTokens = tokens.length,
): Promise<{ seconds: number; runs: number[] }> {
  const times: number[] = [];
  for (let run = 0; run <= runs; run++) {
    session.reset();
    await backend.synchronize();
    const start = performance.now();
    await session.forward(run === 0 ? tokens.subarray(0, Math.max(1, warmupTokens)) : tokens, { logits: 'last' });
    times.push((performance.now() - start) / 1000);
  }
  return { seconds: median(times.slice(1)), runs: times.slice(1) };
}

/** Token ids for benchmark prompts: a fixed, non-repeating pattern over the vocabulary. */
export function benchmarkTokens(count: number, vocabSize: number): Int32Array {
  return Int32Array.from({ length: count }, (_, i) => (i * 7919 + 13) % vocabSize);
}
