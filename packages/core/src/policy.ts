// AttentionPolicy: how one session attends and stores its KV cache — a value the session owns, never model state.
import type { KvQuantScheme } from './dtype.js';
import type { HeadPlan, PrefillMask } from './head-pattern.js';

/** What every policy may set besides which heads stream. */
interface PolicyCommon {
  /** KV-cache quantization (ADR 0006). Default 'none'. */
  readonly kvQuant?: KvQuantScheme;
  /** Streaming heads' mask during prefill: 'exact' (default, the Λ mask) or the reference's 'chunked'. */
  readonly prefillMask?: PrefillMask;
  /** Tokens per prefill chunk. Default `DEFAULT_PREFILL_CHUNK` (512). */
  readonly prefillChunk?: number;
}

/** Every KV head keeps every key. */
export interface FullAttentionPolicy extends PolicyCommon {
  readonly attention: 'full';
}

/** Every KV head keeps `sink` + `recent` keys: the StreamingLLM-style baseline. */
export interface StreamingAttentionPolicy extends PolicyCommon {
  readonly attention: 'streaming';
  /** Default `DEFAULT_SINK` (64). */
  readonly sink?: number;
  /** Default `DEFAULT_RECENT` (256). */
  readonly recent?: number;
}

/** DuoAttention: the plan's retrieval heads keep every key, the others `sink` + `recent`. */
export interface DuoAttentionPolicy extends PolicyCommon {
  readonly attention: 'duo';
  readonly plan: HeadPlan;
  /** Default: the plan's. */
  readonly sink?: number;
  /** Default: the plan's. */
  readonly recent?: number;
}

/**
 * How a session attends. One loaded model serves sessions with different policies side by side: the kernels map
 * each KV head to its cache region, the weights are never reordered.
 */
export type AttentionPolicy = FullAttentionPolicy | StreamingAttentionPolicy | DuoAttentionPolicy;

/** The policy of a session that names none. */
export const FULL_ATTENTION: FullAttentionPolicy = Object.freeze({ attention: 'full' });
