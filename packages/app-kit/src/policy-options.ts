// The attention-policy options every app shares (--attention, --pattern, --sparsity, --sink, --recent, --kv-quant, …):
// validated before a model loads, then built into the AttentionPolicy a session runs.
import {
  type AttentionPolicy,
  type AttentionPolicyName,
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_RECENT,
  DEFAULT_SINK,
  DEFAULT_SPARSITY,
  type HeadPlan,
  type KvQuantScheme,
  type ModelConfig,
  type PrefillMask,
  retrievalHeadCount,
} from '@duoattn/core';
import { evenPlan, loadPattern, planHeads, policyPlan } from '@duoattn/dual-cache';
import { KV_QUANT_SCHEMES } from '@duoattn/kv-quant';
import { choiceOption, integerOption, numberOption, type OptionSpec } from './command-options.js';
import { UsageError } from './usage-error.js';

/** Option specs to spread into a command's `parseOptions` call. */
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
} as const satisfies OptionSpec;

/** The policy options' help text, for a command's help. */
export const POLICY_HELP = `  Policies: --attention full|streaming|duo; duo takes --pattern DIR|FILE (reference or JSON format) and/or
  --sparsity S (fraction of streaming KV heads, default ${DEFAULT_SPARSITY}; without a pattern, spread evenly over the
  layers); --invert keeps the pattern's lowest-gate heads as retrieval heads instead (the control experiment);
  --sink N and --recent N (default: the pattern's, or ${DEFAULT_SINK} and ${DEFAULT_RECENT}); --prefill-mask exact|chunked;
  --prefill-chunk N (default ${DEFAULT_PREFILL_CHUNK}); --kv-quant none|int8|int4|fp8 stores the KV cache quantized
  (codes + fp16 scales, both regions; default none).`;

const ATTENTION_NAMES = ['full', 'streaming', 'duo'] as const satisfies readonly AttentionPolicyName[];
const PREFILL_MASKS = ['exact', 'chunked'] as const satisfies readonly PrefillMask[];

/** The validated policy options, before a model is known. */
export interface PolicySettings {
  /** Streaming heads' window; absent fields fall back to the pattern's, else `DEFAULT_SINK` / `DEFAULT_RECENT`. */
  readonly window: { readonly sink?: number; readonly recent?: number };
  /** --pattern: a reference-format directory or a JSON file. */
  readonly pattern?: string;
  /** Rank the pattern's heads from the lowest gate up (retrieval = the heads the pattern would stream). */
  readonly invert: boolean;
  /** Fraction of streaming KV heads for `duo`; absent: `DEFAULT_SPARSITY`. */
  readonly sparsity?: number;
  readonly prefillMask: PrefillMask;
  readonly prefillChunk: number;
  readonly kvQuant: KvQuantScheme;
}

/**
 * Validates the policy options (call before loading a model, so typos fail fast). With `attentions`, the policies the
 * run will use, options that none of them reads are usage errors too (`--pattern` without duo, `--sink` with only
 * full attention), so a mistyped command never silently runs something else.
 */
export function policySettings(
  options: Record<string, unknown>,
  attentions?: readonly AttentionPolicyName[],
): PolicySettings {
  if (attentions) checkOptionsApply(options, attentions);
  const sink = options.sink === undefined ? undefined : integerOption('sink', options.sink, 0, 0);
  const recent = options.recent === undefined ? undefined : integerOption('recent', options.recent, 1, 1);
  const sparsity = options.sparsity === undefined ? undefined : numberOption('sparsity', options.sparsity, 0, 0, 1);
  if (options.pattern !== undefined && (typeof options.pattern !== 'string' || options.pattern === '')) {
    throw UsageError.invalid('pattern', 'a pattern directory or JSON file', options.pattern);
  }
  checkInvert(Boolean(options.invert), options.pattern);
  return {
    window: {
      ...(sink === undefined ? {} : { sink }),
      ...(recent === undefined ? {} : { recent }),
    },
    ...(options.pattern === undefined ? {} : { pattern: options.pattern as string }),
    invert: Boolean(options.invert),
    ...(sparsity === undefined ? {} : { sparsity }),
    prefillMask: choiceOption('prefill-mask', options['prefill-mask'], PREFILL_MASKS, 'exact'),
    prefillChunk: integerOption('prefill-chunk', options['prefill-chunk'], DEFAULT_PREFILL_CHUNK, 1),
    kvQuant: choiceOption('kv-quant', options['kv-quant'], KV_QUANT_SCHEMES, 'none'),
  };
}

