// A forward step's activations (a session's, and the batch engine's: one set per step size in rows and one per number of
// sampled rows, kept for reuse).
import type { Backend, DType, ModelConfig, TensorHandle } from '@duoattn/core';

/** Activations of a step of `rows` rows. */
export interface StepWorkspace {
  readonly ids: TensorHandle;
  readonly positions: TensorHandle;
  readonly hidden: TensorHandle;
  readonly normed: TensorHandle;
  readonly query: TensorHandle;
  readonly key: TensorHandle;
  readonly value: TensorHandle;
  readonly attention: TensorHandle;
  readonly gate: TensorHandle;
}

/** What sampling `count` rows needs: their hidden states, logits, settings and tokens. */
export interface SampleWorkspace {
  readonly hidden: TensorHandle;
  readonly normed: TensorHandle;
  readonly logits: TensorHandle;
  readonly settings: TensorHandle;
  readonly tokens: TensorHandle;
}

/** The activations of `rows` rows of the forward (a session's chunk or a batch's step), made with `alloc`. */
export function stepWorkspace(
  alloc: (dtype: DType, shape: number[]) => TensorHandle,
  c: ModelConfig,
  rows: number,
): StepWorkspace {
  return {
    ids: alloc('i32', [rows]),
    positions: alloc('i32', [rows]),
    hidden: alloc('f32', [rows, c.hiddenSize]),
    normed: alloc('f32', [rows, c.hiddenSize]),
    query: alloc('f32', [rows, c.numHeads * c.headDim]),
    key: alloc('f32', [rows, c.numKvHeads * c.headDim]),
    value: alloc('f32', [rows, c.numKvHeads * c.headDim]),
    attention: alloc('f32', [rows, c.numHeads * c.headDim]),
    gate: alloc('f32', [rows, c.intermediateSize]),
  };
}

/** Workspaces kept per size (the most recently used few): a decode-only batch reuses its set every step. */
const KEPT = 4;

export class StepWorkspaces {
  readonly #backend: Backend;
  readonly #config: ModelConfig;
  readonly #steps = new Map<number, StepWorkspace>();
  readonly #samples = new Map<number, SampleWorkspace>();

  constructor(backend: Backend, config: ModelConfig) {
    this.#backend = backend;
    this.#config = config;
  }

  rows(rows: number): StepWorkspace {
    return this.#take(this.#steps, rows, (alloc) => stepWorkspace(alloc, this.#config, rows));
  }

  samples(count: number): SampleWorkspace {
    const c = this.#config;
    return this.#take(this.#samples, count, (alloc) => ({
      hidden: alloc('f32', [count, c.hiddenSize]),
      normed: alloc('f32', [count, c.hiddenSize]),
      logits: alloc('f32', [count, c.vocabSize]),
      settings: alloc('f32', [count, 4]),
      tokens: alloc('i32', [count]),
    }));
  }

  dispose(): void {
    for (const map of [this.#steps, this.#samples] as Map<number, object>[]) {
      for (const workspace of map.values()) disposeAll(workspace);
      map.clear();
    }
  }

  #take<T extends object>(
    map: Map<number, T>,
    size: number,
    make: (alloc: (dtype: DType, shape: number[]) => TensorHandle) => T,
  ): T {
    const existing = map.get(size);
    if (existing) {
      // Most recently used last.
      map.delete(size);
      map.set(size, existing);
      return existing;
    }
    if (map.size >= KEPT) {
      const [oldest, workspace] = map.entries().next().value as [number, T];
      disposeAll(workspace);
      map.delete(oldest);
    }
    const made: TensorHandle[] = [];
    try {
      const workspace = make((dtype, shape) => {
        const tensor = this.#backend.alloc(dtype, shape);
        made.push(tensor);
        return tensor;
      });
      map.set(size, workspace);
      return workspace;
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      throw error;
    }
  }
}

function disposeAll(workspace: object): void {
  for (const value of Object.values(workspace)) (value as TensorHandle).dispose();
}
