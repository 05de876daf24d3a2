// A rank process of a GPU group (`startProcessGroup`): loads its model (whole, or its tensor-parallel slice), joins
// the group's NCCL communicator, and runs the requests the launcher sends, one at a time (process-group.ts has the
// protocol).
import type { Communicator } from '@duoattn/core';
import { defaultKvBudget } from '../batch/batch-engine.js';
import type { TokenSink } from '../batch/request.js';
import { GroupRank } from '../group/group-rank.js';
import type { LlamaModel } from '../llama-model.js';
import { toWire } from './engine-worker.js';
import type { FromRank, ToRank } from './process-group.js';
import { rankRendezvous } from './rank-launch.js';
import { loadWorkerModel, workerBackend } from './worker-model.js';

if (!process.send) throw new Error('group-rank-main runs as a rank process (startProcessGroup forks it)');
// The launcher ends the ranks (a drain lets the running request finish first): a terminal's Ctrl-C, which reaches the
// whole process group, must not kill them under it; and a rank never outlives its launcher (its channel closes).
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => {});
process.on('disconnect', () => process.exit(0));

function post(message: FromRank): void {
  process.send?.(message);
}

let model: LlamaModel | undefined;
let communicator: (Communicator & { close(): void }) | undefined;
let rank: GroupRank | undefined;
// Requests arrive while the one before may still run: they wait their turn here.
let queue: Promise<void> = Promise.resolve();

// Listening from the start: the launcher may hand on rank 0's NCCL id before this rank has its backend.
const rendezvous = rankRendezvous();

async function start(message: Extract<ToRank, { type: 'start' }>): Promise<void> {
  const backend = workerBackend(message.model);
  communicator = await rendezvous.join(backend, message.rank, message.ranks);
  const split = message.split;
  model = await loadWorkerModel(
    message.model,
    backend,
    split === 'weights' && communicator ? { communicator } : undefined,
  );
  const kvBudgetBytes = message.kvBudgetBytes ?? defaultKvBudget(backend);
  rank = new GroupRank(model, communicator, split, {
    kvBudgetBytes,
    allowBeyondContext: message.allowBeyondContext,
  });
  post({ type: 'ready', deviceName: backend.deviceName, kvBudgetBytes });
}

/** Rank 0's sink: the request's tokens and result go to the launcher. */
function sinkFor(id: number): TokenSink {
  return {
    push: (token) => post({ type: 'token', id, token }),
    end: (result) => post({ type: 'done', id, result }),
    fail: (error) => post({ type: 'failed', id, error: toWire(error) }),
  };
}

async function run(message: Extract<ToRank, { type: 'run' }>): Promise<void> {
  const current = rank;
  if (!current) throw new Error('the rank has no model loaded');
  const { id } = message;
  const leader =
    current.rank === 0
      ? {
          id,
          sink: sinkFor(id),
          cacheBytes: (bytes: { full: number; streaming: number }) => post({ type: 'cache', id, bytes }),
        }
      : undefined;
  await current.run(message.request, leader);
  post({ type: 'finished', id });
}

function fatal(error: unknown): void {
  post({ type: 'fatal', error: toWire(error) });
}

process.on('message', (message: ToRank) => {
  switch (message.type) {
    case 'start':
      start(message).catch(fatal);
      break;
    case 'run':
      queue = queue.then(() => run(message)).catch(fatal);
      break;
    case 'cancel':
      rank?.cancel(message.id);
      break;
    case 'close':
      void queue.then(() => {
        rank?.dispose();
        model?.dispose();
        communicator?.close();
        process.exit(0);
      });
      break;
    default:
      break;
  }
});
