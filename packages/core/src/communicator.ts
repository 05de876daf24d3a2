// The collective operations that ranks of one job use to share tensors (ADR 0011: context parallelism); the
// in-process group for tests and NCCL implement it.
import type { ContextShard, TensorHandle } from './backend.js';

/**
 * One rank's end of a group of `size` ranks. Collectives are matched by order: the k-th collective a rank calls meets
 * the k-th collective of every other rank, and each must be the same operation with matching tensors, or every rank's
 * call fails with a message naming the ranks and what each passed. A call's promise resolves when its output may be
 * read on this rank's backend.
 */
export interface Communicator {
  readonly specificationVersion: 'v1';
  /**
   * True when every collective is enqueued on the rank's device stream by the call itself (its promise already
   * settled), as NCCL's are: then a captured CUDA graph may hold it. False or absent: the result arrives later.
   */
  readonly streamOrdered?: boolean;
  /** This rank, 0 … size − 1. */
  readonly rank: number;
  /** Ranks in the group. */
  readonly size: number;
  /**
   * Every rank's `input` (the same dtype and shape on each), concatenated along the first dimension in rank order into
   * `output`: shape `[size · input.shape[0], ...input.shape.slice(1)]`, the same dtype.
   */
  allGather(input: TensorHandle, output: TensorHandle): Promise<void>;
  /** Rank `root`'s `tensor` copied into every rank's `tensor` (the same dtype and shape on each). */
  broadcast(tensor: TensorHandle, root: number): Promise<void>;
  /**
   * Every rank's f32 `tensor` (the same shape on each) replaced in place by the element-wise sum over the ranks, the
   * same bits on every rank (tensor parallelism's reduction after a row-parallel product).
   */
  allReduceSum(tensor: TensorHandle): Promise<void>;
}

/**
 * How many of positions 0 … end − 1 a rank of `shard` holds in its main caches (all of them without a shard): its
 * whole chunks below `end`, and the part of the chunk `end` falls in when that chunk is its own.
 */
export function heldPositions(shard: ContextShard | undefined, end: number): number {
  if (!shard || shard.ranks === 1) return end;
  const whole = Math.floor(end / shard.chunk);
  const mine = Math.floor(whole / shard.ranks) + (whole % shard.ranks > shard.rank ? 1 : 0);
  return mine * shard.chunk + (whole % shard.ranks === shard.rank ? end % shard.chunk : 0);
}
