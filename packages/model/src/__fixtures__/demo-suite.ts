// The embedded demo model (models/duo-demo) against the logits PyTorch computed at export, run once per backend.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readEnvironment } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { LlamaModel } from '../llama-model.js';

/** models/duo-demo of this checkout (DUO_REPO_DIR overrides, for bundles that run elsewhere). */
export function demoModelDirectory(): string {
  const root = readEnvironment().repoDir ?? resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
  return join(root, 'models', 'duo-demo');
}

export function demoModelSuite(device: 'cpu' | 'cuda', skipReason?: string): void {
  const directory = demoModelDirectory();
  const reason = skipReason ?? (existsSync(join(directory, 'config.json')) ? undefined : `${directory} not found`);
  (reason ? describe.skip : describe)(`models/duo-demo on ${device}${reason ? ` (skipped: ${reason})` : ''}`, () => {
    it('matches the PyTorch golden logits within 1e-3 (f32 weights) and round-trips text through its tokenizer', async () => {
      const golden = JSON.parse(readFileSync(join(directory, 'golden.json'), 'utf8')) as { tokens: number[] };
      const expected = new Float32Array(new Uint8Array(readFileSync(join(directory, 'golden.logits.f32'))).buffer);
      const model = await LlamaModel.load(directory, { device, weightDtype: 'f32' });
      expect(model.config.numHeads / model.config.numKvHeads).toBeGreaterThan(3);
      expect(model.config.maxPositionEmbeddings).toBe(16384);
      const session = model.createSession({ maxTokens: golden.tokens.length, cacheDtype: 'f32' });
      const { logits } = await session.forward(golden.tokens, { logits: 'all' });
      let worst = 0;
      for (let i = 0; i < expected.length; i++)
        worst = Math.max(worst, Math.abs((logits?.[i] ?? 0) - (expected[i] ?? 0)));
      expect(logits?.length).toBe(expected.length);
      expect(worst).toBeLessThan(1e-3);
      const text = 'The passkey is 48213. Émile 🍰';
      expect(model.tokenizer?.decode(model.tokenizer.encode(text))).toBe(text);
      session.dispose();
      model.dispose();
    });
  });
}
