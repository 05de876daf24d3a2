// Test support: context parallelism at the op level (ADR 0011). A sequence's keys are dealt to 2, 3 and 4 ranks in
// chunks (ropeWriteCache with a shard); each rank's attentionPartial over its own caches, merged in rank order by
// mergeAttention, must equal the single-device attention over the whole cache — prefill chunks and decode rows, every
// cache kind (f32, bf16, int8, int4, fp8), full and DuoAttention layouts. And mergeAttention against float64.
import type { ContextShard, KvQuantScheme, QuantizedKv, StreamingHeads } from '@duoattn/core';
import { DuoArgumentError } from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/kv-quant';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';
import type { Tensor } from './tensor.js';
import { randomArray, relativeError } from './testing/reference.js';

type CacheKind = 'f32' | 'bf16' | Exclude<KvQuantScheme, 'none'>;

const HEADS = 8;
const KV_HEADS = 2;
const HEAD_DIM = 64;
const CHUNK = 8;
const SINK = 4;
const RECENT = 12;
/** Prefill chunks (one shard chunk each, the last one short), then decode rows: 45 tokens. */
const STEPS = [8, 8, 8, 8, 5, 1, 1, 1, 1, 1, 1];
const TOTAL = STEPS.reduce((sum, rows) => sum + rows, 0);
const ROPE = { heads: HEADS, kvHeads: KV_HEADS, headDim: HEAD_DIM, interleaved: false };

/** One rank's (or the single device's) caches of one layer, and everything its ops take about them. */
interface Caches {
  readonly keyCache: Tensor;
  readonly valueCache: Tensor;
  readonly streaming?: StreamingHeads;
  readonly quant?: QuantizedKv;
  readonly owned: Tensor[];
}

function makeCaches(b: NativeBackend, kind: CacheKind, duo: boolean, capacity: number): Caches {
  const owned: Tensor[] = [];
  const keep = (tensor: Tensor) => {
    owned.push(tensor);
    return tensor;
  };
  const retrievalHeads = duo ? [1] : [0, 1];
  const planes = (heads: number, slots: number) => {
    if (kind === 'f32' || kind === 'bf16') {
      return { codes: keep(b.alloc(kind, [heads, slots, HEAD_DIM])), scales: undefined };
    }
    const { codeBytes, scaleHalves } = kvQuantLayout(kind, HEAD_DIM);
    return {
      codes: keep(b.alloc('u8', [heads, slots, codeBytes])),
      scales: keep(b.alloc('f16', [heads, slots, scaleHalves])),
    };
  };
  const key = planes(retrievalHeads.length, capacity);
  const value = planes(retrievalHeads.length, capacity);
  const regionSlots = SINK + RECENT + Math.max(...STEPS);
  const regionKey = duo ? planes(KV_HEADS - retrievalHeads.length, regionSlots) : undefined;
  const regionValue = duo ? planes(KV_HEADS - retrievalHeads.length, regionSlots) : undefined;
  const streaming: StreamingHeads | undefined =
    regionKey && regionValue
      ? { retrievalHeads, keyCache: regionKey.codes, valueCache: regionValue.codes, sink: SINK, recent: RECENT }
      : undefined;
  const quant: QuantizedKv | undefined =
    kind === 'f32' || kind === 'bf16'
      ? undefined
      : {
          scheme: kind,
          keyScales: key.scales as Tensor,
          valueScales: value.scales as Tensor,
          ...(regionKey && regionValue
            ? { streamKeyScales: regionKey.scales as Tensor, streamValueScales: regionValue.scales as Tensor }
            : {}),
        };
  return {
    keyCache: key.codes,
    valueCache: value.codes,
    ...(streaming ? { streaming } : {}),
    ...(quant ? { quant } : {}),
    owned,
  };
}

/** The slots a rank needs for `tokens` positions: its whole chunks, rounded up. */
function rankCapacity(ranks: number, tokens: number): number {
  return Math.ceil(Math.ceil(tokens / CHUNK) / ranks) * CHUNK;
}

/** How close a backend's merged partials must come to its single-device attention. */
export interface ContextParallelSupport {
  /** Relative error allowed between the merged partials and the single-device op, by cache kind. */
  readonly tolerance: (kind: CacheKind) => number;
}

