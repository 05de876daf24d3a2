// The batch engine: many sequences, each with its own policy, KV cache, sampling and position, advanced together one
// step at a time (continuous batching with chunked prefill), over one model's weights and one shared page pool.
import {
  type Backend,
  type CacheBatch,
  type DType,
  DuoArgumentError,
  DuoCapacityError,
  DuoDisposedError,
  DuoError,
  DuoOutOfMemoryError,
  type ModelConfig,
  type TensorHandle,
} from '@duoattn/core';
import {
  CachedPrefix,
  DualKvCache,
  dualCacheBytes,
  fullRegionPages,
  KvPagePool,
  type KvPoolUsage,
  PrefixCache,
  type PrefixCacheStats,
  type PrefixMatch,
  prefixKey,
  type StreamingSnapshot,
} from '@duoattn/dual-cache';
import type { LlamaBlocks } from '../llama-blocks.js';
import { type SampleWorkspace, StepWorkspaces } from '../step-workspaces.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import {
  type BatchRequest,
  type BatchResult,
  type BatchStream,
  type BatchToken,
  checkRequest,
  type FinishReason,
  Generation,
  requestStream,
} from './request.js';
import { TokenQueue } from './token-stream.js';

export type { BatchRequest, BatchResult, BatchStream, BatchToken, BatchUsage, FinishReason } from './request.js';

/**
 * How sequences are admitted. 'reserve' (default): a sequence starts only when the pages its request can grow to
 * (prompt + maxTokens) are free, and takes them at once, so no sequence ever runs out mid-answer. 'optimistic': a
 * sequence starts when its next chunk fits; when a running sequence cannot grow, the newest sequence is preempted (its
 * pages freed, itself requeued first and recomputed from its tokens so far).
 */
export type AdmissionPolicy = 'reserve' | 'optimistic';

/** Options of `createBatchEngine`. */
export interface BatchEngineOptions {
  /** Most sequences running at once. Default 64. */
  maxSequences?: number;
  /** Most tokens one step runs: every running sequence's decode token, then prefill chunks. Default 1024. */
  stepTokens?: number;
  /** Bytes of KV cache all sequences share (the page pool). Default: 85 % of the device's free memory (CUDA), 2 GiB (CPU). */
  kvBudgetBytes?: number;
  /** Default 'reserve'. */
  admission?: AdmissionPolicy;
  /** Most requests waiting for admission; more are refused with a retryable DuoCapacityError. Default 1024. */
  maxWaiting?: number;
  /** Lets prompt + maxTokens exceed the model's context (benchmarks at synthetic lengths). Default false. */
  allowBeyondContext?: boolean;
  /** KV cache dtype. Default the model's (f32 on the CPU, bf16 on CUDA with 16-bit weights). */
  cacheDtype?: 'auto' | 'f32' | 'f16' | 'bf16';
  /** With 'optimistic' admission: the full regions grow by at least this many tokens. Default 1024. */
  cacheBlockTokens?: number;
  /**
   * Prefix caching (default on, `maxBytes` half of `kvBudgetBytes`): a prompt's KV stays after its request ends — the
   * retrieval heads' pages and the streaming heads' window at each prefill-chunk boundary — so a request under the same
   * policy (plan, window, KV scheme, mask, chunk; the cache dtype) whose prompt starts with the same tokens maps those
   * pages (shared, copy on write at the last partial page), restores the window and prefills only the rest, in the
   * chunks a cold run uses (so its results are the cold run's). Cached prefixes hold at most `maxBytes` of the pool and
   * are evicted least recently used first, and before any request waits or is preempted for pages. `false`: off.
   */
  prefixCache?: { readonly maxBytes?: number } | false;
  /**
   * Runs ahead: when a step only decodes and nothing joins, leaves or is cancelled before the next one,
   * the next step is enqueued — its tokens taken from the device — before this step's tokens are read, so the device
   * never waits for the host between steps. A sequence that stops on a token gets one row computed and dropped; one
   * cancelled meanwhile gets no more tokens and frees its pages a step later. Default: on for GPU backends, off on the
   * CPU (its ops run as they are enqueued: running ahead would only delay each token by a step). `false`: every step
   * reads its tokens first (A/B runs).
   */
  runAhead?: boolean;
}

/** A step's sampling: enqueued on the device, its tokens (and logits, where asked) being read. */
interface InflightSample {
  readonly samples: SampleWorkspace;
  readonly sampled: readonly Sequence[];
  readonly read: Promise<[Int32Array, Float32Array | undefined]>;
}

