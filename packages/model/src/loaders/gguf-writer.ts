// Writes GGUF v3 files: llama metadata from a ModelConfig, a SentencePiece-style vocabulary, and tensors in F32, F16,
// BF16 or a block format (Q8_0, Q4_K, Q5_K, Q6_K; @duoattn/core's weight-formats). Tests write small models with it,
// and the benchmarks one random-weight file of a named shape that both engines load. Files stream to disk, so an 8B
// model is never held whole.
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import {
  type DType,
  isBlockDType,
  type ModelConfig,
  numberToBf16,
  numberToF16,
  quantizeWeights,
  randomNormal,
  seededUniform,
  storedWeightFormat,
  tensorByteLength,
  WEIGHT_FORMATS,
} from '@duoattn/core';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './names.js';

/** Tensor encodings the writer stores. */
export type GgufTensorType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_K' | 'Q5_K' | 'Q6_K';

/** Our dtype of a GGUF type: the same name in lower case. */
const dtypeOf = (type: GgufTensorType) => type.toLowerCase() as DType;

/** GGML type ids (ggml.h): the plain types', and the block formats' from core's WEIGHT_FORMATS. */
export const GGML_TYPE_IDS: Readonly<Record<GgufTensorType, number>> = {
  F32: 0,
  F16: 1,
  BF16: 30,
  Q8_0: WEIGHT_FORMATS.q8_0.ggmlType,
  Q4_K: WEIGHT_FORMATS.q4_k.ggmlType,
  Q5_K: WEIGHT_FORMATS.q5_k.ggmlType,
  Q6_K: WEIGHT_FORMATS.q6_k.ggmlType,
};

/** Throws unless `type` is one of GgufTensorType's names (a JavaScript caller's 'f16' would write a header that lies). */
function expectTensorType(what: string, type: string): void {
  if (!Object.hasOwn(GGML_TYPE_IDS, type)) {
    throw new RangeError(
      `${what}: expected a GGUF tensor type (${Object.keys(GGML_TYPE_IDS).join(', ')}) but received ${JSON.stringify(type)}`,
    );
  }
}

/** Values along a row that one block of `type` holds (1 for the plain types). */
export function ggufBlockValues(type: GgufTensorType): number {
  const dtype = dtypeOf(type);
  return isBlockDType(dtype) ? WEIGHT_FORMATS[dtype].blockValues : 1;
}

/** `values` encoded as `type` (little-endian; block types need whole blocks). */
export function encodeGgufTensor(type: GgufTensorType, values: ArrayLike<number>): Uint8Array {
  const dtype = dtypeOf(type);
  if (isBlockDType(dtype)) return quantizeWeights(dtype, values);
  if (type === 'F32') return new Uint8Array(Float32Array.from(values).buffer);
  const convert = type === 'BF16' ? numberToBf16 : numberToF16;
  return new Uint8Array(Uint16Array.from(Array.from(values, convert)).buffer);
}

/** A metadata value as GGUF stores it: its value type id and its encoded bytes. */
export type GgufMetadataValue = readonly [type: number, bytes: Buffer];

/** Encoders of GGUF metadata values (v3, little-endian). */
export const ggufValue = {
  u32(value: number): GgufMetadataValue {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(value);
    return [4, bytes];
  },
  u64(value: number | bigint): GgufMetadataValue {
    const bytes = Buffer.alloc(8);
    bytes.writeBigUInt64LE(BigInt(value));
    return [10, bytes];
  },
  i32(value: number): GgufMetadataValue {
    const bytes = Buffer.alloc(4);
    bytes.writeInt32LE(value);
    return [5, bytes];
  },
  f32(value: number): GgufMetadataValue {
    const bytes = Buffer.alloc(4);
    bytes.writeFloatLE(value);
    return [6, bytes];
  },
  string(text: string): GgufMetadataValue {
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
    return [8, Buffer.concat([length, Buffer.from(text)])];
  },
  /** An array of values of one type. */
  array(values: readonly GgufMetadataValue[], elementType = values[0]?.[0] ?? 4): GgufMetadataValue {
    const head = Buffer.alloc(12);
    head.writeUInt32LE(elementType, 0);
    head.writeBigUInt64LE(BigInt(values.length), 4);
    return [9, Buffer.concat([head, ...values.map(([, bytes]) => bytes)])];
  },
};

