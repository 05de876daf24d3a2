// DuoAttention's per-head decisions: trained gates (a pattern), their binarization (a plan), and attention policies.

/** Trained gates α[layer][kvHead] ∈ [0, 1] (one per KV head; a GQA group shares its gate) and the deployment window. */
export interface HeadPattern {
  readonly gates: readonly (readonly number[])[];
  /** Attention sinks kept by streaming heads (reference `sink_size`). */
  readonly sink: number;
  /** Recent window kept by streaming heads (reference `recent_size`). */
  readonly recent: number;
  /** The model the gates were trained on, when known. */
  readonly modelId?: string;
  /** Where the gates came from: training settings, data, source file. Free-form JSON. */
  readonly provenance?: Readonly<Record<string, unknown>>;
}

/** Which KV heads of each layer keep the full cache (retrieval heads); the rest keep sinks + a recent window. */
export interface HeadPlan {
  /** Per layer, the retrieval KV heads by their checkpoint index, ascending. */
  readonly retrievalHeads: readonly (readonly number[])[];
  readonly kvHeads: number;
  readonly sink: number;
  readonly recent: number;
  /** Fraction of KV heads that stream (what the plan realises, after rounding). */
  readonly sparsity: number;
}

/** How a session attends: every head full, every head streaming (StreamingLLM-style), or DuoAttention's plan. */
export type AttentionPolicyName = 'full' | 'streaming' | 'duo';

/** The streaming prefill mask: token-exact Λ, or the reference's chunk-wise approximation. */
export type PrefillMask = 'exact' | 'chunked';

/** Retrieval KV heads in `plan` over all layers. */
export function retrievalHeadCount(plan: HeadPlan): number {
  return plan.retrievalHeads.reduce((sum, heads) => sum + heads.length, 0);
}
