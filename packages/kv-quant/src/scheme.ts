// The KV quantization schemes' descriptors — the one definition every layer imports: which schemes exist, how one
// token's keys (or values) of one KV head are laid out in planes, their bytes, and the check of a scheme's name. The
// memory planner, the dual cache and the kernels' argument checks all read these (docs/decisions/0006-kv-quantization.md).
import { type DType, DuoArgumentError, dtypeBytes, type KvQuantScheme } from '@duoattn/core';

/** Every KV quantization scheme. */
export const KV_QUANT_SCHEMES: readonly KvQuantScheme[] = ['none', 'int8', 'int4', 'fp8'];

/** Channels per int4 group: the reference's 128, or the whole head when it is narrower. */
export const INT4_GROUP = 128;

/**
 * Checks that `value` names a scheme (`argument` names the option in the message); with `quantizing`, 'none' is
 * refused too (the caller needs codes and scales).
 */
export function expectKvQuantScheme(value: unknown, argument?: string): KvQuantScheme;
export function expectKvQuantScheme(value: unknown, argument: string, quantizing: true): Exclude<KvQuantScheme, 'none'>;
export function expectKvQuantScheme(value: unknown, argument = 'kvQuant', quantizing = false): KvQuantScheme {
  const allowed = quantizing ? KV_QUANT_SCHEMES.filter((scheme) => scheme !== 'none') : KV_QUANT_SCHEMES;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new DuoArgumentError(
      argument,
      `Expected \`${argument}\` to be one of ${allowed.join(', ')} but received ${String(value)}`,
    );
  }
  return value as KvQuantScheme;
}

/**
 * How one token's keys (or values) of one KV head are stored under a quantizing scheme: `codeBytes` bytes of codes
 * (one per channel; int4 two per byte) and `scaleHalves` fp16 values (one scale; int4 a scale and a zero per group of
 * `groupWidth` channels). The cache keeps them as two planes.
 */
export function kvQuantLayout(
  scheme: Exclude<KvQuantScheme, 'none'>,
  headDim: number,
): { codeBytes: number; scaleHalves: number; groupWidth: number } {
  if (scheme === 'int4') {
    const groupWidth = Math.min(INT4_GROUP, headDim);
    return { codeBytes: headDim / 2, scaleHalves: 2 * Math.ceil(headDim / groupWidth), groupWidth };
  }
  return { codeBytes: headDim, scaleHalves: 1, groupWidth: headDim };
}

/** One plane of a cache: its element dtype and elements per token and head. */
export interface KvPlane {
  readonly dtype: DType;
  readonly width: number;
}

/** The planes that hold one token's keys (or values) in one KV head: one row of `dtype`, or codes then fp16 scales. */
export function kvPlanes(headDim: number, dtype: DType, kvQuant: KvQuantScheme = 'none'): KvPlane[] {
  const scheme = expectKvQuantScheme(kvQuant);
  if (scheme === 'none') return [{ dtype, width: headDim }];
  const { codeBytes, scaleHalves } = kvQuantLayout(scheme, headDim);
  return [
    { dtype: 'u8', width: codeBytes },
    { dtype: 'f16', width: scaleHalves },
  ];
}

/** Bytes of one token in one KV head over all planes. */
export function kvRowBytes(planes: readonly KvPlane[]): number {
  return planes.reduce((sum, plane) => sum + plane.width * dtypeBytes(plane.dtype), 0);
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
  return kvRowBytes(kvPlanes(headDim, cacheDtype, scheme));
}