/** One tensor of a file: GGUF name, shape outermost first (as our tensors are), type and its encoded bytes. */
export interface GgufTensorEntry {
  readonly name: string;
  readonly shape: readonly number[];
  readonly type: GgufTensorType;
  /** The bytes, whole or as pieces written one after another (a large tensor need not exist in one buffer). */
  readonly bytes: Uint8Array | (() => Iterable<Uint8Array>);
  /** Bytes the pieces add up to (required with a function). */
  readonly byteLength?: number;
  /** The data offset the tensor info declares, where a test wants it to lie; the data stays in place. */
  readonly declaredOffset?: number;
}

/** Bytes a tensor of `type` and `shape` takes (a block type's rows hold whole blocks). */
export function ggufTensorBytes(type: GgufTensorType, shape: readonly number[]): number {
  return tensorByteLength(dtypeOf(type), shape);
}

/** Writes all of `bytes` (one write(2) may take fewer than asked: a full disk, or past 2 GiB). */
function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) {
    const wrote = writeSync(fd, bytes, done, bytes.length - done);
    if (wrote <= 0) throw new Error(`short write: ${done} of ${bytes.length} bytes`);
    done += wrote;
  }
}

/**
 * Writes a GGUF v3 file: the header, then each tensor's bytes padded to `alignment` (declared as general.alignment when
 * not GGUF's default 32); `onTensor(done, total)` after each tensor (progress on large files). Every tensor's byte
 * count is checked against its shape and type before anything is written; a file that fails midway is removed.
 */
export function writeGgufFile(
  path: string,
  metadata: readonly (readonly [string, GgufMetadataValue])[],
  tensors: readonly GgufTensorEntry[],
  options: { alignment?: number; onTensor?: (done: number, total: number) => void } = {},
): void {
  const alignment = options.alignment ?? 32;
  const padding = (length: number) => (alignment - (length % alignment)) % alignment;
  const { u32, u64, string } = ggufValue;
  const entries = alignment === 32 ? metadata : [...metadata, ['general.alignment', u32(alignment)] as const];
  const head: Buffer[] = [Buffer.from('GGUF'), u32(3)[1], u64(tensors.length)[1], u64(entries.length)[1]];
  for (const [key, [type, bytes]] of entries) head.push(string(key)[1], u32(type)[1], bytes);
  for (const tensor of tensors) expectTensorType(`writeGgufFile: tensor ${tensor.name}`, tensor.type);
  let offset = 0;
  for (const tensor of tensors) {
    const length = tensor.bytes instanceof Uint8Array ? tensor.bytes.length : tensor.byteLength;
    const expected = ggufTensorBytes(tensor.type, tensor.shape);
    if (length !== expected) {
      throw new RangeError(
        `GGUF tensor ${tensor.name}: ${tensor.type} [${tensor.shape.join(', ')}] takes ${expected} bytes but ${length ?? 'no byteLength'} were given`,
      );
    }
    const dims = [...tensor.shape].reverse();
    head.push(string(tensor.name)[1], u32(dims.length)[1], ...dims.map((d) => u64(d)[1]));
    head.push(u32(GGML_TYPE_IDS[tensor.type])[1], u64(tensor.declaredOffset ?? offset)[1]);
    offset += length + padding(length);
  }
  const header = Buffer.concat(head);
  const fd = openSync(path, 'w');
  let complete = false;
  try {
    writeAll(fd, Buffer.concat([header, Buffer.alloc(padding(header.length))]));
    for (const [index, tensor] of tensors.entries()) {
      let written = 0;
      for (const piece of tensor.bytes instanceof Uint8Array ? [tensor.bytes] : tensor.bytes()) {
        writeAll(fd, piece);
        written += piece.length;
      }
      if (written !== tensor.byteLength && !(tensor.bytes instanceof Uint8Array))
        throw new RangeError(`GGUF tensor ${tensor.name}: its pieces held ${written} bytes of ${tensor.byteLength}`);
      writeAll(fd, Buffer.alloc(padding(written)));
      options.onTensor?.(index + 1, tensors.length);
    }
    complete = true;
  } finally {
    closeSync(fd);
    if (!complete) rmSync(path, { force: true });
  }
}

/**
 * A SentencePiece-style ("llama") vocabulary of `size` pieces that llama.cpp and our loader both accept: `<unk>`,
 * `<s>`, `</s>`, the 256 byte pieces `<0x00>` … `<0xFF>`, then filler pieces `▁w<N>`.
 */
export function fillerVocabulary(size: number): string[] {
  const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const pieces = ['<unk>', '<s>', '</s>', ...bytes];
  for (let n = 0; pieces.length < size; n++) pieces.push(`\u2581w${n}`);
  return pieces.slice(0, size);
}

