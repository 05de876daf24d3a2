// Locates ../shared (beside the repository) for tests; tests skip with a clear message when it is absent.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readEnvironment } from '@duoattn/core';

const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

/** Absolute path of `../shared/<relative>` (or under `DUO_SHARED_DIR`), or undefined when it is missing. */
export function sharedPath(...relative: string[]): string | undefined {
  const base = readEnvironment().sharedDir ?? join(repositoryRoot, '..', 'shared');
  const path = join(base, ...relative);
  return existsSync(path) ? path : undefined;
}

/** The reason shared-data tests skip, or undefined when the data is there. */
export function sharedSkipReason(...relative: string[]): string | undefined {
  return sharedPath(...relative) ? undefined : `../shared/${relative.join('/')} not found (set DUO_SHARED_DIR)`;
}
