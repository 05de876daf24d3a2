// KV quantization on real activations, once per backend: the demo model reads a page of a held-out book, each layer's
// keys (after RoPE), values and queries are recomputed from the captured hidden states, and every scheme's round trip
// is measured (SNR of K and V, the attention output's error over the real queries) against bounds, with the backend's
// quantizer writing exactly the reference's codes.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend, KvQuantScheme } from '@duoattn/core';
import { sharedPath } from '@duoattn/kernels/testing';
import {
  attentionOutputError,
  type HeadCache,
  kvQuantLayout,
  quantizeRow,
  roundTrip,
  signalToNoiseDb,
} from '@duoattn/kv-quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlamaModel } from '../llama-model.js';
import { ropeInverseFrequencies } from '../rope.js';
import { demoModelDirectory } from './demo-suite.js';

const TOKENS = 1024;
/**
 * Lower bounds on the SNR (dB) of K and V and upper bounds on the attention output's relative error, per scheme, over
 * every layer and KV head of the demo model on 1024 tokens of Pride and Prejudice (measured on the CPU: int8 41.6 dB and
 * 1.5 %, fp8 31.8 dB and 6.3 %, int4 19.1 dB and 19.6 % — 18.0 dB and 21.7 % with the reference's min / max range
 * alone; the bounds leave about 3 dB and 1.5× of room). Real queries attend sharply, so the output error is several
 * times the rows' relative error.
 */
export const REAL_KV_BOUNDS: Record<Exclude<KvQuantScheme, 'none'>, { snr: number; attention: number }> = {
  int8: { snr: 38, attention: 0.025 },
  fp8: { snr: 28, attention: 0.1 },
  int4: { snr: 16, attention: 0.3 },
};

interface LayerActivations {
  keys: Float32Array; // [tokens, kvHeads · headDim], after RoPE
  values: Float32Array;
  queries: Float32Array; // [tokens, heads · headDim], after RoPE
}

/** Keys, values and queries of every layer for `tokens`, recomputed on the backend from the captured layer inputs. */
async function layerActivations(model: LlamaModel, tokens: number[]): Promise<LayerActivations[]> {
  const b: Backend = model.backend;
  const c = model.config;
  const session = model.createSession({ maxTokens: tokens.length, cacheDtype: 'f32' });
  const layers = Array.from({ length: c.numLayers }, (_, l) => l);
  const positions = tokens.map((_, i) => i);
  const { captured } = await session.forward(tokens, { logits: 'none', capture: { layers, positions } });
  session.dispose();
  const frequencies = b.upload('f32', [c.headDim / 2], ropeInverseFrequencies(c));
  const positionTensor = b.upload('i32', [tokens.length], Int32Array.from(positions));
  const out: LayerActivations[] = [];
  for (const layer of layers) {
    const hidden = captured?.get(layer);
    if (!hidden) throw new Error(`layer ${layer} was not captured`);
    const x = b.upload('f32', [tokens.length, c.hiddenSize], hidden);
    const normed = b.alloc('f32', [tokens.length, c.hiddenSize]);
    const key = b.alloc('f32', [tokens.length, c.numKvHeads * c.headDim]);
    const value = b.alloc('f32', [tokens.length, c.numKvHeads * c.headDim]);
    const query = b.alloc('f32', [tokens.length, c.numHeads * c.headDim]);
    model.blocks.attentionInput(layer, x, normed, query, key, value);
    const interleaved = c.ropeStyle === 'interleaved';
    b.rope(key, positionTensor, frequencies, { heads: c.numKvHeads, headDim: c.headDim, interleaved });
    b.rope(query, positionTensor, frequencies, { heads: c.numHeads, headDim: c.headDim, interleaved });
    out.push({
      keys: (await b.read(key)) as Float32Array,
      values: (await b.read(value)) as Float32Array,
      queries: (await b.read(query)) as Float32Array,
    });
    for (const tensor of [x, normed, key, value, query]) tensor.dispose();
  }
  frequencies.dispose();
  positionTensor.dispose();
  return out;
}

/** One KV head's rows out of `[tokens, kvHeads · headDim]`. */
function headRows(data: Float32Array, head: number, kvHeads: number, headDim: number): Float32Array {
  const tokens = data.length / (kvHeads * headDim);
  const rows = new Float32Array(tokens * headDim);
  for (let t = 0; t < tokens; t++)
    rows.set(data.subarray((t * kvHeads + head) * headDim, (t * kvHeads + head + 1) * headDim), t * headDim);
  return rows;
}

