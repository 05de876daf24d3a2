// The KV quantization schemes' storage: bytes per token per KV head for keys (values take the same again), and the
// int4 group layout. The memory planner and the kernels both read these, so the byte counts are the one definition.
import { type DType, DuoArgumentError, dtypeBytes, KV_QUANT_SCHEMES, type KvQuantScheme } from '@duoattn/core';

/** Channels per int4 group: the reference's 128, or the whole head when it is narrower. */
export const INT4_GROUP = 128;

/** Bytes of one fp16 scale or zero. */
const HALF = 2;

/** Checks that `value` names a scheme. */
export function expectKvQuantScheme(value: unknown): KvQuantScheme {
  if (typeof value !== 'string' || !(KV_QUANT_SCHEMES as readonly string[]).includes(value)) {
    throw new DuoArgumentError(
      'kvQuant',
      `Expected \`kvQuant\` to be one of ${KV_QUANT_SCHEMES.join(', ')} but received ${String(value)}`,
    );
  }
  return value as KvQuantScheme;
}

/** int4 groups of one head: ⌈headDim / 128⌉ groups of equal width (the last may be narrower). */
export function int4Groups(headDim: number): { count: number; width: number } {
  const width = Math.min(INT4_GROUP, headDim);
  return { count: Math.ceil(headDim / width), width };
}

/**
 * Bytes one token's keys (or values) take in one KV head: `none` stores `cacheDtype`; int8 and fp8 one byte per
 * channel plus an fp16 scale; int4 half a byte per channel plus an fp16 scale and zero per group (68 B at head dim 128,
 * as METHOD.md gives for the reference).
 */
export function kvBytesPerTokenHead(scheme: KvQuantScheme, headDim: number, cacheDtype: DType = 'bf16'): number {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new DuoArgumentError('headDim', `Expected an even \`headDim\` ≥ 2 but received ${String(headDim)}`);
  }
  switch (expectKvQuantScheme(scheme)) {
    case 'none':
      return headDim * dtypeBytes(cacheDtype);
    case 'int8':
    case 'fp8':
      return headDim + HALF;
    case 'int4':
      return headDim / 2 + int4Groups(headDim).count * 2 * HALF;
  }
}
