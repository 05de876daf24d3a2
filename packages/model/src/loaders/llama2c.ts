// llama2.c checkpoints: a 7-int32 header, then every weight as float32 in a fixed order.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DuoArgumentError, DuoCheckpointError } from '@duoattn/core';
import { loadLlama2cTokenizer } from '../tokenizers/score-bpe.js';
import { type Checkpoint, checkCheckpointTensors, elementCount, type StoredTensor } from './checkpoint.js';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './names.js';
import {
  CONFIG_LIMITS,
  type ConfigFieldNames,
  checkModelConfig,
  checkNumber,
  checkTensorLayout,
  FieldReader,
  readExactly,
  withFile,
} from './validate.js';

/** Options of `openLlama2c`. */
export interface Llama2cOptions {
  /** The tokenizer file; default: `tok<vocab>.bin`, then `tokenizer.bin`, beside the checkpoint. */
  tokenizerPath?: string;
}

/** The header's int32 fields, in file order. */
export const LLAMA2C_HEADER_FIELDS = [
  'dim',
  'hidden_dim',
  'n_layers',
  'n_heads',
  'n_kv_heads',
  'vocab_size',
  'seq_len',
] as const;
const HEADER_BYTES = LLAMA2C_HEADER_FIELDS.length * 4;

/** llama2.c header names of the ModelConfig fields, for messages. */
const LLAMA2C_FIELDS: ConfigFieldNames = {
  vocabSize: 'vocab_size',
  hiddenSize: 'dim',
  numHeads: 'n_heads',
  numKvHeads: 'n_kv_heads',
  headDim: 'dim / n_heads',
};

/** The header's fields, each range-checked; the file's size comes along for the size check. */
function readHeader(path: string) {
  const { bytes, size } = withFile(path, (fd, size) => {
    if (size < HEADER_BYTES) {
      throw new DuoCheckpointError(path, undefined, `file too short for a llama2.c header (${HEADER_BYTES} bytes)`);
    }
    return { bytes: readExactly(fd, path, HEADER_BYTES, 0), size };
  });
  const fields = new FieldReader(
    path,
    Object.fromEntries(LLAMA2C_HEADER_FIELDS.map((field, i) => [field, bytes.readInt32LE(i * 4)])),
  );
  const dim = fields.number('dim', CONFIG_LIMITS.hiddenSize);
  const heads = fields.number('n_heads', CONFIG_LIMITS.numHeads);
  const signedVocab = fields.number('vocab_size', { integer: true });
  return {
    size,
    dim,
    hidden: fields.number('hidden_dim', CONFIG_LIMITS.intermediateSize),
    layers: fields.number('n_layers', CONFIG_LIMITS.numLayers),
    heads,
    kvHeads: fields.number('n_kv_heads', CONFIG_LIMITS.numKvHeads),
    // A negative vocab_size says the classifier is not shared with the embedding.
    vocab: checkNumber(path, 'vocab_size (its magnitude)', Math.abs(signedVocab), CONFIG_LIMITS.vocabSize),
    shared: signedVocab > 0,
    seqLen: fields.number('seq_len', CONFIG_LIMITS.maxPositionEmbeddings),
    headDim: checkNumber(path, 'dim / n_heads', dim / heads, CONFIG_LIMITS.headDim),
  };
}

/** Opens a llama2.c `.bin` checkpoint (legacy export: float32, shared classifier when vocab_size > 0). */
export function openLlama2c(path: string, options: Llama2cOptions = {}): Checkpoint {
  const { size, dim, hidden, layers, heads, kvHeads, vocab, shared, seqLen, headDim } = readHeader(path);
  const config = checkModelConfig(
    path,
    {
      architecture: 'llama',
      vocabSize: vocab,
      hiddenSize: dim,
      intermediateSize: hidden,
      numLayers: layers,
      numHeads: heads,
      numKvHeads: kvHeads,
      headDim,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: { type: 'none' },
      ropeStyle: 'interleaved',
      maxPositionEmbeddings: seqLen,
      attentionBias: false,
      tieWordEmbeddings: shared,
      bosTokenId: 1,
      eosTokenIds: [2],
    },
    LLAMA2C_FIELDS,
  );
  const kvDim = kvHeads * headDim;
  // Per-layer weights in file order: each kind for every layer, then the next kind.
  const layerShapes: [keyof ReturnType<typeof layerNames>, number[]][] = [
    ['attentionNorm', [dim]],
    ['query', [dim, dim]],
    ['key', [kvDim, dim]],
    ['value', [kvDim, dim]],
    ['output', [dim, dim]],
    ['mlpNorm', [dim]],
    ['gate', [hidden, dim]],
    ['down', [dim, hidden]],
    ['up', [hidden, dim]],
  ];
  // The header alone fixes the file's size: check it before a tensor is listed (a corrupt n_layers would list billions).
  const layerElements = layerShapes.reduce((sum, [, shape]) => sum + elementCount(shape), 0);
  const ropeTables = seqLen * headDim; // freq_cis_real and freq_cis_imag, which we recompute
  const implied = HEADER_BYTES + 4 * ((shared ? 1 : 2) * vocab * dim + layers * layerElements + dim + ropeTables);
  if (implied > size) {
    throw new DuoCheckpointError(
      path,
      undefined,
      `the header (dim ${dim}, hidden_dim ${hidden}, n_layers ${layers}, n_heads ${heads}, n_kv_heads ${kvHeads}, ` +
        `vocab_size ${shared ? vocab : -vocab}, seq_len ${seqLen}) implies ${implied} bytes but the file has ${size}`,
    );
  }
  const tensors = new Map<string, StoredTensor>();
  let offset = HEADER_BYTES;
  const add = (name: string, shape: number[]) => {
    tensors.set(name, { name, file: path, offset, encoding: 'f32', shape });
    offset += elementCount(shape) * 4;
  };
  add(EMBEDDING, [vocab, dim]);
  for (const [field, shape] of layerShapes) {
    for (let layer = 0; layer < layers; layer++) add(layerNames(layer)[field], shape);
  }
  add(FINAL_NORM, [dim]);
  offset += ropeTables * 4;
  if (!shared) add(LM_HEAD, [vocab, dim]);
  checkTensorLayout(path, [...tensors.values()], { start: HEADER_BYTES, end: size });
  return checkCheckpointTensors({
    format: 'llama2c',
    source: path,
    config,
    tensors,
    tokenizer: llama2cTokenizer(path, vocab, options.tokenizerPath),
    chatTemplate: undefined,
  });
}

/** The tokenizer named by `tokenizerPath` (which must exist), else `tok<vocab>.bin` or `tokenizer.bin` beside `path`. */
function llama2cTokenizer(path: string, vocab: number, tokenizerPath: string | undefined) {
  if (tokenizerPath !== undefined && !existsSync(tokenizerPath)) {
    throw new DuoArgumentError(
      'tokenizerPath',
      `Expected \`tokenizerPath\` to name a llama2.c tokenizer file but ${tokenizerPath} does not exist`,
    );
  }
  const candidates = tokenizerPath
    ? [tokenizerPath]
    : [join(dirname(path), `tok${vocab}.bin`), join(dirname(path), 'tokenizer.bin')];
  const found = candidates.find((candidate) => existsSync(candidate));
  return found ? loadLlama2cTokenizer(found, vocab) : undefined;
}
