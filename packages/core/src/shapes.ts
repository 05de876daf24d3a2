// Named model shapes (configs only) for benchmarks, the planner and tests: the DuoAttention paper's models, and a
// 1B-class one for the CPU comparisons.
import type { ModelConfig } from './model-config.js';

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
  // Llama-3.2-1B's matrices (tied embeddings; its RoPE scaling left out: the shape is for speed, not text).
  'llama-3.2-1b': {
    ...llama3Base,
    hiddenSize: 2048,
    intermediateSize: 8192,
    numLayers: 16,
    headDim: 64,
    maxPositionEmbeddings: 131072,
    tieWordEmbeddings: true,
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
