// Loads the model a worker thread or a rank process was told to (`WorkerModel`): a checkpoint or random weights, on
// the device asked (tuned as asked), whole or as one rank's tensor-parallel slice.
import type { Backend, Communicator } from '@duoattn/core';
import { type NativeBackend, resolveBackend } from '@duoattn/kernels';
import { LlamaModel } from '../llama-model.js';
import type { WorkerModel } from './engine-worker.js';

/** The backend `spec` asks for, tuned when it says how. */
export function workerBackend(spec: WorkerModel): NativeBackend {
  return resolveBackend(spec.device ?? 'auto', spec.tuning ? { tuning: spec.tuning } : {});
}

/** `spec`'s model on `backend`; with `tensorParallel`, the slice of rank `communicator.rank`. */
export function loadWorkerModel(
  spec: WorkerModel,
  backend: Backend,
  tensorParallel?: { readonly communicator: Communicator },
): Promise<LlamaModel> {
  const parallel = tensorParallel ? { tensorParallel } : {};
  if ('path' in spec) {
    return LlamaModel.load(spec.path, {
      device: backend,
      weightDtype: spec.weightDtype,
      tokenizerPath: spec.tokenizerPath,
      ...parallel,
    });
  }
  return Promise.resolve(
    LlamaModel.random(spec.random, { device: backend, dtype: spec.dtype, seed: spec.seed, ...parallel }),
  );
}
