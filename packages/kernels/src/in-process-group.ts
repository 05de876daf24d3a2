// A group of ranks inside one process (ADR 0011): each rank has a backend (several may share one) and collectives meet
// in host memory, so context parallelism's sharding and merge run in CI without NCCL or a second GPU.
import { type Backend, type Communicator, DuoArgumentError, type HostArray, type TensorHandle } from '@duoattn/core';
import { expectTensor } from './validate.js';

type Operation = 'allGather' | 'broadcast' | 'allReduceSum';

/** What one rank brought to a collective: its host copy, or the reason its own arguments were refused. */
interface Arrival {
  /** The arguments as a message shows them, e.g. `allGather f32 [2, 8] → [4, 8]`. */
  readonly description: string;
  /** What must match on every rank (the operation, dtype, input shape, root). */
  readonly signature: string;
  readonly data?: HostArray;
  readonly refusal?: string;
  /** Writes the collective's result on this rank. */
  readonly deliver: (result: HostArray[]) => void;
}

/** The k-th collective of the group: ranks arrive in any order; the last to arrive settles every rank's call. */
class Meeting {
  readonly arrivals: (Arrival | undefined)[];
  readonly settlers: { resolve: () => void; reject: (error: Error) => void }[] = [];
  count = 0;
  constructor(size: number) {
    this.arrivals = new Array(size).fill(undefined);
  }
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function describeTensor(tensor: TensorHandle): string {
  return `${tensor.dtype} ${shapeText(tensor.shape)}`;
}

/** The message of the check's error (a refusal of this rank's arguments), or undefined when it passes. */
function refusalOf(check: () => unknown): string | undefined {
  try {
    check();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

class InProcessRank implements Communicator {
  readonly specificationVersion = 'v1' as const;
  #calls = 0;
  constructor(
    readonly rank: number,
    readonly size: number,
    private readonly backend: Backend,
    private readonly meetings: Map<number, Meeting>,
  ) {}

  allGather(input: TensorHandle, output: TensorHandle): Promise<void> {
    const problem = refusalOf(() => {
      expectTensor('input', input, this.backend.device);
      expectTensor('output', output, this.backend.device);
    });
    if (problem) return this.#refuse('allGather', problem);
    const [first = 1, ...rest] = input.shape;
    const expected = [this.size * first, ...rest];
    const description = `allGather ${describeTensor(input)} → ${describeTensor(output)}`;
    const refusal =
      output.dtype !== input.dtype || shapeText(output.shape) !== shapeText(expected)
        ? `\`output\` must be ${input.dtype} ${shapeText(expected)} (${this.size} ranks × ${shapeText(input.shape)}) but is ${describeTensor(output)}`
        : undefined;
    return this.#join(
      {
        description,
        signature: `allGather ${describeTensor(input)}`,
        ...(refusal ? { refusal } : {}),
        deliver: (parts) => {
          // The parts are one typed-array kind (one dtype on every rank): its constructor makes the whole.
          const kind = (parts[0] as HostArray).constructor as new (length: number) => HostArray;
          const whole = new kind(parts.reduce((total, part) => total + part.length, 0));
          let offset = 0;
          for (const part of parts) {
            whole.set(part as never, offset);
            offset += part.length;
          }
          this.backend.write(output, whole);
        },
      },
      refusal ? undefined : input,
    );
  }

  broadcast(tensor: TensorHandle, root: number): Promise<void> {
    const problem =
      refusalOf(() => expectTensor('tensor', tensor, this.backend.device)) ??
      (Number.isInteger(root) && root >= 0 && root < this.size
        ? undefined
        : `\`root\` must be an integer in [0, ${this.size - 1}] but is ${String(root)}`);
    if (problem) return this.#refuse('broadcast', problem);
    return this.#join(
      {
        description: `broadcast ${describeTensor(tensor)} from rank ${root}`,
        signature: `broadcast ${describeTensor(tensor)} from rank ${root}`,
        deliver: (parts) => {
          if (this.rank !== root) this.backend.write(tensor, parts[root] as HostArray);
        },
      },
      this.rank === root ? tensor : undefined,
    );
  }

  allReduceSum(tensor: TensorHandle): Promise<void> {
    const problem = refusalOf(() => expectTensor('tensor', tensor, this.backend.device, { dtypes: ['f32'] }));
    if (problem) return this.#refuse('allReduceSum', problem);
    return this.#join(
      {
        description: `allReduceSum ${describeTensor(tensor)}`,
        signature: `allReduceSum ${describeTensor(tensor)}`,
        deliver: (parts) => {
          // Summed in rank order, in f32 as NCCL sums: every rank receives the same bits.
          const sum = Float32Array.from(parts[0] as Float32Array);
          for (const part of parts.slice(1)) {
            for (let i = 0; i < sum.length; i++) sum[i] = Math.fround((sum[i] as number) + (part[i] as number));
          }
          this.backend.write(tensor, sum);
        },
      },
      tensor,
    );
  }

