// Timing helpers shared by the benchmarks: steady-state decode latency and prefill time of a session.
import { median } from '@duoattn/app-kit';
import type { Backend } from '@duoattn/core';
import type { Session } from '@duoattn/model';

/**
 * Session options of the timing benchmarks (speed, efficiency): their caches are synthetic K/V or random tokens and
 * only the time counts, so they run at any context, past the model's trained positions too (a shape's real model,
 * e.g. Llama-3-8B-1048k, has a longer context than the config the shape copies).
 */
export const TIMING_ONLY = { allowBeyondContext: true } as const;

export { type DecodeTiming, decodeLatency } from '@duoattn/app-kit';

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
