// HF checkpoint directories: config.json plus model.safetensors or a sharded model.safetensors.index.json.
import { existsSync, readFileSync } from 'node:fs';
import { DuoCheckpointError, DuoTokenizerError, type ModelConfig, type RopeScaling } from '@duoattn/core';
import { HfTokenizer } from '../tokenizers/hf-tokenizer.js';
import { type Checkpoint, checkCheckpointTensors, type StoredEncoding, type StoredTensor } from './checkpoint.js';
import {
  CONFIG_LIMITS,
  type ConfigFieldNames,
  checkModelConfig,
  checkNumber,
  checkShape,
  checkTensorLayout,
  type DataArea,
  describeValue,
  FieldReader,
  fileInsideDirectory,
  isRecord,
  readExactly,
  regularFileSize,
  tensorBytes,
  withFile,
} from './validate.js';

const SAFETENSORS_TYPES: Record<string, StoredEncoding> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
/** The largest header accepted, as in the reference implementation (huggingface/safetensors). */
const MAX_HEADER_BYTES = 100 << 20;

/** HF config.json names of the ModelConfig fields, for messages. */
const HF_FIELDS: ConfigFieldNames = {
  vocabSize: 'vocab_size',
  hiddenSize: 'hidden_size',
  numHeads: 'num_attention_heads',
  numKvHeads: 'num_key_value_heads',
  headDim: 'head_dim',
  bosTokenId: 'bos_token_id',
  eosTokenIds: 'eos_token_id',
};

/**
 * Reads one .safetensors header: tensor name → stored tensor. The header must be a JSON object of entries with a
 * supported dtype, a shape and data_offsets that cover the data area back to back, as the format requires.
 */
export function readSafetensorsHeader(file: string): StoredTensor[] {
  return withFile(file, (fd, size) => {
    if (size < 8) throw new DuoCheckpointError(file, undefined, 'file too short for a safetensors header');
    const length = readExactly(fd, file, 8, 0).readBigUInt64LE(0);
    if (length === 0n || length > BigInt(Math.min(size - 8, MAX_HEADER_BYTES))) {
      throw new DuoCheckpointError(
        file,
        undefined,
        `corrupt safetensors header length ${length} (the file has ${size} bytes; a header has at most 100 MiB)`,
      );
    }
    const header = parseHeader(file, readExactly(fd, file, Number(length), 8));
    const area = { start: 8 + Number(length), end: size, contiguous: true };
    const tensors = Object.entries(header)
      .filter(([name]) => name !== '__metadata__')
      .map(([name, entry]) => headerEntry(file, name, entry, area));
    checkTensorLayout(file, tensors, area);
    return tensors;
  });
}

function parseHeader(file: string, bytes: Buffer): Record<string, unknown> {
  let header: unknown;
  try {
    header = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new DuoCheckpointError(file, undefined, `corrupt safetensors header: ${(error as Error).message}`, {
      cause: error,
    });
  }
  if (!isRecord(header)) {
    throw new DuoCheckpointError(
      file,
      undefined,
      `corrupt safetensors header: expected a JSON object of tensors but found ${describeValue(header)}`,
    );
  }
  if (header.__metadata__ !== undefined && !isRecord(header.__metadata__)) {
    throw new DuoCheckpointError(
      file,
      undefined,
      `expected \`__metadata__\` to be an object but found ${describeValue(header.__metadata__)}`,
    );
  }
  return header;
}

function headerEntry(file: string, name: string, entry: unknown, area: DataArea): StoredTensor {
  if (!isRecord(entry)) {
    throw new DuoCheckpointError(
      file,
      name,
      `expected an object with dtype, shape and data_offsets but found ${describeValue(entry)}`,
    );
  }
  const encoding = typeof entry.dtype === 'string' ? SAFETENSORS_TYPES[entry.dtype] : undefined;
  if (!encoding) {
    const dtype = typeof entry.dtype === 'string' ? entry.dtype : describeValue(entry.dtype);
    throw new DuoCheckpointError(file, name, `unsupported dtype ${dtype} (supported: F32, F16, BF16)`);
  }
  const shape = checkShape(file, name, entry.shape);
  const offsets = entry.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    throw new DuoCheckpointError(
      file,
      name,
      `expected \`data_offsets\` to be [begin, end] but found ${describeValue(offsets)}`,
    );
  }
  const dataBytes = area.end - area.start;
  const [begin, end] = offsets.map((offset, i) =>
    checkNumber(file, `data_offsets[${i}]`, offset, { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER }, name),
  ) as [number, number];
  const bytes = tensorBytes(file, name, encoding, shape, dataBytes);
  if (end - begin !== bytes) {
    throw new DuoCheckpointError(
      file,
      name,
      `data_offsets span ${end - begin} bytes but shape [${shape.join(', ')}] needs ${bytes}`,
    );
  }
  return { name, file, offset: area.start + begin, encoding, shape };
}

function ropeScaling(file: string, raw: unknown): RopeScaling {
  if (raw === undefined || raw === null) return { type: 'none' };
  if (!isRecord(raw)) {
    throw new DuoCheckpointError(
      file,
      undefined,
      `expected \`rope_scaling\` to be an object but found ${describeValue(raw)}`,
    );
  }
  const fields = new FieldReader(file, raw, '', 'rope_scaling.');
  const type = fields.raw('rope_type') ?? fields.raw('type');
  if (type === 'default' || type === undefined) return { type: 'none' };
  const factor = fields.number('factor', CONFIG_LIMITS.ropeScalingFactor, 1);
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: fields.number('low_freq_factor', CONFIG_LIMITS.ropeScalingFactor, 1),
      highFreqFactor: fields.number('high_freq_factor', CONFIG_LIMITS.ropeScalingFactor, 4),
      originalMaxPositionEmbeddings: fields.number(
        'original_max_position_embeddings',
        CONFIG_LIMITS.maxPositionEmbeddings,
        8192,
      ),
    };
  }
  throw new DuoCheckpointError(
    file,
    undefined,
    `rope_scaling type ${describeValue(type)} is not supported (linear, llama3)`,
  );
}

