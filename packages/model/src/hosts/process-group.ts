// A parallel group of one process per GPU (ADR 0011): the launcher forks the rank processes (group-rank-main.js), hands
// rank 0's NCCL id to the others, and drives them as a RankGroup: each request goes to every rank, rank 0's tokens
// come back here.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DuoArgumentError, DuoError } from '@duoattn/core';
import type { BatchResult, BatchToken, TokenSink } from '../batch/request.js';
import type { CacheBytes, RankGroup } from '../group/group-engine.js';
import type { GroupRequest, ParallelSplit } from '../group/group-rank.js';
import { fromWire, type WireError, type WorkerModel } from './engine-worker.js';
import { forkRanks, type NcclIdMessage } from './rank-launch.js';

/** Options of `startProcessGroup`. */
export interface ProcessGroupOptions {
  /** What every rank loads (each its slice with split 'weights'). */
  readonly model: WorkerModel;
  /** Rank processes: one per GPU (CUDA_VISIBLE_DEVICES 0 … ranks − 1); several need CUDA and NCCL. */
  readonly ranks: number;
  readonly split: ParallelSplit;
  /** Bytes of KV cache each rank's share of a request may take. Default 85 % of the GPU's free memory after loading. */
  readonly kvBudgetBytes?: number;
  /** Lets a request's prompt + maxTokens exceed the model's context (benchmarks on synthetic caches). Default false. */
  readonly allowBeyondContext?: boolean;
  /** The rank script; default the package's own (`group-rank-main.js` beside this module's build). */
  readonly script?: URL;
  /** Environment of the rank processes. Default this process's (plus each rank's GPU and NCCL_NVLS_ENABLE=0). */
  readonly env?: NodeJS.ProcessEnv;
  /** Told as each rank becomes ready (loading several GPUs takes a while), e.g. "rank 2 of 8 ready on NVIDIA H100 …". */
  readonly progress?: (line: string) => void;
}

/** Messages to a rank process. */
export type ToRank =
  | {
      readonly type: 'start';
      readonly model: WorkerModel;
      readonly split: ParallelSplit;
      readonly rank: number;
      readonly ranks: number;
      readonly kvBudgetBytes?: number;
      readonly allowBeyondContext: boolean;
    }
  | NcclIdMessage
  | { readonly type: 'run'; readonly id: number; readonly request: GroupRequest }
  | { readonly type: 'cancel'; readonly id: number }
  | { readonly type: 'close' };

/** Messages from a rank process (tokens, results and cache bytes from rank 0 only). */
export type FromRank =
  | NcclIdMessage
  | { readonly type: 'ready'; readonly deviceName: string; readonly kvBudgetBytes: number }
  | { readonly type: 'token'; readonly id: number; readonly token: BatchToken }
  | { readonly type: 'done'; readonly id: number; readonly result: BatchResult }
  | { readonly type: 'failed'; readonly id: number; readonly error: WireError }
  | { readonly type: 'cache'; readonly id: number; readonly bytes: CacheBytes }
  | { readonly type: 'finished'; readonly id: number }
  | { readonly type: 'fatal'; readonly error: WireError };

/** The request running on the group: its sink, its cache callback, and the ranks that have not finished it. */
interface Running {
  readonly id: number;
  readonly sink: TokenSink;
  readonly cacheBytes: (bytes: CacheBytes) => void;
  readonly pending: Set<number>;
  resolve(): void;
  reject(error: Error): void;
}

/**
 * Forks `ranks` rank processes, each loading the model on its GPU (and joining one NCCL group when there are several),
 * and resolves with the group once every rank is ready; rejects with the first rank's error (class and code kept) when
 * one cannot start, after stopping the others.
 */
