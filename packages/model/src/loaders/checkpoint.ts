// The checkpoint abstraction every loader produces: a config, tensors stored somewhere on disk, and a tokenizer.
import { closeSync, openSync, readSync } from 'node:fs';
import {
  type Backend,
  type DType,
  DuoCheckpointError,
  dequantizeWeights,
  isBlockDType,
  type ModelConfig,
  type TensorHandle,
  tensorByteLength,
  WEIGHT_FORMATS,
  type WeightFormat,
} from '@duoattn/core';
import { f16ToNumber, numberToBf16, numberToF16 } from '@duoattn/kernels';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { expectedTensors } from './names.js';

/**
 * How a tensor's bytes are laid out on disk: a float, or one of GGUF's block formats (`q8_0`: 32-value blocks of an
 * f16 scale and 32 int8; the k-quants `q4_k`, `q5_k`, `q6_k`: ADR 0010).
 */
export type StoredEncoding = 'f32' | 'f16' | 'bf16' | WeightFormat;

/** One tensor in a checkpoint file: where it is and how it is stored. Shapes are row-major. */
export interface StoredTensor {
  readonly name: string;
  readonly file: string;
  readonly offset: number;
  readonly encoding: StoredEncoding;
  readonly shape: readonly number[];
}

/** A checkpoint ready to load: canonical (HF Llama) tensor names → stored tensors. */
export interface Checkpoint {
  readonly format: 'hf' | 'gguf' | 'llama2c';
  /** The path the user gave. */
  readonly source: string;
  readonly config: ModelConfig;
  readonly tensors: ReadonlyMap<string, StoredTensor>;
  readonly tokenizer: Tokenizer | undefined;
  /** A HF chat template, when the checkpoint carries one. */
  readonly chatTemplate: string | undefined;
}

/** Bytes a stored tensor occupies. */
export function storedBytes(encoding: StoredEncoding, elements: number): number {
  return tensorByteLength(encoding, [elements]);
}

/** Elements of a tensor of `shape`. */
export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Looks a tensor up and checks its shape; the error names the file and the tensor. */
export function requireTensor(checkpoint: Checkpoint, name: string, shape: readonly number[]): StoredTensor {
  const tensor = checkpoint.tensors.get(name);
  if (!tensor) {
    throw new DuoCheckpointError(checkpoint.source, name, 'the tensor is missing from the checkpoint');
  }
  if (tensor.shape.length !== shape.length || tensor.shape.some((extent, i) => extent !== shape[i])) {
    throw new DuoCheckpointError(
      tensor.file,
      name,
      `expected shape [${shape.join(', ')}] but the checkpoint has [${tensor.shape.join(', ')}]`,
    );
  }
  return tensor;
}

/**
 * Returns `checkpoint` once every tensor its config implies is there with its shape, so that nothing is allocated for
 * a checkpoint that cannot load. The walk stops at the first missing layer, however many the config claims.
 */
export function checkCheckpointTensors(checkpoint: Checkpoint): Checkpoint {
  for (const { name, shape, required } of expectedTensors(checkpoint.config)) {
    if (required || checkpoint.tensors.has(name)) requireTensor(checkpoint, name, shape);
  }
  return checkpoint;
}

const CHUNK_BYTES = 64 << 20;

/** Converts stored bytes to the raw elements of `dtype` (f16/bf16 as bit patterns; a block format's own bytes). */
function decodeChunk(bytes: Buffer, encoding: StoredEncoding, dtype: DType): Float32Array | Uint16Array | Uint8Array {
  const aligned = new Uint8Array(bytes).buffer;
  if (encoding === dtype) {
    if (isBlockDType(dtype)) return new Uint8Array(aligned);
    return dtype === 'f32' ? new Float32Array(aligned) : new Uint16Array(aligned);
  }
  const values = toFloat32(aligned, encoding);
  if (dtype === 'f32') return values;
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++)
    out[i] = dtype === 'bf16' ? numberToBf16(values[i] ?? 0) : numberToF16(values[i] ?? 0);
  return out;
}

function toFloat32(buffer: ArrayBuffer, encoding: StoredEncoding): Float32Array {
  if (encoding === 'f32') return new Float32Array(buffer);
  if (encoding === 'bf16') {
    const bits = new Uint16Array(buffer);
    const out = new Uint32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = (bits[i] ?? 0) << 16;
    return new Float32Array(out.buffer);
  }
  if (encoding === 'f16') return Float32Array.from(new Uint16Array(buffer), f16ToNumber);
  // A block format: its reference decoder (whole blocks).
  const { blockBytes, blockValues } = WEIGHT_FORMATS[encoding];
  const values = (buffer.byteLength / blockBytes) * blockValues;
  return Float32Array.from(dequantizeWeights(encoding, new Uint8Array(buffer), values));
}

/**
 * Reads a stored tensor by offset, in pieces of at most 64 MiB, and uploads it to `backend` as `dtype`.
 * Never holds the whole file in memory.
 */
