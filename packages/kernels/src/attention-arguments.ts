// Argument checks of the attention ops (and of the ops that write their caches): heads, the streaming heads' region,
// a quantized cache's scale planes. Each returns what the addon takes (ids, NativeFields) or throws DuoArgumentError.
import {
  type AttentionAttributes,
  type ContextShard,
  type DeviceKind,
  DuoArgumentError,
  heldPositions,
  type KvQuantScheme,
  type PartialAttentionAttributes,
  type QuantizedKv,
  type StreamingHeads,
} from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/kv-quant';
import type { NativeFields } from './native.js';
import type { Tensor } from './tensor.js';
import { describeValue, expectInteger, expectPositive, expectTensor, F32, FLOAT_TYPES } from './validate.js';

/**
 * Checks `streaming` against the main caches and returns it as the addon takes it (the same fields, the caches as
 * ids), or undefined when every head is full.
 */
export function streamingFields(
  device: DeviceKind,
  streaming: StreamingHeads | undefined,
  kvHeads: number,
  keyCache: Tensor,
  rows: number,
): NativeFields<StreamingHeads> | undefined {
  if (streaming === undefined) return undefined;
  const { sink, recent, mask = 'exact' } = streaming;
  const retrieval = retrievalHeads(streaming, kvHeads);
  expectInteger('streaming.sink', sink, 0);
  expectInteger('streaming.recent', recent, 1);
  if (mask !== 'exact' && mask !== 'chunked') {
    throw new DuoArgumentError(
      'streaming.mask',
      `Expected \`streaming.mask\` to be 'exact' or 'chunked' but received ${describeValue(mask)}`,
    );
  }
  const keyId = expectTensor('streaming.keyCache', streaming.keyCache, device, {
    dtypes: [keyCache.dtype],
    shape: [kvHeads - retrieval.length, null, keyCache.shape[2] ?? 0],
  });
  const valueId = expectTensor('streaming.valueCache', streaming.valueCache, device, {
    dtypes: [keyCache.dtype],
    shape: streaming.keyCache.shape,
  });
  const slots = streaming.keyCache.shape[1] ?? 0;
  if (slots < sink + recent + rows) {
    throw new DuoArgumentError(
      'streaming.keyCache',
      `Expected a streaming region of at least sink + recent + rows = ${sink + recent + rows} slots but received ${slots}`,
    );
  }
  return { retrievalHeads: retrieval, keyCache: keyId, valueCache: valueId, sink, recent, mask };
}

/** Elements per cache row: headDim, or a quantized cache's code bytes. */
export function cacheRowWidth(quant: QuantizedKv | undefined, headDim: number): number {
  return quant ? kvQuantLayout(expectScheme(quant.scheme), headDim).codeBytes : headDim;
}

/** The scale planes of a quantized cache (checked against the code planes), or undefined. */
export function quantFields(
  device: DeviceKind,
  attributes: Pick<AttentionAttributes, 'quant' | 'streaming' | 'headDim'>,
  keyCache: Tensor,
): NativeFields<QuantizedKv> | undefined {
  const { quant, streaming, headDim } = attributes;
  if (!quant) return undefined;
  if (device === 'cuda' && (headDim % 8 !== 0 || headDim > 256)) {
    throw new DuoArgumentError(
      'quant',
      `The CUDA kernels read quantized KV caches at head dims that are multiples of 8 up to 256, not ${headDim}`,
    );
  }
  const { scaleHalves } = kvQuantLayout(expectScheme(quant.scheme), headDim);
  const planes = (name: string, tensor: Tensor | undefined, codes: Tensor) =>
    expectTensor(name, tensor, device, {
      dtypes: ['f16'],
      shape: [codes.shape[0] ?? 0, codes.shape[1] ?? 0, scaleHalves],
    });
  const keyScales = planes('quant.keyScales', quant.keyScales as Tensor, keyCache);
  const valueScales = planes('quant.valueScales', quant.valueScales as Tensor, keyCache);
  const streamKeys = streaming
    ? planes('quant.streamKeyScales', quant.streamKeyScales as Tensor, streaming.keyCache as Tensor)
    : undefined;
  const streamValues = streaming
    ? planes('quant.streamValueScales', quant.streamValueScales as Tensor, streaming.keyCache as Tensor)
    : undefined;
  return {
    scheme: quant.scheme,
    keyScales,
    valueScales,
    streamKeyScales: streamKeys,
    streamValueScales: streamValues,
  };
}

/** Checks the tensors and shared attributes of an attention op; returns the ids of query, key and value caches, out. */
export function attentionIds(
  device: DeviceKind,
  query: Tensor,
  keyCache: Tensor,
  valueCache: Tensor,
  out: Tensor,
  attributes: AttentionAttributes,
): [number, number, number, number] {
  const { heads, headDim, keyLength } = attributes;
  const [keyId, valueId] = headsAndCacheIds(device, keyCache, valueCache, attributes);
  expectInteger('keyLength', keyLength, 0, keyCache.committedRows ?? keyCache.shape[1]);
  const queryId = expectTensor('query', query, device, { dtypes: F32, shape: [null, heads * headDim] });
  const outId = expectTensor('out', out, device, { dtypes: F32, shape: query.shape });
  return [queryId, keyId, valueId, outId];
}

/** An attention op's heads, head dim and scale, then its caches; returns the key and value caches' ids. */
function headsAndCacheIds(
  device: DeviceKind,
  keyCache: Tensor,
  valueCache: Tensor,
  attributes: AttentionAttributes,
): [number, number] {
  expectHeads(attributes.heads, attributes.kvHeads);
  expectInteger('headDim', attributes.headDim, 1);
  expectPositive('scale', attributes.scale);
  return cacheIds(device, keyCache, valueCache, attributes);
}

