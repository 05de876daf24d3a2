// Memory: streaming regions stay constant as a sequence grows, and the planner's bytes are what the backend allocates.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { planMemory, uniformPlan, weightBytes } from '@duoattn/dual-cache';
import { createBackend } from '@duoattn/kernels';
import { beforeAll, describe, expect, it } from 'vitest';
import { randomWeights, tinyConfig, writeHfModel } from './__fixtures__/checkpoints.js';
import { LlamaModel } from './llama-model.js';

const directory = mkdtempSync(join(tmpdir(), 'duoattn-memory-'));
const backend = createBackend('cpu');
beforeAll(() => {
  const config = tinyConfig('llama', { max_position_embeddings: 4096 });
  writeHfModel(directory, config, randomWeights(config, 42));
});

describe('memory', () => {
  it('keeps streaming-region memory constant while a sequence grows to 10 × recent', async () => {
    const model = await LlamaModel.load(directory, { device: backend, weightDtype: 'f32' });
    const plan = { retrievalHeads: [[0], [1]], kvHeads: 2, sink: 4, recent: 16, sparsity: 0.5 };
    for (const attention of ['streaming', 'duo'] as const) {
      const policy =
        attention === 'duo'
          ? { attention, plan, prefillChunk: 8 }
          : { attention, sink: 4, recent: 16, prefillChunk: 8 };
      const session = model.createSession({ policy, maxTokens: 400, cacheBlockTokens: 64 });
      await session.forward([1, 2, 3, 4, 5, 6, 7, 8]);
      await session.forward([9]);
      const streaming = session.cacheBytes().streaming;
      const allocated = backend.memory().allocatedBytes;
      const full: number[] = [];
      for (let step = 9; step < 10 * 16; step++) {
        await session.forward([step % 97]);
        expect(session.cacheBytes().streaming).toBe(streaming);
        full.push(session.cacheBytes().full);
      }
      expect(streaming).toBeGreaterThan(0);
      if (attention === 'streaming') {
        // No retrieval heads: nothing grows at all.
        expect(backend.memory().allocatedBytes).toBe(allocated);
        expect(full.every((bytes) => bytes === 0)).toBe(true);
      } else {
        // Retrieval heads grow by whole pages (mapped in place); the rest of the session's memory does not move.
        const pageTokens = backend.pageBytes / (8 * 4); // one head's row: head dim 8, f32
        expect(new Set(full).size).toBe(Math.ceil(160 / pageTokens) - Math.ceil(64 / pageTokens) + 1);
        for (const bytes of full) expect(bytes % (2 * backend.pageBytes)).toBe(0);
        expect(backend.memory().allocatedBytes - allocated).toBe((full.at(-1) ?? 0) - (full[0] ?? 0));
      }
      session.dispose();
    }
    model.dispose();
  });

  it.each(['full', 'duo'] as const)(
    'allocates what the planner says (%s attention, within 1 percent)',
    async (attention) => {
      const before = backend.memory().allocatedBytes;
      const model = await LlamaModel.load(directory, { device: backend, weightDtype: 'f32' });
      const plan = { retrievalHeads: [[0], []], kvHeads: 2, sink: 4, recent: 16, sparsity: 0.75 };
      expect(backend.memory().allocatedBytes - before).toBe(weightBytes(model.config, 'f32'));
      const tokens = 1000;
      const policy = attention === 'duo' ? { attention, plan, prefillChunk: 64 } : { attention, prefillChunk: 64 };
      const session = model.createSession({ policy, maxTokens: tokens, cacheBlockTokens: tokens });
      // Whole chunks, then decode: the session holds one chunk workspace and the decode one, as the planner counts.
      await session.forward(Array.from({ length: 192 }, (_, i) => i % 97));
      await session.forward([5]);
      const planned = planMemory({
        pageBytes: backend.pageBytes,
        config: model.config,
        plan: attention === 'full' ? uniformPlan('full', 2, 2) : plan,
        weightDtype: 'f32',
        kvDtype: 'f32',
        tokens,
        prefillChunk: 64,
      });
      const actual = backend.memory().allocatedBytes - before;
      expect(Math.abs(actual - planned.total) / planned.total).toBeLessThan(0.01);
      expect(session.cacheBytes()).toEqual({ full: planned.fullRegion, streaming: planned.streamingRegion });
      session.dispose();
      model.dispose();
      expect(backend.memory().allocatedBytes).toBe(before);
    },
  );
});
