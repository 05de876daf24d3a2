// Context parallelism through the model on the CPU backend (issue 20's CI line): 2, 3 and 4 in-process ranks, each a
// session holding its chunks of the retrieval heads' keys, give the single-device logits within 1e-5 over a chunked
// prefill and 50 decode steps — full attention and DuoAttention, every KV scheme — and every rank the same logits.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError, type HeadPlan, type KvQuantScheme } from '@duoattn/core';
import { createInProcessGroup, resolveBackend } from '@duoattn/kernels';
import { randomArray, relativeError } from '@duoattn/kernels/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { logitsTogether } from './__fixtures__/parallel-runs.js';
import { LlamaModel } from './llama-model.js';
import type { SessionOptions } from './session.js';

const PREFILL = 90;
const DECODE = 50;
const CHUNK = 16;
const cpu = resolveBackend('cpu');
const config = tinyConfig('llama', { num_key_value_heads: 2, max_position_embeddings: 512 });
const tokens = Array.from(randomArray(PREFILL + DECODE, 41), (v) => Math.floor((v + 1) * 48) % 97);
const plan: HeadPlan = { retrievalHeads: [[1], [0]], kvHeads: 2, sink: 4, recent: 8, sparsity: 0.5 };
let directory: string;
let model: LlamaModel;

beforeAll(async () => {
  directory = mkdtempSync(join(tmpdir(), 'duoattn-cp-'));
  writeHfModel(directory, config, randomWeights(config, 4242));
  model = await LlamaModel.load(directory, { device: cpu, weightDtype: 'f32' });
});
afterAll(() => {
  model.dispose();
  rmSync(directory, { recursive: true, force: true });
});

describe('context parallelism on the CPU: in-process ranks against one device', () => {
  const cases: [number, 'full' | 'duo', KvQuantScheme][] = [];
  for (const ranks of [2, 3, 4])
    for (const attention of ['full', 'duo'] as const)
      for (const kvQuant of ['none', 'int8', 'int4', 'fp8'] as const) cases.push([ranks, attention, kvQuant]);

  it.each(cases)(
    '%i ranks, %s attention, %s KV: the single-device logits within 1e-5',
    async (ranks, attention, kvQuant) => {
      const policy =
        attention === 'full'
          ? { attention, kvQuant, prefillChunk: 13 }
          : { attention, plan, kvQuant, prefillChunk: 13 };
      const options: SessionOptions = { policy, maxTokens: PREFILL + DECODE, cacheDtype: 'f32' };
      const alone = model.createSession(options);
      const group = createInProcessGroup(Array.from({ length: ranks }, () => cpu));
      const sessions = group.map((communicator) =>
        model.createSession({ ...options, contextParallel: { communicator, chunk: CHUNK } }),
      );
      try {
        const [expected] = await logitsTogether([alone], tokens, PREFILL);
        const perRank = await logitsTogether(sessions, tokens, PREFILL);
        for (const [rank, actual] of perRank.entries()) {
          expect(relativeError(actual, expected as Float32Array), `rank ${rank}`).toBeLessThan(1e-5);
          // Every rank merges the same partials in the same order: the same bits.
          if (rank > 0) expect(Array.from(actual)).toEqual(Array.from(perRank[0] as Float32Array));
        }
        // Each rank's full regions hold its share of the keys, not the sequence (quantized regions grow a page of many
        // tokens at a time, which 140 tokens do not fill: there only no more than one device's).
        const whole = alone.cacheBytes().full;
        for (const session of sessions) {
          if (kvQuant === 'none') expect(session.cacheBytes().full).toBeLessThan(whole);
          else expect(session.cacheBytes().full).toBeLessThanOrEqual(whole);
        }
      } finally {
        alone.dispose();
        for (const session of sessions) session.dispose();
      }
    },
  );

  it('refuses a communicator that is not one, and a chunk that is not a positive integer', () => {
    const [communicator] = createInProcessGroup([cpu, cpu]);
    expect(() => model.createSession({ contextParallel: { communicator: {} as never } })).toThrow(DuoArgumentError);
    expect(() => model.createSession({ contextParallel: { communicator: {} as never } })).toThrow(
      '`contextParallel.communicator` to be a Communicator',
    );
    expect(() => model.createSession({ contextParallel: { communicator: communicator as never, chunk: 0 } })).toThrow(
      '`contextParallel.chunk` to be a positive integer but received 0',
    );
  });
});