/** Checks a layer's main caches against its streaming heads and scheme; returns the key and value caches' ids. */
export function cacheIds(
  device: DeviceKind,
  keyCache: Tensor,
  valueCache: Tensor,
  attributes: Pick<AttentionAttributes, 'kvHeads' | 'headDim' | 'streaming' | 'quant'>,
  argument = '',
): [number, number] {
  const { kvHeads, headDim, quant } = attributes;
  const keyId = expectTensor(`${argument}keyCache`, keyCache, device, {
    dtypes: quant ? ['u8'] : FLOAT_TYPES,
    shape: [mainCacheHeads(attributes.streaming, kvHeads), null, cacheRowWidth(quant, headDim)],
  });
  const valueId = expectTensor(`${argument}valueCache`, valueCache, device, {
    dtypes: [keyCache.dtype],
    shape: keyCache.shape,
  });
  return [keyId, valueId];
}

/** A quantizing scheme's name (int8, int4 or fp8). */
export function expectScheme(scheme: unknown): Exclude<KvQuantScheme, 'none'> {
  if (scheme !== 'int8' && scheme !== 'int4' && scheme !== 'fp8') {
    throw new DuoArgumentError(
      'scheme',
      `Expected \`scheme\` to be int8, int4 or fp8 but received ${describeValue(scheme)}`,
    );
  }
  return scheme;
}

/** Heads and KV heads: positive, KV heads dividing heads (GQA groups). */
export function expectHeads(heads: number, kvHeads: number): void {
  expectInteger('heads', heads, 1);
  expectInteger('kvHeads', kvHeads, 1, heads);
  if (heads % kvHeads !== 0) {
    throw new DuoArgumentError(
      'kvHeads',
      `Expected \`heads\` (${heads}) to be a multiple of \`kvHeads\` but received ${kvHeads}`,
    );
  }
}

/** Most KV heads a layer with streaming heads may have (the addon's head map is a 128-bit mask). */
const MAX_STREAMING_LAYER_KV_HEADS = 128;

/** Rows of the main caches: every KV head, or (checked) the retrieval heads when some stream. */
export function mainCacheHeads(streaming: StreamingHeads | undefined, kvHeads: number): number {
  return streaming === undefined ? kvHeads : retrievalHeads(streaming, kvHeads).length;
}

/** The retrieval heads of a layer with streaming heads, in row order (checked: ascending, distinct, in [0, kvHeads)). */
function retrievalHeads(streaming: StreamingHeads, kvHeads: number): readonly number[] {
  const heads = streaming.retrievalHeads;
  if (kvHeads > MAX_STREAMING_LAYER_KV_HEADS) {
    throw new DuoArgumentError(
      'streaming',
      `Streaming heads need at most ${MAX_STREAMING_LAYER_KV_HEADS} KV heads per layer but the layer has ${kvHeads}`,
    );
  }
  const valid =
    Array.isArray(heads) &&
    heads.every(
      (head, index) =>
        Number.isInteger(head) && head >= 0 && head < kvHeads && (index === 0 || head > (heads[index - 1] ?? -1)),
    );
  if (!valid) {
    throw new DuoArgumentError(
      'streaming.retrievalHeads',
      `Expected \`streaming.retrievalHeads\` to be ascending distinct KV heads in [0, ${kvHeads}) but received ${Array.isArray(heads) ? `[${heads.join(', ')}]` : describeValue(heads)}`,
    );
  }
  return heads;
}

/** Checks a `ContextShard` (ranks 1 … 1024, rank below ranks, chunk ≥ 1); returns its fields for the addon. */
export function shardFields(shard: ContextShard | undefined): ContextShard | undefined {
  if (shard === undefined) return undefined;
  if (typeof shard !== 'object' || shard === null)
    throw new DuoArgumentError(
      'shard',
      `Expected \`shard\` to be { ranks, rank, chunk } but received ${describeValue(shard)}`,
    );
  expectInteger('shard.ranks', shard.ranks, 1, 1024);
  expectInteger('shard.rank', shard.rank, 0, shard.ranks - 1);
  expectInteger('shard.chunk', shard.chunk, 1);
  return { ranks: shard.ranks, rank: shard.rank, chunk: shard.chunk };
}

/**
 * `attentionPartial`'s checks: the attention's shape and caches, `keyLength` (the sequence's keys) of which the rank's
 * share fits its caches, query rows inside the keys, and `partial` (f32 `[n, heads · (headDim + 1)]`).
 */
export function partialAttentionIds(
  device: DeviceKind,
  query: Tensor,
  keyCache: Tensor,
  valueCache: Tensor,
  partial: Tensor,
  attributes: PartialAttentionAttributes,
): [number, number, number, number] {
  const { heads, headDim, keyLength, queryStart, shard } = attributes;
  const [keyId, valueId] = headsAndCacheIds(device, keyCache, valueCache, attributes);
  expectInteger('keyLength', keyLength, 0);
  const held = heldPositions(shardFields(shard), keyLength);
  const capacity = keyCache.committedRows ?? keyCache.shape[1] ?? 0;
  if (held > capacity) {
    throw new DuoArgumentError(
      'keyLength',
      `Expected this rank's keys to fit its caches: ${held} of ${keyLength} keys for ${capacity} slots`,
    );
  }
  const queryId = expectTensor('query', query, device, { dtypes: F32, shape: [null, heads * headDim] });
  expectInteger('queryStart', queryStart, 0, Math.max(0, keyLength - query.rows));
  const partialId = expectTensor('partial', partial, device, {
    dtypes: F32,
    shape: [query.rows, heads * (headDim + 1)],
  });
  return [queryId, keyId, valueId, partialId];
}
