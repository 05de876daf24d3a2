// Context parallelism through the model on CUDA: 2 and 4 in-process ranks, each a session holding its chunks of the
// retrieval heads' keys, against one CUDA session — a 30-token prefill in chunks of 13, then 18 decode steps, full and
// duo, every KV scheme. A rank's keys are tiled and split otherwise than one device's (whose prefill may take the tensor
// cores), so the logits may differ by what the CUDA attention's own tests allow (1e-4 over f32 caches, 1e-2 where
// quantized caches stage 16-bit tiles for the tensor cores); every rank gets the same bits. Skips visibly without a GPU.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HeadPlan, KvQuantScheme } from '@duoattn/core';
import { createInProcessGroup, cudaUnavailableReason, resolveBackend } from '@duoattn/kernels';
import { randomArray, relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { logitsTogether } from './__fixtures__/parallel-runs.js';
import { LlamaModel } from './llama-model.js';
import type { SessionOptions } from './session.js';

const TOKENS = 48;
const PREFILL = 30;
const reason = cudaUnavailableReason();
const config = tinyConfig('llama', { num_key_value_heads: 2, head_dim: 16, max_position_embeddings: 512 });
const tokens = Array.from(randomArray(TOKENS, 43), (v) => Math.floor((v + 1) * 48) % 97);
const plan: HeadPlan = { retrievalHeads: [[1], [0]], kvHeads: 2, sink: 4, recent: 8, sparsity: 0.5 };

(reason ? describe.skip : describe)(`context parallelism on cuda${reason ? ` (skipped: ${reason})` : ''}`, () => {
  let directory: string;
  let model: LlamaModel;
  beforeAll(async () => {
    directory = mkdtempSync(join(tmpdir(), 'duoattn-cp-cuda-'));
    writeHfModel(directory, config, randomWeights(config, 4343));
    model = await LlamaModel.load(directory, { device: resolveBackend('cuda'), weightDtype: 'f32' });
  });
  afterAll(() => {
    model?.dispose();
    rmSync(directory, { recursive: true, force: true });
  });

  const cases: [number, 'full' | 'duo', KvQuantScheme][] = [];
  for (const ranks of [2, 4])
    for (const attention of ['full', 'duo'] as const)
      for (const kvQuant of ['none', 'int8', 'int4', 'fp8'] as const) cases.push([ranks, attention, kvQuant]);

  it.each(cases)(
    '%i ranks, %s attention, %s KV: one CUDA session’s logits, chunked prefill then decode',
    async (ranks, attention, kvQuant) => {
      const policy = attention === 'full' ? { attention, kvQuant } : { attention, plan, kvQuant };
      const options: SessionOptions = { policy: { ...policy, prefillChunk: 13 }, maxTokens: TOKENS, cacheDtype: 'f32' };
      const alone = model.createSession(options);
      const backend = resolveBackend('cuda');
      const group = createInProcessGroup(Array.from({ length: ranks }, () => backend));
      const sessions = group.map((communicator) =>
        model.createSession({ ...options, contextParallel: { communicator, chunk: 8 } }),
      );
      try {
        const [expected] = await logitsTogether([alone], tokens, PREFILL);
        const actual = await logitsTogether(sessions, tokens, PREFILL);
        for (const [rank, logits] of actual.entries()) {
          expect(relativeError(logits, expected as Float32Array), `rank ${rank}`).toBeLessThan(
            kvQuant === 'none' ? 1e-4 : 1e-2,
          );
          expect(Array.from(logits)).toEqual(Array.from(actual[0] as Float32Array));
        }
      } finally {
        alone.dispose();
        for (const session of sessions) session.dispose();
      }
    },
  );
});