/**
 * GGUF metadata of a llama-model vocabulary: `pieces` with descending scores, `<0xNN>` pieces typed as bytes; with
 * `markSpecial`, `<unk>` as unknown and `<s>`, `</s>` as control tokens (else every other piece is normal).
 */
export function ggufVocabularyMetadata(pieces: readonly string[], markSpecial = false): [string, GgufMetadataValue][] {
  const { array, f32, string, u32 } = ggufValue;
  const typed = (piece: string) => {
    if (/^<0x[0-9A-F]{2}>$/.test(piece)) return 6;
    if (markSpecial && piece === '<unk>') return 2;
    return markSpecial && /^<\/?s>$/.test(piece) ? 3 : 1;
  };
  return [
    ['tokenizer.ggml.model', string('llama')],
    ['tokenizer.ggml.tokens', array(pieces.map(string))],
    ['tokenizer.ggml.scores', array(pieces.map((_, id) => f32(-id)))],
    ['tokenizer.ggml.token_type', array(pieces.map((piece) => ggufValue.i32(typed(piece))))],
    ['tokenizer.ggml.bos_token_id', u32(1)],
    ['tokenizer.ggml.eos_token_id', u32(2)],
  ];
}

/**
 * llama metadata for `config` (architecture, sizes, RoPE base, norm epsilon, a head dim other than hidden / heads) —
 * what the loaders read back as a config. RoPE scaling and biases are not written (writeRandomGguf refuses them).
 */
