// Test support: the batch engine with the embedded demo model on one backend — a batch mixing policies, KV schemes,
// prompt lengths and sampling settings gives every sequence the tokens it gets alone (on the CPU also the logits, within
// 1e-5: its kernels are batch-invariant; CUDA runs in its batch-invariant mode); joining and leaving mid-run, cancellation and preemption keep that; the
// pool's pages are all free after every run. Used by the CPU and CUDA tests.
import { join } from 'node:path';
import type { AttentionPolicy } from '@duoattn/core';
import { loadPattern, planHeads } from '@duoattn/dual-cache';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchEngine, BatchEngineOptions, BatchRequest, BatchResult, BatchToken } from '../batch/batch-engine.js';
import { LlamaModel } from '../llama-model.js';
import { demoModelDirectory } from './demo-suite.js';

export const DEMO = demoModelDirectory();
let model: LlamaModel;
let policies: Record<string, AttentionPolicy>;

async function setUp(device: 'cpu' | 'cuda'): Promise<void> {
  model = await LlamaModel.load(DEMO, { device });
  // CUDA's batch-invariant mode (the CPU always is): a sequence's rows get the same bits whatever shares its steps.
  if (device === 'cuda')
    (model.backend as { tune?(tuning: { batchInvariant: boolean }): void }).tune?.({ batchInvariant: true });
  const pattern = loadPattern(join(DEMO, 'pattern', 'pattern.json'));
  const duo = (sparsity: number): AttentionPolicy => ({
    attention: 'duo',
    plan: planHeads(pattern, { sparsity, sink: 8, recent: 48 }),
  });
  policies = {
    full: { attention: 'full' },
    streaming: { attention: 'streaming', sink: 4, recent: 40, kvQuant: 'int8' },
    duo50: { ...duo(0.5), kvQuant: 'int4' },
    duo75: duo(0.75),
    fullInt8: { attention: 'full', kvQuant: 'int8', prefillChunk: 200 },
    chunked: { ...duo(0.5), prefillMask: 'chunked', prefillChunk: 128 },
  };
}

/** Deterministic byte-level prompt of `length` tokens (the demo model's vocabulary is bytes + 3 specials). */
function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => 32 + ((i * 7 + seed * 13 + ((i * i) % 11)) % 90));
}

function requests(): BatchRequest[] {
  return [
    { prompt: prompt(1, 1), policy: policies.full, maxTokens: 12, logits: true },
    {
      prompt: prompt(300, 2),
      policy: policies.streaming,
      maxTokens: 10,
      logits: true,
      sampling: { temperature: 0.8, topK: 40, topP: 0.9, seed: 7 },
    },
    { prompt: prompt(3000, 3), policy: policies.duo50, maxTokens: 8, logits: true },
    {
      prompt: prompt(1200, 4),
      policy: policies.duo75,
      maxTokens: 9,
      logits: true,
      sampling: { temperature: 1.1, seed: 3 },
    },
    { prompt: prompt(700, 5), policy: policies.fullInt8, maxTokens: 11, logits: true },
    {
      prompt: prompt(450, 6),
      policy: policies.chunked,
      maxTokens: 7,
      logits: true,
      sampling: { temperature: 0.7, topP: 0.8, seed: 11 },
    },
    { prompt: prompt(2, 7), policy: policies.duo50, maxTokens: 6, logits: true, stopTokens: [] },
  ];
}

interface Run {
  tokens: BatchToken[];
  result: BatchResult;
}

async function drain(stream: AsyncIterable<BatchToken> & { result: Promise<BatchResult> }): Promise<Run> {
  const tokens: BatchToken[] = [];
  for await (const token of stream) tokens.push(token);
  return { tokens, result: await stream.result };
}

/** Each request alone, in an engine of its own (so nothing else shares its steps). */
async function alone(list: BatchRequest[], options: BatchEngineOptions = {}): Promise<Run[]> {
  const runs: Run[] = [];
  for (const request of list) {
    const engine = model.createBatchEngine(options);
    runs.push(await drain(engine.submit(request)));
    expectAllFree(engine);
    await engine.close();
  }
  return runs;
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
  expect(pool.freePages).toBe(pool.totalPages);
}

/** CPU: every token and logit (within 1e-5). CUDA: the tokens of greedy requests (sampled ones may part at a near tie). */
let exact = true;

function expectSameRun(batched: Run, single: Run, label: string, greedy = true): void {
  if (!exact && !greedy) {
    expect(batched.tokens.length, label).toBeGreaterThan(0);
    return;
  }
  expect(
    batched.tokens.map((t) => t.id),
    label,
  ).toEqual(single.tokens.map((t) => t.id));
  expect(batched.result.finishReason, label).toBe(single.result.finishReason);
  if (!exact) return;
  batched.tokens.forEach((token, i) => {
    const reference = single.tokens[i]?.logits as Float32Array;
    const logits = token.logits as Float32Array;
    let worst = 0;
    for (let j = 0; j < logits.length; j++) worst = Math.max(worst, Math.abs((logits[j] ?? 0) - (reference[j] ?? 0)));
    expect(worst, `${label}, token ${i}: largest logit difference`).toBeLessThan(1e-5);
  });
}

/** Whether request i of `requests()` is greedy. */
function isGreedy(i: number): boolean {
  return !requests()[i]?.sampling;
}

