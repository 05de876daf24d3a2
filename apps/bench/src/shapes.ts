// Named model shapes for benchmarks and the planner (configs only; weights are made on the device).
import type { HeadPlan, ModelConfig } from '@duoattn/core';

const llama3Base = {
  architecture: 'llama',
  vocabSize: 128256,
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  ropeScaling: { type: 'none' },
  ropeStyle: 'half',
  maxPositionEmbeddings: 8192,
  attentionBias: false,
  tieWordEmbeddings: false,
  bosTokenId: 128000,
  eosTokenIds: [128001, 128009],
} as const satisfies ModelConfig;

/** Shapes by name, as in the DuoAttention paper's models. */
export const SHAPES: Record<string, ModelConfig> = {
  'llama-3-8b': llama3Base,
  'llama-3-8b-1048k': { ...llama3Base, ropeTheta: 3580165449, maxPositionEmbeddings: 1048576 },
  'llama-2-7b': {
    ...llama3Base,
    vocabSize: 32000,
    intermediateSize: 11008,
    numKvHeads: 32,
    ropeTheta: 10000,
    maxPositionEmbeddings: 32768,
    bosTokenId: 1,
    eosTokenIds: [2],
  },
  'mistral-7b': {
    ...llama3Base,
    architecture: 'mistral',
    vocabSize: 32768,
    ropeTheta: 1000000,
    maxPositionEmbeddings: 32768,
    bosTokenId: 1,
    eosTokenIds: [2],
  },
};

/** Parameters a config's matrices hold (embedding and output head included). */
export function parameterCount(config: ModelConfig): number {
  const { hiddenSize: d, numHeads, numKvHeads, headDim, intermediateSize: f, vocabSize, numLayers } = config;
  const perLayer = d * numHeads * headDim * 2 + d * numKvHeads * headDim * 2 + 3 * d * f + 2 * d;
  return numLayers * perLayer + vocabSize * d * (config.tieWordEmbeddings ? 1 : 2) + d;
}

/**
 * Bytes one decode step must read from device memory: every weight matrix once (one embedding row), and the KV cache —
 * all of it, or under a head plan the retrieval heads' keys and values plus each streaming head's sinks and window.
 */
export function decodeBytesFloor(
  config: ModelConfig,
  weightBytes: number,
  context: number,
  cacheBytes: number,
  plan?: HeadPlan,
): number {
  const embeddingRows = config.tieWordEmbeddings ? 0 : config.vocabSize * config.hiddenSize;
  const weights = (parameterCount(config) - embeddingRows) * weightBytes;
  const row = 2 * config.headDim * cacheBytes;
  if (!plan) return weights + config.numLayers * config.numKvHeads * context * row;
  const window = Math.min(context, plan.sink + plan.recent);
  const kv = plan.retrievalHeads.reduce(
    (sum, heads) => sum + (heads.length * context + (config.numKvHeads - heads.length) * window) * row,
    0,
  );
  return weights + kv;
}
