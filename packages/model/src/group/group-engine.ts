// The engine of a parallel group (ADR 0011): requests queue here and run one at a time over every rank of the group
// (in this thread for tests and CPU runs, or one process per GPU), with the batch engine's request interface, so a
// server drives either the same way.
import {
  type Communicator,
  DuoArgumentError,
  DuoCapacityError,
  DuoDisposedError,
  DuoError,
  type ModelConfig,
} from '@duoattn/core';
import type { BatchEngineStats } from '../batch/batch-engine.js';
import {
  type BatchRequest,
  type BatchResult,
  type BatchStream,
  type BatchToken,
  checkRequest,
  requestStream,
  type TokenSink,
} from '../batch/request.js';
import { TokenQueue } from '../batch/token-stream.js';
import type { LlamaModel } from '../llama-model.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { GroupRank, type GroupRankOptions, type GroupRequest, type ParallelSplit } from './group-rank.js';

/** What a request reports of rank 0's cache while it runs. */
export interface CacheBytes {
  readonly full: number;
  readonly streaming: number;
}

/**
 * The ranks of a group as its engine drives them. `run` hands one request to every rank; rank 0 streams its tokens
 * and result into `sink` (or fails it: the request was refused). It resolves when every rank is done with it and
 * rejects when a rank failed mid-request: the group is then unusable.
 */
export interface RankGroup {
  readonly size: number;
  readonly split: ParallelSplit;
  /** Bytes of KV cache each rank's share of a request may take. */
  readonly kvBudgetBytes: number;
  /** The device of rank 0, e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)". */
  readonly deviceName: string;
  run(id: number, request: GroupRequest, sink: TokenSink, cacheBytes: (bytes: CacheBytes) => void): Promise<void>;
  /** Cancels the request `id` if it runs: rank 0 ends it with 'abort' before its next token. */
  cancel(id: number): void;
  close(): Promise<void>;
}

/** Options of `GroupEngine`. */
export interface GroupEngineOptions {
  /** Requests queued behind the running one before `submit` refuses (retryable). Default 256. */
  readonly maxWaiting?: number;
  /** Lets a request's prompt + maxTokens exceed the model's context (benchmarks on synthetic caches). Default false. */
  readonly allowBeyondContext?: boolean;
}

/** A queued or running request. */
interface Job {
  readonly id: number;
  readonly submitted: number;
  readonly request: GroupRequest;
  readonly queue: TokenQueue<BatchToken, BatchResult>;
  cancelled: boolean;
}

const DEFAULT_MAX_WAITING = 256;

/**
 * Runs requests over a parallel group, first come first served, one at a time (a group exists to give one sequence more
 * memory or more compute than one device has). `submit` checks a request here, before it queues, as the batch engine
 * does; a request the ranks refuse (its share of the cache past a rank's budget) fails its stream.
 */
export class GroupEngine {
  readonly #group: RankGroup;
  readonly #config: ModelConfig;
  readonly #tokenizer: Tokenizer | undefined;
  readonly #options: GroupEngineOptions;
  readonly #waiting: Job[] = [];
  #running: Job | undefined;
  #cache: CacheBytes = { full: 0, streaming: 0 };
  #nextId = 1;
  #steps = 0;
  #loop: Promise<void> | undefined;
  #failure: unknown;
  #closed = false;

  constructor(
    group: RankGroup,
    model: { config: ModelConfig; tokenizer: Tokenizer | undefined },
    options: GroupEngineOptions = {},
  ) {
    this.#group = group;
    this.#config = model.config;
    this.#tokenizer = model.tokenizer;
    this.#options = options;
    const maxWaiting = options.maxWaiting ?? DEFAULT_MAX_WAITING;
    if (!Number.isInteger(maxWaiting) || maxWaiting < 1) {
      throw new DuoArgumentError(
        'maxWaiting',
        `Expected \`maxWaiting\` to be a positive integer but received ${String(maxWaiting)}`,
      );
    }
  }

  /** The group's ranks and split. */
  get group(): Pick<RankGroup, 'size' | 'split' | 'deviceName' | 'kvBudgetBytes'> {
    return this.#group;
  }

  /** Why the group stopped, once a rank failed mid-request; then every request is refused. */
  get failure(): unknown {
    return this.#failure;
  }

