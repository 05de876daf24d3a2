// The versioned Backend interface: every op the engine runs, with typed inputs and attributes.
import type { DeviceKind, DType, KvQuantScheme } from './dtype.js';

/** A tensor handle. Memory belongs to the backend; `dispose()` frees it. */
export interface TensorHandle {
  readonly id: number;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: DeviceKind;
  /** Elements in the tensor. */
  readonly size: number;
  readonly disposed: boolean;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** Host array matching a dtype: f32 → Float32Array, f16/bf16 → Uint16Array (raw bits), i32 → Int32Array, u8 → Uint8Array. */
export type HostArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

/** Attributes of `rope`. */
export interface RopeAttributes {
  /** Heads packed along the last dimension of `x` (`x` is `[n, heads · headDim]`). */
  readonly heads: number;
  readonly headDim: number;
  /** Channel pairing: see `RopeStyle`. */
  readonly interleaved: boolean;
}

/**
 * DuoAttention's streaming heads in one layer. The KV heads in `retrievalHeads` keep every key in the op's main caches
 * (`[retrievalHeads.length, capacity, headDim]`, in ascending head order, slot = position); the others keep theirs
 * here, also in ascending head order: `sink` slots for positions `0 … sink − 1`, then a ring (position p ≥ sink at
 * slot `sink + (p − sink) mod ring`), so the region never grows. Keys are stored after RoPE, so the slot order never
 * matters. The weights keep the checkpoint's head order: a session's plan is this map, not a reordering.
 */
export interface StreamingHeads {
  /** KV heads (checkpoint indices, ascending, distinct) served by the main caches; the rest stream. At most 128 heads. */
  readonly retrievalHeads: readonly number[];
  /** `[kvHeads − retrievalHeads.length, sink + ring, headDim]`, the main caches' dtype. */
  readonly keyCache: TensorHandle;
  readonly valueCache: TensorHandle;
  /** Attention sinks: the first `sink` positions stay visible to every query. */
  readonly sink: number;
  /** Window: a query at position i sees keys i − recent + 1 … i (besides the sinks). */
  readonly recent: number;
  /**
   * `'exact'` (default): key j is visible to query i iff j ≤ i and (j < sink or i − j < recent) — the Λ mask.
   * `'chunked'`: the reference's chunk-wise approximation: the window starts `recent` keys before the op's first query
   * (so a chunk sees the whole streaming cache before it plus itself, causally).
   */
  readonly mask?: 'exact' | 'chunked';
}

/**
 * A quantized KV cache (docs/decisions/0006-kv-quantization.md): the op's key and value caches (and the streaming
 * region's) are u8 code planes `[heads, capacity, codeBytes]`; these are the f16 scale planes
 * `[heads, capacity, scaleHalves]` beside them (`kvQuantLayout` in @duoattn/kv-quant). Attention dequantizes in registers.
 */
export interface QuantizedKv {
  readonly scheme: Exclude<KvQuantScheme, 'none'>;
  readonly keyScales: TensorHandle;
  readonly valueScales: TensorHandle;
  /** The streaming region's scale planes, when the op has streaming heads. */
  readonly streamKeyScales?: TensorHandle;
  readonly streamValueScales?: TensorHandle;
}

/** Attributes shared by the attention ops. Caches are `[kvHeads, capacity, headDim]` (or quantized: see `quant`). */
export interface AttentionAttributes {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Softmax scale, usually 1/√headDim. */
  readonly scale: number;
  /** Number of valid keys in the cache (positions 0 … keyLength − 1). */
  readonly keyLength: number;
  /**
   * Streaming heads (DuoAttention): the main caches then hold only the first `retrievalKvHeads` KV heads. Query head h
   * belongs to KV head ⌊h / (heads / kvHeads)⌋. The ring must hold `recent + rows` slots for a call of `rows` queries.
   */
  readonly streaming?: StreamingHeads;
  /** The caches are quantized: their scale planes and scheme (the CPU backend reads them; CUDA follows). */
  readonly quant?: QuantizedKv;
}

/** Attributes of `attentionDecode`. */
export interface DecodeAttentionAttributes extends AttentionAttributes {
  /**
   * An i32 `[1]` tensor holding the query's position: the key count is then read on the device as its value + 1 when
   * the op runs (a captured graph serves every step), and `keyLength` only has to be a valid length at capture time.
   */
  readonly lengthFrom?: TensorHandle;
}

/** Attributes of `attentionPrefill`: query row r sits at absolute position `queryStart + r`. */
export interface PrefillAttentionAttributes extends AttentionAttributes {
  readonly queryStart: number;
}

/**
 * Context parallelism (ADR 0011): a sequence's positions dealt to `ranks` ranks in chunks of `chunk` tokens — chunk
 * c = ⌊p / chunk⌋ belongs to rank c mod ranks — and this rank's main caches (the retrieval heads') holding its
 * chunks' keys in position order: position p at slot ⌊c / ranks⌋ · chunk + p mod chunk. The streaming region is not
 * sharded: every rank writes every position there.
 */
export interface ContextShard {
  readonly ranks: number;
  /** 0 … ranks − 1. */
  readonly rank: number;
  readonly chunk: number;
}

/**
 * Attributes of `attentionPartial`: `attentionPrefill`'s (positions absolute; `keyLength` the whole sequence's key
 * count, not this rank's) with the rank's `shard` of the main caches (absent: they hold every position).
 */
export interface PartialAttentionAttributes extends PrefillAttentionAttributes {
  readonly shard?: ContextShard;
}

/** Attributes of `mergeAttention`: how many parts (ranks) the rows come from, and the heads' shape. */
export interface MergeAttentionAttributes {
  readonly parts: number;
  readonly heads: number;
  readonly headDim: number;
}

/** One layer of one sequence of a `CacheBatch`: the caches its attention reads and its cache write fills. */
export interface BatchCacheLayer {
  readonly keyCache: TensorHandle;
  readonly valueCache: TensorHandle;
  readonly streaming?: StreamingHeads;
  readonly quant?: QuantizedKv;
}

/** This step's rows of one sequence of a `CacheBatch`: `rows` query rows (0: it sits out) from position `start`. */
export interface BatchSpan {
  readonly rows: number;
  readonly start: number;
}

/**
 * The caches of the sequences one batched step runs (continuous batching), made by `createCacheBatch`: per sequence,
 * per layer, its own caches, streaming layout and quantization. Each step sets every sequence's rows (`setSpans`); the
 * step's q / k / v rows are the sequences' rows in order. Dispose it before the caches it names (a use after a cache
 * was disposed throws).
 */
export interface CacheBatch {
  readonly id: number;
  readonly sequences: number;
  readonly layers: number;
  /** The spans set last. */
  readonly spans: readonly BatchSpan[];
  /** This step's rows of each sequence, one span per sequence in order; checked against each sequence's caches. */
  setSpans(spans: readonly BatchSpan[]): void;
  /** Rows of the step: the sum of the spans' rows. */
  readonly rows: number;
  readonly disposed: boolean;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** Attributes of `attentionBatch`: the shape every sequence shares; each brings its caches, layout and positions. */
export interface BatchAttentionAttributes {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly scale: number;
}

/** Attributes of `attentionBackward`: one whole sequence, query row i at position i, keys 0 … length − 1. */
export interface AttentionBackwardAttributes {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly scale: number;
  /** Query rows and keys (positions 0 … length − 1; the caches hold key j at slot j). */
  readonly length: number;
  /** The Λ mask of streaming heads (key j visible to query i iff j ≤ i and (j < sink or i − j < recent)); absent: causal. */
  readonly window?: { readonly sink: number; readonly recent: number };
}

/** Attributes of `gateMix` / `gateMixBackward`: rows are `[heads · headDim]`, one gate per KV head. */
export interface GateMixAttributes {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
}

/** Memory the backend holds, in bytes. */
export interface BackendMemory {
  readonly allocatedBytes: number;
  readonly peakBytes: number;
  /** Free device memory as the driver reports it (CUDA only). */
  readonly deviceFreeBytes?: number;
  readonly deviceTotalBytes?: number;
}

/**
 * A compute backend. All ops are synchronous enqueues (CUDA) or synchronous runs on the backend's own
 * thread pool (CPU); only `read` and `synchronize` wait, and they return promises.
 * Shapes use row-major order; "rows" means the product of all but the last dimension.
 */
export interface Backend {
  readonly specificationVersion: 'v1';
  readonly device: DeviceKind;
  /** Human-readable device name, e.g. the GPU's marketing name. */
  readonly deviceName: string;

