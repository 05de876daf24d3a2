// One request's life apart from where it runs: what it asks for (checked against the model before any work), and the
// tokens it has produced so far (stop tokens and strings, the token limit, logprobs, its result). The batch engine and
// the parallel group engine both run requests through these.
import {
  type AttentionPolicy,
  DEFAULT_MAX_NEW_TOKENS,
  DuoArgumentError,
  FULL_ATTENTION,
  type HeadPlan,
  type ModelConfig,
} from '@duoattn/core';
import { policyPlan } from '@duoattn/dual-cache';
import { checkSampling, type SamplingOptions, sampleToken, seededRandom } from '../sampling.js';
import { checkPolicyShape, type ResolvedPolicy, resolvePolicy } from '../session.js';
import type { StreamDecoder, Tokenizer } from '../tokenizers/tokenizer.js';
import type { TokenQueue } from './token-stream.js';

/** One request to the engine. */
export interface BatchRequest {
  /** Token ids, or text for a model with a tokenizer (BOS added). */
  readonly prompt: readonly number[] | string;
  /** How the sequence attends and stores its KV cache (default full attention); any policy, side by side with others. */
  readonly policy?: AttentionPolicy;
  /** Most new tokens. Default `DEFAULT_MAX_NEW_TOKENS` (128). */
  readonly maxTokens?: number;
  /** Temperature, top-k, top-p and seed; default greedy. Sampling runs on the device. */
  readonly sampling?: SamplingOptions;
  /** Tokens that end the answer (included in it). Default the tokenizer's / config's EOS ids. */
  readonly stopTokens?: readonly number[];
  /** Strings that end the answer once its text contains one (needs a tokenizer). */
  readonly stopStrings?: readonly string[];
  /** Cancels the request: its pages are freed at the next step boundary and it finishes with 'abort'. */
  readonly signal?: AbortSignal;
  /** Return each token's logits row (for tests and analyses; reads the vocabulary's logits per token). Default false. */
  readonly logits?: boolean;
  /**
   * Return each token's log-probability under the model (the softmax of its logits, before temperature and truncation)
   * and the `logprobs` most likely tokens' (0 … 20; 0: the chosen token's only). Default: none.
   */
  readonly logprobs?: number;
  /**
   * For benchmarks: this many synthetic positions come before the prompt. When the sequence starts, its cache is
   * filled with random keys and values (seeded, on the device) as if they had run, so decode at long contexts is timed
   * without prefilling them. What such a sequence generates is not text. Default 0.
   */
  readonly syntheticContext?: number;
}

/** Why a sequence ended: a stop token or string, its token limit, or cancellation. */
export type FinishReason = 'stop' | 'length' | 'abort';

/** One generated token. */
export interface BatchToken {
  readonly id: number;
  /** The text it completed (empty without a tokenizer, or while a character is incomplete). */
  readonly text: string;
  /** The logits it was sampled from, when the request asked for them. */
  readonly logits?: Float32Array;
  /** Its log-probability, when the request asked for logprobs. */
  readonly logprob?: number;
  /** The most likely tokens and their log-probabilities, most likely first, when the request asked for logprobs. */
  readonly topLogprobs?: readonly { readonly id: number; readonly logprob: number }[];
}

/** Tokens a request used. */
export interface BatchUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly totalTokens: number;
  /** Tokens prefilled again after the sequence was preempted (0 unless it was). */
  readonly recomputedTokens: number;
  /**
   * Prompt tokens whose KV came from the prefix cache when the sequence was (last) admitted, not prefilled (OpenAI's
   * `prompt_tokens_details.cached_tokens`).
   */
  readonly cachedTokens: number;
}

/** How a request ended. */
export interface BatchResult {
  readonly tokens: readonly number[];
  readonly text: string;
  readonly finishReason: FinishReason;
  readonly usage: BatchUsage;
  /** Times since submission, in milliseconds: admission (first step with the sequence) and first token. */
  readonly timings: { readonly admittedMs: number; readonly firstTokenMs: number; readonly totalMs: number };
  /** Times the sequence was preempted (evicted and requeued to be recomputed). */
  readonly preemptions: number;
}

/** A submitted request: iterate it for its tokens; `result` resolves when it ends. */
export interface BatchStream extends AsyncIterable<BatchToken> {
  readonly id: number;
  readonly result: Promise<BatchResult>;
  /** Cancels it (as its signal would). */
  cancel(): void;
}

/**
 * The stream `submit` returns for a queued request: its tokens and result come through `queue`; `cancel` runs when
 * called or when `signal` aborts (at once if it already has).
 */
export function requestStream(
  id: number,
  queue: TokenQueue<BatchToken, BatchResult>,
  cancel: () => void,
  signal: AbortSignal | undefined,
): BatchStream {
  if (signal?.aborted) cancel();
  else signal?.addEventListener('abort', cancel, { once: true });
  return { id, result: queue.result, cancel, [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator]() };
}