/** Registers the suite for one backend; `backend()` is undefined when it is absent (the tests then skip visibly). */
export function contextParallelSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  support: ContextParallelSupport,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`context parallelism: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    const b = () => backend() as NativeBackend;

    it('mergeAttention weighs each part by its log-sum-exp, in part order (float64 reference)', async () => {
      const [parts, rows, heads, headDim] = [3, 5, 4, 16];
      const width = heads * headDim + heads;
      const data = randomArray(parts * rows * width, 7, 1);
      // Some heads seen by one part only (the others −∞), one row and head seen by none.
      for (let p = 0; p < parts; p++) {
        for (let r = 0; r < rows; r++) {
          const lse = (p * rows + r) * width + heads * headDim;
          for (let h = 0; h < heads; h++) data[lse + h] = (data[lse + h] ?? 0) * 3;
          if (p > 0) data[lse + 1] = Number.NEGATIVE_INFINITY;
          if (r === 2) data[lse + 3] = Number.NEGATIVE_INFINITY;
        }
      }
      const expected = new Float64Array(rows * heads * headDim);
      for (let r = 0; r < rows; r++) {
        for (let h = 0; h < heads; h++) {
          const lses = Array.from({ length: parts }, (_, p) => data[(p * rows + r) * width + heads * headDim + h] ?? 0);
          const largest = Math.max(...lses);
          if (largest === Number.NEGATIVE_INFINITY) continue;
          const weights = lses.map((lse) => Math.exp(lse - largest));
          const total = weights.reduce((sum, weight) => sum + weight, 0);
          for (let c = 0; c < headDim; c++) {
            let value = 0;
            for (let p = 0; p < parts; p++)
              value += (weights[p] ?? 0) * (data[(p * rows + r) * width + h * headDim + c] ?? 0);
            expected[(r * heads + h) * headDim + c] = value / total;
          }
        }
      }
      const partsTensor = b().upload('f32', [parts * rows, width], data);
      const out = b().alloc('f32', [rows, heads * headDim]);
      try {
        b().mergeAttention(partsTensor, out, { parts, heads, headDim });
        const merged = (await b().read(out)) as Float32Array;
        expect(relativeError(merged, expected)).toBeLessThan(1e-6);
        // A head only part 0 saw is part 0's output exactly.
        for (let c = 0; c < headDim; c++) expect(merged[(0 * heads + 1) * headDim + c]).toBe(data[1 * headDim + c]);
        expect(() => b().mergeAttention(partsTensor, out, { parts: 2, heads, headDim })).toThrow(DuoArgumentError);
        expect(() => b().mergeAttention(partsTensor, out, { parts: 2, heads, headDim })).toThrow(/`parts`/);
      } finally {
        partsTensor.dispose();
        out.dispose();
      }
    });

    const cases: [number, CacheKind, boolean][] = [];
    for (const ranks of [2, 3, 4])
      for (const kind of ['f32', 'bf16', 'int8', 'int4', 'fp8'] as const)
        for (const duo of [false, true]) cases.push([ranks, kind, duo]);

    it.each(cases)(
      `%i ranks, %s caches, duo %s: merged partials equal the single-device attention (prefill chunks and decode rows)`,
      async (ranks, kind, duo) => {
        const single = makeCaches(b(), kind, duo, TOTAL);
        const shards: ContextShard[] = Array.from({ length: ranks }, (_, rank) => ({ ranks, rank, chunk: CHUNK }));
        const rankCaches = shards.map(() => makeCaches(b(), kind, duo, rankCapacity(ranks, TOTAL)));
        const frequencies = b().upload(
          'f32',
          [HEAD_DIM / 2],
          Float32Array.from({ length: HEAD_DIM / 2 }, (_, i) => 10000 ** ((-2 * i) / HEAD_DIM)),
        );
        const made: Tensor[] = [frequencies];
        const upload = (values: Float32Array, width: number, rows: number) => {
          const tensor = b().upload('f32', [rows, width], values);
          made.push(tensor);
          return tensor;
        };
        try {
          let start = 0;
          for (const [step, rows] of STEPS.entries()) {
            const values = {
              query: randomArray(rows * HEADS * HEAD_DIM, 100 + step, 1),
              key: randomArray(rows * KV_HEADS * HEAD_DIM, 200 + step, 1),
              value: randomArray(rows * KV_HEADS * HEAD_DIM, 300 + step, 1),
            };
            const positions = b().upload(
              'i32',
              [rows],
              Int32Array.from({ length: rows }, (_, i) => start + i),
            );
            made.push(positions);
            const attention = {
              heads: HEADS,
              kvHeads: KV_HEADS,
              headDim: HEAD_DIM,
              scale: 1 / Math.sqrt(HEAD_DIM),
              keyLength: start + rows,
              queryStart: start,
            };
            // This step's rows rotated and written into `target` (with `shard`: the rows its rank holds).
            const write = (target: Caches, shard?: ContextShard) => {
              const rotated = upload(values.query, HEADS * HEAD_DIM, rows);
              const cacheAttributes = {
                ...(target.streaming ? { streaming: target.streaming } : {}),
                ...(target.quant ? { quant: target.quant } : {}),
                ...(shard ? { shard } : {}),
              };
              b().ropeWriteCache(
                rotated,
                upload(values.key, KV_HEADS * HEAD_DIM, rows),
                upload(values.value, KV_HEADS * HEAD_DIM, rows),
                positions,
                frequencies,
                target.keyCache,
                target.valueCache,
                { ...ROPE, ...cacheAttributes },
              );
              return { query: rotated, cacheAttributes };
            };
            // The single device.
            const { query, cacheAttributes } = write(single);
            const expectedOut = b().alloc('f32', [rows, HEADS * HEAD_DIM]);
            made.push(expectedOut);
            b().attentionPrefill(query, single.keyCache, single.valueCache, expectedOut, {
              ...attention,
              ...cacheAttributes,
            });
            // Every rank: the same rows, its shard of the keys, its partial.
            const width = HEADS * (HEAD_DIM + 1);
            const gathered = new Float32Array(ranks * rows * width);
            for (const [rank, caches] of rankCaches.entries()) {
              const { query: rankQuery, cacheAttributes: rankAttributes } = write(caches, shards[rank]);
              const partialOut = b().alloc('f32', [rows, width]);
              made.push(partialOut);
              b().attentionPartial(rankQuery, caches.keyCache, caches.valueCache, partialOut, {
                ...attention,
                ...rankAttributes,
              });
              const rowsRead = (await b().read(partialOut)) as Float32Array;
              if (duo && rank > 0) {
                // Streaming KV head 0 (query heads 0 … 3) is rank 0's alone.
                for (let r = 0; r < rows; r++) {
                  expect(rowsRead[r * width + HEADS * HEAD_DIM]).toBe(Number.NEGATIVE_INFINITY);
                  expect(rowsRead[r * width]).toBe(0);
                }
              }
              gathered.set(rowsRead, rank * rows * width);
            }
            const parts = upload(gathered, width, ranks * rows);
            const merged = b().alloc('f32', [rows, HEADS * HEAD_DIM]);
            made.push(merged);
            b().mergeAttention(parts, merged, { parts: ranks, heads: HEADS, headDim: HEAD_DIM });
            const expected = (await b().read(expectedOut)) as Float32Array;
            expect(
              relativeError((await b().read(merged)) as Float32Array, expected),
              `step ${step} (${rows} rows at ${start})`,
            ).toBeLessThan(support.tolerance(kind));
            start += rows;
          }
          if (kind === 'f32') {
            // Each rank's main caches hold exactly its chunks' rows, in position order.
            const whole = (await b().read(single.keyCache)) as Float32Array;
            const heads = duo ? 1 : KV_HEADS;
            for (const [rank, caches] of rankCaches.entries()) {
              const held = (await b().read(caches.keyCache)) as Float32Array;
              const capacity = caches.keyCache.shape[1] ?? 0;
              for (let position = 0; position < TOTAL; position++) {
                if (Math.floor(position / CHUNK) % ranks !== rank) continue;
                const slot = Math.floor(position / CHUNK / ranks) * CHUNK + (position % CHUNK);
                for (let h = 0; h < heads; h++) {
                  const from = (h * TOTAL + position) * HEAD_DIM;
                  const at = (h * capacity + slot) * HEAD_DIM;
                  expect(Array.from(held.subarray(at, at + HEAD_DIM))).toEqual(
                    Array.from(whole.subarray(from, from + HEAD_DIM)),
                  );
                }
              }
            }
          }
        } finally {
          for (const tensor of [...made, ...single.owned, ...rankCaches.flatMap((caches) => caches.owned)])
            tensor.dispose();
        }
      },
    );

    it('checks the shard and the rank’s room before the call', () => {
      const caches = makeCaches(b(), 'f32', false, 8);
      const query = b().alloc('f32', [1, HEADS * HEAD_DIM]);
      const out = b().alloc('f32', [1, HEADS * (HEAD_DIM + 1)]);
      const attributes = { heads: HEADS, kvHeads: KV_HEADS, headDim: HEAD_DIM, scale: 0.125 };
      try {
        // 2 ranks, chunks of 8: rank 0 holds chunks 0, 2 and 4 of the first 40 positions, 24 keys for 8 slots.
        expect(() =>
          b().attentionPartial(query, caches.keyCache, caches.valueCache, out, {
            ...attributes,
            keyLength: 40,
            queryStart: 39,
            shard: { ranks: 2, rank: 0, chunk: 8 },
          }),
        ).toThrow("this rank's keys to fit its caches: 24 of 40 keys for 8 slots");
        expect(() =>
          b().attentionPartial(query, caches.keyCache, caches.valueCache, out, {
            ...attributes,
            keyLength: 4,
            queryStart: 3,
            shard: { ranks: 2, rank: 2, chunk: 8 },
          }),
        ).toThrow('`shard.rank`');
      } finally {
        for (const tensor of [query, out, ...caches.owned]) tensor.dispose();
      }
    });
  });
}