export function llamaMetadata(config: ModelConfig): [string, GgufMetadataValue][] {
  const { f32, string, u32 } = ggufValue;
  return [
    ['general.architecture', string('llama')],
    ['llama.context_length', u32(config.maxPositionEmbeddings)],
    ['llama.embedding_length', u32(config.hiddenSize)],
    ['llama.feed_forward_length', u32(config.intermediateSize)],
    ['llama.block_count', u32(config.numLayers)],
    ['llama.attention.head_count', u32(config.numHeads)],
    ['llama.attention.head_count_kv', u32(config.numKvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', f32(config.rmsNormEps)],
    ['llama.rope.freq_base', f32(config.ropeTheta)],
    // A head dim other than hidden / heads (both readers take key_length / value_length when given).
    ...(config.headDim * config.numHeads === config.hiddenSize
      ? []
      : ([
          ['llama.attention.key_length', u32(config.headDim)],
          ['llama.attention.value_length', u32(config.headDim)],
        ] as [string, GgufMetadataValue][])),
  ];
}

/** The GGUF name of one of our canonical (HF) tensor names. */
export function ggufTensorName(name: string): string {
  if (name === EMBEDDING) return 'token_embd.weight';
  if (name === FINAL_NORM) return 'output_norm.weight';
  if (name === LM_HEAD) return 'output.weight';
  const match = /^model\.layers\.(\d+)\./.exec(name);
  if (!match) return name;
  const layer = Number(match[1]);
  const names = layerNames(layer) as Record<string, string>;
  const field = Object.entries(names).find(([, canonical]) => canonical === name)?.[0];
  return field && GGUF_FIELDS[field]
    ? `blk.${layer}.${GGUF_FIELDS[field]}.${name.endsWith('bias') ? 'bias' : 'weight'}`
    : name;
}

const GGUF_FIELDS: Record<string, string> = {
  attentionNorm: 'attn_norm',
  query: 'attn_q',
  key: 'attn_k',
  value: 'attn_v',
  output: 'attn_output',
  mlpNorm: 'ffn_norm',
  gate: 'ffn_gate',
  up: 'ffn_up',
  down: 'ffn_down',
  queryBias: 'attn_q',
  keyBias: 'attn_k',
  valueBias: 'attn_v',
};

/** The type a matrix is stored as when `type` is asked for (core's storedWeightFormat: our Q8_0 / F16 fallbacks). */
export function storedType(type: GgufTensorType, shape: readonly number[]): GgufTensorType {
  const dtype = dtypeOf(type);
  if (!isBlockDType(dtype)) return type;
  const stored = storedWeightFormat(dtype, shape[shape.length - 1] ?? 0);
  return stored ? (WEIGHT_FORMATS[stored].ggmlName as GgufTensorType) : 'F16';
}

/** Options of `writeRandomGguf`. */
export interface RandomGgufOptions {
  /** The matrices' type (vectors stay F32; matrices whose rows a block format cannot split fall back: storedType). */
  readonly type: GgufTensorType;
  /** Seed of the random values (default 1). */
  readonly seed?: number;
  /** Standard deviation of the matrices' values (default 0.02); norms are 1. */
  readonly std?: number;
  /** Distinct random values the matrices are windows into (default 2²⁰): encoded once, so writing runs at disk speed. */
  readonly poolValues?: number;
  /** Called after each tensor is written: tensors done, and of how many. */
  readonly onTensor?: (done: number, total: number) => void;
}

/**
 * Writes a llama model of `config`'s shape with random weights as GGUF: the filler vocabulary, norms of 1, and each
 * matrix a run of block-aligned windows into one pool of normal values encoded once per stored type.
 */
export function writeRandomGguf(path: string, config: ModelConfig, options: RandomGgufOptions): void {
  const { type, seed = 1, std = 0.02, poolValues = 1 << 20 } = options;
  expectTensorType('writeRandomGguf: options.type', type);
  // The file is a llama of this shape: what a llama GGUF here cannot say is refused rather than dropped.
  if (config.attentionBias)
    throw new RangeError('writeRandomGguf: q/k/v biases are not written (a llama GGUF has none here)');
  if (config.ropeScaling.type !== 'none') {
    throw new RangeError(`writeRandomGguf: RoPE scaling '${config.ropeScaling.type}' is not written (expected none)`);
  }
  if (!Number.isInteger(poolValues) || poolValues < 256 || poolValues % 256 !== 0) {
    throw new RangeError(`writeRandomGguf: poolValues must be a positive multiple of 256, not ${poolValues}`);
  }
  // One stream for the pool and the windows, so a seed gives one file.
  const uniform = seededUniform(seed);
  const pool = randomNormal(poolValues, std, uniform);
  const encodedPools = new Map<GgufTensorType, Uint8Array>();
  const matrix = (name: string, rows: number, columns: number): GgufTensorEntry => {
    const stored = storedType(type, [rows, columns]);
    const encoded = encodedPools.get(stored) ?? encodeGgufTensor(stored, pool);
    encodedPools.set(stored, encoded);
    const blockValues = ggufBlockValues(stored);
    const blockBytes = encoded.length / (poolValues / blockValues);
    const blocks = (rows * columns) / blockValues;
    const poolBlocks = poolValues / blockValues;
    return {
      name,
      shape: [rows, columns],
      type: stored,
      byteLength: blocks * blockBytes,
      *bytes() {
        for (let done = 0; done < blocks; ) {
          const start = Math.floor(uniform() * poolBlocks);
          const count = Math.min(blocks - done, poolBlocks - start);
          yield encoded.subarray(start * blockBytes, (start + count) * blockBytes);
          done += count;
        }
      },
    };
  };
  const norm = (name: string): GgufTensorEntry => ({
    name,
    shape: [config.hiddenSize],
    type: 'F32',
    bytes: encodeGgufTensor('F32', new Float32Array(config.hiddenSize).fill(1)),
  });
  const { hiddenSize: hidden, headDim, numHeads, numKvHeads, intermediateSize: ffn, vocabSize } = config;
  const tensors: GgufTensorEntry[] = [matrix('token_embd.weight', vocabSize, hidden)];
  for (let layer = 0; layer < config.numLayers; layer++) {
    const blk = `blk.${layer}`;
    tensors.push(
      norm(`${blk}.attn_norm.weight`),
      matrix(`${blk}.attn_q.weight`, numHeads * headDim, hidden),
      matrix(`${blk}.attn_k.weight`, numKvHeads * headDim, hidden),
      matrix(`${blk}.attn_v.weight`, numKvHeads * headDim, hidden),
      matrix(`${blk}.attn_output.weight`, hidden, numHeads * headDim),
      norm(`${blk}.ffn_norm.weight`),
      matrix(`${blk}.ffn_gate.weight`, ffn, hidden),
      matrix(`${blk}.ffn_up.weight`, ffn, hidden),
      matrix(`${blk}.ffn_down.weight`, hidden, ffn),
    );
  }
  tensors.push(norm('output_norm.weight'));
  if (!config.tieWordEmbeddings) tensors.push(matrix('output.weight', vocabSize, hidden));
  const metadata = [...llamaMetadata(config), ...ggufVocabularyMetadata(fillerVocabulary(vocabSize), true)];
  writeGgufFile(path, metadata, tensors, options.onTensor ? { onTensor: options.onTensor } : {});
}
