// The batch engine on the CPU with the embedded demo model: batched equals alone (the suite), and requests, limits
// and the stream.
import { type AttentionPolicy, DuoArgumentError, DuoCapacityError, DuoDisposedError } from '@duoattn/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchEngineSuite, DEMO } from '../__fixtures__/batch-engine-suite.js';
import { LlamaModel } from '../llama-model.js';
import type { BatchEngine, BatchResult, BatchToken } from './batch-engine.js';

batchEngineSuite('cpu');

let model: LlamaModel;
beforeAll(async () => {
  model = await LlamaModel.load(DEMO, { device: 'cpu' });
});
afterAll(() => model.dispose());

function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => 32 + ((i * 7 + seed * 13 + ((i * i) % 11)) % 90));
}

async function drain(stream: AsyncIterable<BatchToken> & { result: Promise<BatchResult> }) {
  const tokens: BatchToken[] = [];
  for await (const token of stream) tokens.push(token);
  return { tokens, result: await stream.result };
}

function expectAllFree(engine: BatchEngine): void {
  // Cached prefixes hold pages until evicted: every page comes back once they are.
  engine.clearPrefixCache();
  const { pool, running, waiting } = engine.stats();
  expect({ running, waiting, used: pool.usedPages }).toEqual({
    running: 0,
    waiting: 0,
    used: { full: 0, streaming: 0 },
  });
}

