// The stories260K golden suite, run once per backend: logits at every position and greedy tokens vs llama2.c.
import { describe, expect, it } from 'vitest';
import { LlamaModel } from '../llama-model.js';
import { loadGolden, sharedPath, sharedSkipReason } from './shared.js';

const skip = sharedSkipReason('golden', 'stories260K');

function maxAbs(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return a.length === b.length ? worst : Number.POSITIVE_INFINITY;
}

export function goldenSuite(device: 'cpu' | 'cuda', tolerance: number, skipReason?: string): void {
  const reason = skip ?? skipReason;
  (reason ? describe.skip : describe)(`stories260K golden on ${device}${reason ? ` (skipped: ${reason})` : ''}`, () => {
    for (const file of ['stories260K.bin', 'stories260K.gguf']) {
      it(`${file}: logits match at every position (prefill and token-by-token)`, async () => {
        const { run, logits } = loadGolden();
        const model = await LlamaModel.load(sharedPath('models', 'stories260K', file) as string, { device });
        const session = model.createSession({
          maxTokens: run.positions,
          policy: { attention: 'full', prefillChunk: 64 },
        });
        const result = await session.forward(run.tokens, { logits: 'all' });
        expect(maxAbs(result.logits as Float32Array, logits)).toBeLessThan(tolerance);
        // Token by token exercises the decode attention path.
        session.reset();
        const rows = new Float32Array(logits.length);
        for (let p = 0; p < run.positions; p++) {
          const step = await session.forward([run.tokens[p] as number]);
          rows.set(step.logits as Float32Array, p * run.vocab_size);
        }
        expect(maxAbs(rows, logits)).toBeLessThan(tolerance);
        session.dispose();
        model.dispose();
      });
    }

    it('greedy generation reproduces the reference tokens and text', async () => {
      const { run } = loadGolden();
      const model = await LlamaModel.load(sharedPath('models', 'stories260K', 'stories260K.bin') as string, { device });
      const prompt = run.tokens.slice(0, run.prompt_tokens);
      const ids: number[] = [];
      let text = '';
      for await (const token of model.generate(prompt, {
        maxTokens: run.positions - run.prompt_tokens,
        stopTokens: [],
      })) {
        ids.push(token.id);
        text += token.text;
      }
      expect(ids).toEqual(run.tokens.slice(run.prompt_tokens));
      expect(`${run.prompt}${text}`).toBe(run.text);
      model.dispose();
    });
  });
}
