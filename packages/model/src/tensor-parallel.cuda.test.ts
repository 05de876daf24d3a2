// Tensor parallelism through the model on CUDA: 2 in-process ranks on one GPU, each a model holding its slice of every
// layer (f32 and bf16 weights), against the whole model on the same GPU — a 30-token prefill in chunks of 13, then 18
// decode steps, full and duo, with and without int4 KV. A rank's projections are narrower matrices than the whole
// model's (other kernels, other sums), so the logits may differ by what the CUDA conformance suites allow (1e-4 with f32
// weights and caches, 1e-2 with bf16 weights or quantized caches); every rank gets the same bits. And a rank over NCCL
// (a group of one: NCCL takes one rank a GPU) captures its greedy steps, all-reduce included, in a CUDA graph that
// decodes the whole model's tokens. Skips visibly without a GPU (the NCCL case also without NCCL).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HeadPlan, KvQuantScheme } from '@duoattn/core';
import {
  createInProcessGroup,
  cudaUnavailableReason,
  type NativeBackend,
  ncclUniqueId,
  openNcclCommunicator,
  resolveBackend,
} from '@duoattn/kernels';
import { randomArray, relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PARALLEL_CUDA_CONFIG, randomWeights, writeHfModel } from './__fixtures__/checkpoints.js';
import { modelLogitsTogether } from './__fixtures__/parallel-runs.js';
import { LlamaModel } from './llama-model.js';
import type { SessionOptions } from './session.js';

const TOKENS = 48;
const PREFILL = 30;
const reason = cudaUnavailableReason();
const config = PARALLEL_CUDA_CONFIG;
const tokens = Array.from(randomArray(TOKENS, 47), (v) => Math.floor((v + 1) * 48) % 97);
const run = (models: LlamaModel[], options: SessionOptions) => modelLogitsTogether(models, options, tokens, PREFILL);
const plan: HeadPlan = { retrievalHeads: [[0, 3], [2]], kvHeads: 4, sink: 4, recent: 8, sparsity: 0.625 };

(reason ? describe.skip : describe)(`tensor parallelism on cuda${reason ? ` (skipped: ${reason})` : ''}`, () => {
  let directory: string;
  beforeAll(() => {
    directory = mkdtempSync(join(tmpdir(), 'duoattn-tp-cuda-'));
    writeHfModel(directory, config, randomWeights(config, 4949));
  });
  afterAll(() => rmSync(directory, { recursive: true, force: true }));

  const cases: ['f32' | 'bf16', 'full' | 'duo', KvQuantScheme][] = [];
  for (const weightDtype of ['f32', 'bf16'] as const)
    for (const attention of ['full', 'duo'] as const)
      for (const kvQuant of ['none', 'int4'] as const) cases.push([weightDtype, attention, kvQuant]);

  it.each(cases)(
    '%s weights, %s attention, %s KV: the whole model’s logits on 2 ranks',
    async (weightDtype, attention, kvQuant) => {
      const backend = resolveBackend('cuda');
      const whole = await LlamaModel.load(directory, { device: backend, weightDtype });
      const group = createInProcessGroup([backend, backend]);
      const ranks = await Promise.all(
        group.map((communicator) =>
          LlamaModel.load(directory, { device: backend, weightDtype, tensorParallel: { communicator } }),
        ),
      );
      try {
        const policy = attention === 'full' ? { attention, kvQuant } : { attention, plan, kvQuant };
        const options: SessionOptions = {
          policy: { ...policy, prefillChunk: 13 },
          maxTokens: TOKENS,
          cacheDtype: 'f32',
        };
        const [expected] = await run([whole], options);
        const actual = await run(ranks, options);
        const tolerance = weightDtype === 'f32' && kvQuant === 'none' ? 1e-4 : 1e-2;
        for (const [rank, logits] of actual.entries()) {
          expect(relativeError(logits, expected as Float32Array), `rank ${rank}`).toBeLessThan(tolerance);
          expect(Array.from(logits)).toEqual(Array.from(actual[0] as Float32Array));
        }
      } finally {
        whole.dispose();
        for (const model of ranks) model.dispose();
      }
    },
  );

  it('a rank over NCCL replays its greedy step as a CUDA graph, all-reduce included, with the whole model’s tokens', async (context) => {
    const backend = resolveBackend('cuda') as NativeBackend;
    let uniqueId: string;
    try {
      uniqueId = ncclUniqueId(backend);
    } catch (error) {
      context.skip(`NCCL unavailable: ${(error as Error).message}`);
      return;
    }
    const communicator = openNcclCommunicator(backend, { uniqueId, rank: 0, size: 1 });
    const whole = await LlamaModel.load(directory, { device: backend, weightDtype: 'bf16' });
    const rank = await LlamaModel.load(directory, {
      device: backend,
      weightDtype: 'bf16',
      tensorParallel: { communicator },
    });
    const greedy = async (model: LlamaModel, graphs: boolean) => {
      const session = model.createSession({ policy: { attention: 'duo', plan }, maxTokens: TOKENS, graphs });
      try {
        await session.forward(tokens.slice(0, PREFILL), { logits: 'none' });
        const out: number[] = [];
        for await (const token of session.greedyTokens(tokens[PREFILL] as number, 12)) out.push(token);
        return out;
      } finally {
        session.dispose();
      }
    };
    try {
      expect(communicator.streamOrdered).toBe(true);
      const expected = await greedy(whole, false);
      expect(await greedy(rank, true)).toEqual(expected);
      expect(await greedy(rank, false)).toEqual(expected);
    } finally {
      whole.dispose();
      rank.dispose();
      communicator.close();
    }
  });
});
