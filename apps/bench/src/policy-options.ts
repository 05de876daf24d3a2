// The attention-policy options every benchmark shares (--attention, --pattern, --sparsity, --sink, --recent, …) and
// turning them into session options and a head plan.
import {
  type AttentionPolicyName,
  type HeadPlan,
  KV_QUANT_SCHEMES,
  type KvQuantScheme,
  type ModelConfig,
  type PrefillMask,
} from '@duoattn/core';
import { evenPlan, loadPattern, planHeads } from '@duoattn/dual-cache';
import { type LlamaModel, type SessionOptions, sessionPlan } from '@duoattn/model';
import { choiceOption, integerOption, numberOption, UsageError } from './args.js';

/** Option specs to spread into a command's parseOptions call. */
export const POLICY_OPTIONS = {
  attention: { type: 'string' },
  pattern: { type: 'string' },
  invert: { type: 'boolean' },
  sparsity: { type: 'string' },
  sink: { type: 'string' },
  recent: { type: 'string' },
  'prefill-mask': { type: 'string' },
  'prefill-chunk': { type: 'string' },
  'kv-quant': { type: 'string' },
} as const;

export const POLICY_HELP = `  Policies: --attention full|streaming|duo; duo takes --pattern DIR|FILE (reference or JSON format) and/or
  --sparsity S (fraction of streaming KV heads; without a pattern, spread evenly over the layers); --invert keeps the
  pattern's lowest-gate heads as retrieval heads instead (the control experiment); --sink N and
  --recent N (default: the pattern's, or 64 and 256); --prefill-mask exact|chunked; --prefill-chunk N (default 512);
  --kv-quant none|int8|int4|fp8 stores the KV cache quantized (codes + fp16 scales, both regions; default none).`;

/** The validated policy settings, before a model is known. */
export interface PolicySettings {
  readonly window: { sink?: number; recent?: number };
  readonly pattern?: string;
  /** Rank the pattern's heads from the lowest gate up (retrieval = the heads the pattern would stream). */
  readonly invert: boolean;
  readonly sparsity?: number;
  readonly prefillMask: PrefillMask;
  readonly prefillChunk: number;
  readonly kvQuant: KvQuantScheme;
}

/** Validates the shared options (call before loading a model, so typos fail fast). */
export function policySettings(options: Record<string, unknown>): PolicySettings {
  const sink = options.sink === undefined ? undefined : integerOption('sink', options.sink, 0, 0);
  const recent = options.recent === undefined ? undefined : integerOption('recent', options.recent, 1, 1);
  const sparsity = options.sparsity === undefined ? undefined : numberOption('sparsity', options.sparsity, 0, 0, 1);
  return {
    window: { sink, recent },
    pattern: options.pattern as string | undefined,
    invert: Boolean(options.invert),
    sparsity,
    prefillMask: choiceOption('prefill-mask', options['prefill-mask'], ['exact', 'chunked'] as const, 'exact'),
    prefillChunk: integerOption('prefill-chunk', options['prefill-chunk'], 512, 1),
    kvQuant: choiceOption('kv-quant', options['kv-quant'], KV_QUANT_SCHEMES, 'none'),
  };
}

/** --kv-quant as a comma-separated list (the commands that compare schemes in one run). */
export function kvQuantList(value: unknown, fallback: KvQuantScheme[] = ['none']): KvQuantScheme[] {
  if (value === undefined) return fallback;
  return String(value)
    .split(',')
    .map((name) => choiceOption('kv-quant', name.trim(), KV_QUANT_SCHEMES, 'none'));
}

/** How a policy (its name, or e.g. "duo 50 %") and a quantization scheme are labelled in reports: "duo + int4". */
export function runLabel(policy: string, kvQuant: KvQuantScheme): string {
  return kvQuant === 'none' ? policy : `${policy} + ${kvQuant}`;
}

/** The attention policies named by --attention (a comma-separated list where `many`). */
export function attentionPolicies(
  value: unknown,
  fallback: AttentionPolicyName[],
  many = false,
): AttentionPolicyName[] {
  const names = value === undefined ? fallback : String(value).split(',');
  const valid = ['full', 'streaming', 'duo'] as const;
  if (!many && names.length > 1)
    throw new UsageError(`--attention: expected one of ${valid.join(', ')} but received "${String(value)}"`);
  return names.map((name) => choiceOption('attention', name.trim(), valid, 'full'));
}

/** The head plan for `duo` on a model of `config`: binarized pattern, or an even split at --sparsity (default 0.5). */
export function duoPlan(settings: PolicySettings, config: ModelConfig): HeadPlan {
  const { sink, recent } = settings.window;
  if (settings.invert && settings.pattern === undefined)
    throw new UsageError('--invert: expected a --pattern to invert');
  if (settings.pattern !== undefined) {
    let pattern: ReturnType<typeof loadPattern>;
    try {
      pattern = loadPattern(settings.pattern);
    } catch (error) {
      throw new UsageError(`--pattern: ${(error as Error).message}`);
    }
    if (pattern.gates.length !== config.numLayers || pattern.gates[0]?.length !== config.numKvHeads) {
      throw new UsageError(
        `--pattern: expected gates for ${config.numLayers} layers × ${config.numKvHeads} KV heads but "${settings.pattern}" has ${pattern.gates.length} × ${pattern.gates[0]?.length ?? 0}`,
      );
    }
    const ranked = settings.invert
      ? { ...pattern, gates: pattern.gates.map((row) => row.map((gate) => 1 - gate)) }
      : pattern;
    return planHeads(ranked, { sparsity: settings.sparsity ?? 0.5, sink, recent });
  }
  return evenPlan(config.numLayers, config.numKvHeads, settings.sparsity ?? 0.5, sink ?? 64, recent ?? 256);
}

/** Session options for `attention` (the model must carry the duo plan: see `applyDuoPlan`). */
export function sessionPolicy(attention: AttentionPolicyName, settings: PolicySettings): SessionOptions {
  return {
    attention,
    ...settings.window,
    prefillMask: settings.prefillMask,
    prefillChunk: settings.prefillChunk,
    kvQuant: settings.kvQuant,
  };
}

/** The head plan `attention` runs under `settings`: the session's own reading of them (`duo`: the given plan). */
export function policyPlan(
  attention: AttentionPolicyName,
  settings: PolicySettings,
  config: ModelConfig,
  duo?: HeadPlan,
): HeadPlan {
  return sessionPlan(config, sessionPolicy(attention, settings), duo);
}

/** Applies the duo plan to `model` when any of `policies` is duo; returns it for the report. */
export async function applyDuoPlan(
  model: LlamaModel,
  policies: readonly AttentionPolicyName[],
  settings: PolicySettings,
): Promise<HeadPlan | undefined> {
  if (!policies.includes('duo')) return undefined;
  const plan = duoPlan(settings, model.config);
  await model.applyHeadPlan(plan);
  return plan;
}