/** A request as checked against a model: everything its sequence runs, nothing allocated. */
export interface CheckedRequest {
  /** Token ids the cache must hold first: `syntheticContext` zeros, then the given prompt. */
  readonly prompt: readonly number[];
  /** Synthetic positions at the prompt's start (`syntheticContext`). */
  readonly synthetic: number;
  /** The head plan its policy runs. */
  readonly plan: HeadPlan;
  readonly policy: ResolvedPolicy;
  readonly maxNew: number;
  readonly sampling: Required<SamplingOptions>;
  readonly stopTokens: readonly number[];
}

/**
 * Checks `request` against a model's config and tokenizer, with messages naming the field: the prompt (text needs a
 * tokenizer; ids in the vocabulary), maxTokens (with the prompt, inside the context unless `allowBeyondContext`), the
 * policy, sampling, logprobs and stop strings. Text prompts are encoded here.
 */
export function checkRequest(
  request: BatchRequest,
  config: ModelConfig,
  tokenizer: Tokenizer | undefined,
  allowBeyondContext = false,
): CheckedRequest {
  if (typeof request !== 'object' || request === null) {
    throw new DuoArgumentError('request', `Expected a request object but received ${String(request)}`);
  }
  const given = typeof request.prompt === 'string' ? encode(tokenizer, request.prompt) : request.prompt;
  if (!Array.isArray(given) || given.length === 0) {
    throw new DuoArgumentError('prompt', 'Expected a non-empty prompt (token ids or text)');
  }
  const synthetic = request.syntheticContext ?? 0;
  if (!Number.isInteger(synthetic) || synthetic < 0) {
    throw new DuoArgumentError(
      'syntheticContext',
      `Expected \`syntheticContext\` to be an integer ≥ 0 but received ${String(synthetic)}`,
    );
  }
  for (const token of given) {
    if (!Number.isInteger(token) || token < 0 || token >= config.vocabSize) {
      throw new DuoArgumentError('prompt', `Expected token ids in [0, ${config.vocabSize}) but received ${token}`);
    }
  }
  // Synthetic positions stand before the prompt as token 0; their keys and values are filled when the sequence starts.
  const prompt = synthetic === 0 ? [...given] : [...new Array<number>(synthetic).fill(0), ...given];
  const maxNew = request.maxTokens ?? DEFAULT_MAX_NEW_TOKENS;
  if (!Number.isInteger(maxNew) || maxNew < 1) {
    throw new DuoArgumentError('maxTokens', `Expected \`maxTokens\` to be an integer ≥ 1 but received ${maxNew}`);
  }
  const context = config.maxPositionEmbeddings;
  if (!allowBeyondContext && prompt.length + maxNew > context) {
    throw new DuoArgumentError(
      prompt.length > context ? 'prompt' : 'maxTokens',
      `The prompt's ${prompt.length} tokens + \`maxTokens\` ${maxNew} = ${prompt.length + maxNew} tokens exceed the model's ${context}-token context (max_position_embeddings)`,
    );
  }
  checkPolicyShape(request.policy);
  const plan = policyPlan(config, request.policy ?? FULL_ATTENTION);
  const policy = resolvePolicy(request.policy, plan);
  const chunk = policy.prefillChunk;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new DuoArgumentError(
      'policy.prefillChunk',
      `Expected \`policy.prefillChunk\` to be a positive integer but received ${String(chunk)}`,
    );
  }
  const sampling = checkSampling(request.sampling ?? {});
  const top = request.logprobs;
  if (top !== undefined && !(Number.isInteger(top) && top >= 0 && top <= 20)) {
    throw new DuoArgumentError(
      'logprobs',
      `Expected \`logprobs\` to be an integer in [0, 20] but received ${String(top)}`,
    );
  }
  if (request.stopStrings !== undefined && !Array.isArray(request.stopStrings)) {
    throw new DuoArgumentError('stopStrings', 'Expected `stopStrings` to be an array of strings');
  }
  const stopTokens = request.stopTokens ?? tokenizer?.eosTokenIds ?? config.eosTokenIds;
  return { prompt, synthetic, plan, policy, maxNew, sampling, stopTokens };
}

/** Where a request's tokens and result go: its stream's queue, or a channel to the process that holds the queue. */
export interface TokenSink {
  push(token: BatchToken): void;
  end(result: BatchResult): void;
  fail(error: unknown): void;
}

/** What a result counts beyond the tokens: work redone after preemption, prompt tokens a cached prefix served. */
export interface ResultExtras {
  readonly recomputed?: number;
  readonly cachedTokens?: number;
  readonly preemptions?: number;
}

/** The tokens one request has produced and when; it decides when the request is done (stop token or string, length). */
export class Generation<Sink extends TokenSink = TokenSink> {
  /** Prompt, then every generated token: what the cache must hold before the next token is drawn. */
  readonly tokens: number[];
  readonly generated: number[] = [];
  readonly submitted = performance.now();
  readonly random: () => number;
  readonly stopTokens: ReadonlySet<number>;
  readonly decoder: StreamDecoder | undefined;
  readonly prompt: readonly number[];
  readonly plan: HeadPlan;
  readonly policy: ResolvedPolicy;
  readonly maxNew: number;
  readonly sampling: Required<SamplingOptions>;
  text = '';
  admittedAt = 0;
  firstTokenAt = 0;
  cancelled = false;

