// Errors in OpenAI's shape ({ error: { message, type, param, code } }) with the HTTP status each one takes. Nothing
// internal (stack traces, native messages beyond their text) reaches a client.
import { type DuoArgumentError, type DuoCapacityError, DuoError } from '@duoattn/core';

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error the server answers with: status, OpenAI's body, and headers (Retry-After on 429). */
export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(
    status: number,
    message: string,
    options: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.type = options.type ?? typeFor(status);
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.headers = options.headers ?? {};
  }

  body(): OpenAiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

function typeFor(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 404) return 'not_found_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return status === 503 ? 'service_unavailable' : 'server_error';
  return 'invalid_request_error';
}

/** Seconds a client is told to wait when the engine's queue is full. */
export const RETRY_AFTER_SECONDS = 1;

/** The ApiError for anything thrown while serving a request. */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  if (DuoError.isInstance(error) && error.code === 'DUO_CAPACITY') {
    const retryable = (error as DuoCapacityError).retryable;
    return retryable
      ? new ApiError(429, error.message, {
          code: 'queue_full',
          headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
        })
      : new ApiError(400, error.message, { code: 'kv_capacity_exceeded' });
  }
  if (DuoError.isInstance(error) && error.code === 'DUO_ARG') {
    const argument = (error as DuoArgumentError).argument;
    return new ApiError(400, error.message, { param: argument ? snakeCase(argument) : null, code: 'invalid_value' });
  }
  if (DuoError.isInstance(error) && error.code === 'DUO_TOKENIZER') {
    return new ApiError(400, error.message, { code: 'invalid_value' });
  }
  // Anything else is ours: a short message, no internals.
  const text = error instanceof Error ? error.message : String(error);
  return new ApiError(500, `The engine failed: ${text.split('\n')[0]}`, { code: 'engine_error' });
}

/** The engine's argument names as the request spells them (maxTokens → max_tokens, policy.kvQuant → kv_quant). */
function snakeCase(argument: string): string {
  const known: Record<string, string> = {
    maxTokens: 'max_tokens',
    prompt: 'prompt',
    'policy.kvQuant': 'kv_quant',
    'policy.plan': 'sparsity',
    topP: 'top_p',
    topK: 'top_k',
    temperature: 'temperature',
    seed: 'seed',
    logprobs: 'logprobs',
  };
  return known[argument] ?? argument.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}
