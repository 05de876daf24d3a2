// HF checkpoint directories: config.json plus model.safetensors or a sharded model.safetensors.index.json.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { DuoCheckpointError, type ModelConfig, type RopeScaling, validateModelConfig } from '@duoattn/core';
import { HfTokenizer } from '../tokenizers/hf-tokenizer.js';
import { type Checkpoint, checkTensorBounds, type StoredEncoding, type StoredTensor } from './checkpoint.js';

const SAFETENSORS_TYPES: Record<string, StoredEncoding> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** Reads one .safetensors header: tensor name → stored tensor. */
export function readSafetensorsHeader(file: string): StoredTensor[] {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const prefix = Buffer.alloc(8);
    if (readSync(fd, prefix, 0, 8, 0) !== 8)
      throw new DuoCheckpointError(file, undefined, 'file too short for a safetensors header');
    const headerLength = Number(prefix.readBigUInt64LE(0));
    if (headerLength <= 0 || 8 + headerLength > size || headerLength > 100 << 20) {
      throw new DuoCheckpointError(
        file,
        undefined,
        `corrupt safetensors header length ${headerLength} (file has ${size} bytes)`,
      );
    }
    const headerBytes = Buffer.alloc(headerLength);
    readSync(fd, headerBytes, 0, headerLength, 8);
    let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    try {
      header = JSON.parse(headerBytes.toString('utf8'));
    } catch (error) {
      throw new DuoCheckpointError(file, undefined, `corrupt safetensors header: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const base = 8 + headerLength;
    return Object.entries(header)
      .filter(([name]) => name !== '__metadata__')
      .map(([name, entry]) => {
        const encoding = SAFETENSORS_TYPES[entry.dtype];
        if (!encoding) {
          throw new DuoCheckpointError(file, name, `unsupported dtype ${entry.dtype} (supported: F32, F16, BF16)`);
        }
        const [begin, end] = entry.data_offsets;
        const expected = entry.shape.reduce((a, b) => a * b, 1) * (encoding === 'f32' ? 4 : 2);
        if (end - begin !== expected) {
          throw new DuoCheckpointError(
            file,
            name,
            `data_offsets span ${end - begin} bytes but shape [${entry.shape}] needs ${expected}`,
          );
        }
        return { name, file, offset: base + begin, encoding, shape: entry.shape };
      });
  } finally {
    closeSync(fd);
  }
}

function ropeScaling(raw: Record<string, unknown> | null | undefined): RopeScaling {
  if (!raw) return { type: 'none' };
  const type = (raw.rope_type ?? raw.type) as string | undefined;
  const factor = Number(raw.factor ?? 1);
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: Number(raw.low_freq_factor ?? 1),
      highFreqFactor: Number(raw.high_freq_factor ?? 4),
      originalMaxPositionEmbeddings: Number(raw.original_max_position_embeddings ?? 8192),
    };
  }
  if (type === 'default' || type === undefined) return { type: 'none' };
  throw new Error(`rope_scaling type "${type}" is not supported (linear, llama3)`);
}

/** Maps a HF config.json onto ModelConfig (llama, mistral, qwen2). */
export function configFromHf(raw: Record<string, unknown>): ModelConfig {
  const modelType = String(raw.model_type ?? 'llama');
  if (modelType !== 'llama' && modelType !== 'mistral' && modelType !== 'qwen2') {
    throw new Error(`model_type "${modelType}" is not supported (llama, mistral, qwen2)`);
  }
  const heads = Number(raw.num_attention_heads);
  const hidden = Number(raw.hidden_size);
  const eos = raw.eos_token_id;
  return validateModelConfig({
    architecture: modelType,
    vocabSize: Number(raw.vocab_size),
    hiddenSize: hidden,
    intermediateSize: Number(raw.intermediate_size),
    numLayers: Number(raw.num_hidden_layers),
    numHeads: heads,
    numKvHeads: Number(raw.num_key_value_heads ?? heads),
    headDim: Number(raw.head_dim ?? hidden / heads),
    rmsNormEps: Number(raw.rms_norm_eps ?? 1e-6),
    ropeTheta: Number(raw.rope_theta ?? 10000),
    ropeScaling: ropeScaling(raw.rope_scaling as Record<string, unknown> | undefined),
    ropeStyle: 'half',
    maxPositionEmbeddings: Number(raw.max_position_embeddings ?? 2048),
    attentionBias: modelType === 'qwen2' ? true : Boolean(raw.attention_bias),
    tieWordEmbeddings: Boolean(raw.tie_word_embeddings ?? false),
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : undefined,
    eosTokenIds: Array.isArray(eos) ? eos.map(Number) : typeof eos === 'number' ? [eos] : [],
  });
}

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `cannot read JSON: ${(error as Error).message}`, { cause: error });
  }
}

/** Opens a HF model directory. */
export function openHf(directory: string): Checkpoint {
  const configPath = join(directory, 'config.json');
  if (!existsSync(configPath)) throw new DuoCheckpointError(directory, undefined, 'no config.json in the directory');
  let config: ModelConfig;
  try {
    config = configFromHf(readJson(configPath));
  } catch (error) {
    if (error instanceof DuoCheckpointError) throw error;
    throw new DuoCheckpointError(configPath, undefined, (error as Error).message, { cause: error });
  }
  const single = join(directory, 'model.safetensors');
  const indexPath = join(directory, 'model.safetensors.index.json');
  let files: string[];
  if (existsSync(single)) {
    files = [single];
  } else if (existsSync(indexPath)) {
    const weightMap = readJson(indexPath).weight_map as Record<string, string> | undefined;
    if (!weightMap) throw new DuoCheckpointError(indexPath, undefined, 'no weight_map in the index');
    files = [...new Set(Object.values(weightMap))].map((file) => join(directory, file));
    for (const file of files) {
      if (!existsSync(file)) throw new DuoCheckpointError(file, undefined, 'shard listed in the index is missing');
    }
  } else {
    throw new DuoCheckpointError(directory, undefined, 'no model.safetensors or model.safetensors.index.json');
  }
  const tensors = new Map<string, StoredTensor>();
  for (const file of files) for (const tensor of readSafetensorsHeader(file)) tensors.set(tensor.name, tensor);
  checkTensorBounds(tensors.values());
  let tokenizer: HfTokenizer | undefined;
  if (existsSync(join(directory, 'tokenizer.json')))
    tokenizer = new HfTokenizer(directory, { eosTokenIds: config.eosTokenIds, bosTokenId: config.bosTokenId });
  return { format: 'hf', source: directory, config, tensors, tokenizer, chatTemplate: tokenizer?.chatTemplate };
}
