// The analysis through the demo model on the CPU: the embedding layer is never contextualized; full attention
// contextualizes the suffix; a window shorter than the gap (streaming, no sinks) sees none of a far prefix.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sharedPath } from '@duoattn/kernels/testing';
import { LlamaModel } from '@duoattn/model';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { analyzeAccs } from './analyze.js';

const demo = join(resolve(dirname(fileURLToPath(import.meta.url)), '../../..'), 'models', 'duo-demo');
const book = sharedPath('data', 'gutenberg', '1342.txt');
const reason = !existsSync(join(demo, 'config.json'))
  ? `${demo} not found`
  : book
    ? undefined
    : '../shared/data/gutenberg/1342.txt not found (set DUO_SHARED_DIR)';

(reason ? describe.skip : describe)(
  `analyzeAccs on models/duo-demo (cpu)${reason ? ` (skipped: ${reason})` : ''}`,
  () => {
    let model: LlamaModel;
    let documents: number[][];
    const prefix = 32;
    const gap = 96; // more than 6 layers × (16 − 1) positions: a 16-token window carries nothing this far
    const suffix = 16;
    beforeAll(async () => {
      model = await LlamaModel.load(demo, { device: 'cpu', weightDtype: 'f32' });
      const ids =
        model.tokenizer?.encode(readFileSync(book as string, 'utf8').slice(30_000, 60_000), { addBos: false }) ?? [];
      documents = Array.from({ length: 4 }, (_, d) => ids.slice(d * 200, d * 200 + prefix + gap + suffix));
    });
    afterAll(() => model?.dispose());

    it('full attention: the embedding output is untouched by the prefix, deeper layers are not; collapse and LZMA per document', async () => {
      let progress = 0;
      const result = await analyzeAccs(model, {
        documents,
        prefix,
        gap,
        suffix,
        resamples: 200,
        collapse: true,
        decode: (tokens) => model.tokenizer?.decode(tokens) ?? '',
        onDocument: (done) => {
          progress = done;
        },
      });
      expect(progress).toBe(4);
      expect(result.layers).toHaveLength(model.config.numLayers + 1);
      expect(result.pairs).toBe(4 * suffix);
      expect(result.layers[0]?.selfSimilarity.value).toBeCloseTo(1, 6);
      const last = result.layers[model.config.numLayers];
      expect(last?.selfSimilarity.value).toBeLessThan(0.999);
      expect(result.bins[0]?.from).toBe(gap);
      for (const document of result.perDocument) {
        // 32-token prefixes are too short for LZMA to pay for its header: the ratios are defined, not meaningful.
        expect(document.compressibility.text).toBeGreaterThan(0);
        expect(document.compressibility.tokens).toBeGreaterThan(0);
        expect(document.collapse?.clean.entropy).toBeGreaterThan(0);
        expect(document.collapse?.clean.entropy).toBeLessThan(Math.log(model.config.vocabSize));
      }
    });

    it('streaming with a window shorter than the gap: SelfSim 1 at every layer for a perturbed far prefix', async () => {
      for (const perturbation of ['shuffle', 'random'] as const) {
        const result = await analyzeAccs(model, {
          documents,
          prefix,
          gap,
          suffix,
          perturbation,
          resamples: 50,
          session: { policy: { attention: 'streaming', sink: 0, recent: 16, prefillChunk: 64 } },
        });
        for (const layer of result.layers) expect(layer.selfSimilarity.value).toBeGreaterThan(1 - 1e-6);
      }
    });

    it('names what is wrong with its input', async () => {
      await expect(analyzeAccs(model, { documents: documents.slice(0, 1), prefix, suffix })).rejects.toThrow(
        /at least 2/,
      );
      await expect(analyzeAccs(model, { documents, prefix: 500, suffix })).rejects.toThrow(/document 0 has 144/);
      await expect(analyzeAccs(model, { documents, prefix, suffix: 0 })).rejects.toThrow(
        /`suffix` to be an integer ≥ 1/,
      );
    });

    it('stops before the next document once its signal is aborted from the event loop (a SIGINT handler)', async () => {
      const controller = new AbortController();
      const reason = new Error('interrupted');
      let done = 0;
      setImmediate(() => controller.abort(reason));
      await expect(
        analyzeAccs(model, {
          documents,
          prefix,
          gap,
          suffix,
          signal: controller.signal,
          onDocument: (n) => (done = n),
        }),
      ).rejects.toBe(reason);
      expect(done).toBeLessThan(documents.length);
    });
  },
);
