// LlamaModel and Session behaviour: capture, sampling, stop conditions, limits and argument errors.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { LlamaModel } from './llama-model.js';
import { argmax, checkSampling, sampleToken, seededRandom } from './sampling.js';

const directory = mkdtempSync(join(tmpdir(), 'duoattn-model-'));
let model: LlamaModel;
const config = tinyConfig('llama');
const weights = randomWeights(config, 700);
beforeAll(async () => {
  writeHfModel(directory, config, weights);
  model = await LlamaModel.load(directory, { device: 'cpu' });
});
afterAll(() => {
  model.dispose();
  rmSync(directory, { recursive: true, force: true });
});
const prompt = [1, 9, 30, 31, 50, 12, 5, 77];

async function collect(generation: AsyncGenerator<{ id: number; text: string }, unknown>): Promise<number[]> {
  const ids: number[] = [];
  for await (const token of generation) ids.push(token.id);
  return ids;
}

describe('capture', () => {
  it('returns embedding rows at layer 0 and the same states whatever the chunking', async () => {
    const session = model.createSession({ maxTokens: 32, policy: { attention: 'full', prefillChunk: 3 } });
    const positions = [7, 0, 2, 3, 4];
    const { captured } = await session.forward(prompt, { logits: 'none', capture: { layers: [0, 1, 2], positions } });
    const embedding = weights.get('model.embed_tokens.weight')?.data as Float32Array;
    const layer0 = captured?.get(0) as Float32Array;
    positions.forEach((position, i) => {
      const id = prompt[position] as number;
      expect(Array.from(layer0.subarray(i * 48, (i + 1) * 48))).toEqual(
        Array.from(embedding.subarray(id * 48, (id + 1) * 48)),
      );
    });
    const whole = model.createSession({ maxTokens: 32, policy: { attention: 'full', prefillChunk: 64 } });
    const again = await whole.forward(prompt, { logits: 'none', capture: { layers: [2], positions } });
    const a = captured?.get(2) as Float32Array;
    const b = again.captured?.get(2) as Float32Array;
    expect(a.length).toBe(positions.length * 48);
    for (let i = 0; i < a.length; i++) expect(Math.abs((a[i] ?? 0) - (b[i] ?? 0))).toBeLessThan(1e-5);
    session.dispose();
    whole.dispose();
  });

  it('outputsFrom skips the last layer for chunks before it, with the same states, logits and cache after it', async () => {
    const run = async (outputsFrom?: number) => {
      const session = model.createSession({ maxTokens: 32, policy: { attention: 'full', prefillChunk: 3 } });
      const { captured, logits } = await session.forward(prompt, {
        logits: 'last',
        capture: { layers: [1, 2], positions: [6, 7] },
        ...(outputsFrom === undefined ? {} : { outputsFrom }),
      });
      // The cache is whole: a token fed afterwards sees the same keys and values.
      const next = (await session.forward([5])).logits as Float32Array;
      session.dispose();
      return { one: captured?.get(1), two: captured?.get(2), logits, next };
    };
    const full = await run();
    const skipped = await run(6); // chunks [0, 3) and [3, 6) skip layer 2's attention and MLP
    for (const key of ['one', 'two', 'logits', 'next'] as const) {
      expect(Array.from(skipped[key] as Float32Array)).toEqual(Array.from(full[key] as Float32Array));
    }
    const session = model.createSession({ maxTokens: 32, policy: { attention: 'full', prefillChunk: 3 } });
    await expect(session.forward(prompt, { logits: 'all', outputsFrom: 4 })).rejects.toThrow(/logits: 'all'/);
    await expect(session.forward(prompt, { outputsFrom: 8 })).rejects.toThrow(/`outputsFrom` in \[0, 8\)/);
    await expect(
      session.forward(prompt, { logits: 'none', outputsFrom: 5, capture: { layers: [2], positions: [4] } }),
    ).rejects.toThrow(/layer 2 \(the last\) must be at positions ≥ outputsFrom/);
    session.dispose();
  });

  it('captures the last layer from the last row alone when outputsFrom is the last position', async () => {
    const capture = async (outputsFrom?: number) => {
      const session = model.createSession({ maxTokens: 32, policy: { attention: 'full', prefillChunk: 3 } });
      const { captured } = await session.forward(prompt, {
        logits: 'last',
        capture: { layers: [2], positions: [7] },
        ...(outputsFrom === undefined ? {} : { outputsFrom }),
      });
      session.dispose();
      return captured?.get(2) as Float32Array;
    };
    const whole = await capture();
    const trimmed = await capture(7);
    expect(trimmed.length).toBe(whole.length);
    for (let i = 0; i < whole.length; i++) expect(Math.abs((trimmed[i] ?? 0) - (whole[i] ?? 0))).toBeLessThan(1e-5);
  });

  it("logits 'last' runs the last layer for the last row alone: the logits and cache of a full pass", async () => {
    const policies = [
      { attention: 'full', prefillChunk: 3 },
      { attention: 'streaming', prefillChunk: 3, sink: 1, recent: 2 },
      { attention: 'streaming', prefillChunk: 3, sink: 1, recent: 2, prefillMask: 'chunked' },
    ] as const;
    for (const policy of policies) {
      const run = async (logits: 'last' | 'all') => {
        const session = model.createSession({ maxTokens: 32, policy });
        const result = (await session.forward(prompt, { logits })).logits as Float32Array;
        const next = (await session.forward([5])).logits as Float32Array;
        session.dispose();
        return { last: result.subarray(result.length - model.config.vocabSize), next };
      };
      const trimmed = await run('last');
      const whole = await run('all');
      for (const key of ['last', 'next'] as const) {
        expect(trimmed[key].length).toBe(model.config.vocabSize);
        for (let i = 0; i < model.config.vocabSize; i++) {
          expect(Math.abs((trimmed[key][i] ?? 0) - (whole[key][i] ?? 0))).toBeLessThan(1e-5);
        }
      }
    }
  });

  it('rejects layers and positions outside the call', async () => {
    const session = model.createSession({ maxTokens: 32 });
    await expect(session.forward(prompt, { capture: { layers: [3], positions: [0] } })).rejects.toThrow(
      'Expected layers in [0, 2]',
    );
    await expect(session.forward(prompt, { capture: { layers: [1], positions: [8] } })).rejects.toThrow(
      'Expected positions in [0, 8)',
    );
    session.dispose();
  });
});

