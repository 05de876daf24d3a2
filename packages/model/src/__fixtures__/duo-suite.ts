// DuoAttention through the model, once per backend: duo / streaming / chunked-mask logits against a float64 dense
// forward that applies each streaming head's mask, over chunked prefill and 50 decode steps.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HeadPlan } from '@duoattn/core';
import { randomArray, relativeError } from '@duoattn/kernels/testing';
import { roundTrip } from '@duoattn/kv-quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlamaModel } from '../llama-model.js';
import type { SessionOptions } from '../session.js';
import { type FixtureTensor, randomWeights, tinyConfig, writeHfModel } from './checkpoints.js';
import { type ReferenceMask, referenceLogits } from './reference-forward.js';

const SINK = 4;
const RECENT = 8;
const PREFILL = 90;
const DECODE = 50;

interface DuoModelCase {
  name: string;
  kvHeads: number;
  /** Retrieval heads per layer, in checkpoint order: one layer with some, one with none or all. */
  retrievalHeads: number[][];
}

const MODELS: DuoModelCase[] = [
  { name: 'GQA (6 query / 2 KV heads)', kvHeads: 2, retrievalHeads: [[1], []] },
  {
    name: 'MHA (6 heads)',
    kvHeads: 6,
    retrievalHeads: [
      [0, 3, 5],
      [0, 1, 2, 3, 4, 5],
    ],
  },
];

/** The Λ mask of `plan` (or the reference's chunk-wise mask, given each position's chunk start). */
function planMask(plan: HeadPlan, chunkStart?: (position: number) => number): ReferenceMask {
  return (layer, kvHead, position, key) => {
    if (plan.retrievalHeads[layer]?.includes(kvHead)) return true;
    if (key < plan.sink) return true;
    return chunkStart ? key >= chunkStart(position) - plan.recent : position - key < plan.recent;
  };
}

/** Logits of prefilling `tokens[0, PREFILL)` in chunks of `chunk`, then feeding the rest one token at a time. */
async function sessionLogits(model: LlamaModel, tokens: number[], options: SessionOptions): Promise<Float32Array> {
  const session = model.createSession({ maxTokens: tokens.length, ...options });
  try {
    const rows: Float32Array[] = [];
    const prefill = await session.forward(tokens.slice(0, PREFILL), { logits: 'all' });
    rows.push(prefill.logits as Float32Array);
    for (const token of tokens.slice(PREFILL)) rows.push((await session.forward([token])).logits as Float32Array);
    return Float32Array.from(rows.flatMap((row) => Array.from(row)));
  } finally {
    session.dispose();
  }
}

