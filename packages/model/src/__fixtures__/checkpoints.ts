// Writes small random checkpoints for tests: HF safetensors (single or sharded, f32 / bf16 / f16), GGUF and llama2.c;
// and rewrites the headers of real ones, for the hostile-file tests.
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { dequantizeWeights, quantizeWeights, type WeightFormat } from '@duoattn/core';
import { numberToBf16, numberToF16 } from '@duoattn/kernels';
import { randomArray } from '@duoattn/kernels/testing';
import {
  encodeGgufTensor,
  type GgufMetadataValue,
  type GgufTensorType,
  ggufValue,
  ggufVocabularyMetadata as libraryVocabularyMetadata,
  llamaMetadata,
  writeGgufFile,
} from '../loaders/gguf-writer.js';
import { configFromHf } from '../loaders/hf.js';
import { LLAMA2C_HEADER_FIELDS } from '../loaders/llama2c.js';

export interface FixtureTensor {
  shape: number[];
  data: Float32Array;
}

/** HF-style config of a tiny model; `family` picks Llama (GQA, untied) or Qwen2 (q/k/v bias, tied). */
export function tinyConfig(family: 'llama' | 'qwen2', overrides: Partial<Record<string, number>> = {}) {
  return {
    model_type: family,
    vocab_size: 97,
    hidden_size: 48,
    intermediate_size: 80,
    num_hidden_layers: 2,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    head_dim: 8,
    rms_norm_eps: 1e-5,
    rope_theta: family === 'qwen2' ? 1000000 : 10000,
    max_position_embeddings: 256,
    tie_word_embeddings: family === 'qwen2',
    bos_token_id: 1,
    eos_token_id: 2,
    ...overrides,
  };
}

/** A tiny config with four KV heads (two ranks hold two each) and 16-channel heads: the CUDA parallel tests'. */
export const PARALLEL_CUDA_CONFIG = tinyConfig('llama', {
  num_attention_heads: 8,
  num_key_value_heads: 4,
  hidden_size: 128,
  intermediate_size: 256,
  head_dim: 16,
  max_position_embeddings: 512,
});

/** Random weights with HF names for a config from `tinyConfig`. */
export function randomWeights(config: ReturnType<typeof tinyConfig>, seed: number): Map<string, FixtureTensor> {
  const d = config.hidden_size;
  const q = config.num_attention_heads * config.head_dim;
  const kv = config.num_key_value_heads * config.head_dim;
  const f = config.intermediate_size;
  const tensors = new Map<string, FixtureTensor>();
  let next = seed;
  const add = (name: string, shape: number[], scale = 0.2, offset = 0) => {
    const data = randomArray(
      shape.reduce((a, b) => a * b, 1),
      next++,
      scale,
    ).map((v) => v + offset);
    tensors.set(name, { shape, data });
  };
  add('model.embed_tokens.weight', [config.vocab_size, d], 1);
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    const p = `model.layers.${layer}`;
    add(`${p}.input_layernorm.weight`, [d], 0.1, 1);
    add(`${p}.self_attn.q_proj.weight`, [q, d]);
    add(`${p}.self_attn.k_proj.weight`, [kv, d]);
    add(`${p}.self_attn.v_proj.weight`, [kv, d]);
    if (config.model_type === 'qwen2') {
      add(`${p}.self_attn.q_proj.bias`, [q], 0.5);
      add(`${p}.self_attn.k_proj.bias`, [kv], 0.5);
      add(`${p}.self_attn.v_proj.bias`, [kv], 0.5);
    }
    add(`${p}.self_attn.o_proj.weight`, [d, q]);
    add(`${p}.post_attention_layernorm.weight`, [d], 0.1, 1);
    add(`${p}.mlp.gate_proj.weight`, [f, d]);
    add(`${p}.mlp.up_proj.weight`, [f, d]);
    add(`${p}.mlp.down_proj.weight`, [d, f]);
  }
  add('model.norm.weight', [d], 0.1, 1);
  if (!config.tie_word_embeddings) add('lm_head.weight', [config.vocab_size, d], 0.5);
  return tensors;
}

/** The values a tensor holds once stored as `dtype` (rounded), as f32. */
export function rounded(data: Float32Array, dtype: 'F32' | 'BF16' | 'F16'): Float32Array {
  if (dtype === 'F32') return data;
  const view = new DataView(new ArrayBuffer(4));
  return Float32Array.from(data, (v) => {
    if (dtype === 'BF16') {
      view.setUint32(0, numberToBf16(v) << 16);
      return view.getFloat32(0);
    }
    const bits = numberToF16(v);
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    return exponent === 0 ? sign * 2 ** -14 * (mantissa / 1024) : sign * 2 ** (exponent - 15) * (1 + mantissa / 1024);
  });
}

function encode(data: Float32Array, dtype: 'F32' | 'BF16' | 'F16'): Buffer {
  if (dtype === 'F32') return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bits = Uint16Array.from(data, (v) => (dtype === 'BF16' ? numberToBf16(v) : numberToF16(v)));
  return Buffer.from(bits.buffer);
}