function checkInvert(invert: boolean, pattern: unknown): void {
  if (invert && pattern === undefined) {
    throw new UsageError('--invert: expected a --pattern to invert', { option: 'invert', expected: 'a --pattern' });
  }
}

/** Options that only some policies read, and the policies that read them. */
const READ_BY: Record<string, readonly AttentionPolicyName[]> = {
  pattern: ['duo'],
  invert: ['duo'],
  sparsity: ['duo'],
  sink: ['streaming', 'duo'],
  recent: ['streaming', 'duo'],
  'prefill-mask': ['streaming', 'duo'],
};

function checkOptionsApply(options: Record<string, unknown>, attentions: readonly AttentionPolicyName[]): void {
  for (const [option, readers] of Object.entries(READ_BY)) {
    const value = options[option];
    if (value === undefined || value === false || attentions.some((name) => readers.includes(name))) continue;
    throw new UsageError(
      `--${option}: applies to --attention ${readers.join(' or ')} but this run uses ${attentions.join(', ')}`,
      { option, received: String(value), expected: `--attention ${readers.join(' or ')}` },
    );
  }
}

/** --kv-quant as a comma-separated list (the commands that compare schemes in one run). */
export function kvQuantList(value: unknown, fallback: readonly KvQuantScheme[] = ['none']): KvQuantScheme[] {
  if (value === undefined) return [...fallback];
  return String(value)
    .split(',')
    .map((name) => choiceOption('kv-quant', name.trim(), KV_QUANT_SCHEMES, 'none'));
}

/** The attention policies named by --attention: `fallback` when absent, a comma-separated list where `many`. */
export function attentionPolicies(
  value: unknown,
  fallback: readonly AttentionPolicyName[],
  many = false,
): AttentionPolicyName[] {
  const names = value === undefined ? [...fallback] : String(value).split(',');
  if (!many && names.length > 1) throw UsageError.invalid('attention', `one of ${ATTENTION_NAMES.join(', ')}`, value);
  return names.map((name) => choiceOption('attention', name.trim(), ATTENTION_NAMES, 'full'));
}

/** How a policy (its name, or e.g. "duo 50 %") and a quantization scheme are labelled in reports: "duo + int4". */
export function runLabel(policy: string, kvQuant: KvQuantScheme): string {
  return kvQuant === 'none' ? policy : `${policy} + ${kvQuant}`;
}

/**
 * The head plan of `duo` on a model of `config`: the --pattern binarized at --sparsity (its lowest gates first with
 * --invert), or without a pattern an even split at --sparsity; both default to `DEFAULT_SPARSITY`. --sink and
 * --recent override the pattern's window.
 */
