// The block steps and the weights behind them: they compose into the session's logits, check their layer, and the
// weights are reachable only as host copies by name.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, rounded, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { LlamaModel } from './llama-model.js';
import { EMBEDDING, layerNames } from './loaders/names.js';

const directory = mkdtempSync(join(tmpdir(), 'duoattn-blocks-'));
const config = tinyConfig('qwen2'); // q/k/v biases and a tied head: every weight the blocks read
const weights = randomWeights(config, 800);
let model: LlamaModel;
let bf16: LlamaModel;
beforeAll(async () => {
  writeHfModel(join(directory, 'f32'), config, weights);
  writeHfModel(join(directory, 'bf16'), config, weights, { dtype: 'BF16' });
  model = await LlamaModel.load(join(directory, 'f32'), { device: 'cpu' });
  bf16 = await LlamaModel.load(join(directory, 'bf16'), { device: 'cpu' });
});
afterAll(() => {
  model.dispose();
  bf16.dispose();
  rmSync(directory, { recursive: true, force: true });
});

describe('LlamaBlocks', () => {
  it("logits of the last layer's captured state equal the session's logits, bit for bit", async () => {
    const prompt = [1, 9, 30, 31, 50, 12, 5, 77];
    const last = model.config.numLayers;
    const session = model.createSession({ maxTokens: 16 });
    const { logits, captured } = await session.forward(prompt, {
      capture: { layers: [last], positions: [prompt.length - 1] },
    });
    session.dispose();
    const b = model.backend;
    const hidden = b.upload('f32', [1, model.config.hiddenSize], captured?.get(last) as Float32Array);
    const normed = b.alloc('f32', [1, model.config.hiddenSize]);
    const out = b.alloc('f32', [1, model.config.vocabSize]);
    model.blocks.logits(hidden, normed, out);
    expect(Array.from((await b.read(out)) as Float32Array)).toEqual(Array.from(logits as Float32Array));
    for (const tensor of [hidden, normed, out]) tensor.dispose();
  });

  it('rejects a layer the model does not have', () => {
    const b = model.backend;
    const hidden = b.alloc('f32', [1, model.config.hiddenSize]);
    const gradient = b.alloc('f32', [1, model.config.numHeads * model.config.headDim]);
    expect(() => model.blocks.attentionOutputBackward(2, hidden, gradient)).toThrow(DuoArgumentError);
    expect(() => model.blocks.attentionOutputBackward(2, hidden, gradient)).toThrow(
      'Expected `layer` in [0, 2) but received 2',
    );
    hidden.dispose();
    gradient.dispose();
  });
});

describe('LlamaModel.readWeight', () => {
  it('copies a weight to the host by its canonical name (16-bit weights as f32); the tensors stay private', async () => {
    const down = layerNames(1).down;
    const queryBias = layerNames(0).queryBias;
    for (const name of [EMBEDDING, down, queryBias]) {
      const stored = weights.get(name)?.data as Float32Array;
      expect(Array.from(await model.readWeight(name))).toEqual(Array.from(stored));
      expect(Array.from(await bf16.readWeight(name))).toEqual(Array.from(rounded(stored, 'BF16')));
    }
    await expect(model.readWeight('model.layers.7.mlp.down_proj.weight')).rejects.toThrow(DuoArgumentError);
    await expect(model.readWeight('lm_head')).rejects.toThrow('one of this model');
    expect('weights' in model).toBe(false);
  });
});
