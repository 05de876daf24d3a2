// GGUF checkpoints: metadata → config, tensor infos → stored tensors, embedded vocabulary → tokenizer.
import { DuoCheckpointError, type ModelConfig } from '@duoattn/core';
import { gguf } from '@huggingface/gguf';
import { ggufVocabularyTokenizer } from '../tokenizers/score-bpe.js';
import { type Checkpoint, checkCheckpointTensors, type StoredEncoding, type StoredTensor } from './checkpoint.js';
import { walkGgufHeader } from './gguf-header.js';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './names.js';
import {
  CONFIG_LIMITS,
  checkModelConfig,
  checkNumber,
  checkShape,
  checkTensorLayout,
  type DataArea,
  describeValue,
  FieldReader,
  tensorBytes,
  withFile,
} from './validate.js';

// GGML type ids (ggml.h) for the encodings we read.
const GGML_TYPES: Record<number, StoredEncoding> = {
  0: 'f32',
  1: 'f16',
  8: 'q8_0',
  12: 'q4_k',
  13: 'q5_k',
  14: 'q6_k',
  30: 'bf16',
};
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

/** Opens a GGUF file (architectures llama, mistral, qwen2; tensors F32, F16, BF16, Q8_0), checking it throughout. */
export async function openGguf(path: string): Promise<Checkpoint> {
  const { size, headerEnd } = withFile(path, (fd, size) => ({ size, headerEnd: walkGgufHeader(path, fd, size) }));
  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(path, { allowLocalFile: true });
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `not a readable GGUF file: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const metadata = parsed.metadata as unknown as Record<string, unknown>;
  const root = new FieldReader(path, metadata);
  const alignment = root.number('general.alignment', { integer: true, min: 1, max: 2 ** 30 }, 32);
  if ((alignment & (alignment - 1)) !== 0) {
    throw new DuoCheckpointError(
      path,
      undefined,
      `expected \`general.alignment\` to be a power of two but found ${alignment}`,
    );
  }
  const arch = root.string('general.architecture');
  if (arch !== 'llama' && arch !== 'mistral' && arch !== 'qwen2') {
    throw new DuoCheckpointError(path, undefined, `architecture "${arch}" is not supported (llama, mistral, qwen2)`);
  }
  const config = ggufConfig(path, metadata, arch, parsed.tensorInfos);
  const tensors = ggufTensors(path, parsed.tensorInfos, {
    start: Math.ceil(headerEnd / alignment) * alignment,
    end: size,
    alignment,
  });
  const tokenizer = metadata['tokenizer.ggml.model'] === 'llama' ? ggufVocabularyTokenizer(metadata, path) : undefined;
  const template = metadata['tokenizer.chat_template'];
  return checkCheckpointTensors({
    format: 'gguf',
    source: path,
    config,
    tensors,
    tokenizer,
    chatTemplate: typeof template === 'string' ? template : undefined,
  });
}

type TensorInfo = Awaited<ReturnType<typeof gguf>>['tensorInfos'][number];

