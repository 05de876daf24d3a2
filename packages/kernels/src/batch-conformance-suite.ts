// Test support: continuous batching. ropeWriteCacheBatch + attentionBatch over sequences that each bring their own
// caches (f32, bf16, int8, int4, fp8), streaming layout, length and span (decode rows, prefill chunks, sitting out)
// must equal the single-sequence ops run per sequence on identical copies; the batched ops' argument errors; and
// `sample` against a float64 reading of its documented rule. Used by the CPU and CUDA tests.
import {
  type BatchCacheLayer,
  DuoArgumentError,
  DuoDisposedError,
  type KvQuantScheme,
  type QuantizedKv,
  type StreamingHeads,
} from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/kv-quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uploadAs } from './conformance-helpers.js';
import type { BackendTuning } from './native.js';
import type { NativeBackend } from './native-backend.js';
import type { Tensor } from './tensor.js';
import { randomArray, relativeError } from './testing/reference.js';

/** How a sequence's caches hold keys: a float dtype, or a quantizing scheme (u8 codes + f16 scales). */
export type BatchCacheKind = 'f32' | 'bf16' | Exclude<KvQuantScheme, 'none'>;

/** One sequence of a batched step: its caches, whether some KV heads stream, and its span. */
interface SequenceSpec {
  readonly cache: BatchCacheKind;
  /** 'some': KV head 1 (and 2 with four KV heads) keeps every key, the others stream; 'all': every head streams. */
  readonly streaming: 'none' | 'some' | 'all';
  readonly mask?: 'exact' | 'chunked';
  readonly start: number;
  readonly rows: number;
}

// Long decodes (split over the keys on CUDA), short ones, the first token, prefill chunks at the start and later,
// one that sits out, every cache kind, full, mixed and all-streaming layouts.
const SEQUENCES: readonly SequenceSpec[] = [
  { cache: 'bf16', streaming: 'none', start: 699, rows: 1 },
  { cache: 'f32', streaming: 'some', start: 300, rows: 1 },
  { cache: 'int8', streaming: 'some', start: 520, rows: 1 },
  { cache: 'int4', streaming: 'none', start: 0, rows: 1 },
  { cache: 'fp8', streaming: 'none', start: 40, rows: 0 },
  { cache: 'bf16', streaming: 'some', mask: 'chunked', start: 90, rows: 24 },
  { cache: 'int8', streaming: 'none', start: 130, rows: 7 },
  { cache: 'fp8', streaming: 'some', start: 257, rows: 1 },
  { cache: 'f32', streaming: 'all', start: 0, rows: 12 },
  { cache: 'int4', streaming: 'some', start: 611, rows: 1 },
  // Long enough for more than 8 splits per head on CUDA (merged in the decode kernel or by the combine launch, as
  // BackendTuning.decodeBatchMerge says).
  { cache: 'bf16', streaming: 'some', start: 2600, rows: 1 },
];
// Head dim 16 takes the CUDA-core kernels, 64 and 128 the tensor-core ones.
const SHAPES = [
  { heads: 8, kvHeads: 2, headDim: 64 },
  { heads: 8, kvHeads: 2, headDim: 128 },
  { heads: 4, kvHeads: 4, headDim: 16 },
  { heads: 8, kvHeads: 2, headDim: 16 },
  { heads: 4, kvHeads: 4, headDim: 64 },
];
const LAYERS = 2;
const SINK = 4;
const RECENT = 32;
// Ring slots beyond sink + recent: room for the longest span (setSpans checks it).
const RING_ROOM = 32;

/** Per-backend settings of the suite. */
export interface BatchSuiteOptions {
  /**
   * The relative error allowed between a sequence's batched attention and its single-sequence attention. Caches and
   * the rotated q / k rows must be equal bit for bit on every backend: both paths share the arithmetic.
   */
  readonly attentionTolerance: (headDim: number, cache: BatchCacheKind) => number;
  /**
   * Relative slack on `u` and `topP` within which `sample`'s pick may differ from the float64 reference (float
   * summation order near a boundary of the cumulative weights); 0 demands the reference's token.
   */
  readonly sampleSlack: number;
  /** Knobs set on the backend before the suite's tests and reset after (another route through the same ops). */
  readonly tuning?: BackendTuning;
}