/** Live counters of an engine. */
export interface BatchEngineStats {
  readonly running: number;
  readonly waiting: number;
  readonly pool: KvPoolUsage;
  readonly steps: number;
  /** Steps enqueued before the previous step's tokens were read (`runAhead`). */
  readonly stepsRunAhead: number;
  readonly preemptions: number;
  /**
   * Milliseconds the step loop kept the host busy (scheduling, enqueueing the device's work, emitting tokens), not
   * counting the waits for the device's reads: where it approaches the step time, the host, not the device, sets the pace.
   */
  readonly hostMs: number;
  /** Tokens the last step ran (decode rows + prefill rows). */
  readonly lastStepRows: number;
  /** The prefix cache: entries, pool pages (and bytes) they hold, lookups at admission, hits, tokens served, evictions. */
  readonly prefixCache: PrefixCacheStats & { readonly bytes: number };
  /** Why the engine stopped, when a step failed (it then takes no requests). */
  readonly failure?: string;
}

/** @internal What the engine needs of a model. */
export interface EngineModel {
  readonly config: ModelConfig;
  readonly backend: Backend;
  readonly blocks: LlamaBlocks;
  readonly inverseFrequencies: TensorHandle;
  readonly tokenizer: Tokenizer | undefined;
  readonly defaultCacheDtype: DType;
}

const DEFAULT_MAX_SEQUENCES = 64;
const DEFAULT_STEP_TOKENS = 1024;
const DEFAULT_MAX_WAITING = 1024;
const DEFAULT_CPU_KV_BUDGET = 2 * 1024 ** 3;

/** One request as the engine runs it: its generation and its place in the pool and the batch. */
class Sequence extends Generation<TokenQueue<BatchToken, BatchResult>> {
  cache: DualKvCache | undefined;
  /** Tokens in the cache. */
  cached = 0;
  preemptions = 0;
  recomputed = 0;
  /** Tokens in the cache when it was last preempted (recomputed unless a cached prefix serves them). */
  lost = 0;
  /** Prompt tokens the prefix cache served at the last admission. */
  cachedTokens = 0;
  /** Streaming snapshots at the prompt's chunk boundaries, for the prefix this sequence will leave in the cache. */
  readonly snapshots = new Map<number, StreamingSnapshot>();
  /** Whether its prompt's prefix was offered to the prefix cache (once per admission). */
  offered = false;
  /** Admission order: the highest is the newest (preempted first). */
  order = 0;

  /** Tokens not yet in the cache: 1 when decoding, more while (re)filling. */
  get pending(): number {
    return this.tokens.length - this.cached;
  }
}

/**
 * Runs many requests at once on one model. `submit` returns at once with a stream of the request's tokens; the engine
 * steps while any request is running or waiting: each step runs every running sequence's next token plus prefill
 * chunks of those still filling, up to `stepTokens` rows, so the weights are read once per step for all of them and a
 * long prompt prefills a chunk at a time between decode steps. Each sequence has its own policy, KV cache (its pages
 * from one shared pool), sampling settings and position. Ops are enqueued on the model's backend from the caller's
 * thread; on the CPU a step runs there too, so a server runs the engine in a worker thread (`startEngineWorker`).
 */
export class BatchEngine {
  readonly maxSequences: number;
  readonly stepTokens: number;
  readonly admission: AdmissionPolicy;
  readonly pool: KvPagePool;
  readonly cacheDtype: DType;
  readonly #model: EngineModel;
  readonly #options: BatchEngineOptions;
  readonly #waiting: Sequence[] = [];
  readonly #running: Sequence[] = [];
  readonly #workspaces: StepWorkspaces;
  #batch: { cache: CacheBatch; members: Sequence[] } | undefined;
  #nextId = 1;
  #nextOrder = 1;
  #loop: Promise<void> | undefined;
  #steps = 0;
  #preemptions = 0;
  /** The last step's sampling, enqueued and not yet read. */
  #inflight: InflightSample | undefined;
  #stepsRunAhead = 0;
  #hostMs = 0;
  readonly #runAhead: boolean;
  #lastStepRows = 0;
  #failure: unknown;
  #closed = false;
  readonly #prefixes: PrefixCache | undefined;

