// Tensor parallelism through the model on the CPU backend: 2 and 4 in-process ranks, each a model holding its slice of
// every layer (its KV heads' q/k/v rows and o columns, its share of the MLP), give the logits of the whole model
// within 1e-5 over a chunked prefill and 50 decode steps — full, streaming and DuoAttention, every KV scheme — with
// every rank the same bits; a Q8_0 GGUF loads sliced by blocks; and what a rank cannot do is refused by name.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type AttentionPolicy,
  DuoArgumentError,
  DuoCheckpointError,
  type HeadPlan,
  type KvQuantScheme,
} from '@duoattn/core';
import { createInProcessGroup, resolveBackend } from '@duoattn/kernels';
import { randomArray, relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { modelLogitsTogether } from './__fixtures__/parallel-runs.js';
import { LlamaModel } from './llama-model.js';
import { writeRandomGguf } from './loaders/gguf-writer.js';
import { configFromHf } from './loaders/hf.js';
import type { SessionOptions } from './session.js';
import { rankPlan, tensorParallelRank } from './tensor-parallel.js';

const PREFILL = 90;
const DECODE = 50;
const cpu = resolveBackend('cpu');
// Eight query heads in four GQA groups, an MLP of 128: two or four ranks hold whole groups and equal shares.
const shape = { num_attention_heads: 8, num_key_value_heads: 4, hidden_size: 64, intermediate_size: 128 };
const config = tinyConfig('llama', { ...shape, max_position_embeddings: 512 });
const qwen = tinyConfig('qwen2', { ...shape, max_position_embeddings: 512 });
const tokens = Array.from(randomArray(PREFILL + DECODE, 43), (v) => Math.floor((v + 1) * 48) % 97);
const run = (models: LlamaModel[], options: SessionOptions) => modelLogitsTogether(models, options, tokens, PREFILL);
// Retrieval heads spread unevenly over the ranks' KV heads (layer 1 keeps none on rank 0 of 2).
const plan: HeadPlan = { retrievalHeads: [[0, 3], [2]], kvHeads: 4, sink: 4, recent: 8, sparsity: 0.625 };
let directory: string;
let qwenDirectory: string;
let ggufPath: string;
let whole: LlamaModel;

beforeAll(async () => {
  directory = mkdtempSync(join(tmpdir(), 'duoattn-tp-'));
  qwenDirectory = join(directory, 'qwen');
  writeHfModel(directory, config, randomWeights(config, 4747));
  writeHfModel(qwenDirectory, qwen, randomWeights(qwen, 4848));
  ggufPath = join(directory, 'q8_0.gguf');
  writeRandomGguf(ggufPath, configFromHf(config), { type: 'Q8_0', seed: 5, std: 0.2 });
  whole = await LlamaModel.load(directory, { device: cpu, weightDtype: 'f32' });
});
afterAll(() => {
  whole.dispose();
  rmSync(directory, { recursive: true, force: true });
});

/** One model per rank of an in-process group of `ranks`, each holding its slice of the checkpoint at `path`. */
async function loadRanks(
  path: string,
  ranks: number,
  weightDtype: 'f32' | 'bf16' | 'auto' = 'f32',
): Promise<LlamaModel[]> {
  const group = createInProcessGroup(Array.from({ length: ranks }, () => cpu));
  return Promise.all(
    group.map((communicator) => LlamaModel.load(path, { device: cpu, weightDtype, tensorParallel: { communicator } })),
  );
}

/**
 * Every rank's logits equal the whole model's within `tolerance` (1e-5), and rank 0's bits exactly. The ranks' sums
 * of the row-parallel products round differently from one device's single sum, so a quantized cache may store a key
 * or value one code step apart (fp8 e4m3 keeps 3 mantissa bits): there the bound is 1e-3.
 */
function expectLikeWhole(perRank: Float32Array[], expected: Float32Array, tolerance = 1e-5): void {
  perRank.forEach((actual, rank) => {
    expect(relativeError(actual, expected), `rank ${rank}`).toBeLessThan(tolerance);
    // The all-reduce gives every rank the same sums, so the ranks stay identical to the bit.
    if (rank > 0) expect(Array.from(actual)).toEqual(Array.from(perRank[0] as Float32Array));
  });
}

describe('tensor parallelism on the CPU: in-process ranks against the whole model', () => {
  const cases: [number, AttentionPolicy['attention'], KvQuantScheme][] = [];
  for (const ranks of [2, 4])
    for (const attention of ['full', 'streaming', 'duo'] as const)
      for (const kvQuant of ['none', 'int8', 'int4', 'fp8'] as const) cases.push([ranks, attention, kvQuant]);

  it.each(cases)(
    '%i ranks, %s attention, %s KV: the whole model’s logits within 1e-5',
    async (ranks, attention, kvQuant) => {
      const policy: AttentionPolicy =
        attention === 'duo'
          ? { attention, plan, kvQuant, prefillChunk: 13 }
          : attention === 'streaming'
            ? { attention, sink: 4, recent: 8, kvQuant, prefillChunk: 13 }
            : { attention, kvQuant, prefillChunk: 13 };
      const options: SessionOptions = { policy, maxTokens: PREFILL + DECODE, cacheDtype: 'f32' };
      const models = await loadRanks(directory, ranks);
      try {
        const [expected] = await run([whole], options);
        const tolerance = kvQuant === 'none' ? 1e-5 : 1e-3;
        expectLikeWhole(await run(models, options), expected as Float32Array, tolerance);
        // Each rank caches only its KV heads: the ranks' streaming regions together are the whole model's.
        const alone = whole.createSession(options);
        const sessions = models.map((model) => model.createSession(options));
        try {
          for (const session of sessions) expect(session.plan.kvHeads).toBe(4 / ranks);
          const streaming = sessions.reduce((sum, session) => sum + session.cacheBytes().streaming, 0);
          expect(streaming).toBe(alone.cacheBytes().streaming);
        } finally {
          alone.dispose();
          for (const session of sessions) session.dispose();
        }
      } finally {
        for (const model of models) model.dispose();
      }
    },
  );

  const loads: [string, () => string, 'f32' | 'bf16', AttentionPolicy][] = [
    ['q/k/v biases and a tied head (Qwen2)', () => qwenDirectory, 'f32', { attention: 'full', prefillChunk: 32 }],
    ['f32 weights converted to bf16 as each slice loads', () => directory, 'bf16', { attention: 'duo', plan }],
  ];
  it.each(loads)('%s, 2 ranks: the whole model’s logits', async (_, path, weightDtype, policy) => {
    const alone = await LlamaModel.load(path(), { device: cpu, weightDtype });
    const models = await loadRanks(path(), 2, weightDtype);
    try {
      expect((models[1] as LlamaModel).weightDtype).toBe(weightDtype);
      const options: SessionOptions = { policy, maxTokens: PREFILL + DECODE };
      const [expected] = await run([alone], options);
      expectLikeWhole(await run(models, options), expected as Float32Array);
    } finally {
      alone.dispose();
      for (const model of models) model.dispose();
    }
  });

  it('a Q8_0 GGUF loads each rank’s rows and whole-block columns, and decodes as the whole file does', async () => {
    const alone = await LlamaModel.load(ggufPath, { device: cpu });
    const models = await loadRanks(ggufPath, 2, 'auto');
    try {
      expect(alone.weightDtype).toBe('q8_0');
      expect((models[0] as LlamaModel).weightDtype).toBe('q8_0');
      const options: SessionOptions = { policy: { attention: 'full', prefillChunk: 32 }, maxTokens: PREFILL + DECODE };
      const [expected] = await run([alone], options);
      // Q8_0 products round x to int8 pieces (as llama.cpp does): a residual one bit apart can move a piece's code.
      expectLikeWhole(await run(models, options), expected as Float32Array, 1e-3);
    } finally {
      alone.dispose();
      for (const model of models) model.dispose();
    }
  });

  it('greedy decoding gives the whole model’s tokens on every rank', async () => {
    const models = await loadRanks(directory, 2);
    const options: SessionOptions = { policy: { attention: 'duo', plan }, maxTokens: 64 };
    const run = async (model: LlamaModel) => {
      const session = model.createSession(options);
      try {
        await session.forward(tokens.slice(0, 20), { logits: 'none' });
        const out: number[] = [];
        for await (const token of session.greedyTokens(tokens[20] as number, 12)) out.push(token);
        return out;
      } finally {
        session.dispose();
      }
    };
    try {
      const expected = await run(whole);
      const perRank = await Promise.all(models.map(run));
      for (const actual of perRank) expect(actual).toEqual(expected);
    } finally {
      for (const model of models) model.dispose();
    }
  });

  it('a rank’s plan keeps its own KV heads, renumbered', () => {
    const [first, second] = createInProcessGroup([cpu, cpu]).map((communicator) =>
      tensorParallelRank({ communicator }, configFromHf(config)),
    );
    expect(rankPlan(plan, first as never).retrievalHeads).toEqual([[0], []]);
    expect(rankPlan(plan, second as never).retrievalHeads).toEqual([[1], [0]]);
    expect(rankPlan(plan, first as never).sparsity).toBeCloseTo(0.75);
    expect(rankPlan(plan, second as never).sparsity).toBeCloseTo(0.5);
  });

  it('refuses what a rank cannot hold or run, naming it', async () => {
    const three = createInProcessGroup([cpu, cpu, cpu]);
    await expect(
      LlamaModel.load(directory, { device: cpu, tensorParallel: { communicator: three[0] as never } }),
    ).rejects.toThrow("the model's `numKvHeads` (4) to divide by the group's 3 ranks");
    await expect(
      LlamaModel.load(directory, { device: cpu, tensorParallel: { communicator: {} as never } }),
    ).rejects.toThrow(DuoArgumentError);
    // Four ranks' share of o_proj's 64 columns is 16: half a Q8_0 block.
    const four = createInProcessGroup([cpu, cpu, cpu, cpu]);
    const refused = LlamaModel.load(ggufPath, { device: cpu, tensorParallel: { communicator: four[0] as never } });
    await expect(refused).rejects.toThrow(DuoCheckpointError);
    await expect(
      LlamaModel.load(ggufPath, { device: cpu, tensorParallel: { communicator: four[1] as never } }),
    ).rejects.toThrow('split the 32-value blocks of q8_0');
    const two = createInProcessGroup([cpu, cpu]);
    await expect(
      LlamaModel.load(directory, {
        device: cpu,
        weightQuant: 'int8',
        tensorParallel: { communicator: two[0] as never },
      }),
    ).rejects.toThrow('Expected no `weightQuant` with `tensorParallel`');
    const model = await LlamaModel.load(directory, {
      device: cpu,
      weightDtype: 'f32',
      tensorParallel: { communicator: two[0] as never },
    });
    try {
      expect(model.tensorParallel?.size).toBe(2);
      expect(() => model.createBatchEngine()).toThrow('rank 0 of a tensor-parallel group of 2');
      expect(() => model.createSession({ contextParallel: { communicator: two[1] as never } })).toThrow(
        'Expected no `contextParallel` on a model loaded with `tensorParallel`',
      );
      const hidden = cpu.alloc('f32', [1, 64]);
      try {
        expect(() => model.blocks.mlpBackward(0, hidden, hidden, hidden, hidden)).toThrow(
          'mlpBackward needs a model that holds every weight whole',
        );
      } finally {
        hidden.dispose();
      }
    } finally {
      model.dispose();
    }
  });
});
