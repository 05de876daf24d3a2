// The DuoAttention KV cache of one sequence: per layer a full region for retrieval heads and a constant streaming one.
import {
  type Backend,
  type DType,
  DuoArgumentError,
  DuoDisposedError,
  dtypeBytes,
  type HeadPlan,
  type KvQuantScheme,
  type ModelConfig,
  type PrefillMask,
  type QuantizedKv,
  type StreamingHeads,
  type TensorHandle,
} from '@duoattn/core';
import { type KvPlane, kvPlanes, kvRowBytes } from '@duoattn/kv-quant';
import type { KvPagePool } from './page-pool.js';
import { type RingGeometry, SharedPages, StreamingSnapshot } from './shared-pages.js';

/** The attention inputs of one layer: the full region and, when some heads stream, the streaming region. */
export interface CacheLayer {
  /** `[retrievalHeads.length, capacity, headDim]`: every key of the retrieval heads (ascending) at slot = position. */
  readonly keyCache: TensorHandle;
  readonly valueCache: TensorHandle;
  /** The layer's retrieval KV heads (checkpoint indices, ascending): the rows of the main caches. */
  readonly retrievalHeads: readonly number[];
  /** Sinks + ring of the streaming heads; absent when every head of the layer is a retrieval head. */
  readonly streaming?: StreamingHeads;
  /** A quantized cache: the caches above are u8 code planes and these their f16 scale planes. */
  readonly quant?: QuantizedKv;
}

/** Options of `DualKvCache`. */
export interface DualKvCacheOptions {
  readonly config: Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim'>;
  /** Retrieval heads per layer (any KV heads: the kernels map each head to its region; the weights are never reordered). */
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
  /** Quantized storage (ADR 0006): codes and fp16 scales instead of `dtype` rows. Default 'none'. */
  readonly kvQuant?: KvQuantScheme;
  /**
   * The page pool shared with other sequences: the cache takes its pages before mapping memory (the streaming regions
   * when made, the full regions as they grow) and gives them back when disposed. A growth the pool cannot give throws
   * DuoOutOfMemoryError with nothing mapped. Default none: only the device's memory limits the cache.
   */
  readonly pool?: KvPagePool;
}

/**
 * A cached prefix as a cache adopts it: per layer its full-region planes (in `DualKvCache.fullPlanes` order) holding at
 * least the adopted rows, the shared pages of each of its prefill chunks, and the streaming snapshot at a boundary.
 */
export interface PrefixSource {
  fullPlanes(): readonly (readonly TensorHandle[])[];
  /** Per prefill chunk of the prefix, its shared pages. */
  readonly blocks: readonly SharedPages[];
  /** The streaming heads' snapshot with `rows` tokens in the cache (undefined: none, or no streaming heads). */
  snapshotAt(rows: number): StreamingSnapshot | undefined;
}

