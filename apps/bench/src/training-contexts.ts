// train-gates' sample lengths against a real model's context: a sample is BOS, `contextTokens` of haystack and needles
// (drawn in [--ctx-min, --ctx-max]), then every question with its answer — the questions come on top of --ctx-max.
import { checkContext, UsageError } from '@duoattn/app-kit';
import { longestNeedleTokens, type PasskeyFormat, type PasskeySample } from '@duoattn/gate-trainer';

/** The passkey data's tokenizer and shape, as far as sample lengths depend on them. */
export interface SampleShape {
  tokenizer: { encode(text: string, options?: { addBos?: boolean }): number[] };
  passkeys: number;
  words: number;
  format: PasskeyFormat;
}

/** At most how many tokens a sample takes beyond its contextTokens: BOS, and per question with its answer twice the longest needle. */
export function sampleOverhead({ tokenizer, passkeys, words, format }: SampleShape): number {
  return 1 + 2 * passkeys * longestNeedleTokens(tokenizer, passkeys, words, format);
}

/**
 * --ctx-max: as asked, else 32000; on a real model (`context` given) at most what leaves `overhead` tokens of its
 * context for BOS and the questions. A usage error when it falls below --ctx-min.
 */
export function contextMaxFor(
  asked: number | undefined,
  contextMin: number,
  context: number | undefined,
  overhead: number,
): number {
  const contextMax = asked ?? (context === undefined ? 32000 : Math.min(32000, context - overhead));
  if (contextMax < contextMin) {
    const why =
      asked === undefined && context !== undefined
        ? ` (the default leaves ${overhead} of the model's ${context} tokens for BOS and the questions)`
        : '';
    throw new UsageError(`--ctx-max: expected at least --ctx-min (${contextMin}) but received ${contextMax}${why}`);
  }
  return contextMax;
}

/**
 * Refuses, before any step runs, a --ctx-max (or --measure-steps) whose samples would not fit the model's `context`:
 * `contextMax` tokens of haystack and needles plus the most any of `samples` takes for BOS and the questions. The
 * samples are drawn only when `contextMax + overhead` (the bound) says they might not fit.
 */
export function checkSamplesFit(
  option: string,
  value: unknown,
  context: number,
  contextMax: number,
  overhead: number,
  samples: () => Iterable<PasskeySample>,
): void {
  if (contextMax + overhead <= context) return;
  let extra = 0;
  for (const sample of samples()) extra = Math.max(extra, sample.ids.length - sample.contextTokens);
  checkContext(
    option,
    value,
    contextMax + extra,
    context,
    `${contextMax} tokens of haystack and needles + up to ${extra} for BOS and the questions make ${contextMax + extra}`,
  );
}
