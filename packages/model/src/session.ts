// A sequence being run through the model: its KV cache, position, and the chunked forward pass.
import {
  type AttentionPolicy,
  type AttentionPolicyName,
  type Backend,
  type Communicator,
  type ContextShard,
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_SESSION_TOKENS,
  type DType,
  DuoArgumentError,
  DuoDisposedError,
  FULL_ATTENTION,
  type HeadPlan,
  type HostArray,
  heldPositions,
  type KvQuantScheme,
  type ModelConfig,
  type PrefillMask,
  type TensorHandle,
} from '@duoattn/core';
import { type CacheLayer, DualKvCache, dualCacheBytes, policyPlan } from '@duoattn/dual-cache';
import type { LlamaBlocks } from './llama-blocks.js';
import { type StepWorkspace, stepWorkspace } from './step-workspaces.js';
import { rankPlan } from './tensor-parallel.js';

/** Which hidden states to return: layer 0 is the embedding output, layer l the residual stream after layer l. */
export interface CaptureRequest {
  layers: readonly number[];
  /** Absolute positions, in any order; each must fall inside the tokens of this forward call. */
  positions: readonly number[];
}

/** Options of `forward`. */
export interface ForwardOptions {
  /**
   * Which logits to return. Default 'last'. With 'last' or 'none' (and no capture of the last layer, no outputsFrom)
   * the last layer runs only for the rows read: the last row, or none.
   */
  logits?: 'last' | 'all' | 'none';
  capture?: CaptureRequest;
  /**
   * Only positions from here on need the last layer's output (its captured states, the logits): prefill chunks that
   * end before it skip the last layer's attention and MLP (their keys and values are still cached). For analyses that
   * read a suffix only; not with `logits: 'all'`.
   */
  outputsFrom?: number;
}

export interface ForwardResult {
  /** Row-major logits: one row ('last') or one per token ('all'). */
  logits?: Float32Array;
  /** Per captured layer, `positions.length × hiddenSize` states in the order of `capture.positions`. */
  captured?: Map<number, Float32Array>;
}

/**
 * Context parallelism (ADR 0011): the session is one rank's part of a sequence that the ranks of `communicator` run
 * together, every rank calling the same `forward` / `greedyStep` with the same tokens. Each rank runs the dense part
 * of every token; the retrieval heads' keys are dealt to the ranks in chunks of `chunk` positions (chunk c to rank
 * c mod ranks), each rank attends over its own and the ranks' partial results are merged in rank order after one
 * all-gather a layer; the streaming heads' small regions are kept by every rank and attended by rank 0. Every rank
 * computes the same logits, equal to one device's within float rounding.
 */
export interface ContextParallelOptions {
  readonly communicator: Communicator;
  /** Positions per shard chunk. Default: the policy's prefill chunk. */
  readonly chunk?: number;
}

/** Options of `createSession`. */
export interface SessionOptions {
  /**
   * How the session attends and stores its KV cache (`AttentionPolicy`): 'full' (default), 'streaming' (every head
   * keeps sink + recent keys), or 'duo' with a head plan; plus kvQuant, the prefill mask and chunk. A value the
   * session owns: sessions with different policies run side by side on one model, whose weights never change.
   */
  policy?: AttentionPolicy;
  /**
   * Tokens the KV cache holds. Default: the model's max position embeddings, at most `DEFAULT_SESSION_TOKENS` (4096).
   * More than the model's context (`config.maxPositionEmbeddings`) is refused unless `allowBeyondContext` is set.
   */
  maxTokens?: number;
  /**
   * Lets `maxTokens` exceed the model's context. Positions past `maxPositionEmbeddings` were never trained, so what
   * the model computes there is not meaningful text; timing benchmarks on synthetic caches at long contexts (random
   * weights at a real model's shape) are what this is for. Default false.
   */
  allowBeyondContext?: boolean;
  /** KV cache dtype. Default 'auto': f32 on the CPU, bf16 on CUDA with 16-bit weights, else f32. */
  cacheDtype?: 'auto' | 'f32' | 'f16' | 'bf16';
  /** The full cache grows in steps of at least this many tokens (then whole pages). Default 4096. */
  cacheBlockTokens?: number;
  /**
   * Greedy decoding replays one captured CUDA graph per step where the backend supports graphs. Default: the model's
   * (`LoadModelOptions.graphs`, true). False enqueues every step's ops (profiling, A/B runs).
   */
  graphs?: boolean;
  /** Runs the session as one rank of a context-parallel group (see `ContextParallelOptions`). Default: alone. */
  contextParallel?: ContextParallelOptions;
}

