// Locates ../shared (beside the repository) for tests; tests skip with a clear message when it is absent.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

/** Absolute path of `../shared/<relative>`, or undefined when ../shared is missing. */
export function sharedPath(...relative: string[]): string | undefined {
  const base = process.env.DUO_SHARED_DIR ?? join(repositoryRoot, '..', 'shared');
  const path = join(base, ...relative);
  return existsSync(path) ? path : undefined;
}

/** The reason shared-data tests skip, or undefined when the data is there. */
export function sharedSkipReason(...relative: string[]): string | undefined {
  return sharedPath(...relative) ? undefined : `../shared/${relative.join('/')} not found (set DUO_SHARED_DIR)`;
}

export interface GoldenRun {
  prompt: string;
  prompt_tokens: number;
  vocab_size: number;
  positions: number;
  tokens: number[];
  text: string;
}

/** The stories260K golden run and its logits. */
export function loadGolden(): { run: GoldenRun; logits: Float32Array } {
  const dir = sharedPath('golden', 'stories260K');
  if (!dir) throw new Error('golden data missing');
  const run = JSON.parse(readFileSync(join(dir, 'once.json'), 'utf8')) as GoldenRun;
  const bytes = readFileSync(join(dir, 'once.logits.f32'));
  return { run, logits: new Float32Array(new Uint8Array(bytes).buffer) };
}
