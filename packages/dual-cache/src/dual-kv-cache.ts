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
  /** The full regions grow in steps of this many tokens. Default 4096 (at most `maxTokens`). */
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

/** Exact bytes of the dual cache's regions (keys and values) for `capacity` tokens in the full regions. */
export function dualCacheBytes(
  config: Pick<ModelConfig, 'numKvHeads' | 'headDim'>,
  plan: HeadPlan,
  dtype: DType,
  capacity: number,
  chunkTokens: number,
): DualCacheBytes {
  const row = config.headDim * dtypeBytes(dtype) * 2;
  let full = 0;
  let streaming = 0;
  for (const heads of plan.retrievalHeads) {
    full += heads.length * capacity * row;
    streaming += (config.numKvHeads - heads.length) * streamingSlots(plan, chunkTokens) * row;
  }
  return { full, streaming };
}

/**
 * One sequence's DuoAttention cache. Per layer, retrieval heads keep every key (post-RoPE) in a full region that grows
 * in blocks as the sequence does; streaming heads keep `sink` slots and a ring of `recent + chunkTokens` slots, so
 * their memory is constant however long the sequence gets. Layers with 0 or all retrieval heads work.
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
  #layers: CacheLayer[] = [];
  #capacity = 0;
  #generation = 0;
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
    const made: TensorHandle[] = [];
    const alloc = (heads: number, length: number) => {
      const tensor = backend.alloc(dtype, [heads, length, config.headDim]);
      made.push(tensor);
      return tensor;
    };
    const capacity = this.#roundCapacity(options.initialTokens ?? this.blockTokens);
    try {
      this.#layers = plan.retrievalHeads.map((heads) => {
        const retrievalKvHeads = heads.length;
        const streamingHeads = config.numKvHeads - retrievalKvHeads;
        return {
          keyCache: alloc(retrievalKvHeads, capacity),
          valueCache: alloc(retrievalKvHeads, capacity),
          retrievalKvHeads,
          streaming:
            streamingHeads === 0
              ? undefined
              : {
                  retrievalKvHeads,
                  keyCache: alloc(streamingHeads, slots),
                  valueCache: alloc(streamingHeads, slots),
                  sink: plan.sink,
                  recent: plan.recent,
                  mask: this.#mask,
                },
        };
      });
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      throw error;
    }
    this.#capacity = capacity;
  }

  /** Per layer: what the attention ops take. Changes when the cache grows (see `generation`). */
  get layers(): readonly CacheLayer[] {
    return this.#layers;
  }

  /** Tokens the full regions hold now (they grow up to `maxTokens`). */
  get capacity(): number {
    return this.#capacity;
  }

  /** Counts reallocations: anything that captured the tensors (a CUDA graph) must be rebuilt when it changes. */
  get generation(): number {
    return this.#generation;
  }

  /** Bytes held now. */
  bytes(): DualCacheBytes {
    return dualCacheBytes(
      { numKvHeads: this.plan.kvHeads, headDim: this.#headDim },
      this.plan,
      this.dtype,
      this.#capacity,
      this.chunkTokens,
    );
  }

  /**
   * Makes the full regions hold at least `tokens` positions, growing them by whole blocks (each layer's region is
   * reallocated and copied, one layer at a time). Returns whether anything moved.
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
    const capacity = this.#roundCapacity(Math.max(tokens, Math.ceil(this.#capacity * 1.5)));
    this.#layers = this.#layers.map((layer) => ({
      ...layer,
      keyCache: this.#grown(layer.keyCache, capacity),
      valueCache: this.#grown(layer.valueCache, capacity),
    }));
    this.#capacity = capacity;
    this.#generation++;
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

  #roundCapacity(tokens: number): number {
    return Math.min(
      this.maxTokens,
      Math.max(this.blockTokens, Math.ceil(tokens / this.blockTokens) * this.blockTokens),
    );
  }

  #grown(old: TensorHandle, capacity: number): TensorHandle {
    const [heads = 0, oldCapacity = 0] = old.shape;
    const grown = this.#backend.alloc(this.dtype, [heads, capacity, this.#headDim]);
    for (let head = 0; head < heads; head++) {
      this.#backend.copyRows(old, grown, head * oldCapacity, head * capacity, oldCapacity);
    }
    old.dispose();
    return grown;
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
