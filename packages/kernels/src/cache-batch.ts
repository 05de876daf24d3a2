// Continuous batching across the native boundary: the cache batch (each sequence's caches per layer, checked once when
// the batch is made) and its per-step spans, checked against each sequence's caches before any op runs.
import {
  type BatchCacheLayer,
  type BatchSpan,
  type CacheBatch,
  type DeviceKind,
  DuoArgumentError,
  DuoDisposedError,
} from '@duoattn/core';
import { cacheIds, quantFields, streamingFields } from './attention-arguments.js';
import { callNative } from './errors.js';
import type { NativeAddon } from './native.js';
import type { Tensor } from './tensor.js';
import { describeValue, expectInteger } from './validate.js';

/** A `CacheBatch` held by the addon. */
export class NativeCacheBatch implements CacheBatch {
  readonly id: number;
  readonly sequences: number;
  readonly layers: number;
  readonly #native: NativeAddon;
  readonly #caches: readonly (readonly BatchCacheLayer[])[];
  readonly #kvHeads: number;
  readonly #headDim: number;
  #spans: readonly BatchSpan[];
  #rows = 0;
  #disposed = false;

  /** @internal Use `backend.createCacheBatch`. */
  constructor(
    native: NativeAddon,
    device: DeviceKind,
    sequences: readonly (readonly BatchCacheLayer[])[],
    attributes: { readonly kvHeads: number; readonly headDim: number },
  ) {
    const { kvHeads, headDim } = attributes;
    expectInteger('kvHeads', kvHeads, 1);
    expectInteger('headDim', headDim, 1);
    if (!Array.isArray(sequences)) {
      throw new DuoArgumentError(
        'sequences',
        `Expected \`sequences\` to be an array (per sequence, per layer) but received ${describeValue(sequences)}`,
      );
    }
    const layers = sequences[0]?.length ?? 0;
    const fields = sequences.map((perLayer, s) => {
      if (!Array.isArray(perLayer) || perLayer.length !== layers || layers === 0) {
        throw new DuoArgumentError(
          `sequences[${s}]`,
          `Expected one cache per layer (${layers}) for every sequence but received ${describeValue(perLayer)}`,
        );
      }
      return perLayer.map((layer: BatchCacheLayer, l: number) => {
        const keyCache = layer.keyCache as Tensor;
        const attributes = { kvHeads, headDim, streaming: layer.streaming, quant: layer.quant };
        const [keyId, valueId] = cacheIds(
          device,
          keyCache,
          layer.valueCache as Tensor,
          attributes,
          `sequences[${s}][${l}].`,
        );
        return {
          keyCache: keyId,
          valueCache: valueId,
          streaming: streamingFields(device, layer.streaming, kvHeads, keyCache, 0),
          quant: quantFields(device, attributes, keyCache),
        };
      });
    });
    this.#native = native;
    this.#caches = sequences;
    this.#kvHeads = kvHeads;
    this.#headDim = headDim;
    this.sequences = sequences.length;
    this.layers = layers;
    this.id = callNative(() => native.cacheBatchCreate(device, fields, { layers, kvHeads, headDim }));
    this.#spans = sequences.map(() => ({ rows: 0, start: 0 }));
  }

  get spans(): readonly BatchSpan[] {
    return this.#spans;
  }

  get rows(): number {
    return this.#rows;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  setSpans(spans: readonly BatchSpan[]): void {
    this.#checkLive();
    if (!Array.isArray(spans) || spans.length !== this.sequences) {
      throw new DuoArgumentError(
        'spans',
        `Expected one span per sequence of the batch (${this.sequences}) but received ${describeValue(spans)}`,
      );
    }
    const packed = new Int32Array(2 * spans.length);
    let rows = 0;
    spans.forEach((span, s) => {
      expectInteger(`spans[${s}].rows`, span.rows, 0);
      expectInteger(`spans[${s}].start`, span.start, 0);
      const layer = this.#caches[s]?.[0];
      const keyCache = layer?.keyCache as Tensor | undefined;
      const backed = keyCache?.committedRows ?? keyCache?.shape[1] ?? 0;
      if (span.rows > 0 && (keyCache?.shape[0] ?? 0) > 0 && span.start + span.rows > backed) {
        throw new DuoArgumentError(
          `spans[${s}]`,
          `Sequence ${s} reaches ${span.start + span.rows} keys but its caches hold ${backed}: reserve them first`,
        );
      }
      const slots = layer?.streaming?.keyCache.shape[1] ?? Number.POSITIVE_INFINITY;
      const needed = (layer?.streaming?.sink ?? 0) + (layer?.streaming?.recent ?? 0) + span.rows;
      if (span.rows > 0 && slots < needed) {
        throw new DuoArgumentError(
          `spans[${s}].rows`,
          `Sequence ${s}'s streaming region holds ${slots} slots but ${span.rows} rows need sink + recent + rows = ${needed}`,
        );
      }
      packed[2 * s] = span.rows;
      packed[2 * s + 1] = span.start;
      rows += span.rows;
    });
    callNative(() => this.#native.cacheBatchSpans(this.id, packed));
    this.#spans = spans.map(({ rows, start }) => ({ rows, start }));
    this.#rows = rows;
  }

  /** KV heads and head dim the batch was made for. */
  get shape(): { kvHeads: number; headDim: number } {
    return { kvHeads: this.#kvHeads, headDim: this.#headDim };
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#native.cacheBatchFree(this.id);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkLive(): void {
    if (this.#disposed) throw new DuoDisposedError('The cache batch was disposed: create a new one');
  }
}

/** The batch argument of a batched op: a live `NativeCacheBatch` of this addon, at a layer it has. */
export function expectCacheBatch(batch: unknown, layer: number, kvHeads: number, headDim: number): NativeCacheBatch {
  if (!(batch instanceof NativeCacheBatch)) {
    throw new DuoArgumentError(
      'batch',
      `Expected \`batch\` to be a CacheBatch from createCacheBatch but received ${describeValue(batch)}`,
    );
  }
  if (batch.disposed) throw new DuoDisposedError('The cache batch was disposed: create a new one');
  expectInteger('layer', layer, 0, batch.layers - 1);
  if (batch.shape.kvHeads !== kvHeads || batch.shape.headDim !== headDim) {
    throw new DuoArgumentError(
      'batch',
      `The cache batch holds ${batch.shape.kvHeads} KV heads of dim ${batch.shape.headDim} but the op has ${kvHeads} of dim ${headDim}`,
    );
  }
  return batch;
}
