// Canonical (HF Llama) tensor names that every loader maps its own names onto, and the shapes a config gives them.
import type { ModelConfig } from '@duoattn/core';

export const EMBEDDING = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

/** Names of one decoder layer's tensors. */
export function layerNames(layer: number) {
  const prefix = `model.layers.${layer}`;
  return {
    attentionNorm: `${prefix}.input_layernorm.weight`,
    query: `${prefix}.self_attn.q_proj.weight`,
    key: `${prefix}.self_attn.k_proj.weight`,
    value: `${prefix}.self_attn.v_proj.weight`,
    queryBias: `${prefix}.self_attn.q_proj.bias`,
    keyBias: `${prefix}.self_attn.k_proj.bias`,
    valueBias: `${prefix}.self_attn.v_proj.bias`,
    output: `${prefix}.self_attn.o_proj.weight`,
    mlpNorm: `${prefix}.post_attention_layernorm.weight`,
    gate: `${prefix}.mlp.gate_proj.weight`,
    up: `${prefix}.mlp.up_proj.weight`,
    down: `${prefix}.mlp.down_proj.weight`,
  };
}

/** The shape (row-major) of each kind of weight of a model with `config`. */
export function weightShapes(config: ModelConfig) {
  const { hiddenSize: d, numHeads, numKvHeads, headDim, intermediateSize: f, vocabSize } = config;
  return {
    embedding: [vocabSize, d],
    query: [numHeads * headDim, d],
    key: [numKvHeads * headDim, d],
    value: [numKvHeads * headDim, d],
    output: [d, numHeads * headDim],
    gate: [f, d],
    up: [f, d],
    down: [d, f],
    norm: [d],
  };
}

/** A tensor a checkpoint of some config holds: its name, its shape, and whether it must be there. */
export interface ExpectedTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly required: boolean;
}

/** Every tensor a checkpoint of `config` holds, in the order the weights load (an untied output head is required). */
export function* expectedTensors(config: ModelConfig): Generator<ExpectedTensor> {
  const shape = weightShapes(config);
  yield { name: EMBEDDING, shape: shape.embedding, required: true };
  for (let layer = 0; layer < config.numLayers; layer++) {
    const names = layerNames(layer);
    if (config.attentionBias) {
      yield { name: names.queryBias, shape: [shape.query[0] ?? 0], required: true };
      yield { name: names.keyBias, shape: [shape.key[0] ?? 0], required: true };
      yield { name: names.valueBias, shape: [shape.value[0] ?? 0], required: true };
    }
    for (const [name, expected] of [
      [names.attentionNorm, shape.norm],
      [names.query, shape.query],
      [names.key, shape.key],
      [names.value, shape.value],
      [names.output, shape.output],
      [names.mlpNorm, shape.norm],
      [names.gate, shape.gate],
      [names.up, shape.up],
      [names.down, shape.down],
    ] as const) {
      yield { name, shape: expected, required: true };
    }
  }
  yield { name: FINAL_NORM, shape: shape.norm, required: true };
  yield { name: LM_HEAD, shape: shape.embedding, required: !config.tieWordEmbeddings };
}