export function startProcessGroup(options: ProcessGroupOptions): Promise<RankGroup> {
  const { ranks, split } = options;
  if (!Number.isInteger(ranks) || ranks < 1) {
    throw new DuoArgumentError('ranks', `Expected \`ranks\` to be a positive integer but received ${String(ranks)}`);
  }
  if (split !== 'keys' && split !== 'weights') {
    throw new DuoArgumentError('split', `Expected \`split\` to be 'keys' or 'weights' but received ${String(split)}`);
  }
  if (ranks > 1 && options.model.device === 'cpu') {
    throw new DuoArgumentError(
      'ranks',
      `Expected one rank process on the CPU but received ${ranks}: processes meet over NCCL, which needs CUDA (ranks on the CPU run in one process: an in-process group)`,
    );
  }
  const script = fileURLToPath(options.script ?? new URL('./group-rank-main.js', import.meta.url));
  let children: ChildProcess[] = [];
  let running: Running | undefined;
  let failure: Error | undefined;
  let closing = false;

  const stopAll = () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  };

  return new Promise<RankGroup>((resolve, reject) => {
    const ready: { deviceName: string; kvBudgetBytes: number }[] = [];
    let started = false;
    const fail = (error: Error) => {
      if (failure) return;
      failure = error;
      stopAll();
      if (!started) reject(error);
      running?.reject(error);
    };
    const group: RankGroup = {
      size: ranks,
      split,
      get kvBudgetBytes() {
        return Math.min(...ready.map((rank) => rank.kvBudgetBytes));
      },
      get deviceName() {
        return ready[0]?.deviceName ?? '';
      },
      run(id, request, sink, cacheBytes) {
        if (failure) return Promise.reject(failure);
        if (running) {
          return Promise.reject(
            new DuoArgumentError('id', `The group runs one request at a time (request ${running.id} runs)`),
          );
        }
        return new Promise<void>((resolveRun, rejectRun) => {
          running = {
            id,
            sink,
            cacheBytes,
            pending: new Set(children.map((_, rank) => rank)),
            resolve: () => {
              running = undefined;
              resolveRun();
            },
            reject: (error) => {
              running = undefined;
              rejectRun(error);
            },
          };
          for (const child of children) child.send({ type: 'run', id, request } satisfies ToRank);
        });
      },
      cancel(id) {
        children[0]?.send({ type: 'cancel', id } satisfies ToRank);
      },
      close() {
        closing = true;
        return Promise.all(
          children.map(
            (child) =>
              new Promise<void>((done) => {
                if (child.exitCode !== null || child.signalCode !== null) return done();
                child.once('exit', () => done());
                child.send({ type: 'close' } satisfies ToRank);
              }),
          ),
        ).then(() => undefined);
      },
    };

    const receive = (rank: number, message: FromRank) => {
      switch (message.type) {
        case 'ready':
          ready[rank] = { deviceName: message.deviceName, kvBudgetBytes: message.kvBudgetBytes };
          options.progress?.(
            `rank ${rank} of ${ranks} ready on ${message.deviceName} (${(message.kvBudgetBytes / 1024 ** 3).toFixed(1)} GiB of KV cache)`,
          );
          if (ready.filter(Boolean).length === ranks && !started && !failure) {
            started = true;
            resolve(group);
          }
          break;
        case 'token':
          if (running?.id === message.id) running.sink.push(message.token);
          break;
        case 'done':
          if (running?.id === message.id) running.sink.end(message.result);
          break;
        case 'failed':
          if (running?.id === message.id) running.sink.fail(fromWire(message.error));
          break;
        case 'cache':
          if (running?.id === message.id) running.cacheBytes(message.bytes);
          break;
        case 'finished':
          if (running?.id === message.id) {
            running.pending.delete(rank);
            if (running.pending.size === 0) running.resolve();
          }
          break;
        case 'fatal': {
          const error = fromWire(message.error);
          error.message = `rank ${rank} of ${ranks}: ${error.message}`;
          fail(error);
          break;
        }
        default:
          break;
      }
    };

    children = forkRanks({
      script,
      ranks,
      gpus: options.model.device !== 'cpu',
      serialization: 'advanced',
      ...(options.env ? { env: options.env } : {}),
    });
    for (const [rank, child] of children.entries()) {
      child.on('message', (message: FromRank) => receive(rank, message));
      child.on('error', (error) => fail(error));
      child.on('exit', (code, signal) => {
        if (closing && code === 0) return;
        fail(new DuoError('DUO_NATIVE', `rank ${rank} of ${ranks} exited (${signal ?? `status ${code}`})`));
      });
      child.send({
        type: 'start',
        model: options.model,
        split,
        rank,
        ranks,
        ...(options.kvBudgetBytes === undefined ? {} : { kvBudgetBytes: options.kvBudgetBytes }),
        allowBeyondContext: options.allowBeyondContext ?? false,
      } satisfies ToRank);
    }
  });
}