  /** @internal Use `LlamaModel.createBatchEngine`. */
  constructor(model: EngineModel, options: BatchEngineOptions = {}) {
    this.#model = model;
    this.#options = options;
    this.maxSequences = positiveInteger('maxSequences', options.maxSequences ?? DEFAULT_MAX_SEQUENCES);
    this.stepTokens = positiveInteger('stepTokens', options.stepTokens ?? DEFAULT_STEP_TOKENS);
    if (this.stepTokens < this.maxSequences) {
      throw new DuoArgumentError(
        'stepTokens',
        `Expected \`stepTokens\` (${this.stepTokens}) to be at least \`maxSequences\` (${this.maxSequences}): every running sequence decodes one token per step`,
      );
    }
    this.#runAhead = options.runAhead ?? model.backend.device !== 'cpu';
    this.admission = options.admission ?? 'reserve';
    if (this.admission !== 'reserve' && this.admission !== 'optimistic') {
      throw new DuoArgumentError(
        'admission',
        `Expected \`admission\` to be 'reserve' or 'optimistic' but received ${String(this.admission)}`,
      );
    }
    positiveInteger('maxWaiting', options.maxWaiting ?? DEFAULT_MAX_WAITING);
    positiveInteger('cacheBlockTokens', options.cacheBlockTokens ?? 1024);
    const dtype = options.cacheDtype ?? 'auto';
    if (!['auto', 'f32', 'f16', 'bf16'].includes(dtype)) {
      throw new DuoArgumentError(
        'cacheDtype',
        `Expected \`cacheDtype\` to be auto, f32, f16 or bf16 but received ${String(dtype)}`,
      );
    }
    this.cacheDtype = dtype === 'auto' ? model.defaultCacheDtype : dtype;
    const backend = model.backend;
    const budget = options.kvBudgetBytes ?? defaultKvBudget(backend);
    this.pool = new KvPagePool({ budgetBytes: budget, pageBytes: backend.pageBytes });
    const prefixOptions = options.prefixCache ?? {};
    if (prefixOptions !== false) {
      const maxBytes = prefixOptions.maxBytes ?? budget / 2;
      if (!(Number.isFinite(maxBytes) && maxBytes >= 0)) {
        throw new DuoArgumentError(
          'prefixCache.maxBytes',
          `Expected \`prefixCache.maxBytes\` to be a finite number ≥ 0 but received ${String(maxBytes)}`,
        );
      }
      this.#prefixes = new PrefixCache({ maxPages: Math.floor(maxBytes / this.pool.pageBytes) });
    }
    this.#workspaces = new StepWorkspaces(backend, model.config);
  }

  /** The failure that stopped the engine, if one did (every request then fails with it). */
  get failure(): unknown {
    return this.#failure;
  }

  stats(): BatchEngineStats {
    return {
      running: this.#running.length,
      waiting: this.#waiting.length,
      pool: this.pool.usage(),
      steps: this.#steps,
      stepsRunAhead: this.#stepsRunAhead,
      preemptions: this.#preemptions,
      hostMs: this.#hostMs,
      lastStepRows: this.#lastStepRows,
      prefixCache: this.#prefixStats(),
      ...(this.#failure === undefined ? {} : { failure: describe(this.#failure) }),
    };
  }

  /**
   * Queues a request and returns its stream at once. Refuses, before any work, what can never run (bad arguments; a
   * prompt + maxTokens past the context; more KV memory than the whole pool: DuoCapacityError, not retryable) and what
   * cannot be queued now (the queue is full: DuoCapacityError, retryable).
   */
  submit(request: BatchRequest): BatchStream {
    if (this.#closed) throw new DuoDisposedError('The batch engine was closed: create a new one');
    if (this.#failure !== undefined) {
      throw new DuoError(
        'DUO_NATIVE',
        `The batch engine failed and takes no more requests: ${describe(this.#failure)}`,
      );
    }
    const sequence = this.#prepare(request);
    const maxWaiting = this.#options.maxWaiting ?? DEFAULT_MAX_WAITING;
    if (this.#waiting.length >= maxWaiting) {
      throw new DuoCapacityError(
        `The engine's queue is full (${this.#waiting.length} requests waiting, at most ${maxWaiting}): try again later`,
        true,
      );
    }
    this.#waiting.push(sequence);
    const cancel = () => {
      sequence.cancelled = true;
      const index = this.#waiting.indexOf(sequence);
      if (index >= 0 && !sequence.cache) {
        this.#waiting.splice(index, 1);
        this.#finish(sequence, 'abort');
      }
    };
    const stream = requestStream(sequence.id, sequence.queue, cancel, request.signal);
    this.#loop ??= this.#run();
    return stream;
  }

  /**
   * Evicts every cached prefix: their pages go back to the pool at once, or when the last running sequence that maps
   * them ends.
   */
  clearPrefixCache(): void {
    this.#prefixes?.clear();
  }

  #prefixStats(): PrefixCacheStats & { bytes: number } {
    const stats = this.#prefixes?.stats() ?? {
      entries: 0,
      pages: 0,
      lookups: 0,
      hits: 0,
      hitTokens: 0,
      evictions: 0,
    };
    return { ...stats, bytes: stats.pages * this.pool.pageBytes };
  }

