// The engine's defaults, in one place: every package and app imports them from here.

/** Attention sinks a streaming head keeps when neither the policy nor a pattern says (DuoAttention's evaluations: 64). */
export const DEFAULT_SINK = 64;

/** Recent window a streaming head keeps when neither the policy nor a pattern says (the reference's 256). */
export const DEFAULT_RECENT = 256;

/** Tokens per prefill chunk. */
export const DEFAULT_PREFILL_CHUNK = 512;

/** Fraction of KV heads that stream in a `duo` policy built without a pattern's choice (GQA headline setting). */
export const DEFAULT_SPARSITY = 0.5;

/** Tokens a session holds when `maxTokens` is not given: the model's context, capped here. */
export const DEFAULT_SESSION_TOKENS = 4096;

/** Tokens `generate` produces when `maxTokens` is not given. */
export const DEFAULT_MAX_NEW_TOKENS = 128;

/** The full KV regions grow in steps of at least this many tokens. */
export const DEFAULT_CACHE_BLOCK_TOKENS = 4096;
