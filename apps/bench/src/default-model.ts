// Which model a command uses when --model is omitted.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '@duoattn/app-kit';

const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/**
 * The embedded demo model (`models/duo-demo`) when the clone has it; until then stories260K from ../shared.
 */
export function defaultModelPath(): string {
  const candidates = [
    join(repositoryRoot, 'models', 'duo-demo'),
    join(repositoryRoot, '..', 'shared', 'models', 'stories260K', 'stories260K.bin'),
  ];
  const found = candidates.find((candidate) => existsSync(candidate));
  if (!found) throw new UsageError(`--model: no model given and none of the defaults exist (${candidates.join(', ')})`);
  return found;
}

/**
 * The text a long-context benchmark reads: --NAME FILE, or by default Pride and Prejudice from ../shared (held out of
 * the demo model's training). A usage error when it does not exist.
 */
export function heldOutText(name: string, value: unknown): string {
  const path =
    (value as string | undefined) ??
    resolve(defaultModelPath(), '..', '..', '..', 'shared', 'data', 'gutenberg', '1342.txt');
  if (!existsSync(path)) throw new UsageError(`--${name}: "${path}" does not exist`);
  return path;
}
