// A group of rank processes, as `duo-serve --gpus` starts them, with one rank on the CPU (several need GPUs and NCCL):
// the tokens of the same group in this thread, cancellation, a rank that cannot load, and the refusal of several CPU
// rank processes.
import { join } from 'node:path';
import { DuoArgumentError, DuoError } from '@duoattn/core';
import { resolveBackend } from '@duoattn/kernels';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BundledEntry, bundleEntry } from '../__fixtures__/bundle-entry.js';
import type { BatchRequest } from '../batch/request.js';
import { GroupEngine, inProcessGroup } from '../group/group-engine.js';
import { LlamaModel } from '../llama-model.js';
import { startProcessGroup } from './process-group.js';

const DEMO = join(import.meta.dirname, '..', '..', '..', '..', 'models', 'duo-demo');
let bundled: BundledEntry | undefined;

beforeAll(async () => {
  bundled = await bundleEntry('hosts/group-rank-main.ts');
});
afterAll(() => {
  bundled?.remove();
});

const requests: BatchRequest[] = [
  { prompt: 'Once upon a time', maxTokens: 24, stopStrings: ['when'], sampling: { temperature: 0.8, seed: 3 } },
  { prompt: Array.from({ length: 200 }, (_, i) => 32 + ((i * 5) % 90)), maxTokens: 6, stopTokens: [], logprobs: 2 },
];

describe('a group of rank processes', () => {
  it('one CPU rank process gives what the same group gives in this thread', async () => {
    const model = await LlamaModel.load(DEMO, { device: 'cpu' });
    const local = new GroupEngine(
      inProcessGroup([model], [undefined], { split: 'keys', kvBudgetBytes: 2 ** 30 }),
      model,
    );
    const expected = await Promise.all(requests.map((request) => local.submit(request).result));
    await local.close();
    const lines: string[] = [];
    const group = await startProcessGroup({
      model: { path: DEMO, device: 'cpu' },
      ranks: 1,
      split: 'keys',
      kvBudgetBytes: 2 ** 30,
      script: bundled?.url,
      env: bundled?.env,
      progress: (line) => lines.push(line),
    });
    expect(lines).toEqual([`rank 0 of 1 ready on ${model.backend.deviceName} (1.0 GiB of KV cache)`]);
    const engine = new GroupEngine(group, model);
    try {
      expect(group.deviceName).toBe(model.backend.deviceName);
      const tokens: { id: number; logprob?: number }[] = [];
      const streams = requests.map((request) => engine.submit(request));
      for await (const token of streams[1] as AsyncIterable<{ id: number; logprob?: number }>) tokens.push(token);
      const actual = await Promise.all(streams.map((stream) => stream.result));
      expect(actual.map((result) => [result.tokens, result.text, result.finishReason])).toEqual(
        expected.map((result) => [result.tokens, result.text, result.finishReason]),
      );
      expect(actual[0]).toMatchObject({ finishReason: 'stop', text: expect.stringMatching(/when$/) });
      expect(tokens.every((token) => typeof token.logprob === 'number' && token.logprob <= 0)).toBe(true);

      const running = engine.submit({ prompt: 'Once', maxTokens: 5000, stopTokens: [] });
      let seen = 0;
      for await (const _ of running) if (++seen === 2) running.cancel();
      expect(await running.result).toMatchObject({ finishReason: 'abort' });
      expect((await engine.submit({ prompt: 'Once', maxTokens: 3, stopTokens: [] }).result).tokens).toHaveLength(3);
    } finally {
      await engine.close();
      model.dispose();
    }
  }, 120_000);

  it('rejects with the rank loader error when the model cannot be loaded', async () => {
    const missing = join(DEMO, 'no-such-model');
    const error = await startProcessGroup({
      model: { path: missing, device: 'cpu' },
      ranks: 1,
      split: 'keys',
      script: bundled?.url,
      env: bundled?.env,
    }).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(DuoError);
    expect((error as Error).message).toMatch(/^rank 0 of 1: .*no-such-model/);
  }, 60_000);

  it('refuses several rank processes on the CPU, naming why', () => {
    expect(() => startProcessGroup({ model: { path: DEMO, device: 'cpu' }, ranks: 2, split: 'keys' })).toThrow(
      DuoArgumentError,
    );
    expect(() => startProcessGroup({ model: { path: DEMO, device: 'cpu' }, ranks: 2, split: 'keys' })).toThrow(/NCCL/);
    expect(resolveBackend('cpu').device).toBe('cpu');
  });
});