  constructor(
    readonly id: number,
    readonly request: BatchRequest,
    checked: CheckedRequest,
    tokenizer: Tokenizer | undefined,
    readonly queue: Sink,
  ) {
    this.prompt = checked.prompt;
    this.plan = checked.plan;
    this.policy = checked.policy;
    this.maxNew = checked.maxNew;
    this.sampling = checked.sampling;
    this.tokens = [...checked.prompt];
    this.random = seededRandom(checked.sampling.seed);
    this.stopTokens = new Set(checked.stopTokens);
    this.decoder = tokenizer?.createStreamDecoder(checked.prompt);
  }

  /** Tokens the cache may reach: the prompt and every new token but the last (which is never fed back). */
  get capacity(): number {
    return this.prompt.length + Math.max(this.maxNew - 1, 0);
  }

  /**
   * Takes a sampled token (with its logits row when the request asked for logits or logprobs) and streams it; returns
   * why the request is done after it ('stop': a stop token or string; 'length': maxTokens), or undefined.
   */
  accept(token: number, row?: Float32Array): FinishReason | undefined {
    if (this.firstTokenAt === 0) this.firstTokenAt = performance.now();
    this.generated.push(token);
    this.tokens.push(token);
    const text = this.decoder ? this.decoder.push(token) : '';
    this.text += text;
    const extra: { logits?: Float32Array; logprob?: number; topLogprobs?: { id: number; logprob: number }[] } = {};
    if (row && this.request.logits) extra.logits = row.slice();
    if (row && this.request.logprobs !== undefined) Object.assign(extra, logprobsOf(row, token, this.request.logprobs));
    this.queue.push({ id: token, text, ...extra });
    const stopped =
      this.stopTokens.has(token) || (this.request.stopStrings?.some((needle) => this.text.includes(needle)) ?? false);
    if (stopped) return 'stop';
    return this.generated.length >= this.maxNew ? 'length' : undefined;
  }

  /** Samples the next token from `logits` (one row, on the host) with the request's settings, and `accept`s it. */
  sampleAndAccept(logits: Float32Array): { token: number; finish: FinishReason | undefined } {
    const token = sampleToken(logits, this.sampling, this.random);
    return { token, finish: this.accept(token, this.wantsLogits ? logits : undefined) };
  }

  /** Whether its tokens need their logits rows on the host (logits or logprobs asked for). */
  get wantsLogits(): boolean {
    return this.request.logits === true || this.request.logprobs !== undefined;
  }

  /** Closes its stream with its result. */
  finish(reason: FinishReason, extras: ResultExtras = {}): void {
    const now = performance.now();
    const since = (time: number) => (time === 0 ? 0 : time - this.submitted);
    this.queue.end({
      tokens: [...this.generated],
      text: this.text,
      finishReason: reason,
      usage: {
        promptTokens: this.prompt.length,
        completionTokens: this.generated.length,
        totalTokens: this.prompt.length + this.generated.length,
        recomputedTokens: extras.recomputed ?? 0,
        cachedTokens: extras.cachedTokens ?? 0,
      },
      timings: {
        admittedMs: since(this.admittedAt),
        firstTokenMs: since(this.firstTokenAt),
        totalMs: now - this.submitted,
      },
      preemptions: extras.preemptions ?? 0,
    });
  }
}

/** The chosen token's log-probability and the `top` most likely tokens' (log-softmax of the logits, in float64). */
export function logprobsOf(
  logits: Float32Array,
  token: number,
  top: number,
): { logprob: number; topLogprobs: { id: number; logprob: number }[] } {
  let maximum = Number.NEGATIVE_INFINITY;
  for (const value of logits) if (value > maximum) maximum = value;
  let sum = 0;
  for (const value of logits) sum += Math.exp(value - maximum);
  const normalizer = maximum + Math.log(sum);
  const best: { id: number; logprob: number }[] = [];
  if (top > 0) {
    // The `top` largest, kept sorted (most likely first; the lower id first on ties).
    for (let id = 0; id < logits.length; id++) {
      const value = logits[id] as number;
      if (best.length === top && value <= (best[top - 1] as { logprob: number }).logprob) continue;
      let at = best.length;
      while (at > 0 && (best[at - 1] as { logprob: number }).logprob < value) at--;
      best.splice(at, 0, { id, logprob: value });
      if (best.length > top) best.pop();
    }
  }
  return {
    logprob: (logits[token] ?? Number.NEGATIVE_INFINITY) - normalizer,
    topLogprobs: best.map(({ id, logprob }) => ({ id, logprob: logprob - normalizer })),
  };
}

function encode(tokenizer: Tokenizer | undefined, text: string): number[] {
  if (!tokenizer) throw new DuoArgumentError('prompt', 'This model has no tokenizer: pass token ids instead of text');
  return tokenizer.encode(text);
}
