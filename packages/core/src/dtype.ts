// Element types the backends store, with their sizes and the tolerances the conformance suite uses.
import { WEIGHT_FORMATS, type WeightFormat, weightFormatBytes } from './weight-formats.js';

/** A dtype with a whole number of bytes per element. */
export type ElementDType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';

/**
 * Element type of a tensor. Weights keep their checkpoint dtype — a float, or a GGUF block format kept quantized
 * (`q8_0`, `q4_k`, `q5_k`, `q6_k`: rows of whole blocks, ADR 0010); activations are f32; u8 holds quantized KV codes.
 */
export type DType = ElementDType | WeightFormat;

/** Every dtype, in a stable order. */
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8', 'q8_0', 'q4_k', 'q5_k', 'q6_k'];

/** Whether `dtype` is a block format (bytes come by whole blocks of a row, not per element). */
export function isBlockDType(dtype: DType): dtype is WeightFormat {
  return dtype in WEIGHT_FORMATS;
}

/** Bytes per element of `dtype` (a block format has none: tensorByteLength and bytesPerValue count its blocks). */
export function dtypeBytes(dtype: DType): number {
  if (isBlockDType(dtype)) {
    throw new RangeError(`${dtype} stores whole blocks, not elements: count its bytes with tensorByteLength`);
  }
  if (dtype === 'u8') return 1;
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}

/** Bytes per value on average: a block format's block bytes over its values (Q8_0: 34 / 32). For bandwidth floors. */
export function bytesPerValue(dtype: DType): number {
  if (!isBlockDType(dtype)) return dtypeBytes(dtype);
  const { blockBytes, blockValues } = WEIGHT_FORMATS[dtype];
  return blockBytes / blockValues;
}

/** Bytes of a tensor of `dtype` and `shape` (a block format's rows — the last dimension — must hold whole blocks). */
export function tensorByteLength(dtype: DType, shape: readonly number[]): number {
  const size = shape.reduce((a, b) => a * b, 1);
  if (!isBlockDType(dtype)) return size * dtypeBytes(dtype);
  weightFormatBytes(dtype, shape[shape.length - 1] ?? 0); // refuses a row of partial blocks
  return weightFormatBytes(dtype, size);
}

/** Whether `value` names a dtype. */
export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && (DTYPES as readonly string[]).includes(value);
}

/** Where a tensor lives. */
export type DeviceKind = 'cpu' | 'cuda';

/**
 * How a KV cache stores keys and values: `none` in the cache dtype; `int8` symmetric per (token, KV head) with an fp16
 * scale; `int4` asymmetric per (token, KV head, group of ≤ 128 channels) with fp16 scale and zero, two codes per byte
 * (the DuoAttention reference's layout); `fp8` e4m3 per (token, KV head) with an fp16 scale.
 */
export type KvQuantScheme = 'none' | 'int8' | 'int4' | 'fp8';
