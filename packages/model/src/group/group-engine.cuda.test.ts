// The group engine on CUDA: 2 in-process context-parallel ranks on one GPU serve what the batch engine serves on it —
// the same greedy tokens, logits within the CUDA conformance suites' 1e-4 (f32 weights and caches; 1e-2 with int4 KV,
// whose tokens may then differ) — and a request too big for a rank's budget is refused by both. Skips visibly
// without a GPU.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoCapacityError, type HeadPlan } from '@duoattn/core';
import { createInProcessGroup, cudaUnavailableReason, resolveBackend } from '@duoattn/kernels';
import { relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PARALLEL_CUDA_CONFIG, randomWeights, writeHfModel } from '../__fixtures__/checkpoints.js';
import type { BatchRequest, BatchResult, BatchToken } from '../batch/request.js';
import { LlamaModel } from '../llama-model.js';
import { GroupEngine, inProcessGroup } from './group-engine.js';

const reason = cudaUnavailableReason();
const config = PARALLEL_CUDA_CONFIG;
const plan: HeadPlan = { retrievalHeads: [[0, 3], [2]], kvHeads: 4, sink: 4, recent: 8, sparsity: 0.625 };
const prompt = (length: number, seed: number) => Array.from({ length }, (_, i) => (i * 11 + seed * 5) % 97);

async function collect(stream: AsyncIterable<BatchToken> & { result: Promise<BatchResult> }) {
  const rows: Float32Array[] = [];
  for await (const token of stream) rows.push(token.logits as Float32Array);
  return { rows, result: await stream.result };
}

(reason ? describe.skip : describe)(`the group engine on cuda${reason ? ` (skipped: ${reason})` : ''}`, () => {
  let directory: string;
  let model: LlamaModel;
  beforeAll(async () => {
    directory = mkdtempSync(join(tmpdir(), 'duoattn-group-cuda-'));
    writeHfModel(directory, config, randomWeights(config, 5151));
    model = await LlamaModel.load(directory, { device: resolveBackend('cuda'), weightDtype: 'f32' });
  });
  afterAll(() => {
    model?.dispose();
    rmSync(directory, { recursive: true, force: true });
  });

  it('2 context-parallel ranks on one GPU: the batch engine tokens and logits', async () => {
    const requests: BatchRequest[] = [
      { prompt: prompt(300, 1), maxTokens: 12, logits: true, stopTokens: [] },
      { prompt: prompt(200, 2), maxTokens: 12, logits: true, stopTokens: [], policy: { attention: 'duo', plan } },
      {
        prompt: prompt(150, 3),
        maxTokens: 8,
        logits: true,
        stopTokens: [],
        policy: { attention: 'duo', plan, kvQuant: 'int4' },
      },
    ];
    const batch = model.createBatchEngine({ cacheDtype: 'f32', kvBudgetBytes: 2 ** 28 });
    const communicators = createInProcessGroup([model.backend, model.backend]);
    const engine = new GroupEngine(
      inProcessGroup([model], communicators, { split: 'keys', kvBudgetBytes: 2 ** 28 }),
      model,
    );
    try {
      const alone = await Promise.all(requests.map((request) => collect(batch.submit(request))));
      const together = await Promise.all(requests.map((request) => collect(engine.submit(request))));
      for (const [index, { rows, result }] of together.entries()) {
        const expected = alone[index] as (typeof alone)[number];
        const quantized = requests[index]?.policy?.kvQuant === 'int4';
        if (!quantized) expect(result.tokens, `request ${index}`).toEqual(expected.result.tokens);
        // Compared while the tokens agree: a quantized cache's tokens may part (then so do the rows).
        for (const [step, row] of rows.entries()) {
          if (result.tokens.slice(0, step).join() !== expected.result.tokens.slice(0, step).join()) break;
          const error = relativeError(row, expected.rows[step] as Float32Array);
          expect(error, `request ${index} step ${step}`).toBeLessThan(quantized ? 1e-2 : 1e-4);
        }
      }
      const refused = engine.submit({ prompt: prompt(400, 4), maxTokens: 100 });
      const budgetless = new GroupEngine(
        inProcessGroup([model], createInProcessGroup([model.backend, model.backend]), {
          split: 'keys',
          kvBudgetBytes: 1024,
        }),
        model,
      );
      const error = await budgetless.submit({ prompt: prompt(400, 4), maxTokens: 100 }).result.catch((e: unknown) => e);
      expect(DuoCapacityError.isInstance(error), String(error)).toBe(true);
      expect((await refused.result).tokens.length).toBeGreaterThan(0);
      await budgetless.close();
    } finally {
      await batch.close();
      await engine.close();
    }
  }, 120_000);
});
