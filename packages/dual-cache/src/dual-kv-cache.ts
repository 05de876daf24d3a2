// The DuoAttention KV cache of one sequence: per layer a full region for retrieval heads and a constant streaming one.
import {
  type Backend,
  type DType,
  DuoArgumentError,
  dtypeBytes,
  type HeadPlan,
  type ModelConfig,
  type PrefillMask,
  type StreamingHeads,
  type TensorHandle,
} from '@duoattn/core';

/** The attention inputs of one layer: the full region and, when some heads stream, the streaming region. */
export interface CacheLayer {
  /** `[retrievalKvHeads, capacity, headDim]`: every key of the retrieval heads at slot = position. */
  readonly keyCache: TensorHandle;
  readonly valueCache: TensorHandle;
  readonly retrievalKvHeads: number;
  /** Sinks + ring of the streaming heads; absent when every head of the layer is a retrieval head. */
  readonly streaming?: StreamingHeads;
}

/** Options of `DualKvCache`. */
export interface DualKvCacheOptions {
  readonly config: Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim'>;
  /** Retrieval heads per layer. The model's weights must be ordered so that they are heads [0, r) of each layer. */
  readonly plan: HeadPlan;
  readonly dtype: DType;
  /** Most tokens the sequence may reach. */
  readonly maxTokens: number;
  /** Most tokens one call writes (the prefill chunk): the ring holds `recent + chunkTokens` slots. */
  readonly chunkTokens: number;
  /** The full regions grow in steps of at least this many tokens (then whole pages). Default 4096. */
  readonly blockTokens?: number;
  /** Tokens the full regions hold from the start. Default one block. */
  readonly initialTokens?: number;
  /** Streaming mask: 'exact' (default) or the reference's 'chunked'. */
  readonly prefillMask?: PrefillMask;
}

/** Bytes of each region for a plan, with full regions of `capacity` tokens. */
export interface DualCacheBytes {
  readonly full: number;
  readonly streaming: number;
}

/** Slots of a streaming head's region: sinks, the recent window and room for one call's tokens. */
export function streamingSlots(plan: HeadPlan, chunkTokens: number): number {
  return plan.sink + plan.recent + chunkTokens;
}

/** Tokens of one full-region span that fill whole pages: rows of `rowBytes` in pages of `pageBytes`. */
export function pageTokens(rowBytes: number, pageBytes: number): number {
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  return pageBytes / gcd(pageBytes, rowBytes);
}

/**
 * Exact bytes of the dual cache's regions (keys and values) when the full regions back `tokens` positions: a full
 * region maps whole pages of `pageBytes` (1: no rounding), a streaming region is `sink + recent + chunkTokens` slots.
 */
export function dualCacheBytes(
  config: Pick<ModelConfig, 'numKvHeads' | 'headDim'>,
  plan: HeadPlan,
  dtype: DType,
  tokens: number,
  chunkTokens: number,
  pageBytes = 1,
): DualCacheBytes {
  const rowBytes = config.headDim * dtypeBytes(dtype);
  const unit = pageTokens(rowBytes, pageBytes);
  const backed = Math.ceil(tokens / unit) * unit;
  let full = 0;
  let streaming = 0;
  for (const heads of plan.retrievalHeads) {
    full += heads.length * backed * rowBytes * 2;
    streaming += (config.numKvHeads - heads.length) * streamingSlots(plan, chunkTokens) * rowBytes * 2;
  }
  return { full, streaming };
}

/**
 * One sequence's DuoAttention cache. Per layer, retrieval heads keep every key (post-RoPE) in a full region: address
 * space for `maxTokens` positions, memory mapped page by page as the sequence grows (a paged tensor: nothing moves, so
 * kernels and captured graphs keep their addresses). Streaming heads keep `sink` slots and a ring of
 * `recent + chunkTokens` slots, so their memory is constant however long the sequence gets. Layers with 0 or all
 * retrieval heads work.
 */
export class DualKvCache {
  readonly plan: HeadPlan;
  readonly dtype: DType;
  readonly maxTokens: number;
  readonly blockTokens: number;
  readonly chunkTokens: number;
  readonly #backend: Backend;
  readonly #headDim: number;
  readonly #mask: PrefillMask;
  readonly #layers: CacheLayer[] = [];
  #capacity = 0;
  #disposed = false;

