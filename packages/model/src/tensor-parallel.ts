// Tensor parallelism (ADR 0011): rank r of R holds slice r of every layer's matrices — the q/k/v rows and o columns
// of its KV heads (and their query groups), a 1/R share of the MLP's gate/up rows and down columns — and the ranks sum
// the two row-parallel products (o, down) with one all-reduce each, Megatron's split. The embedding, the norms and the
// LM head stay whole on every rank, so every rank holds the same residual stream and computes the same logits.
import { type Communicator, DuoArgumentError, type HeadPlan, type ModelConfig } from '@duoattn/core';

/** Options of tensor parallelism (`LoadModelOptions.tensorParallel`, `RandomModelOptions.tensorParallel`). */
export interface TensorParallelOptions {
  /**
   * The group: this process (or in-process task) is `communicator.rank` of `communicator.size`. Every rank loads the
   * same checkpoint with its own communicator and runs the same session calls with the same tokens.
   */
  readonly communicator: Communicator;
}

/** A model's place in its tensor-parallel group. */
export interface TensorParallelRank {
  readonly communicator: Communicator;
  readonly rank: number;
  readonly size: number;
  /** The whole model's config (the model's `config`); the rank's layers run `rankConfig(modelConfig, size)`. */
  readonly modelConfig: ModelConfig;
}

/** Which rows, or which columns, of a stored matrix (or which entries of a vector) a rank loads. */
export interface WeightSlice {
  readonly dimension: 'rows' | 'columns';
  readonly start: number;
  readonly count: number;
}

/** The weights split by rows (column-parallel: their outputs) and by columns (row-parallel: their inputs). */
export type SplitWeight = 'query' | 'key' | 'value' | 'gate' | 'up' | 'output' | 'down';

/** Checks `options` against `config` (the KV heads and the MLP's width must divide by the ranks); the rank's place. */
export function tensorParallelRank(options: TensorParallelOptions, config: ModelConfig): TensorParallelRank {
  const communicator = options?.communicator;
  if (typeof communicator !== 'object' || communicator === null || communicator.specificationVersion !== 'v1') {
    throw new DuoArgumentError(
      'tensorParallel.communicator',
      'Expected `tensorParallel.communicator` to be a Communicator (specificationVersion v1)',
    );
  }
  const { size, rank } = communicator;
  if (typeof communicator.allReduceSum !== 'function') {
    throw new DuoArgumentError(
      'tensorParallel.communicator',
      'Expected `tensorParallel.communicator` to have allReduceSum (the row-parallel products are summed over the ranks)',
    );
  }
  for (const [field, value] of [
    ['numKvHeads', config.numKvHeads],
    ['intermediateSize', config.intermediateSize],
  ] as const) {
    if (value % size !== 0) {
      throw new DuoArgumentError(
        'tensorParallel.communicator',
        `Expected the model's \`${field}\` (${value}) to divide by the group's ${size} ranks: each rank holds an equal share`,
      );
    }
  }
  return { communicator, rank, size, modelConfig: config };
}

/** The config a rank's layers run: its share of the heads (whole GQA groups) and of the MLP's width. */
export function rankConfig(config: ModelConfig, size: number): ModelConfig {
  return {
    ...config,
    numHeads: config.numHeads / size,
    numKvHeads: config.numKvHeads / size,
    intermediateSize: config.intermediateSize / size,
  };
}

/** The slice of weight `weight` (or of its bias) that `part` holds. */
export function weightSlice(weight: SplitWeight, part: TensorParallelRank): WeightSlice {
  const { modelConfig: config, rank, size } = part;
  const per = (total: number) => ({ start: (rank * total) / size, count: total / size });
  switch (weight) {
    case 'query':
      return { dimension: 'rows', ...per(config.numHeads * config.headDim) };
    case 'key':
    case 'value':
      return { dimension: 'rows', ...per(config.numKvHeads * config.headDim) };
    case 'gate':
    case 'up':
      return { dimension: 'rows', ...per(config.intermediateSize) };
    case 'output':
      return { dimension: 'columns', ...per(config.numHeads * config.headDim) };
    case 'down':
      return { dimension: 'columns', ...per(config.intermediateSize) };
  }
}

/**
 * A whole model's head plan as rank `part` runs it: each layer's retrieval heads among the rank's KV heads, renumbered
 * from 0 (a layer may keep none of them, or all).
 */
export function rankPlan(plan: HeadPlan, part: TensorParallelRank): HeadPlan {
  const kvHeads = plan.kvHeads / part.size;
  const first = part.rank * kvHeads;
  const retrievalHeads = plan.retrievalHeads.map((heads) =>
    heads.filter((head) => head >= first && head < first + kvHeads).map((head) => head - first),
  );
  const retrieval = retrievalHeads.reduce((sum, heads) => sum + heads.length, 0);
  const total = retrievalHeads.length * kvHeads;
  return { ...plan, retrievalHeads, kvHeads, sparsity: total === 0 ? 0 : 1 - retrieval / total };
}
