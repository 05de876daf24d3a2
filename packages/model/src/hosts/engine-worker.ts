// The batch engine in a worker thread: the model loads and every step runs there, so the caller's event loop (a
// server's) never waits on a step. The caller gets the engine's interface: submit → a stream of tokens, stats, close.
import { Worker } from 'node:worker_threads';
import {
  DuoArgumentError,
  DuoCapacityError,
  DuoDisposedError,
  DuoError,
  type DuoErrorCode,
  DuoOutOfMemoryError,
  type ModelConfig,
} from '@duoattn/core';
import type { BackendTuning } from '@duoattn/kernels';
import type {
  BatchEngineOptions,
  BatchEngineStats,
  BatchRequest,
  BatchResult,
  BatchStream,
  BatchToken,
} from '../batch/batch-engine.js';
import { requestStream } from '../batch/request.js';
import { TokenQueue } from '../batch/token-stream.js';
import type { ParallelSplit } from '../group/group-rank.js';

/** Which model the worker loads: a checkpoint path (and its load options), or random weights of a config. */
export type WorkerModel =
  | {
      readonly path: string;
      readonly device?: 'auto' | 'cpu' | 'cuda';
      readonly weightDtype?: 'auto' | 'f32' | 'f16' | 'bf16';
      readonly tokenizerPath?: string;
      /** The worker's backend tuning (e.g. `environmentTuning(readEnvironment())`: DUO_BATCH_INVARIANT and the knobs). */
      readonly tuning?: BackendTuning;
    }
  | {
      readonly random: ModelConfig;
      readonly device?: 'auto' | 'cpu' | 'cuda';
      readonly dtype?: 'f32' | 'f16' | 'bf16';
      readonly seed?: number;
      readonly tuning?: BackendTuning;
    };

/** Ranks of a parallel group, all in the worker thread (`createInProcessGroup`): CPU runs of what GPUs run apart. */
export interface WorkerGroup {
  readonly ranks: number;
  /** 'keys': context parallelism; 'weights': tensor parallelism (each rank loads its slice). */
  readonly split: ParallelSplit;
}

/** Options of `startEngineWorker`. */
export interface EngineWorkerOptions {
  readonly model: WorkerModel;
  /**
   * The batch engine's options; with `group`, its `maxWaiting`, `kvBudgetBytes` (each rank's) and
   * `allowBeyondContext` apply to the group engine.
   */
  readonly engine?: BatchEngineOptions;
  /** Run a `GroupEngine` over this many in-process ranks instead of a batch engine. Default: a batch engine. */
  readonly group?: WorkerGroup;
  /** The worker's script; default the package's own (`engine-worker-main.js` beside this module's build). */
  readonly workerUrl?: URL;
  /** Environment of the worker thread. Default this process's. */
  readonly env?: NodeJS.ProcessEnv;
}

/** What the worker reports once its model is loaded. */
export interface EngineWorkerInfo {
  readonly config: ModelConfig;
  readonly device: string;
  readonly deviceName: string;
  readonly source: string;
  readonly hasTokenizer: boolean;
  readonly chatTemplate: string | undefined;
}

/** Messages to the worker. */
export type ToWorker =
  | {
      readonly type: 'start';
      readonly model: WorkerModel;
      readonly engine: BatchEngineOptions;
      readonly group?: WorkerGroup;
    }
  | { readonly type: 'submit'; readonly id: number; readonly request: Omit<BatchRequest, 'signal'> }
  | { readonly type: 'cancel'; readonly id: number }
  | { readonly type: 'stats'; readonly id: number }
  | { readonly type: 'clearPrefixCache' }
  | { readonly type: 'close' };

/** An error as it crosses the thread boundary. */
export interface WireError {
  readonly name: string;
  readonly code?: string;
  readonly message: string;
  readonly argument?: string;
  readonly retryable?: boolean;
}

/** Messages from the worker. */
export type FromWorker =
  | { readonly type: 'ready'; readonly info: EngineWorkerInfo }
  | { readonly type: 'token'; readonly id: number; readonly token: BatchToken }
  | { readonly type: 'done'; readonly id: number; readonly result: BatchResult }
  | { readonly type: 'failed'; readonly id: number; readonly error: WireError }
  | { readonly type: 'stats'; readonly id: number; readonly stats: BatchEngineStats }
  | { readonly type: 'closed' }
  | { readonly type: 'fatal'; readonly error: WireError };

/** An error for the wire: its class name, stable code and the fields its class carries. */
export function toWire(error: unknown): WireError {
  if (error instanceof DuoError) {
    return {
      name: error.name,
      code: error.code,
      message: error.message,
      argument: error instanceof DuoArgumentError ? error.argument : undefined,
      retryable: error instanceof DuoCapacityError ? error.retryable : undefined,
    };
  }
  return {
    name: error instanceof Error ? error.name : 'Error',
    message: error instanceof Error ? error.message : String(error),
  };
}

