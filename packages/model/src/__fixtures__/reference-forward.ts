// A float64 Llama forward pass built from the kernels' reference ops: the oracle for model tests.

import type { ModelConfig } from '@duoattn/core';
import {
  type Matrix,
  referenceAttention,
  referenceEmbedding,
  referenceMatmul,
  referenceRmsNorm,
  referenceRope,
  referenceSwiglu,
  toMatrix,
} from '@duoattn/kernels/testing';
import { ropeInverseFrequencies } from '../rope.js';
import type { FixtureTensor } from './checkpoints.js';

/** Which keys a query sees in a layer's KV head (checkpoint order); the default is causal. */
export type ReferenceMask = (layer: number, kvHead: number, position: number, key: number) => boolean;

/**
 * Logits (tokens × vocab, row-major) of `tokens` at positions 0…n−1, run densely: every query row at once, with
 * `mask` deciding per layer and KV head which keys each position sees (default: full causal attention).
 */
export function referenceLogits(
  config: ModelConfig,
  weights: Map<string, FixtureTensor>,
  tokens: number[],
  mask?: ReferenceMask,
  /** What the cache holds of a key (after RoPE) or value row of one KV head — a quantizer's round trip, say. */
  cached?: (row: Float64Array) => Float64Array,
): Float64Array {
  const matrix = (name: string): Matrix => {
    const tensor = weights.get(name);
    if (!tensor) throw new Error(`fixture lacks ${name}`);
    return toMatrix(tensor.data, tensor.shape[0] ?? 1, tensor.shape[1] ?? tensor.data.length);
  };
  const vector = (name: string) => weights.get(name)?.data;
  let x = referenceEmbedding(matrix('model.embed_tokens.weight'), tokens);
  const positions = tokens.map((_, i) => i);
  const frequencies = ropeInverseFrequencies(config);
  const interleaved = config.ropeStyle === 'interleaved';
  const add = (a: Matrix, b: Matrix) => a.map((row, r) => row.map((v, i) => v + (b[r]?.[i] ?? 0)));
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    const h = referenceRmsNorm(x, vector(`${p}.input_layernorm.weight`) ?? [], config.rmsNormEps);
    const q = referenceRope(
      referenceMatmul(h, matrix(`${p}.self_attn.q_proj.weight`), vector(`${p}.self_attn.q_proj.bias`)),
      positions,
      frequencies,
      config.numHeads,
      config.headDim,
      interleaved,
    );
    const k = referenceRope(
      referenceMatmul(h, matrix(`${p}.self_attn.k_proj.weight`), vector(`${p}.self_attn.k_proj.bias`)),
      positions,
      frequencies,
      config.numKvHeads,
      config.headDim,
      interleaved,
    );
    const v = referenceMatmul(h, matrix(`${p}.self_attn.v_proj.weight`), vector(`${p}.self_attn.v_proj.bias`));
    const perHead = (m: Matrix) =>
      Array.from({ length: config.numKvHeads }, (_, head) =>
        m.map((row) => {
          const slice = row.slice(head * config.headDim, (head + 1) * config.headDim);
          return cached ? cached(slice) : slice;
        }),
      );
    const attention = referenceAttention(q, perHead(k), perHead(v), {
      heads: config.numHeads,
      kvHeads: config.numKvHeads,
      headDim: config.headDim,
      scale: 1 / Math.sqrt(config.headDim),
      keyLength: tokens.length,
      queryStart: 0,
      visible: (position, key, head) =>
        key <= position &&
        (mask?.(layer, Math.floor(head / (config.numHeads / config.numKvHeads)), position, key) ?? true),
    });
    x = add(x, referenceMatmul(attention, matrix(`${p}.self_attn.o_proj.weight`)));
    const h2 = referenceRmsNorm(x, vector(`${p}.post_attention_layernorm.weight`) ?? [], config.rmsNormEps);
    const mlp = referenceSwiglu(
      referenceMatmul(h2, matrix(`${p}.mlp.gate_proj.weight`)),
      referenceMatmul(h2, matrix(`${p}.mlp.up_proj.weight`)),
    );
    x = add(x, referenceMatmul(mlp, matrix(`${p}.mlp.down_proj.weight`)));
  }
  const head = weights.has('lm_head.weight') ? matrix('lm_head.weight') : matrix('model.embed_tokens.weight');
  const logits = referenceMatmul(referenceRmsNorm(x, vector('model.norm.weight') ?? [], config.rmsNormEps), head);
  const out = new Float64Array(tokens.length * (head.length ?? 0));
  for (const [r, row] of logits.entries()) out.set(row, r * head.length);
  return out;
}