export function loadTensor(backend: Backend, stored: StoredTensor, dtype: DType): TensorHandle {
  const elements = elementCount(stored.shape);
  const blockElements = isBlockDType(stored.encoding) ? WEIGHT_FORMATS[stored.encoding].blockValues : 1;
  // write() addresses a block-format tensor by bytes, any other by elements.
  const unitsPerBlock = isBlockDType(dtype) ? storedBytes(stored.encoding, blockElements) : blockElements;
  const bytesPerBlock = storedBytes(stored.encoding, blockElements);
  const blocksPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / bytesPerBlock));
  return loadInto(backend, stored, dtype, stored.shape, (tensor, read) => {
    for (let block = 0; block * blockElements < elements; block += blocksPerChunk) {
      const blocks = Math.min(blocksPerChunk, elements / blockElements - block);
      const bytes = read(blocks * bytesPerBlock, stored.offset + block * bytesPerBlock);
      backend.write(tensor, decodeChunk(bytes, stored.encoding, dtype), block * unitsPerBlock);
    }
  });
}

/**
 * A new `shape` tensor of `dtype` that `fill` writes from the stored tensor's file (`read(length, position)`: exactly
 * that many bytes, or a DuoCheckpointError naming the file and tensor); freed again if filling fails.
 */
function loadInto(
  backend: Backend,
  stored: StoredTensor,
  dtype: DType,
  shape: readonly number[],
  fill: (tensor: TensorHandle, read: (length: number, position: number) => Buffer) => void,
): TensorHandle {
  const tensor = backend.alloc(dtype, shape);
  let fd: number | undefined;
  try {
    const file = openSync(stored.file, 'r');
    fd = file;
    fill(tensor, (length, position) => {
      const bytes = Buffer.alloc(length);
      const got = readSync(file, bytes, 0, length, position);
      if (got !== length) {
        throw new DuoCheckpointError(stored.file, stored.name, `short read: wanted ${length} bytes, got ${got}`);
      }
      return bytes;
    });
    return tensor;
  } catch (error) {
    tensor.dispose();
    throw error;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Rows `start` … `start + count − 1` of a stored matrix (entries, of a vector): the same file from a later offset. A
 * block format's rows hold whole blocks, so any row starts at a block.
 */
export function storedRows(stored: StoredTensor, start: number, count: number): StoredTensor {
  const [rows = 0, ...rest] = stored.shape;
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 1 || start + count > rows) {
    throw new DuoCheckpointError(
      stored.file,
      stored.name,
      `rows ${start} … ${start + count - 1} asked of a tensor of ${rows} rows`,
    );
  }
  const width = elementCount(rest);
  const offset = stored.offset + storedBytes(stored.encoding, start * width);
  return { ...stored, offset, shape: [count, ...rest] };
}

/**
 * Loads columns `start` … `start + count − 1` of a stored matrix as a `[rows, count]` tensor of `dtype`, reading bands
 * of whole rows and keeping each row's slice. In a block format the slice must start and end on block boundaries.
 */
export function loadTensorColumns(
  backend: Backend,
  stored: StoredTensor,
  dtype: DType,
  start: number,
  count: number,
): TensorHandle {
  const [rows = 0, width = 0] = stored.shape;
  const blockElements = isBlockDType(stored.encoding) ? WEIGHT_FORMATS[stored.encoding].blockValues : 1;
  if (stored.shape.length !== 2 || start < 0 || count < 1 || start + count > width) {
    throw new DuoCheckpointError(
      stored.file,
      stored.name,
      `columns ${start} … ${start + count - 1} asked of a tensor of shape [${stored.shape.join(', ')}]`,
    );
  }
  if (start % blockElements !== 0 || count % blockElements !== 0) {
    throw new DuoCheckpointError(
      stored.file,
      stored.name,
      `columns ${start} … ${start + count - 1} split the ${blockElements}-value blocks of ${stored.encoding}: a rank's share of this matrix's ${width} columns must be a whole number of blocks (fewer ranks, or another weight type)`,
    );
  }
  const rowBytes = storedBytes(stored.encoding, width);
  const sliceBytes = storedBytes(stored.encoding, count);
  const skipBytes = storedBytes(stored.encoding, start);
  const band = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes));
  // write() addresses a block-format tensor by bytes, any other by elements.
  const unitsPerRow = isBlockDType(dtype) ? sliceBytes : count;
  return loadInto(backend, stored, dtype, [rows, count], (tensor, read) => {
    for (let row = 0; row < rows; row += band) {
      const bandRows = Math.min(band, rows - row);
      const bytes = read(bandRows * rowBytes, stored.offset + row * rowBytes);
      const kept = Buffer.alloc(bandRows * sliceBytes);
      for (let r = 0; r < bandRows; r++)
        bytes.copy(kept, r * sliceBytes, r * rowBytes + skipBytes, r * rowBytes + skipBytes + sliceBytes);
      backend.write(tensor, decodeChunk(kept, stored.encoding, dtype), row * unitsPerRow);
    }
  });
}

/** Reads a stored tensor into host f32 (for small tensors such as norms and biases). */
export function readTensorF32(stored: StoredTensor): Float32Array {
  const bytes = Buffer.alloc(storedBytes(stored.encoding, elementCount(stored.shape)));
  const fd = openSync(stored.file, 'r');
  try {
    const got = readSync(fd, bytes, 0, bytes.length, stored.offset);
    if (got !== bytes.length) {
      throw new DuoCheckpointError(stored.file, stored.name, `short read: wanted ${bytes.length} bytes, got ${got}`);
    }
  } finally {
    closeSync(fd);
  }
  return toFloat32(new Uint8Array(bytes).buffer, stored.encoding);
}
