// Argument checks that run in TypeScript before a native call, with messages that name the argument.
import { type DType, DuoArgumentError } from '@duoattn/core';
import { Tensor } from './tensor.js';

/** The float dtypes weights and caches may have. */
export const FLOAT_TYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
export const F32: readonly DType[] = ['f32'];
export const I32: readonly DType[] = ['i32'];

/** What an op expects of one tensor argument; a `null` extent matches any size. */
export interface TensorExpectation {
  dtypes?: readonly DType[];
  shape?: readonly (number | null)[];
  /** Expected element count, when the shape may vary. */
  size?: number;
}

function shapeText(shape: readonly (number | null | string)[]): string {
  return `[${shape.map((extent) => (extent === null ? 'n' : String(extent))).join(', ')}]`;
}

/** Checks that `value` is a live Tensor on `device` matching `expectation`; returns its native id. */
export function expectTensor(
  argument: string,
  value: unknown,
  device: string,
  expectation: TensorExpectation = {},
): number {
  if (!(value instanceof Tensor)) {
    throw new DuoArgumentError(argument, `Expected a Tensor for \`${argument}\` but received ${describeValue(value)}`);
  }
  const id = value.liveId(argument);
  const { dtypes, shape, size } = expectation;
  const dtypeOk = !dtypes || dtypes.includes(value.dtype);
  const shapeOk =
    !shape ||
    (shape.length === value.shape.length && shape.every((extent, i) => extent === null || extent === value.shape[i]));
  const sizeOk = size === undefined || size === value.size;
  if (!dtypeOk || !shapeOk || !sizeOk) {
    const wantedType = dtypes ? dtypes.join('/') : value.dtype;
    const wantedShape = shape ? ` of shape ${shapeText(shape)}` : size !== undefined ? ` of ${size} elements` : '';
    throw new DuoArgumentError(
      argument,
      `Expected a ${wantedType} tensor${wantedShape} for \`${argument}\` but received ${value.dtype} ${shapeText(value.shape)}`,
    );
  }
  if (value.device !== device) {
    throw new DuoArgumentError(
      argument,
      `Expected \`${argument}\` on ${device} but received a tensor on ${value.device}`,
    );
  }
  return id;
}

/** Checks that `value` is an integer in [min, max]. */
export function expectInteger(argument: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new DuoArgumentError(
      argument,
      `Expected \`${argument}\` to be an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? '∞' : max}] but received ${describeValue(value)}`,
    );
  }
  return value;
}

/** Checks that `value` is a finite number greater than `exclusiveMin`. */
export function expectPositive(argument: string, value: unknown, exclusiveMin = 0): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= exclusiveMin) {
    throw new DuoArgumentError(
      argument,
      `Expected \`${argument}\` to be a finite number > ${exclusiveMin} but received ${describeValue(value)}`,
    );
  }
  return value;
}

/** Short description of any value for an error message. */
export function describeValue(value: unknown): string {
  if (value instanceof Tensor) return `a tensor ${value.describe()}`;
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'Object'})`;
  if (typeof value === 'string') return `"${value.length > 40 ? `${value.slice(0, 40)}…` : value}"`;
  return String(value);
}

/** Outputs of a backward op must not share memory with the inputs it still reads. */
export function expectDistinct(tensors: Record<string, Tensor>): void {
  const entries = Object.entries(tensors);
  for (let a = 0; a < entries.length; a++) {
    for (let b = a + 1; b < entries.length; b++) {
      const [nameA, tensorA] = entries[a] as [string, Tensor];
      const [nameB, tensorB] = entries[b] as [string, Tensor];
      if (tensorA === tensorB) {
        throw new DuoArgumentError(nameB, `Expected \`${nameB}\` and \`${nameA}\` to be different tensors`);
      }
    }
  }
}
