// The bodies duo-serve answers with, per endpoint: chat.completion / text_completion objects when whole, their chunks
// when streamed (server-sent events), and the usage chunk; logprobs in each endpoint's own shape.
import type { BatchToken, Tokenizer } from '@duoattn/model';
import type { ChoiceEvent, Usage } from './generation.js';

/** How a response is shaped for its endpoint: the whole JSON, or the stream's chunks. */
export interface ResponseShape {
  whole(
    choices: { index: number; text: string; tokens: BatchToken[]; finishReason: string | null }[],
    usage: Usage,
  ): object;
  opening(choices: number): object[];
  chunk(event: ChoiceEvent): object | undefined;
  usageChunk(usage: Usage): object;
}

/** Chat completions: a role chunk per choice first, then content deltas. */
export function chatShape(id: string, model: string, tokenizer: Tokenizer, logprobs: boolean): ResponseShape {
  const created = Math.floor(Date.now() / 1000);
  const base = { id, object: 'chat.completion.chunk', created, model };
  const logprobsOf = (tokens: readonly BatchToken[]) => ({
    content: tokens.map((token) => {
      const text = tokenizer.decode([token.id]);
      return {
        token: text,
        logprob: token.logprob ?? 0,
        bytes: [...Buffer.from(text, 'utf8')],
        top_logprobs: (token.topLogprobs ?? []).map((entry) => {
          const alternative = tokenizer.decode([entry.id]);
          return { token: alternative, logprob: entry.logprob, bytes: [...Buffer.from(alternative, 'utf8')] };
        }),
      };
    }),
  });
  return {
    whole: (choices, usage) => ({
      id,
      object: 'chat.completion',
      created,
      model,
      choices: choices.map((choice) => ({
        index: choice.index,
        message: { role: 'assistant', content: choice.text },
        logprobs: logprobs ? logprobsOf(choice.tokens) : null,
        finish_reason: choice.finishReason,
      })),
      usage,
    }),
    opening: (choices) =>
      Array.from({ length: choices }, (_, index) => ({
        ...base,
        choices: [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }],
      })),
    chunk: (event) => {
      if (event.text === '' && event.finishReason === undefined && !(logprobs && event.tokens.length > 0))
        return undefined;
      return {
        ...base,
        choices: [
          {
            index: event.index,
            delta: event.text === '' && event.finishReason ? {} : { content: event.text },
            logprobs: logprobs && event.tokens.length > 0 ? logprobsOf(event.tokens) : null,
            finish_reason: event.finishReason ?? null,
          },
        ],
      };
    },
    usageChunk: (usage) => ({ ...base, choices: [], usage }),
  };
}

/** How a completions response is asked for. */
export interface CompletionShapeOptions {
  /** The legacy API's logprobs: alternatives per token (needs a tokenizer); absent: none. */
  readonly logprobs: number | undefined;
  /**
   * vLLM's `return_token_ids`: every choice (and every chunk) carries the ids of its tokens as `token_ids`, and a
   * stream sends a chunk for each token even when its text is empty (a model without a tokenizer, a split character).
   */
  readonly tokenIds: boolean;
}

/** Completions: text (and token ids when asked) per chunk. */
export function completionShape(
  id: string,
  model: string,
  tokenizer: Tokenizer | undefined,
  options: CompletionShapeOptions,
): ResponseShape {
  const { logprobs, tokenIds } = options;
  const created = Math.floor(Date.now() / 1000);
  const base = { id, object: 'text_completion', created, model };
  const decode = (token: number) => tokenizer?.decode([token]) ?? '';
  const idsOf = (tokens: readonly BatchToken[]) => (tokenIds ? { token_ids: tokens.map((token) => token.id) } : {});
  const logprobsOf = (tokens: readonly BatchToken[], offset: number) => {
    const texts = tokens.map((token) => decode(token.id));
    const offsets: number[] = [];
    let at = offset;
    for (const text of texts) {
      offsets.push(at);
      at += text.length;
    }
    return {
      tokens: texts,
      token_logprobs: tokens.map((token) => token.logprob ?? 0),
      top_logprobs: tokens.map((token) =>
        Object.fromEntries((token.topLogprobs ?? []).map((entry) => [decode(entry.id), entry.logprob])),
      ),
      text_offset: offsets,
    };
  };
  const sentLength = new Map<number, number>();
  return {
    whole: (choices, usage) => ({
      ...base,
      choices: choices.map((choice) => ({
        index: choice.index,
        text: choice.text,
        ...idsOf(choice.tokens),
        logprobs: logprobs === undefined ? null : logprobsOf(choice.tokens, 0),
        finish_reason: choice.finishReason,
      })),
      usage,
    }),
    opening: () => [],
    chunk: (event) => {
      const tokensOnly = tokenIds && event.tokens.length > 0;
      if (event.text === '' && event.finishReason === undefined && !tokensOnly) return undefined;
      const offset = sentLength.get(event.index) ?? 0;
      sentLength.set(event.index, offset + event.text.length);
      return {
        ...base,
        choices: [
          {
            index: event.index,
            text: event.text,
            ...idsOf(event.tokens),
            logprobs: logprobs === undefined ? null : logprobsOf(event.tokens, offset),
            finish_reason: event.finishReason ?? null,
          },
        ],
      };
    },
    usageChunk: (usage) => ({ ...base, choices: [], usage }),
  };
}