/** A policy with every default filled in, as a session runs it. */
export type ResolvedPolicy = AttentionPolicy & {
  readonly kvQuant: KvQuantScheme;
  readonly prefillMask: PrefillMask;
  readonly prefillChunk: number;
};

/** `policy` (default full attention) with its defaults filled in and its window taken from the plan it runs. */
export function resolvePolicy(policy: AttentionPolicy | undefined, plan: HeadPlan): ResolvedPolicy {
  const given = policy ?? FULL_ATTENTION;
  const common = {
    kvQuant: given.kvQuant ?? 'none',
    prefillMask: given.prefillMask ?? 'exact',
    prefillChunk: given.prefillChunk ?? DEFAULT_PREFILL_CHUNK,
  } as const;
  if (given.attention === 'full') return { ...given, ...common };
  if (given.attention === 'streaming') return { ...given, ...common, sink: plan.sink, recent: plan.recent };
  return { ...given, ...common, plan, sink: plan.sink, recent: plan.recent };
}

interface Workspace extends StepWorkspace {
  rows: number;
  // Context parallelism: this rank's partial attention rows, and every rank's gathered (made on first use).
  partial?: TensorHandle;
  gathered?: TensorHandle;
}

/** A context-parallel session's place in its group: its shard of the keys and the group's communicator. */
interface ParallelRank {
  readonly shard: ContextShard;
  readonly communicator: Communicator;
}

/** Where a chunk's last output row lies after its layers: the chunk's workspace, or the tail (#layers). */
interface LastOutput {
  hidden: TensorHandle;
  row: number;
}

/** Holds one sequence's cache. Not safe for concurrent use; create one session per sequence. */
export class Session {
  readonly capacity: number;
  readonly cacheDtype: DType;
  /** The policy the session runs, defaults filled in. */
  readonly policy: ResolvedPolicy;
  /** The head plan the policy runs (every head full for 'full', none for 'streaming'). */
  readonly plan: HeadPlan;
  readonly #backend: Backend;
  readonly #config: ModelConfig;
  readonly #blocks: LlamaBlocks;
  readonly #inverseFrequencies: TensorHandle;
  readonly #graphs: boolean;
  readonly #cache: DualKvCache;
  readonly #workspaces = new Map<number, Workspace>();
  // One row: the last layer of a chunk whose only read output is its last row (#layers).
  #tail: Workspace | undefined;
  readonly #lastRow: TensorHandle;
  readonly #lastNormed: TensorHandle;
  readonly #lastLogits: TensorHandle;
  readonly #nextToken: TensorHandle;
  #position = 0;
  #disposed = false;
  #decodeGraph: number | undefined;
  // Context parallelism: this rank's shard of the retrieval heads' keys and its group (undefined: alone).
  readonly #parallel: ParallelRank | undefined;