  /** Cancels every request, waits for the step in flight, and frees the engine's memory. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const sequence of [...this.#waiting, ...this.#running]) sequence.cancelled = true;
    await this.#loop;
    for (const sequence of this.#waiting.splice(0)) this.#finish(sequence, 'abort');
    this.#batch?.cache.dispose();
    this.#batch = undefined;
    this.#prefixes?.clear();
    this.#workspaces.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Checks a request and makes its sequence (nothing allocated yet). */
  #prepare(request: BatchRequest): Sequence {
    const { config, tokenizer } = this.#model;
    const checked = checkRequest(request, config, tokenizer, this.#options.allowBeyondContext);
    const sequence = new Sequence(this.#nextId++, request, checked, tokenizer, new TokenQueue());
    const pages = this.#pagesToAdmit(sequence, sequence.capacity);
    if (pages > this.pool.totalPages) {
      throw new DuoCapacityError(
        `The request needs ${pages} KV pages of ${this.pool.pageBytes} bytes for ${sequence.capacity} tokens (${request.policy?.attention ?? 'full'} attention, ${sequence.policy.kvQuant} KV) but the engine's whole pool has ${this.pool.totalPages}`,
        false,
      );
    }
    return sequence;
  }

  /**
   * Pages of the pool a request takes: to start (its prompt; what 'optimistic' admission asks) and at most (prompt +
   * maxTokens; what 'reserve' admission takes at once). Checks the request as `submit` does.
   */
  pagesFor(request: BatchRequest): { readonly start: number; readonly most: number } {
    const sequence = this.#prepare(request);
    return {
      start: this.#pagesToAdmit(sequence, sequence.prompt.length),
      most: this.#pagesToAdmit(sequence, sequence.capacity),
    };
  }

  /** Pages a sequence holds when its full regions back `tokens` positions (streaming regions included). */
  #pagesToAdmit(sequence: Sequence, tokens: number): number {
    const { config, backend } = this.#model;
    const { plan } = sequence;
    const bytes = dualCacheBytes(
      config,
      plan,
      this.cacheDtype,
      tokens,
      sequence.policy.prefillChunk,
      backend.pageBytes,
      sequence.policy.kvQuant,
    );
    return this.pool.pagesFor(bytes.full) + this.pool.pagesFor(bytes.streaming);
  }

  /** Steps while anything runs or waits; a step's failure fails every request and stops the engine. */
  async #run(): Promise<void> {
    try {
      // submit() returns before the first step runs.
      await new Promise<void>((resolve) => setImmediate(resolve));
      while (this.#running.length > 0 || this.#waiting.length > 0 || this.#inflight) {
        await this.#step();
        // Let the caller's event loop run between steps (new requests, cancellations, stream consumers).
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } catch (error) {
      this.#failure = error;
      // A sampling still in flight fails with the step (its read is marked handled when made); nothing reads it.
      this.#inflight = undefined;
      for (const sequence of [...this.#running.splice(0), ...this.#waiting.splice(0)]) {
        this.#dropSnapshots(sequence);
        sequence.cache?.dispose();
        sequence.cache = undefined;
        sequence.queue.fail(error);
      }
    } finally {
      this.#loop = undefined;
    }
  }

  async #step(): Promise<void> {
    const previous = this.#inflight;
    if (previous) {
      // The last step's tokens: first enqueue the next decode step where it needs none of them on the host.
      const started = performance.now();
      this.#inflight = this.#canRunAhead(previous) ? this.#decodeAhead(previous) : undefined;
      this.#hostMs += performance.now() - started;
      await this.#emitSampled(previous);
      // A step ran ahead: its tokens come next. Else this is a step boundary: schedule the next step now.
      if (this.#inflight) return;
    }
    const started = performance.now();
    try {
      this.#boundary();
    } finally {
      this.#hostMs += performance.now() - started;
    }
  }

  /** A step boundary: retire, admit, schedule, and enqueue the step's passes and sampling. */
  #boundary(): void {
    this.#retireCancelled();
    this.#admit();
    const spans = this.#schedule();
    if (spans.size === 0) return;
    const members = this.#running;
    const rows = members.map((sequence) => spans.get(sequence) ?? 0);
    // Which sequences give a next token: those whose span reaches the end of their tokens (its last row is sampled).
    const sampled = members.filter((sequence, s) => {
      const count = rows[s] ?? 0;
      return count > 0 && sequence.cached + count === sequence.tokens.length;
    });
    const samples = sampled.length > 0 ? this.#workspaces.samples(sampled.length) : undefined;
    // The single rows (decode) in one pass, then each prefill chunk in a pass of its own: a chunk's matrix products
    // then have the shape they have alone, so on every backend a sequence's rows do not depend on its step-mates.
    const passes: number[][] = [];
    const singles = members.flatMap((_, s) => (rows[s] === 1 ? [s] : []));
    if (singles.length > 0) passes.push(singles);
    members.forEach((_, s) => {
      if ((rows[s] ?? 0) > 1) passes.push([s]);
    });
    for (const pass of passes) this.#forward(pass, rows, sampled, samples);
    members.forEach((sequence, s) => {
      const count = rows[s] ?? 0;
      const prefill = count > 0 && sequence.cached < sequence.prompt.length;
      sequence.cached += count;
      if (prefill) this.#atChunkEnd(sequence);
    });
    this.#steps++;
    this.#lastStepRows = rows.reduce((sum, count) => sum + count, 0);
    if (samples) this.#inflight = this.#sample(samples, sampled);
  }

