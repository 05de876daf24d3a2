// The options every model-running command shares: --model, --device, --weight-dtype and --weight-quant, and loading
// the model.
import { choiceOption, namedShape, RANDOM_WEIGHTS_SEED, randomModelLabel } from '@duoattn/app-kit';
import { type Backend, readEnvironment, WEIGHT_QUANT_CHOICES } from '@duoattn/core';
import { type BackendRequest, environmentTuning, type NativeBackend, resolveBackend } from '@duoattn/kernels';
import { LlamaModel, type ModelRuntimeOptions } from '@duoattn/model';
import { defaultModelPath } from './default-model.js';
import { loadingProgress } from './progress.js';

/** Option specs to spread into a command's parseOptions call. */
export const MODEL_OPTIONS = {
  model: { type: 'string' },
  device: { type: 'string' },
  'weight-dtype': { type: 'string' },
  'weight-quant': { type: 'string' },
} as const;

/** Option specs of the benchmarks that run a named shape or a checkpoint (`benchmarkModel`): spread into parseOptions. */
export const BENCHMARK_MODEL_OPTIONS = {
  shape: { type: 'string' },
  model: { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
} as const;

/** Validates --device, --weight-dtype and --weight-quant. */
export function modelChoices(options: Record<string, unknown>) {
  const weightQuant = choiceOption('weight-quant', options['weight-quant'], WEIGHT_QUANT_CHOICES, 'none');
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  return {
    device,
    weightDtype: choiceOption('weight-dtype', options['weight-dtype'], ['auto', 'f32', 'f16', 'bf16'] as const, 'auto'),
    weightQuant,
  };
}

/**
 * The backend for --device; with DUO_VERBOSE set, says on stderr which one was chosen and why not CUDA; the
 * DUO_CUDA_PROFILE, DUO_NO_PDL and DUO_GEMV_* knobs become its tuning (docs/architecture.md lists them).
 */
export function benchBackend(device: BackendRequest): NativeBackend {
  const environment = readEnvironment();
  const log = environment.verbose ? (message: string) => process.stderr.write(`${message}\n`) : undefined;
  const tuning = environmentTuning(environment);
  return resolveBackend(device, { ...(log ? { log } : {}), tuning });
}

/** What the environment asks of every model the commands make (DUO_NO_GRAPHS: no CUDA graphs, for profiling). */
export function runtimeOptions(): ModelRuntimeOptions {
  return { graphs: !readEnvironment().noGraphs };
}

/** Loads --model (default: the embedded demo model) with a progress line; call after validating the other options. */
export async function loadModel(options: Record<string, unknown>): Promise<{ model: LlamaModel; path: string }> {
  const { device, weightDtype, weightQuant } = modelChoices(options);
  const path = (options.model as string | undefined) ?? defaultModelPath();
  const model = await LlamaModel.load(path, {
    ...runtimeOptions(),
    device: benchBackend(device),
    weightDtype,
    weightQuant,
    onProgress: loadingProgress(path),
  });
  return { model, path };
}

/**
 * For benchmarks: --shape NAME (random weights of `dtype` made on the device) or --model PATH (default: the demo
 * model). Returns the model and how to name it in a report. `parallel.tensorParallel`: load it as one rank's slice.
 */
export async function benchmarkModel(
  options: Record<string, unknown>,
  backend: Backend,
  dtype: 'bf16' | 'f16' | 'f32',
  parallel: Pick<ModelRuntimeOptions, 'tensorParallel'> = {},
): Promise<{ model: LlamaModel; label: string }> {
  if (options.shape !== undefined) {
    const name = String(options.shape);
    return {
      model: LlamaModel.random(namedShape(name), {
        ...runtimeOptions(),
        ...parallel,
        device: backend,
        dtype,
        seed: RANDOM_WEIGHTS_SEED,
      }),
      label: randomModelLabel(name, dtype),
    };
  }
  const path = (options.model as string | undefined) ?? defaultModelPath();
  const model = await LlamaModel.load(path, {
    ...runtimeOptions(),
    ...parallel,
    device: backend,
    onProgress: loadingProgress(path),
  });
  return { model, label: path };
}
