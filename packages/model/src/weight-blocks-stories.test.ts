// stories260K rewritten by our GGUF writer with its matrices in block formats (ADR 0010), run on the CPU with the
// weights kept as stored: Q8_0 greedy-decodes the same 64 tokens (so the same text) as the f32 original; the "Q4_K"
// file — no stories260K row splits into 256-value blocks, so it holds Q8_0 and F16 tensors — loads and runs.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sharedPath, sharedSkipReason } from './__fixtures__/shared.js';
import { LlamaModel } from './llama-model.js';
import { readTensorF32 } from './loaders/checkpoint.js';
import {
  encodeGgufTensor,
  fillerVocabulary,
  type GgufTensorType,
  ggufTensorName,
  ggufVocabularyMetadata,
  llamaMetadata,
  storedType,
  writeGgufFile,
} from './loaders/gguf-writer.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';

const skip = sharedSkipReason('models', 'stories260K');
const root = mkdtempSync(join(tmpdir(), 'duo-stories-blocks-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** stories260K's f32 weights written as GGUF with its matrices in `type` (or our fallback). */
async function rewrite(type: GgufTensorType): Promise<string> {
  const source = await openCheckpoint(sharedPath('models', 'stories260K', 'stories260K.bin') as string);
  const tensors = [...source.tensors].map(([name, stored]) => {
    const format = stored.shape.length === 1 ? 'F32' : storedType(type, stored.shape);
    return {
      name: ggufTensorName(name),
      shape: stored.shape,
      type: format,
      bytes: encodeGgufTensor(format, readTensorF32(stored)),
    };
  });
  const path = join(root, `stories260K-${type}.gguf`);
  const metadata = [
    ...llamaMetadata(source.config),
    ...ggufVocabularyMetadata(fillerVocabulary(source.config.vocabSize)),
  ];
  writeGgufFile(path, metadata, tensors);
  return path;
}

/** 64 greedy tokens after `prompt` (ids), on the CPU. */
async function greedy(model: LlamaModel, prompt: readonly number[]): Promise<number[]> {
  const session = model.createSession({ maxTokens: 256 });
  try {
    await session.forward(prompt.slice(0, -1));
    const tokens: number[] = [];
    for await (const token of session.greedyTokens(prompt[prompt.length - 1] as number, 64)) tokens.push(token);
    return tokens;
  } finally {
    session.dispose();
  }
}

(skip ? describe.skip : describe)(`stories260K in block formats on the CPU${skip ? ` (skipped: ${skip})` : ''}`, () => {
  it('Q8_0 keeps its blocks and generates the f32 model’s first 64 greedy tokens; the Q4_K file loads and runs', async () => {
    const original = await LlamaModel.load(sharedPath('models', 'stories260K', 'stories260K.bin') as string, {
      device: 'cpu',
    });
    const prompt = original.encode('Once upon a time');
    const reference = await greedy(original, prompt);
    const q8 = await LlamaModel.load(await rewrite('Q8_0'), { device: 'cpu' });
    expect(q8.weightDtype).toBe('q8_0');
    const tokens = await greedy(q8, prompt);
    expect(original.tokenizer?.decode(tokens)).toBe(original.tokenizer?.decode(reference));
    expect(tokens).toEqual(reference);
    const q4 = await LlamaModel.load(await rewrite('Q4_K'), { device: 'cpu' });
    const q4Tokens = await greedy(q4, prompt);
    expect(q4Tokens).toHaveLength(64);
    expect(q4Tokens.every((token) => token >= 0 && token < q4.config.vocabSize)).toBe(true);
    for (const model of [original, q8, q4]) model.dispose();
  });
});
