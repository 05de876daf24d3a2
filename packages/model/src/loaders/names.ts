// Canonical (HF Llama) tensor names that every loader maps its own names onto.

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
