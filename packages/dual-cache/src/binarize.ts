// From trained gates to a HeadPlan: the global quantile at a sparsity (deterministic ties), or a fixed threshold.
import { DEFAULT_RECENT, DEFAULT_SINK, DuoArgumentError, type HeadPattern, type HeadPlan } from '@duoattn/core';

/** How to binarize: a fraction of streaming heads (global quantile), or a gate threshold. */
export type BinarizeOptions = (
  | {
      /** Fraction of all KV heads that stream, in [0, 1]; exactly round(sparsity × total) heads stream. */
      sparsity: number;
      threshold?: undefined;
    }
  | {
      /** Heads whose (clipped) gate is ≥ threshold keep the full cache. */
      threshold: number;
      sparsity?: undefined;
    }
) & {
  /** Overrides the pattern's sink (the reference evaluated with 64). Default: the pattern's. */
  sink?: number;
  /** Overrides the pattern's recent window. Default: the pattern's. */
  recent?: number;
};

/**
 * Binarizes `pattern`. With `sparsity`, heads are ranked by gate (clipped to [0, 1]) over all layers and the lowest
 * round(sparsity × total) stream. Equal gates — trained patterns hold many exact 1.0s — are ordered by a fixed hash
 * of (layer, head) instead of the reference's random noise, so a plan is the same on every run and no layer is
 * favoured by its index.
 */
export function planHeads(pattern: HeadPattern, options: BinarizeOptions): HeadPlan {
  const layers = pattern.gates.length;
  const kvHeads = pattern.gates[0]?.length ?? 0;
  const total = layers * kvHeads;
  const sink = options.sink ?? pattern.sink;
  const recent = options.recent ?? pattern.recent;
  checkWindow(sink, recent);
  const clipped = pattern.gates.map((row) => row.map((gate) => Math.min(1, Math.max(0, gate))));
  let retrieval: boolean[][];
  if (options.sparsity !== undefined) {
    const { sparsity } = options;
    if (typeof sparsity !== 'number' || !(sparsity >= 0 && sparsity <= 1)) {
      throw new DuoArgumentError('sparsity', `Expected \`sparsity\` in [0, 1] but received ${String(sparsity)}`);
    }
    const ranked = clipped
      .flatMap((row, layer) => row.map((gate, head) => ({ gate, layer, head, tie: tieBreak(layer, head) })))
      .sort((a, b) => a.gate - b.gate || a.tie - b.tie || a.layer - b.layer || a.head - b.head);
    const streamingCount = Math.round(sparsity * total);
    retrieval = clipped.map((row) => row.map(() => true));
    for (const entry of ranked.slice(0, streamingCount)) (retrieval[entry.layer] as boolean[])[entry.head] = false;
  } else {
    const { threshold } = options;
    if (typeof threshold !== 'number' || !Number.isFinite(threshold)) {
      throw new DuoArgumentError(
        'threshold',
        `Expected \`threshold\` to be a finite number but received ${String(threshold)}`,
      );
    }
    retrieval = clipped.map((row) => row.map((gate) => gate >= threshold));
  }
  const retrievalHeads = retrieval.map((row) => row.flatMap((keep, head) => (keep ? [head] : [])));
  const kept = retrievalHeads.reduce((sum, heads) => sum + heads.length, 0);
  return { retrievalHeads, kvHeads, sink, recent, sparsity: total === 0 ? 0 : 1 - kept / total };
}

/** A plan where every head keeps the full cache (`full`) or every head streams (`streaming`). */
export function uniformPlan(
  kind: 'full' | 'streaming',
  layers: number,
  kvHeads: number,
  sink = DEFAULT_SINK,
  recent = DEFAULT_RECENT,
): HeadPlan {
  checkWindow(sink, recent);
  const heads = kind === 'full' ? Array.from({ length: kvHeads }, (_, h) => h) : [];
  return {
    retrievalHeads: Array.from({ length: layers }, () => [...heads]),
    kvHeads,
    sink,
    recent,
    sparsity: kind === 'full' ? 0 : 1,
  };
}

/**
 * A plan without trained gates, for shapes and benchmarks: round(sparsity × total) streaming heads spread as evenly
 * as the layers allow (earlier layers take the remainder), the first heads of each layer kept as retrieval heads.
 */
export function evenPlan(
  layers: number,
  kvHeads: number,
  sparsity: number,
  sink = DEFAULT_SINK,
  recent = DEFAULT_RECENT,
): HeadPlan {
  if (typeof sparsity !== 'number' || !(sparsity >= 0 && sparsity <= 1)) {
    throw new DuoArgumentError('sparsity', `Expected \`sparsity\` in [0, 1] but received ${String(sparsity)}`);
  }
  checkWindow(sink, recent);
  const streaming = Math.round(sparsity * layers * kvHeads);
  const base = Math.floor(streaming / layers);
  const retrievalHeads = Array.from({ length: layers }, (_, layer) => {
    const streamingHere = base + (layer < streaming - base * layers ? 1 : 0);
    return Array.from({ length: kvHeads - streamingHere }, (_, h) => h);
  });
  return { retrievalHeads, kvHeads, sink, recent, sparsity: streaming / (layers * kvHeads) };
}

/** The plan that keeps the *other* heads: the lowest-gate heads as retrieval (a control for accuracy studies). */
export function invertPlan(plan: HeadPlan): HeadPlan {
  const retrievalHeads = plan.retrievalHeads.map((heads) =>
    Array.from({ length: plan.kvHeads }, (_, h) => h).filter((h) => !heads.includes(h)),
  );
  return { ...plan, retrievalHeads, sparsity: 1 - plan.sparsity };
}

/** Checks that `plan` fits a model of `layers` × `kvHeads` KV heads; names what does not. */
export function checkPlan(plan: HeadPlan, layers: number, kvHeads: number): HeadPlan {
  if (plan.retrievalHeads.length !== layers || plan.kvHeads !== kvHeads) {
    throw new DuoArgumentError(
      'headPlan',
      `Expected a head plan for ${layers} layers × ${kvHeads} KV heads but received ${plan.retrievalHeads.length} × ${plan.kvHeads}`,
    );
  }
  plan.retrievalHeads.forEach((heads, layer) => {
    const unique = new Set(heads);
    if (unique.size !== heads.length || heads.some((h) => !Number.isInteger(h) || h < 0 || h >= kvHeads)) {
      throw new DuoArgumentError(
        'headPlan',
        `Expected distinct KV heads in [0, ${kvHeads}) for layer ${layer} but received [${heads.join(', ')}]`,
      );
    }
  });
  checkWindow(plan.sink, plan.recent);
  return plan;
}

function checkWindow(sink: number, recent: number): void {
  if (!Number.isInteger(sink) || sink < 0) {
    throw new DuoArgumentError('sink', `Expected \`sink\` to be a non-negative integer but received ${String(sink)}`);
  }
  if (!Number.isInteger(recent) || recent < 1) {
    throw new DuoArgumentError('recent', `Expected \`recent\` to be a positive integer but received ${String(recent)}`);
  }
}

/** A fixed pseudo-random rank of (layer, head) in [0, 1) (splitmix32-style), used only to order equal gates. */
function tieBreak(layer: number, head: number): number {
  let x = (Math.imul(layer + 1, 0x9e3779b1) ^ Math.imul(head + 1, 0x85ebca6b)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d) >>> 0;
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b) >>> 0;
  return ((x ^ (x >>> 16)) >>> 0) / 4294967296;
}