  /** Allocates an uninitialised tensor. */
  alloc(dtype: DType, shape: readonly number[]): TensorHandle;
  /** Bytes paged tensors grow by: the driver's mapping granularity on CUDA (2 MiB on an H100), the OS page on the CPU. */
  readonly pageBytes: number;
  /**
   * A `[spans, length, width]` tensor with address space for all of it and memory for none yet: `commitPaged` maps
   * memory for the first rows of every span (a KV cache's heads), in place, so addresses never change. Each span must
   * be a whole number of pages. Only committed rows may be touched by ops; reads and writes need it fully committed.
   */
  allocPaged(dtype: DType, shape: readonly [number, number, number]): TensorHandle;
  /** Maps memory for rows `0 … rows − 1` of every span of a paged tensor (whole pages; never shrinks); returns the rows now backed. */
  commitPaged(tensor: TensorHandle, rows: number): number;
  /**
   * Gives `target` (a paged tensor with nothing committed) rows `0 … rows − 1` of every span of `source` (a paged tensor
   * of the same dtype, span count and width, those rows committed): the pages wholly inside them are the source's own
   * physical pages, mapped at the same offsets (a prefix cache's shared KV; a write through either tensor shows in
   * both), and the last partial page is a fresh page holding a copy (copy on write: both may write past `rows`). A
   * page is freed when the last tensor mapping it is disposed, and `memory()` counts it once. Callers must not write
   * below `rows` in either tensor afterwards. Returns the rows of `target` now backed (whole pages, so ≥ rows). After a
   * failure the target may only be disposed.
   */
  sharePaged(target: TensorHandle, source: TensorHandle, rows: number): number;
  /** Allocates a tensor and fills it from host memory (length must equal the element count). */
  upload(dtype: DType, shape: readonly number[], data: HostArray): TensorHandle;
  /** Overwrites `tensor` from host memory, starting at element `offset` (default 0). */
  write(tensor: TensorHandle, data: HostArray, offset?: number): void;
  /** Copies `tensor` (or `count` elements from `offset`) to the host once queued work is done. */
  read(tensor: TensorHandle, offset?: number, count?: number): Promise<HostArray>;
  /**
   * Copies `rows` rows from `source` (starting at row `sourceRow`) into `target` (at row `targetRow`).
   * Both must have the same dtype and row length. Defaults copy everything.
   */
  copyRows(source: TensorHandle, target: TensorHandle, sourceRow?: number, targetRow?: number, rows?: number): void;
  /** Converts element values from one dtype to another (same element count). */
  convert(source: TensorHandle, target: TensorHandle): void;
  /**
   * Fills a float tensor with approximately normal values (mean 0, standard deviation `std`, default 1) from a
   * counter-based generator: the same seed gives the same values on every backend.
   */
  fillRandom(tensor: TensorHandle, seed: number, std?: number): void;
  /** Waits for every queued op. */
  synchronize(): Promise<void>;
  memory(): BackendMemory;
  /** Starts a new peak: `memory().peakBytes` then counts from what is allocated now. */
  resetPeakMemory(): void;

