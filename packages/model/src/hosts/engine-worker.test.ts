// The batch engine in a worker thread: the same tokens as in-process, cancellation through an AbortSignal, refused
// requests keep their error class, a model that cannot load rejects the start, and close() ends the thread.
import { join } from 'node:path';
import { DuoArgumentError, DuoCapacityError, DuoError } from '@duoattn/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BundledEntry, bundleEntry } from '../__fixtures__/bundle-entry.js';
import type { BatchRequest } from '../batch/batch-engine.js';
import { LlamaModel } from '../llama-model.js';
import { type EngineWorker, startEngineWorker } from './engine-worker.js';

const DEMO = join(import.meta.dirname, '..', '..', '..', '..', 'models', 'duo-demo');
let bundled: BundledEntry | undefined;
let workerUrl: URL;
let env: NodeJS.ProcessEnv;

// Workers run plain JavaScript: bundle the worker's entry with the workspace packages' sources.
beforeAll(async () => {
  bundled = await bundleEntry('hosts/engine-worker-main.ts');
  workerUrl = bundled.url;
  env = bundled.env;
});

afterAll(() => {
  bundled?.remove();
});

const prompt = (length: number, seed: number) => Array.from({ length }, (_, i) => 32 + ((i * 5 + seed) % 90));

async function ids(stream: AsyncIterable<{ id: number }>): Promise<number[]> {
  const out: number[] = [];
  for await (const token of stream) out.push(token.id);
  return out;
}

describe('the batch engine in a worker thread', () => {
  let worker: EngineWorker;
  beforeAll(async () => {
    worker = await startEngineWorker({ model: { path: DEMO, device: 'cpu' }, workerUrl, env });
  }, 60_000);
  afterAll(async () => {
    await worker?.close();
  });

  it('reports the model and gives the tokens the engine gives in-process', async () => {
    expect(worker.info.config.numLayers).toBe(6);
    expect(worker.info.device).toBe('cpu');
    expect(worker.info.hasTokenizer).toBe(true);
    const requests: BatchRequest[] = [
      { prompt: prompt(40, 1), maxTokens: 6, stopTokens: [] },
      { prompt: 'Once upon a time', maxTokens: 5, stopTokens: [], sampling: { temperature: 0.9, seed: 4 } },
      { prompt: prompt(300, 2), maxTokens: 4, stopTokens: [], policy: { attention: 'streaming', sink: 4, recent: 32 } },
    ];
    const remote = await Promise.all(requests.map((request) => ids(worker.submit(request))));
    const model = await LlamaModel.load(DEMO, { device: 'cpu' });
    const engine = model.createBatchEngine();
    const local = await Promise.all(requests.map((request) => ids(engine.submit(request))));
    await engine.close();
    model.dispose();
    expect(remote).toEqual(local);
    worker.clearPrefixCache();
    const stats = await worker.stats();
    expect(stats.pool.usedPages).toEqual({ full: 0, streaming: 0 });
    expect(stats.running + stats.waiting).toBe(0);
  }, 60_000);

  it('cancels through an AbortSignal and frees the pages', async () => {
    const controller = new AbortController();
    const stream = worker.submit({ prompt: prompt(20, 3), maxTokens: 2000, stopTokens: [], signal: controller.signal });
    let count = 0;
    for await (const _token of stream) if (++count === 2) controller.abort();
    const result = await stream.result;
    expect(result.finishReason).toBe('abort');
    expect(result.tokens.length).toBeLessThan(2000);
    expect((await worker.stats()).pool.usedPages).toEqual({ full: 0, streaming: 0 });
  }, 60_000);

  it('refused requests keep their error class, argument and code', async () => {
    const bad = worker.submit({ prompt: [1, 100_000] });
    await expect(bad.result).rejects.toBeInstanceOf(DuoArgumentError);
    await expect(bad.result).rejects.toMatchObject({ argument: 'prompt', code: 'DUO_ARG' });
    await expect(
      (async () => {
        for await (const _token of worker.submit({ prompt: [] })) {
          // never reached
        }
      })(),
    ).rejects.toBeInstanceOf(DuoArgumentError);
  }, 60_000);
});

describe('starting the worker', () => {
  it('rejects with the loader error when the model cannot be loaded', async () => {
    const missing = join(DEMO, 'no-such-model');
    const error = await startEngineWorker({ model: { path: missing, device: 'cpu' }, workerUrl, env }).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(DuoError);
    expect((error as DuoError).code).toMatch(/^DUO_/);
    expect((error as Error).message).toContain('no-such-model');
  }, 60_000);

  it('refuses a request bigger than the whole pool, not retryable', async () => {
    const worker = await startEngineWorker({
      model: { path: DEMO, device: 'cpu' },
      engine: { kvBudgetBytes: 64 * 4096 },
      workerUrl,
      env,
    });
    const stream = worker.submit({ prompt: prompt(4000, 1), maxTokens: 4 });
    await expect(stream.result).rejects.toBeInstanceOf(DuoCapacityError);
    await expect(stream.result).rejects.toMatchObject({ retryable: false });
    await worker.close();
  }, 60_000);
});

describe('a parallel group in the worker thread', () => {
  it('two in-process ranks of each split give the batch engine greedy tokens', async () => {
    const requests: BatchRequest[] = [
      { prompt: prompt(300, 5), maxTokens: 6, stopTokens: [] },
      {
        prompt: 'Once upon a time',
        maxTokens: 8,
        stopTokens: [],
        policy: { attention: 'streaming', sink: 4, recent: 64 },
      },
    ];
    const model = await LlamaModel.load(DEMO, { device: 'cpu' });
    const engine = model.createBatchEngine();
    const local = await Promise.all(requests.map((request) => ids(engine.submit(request))));
    await engine.close();
    model.dispose();
    for (const split of ['keys', 'weights'] as const) {
      const worker = await startEngineWorker({
        model: { path: DEMO, device: 'cpu' },
        group: { ranks: 2, split },
        workerUrl,
        env,
      });
      try {
        expect(worker.info.config.numKvHeads).toBe(2);
        const remote = await Promise.all(requests.map((request) => ids(worker.submit(request))));
        expect(remote, split).toEqual(local);
      } finally {
        await worker.close();
      }
    }
  }, 120_000);
});
