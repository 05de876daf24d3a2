// The architecture of a Llama-family model, independent of the checkpoint format it came from.

/** RoPE frequency scaling, as in HF `rope_scaling`. */
export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

/**
 * How query/key channels pair up for rotation: `interleaved` rotates (0,1), (2,3), … (llama2.c, GGUF);
 * `half` rotates (i, i + headDim/2) (HF `rotate_half`).
 */
export type RopeStyle = 'interleaved' | 'half';

/** Architecture hyperparameters of a Llama / Mistral / Qwen2 model. */
export interface ModelConfig {
  /** Family the checkpoint declared, for messages and reports. */
  readonly architecture: 'llama' | 'mistral' | 'qwen2';
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling;
  readonly ropeStyle: RopeStyle;
  /** Longest context the checkpoint was trained for (a default, not a hard limit). */
  readonly maxPositionEmbeddings: number;
  /** q/k/v projections carry a bias (Qwen2). */
  readonly attentionBias: boolean;
  /** The output projection shares the token embedding matrix. */
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
}

/** Query heads per KV head (GQA group size). */
export function groupSize(config: ModelConfig): number {
  return config.numHeads / config.numKvHeads;
}

/** Throws a message naming the first inconsistent field, or returns the config. */
export function validateModelConfig(config: ModelConfig): ModelConfig {
  const positive: (keyof ModelConfig)[] = [
    'vocabSize',
    'hiddenSize',
    'intermediateSize',
    'numLayers',
    'numHeads',
    'numKvHeads',
    'headDim',
  ];
  for (const key of positive) {
    const value = config[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
      throw new RangeError(`Expected \`${key}\` to be a positive integer but received ${String(value)}`);
    }
  }
  if (config.numHeads % config.numKvHeads !== 0) {
    throw new RangeError(
      `Expected \`numHeads\` (${config.numHeads}) to be a multiple of \`numKvHeads\` (${config.numKvHeads})`,
    );
  }
  if (config.headDim % 2 !== 0) {
    throw new RangeError(`Expected an even \`headDim\` for RoPE but received ${config.headDim}`);
  }
  return config;
}