/** Tokens the full regions grow by so that every plane maps whole pages. */
export function kvPageTokens(planes: readonly KvPlane[], pageBytes: number): number {
  return planes.reduce((unit, plane) => {
    const tokens = pageTokens(plane.width * dtypeBytes(plane.dtype), pageBytes);
    return (unit / gcd(unit, tokens)) * tokens;
  }, 1);
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
  return pageBytes / gcd(pageBytes, rowBytes);
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * Exact bytes of the dual cache's regions (keys and values) when the full regions back `tokens` positions: each plane
 * of a full region maps whole pages of `pageBytes` (1: no rounding), a streaming region is `sink + recent +
 * chunkTokens` slots. `kvQuant` stores codes and fp16 scales as two planes (ADR 0006).
 */
export function dualCacheBytes(
  config: Pick<ModelConfig, 'numKvHeads' | 'headDim'>,
  plan: HeadPlan,
  dtype: DType,
  tokens: number,
  chunkTokens: number,
  pageBytes = 1,
  kvQuant: KvQuantScheme = 'none',
): DualCacheBytes {
  const planes = kvPlanes(config.headDim, dtype, kvQuant);
  const rowBytes = kvRowBytes(planes);
  // Each plane maps whole pages of its own rows: codes and scales round up separately.
  const headBytes = planes.reduce((sum, plane) => {
    const planeRow = plane.width * dtypeBytes(plane.dtype);
    const unit = pageTokens(planeRow, pageBytes);
    return sum + Math.ceil(tokens / unit) * unit * planeRow;
  }, 0);
  let full = 0;
  let streaming = 0;
  for (const heads of plan.retrievalHeads) {
    full += heads.length * headBytes * 2;
    streaming += (config.numKvHeads - heads.length) * streamingSlots(plan, chunkTokens) * rowBytes * 2;
  }
  return { full, streaming };
}

/**
 * The prefix-cache key of a cache: what makes two caches' contents interchangeable for the same tokens on one model —
 * the plan's retrieval heads (and, when some heads stream, the window and the streaming mask), the storage (dtype, KV
 * scheme) and the prefill chunk (a prefix's rows run in its chunks).
 */
export function prefixKey(
  plan: HeadPlan,
  storage: {
    readonly dtype: DType;
    readonly kvQuant: KvQuantScheme;
    readonly prefillMask: PrefillMask;
    readonly chunkTokens: number;
  },
): string {
  const { retrievalHeads, kvHeads, sink, recent } = plan;
  const streams = retrievalHeads.some((heads) => heads.length < kvHeads);
  const sorted = retrievalHeads.map((heads) => [...heads].sort((a, b) => a - b));
  return JSON.stringify([
    sorted,
    kvHeads,
    streams ? [sink, recent, storage.prefillMask] : [],
    storage.dtype,
    storage.kvQuant,
    storage.chunkTokens,
  ]);
}

/**
 * Pages of the full regions (keys and values, every plane and retrieval head) over rows `0 … rows − 1`: those any of the
 * rows touch ('ceil': what a cache maps for them) or those wholly inside them ('floor': what a cached prefix of `rows`
 * tokens shares with the caches that adopt it).
 */
export function fullRegionPages(
  config: Pick<ModelConfig, 'numKvHeads' | 'headDim'>,
  plan: HeadPlan,
  dtype: DType,
  rows: number,
  pageBytes: number,
  rounding: 'floor' | 'ceil',
  kvQuant: KvQuantScheme = 'none',
): number {
  const round = rounding === 'floor' ? Math.floor : Math.ceil;
  let pages = 0;
  for (const plane of kvPlanes(config.headDim, dtype, kvQuant)) {
    const planePages = round((rows * plane.width * dtypeBytes(plane.dtype)) / pageBytes);
    for (const heads of plan.retrievalHeads) pages += 2 * heads.length * planePages;
  }
  return pages;
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
  readonly kvQuant: KvQuantScheme;
  readonly maxTokens: number;
  readonly blockTokens: number;
  readonly chunkTokens: number;
  readonly #backend: Backend;
  readonly #headDim: number;
  readonly #mask: PrefillMask;
  readonly #layers: CacheLayer[] = [];
  readonly #pool: KvPagePool | undefined;
  readonly #pages = { full: 0, streaming: 0 };
  /** Per prefill chunk from position 0, the pages this cache maps together with cached prefixes (counted there). */
  readonly #shared: SharedPages[] = [];
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
    this.kvQuant = options.kvQuant ?? 'none';
    const planes = kvPlanes(config.headDim, dtype, this.kvQuant);
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
    const unit = kvPageTokens(planes, backend.pageBytes);
    this.#pool = options.pool;
    if (this.#pool) {
      const streamingBytes = this.#regionBytes(0).streaming;
      this.#pool.take(this.#pool.pagesFor(streamingBytes), 'streaming');
      this.#pages.streaming = this.#pool.pagesFor(streamingBytes);
    }
    const span = Math.ceil(maxTokens / unit) * unit;
    const made: TensorHandle[] = [];
    const keep = (tensor: TensorHandle) => {
      made.push(tensor);
      return tensor;
    };
    try {
      for (const layerHeads of plan.retrievalHeads) {
        const retrievalHeads = [...layerHeads].sort((a, b) => a - b);
        const retrievalKvHeads = retrievalHeads.length;
        const streamingHeads = config.numKvHeads - retrievalKvHeads;
        // Per plane (one, or codes then scales): a paged full region and a streaming ring, for keys and for values.
        const full = planes.map(
          (plane) => () => keep(backend.allocPaged(plane.dtype, [retrievalKvHeads, span, plane.width])),
        );
        const ring = planes.map(
          (plane) => () => keep(backend.alloc(plane.dtype, [streamingHeads, slots, plane.width])),
        );
        const [fullCodes, fullScales] = full;
        const [ringCodes, ringScales] = ring;
        const keyCache = (fullCodes as () => TensorHandle)();
        const valueCache = (fullCodes as () => TensorHandle)();
        const streaming =
          streamingHeads === 0
            ? undefined
            : {
                retrievalHeads,
                keyCache: (ringCodes as () => TensorHandle)(),
                valueCache: (ringCodes as () => TensorHandle)(),
                sink: plan.sink,
                recent: plan.recent,
                mask: this.#mask,
              };
        const quant: QuantizedKv | undefined =
          this.kvQuant === 'none' || !fullScales || !ringScales
            ? undefined
            : {
                scheme: this.kvQuant,
                keyScales: fullScales(),
                valueScales: fullScales(),
                ...(streaming ? { streamKeyScales: ringScales(), streamValueScales: ringScales() } : {}),
              };
        this.#layers.push({ keyCache, valueCache, retrievalHeads, streaming, ...(quant ? { quant } : {}) });
      }
      this.reserve(Math.min(maxTokens, options.initialTokens ?? this.blockTokens));
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      this.#givePages();
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
    return this.#regionBytes(this.#capacity);
  }

  /** Pages taken from the pool (0 without one). */
  get poolPages(): { readonly full: number; readonly streaming: number } {
    return { ...this.#pages };
  }

  /** Bytes of the regions when the full regions back `tokens` positions. */
  #regionBytes(tokens: number): DualCacheBytes {
    const config = { numKvHeads: this.plan.kvHeads, headDim: this.#headDim };
    return dualCacheBytes(
      config,
      this.plan,
      this.dtype,
      tokens,
      this.chunkTokens,
      this.#backend.pageBytes,
      this.kvQuant,
    );
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
    if (this.#pool) {
      // The pages first: a pool that cannot give them leaves the cache as it was.
      const pages = this.#pool.pagesFor(this.#regionBytes(wanted).full) - this.#sharedPages() - this.#pages.full;
      if (pages > 0) {
        this.#pool.take(pages, 'full');
        this.#pages.full += pages;
      }
    }
    let backed = Number.POSITIVE_INFINITY;
    for (const layer of this.#layers) {
      const planes = [layer.keyCache, layer.valueCache, layer.quant?.keyScales, layer.quant?.valueScales];
      for (const plane of planes) if (plane) backed = Math.min(backed, this.#backend.commitPaged(plane, wanted));
    }
    this.#capacity = Math.min(backed, this.maxTokens);
    return true;
  }

  /**
   * What makes two caches' contents interchangeable for the same tokens: the plan's heads (and window when some heads
   * stream), the storage (dtype, KV scheme), the streaming mask and the prefill chunk. A cached prefix serves only caches
   * with its key.
   */
  get prefixKey(): string {
    return prefixKey(this.plan, {
      dtype: this.dtype,
      kvQuant: this.kvQuant,
      prefillMask: this.#mask,
      chunkTokens: this.chunkTokens,
    });
  }

  /** @internal Per layer, the full region's planes: keys, values, then their scales when quantized. */
  fullPlanes(): readonly (readonly TensorHandle[])[] {
    return this.#layers.map(({ keyCache, valueCache, quant }) =>
      quant ? [keyCache, valueCache, quant.keyScales, quant.valueScales] : [keyCache, valueCache],
    );
  }

  /** @internal Per layer, the streaming region's planes in `fullPlanes` order (undefined where no head streams). */
  streamingPlanes(): readonly (readonly TensorHandle[] | undefined)[] {
    return this.#layers.map(({ streaming, quant }) => {
      if (!streaming) return undefined;
      const { keyCache, valueCache } = streaming;
      return quant?.streamKeyScales && quant.streamValueScales
        ? [keyCache, valueCache, quant.streamKeyScales, quant.streamValueScales]
        : [keyCache, valueCache];
    });
  }

  /** Whether some head of some layer streams (a prefix then needs a streaming snapshot). */
  get hasStreamingHeads(): boolean {
    return this.#layers.some((layer) => layer.streaming !== undefined);
  }

  /** Rows from position 0 whose whole pages this cache shares with cached prefixes. */
  get sharedRows(): number {
    return this.#shared.length * this.chunkTokens;
  }

  /**
   * Pages of the full regions over rows `0 … rows − 1`: those any of the rows touch ('ceil': what the cache maps) or
   * those wholly inside them ('floor': what can be shared).
   */
  fullPages(rows: number, rounding: 'floor' | 'ceil'): number {
    const config = { numKvHeads: this.plan.kvHeads, headDim: this.#headDim };
    return fullRegionPages(config, this.plan, this.dtype, rows, this.#backend.pageBytes, rounding, this.kvQuant);
  }

  /**
   * Makes this fresh cache (nothing reserved: `initialTokens: 0`) start with a cached prefix's first `rows` tokens (a
   * multiple of the prefill chunk): the full regions map the prefix's pages wholly inside those rows and copy the last
   * partial page (its own, taken from the pool first), and the streaming regions get the prefix's snapshot at `rows`.
   * The shared pages stay counted once, by the prefix's chunks, which this cache now also holds.
   */
  adoptPrefix(source: PrefixSource, rows: number): void {
    this.#checkLive();
    const chunks = rows / this.chunkTokens;
    if (!Number.isInteger(chunks) || chunks < 1 || rows > this.maxTokens || chunks > source.blocks.length) {
      throw new DuoArgumentError(
        'rows',
        `Expected \`rows\` to be a positive multiple of the ${this.chunkTokens}-token chunk within the prefix (${source.blocks.length} chunks) and maxTokens ${this.maxTokens} but received ${rows}`,
      );
    }
    if (this.#capacity !== 0 || this.#shared.length > 0) {
      throw new DuoArgumentError('rows', 'Expected a fresh cache (initialTokens: 0) to adopt a prefix');
    }
    const snapshot = this.hasStreamingHeads ? source.snapshotAt(rows) : undefined;
    if (this.hasStreamingHeads && !snapshot) {
      throw new DuoArgumentError('rows', `The prefix holds no streaming snapshot at ${rows} tokens`);
    }
    const own = this.fullPages(rows, 'ceil') - this.fullPages(rows, 'floor');
    this.#pool?.take(own, 'full');
    this.#pages.full += own;
    for (const block of source.blocks.slice(0, chunks)) this.#shared.push(block.retain());
    const theirs = source.fullPlanes();
    let backed = Number.POSITIVE_INFINITY;
    this.fullPlanes().forEach((planes, layer) => {
      planes.forEach((plane, index) => {
        const from = theirs[layer]?.[index];
        if (!from) throw new DuoArgumentError('source', `The prefix has no plane ${index} in layer ${layer}`);
        backed = Math.min(backed, this.#backend.sharePaged(plane, from, rows));
      });
    });
    this.#capacity = Math.min(backed, this.maxTokens);
    snapshot?.restore(this.streamingPlanes());
  }

  /**
   * Turns the pages of the full regions wholly inside rows `0 … rows − 1` (a multiple of the prefill chunk, within
   * capacity) into shared pages, one set per chunk, and returns every chunk's set: a cached prefix made of these rows
   * holds them, so they stay counted once however many caches map them. The cache must not write below `rows` after.
   */
  shareRows(rows: number): readonly SharedPages[] {
    this.#checkLive();
    const chunks = rows / this.chunkTokens;
    if (!Number.isInteger(chunks) || rows > this.#capacity) {
      throw new DuoArgumentError(
        'rows',
        `Expected \`rows\` to be a multiple of the ${this.chunkTokens}-token chunk within capacity ${this.#capacity} but received ${rows}`,
      );
    }
    for (let chunk = this.#shared.length; chunk < chunks; chunk++) {
      const pages =
        this.fullPages((chunk + 1) * this.chunkTokens, 'floor') - this.fullPages(chunk * this.chunkTokens, 'floor');
      this.#pages.full -= pages;
      this.#shared.push(new SharedPages(pages, this.#pool));
    }
    return this.#shared.slice(0, chunks);
  }

  /** The streaming heads' live rows with `position` tokens in the cache (undefined without streaming heads). */
  snapshotStreaming(position: number): StreamingSnapshot | undefined {
    this.#checkLive();
    if (!this.hasStreamingHeads) return undefined;
    return StreamingSnapshot.take(this.#backend, this.streamingPlanes(), this.ringGeometry, position, this.#pool);
  }

  /** The streaming regions' layout: sinks, the window later queries see, the ring's slots. */
  get ringGeometry(): RingGeometry {
    return { sink: this.plan.sink, recent: this.plan.recent, ring: this.plan.recent + this.chunkTokens };
  }

  #sharedPages(): number {
    return this.#shared.reduce((sum, block) => sum + block.pages, 0);
  }

  /**
   * For benchmarks: random keys and values everywhere (seeded, on the device). A quantized cache gets random normal
   * rows quantized into it (`writeCacheQuantized`, through a scratch of at most `QUANT_FILL_FLOATS` f32 values), so its
   * codes and scales look like real ones; the full regions are filled up to `capacity`.
   */
  fillRandom(seed: number): void {
    this.#checkLive();
    let index = 0;
    for (const layer of this.#layers) {
      const { quant, streaming } = layer;
      // Planes, their scales and how many positions hold data: the full regions up to capacity, every ring slot.
      const pairs = [
        [layer.keyCache, quant?.keyScales, this.#capacity],
        [layer.valueCache, quant?.valueScales, this.#capacity],
        [streaming?.keyCache, quant?.streamKeyScales, streaming?.keyCache.shape[1] ?? 0],
        [streaming?.valueCache, quant?.streamValueScales, streaming?.keyCache.shape[1] ?? 0],
      ] as const;
      for (const [tensor, scales, rows] of pairs) {
        const tensorSeed = seed * 1000 + index++;
        if (!tensor || tensor.size === 0) continue;
        if (quant && scales) this.#fillQuantized(tensor, scales, quant.scheme, tensorSeed, rows);
        else this.#backend.fillRandom(tensor, tensorSeed);
      }
    }
  }

  /** Random rows quantized into one code / scale plane pair, a scratch-sized block of positions at a time. */
  #fillQuantized(
    codes: TensorHandle,
    scales: TensorHandle,
    scheme: QuantizedKv['scheme'],
    seed: number,
    rows: number,
  ): void {
    const [heads = 0] = codes.shape;
    const width = heads * this.#headDim;
    const block = Math.max(1, Math.min(rows, Math.floor(QUANT_FILL_FLOATS / width)));
    const source = this.#backend.alloc('f32', [block, width]);
    try {
      for (let start = 0, part = 0; start < rows; start += block, part++) {
        const count = Math.min(block, rows - start);
        const view = count === block ? source : this.#backend.alloc('f32', [count, width]);
        try {
          this.#backend.fillRandom(view, seed * 4096 + part);
          this.#backend.writeCacheQuantized(view, codes, scales, start, scheme);
        } finally {
          if (view !== source) view.dispose();
        }
      }
    } finally {
      source.dispose();
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#givePages();
    for (const layer of this.#layers) {
      const { keyCache, valueCache, streaming, quant } = layer;
      for (const tensor of [keyCache, valueCache, streaming?.keyCache, streaming?.valueCache]) tensor?.dispose();
      for (const tensor of [quant?.keyScales, quant?.valueScales, quant?.streamKeyScales, quant?.streamValueScales]) {
        tensor?.dispose();
      }
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #givePages(): void {
    for (const block of this.#shared.splice(0)) block.release();
    if (!this.#pool) return;
    this.#pool.give(this.#pages.full, 'full');
    this.#pool.give(this.#pages.streaming, 'streaming');
    this.#pages.full = 0;
    this.#pages.streaming = 0;
  }

  #checkLive(): void {
    if (this.#disposed) throw new DuoDisposedError('The cache was disposed: create a new one');
  }
}

/** f32 values in the scratch a quantized `fillRandom` quantizes from (16 MiB). */
const QUANT_FILL_FLOATS = 4 * 1024 * 1024;

function positiveInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new DuoArgumentError(name, `Expected \`${name}\` to be a positive integer but received ${String(value)}`);
  }
}
