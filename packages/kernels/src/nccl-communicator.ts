// NCCL communicators (ADR 0011): one rank a process, one GPU each, collectives enqueued on the rank's CUDA stream. NCCL
// is loaded at run time like cuBLAS, so the addon builds and loads without it; asking for a communicator where it is
// missing fails with every path tried.
import {
  type Communicator,
  DuoArgumentError,
  DuoDisposedError,
  readEnvironment,
  type TensorHandle,
} from '@duoattn/core';
import { callNative } from './errors.js';
import { loadNative } from './native.js';
import type { NativeBackend } from './native-backend.js';
import { expectTensor } from './validate.js';

/** Where a rank joins its group: the id rank 0 made (`ncclUniqueId`), this rank and the group's size. */
export interface NcclCommunicatorOptions {
  /** 256 hex digits from `ncclUniqueId` on rank 0, handed to every rank (the launcher passes it down). */
  readonly uniqueId: string;
  /** This rank, 0 … size − 1. */
  readonly rank: number;
  /** Ranks in the group (one process and one GPU each). */
  readonly size: number;
}

/** Where NCCL is looked for first (DUO_NCCL_PATH), or '' for the CUDA library directories and the loader's search. */
function ncclDirectory(): string {
  return readEnvironment().ncclPath ?? '';
}

function expectCuda(backend: NativeBackend, what: string): void {
  if (backend.device !== 'cuda') {
    throw new DuoArgumentError(
      'backend',
      `${what} needs the CUDA backend but received the ${backend.device} backend (ranks on the CPU use createInProcessGroup)`,
    );
  }
}

/** A new NCCL unique id (256 hex digits): rank 0 makes it and hands it to every rank of the group. */
export function ncclUniqueId(backend: NativeBackend): string {
  expectCuda(backend, 'ncclUniqueId');
  return callNative(() => loadNative().communicatorId(backend.device, ncclDirectory()));
}

/**
 * This process's rank of an NCCL group on `backend` (CUDA). Blocks until every rank has called it with the same
 * `uniqueId` and `size`. Close it (`close()` or `using`) before the process exits.
 */
export function openNcclCommunicator(backend: NativeBackend, options: NcclCommunicatorOptions): NcclCommunicator {
  const { uniqueId, rank, size } = options;
  if (typeof uniqueId !== 'string' || !/^[0-9a-f]{256}$/i.test(uniqueId)) {
    throw new DuoArgumentError(
      'uniqueId',
      `Expected \`uniqueId\` to be the 256 hex digits of ncclUniqueId but received ${typeof uniqueId === 'string' ? `${uniqueId.length} characters` : typeof uniqueId}`,
    );
  }
  if (!Number.isInteger(size) || size < 1) {
    throw new DuoArgumentError('size', `Expected \`size\` to be a positive integer but received ${String(size)}`);
  }
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new DuoArgumentError(
      'rank',
      `Expected \`rank\` to be an integer in [0, ${size - 1}] but received ${String(rank)}`,
    );
  }
  expectCuda(backend, 'openNcclCommunicator');
  const handle = callNative(() => loadNative().communicatorOpen(backend.device, ncclDirectory(), uniqueId, rank, size));
  return new NcclCommunicator(backend, handle, rank, size);
}

/** One rank's end of an NCCL group; collectives move bytes, so any dtype (quantized caches included) travels. */
export class NcclCommunicator implements Communicator, Disposable {
  readonly specificationVersion = 'v1' as const;
  /** Each collective is enqueued on the rank's stream when called: a decode step's graph can capture it. */
  readonly streamOrdered = true;
  #handle: number;

  /** @internal Made by `openNcclCommunicator`. */
  constructor(
    private readonly backend: NativeBackend,
    handle: number,
    readonly rank: number,
    readonly size: number,
  ) {
    this.#handle = handle;
  }

  /** Enqueues the gather on this rank's stream; what the backend runs after it sees `output` filled. */
  allGather(input: TensorHandle, output: TensorHandle): Promise<void> {
    const handle = this.#live('allGather');
    const inputId = expectTensor('input', input, this.backend.device);
    const [first = 1, ...rest] = input.shape;
    const outputId = expectTensor('output', output, this.backend.device, {
      dtypes: [input.dtype],
      shape: [this.size * first, ...rest],
    });
    callNative(() => loadNative().allGather(this.backend.device, handle, inputId, outputId));
    return Promise.resolve();
  }

  /** Enqueues the broadcast on this rank's stream. */
  broadcast(tensor: TensorHandle, root: number): Promise<void> {
    const handle = this.#live('broadcast');
    const id = expectTensor('tensor', tensor, this.backend.device);
    if (!Number.isInteger(root) || root < 0 || root >= this.size) {
      throw new DuoArgumentError(
        'root',
        `Expected \`root\` to be an integer in [0, ${this.size - 1}] but received ${String(root)}`,
      );
    }
    callNative(() => loadNative().broadcast(this.backend.device, handle, id, root));
    return Promise.resolve();
  }

  /** Enqueues the sum over the ranks of the f32 `tensor`, in place, on this rank's stream. */
  allReduceSum(tensor: TensorHandle): Promise<void> {
    const handle = this.#live('allReduceSum');
    const id = expectTensor('tensor', tensor, this.backend.device, { dtypes: ['f32'] });
    callNative(() => loadNative().allReduceSum(this.backend.device, handle, id));
    return Promise.resolve();
  }

  /** Waits for this rank's queued work, then frees the communicator (every rank should close its own). */
  close(): void {
    if (this.#handle === 0) return;
    const handle = this.#handle;
    this.#handle = 0;
    callNative(() => loadNative().communicatorClose(this.backend.device, handle));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #live(operation: string): number {
    if (this.#handle === 0)
      throw new DuoDisposedError(`${operation}: this NCCL communicator (rank ${this.rank}) is closed`);
    return this.#handle;
  }
}
