// One generation request (chat or completions) from its validated body to the engine and back: prompt tokens and the
// context check, the policy, sampling, n choices, stop strings held back from the stream, logprobs, usage, and
// cancellation when the client goes away.
import type { AttentionPolicy } from '@duoattn/core';
import type { BatchRequest, BatchResult, BatchStream, BatchToken } from '@duoattn/model';
import type { ServeEngine } from './engine-host.js';
import { ApiError } from './errors.js';
import type { ServeMetrics } from './metrics.js';
import type { PolicyRequest, PolicyResolver } from './policies.js';

/** What generation needs of the server. */
export interface GenerationContext {
  readonly engine: ServeEngine;
  readonly eosTokenIds: readonly number[];
  readonly contextLength: number;
  /** max_tokens when a request gives none (at most what fits the context). */
  readonly defaultMaxTokens: number;
  readonly resolver: PolicyResolver;
  readonly metrics: ServeMetrics;
}

/** The fields chat and completions share, after validation. */
export interface GenerationBody extends PolicyRequest {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  n?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  ignore_eos?: boolean;
}

/** One choice as it streams: text deltas (stop strings held back), then its end. */
export interface ChoiceEvent {
  readonly index: number;
  readonly text: string;
  readonly tokens: readonly BatchToken[];
  readonly finishReason?: 'stop' | 'length';
}

/** Usage in OpenAI's shape. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** A running generation: its choices' events, and its usage once every choice ended. */
export interface Generation {
  readonly promptTokens: number;
  readonly policy: AttentionPolicy;
  readonly events: AsyncIterable<ChoiceEvent>;
  /** Resolves when every choice has ended (rejects if one failed). */
  readonly usage: Promise<Usage>;
  cancel(): void;
}

/** Checks the limits and submits every choice of one prompt; throws ApiError (400 / 429) before any work otherwise. */
export function startGeneration(
  context: GenerationContext,
  body: GenerationBody,
  prompt: readonly number[],
  choiceBase: number,
  extra: { logprobs?: number; maxTokens?: number | null; everyToken?: boolean },
): Generation {
  const promptTokens = prompt.length;
  const room = context.contextLength - promptTokens;
  const asked = extra.maxTokens ?? body.max_tokens ?? undefined;
  if (room <= 0 || (asked !== undefined && asked > room)) {
    const completion = asked ?? 0;
    throw new ApiError(
      400,
      `This model's maximum context length is ${context.contextLength} tokens. However, you requested ${promptTokens + completion} tokens (${promptTokens} in the prompt, ${completion} in the completion). Please reduce the length of the prompt or completion.`,
      { param: room <= 0 ? 'messages' : 'max_tokens', code: 'context_length_exceeded' },
    );
  }
  const maxTokens = asked ?? Math.min(room, context.defaultMaxTokens);
  const policy = context.resolver.resolve(body);
  const stops =
    body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
  const n = body.n ?? 1;
  // Without a seed each request draws one, so equal requests differ as OpenAI's do; choice i samples with seed + i.
  const seed = body.seed ?? Math.floor(Math.random() * 2 ** 31);
  const streams: BatchStream[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const request: BatchRequest = {
        prompt: [...prompt],
        policy,
        maxTokens,
        sampling: {
          temperature: body.temperature ?? 1,
          topP: body.top_p ?? 1,
          topK: body.top_k ?? 0,
          seed: (seed + i) | 0,
        },
        stopTokens: body.ignore_eos ? [] : context.eosTokenIds,
        stopStrings: stops,
        ...(extra.logprobs === undefined ? {} : { logprobs: extra.logprobs }),
      };
      streams.push(context.engine.submit(request));
    }
  } catch (error) {
    for (const stream of streams) stream.cancel();
    throw error;
  }
  const started = performance.now();
  const queue = merge(
    streams.map((stream, i) => choiceEvents(stream, choiceBase + i, stops, extra.everyToken ?? false)),
  );
  const usage = Promise.all(streams.map((stream) => stream.result)).then((results) => {
    const completion = results.reduce((sum, result) => sum + result.usage.completionTokens, 0);
    const cached = Math.max(...results.map((result) => cachedTokensOf(result)));
    for (const result of results) recordFinished(context.metrics, result, promptTokens, policy, started);
    return {
      prompt_tokens: promptTokens,
      completion_tokens: completion,
      total_tokens: promptTokens + completion,
      prompt_tokens_details: { cached_tokens: cached },
    };
  });
  usage.catch(() => undefined);
  return {
    promptTokens,
    policy,
    events: queue,
    usage,
    cancel: () => {
      for (const stream of streams) stream.cancel();
    },
  };
}