describe('generate', () => {
  it('greedy generation equals argmax of full forward passes', async () => {
    const ids = await collect(model.generate(prompt, { maxTokens: 6, stopTokens: [] }));
    const session = model.createSession({ maxTokens: 32 });
    const sequence = [...prompt];
    for (let i = 0; i < 6; i++) {
      session.reset();
      const { logits } = await session.forward(sequence);
      sequence.push(argmax(logits as Float32Array));
    }
    expect(ids).toEqual(sequence.slice(prompt.length));
    session.dispose();
  });

  it('sampling is reproducible by seed, and top-k 1 is greedy', async () => {
    const sampling = { temperature: 1.5, seed: 7 };
    const first = await collect(model.generate(prompt, { maxTokens: 8, sampling, stopTokens: [] }));
    expect(await collect(model.generate(prompt, { maxTokens: 8, sampling, stopTokens: [] }))).toEqual(first);
    const greedy = await collect(model.generate(prompt, { maxTokens: 8, stopTokens: [] }));
    expect(
      await collect(model.generate(prompt, { maxTokens: 8, sampling: { temperature: 3, topK: 1 }, stopTokens: [] })),
    ).toEqual(greedy);
  });

  it('stops at a stop token, at maxTokens, on abort, and reports why', async () => {
    const greedy = await collect(model.generate(prompt, { maxTokens: 5, stopTokens: [] }));
    let stats: { finishReason: string; generatedTokens: number } | undefined;
    const stopped = await collect(
      model.generate(prompt, { maxTokens: 5, stopTokens: [greedy[1] as number], onStats: (s) => (stats = s) }),
    );
    expect(stopped).toEqual(greedy.slice(0, 2));
    expect(stats?.finishReason).toBe('stop');
    const controller = new AbortController();
    const aborted: number[] = [];
    for await (const token of model.generate(prompt, {
      maxTokens: 5,
      stopTokens: [],
      signal: controller.signal,
      onStats: (s) => (stats = s),
    })) {
      aborted.push(token.id);
      controller.abort();
    }
    expect(aborted.length).toBe(1);
    expect(stats?.finishReason).toBe('abort');
  });

  it('rejects bad options with messages naming them', async () => {
    await expect(collect(model.generate(prompt, { maxTokens: -1 }))).rejects.toThrow(
      'Expected `maxTokens` to be an integer ≥ 0',
    );
    await expect(collect(model.generate(prompt, { sampling: { topP: 0 } }))).rejects.toThrow(DuoArgumentError);
    await expect(collect(model.generate([1, 500]))).rejects.toThrow('Expected token ids in [0, 97) but received 500');
    await expect(collect(model.generate('text'))).rejects.toThrow('This model has no tokenizer');
    const session = model.createSession({ maxTokens: 4 });
    await expect(session.forward(prompt)).rejects.toThrow('would reach 8 tokens but the session holds 4');
    session.dispose();
  });

  it('refuses a prompt and maxTokens beyond the context or the session before any work', async () => {
    // The tiny model's context is 256 tokens.
    const long = Array.from({ length: 300 }, (_, i) => (i % 90) + 1);
    await expect(collect(model.generate(long, { maxTokens: 1 }))).rejects.toThrow(
      "The prompt has 300 tokens, more than the model's 256-token context (max_position_embeddings)",
    );
    const refusal = collect(model.generate(prompt, { maxTokens: 99_999_999_999 }));
    await expect(refusal).rejects.toThrow(DuoArgumentError);
    await expect(refusal).rejects.toThrow(
      "The prompt's 8 tokens + `maxTokens` 99999999999 = 100000000007 tokens exceed the model's 256-token context (max_position_embeddings); at most 248 new tokens fit",
    );
    expect(await collect(model.generate(prompt, { maxTokens: 248, stopTokens: [] }))).toHaveLength(248);
    const session = model.createSession({ maxTokens: 12 });
    await session.forward(prompt.slice(0, 4));
    await expect(collect(model.generate(prompt, { session, maxTokens: 1 }))).rejects.toThrow(
      "The prompt's 8 tokens + `maxTokens` 1 = 9 tokens exceed the session's room (8 of its 12 tokens are free); at most 0 new tokens fit",
    );
    expect(session.position).toBe(4); // nothing ran
    session.dispose();
  });

  it('refuses a session beyond the context unless allowBeyondContext (synthetic caches for benchmarks)', () => {
    expect(() => model.createSession({ maxTokens: 257 })).toThrow(
      "Expected `maxTokens` of at most the model's context, 256 tokens (max_position_embeddings), but received 257",
    );
    const beyond = model.createSession({ maxTokens: 512, allowBeyondContext: true });
    beyond.syntheticFill(400);
    expect(beyond.position).toBe(400);
    beyond.dispose();
  });
});

describe('sampling', () => {
  it('top-p keeps the smallest set reaching p and validates options', () => {
    const logits = Float32Array.from([0, 5, 1, 4.9]);
    const random = seededRandom(1);
    const options = checkSampling({ temperature: 1, topP: 0.3 });
    for (let i = 0; i < 50; i++) expect(sampleToken(logits, options, random)).toBe(1);
    const wide = checkSampling({ temperature: 1, topK: 2 });
    const seen = new Set(Array.from({ length: 200 }, () => sampleToken(logits, wide, random)));
    expect([...seen].sort()).toEqual([1, 3]);
    expect(() => checkSampling({ temperature: -1 })).toThrow('Expected `temperature` to be a number ≥ 0');
  });
});

describe('random models', () => {
  it('builds a model with random weights on the backend and runs it', async () => {
    const random = LlamaModel.random({ ...model.config, numLayers: 1 }, { device: 'cpu', dtype: 'bf16', seed: 3 });
    const session = random.createSession({ maxTokens: 16 });
    session.syntheticFill(5);
    expect(session.position).toBe(5);
    const next = await session.greedyStep(3);
    expect(next).toBeGreaterThan(-1);
    expect(next).toBeLessThan(97);
    session.dispose();
    random.dispose();
  });
});