  /** `out[r] = table[ids[r]]`, converted to f32. `ids` is i32 `[n]`, `out` f32 `[n, dim]`. */
  embedding(table: TensorHandle, ids: TensorHandle, out: TensorHandle): void;
  /** `out = x / rms(x) · weight` row by row. */
  rmsNorm(x: TensorHandle, weight: TensorHandle, out: TensorHandle, eps: number): void;
  /**
   * `out = x · weightᵀ (+ bias) (+ residual)`; `x` f32 `[n, k]`, `weight` `[m, k]` f32/f16/bf16,
   * `out` f32 `[n, m]`. `residual` may be `out` itself (in-place residual add).
   */
  matmul(
    x: TensorHandle,
    weight: TensorHandle,
    out: TensorHandle,
    options?: { bias?: TensorHandle; residual?: TensorHandle },
  ): void;
  /**
   * Rotates `x` (f32 `[n, heads · headDim]`) in place; `positions` i32 `[n]`, `inverseFrequencies` f32 `[headDim/2]`.
   * With `inverse`, rotates back by the same angles: applied to ∂L/∂(rotated x) it gives ∂L/∂x.
   */
  rope(
    x: TensorHandle,
    positions: TensorHandle,
    inverseFrequencies: TensorHandle,
    attributes: RopeAttributes & { readonly inverse?: boolean },
  ): void;
  /** `out = silu(gate) · up`; `out` may alias `gate`. */
  swiglu(gate: TensorHandle, up: TensorHandle, out: TensorHandle): void;
  /** `out = a + b`; `out` may alias either input. */
  add(a: TensorHandle, b: TensorHandle, out: TensorHandle): void;
  /**
   * Writes `source` (f32 `[n, kvHeads · headDim]`) into `cache` (`[kvHeads, capacity, headDim]`, f32/f16/bf16)
   * at positions `start … start + n − 1`.
   */
  writeCache(source: TensorHandle, cache: TensorHandle, start: number): void;
  /**
   * Quantizes `source` (f32 `[n, kvHeads · headDim]`) into a quantized cache at positions `start … start + n − 1`:
   * `codes` u8 `[kvHeads, capacity, codeBytes]` and `scales` f16 `[kvHeads, capacity, scaleHalves]` (`kvQuantLayout` in
   * @duoattn/kv-quant).
   * Every backend writes the same codes.
   */
  writeCacheQuantized(
    source: TensorHandle,
    codes: TensorHandle,
    scales: TensorHandle,
    start: number,
    scheme: Exclude<KvQuantScheme, 'none'>,
  ): void;
  /** Causal attention of a query chunk against the cache: key j is visible to query position p iff j ≤ p. */
  attentionPrefill(
    query: TensorHandle,
    keyCache: TensorHandle,
    valueCache: TensorHandle,
    out: TensorHandle,
    attributes: PrefillAttentionAttributes,
  ): void;
  /**
   * Context parallelism: `attentionPrefill` over the keys this rank holds, in a form ranks can merge. Row r of
   * `partial` (f32 `[n, heads · headDim + heads]`) holds the heads' outputs over those keys (normalised by their own
   * weights), then each head's log-sum-exp of its scaled scores (−∞ where the head saw no key). With `shard` on a rank
   * past 0 the streaming heads are left to rank 0 (zeros and −∞): every rank holds them, one must count them.
   * `mergeAttention` of every rank's rows is the whole attention. CUDA takes one query row (decode) so far.
   */
  attentionPartial(
    query: TensorHandle,
    keyCache: TensorHandle,
    valueCache: TensorHandle,
    partial: TensorHandle,
    attributes: PartialAttentionAttributes,
  ): void;
  /**
   * `out` (f32 `[n, heads · headDim]`) = the merge of `parts` (f32 `[parts · n, heads · headDim + heads]`: each part's
   * `attentionPartial` rows, part after part, as `Communicator.allGather` lays them out): per row and head,
   * Σ_p e^(lse_p − m) · o_p / Σ_p e^(lse_p − m) with m the largest lse, summed in part order (zeros where no part saw a
   * key).
   */
  mergeAttention(parts: TensorHandle, out: TensorHandle, attributes: MergeAttentionAttributes): void;
  /** One query row per sequence at position `keyLength − 1`, split over the keys so long contexts fill the device. */
  attentionDecode(
    query: TensorHandle,
    keyCache: TensorHandle,
    valueCache: TensorHandle,
    out: TensorHandle,
    attributes: DecodeAttentionAttributes,
  ): void;
  /** `outs[i] = x · weights[i]ᵀ (+ biases[i])` for one to three matrices sharing `x` (q/k/v), in one launch where possible. */
  matmulGroup(
    x: TensorHandle,
    weights: readonly TensorHandle[],
    outs: readonly TensorHandle[],
    biases?: readonly (TensorHandle | undefined)[],
  ): void;
  /** `out = silu(x · gateᵀ) ⊙ (x · upᵀ)`, the MLP's first half, in one weight pass where possible. */
  matmulSwiglu(x: TensorHandle, gate: TensorHandle, up: TensorHandle, out: TensorHandle): void;
  /**
   * Rotates `query` (`[n, heads · headDim]`) and `key` (`[n, kvHeads · headDim]`) in place at `positions`, then writes
   * row r of `key` and `value` into the caches at slot `positions[r]` — `rope` twice and `writeCache` twice, fused.
   * Positions must be consecutive, as a chunk of one sequence is. With `streaming`, the streaming KV heads are written
   * to their region instead (see `StreamingHeads`). With `quant`, the caches (and the streaming region) are code planes
   * and each rotated key and value row is quantized into them (codes equal to `writeCacheQuantized`'s). With `shard`,
   * a retrieval head's row goes to the main caches only on the rank that holds its position, at its slot there.
   */
  ropeWriteCache(
    query: TensorHandle,
    key: TensorHandle,
    value: TensorHandle,
    positions: TensorHandle,
    inverseFrequencies: TensorHandle,
    keyCache: TensorHandle,
    valueCache: TensorHandle,
    attributes: RopeAttributes & {
      kvHeads: number;
      streaming?: StreamingHeads;
      quant?: QuantizedKv;
      /** Context parallelism: the main caches hold this rank's shard (rows of other ranks' chunks are not written). */
      shard?: ContextShard;
    },
  ): void;
  /** `ids[0] = next[0]; positions[0] += 1` (i32 `[1]` tensors): ends a decode step on the device. */
  decodeAdvance(next: TensorHandle, ids: TensorHandle, positions: TensorHandle): void;
  /**
   * Records the ops `record` enqueues into a graph (CUDA graphs) and returns its handle; `launchGraph` replays it.
   * Present only where the backend supports it: callers fall back to enqueuing the ops each time.
   */
  readonly supportsGraphs?: boolean;
  captureGraph?(record: () => void): number;
  launchGraph?(graph: number): void;
  disposeGraph?(graph: number): void;
  /** Index of the largest value in each row of `logits` (f32 `[n, vocab]`) into `out` (i32 `[n]`); ties → lowest index. */
  argmax(logits: TensorHandle, out: TensorHandle): void;
  /** Row-wise softmax of `logits / temperature` into `out` (f32). */
  softmax(logits: TensorHandle, out: TensorHandle, temperature: number): void;

