// Which model and texts a command uses when --model, --haystack or --text are omitted, and the checks on given texts.
import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
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

/** The Gutenberg books in ../shared: the default haystack of gate training (a directory of .txt files). */
export function sharedBooks(): string {
  return resolve(defaultModelPath(), '..', '..', '..', 'shared', 'data', 'gutenberg');
}

/**
 * The text a long-context benchmark reads: --NAME PATH, or by default Pride and Prejudice from ../shared (held out of
 * the demo model's training); checked as `textFiles` checks it.
 */
export function heldOutText(name: string, value: unknown): string {
  const path = (value as string | undefined) ?? join(sharedBooks(), '1342.txt');
  textFiles(name, path);
  return path;
}

/**
 * The text files of --NAME PATH: the file itself, or a directory's .txt files in name order. A usage error, before any
 * work, when the path does not exist, cannot be read, is neither a file nor a directory, holds no .txt files or only
 * empty text.
 */
export function textFiles(name: string, path: string): string[] {
  const refuse = (why: string) => new UsageError(`--${name}: "${path}" ${why}`, { option: name, received: path });
  if (!existsSync(path)) throw refuse('does not exist');
  const directory = statSync(path).isDirectory();
  if (!directory && !statSync(path).isFile()) throw refuse('is neither a file nor a directory of .txt files');
  const files = directory
    ? readdirSync(path)
        .filter((entry) => entry.endsWith('.txt') && statSync(join(path, entry)).isFile())
        .sort()
        .map((entry) => join(path, entry))
    : [path];
  if (files.length === 0) throw refuse('holds no .txt files');
  for (const file of files) {
    try {
      accessSync(file, constants.R_OK);
    } catch {
      throw refuse(directory ? `holds "${file}", which cannot be read` : 'cannot be read');
    }
  }
  if (files.every((file) => statSync(file).size === 0))
    throw refuse(directory ? 'holds only empty .txt files' : 'is empty');
  return files;
}

/** The text of `textFiles(name, path)`, files joined by a blank line. */
export function readTexts(name: string, path: string): string {
  return textFiles(name, path)
    .map((file) => readFileSync(file, 'utf8'))
    .join('\n\n');
}