  /** Joins the next meeting with arguments this rank refused, so every rank's call fails rather than waits. */
  #refuse(operation: Operation, refusal: string): Promise<void> {
    return this.#join({ description: operation, signature: '', refusal, deliver() {} });
  }

  /** Brings this rank's arrival (with a host copy of `source`) to its next meeting; settles the meeting when last. */
  async #join(arrival: Arrival, source?: TensorHandle): Promise<void> {
    const index = this.#calls++;
    let meeting = this.meetings.get(index);
    if (!meeting) {
      meeting = new Meeting(this.size);
      this.meetings.set(index, meeting);
    }
    let arrived = arrival;
    if (source) {
      try {
        arrived = { ...arrival, data: await this.backend.read(source) };
      } catch (error) {
        arrived = { ...arrival, refusal: `reading its tensor failed: ${(error as Error).message}` };
      }
    }
    const settled = new Promise<void>((resolve, reject) => {
      (meeting as Meeting).settlers.push({ resolve, reject });
    });
    meeting.arrivals[this.rank] = arrived;
    if (++meeting.count === this.size) {
      this.meetings.delete(index);
      settle(meeting, index);
    }
    return settled;
  }
}

/** Every rank's call of one meeting succeeds (outputs written) or fails with one message naming each rank's part. */
function settle(meeting: Meeting, index: number): void {
  const arrivals = meeting.arrivals as Arrival[];
  const refused = arrivals.some((arrival) => arrival.refusal !== undefined);
  const first = arrivals[0] as Arrival;
  const mismatched = arrivals.some((arrival) => arrival.signature !== first.signature);
  if (refused || mismatched) {
    const lines = arrivals.map(
      (arrival, rank) => `rank ${rank}: ${arrival.description}${arrival.refusal ? ` (${arrival.refusal})` : ''}`,
    );
    const what = refused ? 'a rank refused its arguments' : 'the ranks called different collectives or tensors';
    const error = new DuoArgumentError(
      'communicator',
      `Collective ${index} of the group failed on every rank: ${what}. ${lines.join('; ')}`,
    );
    for (const settler of meeting.settlers) settler.reject(error);
    return;
  }
  const parts = arrivals.map((arrival) => arrival.data as HostArray);
  try {
    for (const arrival of arrivals) arrival.deliver(parts);
  } catch (error) {
    for (const settler of meeting.settlers) settler.reject(error as Error);
    return;
  }
  for (const settler of meeting.settlers) settler.resolve();
}

/**
 * A group of `backends.length` ranks in this process: rank r works on `backends[r]` (the same backend may serve every
 * rank). Ranks run as concurrent async tasks (e.g. `Promise.all` over each rank's step); collectives match by call
 * order, as NCCL's do.
 */
export function createInProcessGroup(backends: readonly Backend[]): Communicator[] {
  if (!Array.isArray(backends) || backends.length === 0) {
    throw new DuoArgumentError(
      'backends',
      `Expected one backend per rank (at least one) but received ${String(backends)}`,
    );
  }
  const meetings = new Map<number, Meeting>();
  return backends.map((backend, rank) => new InProcessRank(rank, backends.length, backend, meetings));
}