  // Continuous batching: many sequences, each with its own caches, policy and position, in one step.
  /** The caches of a batched step's sequences: `sequences[s][layer]` (see `CacheBatch`). */
  createCacheBatch(
    sequences: readonly (readonly BatchCacheLayer[])[],
    attributes: { readonly kvHeads: number; readonly headDim: number },
  ): CacheBatch;
  /**
   * `ropeWriteCache` for every sequence of `batch` at layer `layer`: each sequence's rows of `query` / `key` / `value`
   * (its span) are rotated at their `positions` and written into its own caches.
   */
  ropeWriteCacheBatch(
    query: TensorHandle,
    key: TensorHandle,
    value: TensorHandle,
    positions: TensorHandle,
    inverseFrequencies: TensorHandle,
    batch: CacheBatch,
    layer: number,
    attributes: RopeAttributes & { readonly kvHeads: number },
  ): void;
  /**
   * Attention of every sequence of `batch` at layer `layer` into its rows of `out`: a span of one row decodes, a
   * longer one runs as a prefill chunk, each over its own caches (keys 0 … start + rows − 1, its mask and scheme).
   */
  attentionBatch(
    query: TensorHandle,
    out: TensorHandle,
    batch: CacheBatch,
    layer: number,
    attributes: BatchAttentionAttributes,
  ): void;
  /**
   * One token per row of `logits` (f32 `[n, vocab]`) into `out` (i32 `[n]`), by `settings` (f32 `[n, 4]`: temperature,
   * topK, topP, u ∈ [0, 1)): temperature 0 takes the argmax (the lowest index on ties); otherwise the tokens in order of
   * falling logit (lower index first on ties), the first topK (0: all), weights exp((logit − max) / temperature), the
   * shortest prefix whose weight reaches topP of their total (1: all), and the first token whose cumulative weight
   * reaches u × the prefix's weight.
   */
  sample(logits: TensorHandle, settings: TensorHandle, out: TensorHandle): void;