/** Maps a HF config.json (llama, mistral, qwen2) onto ModelConfig, checking every field; `file` names it in errors. */
export function configFromHf(raw: unknown, file = 'config.json'): ModelConfig {
  if (!isRecord(raw)) {
    throw new DuoCheckpointError(file, undefined, `expected a JSON object but found ${describeValue(raw)}`);
  }
  const fields = new FieldReader(file, raw);
  const modelType = fields.string('model_type', 'llama');
  if (modelType !== 'llama' && modelType !== 'mistral' && modelType !== 'qwen2') {
    throw new DuoCheckpointError(file, undefined, `model_type "${modelType}" is not supported (llama, mistral, qwen2)`);
  }
  const heads = fields.number('num_attention_heads', CONFIG_LIMITS.numHeads);
  const hidden = fields.number('hidden_size', CONFIG_LIMITS.hiddenSize);
  const config: ModelConfig = {
    architecture: modelType,
    vocabSize: fields.number('vocab_size', CONFIG_LIMITS.vocabSize),
    hiddenSize: hidden,
    intermediateSize: fields.number('intermediate_size', CONFIG_LIMITS.intermediateSize),
    numLayers: fields.number('num_hidden_layers', CONFIG_LIMITS.numLayers),
    numHeads: heads,
    numKvHeads: fields.number('num_key_value_heads', CONFIG_LIMITS.numKvHeads, heads),
    headDim: fields.number('head_dim', CONFIG_LIMITS.headDim, hidden / heads),
    rmsNormEps: fields.number('rms_norm_eps', CONFIG_LIMITS.rmsNormEps, 1e-6),
    ropeTheta: fields.number('rope_theta', CONFIG_LIMITS.ropeTheta, 10000),
    ropeScaling: ropeScaling(file, raw.rope_scaling),
    ropeStyle: 'half',
    maxPositionEmbeddings: fields.number('max_position_embeddings', CONFIG_LIMITS.maxPositionEmbeddings, 2048),
    attentionBias: modelType === 'qwen2' ? true : fields.boolean('attention_bias', false),
    tieWordEmbeddings: fields.boolean('tie_word_embeddings', false),
    bosTokenId: fields.optionalNumber('bos_token_id', CONFIG_LIMITS.tokenId),
    eosTokenIds: fields.tokenIds('eos_token_id'),
  };
  return checkModelConfig(file, config, HF_FIELDS);
}

function readJson(path: string): unknown {
  regularFileSize(path);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `cannot read JSON: ${(error as Error).message}`, { cause: error });
  }
}

/** The safetensors files of a model directory: model.safetensors, or the shards its index lists (all inside it). */
function safetensorsFiles(directory: string): string[] {
  const single = fileInsideDirectory(directory, 'model.safetensors', directory);
  if (existsSync(single)) return [single];
  const indexPath = fileInsideDirectory(directory, 'model.safetensors.index.json', directory);
  if (!existsSync(indexPath)) {
    throw new DuoCheckpointError(directory, undefined, 'no model.safetensors or model.safetensors.index.json');
  }
  const index = readJson(indexPath);
  const weightMap = isRecord(index) ? index.weight_map : undefined;
  if (!isRecord(weightMap) || Object.keys(weightMap).length === 0) {
    throw new DuoCheckpointError(
      indexPath,
      undefined,
      `expected \`weight_map\` to map tensor names to shard files but found ${describeValue(weightMap)}`,
    );
  }
  const files = [...new Set(Object.values(weightMap))].map((file) => fileInsideDirectory(directory, file, indexPath));
  for (const file of files) {
    if (!existsSync(file)) throw new DuoCheckpointError(file, undefined, 'shard listed in the index is missing');
  }
  return files;
}

/** Opens a HF model directory: every file it reads must lie inside it, every header and field is checked. */
export function openHf(directory: string): Checkpoint {
  const configPath = fileInsideDirectory(directory, 'config.json', directory);
  if (!existsSync(configPath)) throw new DuoCheckpointError(directory, undefined, 'no config.json in the directory');
  const config = configFromHf(readJson(configPath), configPath);
  const tensors = new Map<string, StoredTensor>();
  for (const file of safetensorsFiles(directory)) {
    for (const tensor of readSafetensorsHeader(file)) {
      const earlier = tensors.get(tensor.name);
      if (earlier) throw new DuoCheckpointError(file, tensor.name, `the tensor is also in ${earlier.file}`);
      tensors.set(tensor.name, tensor);
    }
  }
  const tokenizer = hfTokenizer(directory, config);
  return checkCheckpointTensors({
    format: 'hf',
    source: directory,
    config,
    tensors,
    tokenizer,
    chatTemplate: tokenizer?.chatTemplate,
  });
}

/** The directory's tokenizer, if it has a tokenizer.json; one with more tokens than the model's vocabulary is refused. */
function hfTokenizer(directory: string, config: ModelConfig): HfTokenizer | undefined {
  const path = fileInsideDirectory(directory, 'tokenizer.json', directory);
  fileInsideDirectory(directory, 'tokenizer_config.json', directory);
  if (!existsSync(path)) return undefined;
  const tokenizer = new HfTokenizer(directory, { eosTokenIds: config.eosTokenIds, bosTokenId: config.bosTokenId });
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new DuoTokenizerError(
      `${path}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${config.vocabSize}`,
    );
  }
  return tokenizer;
}