function cachedTokensOf(result: BatchResult): number {
  return result.usage.cachedTokens;
}

function recordFinished(
  metrics: ServeMetrics,
  result: BatchResult,
  promptTokens: number,
  policy: AttentionPolicy,
  started: number,
): void {
  const { timings } = result;
  const decodeMs = timings.totalMs - timings.firstTokenMs;
  const gaps = result.usage.completionTokens > 1 ? result.usage.completionTokens - 1 : 0;
  metrics.finished({
    promptTokens,
    completionTokens: result.usage.completionTokens,
    cachedTokens: cachedTokensOf(result),
    finishReason: result.finishReason,
    firstTokenSeconds: timings.firstTokenMs > 0 ? timings.firstTokenMs / 1000 : undefined,
    // The engine reports the span; each gap is counted at the mean (the histogram sees every token).
    interTokenSeconds: gaps > 0 ? new Array<number>(gaps).fill(decodeMs / gaps / 1000) : [],
    totalSeconds: (performance.now() - started) / 1000,
    policy,
  });
}

/**
 * A choice's events: text deltas with any stop string (and what could begin one) held back, then its end. With
 * `everyToken` each token goes out as it comes, its text empty while held back (or without a tokenizer): clients that
 * count tokens or time them (`return_token_ids`) see each one when the engine made it.
 */
async function* choiceEvents(
  stream: BatchStream,
  index: number,
  stops: readonly string[],
  everyToken: boolean,
): AsyncGenerator<ChoiceEvent> {
  const longest = stops.reduce((most, stop) => Math.max(most, stop.length), 0);
  let text = '';
  let sent = 0;
  let pending: BatchToken[] = [];
  let stopped = false;
  for await (const token of stream) {
    if (stopped) continue;
    text += token.text;
    pending.push(token);
    const at = firstStop(text, stops);
    if (at >= 0) {
      // OpenAI leaves the stop string out of the answer.
      stopped = true;
      if (at > sent) yield { index, text: text.slice(sent, at), tokens: pending };
      sent = at;
      text = text.slice(0, at);
      pending = [];
      continue;
    }
    const safe = Math.max(sent, text.length - (longest > 0 ? longest - 1 : 0));
    if (safe > sent || everyToken) {
      yield { index, text: text.slice(sent, safe), tokens: pending };
      sent = safe;
      pending = [];
    }
  }
  const result = await stream.result;
  if (result.finishReason === 'abort') return;
  const rest = stopped ? '' : text.slice(sent);
  yield { index, text: rest, tokens: pending, finishReason: result.finishReason === 'stop' ? 'stop' : 'length' };
}

function firstStop(text: string, stops: readonly string[]): number {
  let first = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** Merges async iterables, yielding items as they come. */
export async function* merge<T>(sources: AsyncIterable<T>[]): AsyncGenerator<T> {
  const iterators = sources.map((source) => source[Symbol.asyncIterator]());
  const next = (i: number) => (iterators[i] as AsyncIterator<T>).next().then((result) => ({ i, result }));
  const pending = new Map(iterators.map((_, i) => [i, next(i)]));
  while (pending.size > 0) {
    const { i, result } = await Promise.race(pending.values());
    if (result.done) {
      pending.delete(i);
      continue;
    }
    pending.set(i, next(i));
    yield result.value;
  }
}