  // Input gradients for the gate trainer (weights are frozen). Deterministic: no atomics, fixed summation order.
  /** `gradInput (+)= gradOut · weight`: `matmul`'s input gradient (`gradOut` f32 `[n, m]`, `weight` `[m, k]`). */
  matmulBackward(
    gradOut: TensorHandle,
    weight: TensorHandle,
    gradInput: TensorHandle,
    options?: { readonly accumulate?: boolean },
  ): void;
  /** `rmsNorm`'s input gradient for `gradOut`, written (or with `accumulate` added) to `gradInput`. */
  rmsNormBackward(
    x: TensorHandle,
    weight: TensorHandle,
    gradOut: TensorHandle,
    gradInput: TensorHandle,
    eps: number,
    options?: { readonly accumulate?: boolean },
  ): void;
  /**
   * `swiglu`'s input gradients: `gradGate = gradOut · up · silu′(gate)`, `gradUp = gradOut · silu(gate)`. `gradUp` may
   * alias `gradOut` (each element is read before it is written).
   */
  swigluBackward(
    gate: TensorHandle,
    up: TensorHandle,
    gradOut: TensorHandle,
    gradGate: TensorHandle,
    gradUp: TensorHandle,
  ): void;
  /**
   * Attention's input gradients for a whole sequence. `query`, `out` (the forward's output), `gradOut`, `gradQuery`:
   * f32 `[length, heads · headDim]`; caches `[kvHeads, capacity ≥ length, headDim]` as the forward read them (key j at
   * slot j); `gradKey`, `gradValue`: f32 `[length, kvHeads · headDim]`, the projections' layout.
   */
  attentionBackward(
    query: TensorHandle,
    keyCache: TensorHandle,
    valueCache: TensorHandle,
    out: TensorHandle,
    gradOut: TensorHandle,
    gradQuery: TensorHandle,
    gradKey: TensorHandle,
    gradValue: TensorHandle,
    attributes: AttentionBackwardAttributes,
  ): void;
  /** DuoAttention's training mix: `out_h = (1 − α_g) · streaming_h + α_g · full_h`, α (f32 `[kvHeads]`) clamped to [0, 1]. */
  gateMix(
    streaming: TensorHandle,
    full: TensorHandle,
    gates: TensorHandle,
    out: TensorHandle,
    attributes: GateMixAttributes,
  ): void;
  /** `gradStreaming = (1 − α) · gradOut`; `gradGates[g] = Σ_{rows, h ∈ g} ⟨gradOut_h, full_h − streaming_h⟩`. */
  gateMixBackward(
    gradOut: TensorHandle,
    streaming: TensorHandle,
    full: TensorHandle,
    gates: TensorHandle,
    gradStreaming: TensorHandle,
    gradGates: TensorHandle,
    attributes: GateMixAttributes,
  ): void;
}
