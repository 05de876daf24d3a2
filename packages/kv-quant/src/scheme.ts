// The KV quantization schemes' storage: bytes per token per KV head for keys (values take the same again), and the
// int4 group layout. The memory planner and the kernels both read these, so the byte counts are the one definition.
import {
  type DType,
  DuoArgumentError,
  dtypeBytes,
  INT4_GROUP,
  KV_QUANT_SCHEMES,
  type KvQuantScheme,
  kvQuantLayout,
} from '@duoattn/core';

export { INT4_GROUP };

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
  const { scaleHalves, groupWidth } = kvQuantLayout('int4', headDim);
  return { count: scaleHalves / 2, width: groupWidth };
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
  const checked = expectKvQuantScheme(scheme);
  if (checked === 'none') return headDim * dtypeBytes(cacheDtype);
  const { codeBytes, scaleHalves } = kvQuantLayout(checked, headDim);
  return codeBytes + 2 * scaleHalves;
}