export function duoPlan(settings: PolicySettings, config: ModelConfig): HeadPlan {
  const { sink, recent } = settings.window;
  const sparsity = settings.sparsity ?? DEFAULT_SPARSITY;
  checkInvert(settings.invert, settings.pattern);
  if (settings.pattern === undefined) {
    return evenPlan(config.numLayers, config.numKvHeads, sparsity, sink ?? DEFAULT_SINK, recent ?? DEFAULT_RECENT);
  }
  let pattern: ReturnType<typeof loadPattern>;
  try {
    pattern = loadPattern(settings.pattern);
  } catch (error) {
    throw new UsageError(
      `--pattern: ${(error as Error).message}`,
      { option: 'pattern', received: settings.pattern },
      { cause: error },
    );
  }
  const layers = pattern.gates.length;
  const kvHeads = pattern.gates[0]?.length ?? 0;
  if (layers !== config.numLayers || kvHeads !== config.numKvHeads) {
    const expected = `gates for ${config.numLayers} layers × ${config.numKvHeads} KV heads`;
    throw new UsageError(`--pattern: expected ${expected} but "${settings.pattern}" has ${layers} × ${kvHeads}`, {
      option: 'pattern',
      received: settings.pattern,
      expected,
    });
  }
  const ranked = settings.invert
    ? { ...pattern, gates: pattern.gates.map((row) => row.map((gate) => 1 - gate)) }
    : pattern;
  return planHeads(ranked, { sparsity, ...settings.window });
}

/** The duo plan when any of `attentions` is `duo` (built once, shared by the runs), else undefined. */
export function duoPlanFor(
  attentions: readonly AttentionPolicyName[],
  settings: PolicySettings,
  config: ModelConfig,
): HeadPlan | undefined {
  return attentions.includes('duo') ? duoPlan(settings, config) : undefined;
}

/**
 * The AttentionPolicy a session runs for `attention` under `settings` on a model of `config`. `duo` takes the plan
 * `duo` when given (one plan shared by several runs), else builds it with `duoPlan`. Window fields the user did not
 * set are left out, so the session applies its defaults (`DEFAULT_SINK`, `DEFAULT_RECENT`, the plan's).
 */
export function buildPolicy(
  attention: AttentionPolicyName,
  settings: PolicySettings,
  config: ModelConfig,
  duo?: HeadPlan,
): AttentionPolicy {
  const common = { kvQuant: settings.kvQuant, prefillMask: settings.prefillMask, prefillChunk: settings.prefillChunk };
  switch (attention) {
    case 'full':
      return { attention, ...common };
    case 'streaming':
      return { attention, ...settings.window, ...common };
    case 'duo':
      return { attention, plan: duo ?? duoPlan(settings, config), ...settings.window, ...common };
    default:
      throw UsageError.invalid('attention', `one of ${ATTENTION_NAMES.join(', ')}`, attention);
  }
}

/** Where a duo plan came from, for `describePolicy`. */
export interface PlanSource {
  readonly pattern?: string;
  readonly invert?: boolean;
}

/**
 * One line saying which policy runs, for logs: "full", "streaming, sink 64, recent 256", or "duo 25 % retrieval
 * heads (3 of 12; sparsity 0.75, pattern models/duo-demo/pattern), sink 128, recent 256", then the KV scheme and a
 * chunked prefill mask when set. The window is the one the session resolves (`policyPlan`).
 */
export function describePolicy(policy: AttentionPolicy, config: ModelConfig, source: PlanSource = {}): string {
  const plan = policyPlan(config, policy);
  const parts: string[] = [];
  if (policy.attention === 'duo') {
    const total = plan.retrievalHeads.length * plan.kvHeads;
    const retrieval = retrievalHeadCount(plan);
    const origin =
      source.pattern === undefined ? 'an even split' : `${source.invert ? 'inverted ' : ''}pattern ${source.pattern}`;
    const percent = total === 0 ? 0 : Math.round((retrieval / total) * 100);
    parts.push(`duo ${percent} % retrieval heads (${retrieval} of ${total}; sparsity ${plan.sparsity}, ${origin})`);
  } else {
    parts.push(policy.attention);
  }
  if (policy.attention !== 'full') parts.push(`sink ${plan.sink}`, `recent ${plan.recent}`);
  if (policy.kvQuant !== undefined && policy.kvQuant !== 'none') parts.push(`KV ${policy.kvQuant}`);
  if (policy.attention !== 'full' && policy.prefillMask === 'chunked') parts.push('chunked prefill mask');
  return parts.join(', ');
}
