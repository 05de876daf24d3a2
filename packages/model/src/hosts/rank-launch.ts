// One process per GPU, and the NCCL group they form (ADR 0011): the launcher forks the rank processes, each seeing only
// its GPU with NVLink multicast off, and hands rank 0's NCCL id to the others; a rank process joins the group. Both
// `startProcessGroup` (duo-serve --gpus) and `duo-bench context-parallel --gpus` launch ranks this way.
import { type ChildProcess, fork, type Serializable } from 'node:child_process';
import { type NativeBackend, type NcclCommunicator, ncclUniqueId, openNcclCommunicator } from '@duoattn/kernels';

/** The message that carries rank 0's NCCL id, up to the launcher and down to the other ranks. */
export interface NcclIdMessage {
  readonly type: 'nccl-id';
  readonly uniqueId: string;
}

function isNcclId(message: unknown): message is NcclIdMessage {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === 'nccl-id';
}

/** Options of `forkRanks`. */
export interface ForkRanksOptions {
  /** The rank processes' script. */
  readonly script: string;
  /** Rank r's arguments. Default none. */
  readonly args?: (rank: number) => readonly string[];
  readonly ranks: number;
  /** Each rank sees only GPU r (CUDA_VISIBLE_DEVICES); false: the devices as they are (one CPU rank). */
  readonly gpus: boolean;
  /** Their environment. Default this process's. */
  readonly env?: NodeJS.ProcessEnv;
  /** The IPC channel's serialization ('advanced' carries typed arrays). Default 'json'. */
  readonly serialization?: 'json' | 'advanced';
}

/**
 * Forks the rank processes (stdout and stderr shared with this process, an IPC channel each) and relays rank 0's NCCL
 * id to the others as it arrives; every other message is the caller's (`child.on('message')`).
 */
export function forkRanks(options: ForkRanksOptions): ChildProcess[] {
  const children: ChildProcess[] = [];
  for (let rank = 0; rank < options.ranks; rank++) {
    const gpu = options.gpus ? { CUDA_VISIBLE_DEVICES: String(rank) } : {};
    const child = fork(options.script, [...(options.args?.(rank) ?? [])], {
      env: { ...(options.env ?? process.env), ...gpu, NCCL_NVLS_ENABLE: '0' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: options.serialization ?? 'json',
    });
    children.push(child);
  }
  children[0]?.on('message', (message: Serializable) => {
    if (isNcclId(message)) for (const other of children.slice(1)) other.send(message);
  });
  return children;
}

/**
 * A rank process's way into its group. Call it when the process starts: the launcher may hand on rank 0's id before
 * this rank has its backend, and a message nobody listens for is lost. `join` opens the rank's NCCL communicator (rank
 * 0 makes the id and sends it up) and blocks until every rank has joined; a group of one needs none (undefined).
 */
export function rankRendezvous(): {
  join(backend: NativeBackend, rank: number, ranks: number): Promise<NcclCommunicator | undefined>;
} {
  let arrived: (id: string) => void = () => {};
  const forwarded = new Promise<string>((resolve) => {
    arrived = resolve;
  });
  const listener = (message: unknown) => {
    if (isNcclId(message)) arrived(message.uniqueId);
  };
  process.on('message', listener);
  return {
    async join(backend, rank, ranks) {
      try {
        if (ranks === 1) return undefined;
        const uniqueId = rank === 0 ? ncclUniqueId(backend) : await forwarded;
        if (rank === 0) process.send?.({ type: 'nccl-id', uniqueId } satisfies NcclIdMessage);
        return openNcclCommunicator(backend, { uniqueId, rank, size: ranks });
      } finally {
        process.off('message', listener);
      }
    },
  };
}
