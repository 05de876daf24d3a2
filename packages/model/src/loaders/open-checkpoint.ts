// Picks the loader for a path: a directory (HF), *.gguf, or a llama2.c *.bin.
import { existsSync, statSync } from 'node:fs';
import { DuoArgumentError } from '@duoattn/core';
import type { Checkpoint } from './checkpoint.js';
import { openGguf } from './gguf.js';
import { openHf } from './hf.js';
import { type Llama2cOptions, openLlama2c } from './llama2c.js';

/** Opens any supported checkpoint without loading its weights. */
export async function openCheckpoint(path: string, options: Llama2cOptions = {}): Promise<Checkpoint> {
  if (typeof path !== 'string' || !existsSync(path)) {
    throw new DuoArgumentError(
      'path',
      `Expected \`path\` to name a model directory, .gguf or .bin file but received "${String(path)}", which does not exist`,
    );
  }
  if (statSync(path).isDirectory()) return openHf(path);
  if (path.endsWith('.gguf')) return openGguf(path);
  if (path.endsWith('.bin')) return openLlama2c(path, options);
  throw new DuoArgumentError(
    'path',
    `Expected \`path\` to be a directory, a .gguf or a llama2.c .bin file but received "${path}"`,
  );
}
