// Which model duo-serve serves: a checkpoint (--model PATH, default the embedded demo model; its config, tokenizer and
// chat template read here, its weights in the engine worker) or a named shape with random weights made on the device
// (--shape NAME, as duo-bench's timing commands make them; no tokenizer, so requests send token ids).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  choiceOption,
  namedShape,
  RANDOM_WEIGHT_DTYPES,
  RANDOM_WEIGHTS_SEED,
  randomModelLabel,
  UsageError,
} from '@duoattn/app-kit';
import type { ModelConfig } from '@duoattn/core';
import { openCheckpoint, type Tokenizer, type WorkerModel } from '@duoattn/model';

const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The model as the server needs it: what the HTTP side reads here and what the engine worker loads. */
export interface ModelSource {
  /** The name /v1/models lists unless --served-model-name says otherwise: the folder's name, or the shape's. */
  readonly defaultId: string;
  readonly config: ModelConfig;
  /** Absent for a shape (random weights) and for checkpoints without one: prompts are then token ids. */
  readonly tokenizer: Tokenizer | undefined;
  readonly chatTemplate: string | undefined;
  /** What the engine worker loads. */
  readonly worker: WorkerModel;
  /** For logs and /v1/stats: the path, or "llama-3-8b (random bf16 weights made on the device)". */
  readonly description: string;
  /** The duo pattern that comes with the model (models/duo-demo/pattern), if any. */
  readonly ownPattern: string | undefined;
}

/**
 * The model of `--model`, `--shape`, `--dtype` and `--chat-template` on `device`; usage errors (naming the option) for
 * a path that does not exist, an unknown shape, both at once, and options that do not apply to the other.
 */
export async function modelSource(
  options: Record<string, unknown>,
  device: 'auto' | 'cpu' | 'cuda',
): Promise<ModelSource> {
  if (options.shape !== undefined) return shapeSource(options, device);
  if (options.dtype !== undefined) {
    throw new UsageError(
      '--dtype: applies to --shape (random weights made in that dtype); a checkpoint loads in its own dtype',
      { option: 'dtype', received: String(options.dtype), expected: 'with --shape' },
    );
  }
  const path = typeof options.model === 'string' ? options.model : join(repositoryRoot, 'models', 'duo-demo');
  if (!existsSync(path)) throw new UsageError(`--model: "${path}" does not exist`, { option: 'model', received: path });
  // The tokenizer and config here (tokenize, chat templates, context checks); the weights load in the worker.
  const checkpoint = await openCheckpoint(path);
  const template = typeof options['chat-template'] === 'string' ? readTemplate(options['chat-template']) : undefined;
  if (template !== undefined && !checkpoint.tokenizer) {
    throw new UsageError(`--chat-template: "${path}" has no tokenizer, so it serves token-id prompts only`, {
      option: 'chat-template',
    });
  }
  const ownPattern = statSync(path).isDirectory() ? join(path, 'pattern') : undefined;
  return {
    defaultId: lastPart(path),
    config: checkpoint.config,
    tokenizer: checkpoint.tokenizer,
    chatTemplate: template ?? checkpoint.chatTemplate,
    worker: { path, device },
    description: path,
    ownPattern: ownPattern && existsSync(ownPattern) ? ownPattern : undefined,
  };
}

function shapeSource(options: Record<string, unknown>, device: 'auto' | 'cpu' | 'cuda'): ModelSource {
  const name = String(options.shape);
  for (const other of ['model', 'chat-template'] as const) {
    if (options[other] === undefined) continue;
    const why =
      other === 'model'
        ? 'give either a checkpoint (--model) or a shape with random weights (--shape)'
        : 'a shape has no tokenizer, so it serves token-id prompts only';
    throw new UsageError(`--${other}: does not go with --shape: ${why}`, {
      option: other,
      received: String(options[other]),
    });
  }
  const config = namedShape(name);
  const dtype = choiceOption('dtype', options.dtype, RANDOM_WEIGHT_DTYPES, 'bf16');
  return {
    defaultId: name,
    config,
    tokenizer: undefined,
    chatTemplate: undefined,
    worker: { random: config, device, dtype, seed: RANDOM_WEIGHTS_SEED },
    description: randomModelLabel(name, dtype),
    ownPattern: undefined,
  };
}

function readTemplate(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new UsageError(`--chat-template: cannot read "${path}": ${(error as Error).message}`, {
      option: 'chat-template',
    });
  }
}

function lastPart(path: string): string {
  const parts = resolve(path).split('/').filter(Boolean);
  return parts[parts.length - 1] ?? 'model';
}