describe('requests, limits and the stream', () => {
  it('refuses bad requests before any work, naming the argument', async () => {
    const engine = model.createBatchEngine();
    expect(() => engine.submit({ prompt: [] })).toThrow(DuoArgumentError);
    expect(() => engine.submit({ prompt: [1, 999] })).toThrow(/token ids in \[0, 259\)/);
    expect(() => engine.submit({ prompt: [1], maxTokens: 0 })).toThrow(/maxTokens/);
    expect(() => engine.submit({ prompt: prompt(16_000, 1), maxTokens: 1000 })).toThrow(/16384-token context/);
    expect(() => engine.submit({ prompt: [1], sampling: { topP: 2 } })).toThrow(/topP/);
    expect(() => engine.submit({ prompt: [1], policy: 'duo' as unknown as AttentionPolicy })).toThrow(
      /AttentionPolicy/,
    );
    expect(engine.stats().waiting).toBe(0);
    await engine.close();
    expect(() => engine.submit({ prompt: [1] })).toThrow(DuoDisposedError);
  });

  it('refuses what can never fit the pool, and a full queue (retryable)', async () => {
    const engine = model.createBatchEngine({ kvBudgetBytes: 64 * 4096, maxWaiting: 2 });
    let error: unknown;
    try {
      engine.submit({ prompt: prompt(5000, 1), maxTokens: 10 });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(DuoCapacityError);
    expect((error as DuoCapacityError).retryable).toBe(false);
    expect((error as Error).message).toMatch(/whole pool has 64/);
    const a = engine.submit({ prompt: [1, 2], maxTokens: 2 });
    const b = engine.submit({ prompt: [1, 3], maxTokens: 2 });
    expect(() => engine.submit({ prompt: [1, 4], maxTokens: 2 })).toThrow(/queue is full/);
    await Promise.all([a.result, b.result]);
    expectAllFree(engine);
    await engine.close();
  });

  it('stops at a stop token (included) or a stop string, and reports usage', async () => {
    const engine = model.createBatchEngine();
    const free = await drain(engine.submit({ prompt: prompt(20, 3), maxTokens: 8, stopTokens: [] }));
    const stopAt = free.tokens[3]?.id as number;
    const stopped = await drain(engine.submit({ prompt: prompt(20, 3), maxTokens: 8, stopTokens: [stopAt] }));
    const firstStop = free.tokens.findIndex((t) => t.id === stopAt);
    expect(stopped.tokens.map((t) => t.id)).toEqual(free.tokens.slice(0, firstStop + 1).map((t) => t.id));
    expect(stopped.result.finishReason).toBe('stop');
    expect(stopped.result.usage).toEqual({
      promptTokens: 20,
      completionTokens: firstStop + 1,
      totalTokens: 20 + firstStop + 1,
      recomputedTokens: 0,
      cachedTokens: 0,
    });
    const text = free.result.text;
    const needle = text.slice(2, 4);
    if (needle.length === 2) {
      const byString = await drain(
        engine.submit({ prompt: prompt(20, 3), maxTokens: 8, stopTokens: [], stopStrings: [needle] }),
      );
      expect(byString.result.finishReason).toBe('stop');
      expect(byString.result.text.includes(needle)).toBe(true);
    }
    await engine.close();
  });

  it('returns log-probabilities: the chosen token and the most likely ones, as log-softmax of the logits', async () => {
    const engine = model.createBatchEngine();
    const run = await drain(
      engine.submit({ prompt: prompt(30, 5), maxTokens: 4, logprobs: 5, logits: true, stopTokens: [] }),
    );
    for (const token of run.tokens) {
      const logits = token.logits as Float32Array;
      const maximum = Math.max(...logits);
      const normalizer = maximum + Math.log(logits.reduce((sum, value) => sum + Math.exp(value - maximum), 0));
      expect(token.logprob).toBeCloseTo((logits[token.id] as number) - normalizer, 10);
      const top = token.topLogprobs ?? [];
      expect(top).toHaveLength(5);
      // Greedy: the chosen token is the most likely one.
      expect(top[0]?.id).toBe(token.id);
      for (let i = 1; i < top.length; i++)
        expect(top[i - 1]?.logprob).toBeGreaterThanOrEqual(top[i]?.logprob as number);
      const sorted = [...logits].sort((a, b) => b - a);
      expect(top.map((entry) => entry.logprob + normalizer)).toEqual(
        sorted.slice(0, 5).map((value) => expect.closeTo(value, 9)),
      );
    }
    expect(() => engine.submit({ prompt: [1], logprobs: 21 })).toThrow(/logprobs/);
    await engine.close();
  });

  it('runs ahead: the tokens, logits and usage of reading every step; a stop drops its extra row', async () => {
    const requests = (stopAt?: number) => [
      { prompt: prompt(40, 1), maxTokens: 12, stopTokens: [], logits: true },
      { prompt: prompt(25, 2), maxTokens: 12, stopTokens: stopAt === undefined ? [] : [stopAt] },
      { prompt: prompt(60, 3), maxTokens: 9, stopTokens: [], sampling: { temperature: 0.8, topK: 20, seed: 7 } },
      { prompt: prompt(10, 4), maxTokens: 12, stopTokens: [], sampling: { temperature: 1, topP: 0.9, seed: 3 } },
    ];
    const run = async (runAhead: boolean, stopAt?: number) => {
      const engine = model.createBatchEngine({ runAhead, stepTokens: 64 });
      const started = performance.now();
      const runs = await Promise.all(requests(stopAt).map((request) => drain(engine.submit(request))));
      const elapsed = performance.now() - started;
      const stats = engine.stats();
      // The CPU backend computes as it enqueues: the step loop's host time is most of the run, never more.
      expect(stats.hostMs).toBeGreaterThan(0.5 * elapsed);
      expect(stats.hostMs).toBeLessThanOrEqual(elapsed);
      expectAllFree(engine);
      await engine.close();
      return { runs, stats };
    };
    const free = await run(false);
    // Stop the second sequence on its fifth token: the others run on, ahead, past it.
    const stopAt = free.runs[1]?.tokens[4]?.id as number;
    const firstStop = free.runs[1]?.tokens.findIndex((t) => t.id === stopAt) as number;
    const reading = await run(false, stopAt);
    const ahead = await run(true, stopAt);
    expect(reading.stats.stepsRunAhead).toBe(0);
    expect(ahead.stats.stepsRunAhead).toBeGreaterThan(4);
    expect(ahead.runs[1]?.tokens.map((t) => t.id)).toEqual(
      free.runs[1]?.tokens.slice(0, firstStop + 1).map((t) => t.id),
    );
    ahead.runs.forEach((got, i) => {
      const want = reading.runs[i];
      expect(got.tokens.map((t) => t.id)).toEqual(want?.tokens.map((t) => t.id));
      expect(got.result.finishReason).toBe(want?.result.finishReason);
      expect(got.result.usage).toEqual(want?.result.usage);
      got.tokens.forEach((token, t) => {
        if (token.logits) expect(Array.from(token.logits)).toEqual(Array.from(want?.tokens[t]?.logits ?? []));
      });
    });
    expect(ahead.runs[0]?.tokens[0]?.logits).toBeDefined();
  });

  it('runs ahead with requests waiting for a slot, and a cancelled sequence gets no token after the cancel', async () => {
    const run = async (runAhead: boolean) => {
      // Two slots for four requests: two wait while two decode, so running ahead must not wait for them.
      const engine = model.createBatchEngine({ runAhead, maxSequences: 2, stepTokens: 64 });
      const streams = [1, 2, 3, 4].map((seed) =>
        engine.submit({ prompt: prompt(20, seed), maxTokens: 10, stopTokens: [] }),
      );
      const runs = await Promise.all(streams.map((stream) => drain(stream)));
      const ahead = engine.stats().stepsRunAhead;
      // Cancelled on its fifth token: no sixth, whether or not a step ran ahead past it.
      const controller = new AbortController();
      const cancelled = engine.submit({
        prompt: prompt(30, 9),
        maxTokens: 20,
        stopTokens: [],
        signal: controller.signal,
      });
      const seen: number[] = [];
      for await (const token of cancelled) {
        seen.push(token.id);
        if (seen.length === 5) controller.abort();
      }
      const result = await cancelled.result;
      expectAllFree(engine);
      await engine.close();
      return { runs, ahead, seen, result };
    };
    const reading = await run(false);
    const ahead = await run(true);
    expect(reading.ahead).toBe(0);
    expect(ahead.ahead).toBeGreaterThan(4);
    expect(ahead.runs.map((r) => r.tokens.map((t) => t.id))).toEqual(
      reading.runs.map((r) => r.tokens.map((t) => t.id)),
    );
    expect(ahead.seen).toEqual(reading.seen);
    expect(ahead.seen).toHaveLength(5);
    expect(ahead.result.finishReason).toBe('abort');
    expect(reading.result.finishReason).toBe('abort');
  });

  it('a failed read fails the requests through the engine, running ahead or not', async () => {
    const backend = model.backend;
    const read = backend.read.bind(backend);
    for (const runAhead of [true, false]) {
      let reads = 0;
      backend.read = ((...args: Parameters<typeof read>) =>
        ++reads === 6 ? Promise.reject(new Error('injected read failure')) : read(...args)) as typeof backend.read;
      try {
        const engine = model.createBatchEngine({ runAhead, stepTokens: 64 });
        const stream = engine.submit({ prompt: prompt(12, 5), maxTokens: 20, stopTokens: [] });
        await expect(drain(stream)).rejects.toThrow('injected read failure');
        expect(engine.stats().failure).toContain('injected read failure');
        await engine.close();
      } finally {
        backend.read = read;
      }
    }
  });

  it('close() aborts what is running and waiting', async () => {
    const engine = model.createBatchEngine({ maxSequences: 1, stepTokens: 64 });
    const running = engine.submit({ prompt: prompt(300, 2), maxTokens: 50 });
    const waiting = engine.submit({ prompt: prompt(30, 2), maxTokens: 5 });
    await engine.close();
    expect((await running.result).finishReason).toBe('abort');
    expect((await waiting.result).finishReason).toBe('abort');
    expectAllFree(engine);
  });
});
