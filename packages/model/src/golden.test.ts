// stories260K against the llama2.c reference on the CPU: logits, greedy tokens, and both tokenizers.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { goldenSuite } from './__fixtures__/golden-suite.js';
import { sharedPath, sharedSkipReason } from './__fixtures__/shared.js';
import { LlamaModel } from './llama-model.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';

const skip = sharedSkipReason('golden', 'stories260K');
const suite = skip ? describe.skip : describe;

goldenSuite('cpu', 1e-4);

suite('stories260K tokenizers', () => {
  const cases = () =>
    JSON.parse(readFileSync(sharedPath('golden', 'stories260K', 'tokenizer-cases.json') as string, 'utf8')) as {
      text: string;
      ids: number[];
    }[];

  it.each(['stories260K.bin', 'stories260K.gguf'])(
    '%s tokenizer reproduces every llama2.c case and decodes back',
    async (file) => {
      const checkpoint = await openCheckpoint(sharedPath('models', 'stories260K', file) as string);
      const tokenizer = checkpoint.tokenizer;
      expect(tokenizer).toBeDefined();
      for (const { text, ids } of cases()) {
        expect(tokenizer?.encode(text)).toEqual(ids);
        expect(tokenizer?.decode(ids)).toBe(text);
      }
    },
  );
});

(skip ? describe.skip : describe)(`stories260K streamed text${skip ? ` (skipped: ${skip})` : ''}`, () => {
  // llama2.c prints "…They saw a big dog named Max…": the first generated token continues the prompt, so its
  // SentencePiece space stays (it is dropped only after BOS).
  it.each(['stories260K.bin', 'stories260K.gguf'])(
    '%s: greedy generation after a prompt keeps the first token’s leading space',
    async (file) => {
      const model = await LlamaModel.load(sharedPath('models', 'stories260K', file) as string, { device: 'cpu' });
      let text = '';
      for await (const token of model.generate('Lily and Tom went to the park. They saw a big dog', { maxTokens: 4 })) {
        text += token.text;
      }
      model.dispose();
      expect(text).toBe(' named Max');
    },
  );
});