/** The error class a wire error stood for (duoattn's errors keep their class, code and fields). */
export function fromWire(error: WireError): Error {
  switch (error.name) {
    case 'DuoArgumentError':
      return new DuoArgumentError(error.argument ?? 'request', error.message);
    case 'DuoCapacityError':
      return new DuoCapacityError(error.message, error.retryable ?? false);
    case 'DuoOutOfMemoryError':
      return new DuoOutOfMemoryError(error.message);
    case 'DuoDisposedError':
      return new DuoDisposedError(error.message);
    default:
      return error.code ? new DuoError(error.code as DuoErrorCode, error.message) : new Error(error.message);
  }
}

/**
 * A batch engine running in a worker thread. `submit` checks the request there and returns its stream; a request the
 * engine refuses rejects its stream's result (and its iterator throws) with the engine's error, class and code kept.
 */
export class EngineWorker {
  readonly info: EngineWorkerInfo;
  readonly #worker: Worker;
  readonly #streams = new Map<number, TokenQueue<BatchToken, BatchResult>>();
  readonly #statsWaiters = new Map<number, (stats: BatchEngineStats) => void>();
  #nextId = 1;
  #closed: Promise<void> | undefined;
  #fatal: Error | undefined;

  /** @internal Use `startEngineWorker`. */
  constructor(worker: Worker, info: EngineWorkerInfo) {
    this.#worker = worker;
    this.info = info;
    worker.on('message', (message: FromWorker) => this.#receive(message));
    worker.on('error', (error) => this.#failAll(error));
    worker.on('exit', (code) => {
      if (code !== 0) this.#failAll(new DuoError('DUO_NATIVE', `The engine worker exited with code ${code}`));
    });
  }

  /** The failure that stopped the worker's engine, if one did. */
  get failure(): Error | undefined {
    return this.#fatal;
  }

  submit(request: BatchRequest): BatchStream {
    if (this.#closed) throw new DuoDisposedError('The engine worker was closed: start a new one');
    if (this.#fatal) throw this.#fatal;
    const id = this.#nextId++;
    const queue = new TokenQueue<BatchToken, BatchResult>();
    this.#streams.set(id, queue);
    const { signal, ...rest } = request;
    const cancel = () => this.#worker.postMessage({ type: 'cancel', id } satisfies ToWorker);
    this.#worker.postMessage({ type: 'submit', id, request: rest } satisfies ToWorker);
    return requestStream(id, queue, cancel, signal);
  }

  /** The engine's live counters. */
  stats(): Promise<BatchEngineStats> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      this.#statsWaiters.set(id, resolve);
      this.#worker.postMessage({ type: 'stats', id } satisfies ToWorker);
    });
  }

  /** Evicts every cached prefix (`BatchEngine.clearPrefixCache`); the next `stats()` sees it. */
  clearPrefixCache(): void {
    this.#worker.postMessage({ type: 'clearPrefixCache' } satisfies ToWorker);
  }

  /** Cancels every request, frees the engine and the model, and ends the worker. */
  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      this.#worker.once('exit', () => resolve());
      this.#worker.postMessage({ type: 'close' } satisfies ToWorker);
    });
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #receive(message: FromWorker): void {
    switch (message.type) {
      case 'token':
        this.#streams.get(message.id)?.push(message.token);
        break;
      case 'done':
        this.#streams.get(message.id)?.end(message.result);
        this.#streams.delete(message.id);
        break;
      case 'failed':
        this.#streams.get(message.id)?.fail(fromWire(message.error));
        this.#streams.delete(message.id);
        break;
      case 'stats':
        this.#statsWaiters.get(message.id)?.(message.stats);
        this.#statsWaiters.delete(message.id);
        break;
      case 'fatal':
        this.#failAll(fromWire(message.error));
        break;
      default:
        break;
    }
  }

  #failAll(error: Error): void {
    this.#fatal ??= error;
    for (const queue of this.#streams.values()) queue.fail(error);
    this.#streams.clear();
  }
}

/**
 * Starts a worker thread that loads `options.model` and runs a batch engine over it; resolves once the model is loaded
 * (rejects with the loader's error, class and code kept, when it cannot be).
 */
export function startEngineWorker(options: EngineWorkerOptions): Promise<EngineWorker> {
  const url = options.workerUrl ?? new URL('./engine-worker-main.js', import.meta.url);
  const worker = new Worker(url, { env: options.env ?? process.env });
  return new Promise((resolve, reject) => {
    const onMessage = (message: FromWorker) => {
      if (message.type === 'ready') {
        worker.off('message', onMessage);
        worker.off('error', reject);
        resolve(new EngineWorker(worker, message.info));
      } else if (message.type === 'fatal') {
        worker.off('message', onMessage);
        void worker.terminate();
        reject(fromWire(message.error));
      }
    };
    worker.on('message', onMessage);
    worker.once('error', reject);
    worker.postMessage({
      type: 'start',
      model: options.model,
      engine: options.engine ?? {},
      ...(options.group ? { group: options.group } : {}),
    } satisfies ToWorker);
  });
}
