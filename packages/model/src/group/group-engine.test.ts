// The group engine over in-process CPU ranks: context- and tensor-parallel groups give the tokens one device gives (the
// batch engine's, greedy; a one-rank group's, seeded) with logits within 1e-5, for every policy and KV scheme; requests
// queue and run in order; cancellation ends a request at its next token, a request too big for a rank's budget is
// refused by every rank together, and the group goes on serving after both.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Communicator, DuoArgumentError, DuoCapacityError, type HeadPlan } from '@duoattn/core';
import { createInProcessGroup, resolveBackend } from '@duoattn/kernels';
import { relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from '../__fixtures__/checkpoints.js';
import type { BatchRequest, BatchResult, BatchToken } from '../batch/request.js';
import { LlamaModel } from '../llama-model.js';
import { Session } from '../session.js';
import { GroupEngine, inProcessGroup, type RankGroup } from './group-engine.js';
import type { ParallelSplit } from './group-rank.js';

const cpu = resolveBackend('cpu');
const config = tinyConfig('llama', { num_key_value_heads: 2, max_position_embeddings: 1024 });
const plan: HeadPlan = { retrievalHeads: [[1], [0]], kvHeads: 2, sink: 4, recent: 8, sparsity: 0.5 };
const GiB = 1024 ** 3;
let directory: string;
let whole: LlamaModel;

beforeAll(async () => {
  directory = mkdtempSync(join(tmpdir(), 'duoattn-group-'));
  writeHfModel(directory, config, randomWeights(config, 777));
  whole = await LlamaModel.load(directory, { device: cpu, weightDtype: 'f32' });
});
afterAll(() => {
  whole.dispose();
  rmSync(directory, { recursive: true, force: true });
});

const prompt = (length: number, seed: number) => Array.from({ length }, (_, i) => (i * 7 + seed * 13) % 97);

/** A group engine of `ranks` in-process ranks (weights: each rank its own slice, loaded here). */
async function groupEngine(ranks: number, split: ParallelSplit, kvBudgetBytes = GiB) {
  const communicators: (Communicator | undefined)[] =
    ranks === 1 ? [undefined] : createInProcessGroup(Array.from({ length: ranks }, () => cpu));
  const models =
    split === 'weights' && ranks > 1
      ? await Promise.all(
          communicators.map((communicator) =>
            LlamaModel.load(directory, {
              device: cpu,
              weightDtype: 'f32',
              ...(communicator ? { tensorParallel: { communicator } } : {}),
            }),
          ),
        )
      : [whole];
  const engine = new GroupEngine(inProcessGroup(models, communicators, { split, kvBudgetBytes }), whole);
  return {
    engine,
    async close() {
      await engine.close();
      for (const model of models) if (model !== whole) model.dispose();
    },
  };
}

async function collect(stream: AsyncIterable<BatchToken> & { result: Promise<BatchResult> }) {
  const tokens: BatchToken[] = [];
  for await (const token of stream) tokens.push(token);
  return { tokens, result: await stream.result };
}

const requests: BatchRequest[] = [
  { prompt: prompt(70, 1), maxTokens: 12, logits: true },
  { prompt: prompt(45, 2), maxTokens: 10, logits: true, policy: { attention: 'duo', plan, prefillChunk: 16 } },
  {
    prompt: prompt(33, 3),
    maxTokens: 10,
    logits: true,
    policy: { attention: 'duo', plan, kvQuant: 'int4', prefillChunk: 16 },
  },
  { prompt: prompt(50, 4), maxTokens: 9, logits: true, policy: { attention: 'streaming', sink: 4, recent: 8 } },
  {
    prompt: prompt(60, 5),
    maxTokens: 11,
    logits: true,
    policy: { attention: 'full', kvQuant: 'int8', prefillChunk: 8 },
  },
];

describe('the group engine over in-process CPU ranks', () => {
  const cases: [number, ParallelSplit][] = [
    [2, 'keys'],
    [3, 'keys'],
    [2, 'weights'],
  ];

  it.each(cases)(
    '%i ranks splitting %s: the batch engine tokens, logits within 1e-5 (1e-3 quantized KV)',
    async (ranks, split) => {
      const batch = whole.createBatchEngine({ kvBudgetBytes: GiB });
      const group = await groupEngine(ranks, split);
      try {
        const alone = await Promise.all(requests.map((request) => collect(batch.submit(request))));
        const together = await Promise.all(requests.map((request) => collect(group.engine.submit(request))));
        for (const [index, { tokens, result }] of together.entries()) {
          const expected = alone[index] as (typeof alone)[number];
          expect(result.tokens, `request ${index}`).toEqual(expected.result.tokens);
          expect(result.finishReason).toBe(expected.result.finishReason);
          expect(result.usage).toEqual(expected.result.usage);
          for (const [step, token] of tokens.entries()) {
            const row = expected.tokens[step]?.logits as Float32Array;
            // A quantized cache row may round one code step apart when its K/V differ in the last bit.
            const tolerance = (requests[index]?.policy?.kvQuant ?? 'none') === 'none' ? 1e-5 : 1e-3;
            const error = relativeError(token.logits as Float32Array, row);
            expect(error, `request ${index} step ${step}`).toBeLessThan(tolerance);
          }
        }
        // The last result comes from rank 0 before every rank has left the request.
        await vi.waitFor(() => expect(group.engine.stats()).toMatchObject({ running: 0, waiting: 0 }));
        expect(group.engine.stats().pool.usedPages).toEqual({ full: 0, streaming: 0 });
      } finally {
        await batch.close();
        await group.close();
      }
    },
  );

  it('seeded sampling: the tokens of one rank alone, on 2 ranks', async () => {
    const seeded: BatchRequest[] = [1, 2, 3].map((seed) => ({
      prompt: prompt(40, seed),
      maxTokens: 16,
      sampling: { temperature: 0.9, topK: 20, topP: 0.95, seed },
      policy: { attention: 'duo', plan, prefillChunk: 16 },
    }));
    const one = await groupEngine(1, 'keys');
    const two = await groupEngine(2, 'keys');
    try {
      const expected = await Promise.all(seeded.map((request) => one.engine.submit(request).result));
      const actual = await Promise.all(seeded.map((request) => two.engine.submit(request).result));
      expect(actual.map((result) => result.tokens)).toEqual(expected.map((result) => result.tokens));
      expect(new Set(expected.map((result) => result.tokens.join())).size).toBe(3);
    } finally {
      await one.close();
      await two.close();
    }
  });

  it('queues requests, cancels a running and a waiting one, and serves the next', async () => {
    const group = await groupEngine(2, 'keys');
    try {
      const first = group.engine.submit({ prompt: prompt(30, 1), maxTokens: 200, stopTokens: [] });
      const waiting = group.engine.submit({ prompt: prompt(30, 2), maxTokens: 5 });
      const controller = new AbortController();
      const cancelled = group.engine.submit({ prompt: prompt(30, 3), maxTokens: 5, signal: controller.signal });
      const last = group.engine.submit({ prompt: prompt(30, 4), maxTokens: 5, stopTokens: [] });
      expect(group.engine.stats()).toMatchObject({ waiting: 4 });
      controller.abort();
      expect(await cancelled.result).toMatchObject({ finishReason: 'abort', tokens: [] });
      let seen = 0;
      for await (const _ of first) {
        if (++seen < 3) continue;
        if (seen === 3) {
          const stats = group.engine.stats();
          expect(stats).toMatchObject({ running: 1, waiting: 2 });
          expect(stats.pool.usedPages.full).toBeGreaterThan(0);
          first.cancel();
        }
      }
      const ended = await first.result;
      expect(ended.finishReason).toBe('abort');
      expect(ended.tokens.length).toBeGreaterThanOrEqual(3);
      expect(ended.tokens.length).toBeLessThan(10);
      expect((await waiting.result).tokens.length).toBeGreaterThan(0);
      expect(await last.result).toMatchObject({ finishReason: 'length' });
      expect((await last.result).tokens).toHaveLength(5);
    } finally {
      await group.close();
    }
  });

  it('cancelling during a long prompt stops the ranks within a chunk', async () => {
    const group = await groupEngine(2, 'keys');
    const forward = vi.spyOn(Session.prototype, 'forward');
    try {
      const policy = { attention: 'full', prefillChunk: 16 } as const;
      const stream = group.engine.submit({ prompt: prompt(900, 7), maxTokens: 4, policy });
      // Cancelled once the prompt is under way (its first chunks are in the cache): 57 chunks a rank, had it run on.
      while (group.engine.stats().pool.usedPages.full === 0) await new Promise((resolve) => setTimeout(resolve, 0));
      stream.cancel();
      expect(await stream.result).toMatchObject({ finishReason: 'abort', tokens: [] });
      // Prompt tokens the ranks ran: a few chunks each, not the 900.
      const ran = forward.mock.calls.reduce((sum, [tokens]) => sum + tokens.length, 0);
      expect(ran).toBeGreaterThanOrEqual(2 * 16);
      expect(ran).toBeLessThanOrEqual(2 * 10 * 16);
      const next = await group.engine.submit({ prompt: prompt(20, 8), maxTokens: 3, stopTokens: [] }).result;
      expect(next.tokens).toHaveLength(3);
    } finally {
      forward.mockRestore();
      await group.close();
    }
  });

  it('refuses, on every rank together, a request whose share passes a rank budget; serves the next', async () => {
    // 40 % of what one device holds for 899 tokens: rank 0's share (chunks 0, 2, 4, 6: 512 tokens) passes it.
    const alone = whole.createSession({ maxTokens: 899 });
    const bytes = alone.cacheBytesAt(899);
    alone.dispose();
    const group = await groupEngine(2, 'keys', 0.4 * (bytes.full + bytes.streaming));
    try {
      const refused = group.engine.submit({ prompt: prompt(800, 1), maxTokens: 100 });
      const error = await refused.result.catch((failure: unknown) => failure);
      expect(DuoCapacityError.isInstance(error), String(error)).toBe(true);
      expect((error as Error).message).toMatch(/KV cache on rank 0 of 2 for 899 tokens \(full attention, none KV\)/);
      const next = await group.engine.submit({ prompt: prompt(20, 2), maxTokens: 4, stopTokens: [] }).result;
      expect(next.tokens).toHaveLength(4);
      expect(group.engine.failure).toBeUndefined();
    } finally {
      await group.close();
    }
  });

  it('refuses bad requests at submit, naming the field', async () => {
    const group = await groupEngine(2, 'keys');
    try {
      expect(() => group.engine.submit({ prompt: [1, 2, 500] })).toThrow(/token ids in \[0, 97\)/);
      expect(() => group.engine.submit({ prompt: prompt(10, 1), maxTokens: 2000 })).toThrow(DuoArgumentError);
      expect(() => group.engine.submit({ prompt: 'text' })).toThrow(/no tokenizer/);
    } finally {
      await group.close();
    }
  });

  it('a rank failing mid-request fails that request, the waiting ones and every later submit', async () => {
    const failing: RankGroup = {
      size: 2,
      split: 'keys',
      kvBudgetBytes: GiB,
      deviceName: 'test',
      async run(_id, _request, sink) {
        sink.push({ id: 5, text: '' });
        throw new Error('rank 1 of 2 exited (SIGKILL)');
      },
      cancel() {},
      close: async () => {},
    };
    const engine = new GroupEngine(failing, whole);
    const running = engine.submit({ prompt: prompt(10, 1), maxTokens: 4 });
    const waiting = engine.submit({ prompt: prompt(10, 2), maxTokens: 4 });
    await expect(running.result).rejects.toThrow(/rank 1 of 2 exited/);
    await expect(waiting.result).rejects.toThrow(/rank 1 of 2 exited/);
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 0, steps: 1, failure: 'rank 1 of 2 exited (SIGKILL)' });
    expect(() => engine.submit({ prompt: prompt(10, 3) })).toThrow(/failed and takes no more requests/);
    await engine.close();
  });
});