export function realKvSuite(device: 'cpu' | 'cuda', skipReason?: string): void {
  const directory = demoModelDirectory();
  const book = sharedPath('data', 'gutenberg', '1342.txt');
  const reason =
    skipReason ??
    (!existsSync(join(directory, 'config.json'))
      ? `${directory} not found`
      : book
        ? undefined
        : '../shared/data/gutenberg/1342.txt not found (set DUO_SHARED_DIR)');
  (reason ? describe.skip : describe)(
    `KV quantization on the demo model's real K/V (${device})${reason ? ` (skipped: ${reason})` : ''}`,
    () => {
      let model: LlamaModel;
      let activations: LayerActivations[];
      beforeAll(async () => {
        model = await LlamaModel.load(directory, { device, weightDtype: 'f32' });
        const text = readFileSync(book as string, 'utf8');
        const ids = model.tokenizer?.encode(text.slice(20_000), { addBos: false }) ?? [];
        activations = await layerActivations(model, ids.slice(0, TOKENS));
      });
      afterAll(() => model?.dispose());

      it.each(['int8', 'fp8', 'int4'] as const)(
        '%s: SNR of K and V and the attention error over real queries within bounds; the backend writes the reference codes',
        async (scheme) => {
          const { numKvHeads: kvHeads, numHeads: heads, headDim } = model.config;
          const group = heads / kvHeads;
          const bounds = REAL_KV_BOUNDS[scheme];
          const b = model.backend;
          const { codeBytes } = kvQuantLayout(scheme, headDim);
          let worstSnr = Number.POSITIVE_INFINITY;
          let worstAttention = 0;
          let mismatches = 0;
          for (const layer of activations) {
            for (let head = 0; head < kvHeads; head++) {
              const keys = headRows(layer.keys, head, kvHeads, headDim);
              const values = headRows(layer.values, head, kvHeads, headDim);
              const heldKeys = roundTrip(scheme, keys, headDim);
              const heldValues = roundTrip(scheme, values, headDim);
              worstSnr = Math.min(worstSnr, signalToNoiseDb(keys, heldKeys), signalToNoiseDb(values, heldValues));
              // The last 64 positions' queries of this KV head's first query head, attending over all the keys.
              const exact: HeadCache = { keys, values, headDim, length: TOKENS };
              const quantized: HeadCache = { keys: heldKeys, values: heldValues, headDim, length: TOKENS };
              const queries = headRows(layer.queries, head * group, heads, headDim).subarray((TOKENS - 64) * headDim);
              worstAttention = Math.max(worstAttention, attentionOutputError(queries, exact, quantized));
            }
            // The backend's quantizer on the same rows: code for code (scales are checked by the conformance suites).
            const source = b.upload('f32', [TOKENS, kvHeads * headDim], layer.keys);
            const codes = b.alloc('u8', [kvHeads, TOKENS, codeBytes]);
            const scales = b.alloc('f16', [kvHeads, TOKENS, kvQuantLayout(scheme, headDim).scaleHalves]);
            b.writeCacheQuantized(source, codes, scales, 0, scheme);
            const held = (await b.read(codes)) as Uint8Array;
            for (let head = 0; head < kvHeads; head++) {
              for (let t = 0; t < TOKENS; t++) {
                const row = layer.keys.subarray((t * kvHeads + head) * headDim, (t * kvHeads + head + 1) * headDim);
                const expected = quantizeRow(scheme, row).codes;
                const actual = held.subarray((head * TOKENS + t) * codeBytes, (head * TOKENS + t + 1) * codeBytes);
                for (let i = 0; i < codeBytes; i++) if (actual[i] !== expected[i]) mismatches++;
              }
            }
            for (const tensor of [source, codes, scales]) tensor.dispose();
          }
          console.log(
            `${device} ${scheme}: worst SNR ${worstSnr.toFixed(2)} dB, worst attention error ${worstAttention.toExponential(3)}`,
          );
          expect(mismatches).toBe(0);
          expect(worstSnr).toBeGreaterThan(bounds.snr);
          expect(worstAttention).toBeLessThan(bounds.attention);
        },
      );
    },
  );
}