/** Registers the suite for `device`; `tolerance` is the relative error allowed against float64. */
export function duoSuite(device: 'cpu' | 'cuda', tolerance: number, skipReason?: string): void {
  (skipReason ? describe.skip : describe)(
    `DuoAttention on ${device}${skipReason ? ` (skipped: ${skipReason})` : ''}`,
    () => {
      for (const modelCase of MODELS) {
        describe(modelCase.name, () => {
          const config = tinyConfig('llama', { num_key_value_heads: modelCase.kvHeads, max_position_embeddings: 512 });
          let weights: Map<string, FixtureTensor>;
          let model: LlamaModel;
          let plan: HeadPlan;
          const tokens = Array.from(randomArray(PREFILL + DECODE, 77), (v) => Math.floor((v + 1) * 48) % 97);
          beforeAll(async () => {
            const directory = mkdtempSync(join(tmpdir(), 'duoattn-duo-'));
            weights = randomWeights(config, 900 + modelCase.kvHeads);
            writeHfModel(directory, config, weights);
            model = await LlamaModel.load(directory, { device, weightDtype: 'f32' });
            plan = {
              retrievalHeads: modelCase.retrievalHeads,
              kvHeads: modelCase.kvHeads,
              sink: SINK,
              recent: RECENT,
              sparsity: 0.5,
            };
          });
          afterAll(() => model.dispose());

          it.each([1, 7, 64, PREFILL + DECODE])(
            'duo logits match the dense Λ-masked reference: prefill in chunks of %i, then 50 decode steps',
            async (chunk) => {
              const expected = referenceLogits(model.config, weights, tokens, planMask(plan));
              const actual = await sessionLogits(model, tokens, {
                policy: { attention: 'duo', plan, prefillChunk: chunk },
                cacheDtype: 'f32',
              });
              expect(relativeError(actual, expected)).toBeLessThan(tolerance);
              // The streaming heads matter here: full attention gives other logits.
              const full = referenceLogits(model.config, weights, tokens);
              expect(relativeError(actual, full)).toBeGreaterThan(100 * tolerance);
            },
          );

          it.each(['int8', 'int4', 'fp8'] as const)(
            'duo over a %s-quantized cache matches the reference that attends over the round-tripped K/V',
            async (scheme) => {
              const cached = (row: Float64Array) =>
                Float64Array.from(roundTrip(scheme, Float32Array.from(row), config.head_dim));
              const expected = referenceLogits(model.config, weights, tokens, planMask(plan), cached);
              const actual = await sessionLogits(model, tokens, {
                policy: { attention: 'duo', plan, prefillChunk: 7, kvQuant: scheme },
                cacheDtype: 'f32',
              });
              const error = relativeError(actual, expected);
              expect(error).toBeLessThan(tolerance);
              // The quantization shows: the unquantized reference is much further away.
              const unquantized = referenceLogits(model.config, weights, tokens, planMask(plan));
              expect(relativeError(actual, unquantized)).toBeGreaterThan(10 * error);
            },
          );

          it.each([7, 64])('the chunked mask matches its own reference (chunks of %i)', async (chunk) => {
            const chunkStart = (position: number) =>
              position < PREFILL ? Math.floor(position / chunk) * chunk : position;
            const expected = referenceLogits(model.config, weights, tokens, planMask(plan, chunkStart));
            const options: SessionOptions = {
              policy: { attention: 'duo', plan, prefillChunk: chunk, prefillMask: 'chunked' },
              cacheDtype: 'f32',
            };
            expect(relativeError(await sessionLogits(model, tokens, options), expected)).toBeLessThan(tolerance);
          });

          it('streaming attends every head over sinks + window; full attention is full attention', async () => {
            const streamingPlan = { ...plan, retrievalHeads: plan.retrievalHeads.map(() => []) };
            const streaming = await sessionLogits(model, tokens, {
              policy: { attention: 'streaming', sink: SINK, recent: RECENT, prefillChunk: 16 },
              cacheDtype: 'f32',
            });
            expect(
              relativeError(streaming, referenceLogits(model.config, weights, tokens, planMask(streamingPlan))),
            ).toBeLessThan(tolerance);
            const full = await sessionLogits(model, tokens, {
              policy: { attention: 'full', prefillChunk: 16 },
              cacheDtype: 'f32',
            });
            expect(relativeError(full, referenceLogits(model.config, weights, tokens))).toBeLessThan(tolerance);
          });

          it('greedy decoding with duo (a captured graph on CUDA) follows the reference argmax', async () => {
            const session = model.createSession({
              maxTokens: 128,
              policy: { attention: 'duo', plan, prefillChunk: 32 },
              cacheDtype: 'f32',
            });
            const prompt = tokens.slice(0, 40);
            await session.forward(prompt.slice(0, -1), { logits: 'none' });
            const generated: number[] = [];
            for await (const id of session.greedyTokens(prompt[prompt.length - 1] ?? 0, 30)) generated.push(id);
            session.dispose();
            const sequence = [...prompt, ...generated];
            const logits = referenceLogits(model.config, weights, sequence, planMask(plan));
            const vocab = model.config.vocabSize;
            generated.forEach((id, step) => {
              const row = Array.from(
                logits.subarray((prompt.length - 1 + step) * vocab, (prompt.length + step) * vocab),
              );
              const best = Math.max(...row);
              // Where two logits nearly tie, float rounding may pick either.
              expect(row[id] ?? Number.NEGATIVE_INFINITY, `step ${step}`).toBeGreaterThan(best - 1e-3);
            });
          });
        });
      }

      it('at sparsity 0 the duo path gives the logits of full attention', async () => {
        const directory = mkdtempSync(join(tmpdir(), 'duoattn-duo0-'));
        const config = tinyConfig('llama');
        writeHfModel(directory, config, randomWeights(config, 950));
        const model = await LlamaModel.load(directory, { device, weightDtype: 'f32' });
        const tokens = Array.from({ length: 60 }, (_, i) => (i * 37 + 5) % 97);
        const worst = (a: Float32Array, b: Float32Array) =>
          a.reduce((m, v, i) => Math.max(m, Math.abs(v - (b[i] ?? 0))), 0);
        const full = await sessionLogits(model, tokens, {
          policy: { attention: 'full', prefillChunk: 7 },
          cacheDtype: 'f32',
        });
        const plan = {
          retrievalHeads: [
            [0, 1],
            [0, 1],
          ],
          kvHeads: 2,
          sink: 4,
          recent: 8,
          sparsity: 0,
        };
        const duo = (headPlan: HeadPlan) =>
          sessionLogits(model, tokens, {
            policy: { attention: 'duo', plan: headPlan, prefillChunk: 7 },
            cacheDtype: 'f32',
          });
        // The weights are never reordered, so every head's sums run in the same order: bit-identical logits.
        expect(worst(await duo(plan), full)).toBe(0);
        // A plan that names its heads out of order is the same plan.
        expect(
          worst(
            await duo({
              ...plan,
              retrievalHeads: [
                [0, 1],
                [1, 0],
              ],
            }),
            full,
          ),
        ).toBe(0);
        model.dispose();
      });
    },
  );
}
