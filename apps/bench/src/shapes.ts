// Named model shapes (from @duoattn/core) and the byte counts benchmarks compare against.
import { type HeadPlan, type ModelConfig, SHAPES } from '@duoattn/core';

/** Shapes by name (they live in @duoattn/core so the planner's tests share them). */
export { SHAPES };

/** Parameters a config's matrices hold (embedding and output head included). */
export function parameterCount(config: ModelConfig): number {
  const { hiddenSize: d, numHeads, numKvHeads, headDim, intermediateSize: f, vocabSize, numLayers } = config;
  const perLayer = d * numHeads * headDim * 2 + d * numKvHeads * headDim * 2 + 3 * d * f + 2 * d;
  return numLayers * perLayer + vocabSize * d * (config.tieWordEmbeddings ? 1 : 2) + d;
}

/**
 * Bytes one decode step must read from device memory: every weight matrix once (one embedding row), and the KV cache —
 * all of it, or under a head plan the retrieval heads' keys and values plus each streaming head's sinks and window.
 * `kvRowBytes`: bytes of one cached key (or value) row of one KV head (dual-cache's `kvRowBytes` of its planes).
 */
export function decodeBytesFloor(
  config: ModelConfig,
  weightBytes: number,
  context: number,
  kvRowBytes: number,
  plan?: HeadPlan,
): number {
  const embeddingRows = config.tieWordEmbeddings ? 0 : config.vocabSize * config.hiddenSize;
  const weights = (parameterCount(config) - embeddingRows) * weightBytes;
  const row = 2 * kvRowBytes;
  if (!plan) return weights + config.numLayers * config.numKvHeads * context * row;
  const window = Math.min(context, plan.sink + plan.recent);
  const kv = plan.retrievalHeads.reduce(
    (sum, heads) => sum + (heads.length * context + (config.numKvHeads - heads.length) * window) * row,
    0,
  );
  return weights + kv;
}