  constructor(backend: Backend, options: DualKvCacheOptions) {
    const { config, plan, dtype, maxTokens, chunkTokens } = options;
    positiveInteger('maxTokens', maxTokens);
    positiveInteger('chunkTokens', chunkTokens);
    if (plan.retrievalHeads.length !== config.numLayers || plan.kvHeads !== config.numKvHeads) {
      throw new DuoArgumentError(
        'plan',
        `Expected a head plan for ${config.numLayers} layers × ${config.numKvHeads} KV heads but received ${plan.retrievalHeads.length} × ${plan.kvHeads}`,
      );
    }
    this.#backend = backend;
    this.#headDim = config.headDim;
    this.plan = plan;
    this.dtype = dtype;
    this.maxTokens = maxTokens;
    this.chunkTokens = chunkTokens;
    this.blockTokens = Math.min(maxTokens, options.blockTokens ?? 4096);
    positiveInteger('blockTokens', this.blockTokens);
    this.#mask = options.prefillMask ?? 'exact';
    if (this.#mask !== 'exact' && this.#mask !== 'chunked') {
      throw new DuoArgumentError(
        'prefillMask',
        `Expected \`prefillMask\` to be 'exact' or 'chunked' but received ${String(this.#mask)}`,
      );
    }
    const slots = streamingSlots(plan, chunkTokens);
    const unit = pageTokens(config.headDim * dtypeBytes(dtype), backend.pageBytes);
    const span = Math.ceil(maxTokens / unit) * unit;
    const made: TensorHandle[] = [];
    const keep = (tensor: TensorHandle) => {
      made.push(tensor);
      return tensor;
    };
    try {
      for (const heads of plan.retrievalHeads) {
        const retrievalKvHeads = heads.length;
        const streamingHeads = config.numKvHeads - retrievalKvHeads;
        const full = () => keep(backend.allocPaged(dtype, [retrievalKvHeads, span, config.headDim]));
        const ring = () => keep(backend.alloc(dtype, [streamingHeads, slots, config.headDim]));
        const keyCache = full();
        const valueCache = full();
        this.#layers.push({
          keyCache,
          valueCache,
          retrievalKvHeads,
          streaming:
            streamingHeads === 0
              ? undefined
              : {
                  retrievalKvHeads,
                  keyCache: ring(),
                  valueCache: ring(),
                  sink: plan.sink,
                  recent: plan.recent,
                  mask: this.#mask,
                },
        });
      }
      this.reserve(Math.min(maxTokens, options.initialTokens ?? this.blockTokens));
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      throw error;
    }
  }

  /** Per layer: what the attention ops take (the same tensors for the cache's whole life). */
  get layers(): readonly CacheLayer[] {
    return this.#layers;
  }

  /** Positions the full regions have memory for now (whole pages; they grow up to `maxTokens`). */
  get capacity(): number {
    return this.#capacity;
  }

  /** Bytes held now. */
  bytes(): DualCacheBytes {
    const config = { numKvHeads: this.plan.kvHeads, headDim: this.#headDim };
    return dualCacheBytes(config, this.plan, this.dtype, this.#capacity, this.chunkTokens, this.#backend.pageBytes);
  }

  /**
   * Gives the full regions memory for at least `tokens` positions, growing by at least `blockTokens` at a time (then
   * whole pages). Nothing is copied: pages are mapped after the ones in use. Returns whether memory was added.
   */
  reserve(tokens: number): boolean {
    this.#checkLive();
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.maxTokens) {
      throw new DuoArgumentError(
        'tokens',
        `Expected \`tokens\` in [0, ${this.maxTokens}] (maxTokens) but received ${tokens}`,
      );
    }
    if (tokens <= this.#capacity) return false;
    const wanted = Math.min(this.maxTokens, Math.max(tokens, this.#capacity + this.blockTokens));
    let backed = Number.POSITIVE_INFINITY;
    for (const layer of this.#layers) {
      backed = Math.min(
        backed,
        this.#backend.commitPaged(layer.keyCache, wanted),
        this.#backend.commitPaged(layer.valueCache, wanted),
      );
    }
    this.#capacity = Math.min(backed, this.maxTokens);
    return true;
  }

  /** For benchmarks: random keys and values everywhere (seeded, on the device). */
  fillRandom(seed: number): void {
    this.#checkLive();
    let index = 0;
    for (const layer of this.#layers) {
      const tensors = [layer.keyCache, layer.valueCache, layer.streaming?.keyCache, layer.streaming?.valueCache];
      for (const tensor of tensors) {
        if (tensor && tensor.size > 0) this.#backend.fillRandom(tensor, seed * 1000 + index);
        index++;
      }
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const layer of this.#layers) {
      for (const tensor of [layer.keyCache, layer.valueCache, layer.streaming?.keyCache, layer.streaming?.valueCache]) {
        tensor?.dispose();
      }
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkLive(): void {
    if (this.#disposed) throw new DuoArgumentError('cache', 'The cache was disposed');
  }
}

function positiveInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new DuoArgumentError(name, `Expected \`${name}\` to be a positive integer but received ${String(value)}`);
  }
}