  /**
   * Queues a request and returns its stream at once; refuses (throws) what can never run (bad arguments, past the
   * context) and, retryably, what cannot be queued now (the queue is full).
   */
  submit(request: BatchRequest): BatchStream {
    if (this.#closed) throw new DuoDisposedError('The group engine was closed: start a new one');
    if (this.#failure !== undefined) {
      throw new DuoError(
        'DUO_NATIVE',
        `The parallel group failed and takes no more requests: ${describe(this.#failure)}`,
      );
    }
    const checked = checkRequest(request, this.#config, this.#tokenizer, this.#options.allowBeyondContext);
    const maxWaiting = this.#options.maxWaiting ?? DEFAULT_MAX_WAITING;
    if (this.#waiting.length >= maxWaiting) {
      throw new DuoCapacityError(
        `The group's queue is full (${this.#waiting.length} requests waiting, at most ${maxWaiting}): try again later`,
        true,
      );
    }
    const { signal: _signal, syntheticContext, ...rest } = request;
    // The ranks get token ids: the given prompt (synthetic positions stay a count).
    const prompt = checked.prompt.slice(checked.synthetic);
    const job: Job = {
      id: this.#nextId++,
      submitted: performance.now(),
      request: { ...rest, prompt, ...(syntheticContext === undefined ? {} : { syntheticContext }) },
      queue: new TokenQueue(),
      cancelled: false,
    };
    this.#waiting.push(job);
    const stream = requestStream(job.id, job.queue, () => this.#cancel(job), request.signal);
    this.#loop ??= this.#run();
    return stream;
  }

  /** Live counters in the batch engine's shape: one running at most; the pool figures are rank 0's share. */
  stats(): BatchEngineStats {
    const pageBytes = 2 * 1024 * 1024;
    const pages = (bytes: number) => Math.ceil(bytes / pageBytes);
    const totalPages = Math.floor(this.#group.kvBudgetBytes / pageBytes);
    const used = { full: pages(this.#cache.full), streaming: pages(this.#cache.streaming) };
    return {
      running: this.#running ? 1 : 0,
      waiting: this.#waiting.length,
      pool: { pageBytes, totalPages, freePages: Math.max(0, totalPages - used.full - used.streaming), usedPages: used },
      steps: this.#steps,
      stepsRunAhead: 0,
      preemptions: 0,
      hostMs: 0,
      lastStepRows: this.#running ? 1 : 0,
      prefixCache: { entries: 0, pages: 0, lookups: 0, hits: 0, hitTokens: 0, evictions: 0, bytes: 0 },
      ...(this.#failure === undefined ? {} : { failure: describe(this.#failure) }),
    };
  }

  /** A group keeps no prefixes (each request runs alone): nothing to clear. */
  clearPrefixCache(): void {}

  /** Cancels every request, waits for the running one to end, and closes the group. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const job of this.#waiting) job.cancelled = true;
    if (this.#running) this.#cancel(this.#running);
    if (this.#failure === undefined) await this.#loop;
    for (const job of this.#waiting.splice(0)) abort(job);
    await this.#group.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #cancel(job: Job): void {
    job.cancelled = true;
    const index = this.#waiting.indexOf(job);
    if (index >= 0) {
      this.#waiting.splice(index, 1);
      abort(job);
    } else if (this.#running === job) this.#group.cancel(job.id);
  }

  /** Runs the queue; a rank's failure fails the running request, every waiting one and the engine. */
  async #run(): Promise<void> {
    let job: Job | undefined;
    try {
      await new Promise<void>((resolve) => setImmediate(resolve));
      for (job = this.#waiting.shift(); job; job = this.#waiting.shift()) {
        const { queue } = job;
        this.#running = job;
        // Each token rank 0 streams is one step of the group.
        const sink: TokenSink = {
          push: (token) => {
            this.#steps++;
            queue.push(token);
          },
          end: (result) => queue.end(result),
          fail: (error) => queue.fail(error),
        };
        try {
          await this.#group.run(job.id, job.request, sink, (bytes) => {
            this.#cache = bytes;
          });
        } finally {
          this.#running = undefined;
          this.#cache = { full: 0, streaming: 0 };
        }
      }
    } catch (error) {
      this.#failure = error;
      for (const failed of [...(job ? [job] : []), ...this.#waiting.splice(0)]) failed.queue.fail(error);
    } finally {
      this.#loop = undefined;
    }
  }
}

function abort(job: Job): void {
  job.queue.end({
    tokens: [],
    text: '',
    finishReason: 'abort',
    usage: {
      promptTokens: job.request.prompt.length,
      completionTokens: 0,
      totalTokens: job.request.prompt.length,
      recomputedTokens: 0,
      cachedTokens: 0,
    },
    timings: { admittedMs: 0, firstTokenMs: 0, totalMs: performance.now() - job.submitted },
    preemptions: 0,
  });
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Options of `inProcessGroup`. */
export interface InProcessGroupOptions extends GroupRankOptions {
  /** 'keys': every rank runs `models[0]` on its shard of the keys; 'weights': rank r runs `models[r]`, its slice. */
  readonly split: ParallelSplit;
}

/**
 * A group whose ranks all run in this thread (`communicators`: an in-process group, `createInProcessGroup`): CPU runs
 * and the tests of what the processes of a GPU group run. The models stay the caller's.
 */
export function inProcessGroup(
  models: readonly LlamaModel[],
  communicators: readonly (Communicator | undefined)[],
  options: InProcessGroupOptions,
): RankGroup {
  const first = models[0];
  if (!first) throw new DuoArgumentError('models', 'Expected at least one model for the group');
  const ranks = communicators.map(
    (communicator, rank) =>
      new GroupRank(
        options.split === 'weights' ? (models[rank] ?? first) : first,
        communicator,
        options.split,
        options,
      ),
  );
  return {
    size: ranks.length,
    split: options.split,
    kvBudgetBytes: options.kvBudgetBytes,
    deviceName: first.backend.deviceName,
    async run(id, request, sink, cacheBytes) {
      await Promise.all(ranks.map((rank, r) => rank.run(request, r === 0 ? { id, sink, cacheBytes } : undefined)));
    },
    cancel(id) {
      ranks[0]?.cancel(id);
    },
    async close() {
      for (const rank of ranks) rank.dispose();
    },
  };
}
