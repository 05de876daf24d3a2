// Element types the backends store, with their sizes and the tolerances the conformance suite uses.

/** Element type of a tensor. Weights keep their checkpoint dtype; activations are f32; u8 holds quantized KV codes. */
export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';

/** Every dtype, in a stable order (the native addon uses these indices). */
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8'];

/** Bytes per element of `dtype`. */
export function dtypeBytes(dtype: DType): number {
  if (dtype === 'u8') return 1;
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
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