/** Registers the suite for one backend; `backend()` returns undefined when it is absent (tests then skip visibly). */
export function batchConformanceSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  options: BatchSuiteOptions,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`continuous batching: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    const b = () => backend() as NativeBackend;
    if (options.tuning) {
      const tuning = options.tuning;
      beforeAll(() => b().tune(tuning));
      afterAll(() => b().tune({}));
    }

    it.each(SHAPES)(
      'heads $heads / KV heads $kvHeads, head dim $headDim: the batched ops equal the single-sequence ops per sequence',
      async (shape) => {
        const tensors = new Tensors();
        const { heads, kvHeads, headDim } = shape;
        const frequencies = tensors.keep(b().upload('f32', [headDim / 2], inverseFrequencies(headDim)));
        // Two identical copies of every cache: one for the batch, one for the single-sequence ops.
        const copies = SEQUENCES.map((spec, s) =>
          range(LAYERS, (layer) => {
            const seed = 1000 * (s + 1) + 100 * layer;
            const [batched, single] = [0, 1].map(() => sequenceCaches(b(), tensors, spec, kvHeads, headDim, seed));
            return { batched: batched as BatchLayer, single: single as BatchLayer };
          }),
        );
        const copiesAt = (s: number, layer: number) => {
          const pair = copies[s]?.[layer];
          if (!pair) throw new Error(`no caches for sequence ${s}, layer ${layer}`);
          return pair;
        };
        using batch = b().createCacheBatch(
          copies.map((perLayer) => perLayer.map(({ batched }) => batched)),
          { kvHeads, headDim },
        );
        batch.setSpans(SEQUENCES.map(({ rows, start }) => ({ rows, start })));
        const rows = batch.rows;
        const positions = Int32Array.from(SEQUENCES.flatMap(({ start, rows }) => range(rows, (r) => start + r)));
        const rowStarts = SEQUENCES.map((_, s) => SEQUENCES.slice(0, s).reduce((sum, spec) => sum + spec.rows, 0));
        const positionTensor = tensors.keep(b().upload('i32', [rows], positions));
        const scale = 1 / Math.sqrt(headDim);
        const ropeAttributes = { heads, kvHeads, headDim, interleaved: false };
        for (let layer = 0; layer < LAYERS; layer++) {
          const width = { q: heads * headDim, kv: kvHeads * headDim };
          const queryData = randomArray(rows * width.q, 10 + layer, 2);
          const keyData = randomArray(rows * width.kv, 20 + layer, 2);
          const valueData = randomArray(rows * width.kv, 30 + layer);
          const query = tensors.keep(b().upload('f32', [rows, width.q], queryData));
          const key = tensors.keep(b().upload('f32', [rows, width.kv], keyData));
          const value = tensors.keep(b().upload('f32', [rows, width.kv], valueData));
          const out = tensors.keep(b().alloc('f32', [rows, width.q]));
          b().ropeWriteCacheBatch(query, key, value, positionTensor, frequencies, batch, layer, ropeAttributes);
          b().attentionBatch(query, out, batch, layer, { heads, kvHeads, headDim, scale });
          const batched = {
            query: (await b().read(query)) as Float32Array,
            key: (await b().read(key)) as Float32Array,
            out: (await b().read(out)) as Float32Array,
          };

          for (const [s, spec] of SEQUENCES.entries()) {
            const { single, batched: batchedLayer } = copiesAt(s, layer);
            const where = `sequence ${s} (${spec.cache}, ${spec.streaming} streaming, ${spec.rows} rows from ${spec.start}), layer ${layer}`;
            if (spec.rows > 0) {
              const first = rowStarts[s] as number;
              const part = (data: Float32Array, rowWidth: number) =>
                data.subarray(first * rowWidth, (first + spec.rows) * rowWidth);
              const sQuery = tensors.keep(b().upload('f32', [spec.rows, width.q], part(queryData, width.q)));
              const sKey = tensors.keep(b().upload('f32', [spec.rows, width.kv], part(keyData, width.kv)));
              const sValue = tensors.keep(b().upload('f32', [spec.rows, width.kv], part(valueData, width.kv)));
              const sPositions = tensors.keep(
                b().upload('i32', [spec.rows], Int32Array.from(range(spec.rows, (r) => spec.start + r))),
              );
              const sOut = tensors.keep(b().alloc('f32', [spec.rows, width.q]));
              const cacheAttributes = {
                ...(single.streaming ? { streaming: single.streaming } : {}),
                ...(single.quant ? { quant: single.quant } : {}),
              };
              b().ropeWriteCache(sQuery, sKey, sValue, sPositions, frequencies, single.keyCache, single.valueCache, {
                ...ropeAttributes,
                ...cacheAttributes,
              });
              const attention = {
                heads,
                kvHeads,
                headDim,
                scale,
                keyLength: spec.start + spec.rows,
                ...cacheAttributes,
              };
              if (spec.rows === 1) b().attentionDecode(sQuery, single.keyCache, single.valueCache, sOut, attention);
              else
                b().attentionPrefill(sQuery, single.keyCache, single.valueCache, sOut, {
                  ...attention,
                  queryStart: spec.start,
                });
              expect(firstDifference(part(batched.query, width.q), await readAll(b(), sQuery)), `q of ${where}`).toBe(
                -1,
              );
              expect(firstDifference(part(batched.key, width.kv), await readAll(b(), sKey)), `k of ${where}`).toBe(-1);
              const error = relativeError(part(batched.out, width.q), await readAll(b(), sOut));
              expect(error, `attention of ${where}`).toBeLessThanOrEqual(
                options.attentionTolerance(headDim, spec.cache),
              );
            }
            for (const [name, pair] of cachePairs(batchedLayer, single)) {
              expect(
                firstDifference(await readAll(b(), pair[0]), await readAll(b(), pair[1])),
                `${name} of ${where}`,
              ).toBe(-1);
            }
          }
        }
        tensors.dispose();
      },
    );

    describe('argument errors', () => {
      const kvHeads = 2;
      const headDim = 16;
      const tensors = new Tensors();
      afterAll(() => tensors.dispose());
      const caches = (capacity: number): BatchCacheLayer => ({
        keyCache: tensors.keep(b().alloc('f32', [kvHeads, capacity, headDim])),
        valueCache: tensors.keep(b().alloc('f32', [kvHeads, capacity, headDim])),
      });

      it('rejects a span past a sequence’s caches', () => {
        using batch = b().createCacheBatch([[caches(32)], [caches(8)]], { kvHeads, headDim });
        expect(() =>
          batch.setSpans([
            { rows: 1, start: 20 },
            { rows: 2, start: 7 },
          ]),
        ).toThrow(/Sequence 1 reaches 9 keys but its caches hold 8/);
        expect(() =>
          batch.setSpans([
            { rows: 1, start: 20 },
            { rows: 0, start: 7 },
          ]),
        ).not.toThrow();
      });

      it('throws DuoDisposedError for a batch whose cache was disposed, and for a disposed batch', () => {
        const doomed = caches(16);
        const batch = b().createCacheBatch([[caches(16)], [doomed]], { kvHeads, headDim });
        batch.setSpans([
          { rows: 1, start: 3 },
          { rows: 1, start: 5 },
        ]);
        const query = tensors.keep(b().alloc('f32', [2, 4 * headDim]));
        const out = tensors.keep(b().alloc('f32', [2, 4 * headDim]));
        const attributes = { heads: 4, kvHeads, headDim, scale: 0.25 };
        b().attentionBatch(query, out, batch, 0, attributes);
        doomed.keyCache.dispose();
        expect(() => b().attentionBatch(query, out, batch, 0, attributes)).toThrow(DuoDisposedError);
        batch.dispose();
        expect(() => b().attentionBatch(query, out, batch, 0, attributes)).toThrow(DuoDisposedError);
      });

      it('rejects a query whose rows are not the spans’ rows', () => {
        using batch = b().createCacheBatch([[caches(16)], [caches(16)]], { kvHeads, headDim });
        batch.setSpans([
          { rows: 3, start: 0 },
          { rows: 1, start: 5 },
        ]);
        const query = tensors.keep(b().alloc('f32', [3, 4 * headDim]));
        const out = tensors.keep(b().alloc('f32', [3, 4 * headDim]));
        const attributes = { heads: 4, kvHeads, headDim, scale: 0.25 };
        expect(() => b().attentionBatch(query, out, batch, 0, attributes)).toThrow(DuoArgumentError);
        expect(() => b().attentionBatch(query, out, batch, 0, attributes)).toThrow(/shape \[4, 64\] for `query`/);
        expect(() => b().attentionBatch(query, out, batch, 2, attributes)).toThrow(/layer/);
      });
    });

    describe('sample', () => {
      it('takes the argmax at temperature 0, the lowest index on ties', async () => {
        const vocab = 300;
        const logits = randomArray(3 * vocab, 5, 4);
        logits[17] = logits[200] = 9; // row 0: a tie
        logits[vocab + 299] = 8; // row 1: the last token
        logits.fill(-1, 2 * vocab, 3 * vocab); // row 2: every token ties
        const settings = Float32Array.from([0, 0, 1, 0.5, 0, 5, 0.9, 0.1, 0, 0, 1, 0.99]);
        const picked = await sampleOn(b(), logits, vocab, settings);
        expect(Array.from(picked)).toEqual([17, 299, 0]);
      });

      it.each([
        { vocab: 1000, rows: 10, spread: 3 },
        { vocab: 151_936, rows: 4, spread: 6 },
      ])('follows the documented rule per row, $vocab tokens', async ({ vocab, rows, spread }) => {
        const logits = randomArray(rows * vocab, vocab + rows, spread);
        // Row 1 holds few distinct values: ties ordered by index decide the top-k and the cumulative weights.
        for (let i = vocab; i < 2 * vocab; i++) logits[i] = Math.round((logits[i] as number) * 2) / 2;
        const uniforms = randomArray(rows, 77);
        const choices: [number, number, number][] = [
          [1, 0, 1],
          [0.7, 40, 1],
          [1.3, 0, 0.9],
          [0.5, 5, 0.5],
          [1, 1, 1],
          [2, 0, 0.05],
          [0.8, 3, 0.999],
          [1, vocab + 10, 1],
          [0.05, 0, 0.95],
          [1, 50, 0.8],
        ];
        const settings = new Float32Array(4 * rows);
        for (let r = 0; r < rows; r++) {
          const [temperature, topK, topP] = choices[r % choices.length] as [number, number, number];
          settings.set([temperature, topK, topP, Math.abs(uniforms[r] as number)], 4 * r);
        }
        const picked = await sampleOn(b(), logits, vocab, settings);
        for (let r = 0; r < rows; r++) {
          const row = logits.subarray(r * vocab, (r + 1) * vocab);
          const [temperature, topK, topP, u] = settings.subarray(4 * r, 4 * r + 4) as unknown as number[];
          const allowed = new Set<number>();
          const slack = options.sampleSlack;
          for (const uFactor of slack > 0 ? [1 - slack, 1, 1 + slack] : [1])
            for (const pFactor of slack > 0 ? [1 - slack, 1, 1 + slack] : [1])
              allowed.add(
                referenceSample(
                  row,
                  temperature as number,
                  topK as number,
                  Math.min(1, (topP as number) * pFactor),
                  Math.min(1, (u as number) * uFactor),
                ),
              );
          expect(
            Array.from(allowed),
            `row ${r}: ${Array.from(settings.subarray(4 * r, 4 * r + 4)).join(', ')}`,
          ).toContain(picked[r]);
        }
      });
    });
  });
}

/** Tensors a test made, disposed together. */
class Tensors {
  readonly #held: Tensor[] = [];
  keep<T extends Tensor>(tensor: T): T {
    this.#held.push(tensor);
    return tensor;
  }
  dispose(): void {
    for (const tensor of this.#held.splice(0)) tensor.dispose();
  }
}

/** One layer of one sequence, its tensors as this package's. */
type BatchLayer = BatchCacheLayer & { keyCache: Tensor; valueCache: Tensor };

/**
 * One layer of one sequence: main caches (and a streaming region) of `cache`'s kind, every slot filled with values
 * from `seed` — the same seed gives an identical copy.
 */
function sequenceCaches(
  b: NativeBackend,
  tensors: Tensors,
  spec: SequenceSpec,
  kvHeads: number,
  headDim: number,
  seed: number,
): BatchLayer {
  const retrievalHeads =
    spec.streaming === 'none' ? range(kvHeads, (h) => h) : spec.streaming === 'all' ? [] : kvHeads === 4 ? [1, 2] : [1];
  const capacity = spec.start + spec.rows + 5;
  const slots = SINK + RECENT + RING_ROOM;
  const planes = (heads: number, length: number, salt: number) => {
    const values = randomArray(length * heads * headDim, seed + salt, 2);
    if (spec.cache === 'f32' || spec.cache === 'bf16') {
      // [heads, length, headDim]: the values' layout does not matter, only that both copies hold the same.
      return { codes: tensors.keep(uploadAs(b, spec.cache, [heads, length, headDim], values)[0]) };
    }
    const { codeBytes, scaleHalves } = kvQuantLayout(spec.cache, headDim);
    const codes = tensors.keep(b.alloc('u8', [heads, length, codeBytes]));
    const scales = tensors.keep(b.alloc('f16', [heads, length, scaleHalves]));
    if (heads > 0) {
      const source = b.upload('f32', [length, heads * headDim], values);
      b.writeCacheQuantized(source, codes, scales, 0, spec.cache);
      source.dispose();
    }
    return { codes, scales };
  };
  const mainHeads = retrievalHeads.length;
  const key = planes(mainHeads, capacity, 1);
  const value = planes(mainHeads, capacity, 2);
  let streaming: StreamingHeads | undefined;
  let regionKey: ReturnType<typeof planes> | undefined;
  let regionValue: ReturnType<typeof planes> | undefined;
  if (spec.streaming !== 'none') {
    regionKey = planes(kvHeads - mainHeads, slots, 3);
    regionValue = planes(kvHeads - mainHeads, slots, 4);
    streaming = {
      retrievalHeads,
      keyCache: regionKey.codes,
      valueCache: regionValue.codes,
      sink: SINK,
      recent: RECENT,
      mask: spec.mask ?? 'exact',
    };
  }
  let quant: QuantizedKv | undefined;
  if (spec.cache !== 'f32' && spec.cache !== 'bf16') {
    quant = {
      scheme: spec.cache,
      keyScales: key.scales as Tensor,
      valueScales: value.scales as Tensor,
      ...(regionKey
        ? { streamKeyScales: regionKey.scales as Tensor, streamValueScales: regionValue?.scales as Tensor }
        : {}),
    };
  }
  return {
    keyCache: key.codes,
    valueCache: value.codes,
    ...(streaming ? { streaming } : {}),
    ...(quant ? { quant } : {}),
  };
}

/** Every tensor of a batched sequence's layer beside its single-sequence copy, by name. */
function cachePairs(batched: BatchCacheLayer, single: BatchCacheLayer): [string, [Tensor, Tensor]][] {
  const pairs: [string, [Tensor, Tensor]][] = [
    ['key cache', [batched.keyCache as Tensor, single.keyCache as Tensor]],
    ['value cache', [batched.valueCache as Tensor, single.valueCache as Tensor]],
  ];
  const add = (name: string, a: unknown, c: unknown) => {
    if (a && c) pairs.push([name, [a as Tensor, c as Tensor]]);
  };
  add('streaming key region', batched.streaming?.keyCache, single.streaming?.keyCache);
  add('streaming value region', batched.streaming?.valueCache, single.streaming?.valueCache);
  add('key scales', batched.quant?.keyScales, single.quant?.keyScales);
  add('value scales', batched.quant?.valueScales, single.quant?.valueScales);
  add('streaming key scales', batched.quant?.streamKeyScales, single.quant?.streamKeyScales);
  add('streaming value scales', batched.quant?.streamValueScales, single.quant?.streamValueScales);
  return pairs;
}

function range<T>(count: number, at: (index: number) => T): T[] {
  return Array.from({ length: count }, (_, index) => at(index));
}

function inverseFrequencies(headDim: number): Float32Array {
  return Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** ((-2 * i) / headDim));
}

async function readAll(b: NativeBackend, tensor: Tensor): Promise<ArrayLike<number>> {
  return tensor.size === 0 ? [] : ((await b.read(tensor)) as ArrayLike<number>);
}

/** The first index where `a` and `c` differ (bit for bit as numbers; NaN equals NaN), or −1. */
function firstDifference(a: ArrayLike<number>, c: ArrayLike<number>): number {
  if (a.length !== c.length) return Math.min(a.length, c.length);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], c[i])) return i;
  return -1;
}

async function sampleOn(
  b: NativeBackend,
  logits: Float32Array,
  vocab: number,
  settings: Float32Array,
): Promise<Int32Array> {
  const rows = logits.length / vocab;
  const logitTensor = b.upload('f32', [rows, vocab], logits);
  const settingTensor = b.upload('f32', [rows, 4], settings);
  const out = b.alloc('i32', [rows]);
  b.sample(logitTensor, settingTensor, out);
  const picked = (await b.read(out)) as Int32Array;
  for (const tensor of [logitTensor, settingTensor, out]) tensor.dispose();
  return picked;
}

/** `sample`'s documented rule for one row, in float64 (see `Backend.sample`). */
export function referenceSample(row: Float32Array, temperature: number, topK: number, topP: number, u: number): number {
  const vocab = row.length;
  const order = range(vocab, (i) => i);
  if (temperature <= 0) return order.reduce((best, i) => ((row[i] as number) > (row[best] as number) ? i : best), 0);
  order.sort((a, c) => (row[c] as number) - (row[a] as number) || a - c);
  const keep = topK >= 1 && Math.trunc(topK) < vocab ? Math.trunc(topK) : vocab;
  const maximum = row[order[0] as number] as number;
  const weights = range(keep, (i) => Math.exp(((row[order[i] as number] as number) - maximum) / temperature));
  let total = weights.reduce((sum, weight) => sum + weight, 0);
  let kept = keep;
  if (topP < 1) {
    let cumulative = 0;
    kept = 0;
    while (kept < keep && cumulative < topP * total) cumulative += weights[kept++] as number;
    total = cumulative;
  }
  let threshold = u * total;
  for (let i = 0; i < kept; i++) {
    threshold -= weights[i] as number;
    if (threshold <= 0) return order[i] as number;
  }
  return order[kept - 1] as number;
}
