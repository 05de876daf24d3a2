// The golden run of stories260K from ../shared (the locating helpers live in @duoattn/kernels/testing).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sharedPath } from '@duoattn/kernels/testing';

export { sharedPath, sharedSkipReason } from '@duoattn/kernels/testing';

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
