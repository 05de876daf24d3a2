// Element types the backends store, with their sizes and the tolerances the conformance suite uses.

/** Element type of a tensor. Weights keep their checkpoint dtype; activations are f32. */
export type DType = 'f32' | 'f16' | 'bf16' | 'i32';

/** Every dtype, in a stable order (the native addon uses these indices). */
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32'];

/** Bytes per element of `dtype`. */
export function dtypeBytes(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}

/** Whether `value` names a dtype. */
export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && (DTYPES as readonly string[]).includes(value);
}

/** Where a tensor lives. */
export type DeviceKind = 'cpu' | 'cuda';