  /**
   * Whether the next step can be enqueued before `previous` is read: it would decode exactly the sequences `previous`
   * samples, in the same order, each from the token being sampled (nothing waits, none is cancelled or reaches its
   * token limit with it), and every cache has room for one more row.
   */
  #canRunAhead(previous: InflightSample): boolean {
    const members = this.#running;
    // A waiting request could be admitted at the next boundary, unless every sequence slot is taken.
    const admitting = this.#waiting.length > 0 && members.length < this.maxSequences;
    if (!this.#runAhead || admitting || previous.sampled.length !== members.length) return false;
    const ready = members.every(
      (sequence, s) =>
        previous.sampled[s] === sequence &&
        !sequence.cancelled &&
        sequence.cached === sequence.tokens.length &&
        sequence.generated.length + 1 < sequence.maxNew,
    );
    if (!ready) return false;
    try {
      for (const sequence of members) sequence.cache?.reserve(sequence.cached + 1);
    } catch (error) {
      if (error instanceof DuoOutOfMemoryError) return false;
      throw error;
    }
    return true;
  }

  /** Enqueues the decode step after `previous`, its ids the tokens `previous` samples on the device. */
  #decodeAhead(previous: InflightSample): InflightSample {
    const members = this.#running;
    const rows = members.map(() => 1);
    const sampled = [...members];
    const samples = this.#workspaces.samples(sampled.length);
    this.#forward(
      members.map((_, s) => s),
      rows,
      sampled,
      samples,
      previous.samples.tokens,
    );
    for (const sequence of members) sequence.cached += 1;
    this.#steps++;
    this.#stepsRunAhead++;
    this.#lastStepRows = members.length;
    return this.#sample(samples, sampled);
  }

  /**
   * Enqueues one forward pass over the rows of the running sequences at `pass` (indices into the running list; each
   * runs `rows[s]` rows from its cached position), and copies the last row of each of them in `sampled` into its
   * slot of `samples.hidden`.
   */
  #forward(
    pass: readonly number[],
    rows: readonly number[],
    sampled: readonly Sequence[],
    samples?: SampleWorkspace,
    deviceIds?: TensorHandle,
  ): void {
    const members = this.#running;
    const inPass = new Set(pass);
    const spanOf = (s: number) => (inPass.has(s) ? (rows[s] ?? 0) : 0);
    const total = pass.reduce((sum, s) => sum + (rows[s] ?? 0), 0);
    const batch = this.#cacheBatch();
    batch.setSpans(members.map((sequence, s) => ({ rows: spanOf(s), start: sequence.cached })));
    const { backend: b, config: c, blocks } = this.#model;
    const w = this.#workspaces.rows(total);
    const ids = new Int32Array(total);
    const positions = new Int32Array(total);
    const copies: { row: number; index: number }[] = [];
    let row = 0;
    members.forEach((sequence, s) => {
      const count = spanOf(s);
      for (let i = 0; i < count; i++) {
        ids[row + i] = sequence.tokens[sequence.cached + i] ?? 0;
        positions[row + i] = sequence.cached + i;
      }
      const index = count > 0 ? sampled.indexOf(sequence) : -1;
      if (index >= 0) copies.push({ row: row + count - 1, index });
      row += count;
    });
    // Run ahead: the ids are the tokens the previous step samples, still on the device (one per row, in row order).
    if (deviceIds) b.copyRows(deviceIds, w.ids);
    else b.write(w.ids, ids);
    b.write(w.positions, positions);
    blocks.embed(w.ids, w.hidden);
    const attention = { heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim };
    const scale = 1 / Math.sqrt(c.headDim);
    const interleaved = c.ropeStyle === 'interleaved';
    for (let layer = 0; layer < c.numLayers; layer++) {
      blocks.attentionInput(layer, w.hidden, w.normed, w.query, w.key, w.value);
      b.ropeWriteCacheBatch(w.query, w.key, w.value, w.positions, this.#model.inverseFrequencies, batch, layer, {
        ...attention,
        interleaved,
      });
      b.attentionBatch(w.query, w.attention, batch, layer, { ...attention, scale });
      blocks.attentionOutput(layer, w.attention, w.hidden);
      blocks.mlp(layer, w.hidden, w.normed, w.gate);
    }
    // Before a later pass of the same size reuses this workspace.
    if (samples) for (const { row: from, index } of copies) b.copyRows(w.hidden, samples.hidden, from, index, 1);
  }

  /**
   * Enqueues drawing the next token of every sequence in `sampled` (hidden rows in `s.hidden`) on the device, and the
   * reads of the tokens (and logits, where asked) that `#emitSampled` awaits.
   */
  #sample(s: SampleWorkspace, sampled: readonly Sequence[]): InflightSample {
    const { backend: b, blocks } = this.#model;
    blocks.logits(s.hidden, s.normed, s.logits);
    const settings = new Float32Array(4 * sampled.length);
    sampled.forEach((sequence, index) => {
      const { temperature, topK, topP } = sequence.sampling;
      settings.set([temperature, topK, topP, temperature > 0 ? sequence.random() : 0], 4 * index);
    });
    b.write(s.settings, settings);
    b.sample(s.logits, s.settings, s.tokens);
    const wantsLogits = sampled.some((sequence) => sequence.request.logits || sequence.request.logprobs !== undefined);
    const read = Promise.all([
      b.read(s.tokens) as Promise<Int32Array>,
      wantsLogits ? (b.read(s.logits) as Promise<Float32Array>) : undefined,
    ]);
    // Read later (after the next step is enqueued): a failed read must fail the engine through #run, not go unhandled.
    read.catch(() => undefined);
    return { samples: s, sampled, read };
  }

  /**
   * Emits the tokens of a sampling once read; a sequence that ended meanwhile (a run-ahead row) or was cancelled gets
   * nothing.
   */
  async #emitSampled({ sampled, read }: InflightSample): Promise<void> {
    const [tokens, logits] = await read;
    const started = performance.now();
    this.#emitTokens(sampled, tokens, logits);
    this.#hostMs += performance.now() - started;
  }

  #emitTokens(sampled: readonly Sequence[], tokens: Int32Array, logits: Float32Array | undefined): void {
    const vocab = this.#model.config.vocabSize;
    sampled.forEach((sequence, index) => {
      if (sequence.cancelled || !this.#running.includes(sequence)) return;
      const row = logits?.subarray(index * vocab, (index + 1) * vocab);
      const finish = sequence.accept(tokens[index] ?? 0, row);
      if (finish) this.#retire(sequence, finish);
    });
  }

  /** Ends cancelled sequences at the step boundary: their pages go back to the pool. */
  #retireCancelled(): void {
    for (const sequence of [...this.#running]) if (sequence.cancelled) this.#retire(sequence, 'abort');
    for (const sequence of [...this.#waiting]) {
      if (!sequence.cancelled) continue;
      this.#waiting.splice(this.#waiting.indexOf(sequence), 1);
      this.#finish(sequence, 'abort');
    }
  }

  /**
   * Starts waiting sequences, first come first served, while there is room and (by the admission policy) pages. A
   * sequence whose prompt starts with a cached prefix adopts it and needs pages only past its shared pages; cached
   * prefixes are evicted (least recently used first) before a sequence is left waiting for pages.
   */
  #admit(): void {
    while (this.#waiting.length > 0 && this.#running.length < this.maxSequences) {
      const sequence = this.#waiting[0] as Sequence;
      const reserve = this.admission === 'reserve';
      const tokens = reserve ? sequence.capacity : Math.min(sequence.capacity, sequence.tokens.length);
      let match = this.#match(sequence);
      const pages = (used: PrefixMatch | undefined) =>
        this.#pagesToAdmit(sequence, tokens) - (used ? this.#sharedPages(sequence, used.rows) : 0);
      if (!this.#makeRoom(pages(match), match?.prefix)) {
        // Nothing running will free pages: only a lone sequence that cannot fit would wait forever, and submit refuses those.
        if (!match || !this.#makeRoom(pages(undefined))) break;
        match = undefined;
      }
      this.#waiting.shift();
      const { config, backend } = this.#model;
      const { plan } = sequence;
      sequence.cache = new DualKvCache(backend, {
        config,
        plan,
        dtype: this.cacheDtype,
        maxTokens: sequence.capacity,
        chunkTokens: sequence.policy.prefillChunk,
        blockTokens: reserve ? sequence.capacity : (this.#options.cacheBlockTokens ?? 1024),
        initialTokens: match ? 0 : tokens,
        prefillMask: sequence.policy.prefillMask,
        kvQuant: sequence.policy.kvQuant,
        pool: this.pool,
      });
      sequence.cached = 0;
      sequence.offered = false;
      if (this.#prefixes && sequence.request.syntheticContext === undefined) this.#prefixes.record(match);
      if (match) {
        sequence.cache.adoptPrefix(match.prefix, match.rows);
        sequence.cache.reserve(tokens);
        sequence.cached = match.rows;
        sequence.recomputed -= Math.min(match.rows, sequence.lost);
      }
      sequence.cachedTokens = match?.rows ?? 0;
      const synthetic = sequence.request.syntheticContext ?? 0;
      if (synthetic > 0) {
        sequence.cache.reserve(synthetic);
        sequence.cache.fillRandom(sequence.id);
        sequence.cached = synthetic;
      }
      sequence.order = this.#nextOrder++;
      if (sequence.admittedAt === 0) sequence.admittedAt = performance.now();
      this.#running.push(sequence);
      this.#batch?.cache.dispose();
      this.#batch = undefined;
    }
  }

  /** The longest cached prefix of the sequence's prompt under its policy, leaving at least one prompt token to run. */
  #match(sequence: Sequence): PrefixMatch | undefined {
    if (!this.#prefixes || sequence.request.syntheticContext) return undefined;
    return this.#prefixes.lookup(this.#prefixKey(sequence), sequence.prompt, sequence.prompt.length - 1);
  }

  /** The prefix-cache key of a sequence's policy (as its cache will report it). */
  #prefixKey(sequence: Sequence): string {
    const { plan } = sequence;
    const { kvQuant, prefillMask, prefillChunk } = sequence.policy;
    return prefixKey(plan, { dtype: this.cacheDtype, kvQuant, prefillMask, chunkTokens: prefillChunk });
  }

  /** Pool pages a cache of the sequence's policy shares with a cached prefix of `rows` tokens. */
  #sharedPages(sequence: Sequence, rows: number): number {
    const { config, backend } = this.#model;
    const { plan } = sequence;
    return fullRegionPages(config, plan, this.cacheDtype, rows, backend.pageBytes, 'floor', sequence.policy.kvQuant);
  }

  /** Evicts cached prefixes no sequence shares (least recently used first; never `keep`) until `pages` are free. */
  #makeRoom(pages: number, keep?: CachedPrefix): boolean {
    while (!this.pool.fits(pages)) if (!this.#prefixes?.evictUnreferenced(keep)) return false;
    return true;
  }

  /**
   * After a prefill chunk: at a chunk boundary of the prompt, a snapshot of the streaming heads (for the prefix the
   * sequence leaves in the cache; skipped when the pool has no room); once the prompt is in, its prefix is offered.
   */
  #atChunkEnd(sequence: Sequence): void {
    const cache = sequence.cache;
    if (!this.#prefixes || !cache || sequence.request.syntheticContext || sequence.offered) return;
    const position = sequence.cached;
    if (position % cache.chunkTokens === 0 && position <= sequence.prompt.length && cache.hasStreamingHeads) {
      try {
        const snapshot = cache.snapshotStreaming(position);
        if (snapshot) sequence.snapshots.set(position, snapshot);
      } catch (error) {
        if (!(error instanceof DuoOutOfMemoryError)) throw error;
      }
    }
    if (position >= sequence.prompt.length) this.#offerPrefix(sequence);
  }

  /**
   * Leaves the sequence's longest prompt prefix at a chunk boundary (with its streaming snapshot, when the policy has
   * streaming heads) in the prefix cache, unless the cache already serves it or has no room.
   */
  #offerPrefix(sequence: Sequence): void {
    const cache = sequence.cache;
    if (!this.#prefixes || !cache || sequence.offered) return;
    sequence.offered = true;
    const chunk = cache.chunkTokens;
    // The longest prefix with its snapshot (when the policy needs one) that fits the cache's budget.
    const pagesAt = (rows: number) => {
      let pages = cache.fullPages(rows, 'ceil');
      for (const [position, snapshot] of sequence.snapshots) if (position <= rows) pages += snapshot.pages;
      return pages;
    };
    let rows = Math.floor(Math.min(sequence.cached, sequence.prompt.length) / chunk) * chunk;
    while (
      rows > cache.sharedRows &&
      ((cache.hasStreamingHeads && !sequence.snapshots.has(rows)) || pagesAt(rows) > this.#prefixes.maxPages)
    ) {
      rows -= chunk;
    }
    const tokens = sequence.prompt.slice(0, rows);
    const snapshots = new Map([...sequence.snapshots].filter(([position]) => position <= rows));
    for (const [position, snapshot] of sequence.snapshots) if (position > rows) snapshot.dispose();
    sequence.snapshots.clear();
    const discard = () => {
      for (const snapshot of snapshots.values()) snapshot.dispose();
    };
    if (rows <= cache.sharedRows || this.#prefixes.covers(cache.prefixKey, tokens)) {
      discard();
      return;
    }
    let prefix: CachedPrefix;
    try {
      prefix = CachedPrefix.fromCache(this.#model.backend, cache, tokens, snapshots, this.pool);
    } catch (error) {
      discard();
      if (error instanceof DuoOutOfMemoryError) return;
      throw error;
    }
    this.#prefixes.insert(prefix);
  }

  #dropSnapshots(sequence: Sequence): void {
    for (const snapshot of sequence.snapshots.values()) snapshot.dispose();
    sequence.snapshots.clear();
  }

  /**
   * This step's rows per running sequence. A sequence runs its tokens in the shapes it would run alone, so its results
   * do not depend on what shares its steps: the prompt in chunks of its policy's `prefillChunk` from position 0, every
   * later token (its answer, or the answer replayed after a preemption) one row per step. Single rows come first;
   * then whole chunks in admission order while the step's token budget lasts (a step always makes progress). With
   * optimistic admission, memory for every span is mapped first, preempting the newest sequences if needed.
   */
  #schedule(): Map<Sequence, number> {
    for (;;) {
      const spans = new Map<Sequence, number>();
      let budget = this.stepTokens;
      for (const sequence of this.#running) {
        if (sequence.pending > 0 && sequence.cached >= sequence.prompt.length) {
          spans.set(sequence, 1);
          budget--;
        }
      }
      for (const sequence of this.#running) {
        if (sequence.pending === 0 || sequence.cached >= sequence.prompt.length) continue;
        const rows = Math.min(sequence.policy.prefillChunk, sequence.prompt.length - sequence.cached);
        if (rows > budget && spans.size > 0) continue;
        spans.set(sequence, rows);
        budget -= rows;
      }
      const starved = this.#reserve(spans);
      if (starved === undefined) return spans;
      // Cached prefixes no sequence shares go before any running sequence does.
      if (!this.#prefixes?.evictUnreferenced()) this.#preempt(starved);
    }
  }

  /** Maps memory for every span; returns the sequence to preempt when the pool runs out, else undefined. */
  #reserve(spans: Map<Sequence, number>): Sequence | undefined {
    for (const [sequence, rows] of spans) {
      try {
        sequence.cache?.reserve(sequence.cached + rows);
      } catch (error) {
        if (!(error instanceof DuoOutOfMemoryError) || this.admission !== 'optimistic') throw error;
        return this.#running.reduce((newest, other) => (other.order > newest.order ? other : newest));
      }
    }
    return undefined;
  }

  /** Evicts `sequence`: its pages go back to the pool and it waits first in line, to be recomputed from its tokens. */
  #preempt(sequence: Sequence): void {
    this.#running.splice(this.#running.indexOf(sequence), 1);
    // What it computed of its prompt stays cached: its readmission (or another request) may adopt it.
    this.#offerPrefix(sequence);
    this.#dropSnapshots(sequence);
    sequence.cache?.dispose();
    sequence.cache = undefined;
    sequence.lost = sequence.cached;
    sequence.recomputed += sequence.cached;
    sequence.cached = 0;
    sequence.preemptions++;
    this.#preemptions++;
    this.#waiting.unshift(sequence);
    this.#batch?.cache.dispose();
    this.#batch = undefined;
  }

  /** The cache batch of the running sequences, made again when they change. */
  #cacheBatch(): CacheBatch {
    const members = this.#running;
    const current = this.#batch;
    if (current && current.members.length === members.length && current.members.every((m, i) => m === members[i])) {
      return current.cache;
    }
    current?.cache.dispose();
    const { config, backend } = this.#model;
    const cache = backend.createCacheBatch(
      members.map((sequence) =>
        (sequence.cache as DualKvCache).layers.map(({ keyCache, valueCache, streaming, quant }) => ({
          keyCache,
          valueCache,
          streaming,
          quant,
        })),
      ),
      { kvHeads: config.numKvHeads, headDim: config.headDim },
    );
    this.#batch = { cache, members: [...members] };
    return cache;
  }

  /** Ends a running sequence: its cache is freed and its stream closed. */
  #retire(sequence: Sequence, reason: FinishReason): void {
    const index = this.#running.indexOf(sequence);
    if (index >= 0) this.#running.splice(index, 1);
    // The cache batch names this sequence's caches: it goes first.
    this.#batch?.cache.dispose();
    this.#batch = undefined;
    this.#offerPrefix(sequence);
    this.#dropSnapshots(sequence);
    sequence.cache?.dispose();
    sequence.cache = undefined;
    this.#finish(sequence, reason);
  }

  #finish(sequence: Sequence, reason: FinishReason): void {
    sequence.finish(reason, {
      recomputed: sequence.recomputed,
      cachedTokens: sequence.cachedTokens,
      preemptions: sequence.preemptions,
    });
  }
}

/** KV bytes an engine takes when not told: 85 % of the device's free memory now, 2 GiB on the CPU. */
export function defaultKvBudget(backend: Backend): number {
  if (backend.device === 'cpu') return DEFAULT_CPU_KV_BUDGET;
  const free = backend.memory().deviceFreeBytes ?? 0;
  return Math.floor(free * 0.85);
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new DuoArgumentError(name, `Expected \`${name}\` to be a positive integer but received ${String(value)}`);
  }
  return value;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