/** Writes one .safetensors file. `override` lets a test corrupt a header entry. */
export function writeSafetensors(
  path: string,
  tensors: Map<string, FixtureTensor>,
  dtype: 'F32' | 'BF16' | 'F16',
  override: Record<string, object> = {},
): void {
  const header: Record<string, object> = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const bytes = encode(tensor.data, dtype);
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.length], ...override[name] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([prefix, Buffer.from(json), ...parts]));
}

/** Writes a HF directory: config.json and one safetensors file, or `shards` files with an index. */
export function writeHfModel(
  directory: string,
  config: object,
  tensors: Map<string, FixtureTensor>,
  options: { dtype?: 'F32' | 'BF16' | 'F16'; shards?: number } = {},
): void {
  mkdirSync(directory, { recursive: true });
  writeFileSync(join(directory, 'config.json'), JSON.stringify(config));
  const dtype = options.dtype ?? 'F32';
  const shards = options.shards ?? 1;
  if (shards === 1) {
    writeSafetensors(join(directory, 'model.safetensors'), tensors, dtype);
    return;
  }
  const names = [...tensors.keys()];
  const weightMap: Record<string, string> = {};
  for (let shard = 0; shard < shards; shard++) {
    const file = `model-${String(shard + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = new Map(
      names.filter((_, i) => i % shards === shard).map((name) => [name, tensors.get(name) as FixtureTensor]),
    );
    for (const name of part.keys()) weightMap[name] = file;
    writeSafetensors(join(directory, file), part, dtype);
  }
  writeFileSync(
    join(directory, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
}

/** The values a round trip through a block format gives (what a GGUF file of that type holds). */
export function blockRounded(data: Float32Array, format: WeightFormat): Float32Array {
  return Float32Array.from(dequantizeWeights(format, quantizeWeights(format, data), data.length));
}

/** Encoded tensors by data and type: the fuzz suite rewrites one GGUF's metadata a thousand times. */
const ggufEncodings = new WeakMap<Float32Array, Map<GgufTensorType, Uint8Array>>();

function encodeGguf(data: Float32Array, type: GgufTensorType): Uint8Array {
  const cached = ggufEncodings.get(data) ?? new Map<GgufTensorType, Uint8Array>();
  ggufEncodings.set(data, cached);
  const bytes = cached.get(type) ?? encodeGgufTensor(type, data);
  cached.set(type, bytes);
  return bytes;
}

/** Encoders of GGUF metadata values (the library's, as bare bytes), for fixtures that add or corrupt entries. */
export const GGUF_VALUE = {
  u32: (value: number): Buffer => ggufValue.u32(value)[1],
  u64: (value: number | bigint): Buffer => ggufValue.u64(value)[1],
  f32: (value: number): Buffer => ggufValue.f32(value)[1],
  string: (text: string): Buffer => ggufValue.string(text)[1],
  /** An array (type 9) of values of `elementType`, each already encoded. */
  array: (elementType: number, values: readonly Buffer[]): Buffer =>
    ggufValue.array(
      values.map((bytes) => [elementType, bytes] as const),
      elementType,
    )[1],
};

/** GGUF metadata of a llama-model vocabulary (the library's), keyed by name. */
export function ggufVocabularyMetadata(pieces: readonly string[]): Record<string, readonly [number, Buffer]> {
  return Object.fromEntries(libraryVocabularyMetadata(pieces));
}

/** A tensor `writeGguf` writes; `offset` overrides the data offset its info declares (the data stays in place). */
export interface GgufFixtureTensor {
  name: string;
  shape: number[];
  data: Float32Array;
  type: GgufTensorType;
  offset?: number;
}

/**
 * Writes a GGUF v3 file with llama metadata for `config` and the given tensors (GGUF names). `metadata` adds or
 * replaces entries (key → [GGUF value type, encoded value]), or drops one (null).
 */
export function writeGguf(
  path: string,
  config: ReturnType<typeof tinyConfig>,
  tensors: GgufFixtureTensor[],
  metadataOverrides: Record<string, readonly [number, Buffer] | null> = {},
): void {
  const metadata: [string, GgufMetadataValue][] = llamaMetadata(configFromHf(config));
  for (const [key, override] of Object.entries(metadataOverrides)) {
    const index = metadata.findIndex(([name]) => name === key);
    if (index >= 0) metadata.splice(index, 1);
    if (override) metadata.push([key, override]);
  }
  writeGgufFile(
    path,
    metadata,
    tensors.map((tensor) => ({
      name: tensor.name,
      shape: tensor.shape,
      type: tensor.type,
      bytes: encodeGguf(tensor.data, tensor.type),
      ...(tensor.offset === undefined ? {} : { declaredOffset: tensor.offset }),
    })),
  );
}

/** GGUF names of the HF-named weights of `randomWeights`. */
const GGUF_LAYER_FIELDS: Record<string, string> = {
  input_layernorm: 'attn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  post_attention_layernorm: 'ffn_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};

/** The GGUF name of a HF (canonical) tensor name. */
export function ggufName(name: string): string {
  if (name === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (name === 'model.norm.weight') return 'output_norm.weight';
  if (name === 'lm_head.weight') return 'output.weight';
  const match = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(name);
  return match ? `blk.${match[1]}.${GGUF_LAYER_FIELDS[match[2] ?? '']}.weight` : name;
}

/** The weights of `randomWeights` as GGUF tensors: matrices as `type`, vectors as F32. */
export function ggufTensors(weights: Map<string, FixtureTensor>, type: GgufTensorType): GgufFixtureTensor[] {
  return [...weights].map(([name, tensor]) => ({
    name: ggufName(name),
    shape: tensor.shape,
    data: tensor.data,
    type: tensor.shape.length === 1 ? 'F32' : type,
  }));
}

/** The two parts of a .safetensors file: its JSON header text and its data bytes. */
export function readSafetensorsParts(file: string): { header: string; data: Buffer } {
  const bytes = readFileSync(file);
  const length = Number(bytes.readBigUInt64LE(0));
  return { header: bytes.subarray(8, 8 + length).toString('utf8'), data: bytes.subarray(8 + length) };
}

/** Writes `head`, then zeros up to `length` bytes as a sparse hole (header-only tests need no real data). */
export function writeSparseFile(path: string, head: Buffer, length: number): void {
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, head);
    ftruncateSync(fd, length);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a .safetensors file from a header text (space-padded to 8 bytes) and its data: bytes, or a byte count left as
 * a sparse run of zeros (header-only tests need no real weights). `lengthPrefix` overrides the 8-byte header length.
 */
export function writeSafetensorsParts(
  path: string,
  header: string,
  data: Buffer | number,
  lengthPrefix?: bigint,
): void {
  let text = Buffer.from(header);
  text = Buffer.concat([text, Buffer.alloc((8 - (text.length % 8)) % 8, ' ')]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthPrefix ?? BigInt(text.length));
  const head = Buffer.concat([prefix, text]);
  if (typeof data === 'number') writeSparseFile(path, head, head.length + data);
  else writeFileSync(path, Buffer.concat([head, data]));
}

/** The seven int32 of a llama2.c header (a negative `vocab_size` means an unshared classifier). */
export type Llama2cHeader = Record<(typeof LLAMA2C_HEADER_FIELDS)[number], number>;

/** A small llama2.c header (the shape of stories260K). */
export function tinyLlama2cHeader(overrides: Partial<Llama2cHeader> = {}): Llama2cHeader {
  return {
    dim: 64,
    hidden_dim: 172,
    n_layers: 5,
    n_heads: 8,
    n_kv_heads: 4,
    vocab_size: 512,
    seq_len: 512,
    ...overrides,
  };
}

/** The 28 bytes of a llama2.c header. */
export function llama2cHeaderBytes(header: Llama2cHeader): Buffer {
  const bytes = Buffer.alloc(28);
  LLAMA2C_HEADER_FIELDS.forEach((field, i) => {
    bytes.writeInt32LE(header[field], i * 4);
  });
  return bytes;
}

/** Bytes of the float32 weights (and RoPE tables) a well-formed llama2.c file with `header` holds after the header. */
export function llama2cWeightBytes(header: Llama2cHeader): number {
  const { dim, hidden_dim: hidden, n_layers: layers, n_heads: heads, n_kv_heads: kvHeads, seq_len: seqLen } = header;
  const vocab = Math.abs(header.vocab_size);
  const kvDim = (kvHeads * dim) / heads;
  const perLayer = 2 * dim + 2 * dim * dim + 2 * kvDim * dim + 3 * hidden * dim;
  const classifiers = header.vocab_size > 0 ? 1 : 2;
  return 4 * (classifiers * vocab * dim + layers * perLayer + dim + seqLen * (dim / heads));
}

/** Writes a llama2.c checkpoint with `header` and all-zero weights (a sparse file); `bytes` overrides its length. */
export function writeLlama2c(path: string, header: Llama2cHeader, bytes?: number): void {
  writeSparseFile(path, llama2cHeaderBytes(header), bytes ?? 28 + llama2cWeightBytes(header));
}

/** Writes a llama2.c tokenizer (`tok*.bin`): pieces with scores, byte tokens `<0x00>`… where `pieces` has them. */
export function writeLlama2cTokenizer(path: string, pieces: readonly string[]): void {
  const parts = [Buffer.alloc(4)];
  parts[0]?.writeInt32LE(Math.max(...pieces.map((piece) => Buffer.byteLength(piece))));
  pieces.forEach((piece, id) => {
    const record = Buffer.alloc(8);
    record.writeFloatLE(-id, 0);
    record.writeInt32LE(Buffer.byteLength(piece), 4);
    parts.push(record, Buffer.from(piece));
  });
  writeFileSync(path, Buffer.concat(parts));
}
