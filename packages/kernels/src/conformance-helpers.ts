// Helpers the conformance suites share: uploading values in a dtype (and what it then holds), reading f32 back, and
// viewing a cache as per-head position vectors for the float64 references.
import type { DType } from '@duoattn/core';
import type { NativeBackend } from './native-backend.js';
import type { Tensor } from './tensor.js';
import { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from './testing/reference.js';

/** Uploads f32 values as `dtype`, returning the tensor and the values it really holds (after rounding). */
export function uploadAs(
  backend: NativeBackend,
  dtype: DType,
  shape: number[],
  values: Float32Array,
): [Tensor, Float64Array] {
  if (dtype === 'f32') return [backend.upload('f32', shape, values), Float64Array.from(values)];
  const encode = dtype === 'bf16' ? numberToBf16 : numberToF16;
  const decode = dtype === 'bf16' ? bf16ToNumber : f16ToNumber;
  const bits = Uint16Array.from(values, (v) => encode(v));
  return [backend.upload(dtype, shape, bits), Float64Array.from(bits, (b) => decode(b))];
}

export async function readF32(backend: NativeBackend, tensor: Tensor): Promise<Float32Array> {
  return (await backend.read(tensor)) as Float32Array;
}

/** A cache `[kvHeads, capacity, headDim]` flattened, as per-head lists of position vectors. */
export function perHead(held: Float64Array, kvHeads: number, capacity: number, headDim: number): Float64Array[][] {
  return Array.from({ length: kvHeads }, (_, h) =>
    Array.from({ length: capacity }, (_, j) =>
      held.slice((h * capacity + j) * headDim, (h * capacity + j + 1) * headDim),
    ),
  );
}
