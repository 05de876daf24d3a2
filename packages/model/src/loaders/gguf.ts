// GGUF checkpoints: metadata → config, tensor infos → stored tensors, embedded vocabulary → tokenizer.
import { DuoCheckpointError, type ModelConfig, type RopeScaling, validateModelConfig } from '@duoattn/core';
import { gguf } from '@huggingface/gguf';
import { ggufVocabularyTokenizer } from '../tokenizers/score-bpe.js';
import { type Checkpoint, checkTensorBounds, type StoredEncoding, type StoredTensor } from './checkpoint.js';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './names.js';

// GGML type ids (ggml.h) for the encodings we read.
const GGML_TYPES: Record<number, StoredEncoding> = { 0: 'f32', 1: 'f16', 8: 'q8_0', 30: 'bf16' };
const GGML_TYPE_NAMES: Record<number, string> = {
  2: 'Q4_0',
  3: 'Q4_1',
  6: 'Q5_0',
  7: 'Q5_1',
  10: 'Q2_K',
  11: 'Q3_K',
  12: 'Q4_K',
  13: 'Q5_K',
  14: 'Q6_K',
};

const LAYER_FIELDS: Record<string, keyof ReturnType<typeof layerNames>> = {
  attn_norm: 'attentionNorm',
  attn_q: 'query',
  attn_k: 'key',
  attn_v: 'value',
  attn_output: 'output',
  ffn_norm: 'mlpNorm',
  ffn_gate: 'gate',
  ffn_up: 'up',
  ffn_down: 'down',
};

function canonicalName(name: string): string | undefined {
  if (name === 'token_embd.weight') return EMBEDDING;
  if (name === 'output_norm.weight') return FINAL_NORM;
  if (name === 'output.weight') return LM_HEAD;
  const match = /^blk\.(\d+)\.(\w+)\.(weight|bias)$/.exec(name);
  if (!match) return undefined;
  const field = LAYER_FIELDS[match[2] ?? ''];
  if (!field) return undefined;
  const names = layerNames(Number(match[1]));
  if (match[3] === 'bias') {
    const bias = { query: names.queryBias, key: names.keyBias, value: names.valueBias } as Record<string, string>;
    return bias[field];
  }
  return names[field];
}

function metadataNumber(metadata: Record<string, unknown>, key: string, fallback?: number): number {
  const value = metadata[key];
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint') return Number(value);
  if (fallback !== undefined) return fallback;
  throw new Error(`metadata key ${key} is missing`);
}

/** Opens a GGUF file (architectures llama, mistral, qwen2; tensors F32, F16, BF16, Q8_0). */
export async function openGguf(path: string): Promise<Checkpoint> {
  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(path, { allowLocalFile: true });
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `not a readable GGUF file: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const metadata = parsed.metadata as unknown as Record<string, unknown>;
  const arch = String(metadata['general.architecture']);
  if (arch !== 'llama' && arch !== 'mistral' && arch !== 'qwen2') {
    throw new DuoCheckpointError(path, undefined, `architecture "${arch}" is not supported (llama, mistral, qwen2)`);
  }
  let config: ModelConfig;
  try {
    const names = new Set(parsed.tensorInfos.map((t) => t.name));
    const embedding = parsed.tensorInfos.find((t) => t.name === 'token_embd.weight');
    const heads = metadataNumber(metadata, `${arch}.attention.head_count`);
    const hidden = metadataNumber(metadata, `${arch}.embedding_length`);
    const tokens = metadata['tokenizer.ggml.tokens'];
    const scalingType = metadata[`${arch}.rope.scaling.type`];
    const ropeScaling: RopeScaling =
      scalingType === 'linear'
        ? { type: 'linear', factor: metadataNumber(metadata, `${arch}.rope.scaling.factor`) }
        : { type: 'none' };
    const eos = metadata['tokenizer.ggml.eos_token_id'];
    const bos = metadata['tokenizer.ggml.bos_token_id'];
    config = validateModelConfig({
      architecture: arch,
      vocabSize: Array.isArray(tokens)
        ? tokens.length
        : metadataNumber(metadata, `${arch}.vocab_size`, Number(embedding?.shape[1] ?? Number.NaN)),
      hiddenSize: hidden,
      intermediateSize: metadataNumber(metadata, `${arch}.feed_forward_length`),
      numLayers: metadataNumber(metadata, `${arch}.block_count`),
      numHeads: heads,
      numKvHeads: metadataNumber(metadata, `${arch}.attention.head_count_kv`, heads),
      headDim: metadataNumber(metadata, `${arch}.attention.key_length`, hidden / heads),
      rmsNormEps: metadataNumber(metadata, `${arch}.attention.layer_norm_rms_epsilon`, 1e-5),
      ropeTheta: metadataNumber(metadata, `${arch}.rope.freq_base`, 10000),
      ropeScaling,
      // llama.cpp stores llama/mistral q/k rows permuted for adjacent-pair rotation; qwen2 keeps HF's halves.
      ropeStyle: arch === 'qwen2' ? 'half' : 'interleaved',
      maxPositionEmbeddings: metadataNumber(metadata, `${arch}.context_length`, 2048),
      attentionBias: names.has('blk.0.attn_q.bias'),
      tieWordEmbeddings: !names.has('output.weight'),
      bosTokenId: typeof bos === 'number' ? bos : undefined,
      eosTokenIds: typeof eos === 'number' ? [eos] : [],
    });
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `invalid GGUF metadata: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const base = Number(parsed.tensorDataOffset);
  const tensors = new Map<string, StoredTensor>();
  for (const info of parsed.tensorInfos) {
    const name = canonicalName(info.name);
    if (!name) continue;
    const encoding = GGML_TYPES[info.dtype as number];
    if (!encoding) {
      const typeName = GGML_TYPE_NAMES[info.dtype as number] ?? `ggml type ${info.dtype}`;
      throw new DuoCheckpointError(
        path,
        info.name,
        `unsupported tensor type ${typeName} (supported: F32, F16, BF16, Q8_0)`,
      );
    }
    // GGUF lists dimensions fastest first; our shapes are row-major.
    const shape = info.shape.map(Number).reverse();
    tensors.set(name, { name: info.name, file: path, offset: base + Number(info.offset), encoding, shape });
  }
  checkTensorBounds(tensors.values());
  let tokenizer: Checkpoint['tokenizer'];
  try {
    tokenizer = ggufVocabularyTokenizer(metadata);
  } catch {
    tokenizer = undefined;
  }
  const template = metadata['tokenizer.chat_template'];
  return {
    format: 'gguf',
    source: path,
    config,
    tensors,
    tokenizer,
    chatTemplate: typeof template === 'string' ? template : undefined,
  };
}