  /** @internal Use `LlamaModel.createSession`. */
  constructor(
    blocks: LlamaBlocks,
    inverseFrequencies: TensorHandle,
    options: SessionOptions,
    defaultCacheDtype: DType,
  ) {
    const { backend, config } = blocks;
    this.#backend = backend;
    this.#config = config;
    this.#blocks = blocks;
    this.#inverseFrequencies = inverseFrequencies;
    const parallel = options.contextParallel;
    const part = blocks.tensorParallel;
    if (parallel && part) {
      throw new DuoArgumentError(
        'contextParallel',
        `Expected no \`contextParallel\` on a model loaded with \`tensorParallel\` (rank ${part.rank} of ${part.size}): a session runs one kind of parallelism`,
      );
    }
    // Ranks of a group meet at collectives between layers: their steps are captured only where every collective is
    // enqueued on the device's stream (NCCL) and the step's attention reads its key count on the device (not a shard's).
    const capturable = part === undefined || part.communicator.streamOrdered === true;
    this.#graphs = parallel === undefined && capturable && (options.graphs ?? true);
    const capacity = options.maxTokens ?? Math.min(config.maxPositionEmbeddings, DEFAULT_SESSION_TOKENS);
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new DuoArgumentError(
        'maxTokens',
        `Expected \`maxTokens\` to be a positive integer but received ${capacity}`,
      );
    }
    if (capacity > config.maxPositionEmbeddings && !options.allowBeyondContext) {
      throw new DuoArgumentError(
        'maxTokens',
        `Expected \`maxTokens\` of at most the model's context, ${config.maxPositionEmbeddings} tokens (max_position_embeddings), but received ${capacity}; benchmarks on synthetic caches may pass \`allowBeyondContext: true\``,
      );
    }
    checkPolicyShape(options.policy);
    // A tensor-parallel rank's plan: the whole model's, checked against its config, then the rank's KV heads of it.
    this.plan = part
      ? rankPlan(policyPlan(part.modelConfig, options.policy ?? FULL_ATTENTION), part)
      : policyPlan(config, options.policy ?? FULL_ATTENTION);
    this.policy = resolvePolicy(options.policy, this.plan);
    const chunk = this.policy.prefillChunk;
    if (!Number.isInteger(chunk) || chunk < 1) {
      throw new DuoArgumentError(
        'policy.prefillChunk',
        `Expected \`policy.prefillChunk\` to be a positive integer but received ${String(chunk)}`,
      );
    }
    const cacheDtype =
      options.cacheDtype === undefined || options.cacheDtype === 'auto' ? defaultCacheDtype : options.cacheDtype;
    if (!['f32', 'f16', 'bf16'].includes(cacheDtype)) {
      throw new DuoArgumentError(
        'cacheDtype',
        `Expected \`cacheDtype\` to be auto, f32, f16 or bf16 but received ${String(cacheDtype)}`,
      );
    }
    this.capacity = capacity;
    this.cacheDtype = cacheDtype;
    this.#parallel = parallel
      ? { shard: contextShard(parallel, chunk), communicator: parallel.communicator }
      : undefined;
    this.#cache = new DualKvCache(backend, {
      config,
      plan: this.plan,
      dtype: cacheDtype,
      maxTokens: Math.max(1, this.#held(capacity)),
      chunkTokens: chunk,
      blockTokens: options.cacheBlockTokens,
      prefillMask: this.policy.prefillMask,
      kvQuant: this.policy.kvQuant,
    });
    this.#lastRow = backend.alloc('f32', [1, config.hiddenSize]);
    this.#lastNormed = backend.alloc('f32', [1, config.hiddenSize]);
    this.#lastLogits = backend.alloc('f32', [1, config.vocabSize]);
    this.#nextToken = backend.alloc('i32', [1]);
  }

  /** The policy's attention: 'full', 'streaming' or 'duo'. */
  get attention(): AttentionPolicyName {
    return this.policy.attention;
  }

  /** The cache's quantization ('none': rows in `cacheDtype`). */
  get kvQuant(): KvQuantScheme {
    return this.policy.kvQuant;
  }

  /** Tokens per prefill chunk. */
  get prefillChunk(): number {
    return this.policy.prefillChunk;
  }

  /** Bytes the KV cache holds now: the full regions (they grow with the sequence) and the streaming regions (constant). */
  cacheBytes(): { full: number; streaming: number } {
    return this.#cache.bytes();
  }

  /**
   * Bytes the KV cache will hold once positions 0 … tokens − 1 have run (a context-parallel rank's share of them), in
   * the backend's whole pages: what a caller checks against a memory budget before the work starts.
   */
  cacheBytesAt(tokens: number): { full: number; streaming: number } {
    return dualCacheBytes(
      this.#config,
      this.plan,
      this.cacheDtype,
      this.#held(tokens),
      this.prefillChunk,
      this.#backend.pageBytes,
      this.kvQuant,
    );
  }

  /** Tokens already in the cache (the absolute position of the next token). */
  get position(): number {
    return this.#position;
  }

  /**
   * For benchmarks: fills every KV cache with random values (seeded, on the device) as if `tokens` tokens had been
   * run, and moves the position there. Results computed after this are not meaningful text; timings are.
   */
  syntheticFill(tokens: number, seed = 0): void {
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.capacity) {
      throw new DuoArgumentError('tokens', `Expected \`tokens\` in [0, ${this.capacity}] but received ${tokens}`);
    }
    this.#cache.reserve(this.#held(tokens));
    this.#cache.fillRandom(seed);
    this.#position = tokens;
  }

  /** Forgets the sequence (the cache is reused). */
  reset(): void {
    this.#position = 0;
  }

  /**
   * Runs `tokens` at positions `position … position + n − 1`, in chunks of `prefillChunk`, appending to the cache.
   */
  async forward(tokens: readonly number[] | Int32Array, options: ForwardOptions = {}): Promise<ForwardResult> {
    this.#checkTokens(tokens);
    const mode = options.logits ?? 'last';
    const start = this.#position;
    const outputsFrom = this.#finalRowsFrom(options, mode, start, tokens.length);
    const capture = options.capture ? this.#prepareCapture(options.capture, start, tokens.length) : undefined;
    const logitRows: Promise<Float32Array>[] = [];
    try {
      for (let offset = 0; offset < tokens.length; offset += this.prefillChunk) {
        const count = Math.min(this.prefillChunk, tokens.length - offset);
        const chunk = Int32Array.from(tokens.slice(offset, offset + count) as ArrayLike<number>);
        const isLast = offset + count === tokens.length;
        // Rows of this chunk before outputsFrom need no last-layer output (count: none of them).
        const finalFrom = Math.min(count, Math.max(0, outputsFrom - start - offset));
        const { workspace, last } = await this.#runChunk(chunk, start + offset, capture, finalFrom);
        if (mode === 'all') logitRows.push(this.#allLogits(workspace));
        if (mode === 'last' && isLast) logitRows.push(this.#lastLogitsOf(last));
      }
      const result: ForwardResult = {};
      if (logitRows.length > 0) result.logits = concat(await Promise.all(logitRows));
      if (capture) result.captured = await this.#readCapture(capture);
      return result;
    } finally {
      if (capture) for (const tensor of capture.tensors.values()) tensor.dispose();
    }
  }

  /** Feeds one token and returns the argmax of the next-token logits (computed on the device). */
  async greedyStep(token: number): Promise<number> {
    this.#checkTokens([token]);
    this.#lastLogitTensor((await this.#runChunk(Int32Array.of(token), this.#position, undefined)).last);
    this.#backend.argmax(this.#lastLogits, this.#nextToken);
    const [next] = (await this.#backend.read(this.#nextToken)) as Int32Array;
    return next ?? 0;
  }

  /**
   * Greedy decoding after `first`: yields the next `steps` tokens. On a backend with graphs (CUDA) the decode step is
   * captured once and replayed, the chosen token is fed back on the device, and one step is kept in flight while the
   * host reads the previous token, so the GPU does not wait for the host between tokens. If the consumer stops early,
   * the position is set back to the last token it received.
   */
  async *greedyTokens(first: number, steps: number): AsyncGenerator<number> {
    this.#checkTokens([first]);
    if (!Number.isInteger(steps) || steps < 0 || this.#position + steps > this.capacity) {
      throw new DuoArgumentError(
        'steps',
        `Expected \`steps\` in [0, ${this.capacity - this.#position}] (the room left in the session) but received ${steps}`,
      );
    }
    if (steps === 0) return;
    const b = this.#backend;
    // The first step runs as usual: it also sizes the workspace and any scratch the captured ops will reuse.
    let token = await this.greedyStep(first);
    yield token;
    if (steps === 1) return;
    if (!this.#graphs || !b.supportsGraphs || !b.captureGraph || !b.launchGraph) {
      for (let i = 1; i < steps; i++) {
        token = await this.greedyStep(token);
        yield token;
      }
      return;
    }
    const s = this.#workspace(1);
    b.write(s.ids, Int32Array.of(token));
    b.write(s.positions, Int32Array.of(this.#position));
    // The cache grows in place (paged), so one graph serves the session; memory for every step is mapped first.
    this.#cache.reserve(this.#position + steps - 1);
    this.#decodeGraph ??= b.captureGraph(() => {
      this.#lastLogitTensor(enqueued(this.#layers(s, this.#position, undefined, true)));
      b.argmax(this.#lastLogits, this.#nextToken);
      b.decodeAdvance(this.#nextToken, s.ids, s.positions);
    });
    const start = this.#position;
    let received = 0;
    const inFlight: Promise<HostArray>[] = [];
    try {
      for (let i = 1; i < steps; i++) {
        b.launchGraph(this.#decodeGraph);
        this.#position++;
        inFlight.push(b.read(this.#nextToken));
        if (inFlight.length > 1) {
          const [next] = (await inFlight.shift()) as Int32Array;
          received++;
          yield next ?? 0;
        }
      }
      while (inFlight.length > 0) {
        const [next] = (await inFlight.shift()) as Int32Array;
        received++;
        yield next ?? 0;
      }
    } finally {
      this.#position = start + received;
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#decodeGraph !== undefined) this.#backend.disposeGraph?.(this.#decodeGraph);
    this.#cache.dispose();
    for (const tensor of [this.#lastRow, this.#lastNormed, this.#lastLogits, this.#nextToken]) {
      tensor.dispose();
    }
    for (const workspace of this.#workspaces.values()) disposeWorkspace(workspace);
    this.#workspaces.clear();
    if (this.#tail) disposeWorkspace(this.#tail);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkTokens(tokens: readonly number[] | Int32Array): void {
    if (this.#disposed) throw new DuoDisposedError('The session was disposed: create a new one');
    if (tokens.length === 0) throw new DuoArgumentError('tokens', 'Expected at least one token but received none');
    if (this.#position + tokens.length > this.capacity) {
      throw new DuoArgumentError(
        'tokens',
        `The sequence would reach ${this.#position + tokens.length} tokens but the session holds ${this.capacity} (maxTokens)`,
      );
    }
    for (const token of tokens) {
      if (!Number.isInteger(token) || token < 0 || token >= this.#config.vocabSize) {
        throw new DuoArgumentError(
          'tokens',
          `Expected token ids in [0, ${this.#config.vocabSize}) but received ${token}`,
        );
      }
    }
  }

  #workspace(rows: number): Workspace {
    const existing = this.#workspaces.get(rows);
    if (existing) return existing;
    if (this.#workspaces.size >= 3) {
      // Keep the decode workspace (1 row) and the newest chunk size.
      for (const [size, workspace] of this.#workspaces) {
        if (size !== 1) {
          disposeWorkspace(workspace);
          this.#workspaces.delete(size);
          break;
        }
      }
    }
    const made: TensorHandle[] = [];
    const alloc = (dtype: DType, shape: number[]) => {
      const tensor = this.#backend.alloc(dtype, shape);
      made.push(tensor);
      return tensor;
    };
    try {
      const workspace: Workspace = { rows, ...stepWorkspace(alloc, this.#config, rows) };
      this.#workspaces.set(rows, workspace);
      return workspace;
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      throw error;
    }
  }

  /**
   * Enqueues the whole network for one chunk and advances the position (alone, the ops are enqueued before the first
   * await; a rank of a context-parallel group meets the others once a layer).
   */
  async #runChunk(
    ids: Int32Array,
    start: number,
    capture: PreparedCapture | undefined,
    finalFrom = 0,
  ): Promise<{ workspace: Workspace; last: LastOutput }> {
    const n = ids.length;
    this.#cache.reserve(this.#held(start + n));
    const s = this.#workspace(n);
    this.#backend.write(s.ids, ids);
    this.#backend.write(
      s.positions,
      Int32Array.from({ length: n }, (_, i) => start + i),
    );
    const last = this.#parallel
      ? await this.#shardedLayers(s, start, capture, this.#parallel)
      : await settled(this.#layers(s, start, capture, false, finalFrom));
    this.#position = start + n;
    return { workspace: s, last };
  }

  /** Slots this rank's full regions need for positions 0 … tokens − 1 (all of them alone). */
  #held(tokens: number): number {
    return heldPositions(this.#parallel?.shard, tokens);
  }

  /**
   * `#layers` for a rank of a context-parallel group: the same dense steps, the retrieval heads' keys written only
   * where this rank holds them, and each layer's attention as this rank's partial, gathered from every rank and
   * merged in rank order (the same bits on every rank). Every row runs every layer (no `finalFrom` shortcut).
   */
  async #shardedLayers(
    s: Workspace,
    start: number,
    capture: PreparedCapture | undefined,
    { shard, communicator }: ParallelRank,
  ): Promise<LastOutput> {
    const b = this.#backend;
    const c = this.#config;
    const blocks = this.#blocks;
    const n = s.rows;
    const width = c.numHeads * (c.headDim + 1);
    s.partial ??= b.alloc('f32', [n, width]);
    s.gathered ??= b.alloc('f32', [shard.ranks * n, width]);
    const { partial, gathered } = s;
    blocks.embed(s.ids, s.hidden);
    capture?.take(0, s.hidden, start, n);
    const attention = {
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      scale: 1 / Math.sqrt(c.headDim),
      keyLength: start + n,
      queryStart: start,
      shard,
    };
    for (let layer = 0; layer < c.numLayers; layer++) {
      const { keyCache, valueCache, streaming, quant } = this.#attentionInput(s, layer, shard);
      b.attentionPartial(s.query, keyCache, valueCache, partial, { ...attention, streaming, quant });
      await communicator.allGather(partial, gathered);
      b.mergeAttention(gathered, s.attention, { parts: shard.ranks, heads: c.numHeads, headDim: c.headDim });
      blocks.attentionOutput(layer, s.attention, s.hidden);
      blocks.mlp(layer, s.hidden, s.normed, s.gate);
      capture?.take(layer + 1, s.hidden, start, n);
    }
    return { hidden: s.hidden, row: n - 1 };
  }

  /**
   * The attention of `w`'s query rows (the first at `queryStart`) over `caches` holding `keyLength` positions: 'decode'
   * for a one-token chunk, 'prefill' otherwise; 'device-decode' (graph capture) reads the key count from `w.positions`
   * on the device, so the ops serve any step.
   */
  #attend(
    w: Workspace,
    caches: CacheLayer,
    keyLength: number,
    queryStart: number,
    op: 'decode' | 'device-decode' | 'prefill',
  ): void {
    const c = this.#config;
    const { keyCache, valueCache, streaming, quant } = caches;
    const scale = 1 / Math.sqrt(c.headDim);
    const attention = {
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      scale,
      keyLength,
      streaming,
      quant,
    };
    if (op !== 'prefill') {
      this.#backend.attentionDecode(w.query, keyCache, valueCache, w.attention, {
        ...attention,
        lengthFrom: op === 'device-decode' ? w.positions : undefined,
      });
    } else {
      this.#backend.attentionPrefill(w.query, keyCache, valueCache, w.attention, { ...attention, queryStart });
    }
  }

  /**
   * Enqueues embedding and every layer for the tokens already in `s.ids` / `s.positions`. With `deviceLength` (one row,
   * graph capture) the attention reads its key count from `s.positions` on the device, so the ops serve any step.
   * `finalFrom`: the first row whose last-layer output is read (rows before it only write their keys and values
   * there); when it is the last row, the last layer's attention, projection and MLP run for that row alone, in the
   * tail workspace (as llama.cpp does past its last layer's attention). Returns where the last output row lies.
   * On a rank of a tensor-parallel group, the two row-parallel products of each layer are summed over the ranks before
   * the next step reads the residual stream, and every row runs every layer (no `finalFrom` shortcut): the loop yields
   * each sum's promise where the ops after it must wait — `settled` awaits them, `enqueued` (graph capture,
   * stream-ordered collectives) runs straight through. Alone it yields nothing.
   */
  *#layers(
    s: Workspace,
    start: number,
    capture: PreparedCapture | undefined,
    deviceLength: boolean,
    finalFromAlone = 0,
  ): Generator<Promise<void>, LastOutput> {
    const c = this.#config;
    const blocks = this.#blocks;
    const parallel = blocks.tensorParallel !== undefined;
    const finalFrom = parallel ? 0 : finalFromAlone;
    const n = s.rows;
    let w = s; // the rows a layer's attention and MLP run for: the chunk's, or its last row alone
    let queryStart = start;
    blocks.embed(s.ids, s.hidden);
    capture?.take(0, s.hidden, start, n);
    for (let layer = 0; layer < c.numLayers; layer++) {
      const caches = this.#attentionInput(s, layer);
      if (layer === c.numLayers - 1 && finalFrom > 0) {
        // Nothing reads the last layer's output for rows before finalFrom: their keys and values are cached above.
        if (finalFrom >= n) break;
        // One row's attention equals that row of the chunk's under the exact mask (the chunked one depends on the
        // op's first query).
        if (finalFrom === n - 1 && (this.policy.prefillMask === 'exact' || this.policy.attention === 'full')) {
          w = this.#tailRow(s);
          queryStart = start + n - 1;
        }
      }
      const op = n > 1 ? 'prefill' : deviceLength ? 'device-decode' : 'decode';
      this.#attend(w, caches, start + n, queryStart, op);
      blocks.attentionOutput(layer, w.attention, w.hidden);
      if (parallel) yield blocks.reduce(w.hidden);
      blocks.mlp(layer, w.hidden, w.normed, w.gate);
      if (parallel) yield blocks.reduce(w.hidden);
      capture?.take(layer + 1, w.hidden, queryStart, w.rows);
    }
    return { hidden: w.hidden, row: w.rows - 1 };
  }

  /**
   * Layer `layer`'s attention input for the rows of `s`: RMSNorm and q/k/v, then RoPE and the cache write (with
   * `shard`, of the retrieval heads' rows this rank holds). Returns the layer's caches.
   */
  #attentionInput(s: Workspace, layer: number, shard?: ContextShard): CacheLayer {
    const c = this.#config;
    // The cache has one entry per layer by construction (DualKvCache checks the plan against the config).
    const caches = this.#cache.layers[layer] as CacheLayer;
    const { keyCache, valueCache, streaming, quant } = caches;
    this.#blocks.attentionInput(layer, s.hidden, s.normed, s.query, s.key, s.value);
    this.#backend.ropeWriteCache(s.query, s.key, s.value, s.positions, this.#inverseFrequencies, keyCache, valueCache, {
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      interleaved: c.ropeStyle === 'interleaved',
      streaming,
      quant,
      ...(shard ? { shard } : {}),
    });
    return caches;
  }

  /** The tail workspace holding the chunk's last query and residual rows (`s`, after its keys and values are cached). */
  #tailRow(s: Workspace): Workspace {
    const b = this.#backend;
    this.#tail ??= { rows: 1, ...stepWorkspace((dtype, shape) => b.alloc(dtype, shape), this.#config, 1) };
    b.copyRows(s.query, this.#tail.query, s.rows - 1, 0, 1);
    b.copyRows(s.hidden, this.#tail.hidden, s.rows - 1, 0, 1);
    return this.#tail;
  }

  #lastLogitTensor(last: LastOutput): void {
    this.#backend.copyRows(last.hidden, this.#lastRow, last.row, 0, 1);
    this.#blocks.logits(this.#lastRow, this.#lastNormed, this.#lastLogits);
  }

  async #lastLogitsOf(last: LastOutput): Promise<Float32Array> {
    this.#lastLogitTensor(last);
    return (await this.#backend.read(this.#lastLogits)) as Float32Array;
  }

  async #allLogits(workspace: Workspace): Promise<Float32Array> {
    const b = this.#backend;
    const logits = b.alloc('f32', [workspace.rows, this.#config.vocabSize]);
    try {
      this.#blocks.logits(workspace.hidden, workspace.normed, logits);
      return (await b.read(logits)) as Float32Array;
    } finally {
      logits.dispose();
    }
  }

  /**
   * The first position whose last-layer output the call reads: outputsFrom, checked against the options; when absent,
   * the last position for logits 'last' and none ('none': past the end) unless a capture takes the last layer, else
   * the call's first position.
   */
  #finalRowsFrom(options: ForwardOptions, mode: 'last' | 'all' | 'none', start: number, count: number): number {
    const from = options.outputsFrom;
    if (from === undefined) {
      if (mode === 'all' || options.capture?.layers.includes(this.#config.numLayers)) return start;
      return mode === 'last' ? start + count - 1 : start + count;
    }
    if (!Number.isInteger(from) || from < start || from >= start + count) {
      throw new DuoArgumentError(
        'outputsFrom',
        `Expected \`outputsFrom\` in [${start}, ${start + count}) (a position of this call) but received ${String(from)}`,
      );
    }
    if (options.logits === 'all') {
      throw new DuoArgumentError('outputsFrom', "`outputsFrom` skips rows that logits: 'all' would need");
    }
    const last = this.#config.numLayers;
    if (options.capture?.layers.includes(last) && options.capture.positions.some((position) => position < from)) {
      throw new DuoArgumentError(
        'outputsFrom',
        `Captures of layer ${last} (the last) must be at positions ≥ outputsFrom (${from})`,
      );
    }
    return from;
  }

  #prepareCapture(request: CaptureRequest, start: number, count: number): PreparedCapture {
    const layers = [...new Set(request.layers)];
    for (const layer of layers) {
      if (!Number.isInteger(layer) || layer < 0 || layer > this.#config.numLayers) {
        throw new DuoArgumentError(
          'capture.layers',
          `Expected layers in [0, ${this.#config.numLayers}] but received ${layer}`,
        );
      }
    }
    for (const position of request.positions) {
      if (!Number.isInteger(position) || position < start || position >= start + count) {
        throw new DuoArgumentError(
          'capture.positions',
          `Expected positions in [${start}, ${start + count}) (the tokens of this call) but received ${position}`,
        );
      }
    }
    return new PreparedCapture(this.#backend, layers, request.positions, this.#config.hiddenSize);
  }

  async #readCapture(capture: PreparedCapture): Promise<Map<number, Float32Array>> {
    const out = new Map<number, Float32Array>();
    for (const [layer, tensor] of capture.tensors) out.set(layer, (await this.#backend.read(tensor)) as Float32Array);
    return out;
  }
}

/** Capture buffers and the copy plan: runs of consecutive positions become one row copy. */
class PreparedCapture {
  readonly tensors = new Map<number, TensorHandle>();
  readonly #backend: Backend;
  readonly #runs: { position: number; index: number; length: number }[] = [];

  constructor(backend: Backend, layers: number[], positions: readonly number[], width: number) {
    this.#backend = backend;
    for (const layer of layers) this.tensors.set(layer, backend.alloc('f32', [Math.max(positions.length, 1), width]));
    positions.forEach((position, index) => {
      const last = this.#runs[this.#runs.length - 1];
      if (last && last.position + last.length === position && last.index + last.length === index) last.length++;
      else this.#runs.push({ position, index, length: 1 });
    });
  }

  /** Copies the requested rows of `hidden` (positions start … start + n − 1) for `layer`. */
  take(layer: number, hidden: TensorHandle, start: number, n: number): void {
    const target = this.tensors.get(layer);
    if (!target) return;
    for (const run of this.#runs) {
      const from = Math.max(run.position, start);
      const to = Math.min(run.position + run.length, start + n);
      if (from < to) this.#backend.copyRows(hidden, target, from - start, run.index + (from - run.position), to - from);
    }
  }
}

/** Runs a layer loop that yields collectives' promises, awaiting each before the ops that read its result. */
async function settled<T>(steps: Generator<Promise<void>, T>): Promise<T> {
  let next = steps.next();
  while (!next.done) {
    await next.value;
    next = steps.next();
  }
  return next.value;
}

/**
 * Runs a layer loop straight through, for graph capture: only with stream-ordered collectives (NCCL), which are on the
 * device's stream once called, so the ops after them wait there. A collective that failed throws here.
 */
function enqueued<T>(steps: Generator<Promise<void>, T>): T {
  let next = steps.next();
  while (!next.done) next = steps.next();
  return next.value;
}

function disposeWorkspace(workspace: Workspace): void {
  for (const value of Object.values(workspace)) if (typeof value === 'object') value.dispose();
}

function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0] as Float32Array;
  const out = new Float32Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** A policy must be an object naming its attention; catches the flat options sessions took before policies. */
export function checkPolicyShape(policy: unknown): void {
  if (policy === undefined) return;
  if (typeof policy !== 'object' || policy === null || !('attention' in policy)) {
    throw new DuoArgumentError(
      'policy',
      `Expected \`policy\` to be an AttentionPolicy ({ attention: 'full' | 'streaming' | 'duo', … }) but received ${JSON.stringify(policy)}`,
    );
  }
}

/** This rank's shard of a context-parallel session: its group's size and rank, chunks of `chunk` positions. */
function contextShard(options: ContextParallelOptions, prefillChunk: number): ContextShard {
  const { communicator } = options;
  if (typeof communicator !== 'object' || communicator === null || communicator.specificationVersion !== 'v1') {
    throw new DuoArgumentError(
      'contextParallel.communicator',
      'Expected `contextParallel.communicator` to be a Communicator (specificationVersion v1)',
    );
  }
  const chunk = options.chunk ?? prefillChunk;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new DuoArgumentError(
      'contextParallel.chunk',
      `Expected \`contextParallel.chunk\` to be a positive integer but received ${String(chunk)}`,
    );
  }
  return { ranks: communicator.size, rank: communicator.rank, chunk };
}
