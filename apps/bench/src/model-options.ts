// The options every model-running command shares: --model, --device and --weight-dtype, and loading the model.
import { LlamaModel } from '@duoattn/model';
import { choiceOption } from './args.js';
import { defaultModelPath } from './default-model.js';
import { loadingProgress } from './progress.js';

/** Option specs to spread into a command's parseOptions call. */
export const MODEL_OPTIONS = {
  model: { type: 'string' },
  device: { type: 'string' },
  'weight-dtype': { type: 'string' },
} as const;

/** Validates --device and --weight-dtype. */
export function modelChoices(options: Record<string, unknown>) {
  return {
    device: choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto'),
    weightDtype: choiceOption('weight-dtype', options['weight-dtype'], ['auto', 'f32', 'f16', 'bf16'] as const, 'auto'),
  };
}

/** Loads --model (default: the embedded demo model) with a progress line; call after validating the other options. */
export async function loadModel(options: Record<string, unknown>): Promise<{ model: LlamaModel; path: string }> {
  const { device, weightDtype } = modelChoices(options);
  const path = (options.model as string | undefined) ?? defaultModelPath();
  return { model: await LlamaModel.load(path, { device, weightDtype, onProgress: loadingProgress(path) }), path };
}
