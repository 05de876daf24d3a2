// Checkpoints the tests write themselves: HF safetensors (f32, bf16, sharded; GQA Llama and Qwen2 with q/k/v bias and
// tied embeddings) and GGUF (F16, BF16, Q8_0), checked against a float64 forward pass; and every broken-file error.
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoCheckpointError, type WeightFormat } from '@duoattn/core';
import { resolveBackend } from '@duoattn/kernels';
import { relativeError } from '@duoattn/kernels/testing';
import { afterAll, describe, expect, it } from 'vitest';
import {
  blockRounded,
  type FixtureTensor,
  ggufName,
  randomWeights,
  rounded,
  tinyConfig,
  writeGguf,
  writeHfModel,
  writeSafetensors,
} from './__fixtures__/checkpoints.js';
import { referenceLogits } from './__fixtures__/reference-forward.js';
import { SENTENCEPIECE_SPECIAL, writeSentencePieceTokenizer } from './__fixtures__/sentencepiece-tokenizer.js';
import { LlamaModel } from './llama-model.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';

const root = mkdtempSync(join(tmpdir(), 'duoattn-loaders-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const tokens = [1, 5, 17, 42, 96, 3, 3, 60, 7, 11, 80, 2];
const cpu = resolveBackend('cpu');

async function logitsOf(path: string, options: { prefillChunk?: number } = {}): Promise<Float32Array> {
  const model = await LlamaModel.load(path, { device: cpu });
  const session = model.createSession({
    maxTokens: 64,
    policy: { attention: 'full', prefillChunk: options.prefillChunk ?? 5 },
  });
  const { logits } = await session.forward(tokens, { logits: 'all' });
  session.dispose();
  model.dispose();
  return logits as Float32Array;
}

function roundAll(weights: Map<string, FixtureTensor>, dtype: 'BF16' | 'F16' | 'F32'): Map<string, FixtureTensor> {
  return new Map([...weights].map(([name, t]) => [name, { shape: t.shape, data: rounded(t.data, dtype) }]));
}

describe('HF safetensors checkpoints', () => {
  for (const family of ['llama', 'qwen2'] as const) {
    it(`${family}: f32 logits match a float64 forward pass; bf16 agrees within bf16 tolerance`, async () => {
      const config = tinyConfig(family);
      const weights = randomWeights(config, family === 'llama' ? 100 : 200);
      writeHfModel(join(root, `${family}-f32`), config, weights);
      writeHfModel(join(root, `${family}-bf16`), config, weights, { dtype: 'BF16' });
      const checkpoint = await openCheckpoint(join(root, `${family}-f32`));
      expect(checkpoint.config.attentionBias).toBe(family === 'qwen2');
      expect(checkpoint.config.tieWordEmbeddings).toBe(family === 'qwen2');
      const expected = referenceLogits(checkpoint.config, weights, tokens);
      const f32 = await logitsOf(join(root, `${family}-f32`));
      expect(relativeError(f32, expected)).toBeLessThan(1e-5);
      const bf16 = await logitsOf(join(root, `${family}-bf16`));
      // The bf16 model computes exactly the float64 forward of its rounded weights…
      expect(relativeError(bf16, referenceLogits(checkpoint.config, roundAll(weights, 'BF16'), tokens))).toBeLessThan(
        1e-5,
      );
      // …and differs from the f32 model only by that rounding.
      expect(relativeError(bf16, f32)).toBeLessThan(3e-2);
    });
  }

  it('a sharded checkpoint loads like the single file, and chunk size does not change the logits', async () => {
    const config = tinyConfig('llama');
    const weights = randomWeights(config, 300);
    writeHfModel(join(root, 'single'), config, weights);
    writeHfModel(join(root, 'sharded'), config, weights, { shards: 3 });
    const single = await logitsOf(join(root, 'single'), { prefillChunk: 64 });
    expect(Array.from(await logitsOf(join(root, 'sharded'), { prefillChunk: 64 }))).toEqual(Array.from(single));
    expect(relativeError(await logitsOf(join(root, 'single'), { prefillChunk: 1 }), single)).toBeLessThan(1e-6);
  });
});

describe('GGUF checkpoints', () => {
  it.each(['F32', 'F16', 'BF16', 'Q8_0', 'Q4_K', 'Q5_K', 'Q6_K'] as const)(
    '%s tensors load and run against the float64 forward pass (block formats kept as they are on the CPU)',
    async (type) => {
      // Rows of 64 and 96 values: Q8_0 needs whole 32-value blocks per row; the k-quants rows of 256.
      const kQuant = type.endsWith('_K');
      const config = kQuant
        ? tinyConfig('llama', { hidden_size: 256, intermediate_size: 256, num_attention_heads: 8, head_dim: 32 })
        : tinyConfig('llama', { hidden_size: 64, intermediate_size: 96, num_attention_heads: 8 });
      const weights = randomWeights(config, 400);
      const held = new Map<string, FixtureTensor>();
      const tensors = [...weights].map(([name, tensor]) => {
        const isVector = tensor.shape.length === 1;
        const tensorType = isVector ? 'F32' : type;
        const data =
          tensorType === 'F32' || tensorType === 'F16' || tensorType === 'BF16'
            ? rounded(tensor.data, tensorType)
            : blockRounded(tensor.data, tensorType.toLowerCase() as WeightFormat);
        held.set(name, { shape: tensor.shape, data });
        return { name: ggufName(name), shape: tensor.shape, data: tensor.data, type: tensorType };
      });
      const path = join(root, `tiny-${type}.gguf`);
      writeGguf(path, config, tensors);
      const checkpoint = await openCheckpoint(path);
      expect(checkpoint.config.ropeStyle).toBe('interleaved');
      const expected = referenceLogits(checkpoint.config, held, tokens);
      if (type === 'Q8_0') {
        // Q8_0 multiplies x rounded to int8 pieces by default (ADR 0012): within that rounding of the float64 pass,
        // and exactly it with exact x.
        expect(relativeError(await logitsOf(path), expected)).toBeLessThan(5e-2);
        cpu.tune({ cpuIntegerQ8: false });
      }
      try {
        expect(relativeError(await logitsOf(path), expected)).toBeLessThan(1e-5);
      } finally {
        cpu.tune({});
      }
      // The CPU keeps a block format as it is: the gate matrix loads as that dtype, at the file's bytes.
      if (type !== 'F32' && type !== 'F16' && type !== 'BF16') {
        const model = await LlamaModel.load(path, { device: 'cpu' });
        expect(model.weightDtype).toBe(type.toLowerCase());
        model.dispose();
      }
    },
  );
});

describe('HF checkpoints whose BOS only config.json names', () => {
  /** A Llama checkpoint with config.json's bos_token_id and a SentencePiece tokenizer.json, no tokenizer_config.json. */
  function writeCheckpoint(name: string, prependsBos: boolean): string {
    const directory = join(root, name);
    const vocabSize = writeSentencePieceTokenizer(directory, { withConfig: false, prependsBos });
    const config = tinyConfig('llama', { vocab_size: vocabSize, bos_token_id: SENTENCEPIECE_SPECIAL.bos });
    writeHfModel(directory, config, randomWeights(config, 400));
    return directory;
  }

  it('a post-processor that prepends BOS: encode, generate and bosTokenId (perplexity) all get it', async () => {
    const model = await LlamaModel.load(writeCheckpoint('bos-from-config', true), { device: 'cpu' });
    const { bos } = SENTENCEPIECE_SPECIAL;
    expect(model.tokenizer?.bosTokenId).toBe(bos);
    const text = 'They saw a big dog';
    const ids = model.encode(text);
    expect(ids[0]).toBe(bos);
    expect(ids.slice(1)).toEqual(model.tokenizer?.encode(text, { addBos: false }));
    const generation = model.generate(text, { maxTokens: 1 });
    let step = await generation.next();
    while (!step.done) step = await generation.next();
    expect(step.value.promptTokens).toBe(ids.length);
    model.dispose();
  });

  it('no post-processor: config.json alone does not make a BOS (Qwen2 names one it was never trained with)', async () => {
    const checkpoint = await openCheckpoint(writeCheckpoint('bos-not-prepended', false));
    expect(checkpoint.config.bosTokenId).toBe(SENTENCEPIECE_SPECIAL.bos);
    expect(checkpoint.tokenizer?.bosTokenId).toBeUndefined();
    expect(checkpoint.tokenizer?.encode('They saw a big dog')[0]).not.toBe(SENTENCEPIECE_SPECIAL.bos);
  });
});

describe('broken checkpoints give errors naming the file and the tensor', () => {
  const config = tinyConfig('llama');
  const weights = randomWeights(config, 500);
  const expectCheckpointError = async (path: string, pieces: string[]) => {
    const error = await LlamaModel.load(path, { device: 'cpu' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error instanceof DuoCheckpointError).toBe(true);
    for (const piece of pieces) expect(String((error as Error).message)).toContain(piece);
  };

  it('a truncated safetensors file', async () => {
    const directory = join(root, 'truncated');
    writeHfModel(directory, config, weights);
    const file = join(directory, 'model.safetensors');
    truncateSync(file, readFileSync(file).length - 100);
    await expectCheckpointError(directory, [file, 'lm_head.weight', 'the file is truncated']);
  });

  it('a corrupt header', async () => {
    const directory = join(root, 'corrupt');
    writeHfModel(directory, config, weights);
    const file = join(directory, 'model.safetensors');
    const bytes = readFileSync(file);
    bytes.writeBigUInt64LE(BigInt(bytes.length * 4), 0);
    writeFileSync(file, bytes);
    await expectCheckpointError(directory, [file, 'corrupt safetensors header length']);
  });

  it('a missing tensor', async () => {
    const directory = join(root, 'missing');
    const partial = new Map(weights);
    partial.delete('model.layers.1.mlp.up_proj.weight');
    writeHfModel(directory, config, partial);
    await expectCheckpointError(directory, [directory, 'model.layers.1.mlp.up_proj.weight', 'missing']);
  });

  it('a wrong shape', async () => {
    const directory = join(root, 'shape');
    writeHfModel(directory, { ...config, intermediate_size: 81 }, weights);
    await expectCheckpointError(directory, [
      'model.safetensors',
      'model.layers.0.mlp.gate_proj.weight',
      'expected shape [81, 48]',
    ]);
  });

  it('an unsupported dtype', async () => {
    const directory = join(root, 'dtype');
    writeHfModel(directory, config, new Map());
    writeSafetensors(join(directory, 'model.safetensors'), weights, 'F32', { 'model.norm.weight': { dtype: 'I8' } });
    await expectCheckpointError(directory, ['model.safetensors', 'model.norm.weight', 'unsupported dtype I8']);
  });

  it('a file that is not a checkpoint at all', async () => {
    const path = join(root, 'garbage.gguf');
    writeFileSync(path, 'this is not a gguf file');
    await expectCheckpointError(path, [path, 'not a readable GGUF file']);
  });
});