/** The model's config from `<arch>.*` metadata, each value range-checked and named by its key. */
function ggufConfig(
  path: string,
  metadata: Record<string, unknown>,
  arch: ModelConfig['architecture'],
  infos: TensorInfo[],
) {
  const fields = new FieldReader(path, metadata, `${arch}.`);
  const root = new FieldReader(path, metadata);
  const names = new Set(infos.map((t) => t.name));
  const embedding = infos.find((t) => t.name === 'token_embd.weight');
  const heads = fields.number('attention.head_count', CONFIG_LIMITS.numHeads);
  const hidden = fields.number('embedding_length', CONFIG_LIMITS.hiddenSize);
  const tokens = metadata['tokenizer.ggml.tokens'];
  const scalingType = fields.raw('rope.scaling.type') ?? 'none';
  if (scalingType !== 'none' && scalingType !== 'linear') {
    throw new DuoCheckpointError(
      path,
      undefined,
      `${arch}.rope.scaling.type ${describeValue(scalingType)} is not supported (none, linear)`,
    );
  }
  const config: ModelConfig = {
    architecture: arch,
    vocabSize: Array.isArray(tokens)
      ? checkNumber(path, 'tokenizer.ggml.tokens (its length)', tokens.length, CONFIG_LIMITS.vocabSize)
      : fields.number('vocab_size', CONFIG_LIMITS.vocabSize, embedding ? Number(embedding.shape[1]) : undefined),
    hiddenSize: hidden,
    intermediateSize: fields.number('feed_forward_length', CONFIG_LIMITS.intermediateSize),
    numLayers: fields.number('block_count', CONFIG_LIMITS.numLayers),
    numHeads: heads,
    numKvHeads: fields.number('attention.head_count_kv', CONFIG_LIMITS.numKvHeads, heads),
    headDim: fields.number('attention.key_length', CONFIG_LIMITS.headDim, hidden / heads),
    rmsNormEps: fields.number('attention.layer_norm_rms_epsilon', CONFIG_LIMITS.rmsNormEps, 1e-5),
    ropeTheta: fields.number('rope.freq_base', CONFIG_LIMITS.ropeTheta, 10000),
    ropeScaling:
      scalingType === 'linear'
        ? { type: 'linear', factor: fields.number('rope.scaling.factor', CONFIG_LIMITS.ropeScalingFactor) }
        : { type: 'none' },
    // llama.cpp stores llama/mistral q/k rows permuted for adjacent-pair rotation; qwen2 keeps HF's halves.
    ropeStyle: arch === 'qwen2' ? 'half' : 'interleaved',
    maxPositionEmbeddings: fields.number('context_length', CONFIG_LIMITS.maxPositionEmbeddings, 2048),
    attentionBias: names.has('blk.0.attn_q.bias'),
    tieWordEmbeddings: !names.has('output.weight'),
    bosTokenId: root.optionalNumber('tokenizer.ggml.bos_token_id', CONFIG_LIMITS.tokenId),
    eosTokenIds: root.tokenIds('tokenizer.ggml.eos_token_id'),
  };
  return checkModelConfig(path, config, {
    vocabSize: 'tokenizer.ggml.tokens',
    numHeads: `${arch}.attention.head_count`,
    numKvHeads: `${arch}.attention.head_count_kv`,
    headDim: `${arch}.attention.key_length`,
    bosTokenId: 'tokenizer.ggml.bos_token_id',
    eosTokenIds: 'tokenizer.ggml.eos_token_id',
  });
}

/** Stored tensors by canonical name; every tensor of a known type is checked to lie, aligned and alone, in `area`. */
function ggufTensors(path: string, infos: TensorInfo[], area: DataArea): Map<string, StoredTensor> {
  const tensors = new Map<string, StoredTensor>();
  const known: StoredTensor[] = [];
  const seen = new Set<string>();
  for (const info of infos) {
    if (seen.has(info.name)) throw new DuoCheckpointError(path, info.name, 'the tensor is listed twice');
    seen.add(info.name);
    const name = canonicalName(info.name);
    const encoding = GGML_TYPES[info.dtype as number];
    if (!encoding) {
      if (!name) continue;
      const typeName = GGML_TYPE_NAMES[info.dtype as number] ?? `ggml type ${info.dtype}`;
      throw new DuoCheckpointError(
        path,
        info.name,
        `unsupported tensor type ${typeName} (supported: F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K)`,
      );
    }
    // GGUF lists dimensions fastest first; our shapes are row-major.
    const shape = checkShape(path, info.name, info.shape).reverse();
    tensorBytes(path, info.name, encoding, shape, area.end);
    const offset = checkNumber(path, 'offset', info.offset, { integer: true, min: 0, max: area.end }, info.name);
    const stored = { name: info.name, file: path, offset: area.start + offset, encoding, shape };
    known.push(stored);
    if (name) tensors.set(name, stored);
  }
  checkTensorLayout(path, known, area);
  return tensors;
}
