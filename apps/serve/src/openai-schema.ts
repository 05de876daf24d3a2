// The request bodies duo-serve accepts: OpenAI's chat and completions fields (the ones it implements, every other field
// refused by name), plus the per-request policy extensions. Validated with zod; the first problem becomes a 400 that
// names the field.
import { z } from 'zod';

const stop = z.union([z.string().min(1), z.array(z.string().min(1)).min(1).max(4)]);

/** The policy extensions every generation request may carry (duoattn's, beside OpenAI's fields). */
const policyFields = {
  /** 'full' | 'streaming' | 'duo' (default: the server's --attention). */
  attention: z.enum(['full', 'streaming', 'duo']).optional(),
  /** duo: the fraction of KV heads that stream, in [0, 1] (default: the server's --sparsity). */
  sparsity: z.number().min(0).max(1).optional(),
  /** KV cache storage (default: the server's --kv-quant). */
  kv_quant: z.enum(['none', 'int8', 'int4', 'fp8']).optional(),
  /** streaming / duo: attention sinks and the recent window (default: the pattern's or the server's). */
  sink: z
    .number()
    .int()
    .min(0)
    .max(1 << 20)
    .optional(),
  recent: z
    .number()
    .int()
    .min(1)
    .max(1 << 20)
    .optional(),
};

/** Sampling and limits shared by chat and completions. */
const generationFields = {
  model: z.string().max(256).optional(),
  stream: z.boolean().optional(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: z
    .number()
    .int()
    .min(1)
    .max(1 << 24)
    .nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** vLLM's extension: keep only the k most likely tokens (0: all). */
  top_k: z
    .number()
    .int()
    .min(0)
    .max(1 << 20)
    .nullish(),
  n: z.number().int().min(1).max(16).nullish(),
  seed: z
    .number()
    .int()
    .min(-(2 ** 31))
    .max(2 ** 32 - 1)
    .nullish(),
  stop: stop.nullish(),
  /** vLLM's extension: generate exactly max_tokens, ignoring end-of-sequence tokens. */
  ignore_eos: z.boolean().optional(),
  presence_penalty: z.literal(0).nullish(),
  frequency_penalty: z.literal(0).nullish(),
  user: z.string().max(256).optional(),
  ...policyFields,
};

const textPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const message = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(textPart).min(1)]),
  name: z.string().max(256).optional(),
});

export const chatRequest = z.strictObject({
  ...generationFields,
  messages: z.array(message).min(1).max(4096),
  max_completion_tokens: z
    .number()
    .int()
    .min(1)
    .max(1 << 24)
    .nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
});
export type ChatRequest = z.infer<typeof chatRequest>;

const tokenIds = z
  .array(
    z
      .number()
      .int()
      .min(0)
      .max(2 ** 31 - 1),
  )
  .min(1);
export const completionRequest = z.strictObject({
  ...generationFields,
  prompt: z.union([
    z.string().min(1),
    z.array(z.string().min(1)).min(1).max(64),
    tokenIds,
    z.array(tokenIds).min(1).max(64),
  ]),
  /** The legacy API's logprobs: how many alternatives per token (0 … 20). */
  logprobs: z.number().int().min(0).max(20).nullish(),
  echo: z.literal(false).optional(),
  /** vLLM's extension: each choice and each streamed chunk carries its tokens' ids (`token_ids`), a chunk per token. */
  return_token_ids: z.boolean().optional(),
  best_of: z.number().int().min(1).max(16).nullish(),
});
export type CompletionRequest = z.infer<typeof completionRequest>;

export const tokenizeRequest = z.union([
  z.strictObject({
    model: z.string().max(256).optional(),
    prompt: z.string(),
    add_special_tokens: z.boolean().optional(),
  }),
  z.strictObject({ model: z.string().max(256).optional(), messages: z.array(message).min(1).max(4096) }),
]);
export const detokenizeRequest = z.strictObject({ model: z.string().max(256).optional(), tokens: tokenIds });

/** The first problem of a failed parse as OpenAI reports it: the message and the field (a dotted path). */
export function firstIssue(error: z.ZodError): { message: string; param: string | null } {
  const issue = error.issues[0];
  if (!issue) return { message: 'Invalid request body', param: null };
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const at = [...issue.path, key].map(String).join('.');
    return { message: `Unrecognized request argument supplied: ${at}`, param: at };
  }
  const param = issue.path.length > 0 ? issue.path.map(String).join('.') : null;
  return { message: `Invalid value for '${param ?? 'body'}': ${issue.message}`, param };
}