/** Registers the suite for `device`; skips visibly with `skipReason`. */
export function batchEngineSuite(device: 'cpu' | 'cuda', skipReason?: string): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`batched equals alone (${device}, demo model)${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    beforeAll(async () => {
      exact = device === 'cpu';
      await setUp(device);
    }, 60_000);
    afterAll(() => model?.dispose());

    let reference: Run[];
    beforeAll(async () => {
      reference = await alone(requests());
    }, 120_000);

    it('a batch of every policy, KV scheme, prompt length and sampling setting at once', async () => {
      const engine = model.createBatchEngine({ stepTokens: 700 });
      const runs = await Promise.all(requests().map((request) => drain(engine.submit(request))));
      for (const [i, run] of runs.entries()) expectSameRun(run, reference[i] as Run, `request ${i}`, isGreedy(i));
      expect(engine.stats().steps).toBeLessThan(reference.reduce((sum, run) => sum + run.tokens.length, 0) + 40);
      expectAllFree(engine);
      await engine.close();
    }, 120_000);

    it('sequences that join and leave mid-run', async () => {
      const engine = model.createBatchEngine({ stepTokens: 512 });
      const list = requests();
      const first = [0, 2, 4].map((i) => drain(engine.submit(list[i] as BatchRequest)));
      // The others join once the first sequence has produced tokens (and while the long prompt is still filling).
      const early = engine.submit({ prompt: prompt(5, 9), maxTokens: 3 });
      await early.result;
      const later = [1, 3, 5, 6].map((i) => drain(engine.submit(list[i] as BatchRequest)));
      const [r0, r2, r4] = await Promise.all(first);
      const [r1, r3, r5, r6] = await Promise.all(later);
      const runs = [r0, r1, r2, r3, r4, r5, r6] as Run[];
      for (const [i, run] of runs.entries()) expectSameRun(run, reference[i] as Run, `request ${i}`, isGreedy(i));
      expectAllFree(engine);
      await engine.close();
    }, 120_000);

    it('cancellation: an aborted sequence ends with abort, frees its pages, and the others are unchanged', async () => {
      const engine = model.createBatchEngine({ stepTokens: 512 });
      const list = requests();
      const controller = new AbortController();
      const victim = engine.submit({ ...(list[2] as BatchRequest), maxTokens: 100, signal: controller.signal });
      const waitingVictim = engine.submit({ prompt: prompt(50, 8), maxTokens: 4 });
      waitingVictim.cancel();
      const others = [0, 1, 3].map((i) => drain(engine.submit(list[i] as BatchRequest)));
      let seen = 0;
      for await (const _token of victim) if (++seen === 3) controller.abort();
      const cancelled = await victim.result;
      expect(cancelled.finishReason).toBe('abort');
      expect(cancelled.tokens.length).toBeGreaterThanOrEqual(3);
      expect(cancelled.tokens.length).toBeLessThan(100);
      expect((await waitingVictim.result).finishReason).toBe('abort');
      const [r0, r1, r3] = await Promise.all(others);
      expectSameRun(r0 as Run, reference[0] as Run, 'request 0');
      expectSameRun(r1 as Run, reference[1] as Run, 'request 1', false);
      expectSameRun(r3 as Run, reference[3] as Run, 'request 3', false);
      expectAllFree(engine);
      await engine.close();
    }, 120_000);

    // CUDA maps 2 MiB pages: one holds the demo model's whole context per plane, so its sequences never grow into a
    // second page and cannot be made to preempt (the CPU's 4 KiB pages can).
    (device === 'cuda' ? it.skip : it)(
      'preemption: with optimistic admission and a small pool the newest sequence is evicted and recomputed (CPU pages)',
      async () => {
        // Short prompts and long answers: every prompt fits the pool at once, their answers do not.
        const list: BatchRequest[] = requests().map((request, i) => ({
          ...request,
          prompt: prompt(60 + 40 * i, 20 + i),
          maxTokens: 40,
          stopTokens: [],
        }));
        const sizing = model.createBatchEngine({ cacheBlockTokens: 16 });
        const pageBytes = sizing.pool.pageBytes;
        const starts = list.reduce((sum, request) => sum + sizing.pagesFor(request).start, 0);
        const largest = Math.max(...list.map((request) => sizing.pagesFor(request).most));
        await sizing.close();
        const options: BatchEngineOptions = {
          admission: 'optimistic',
          kvBudgetBytes: (Math.max(starts, largest) + 2) * pageBytes,
          cacheBlockTokens: 16,
        };
        const expected = await alone(list, options);
        const engine = model.createBatchEngine(options);
        const runs = await Promise.all(list.map((request) => drain(engine.submit(request))));
        expect(engine.stats().preemptions).toBeGreaterThan(0);
        expect(runs.some((run) => run.result.preemptions > 0 && run.result.usage.recomputedTokens > 0)).toBe(true);
        for (const [i, run] of runs.entries())
          expectSameRun(run, expected[i] as Run, `request ${i}`, !list[i]?.sampling);
        expectAllFree(engine);
        await engine.close();
      },
      120_000,
    );

    it('the engine gives the greedy tokens of generate() for a full and a duo policy', async () => {
      for (const policy of [policies.full, policies.duo75] as AttentionPolicy[]) {
        const input = prompt(400, 12);
        const expected: number[] = [];
        for await (const token of model.generate(input, { policy, maxTokens: 10, stopTokens: [] }))
          expected.push(token.id);
        const engine = model.createBatchEngine();
        const run = await drain(engine.submit({ prompt: input, policy, maxTokens: 10, stopTokens: [] }));
        expect(run.tokens.map((t) => t.id)).toEqual(expected);
        expect(run.result.finishReason).toBe('length');
        await engine.close();
      }
    }, 60_000);
  });
}
