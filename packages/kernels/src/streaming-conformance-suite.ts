// Conformance of DuoAttention's streaming heads: cache writes into sinks + ring and attention under the Λ mask (or
// the reference's chunk-wise mask), on every backend, against the float64 reference with the mask applied per head.
import type { DType, StreamingHeads } from '@duoattn/core';
import { DuoArgumentError, DuoOutOfMemoryError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import type { NativeBackend } from './native-backend.js';
import {
  bf16ToNumber,
  f16ToNumber,
  numberToBf16,
  numberToF16,
  randomArray,
  referenceAttention,
  relativeError,
  toMatrix,
} from './testing/reference.js';

const TOLERANCE: Partial<Record<DType, number>> = { f32: 1e-4, f16: 2e-3, bf16: 1e-2, i32: 0, u8: 0 };

interface StreamingCase {
  dtype: DType;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** The KV heads that keep every key (the others stream): not only a prefix, as a session's plan maps them. */
  retrievalHeads: number[];
  sink: number;
  recent: number;
  mask: 'exact' | 'chunked';
  /** Chunk sizes run one after the other; a chunk of 1 goes through attentionDecode with a device-side length. */
  chunks: number[];
}

const CASES: StreamingCase[] = [
  {
    dtype: 'f32',
    heads: 8,
    kvHeads: 2,
    headDim: 16,
    retrievalHeads: [1],
    sink: 4,
    recent: 16,
    mask: 'exact',
    chunks: [37, 1, 1, 64, 7, 1, 40, 1],
  },
  {
    dtype: 'bf16',
    heads: 8,
    kvHeads: 2,
    headDim: 64,
    retrievalHeads: [0],
    sink: 4,
    recent: 16,
    mask: 'chunked',
    chunks: [37, 1, 64, 7, 1, 70, 1],
  },
  {
    dtype: 'f16',
    heads: 4,
    kvHeads: 4,
    headDim: 32,
    retrievalHeads: [1, 3],
    sink: 3,
    recent: 20,
    mask: 'exact',
    chunks: [50, 1, 33, 1, 1, 65],
  },
  {
    dtype: 'bf16',
    heads: 32,
    kvHeads: 8,
    headDim: 128,
    retrievalHeads: [0, 2, 5, 7],
    sink: 16,
    recent: 40,
    mask: 'exact',
    chunks: [130, 1, 64, 1, 99, 1],
  },
  {
    dtype: 'f16',
    heads: 8,
    kvHeads: 2,
    headDim: 64,
    retrievalHeads: [],
    sink: 8,
    recent: 24,
    mask: 'exact',
    chunks: [80, 1, 1, 45, 1],
  },
];

function rounder(dtype: DType): (value: number) => number {
  if (dtype === 'bf16') return (v) => bf16ToNumber(numberToBf16(v));
  if (dtype === 'f16') return (v) => f16ToNumber(numberToF16(v));
  return (v) => Math.fround(v);
}

/** Registers the streaming-heads suite for one backend (skips visibly when it is absent). */
export function streamingConformanceSuite(
  label: string,
  backend: () => NativeBackend | undefined,
  skipReason?: string,
): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`streaming heads: ${label}${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    const b = () => backend() as NativeBackend;

    it.each(
      CASES.map((c) => [
        `${c.dtype} ${c.heads}/${c.kvHeads}×${c.headDim}, full [${c.retrievalHeads.join(',')}], ${c.mask}`,
        c,
      ]),
    )('chunked prefill and decode: %s', async (_name, testCase) => {
      const { dtype, heads, kvHeads, headDim, retrievalHeads, sink, recent, mask, chunks } = testCase as StreamingCase;
      const total = chunks.reduce((a, n) => a + n, 0);
      const ring = recent + Math.max(...chunks);
      const group = heads / kvHeads;
      const retrievalKvHeads = retrievalHeads.length;
      const streamingHeads = kvHeads - retrievalKvHeads;
      // The full heads' caches are paged, as the dual cache makes them: memory is committed chunk by chunk.
      const rowBytes = headDim * (dtype === 'f32' ? 4 : 2);
      const pageRows = b().pageBytes / gcd(b().pageBytes, rowBytes);
      const span = Math.ceil(total / pageRows) * pageRows;
      const keyCache = b().allocPaged(dtype, [retrievalKvHeads, span, headDim]);
      const valueCache = b().allocPaged(dtype, [retrievalKvHeads, span, headDim]);
      const streaming: StreamingHeads = {
        retrievalHeads,
        keyCache: b().alloc(dtype, [streamingHeads, sink + ring, headDim]),
        valueCache: b().alloc(dtype, [streamingHeads, sink + ring, headDim]),
        sink,
        recent,
        mask,
      };
      const frequencies = b().upload(
        'f32',
        [headDim / 2],
        Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** (-(2 * i) / headDim)),
      );
      const round = rounder(dtype);
      // Every key and value of the sequence as the caches hold them (rounded), per KV head and position.
      const keys = Array.from({ length: kvHeads }, () => [] as Float64Array[]);
      const values = Array.from({ length: kvHeads }, () => [] as Float64Array[]);
      const scale = 1 / Math.sqrt(headDim);
      let start = 0;
      for (const [index, rows] of chunks.entries()) {
        const width = kvHeads * headDim;
        const query = b().upload('f32', [rows, heads * headDim], randomArray(rows * heads * headDim, 100 + index, 2));
        const key = b().upload('f32', [rows, width], randomArray(rows * width, 200 + index, 2));
        const valueData = randomArray(rows * width, 300 + index);
        const value = b().upload('f32', [rows, width], valueData);
        const positions = b().upload(
          'i32',
          [rows],
          Int32Array.from({ length: rows }, (_, r) => start + r),
        );
        const attributes = { heads, kvHeads, headDim, interleaved: false };
        for (const cache of [keyCache, valueCache]) {
          expect(b().commitPaged(cache, start + rows)).toBeGreaterThan(start + rows - 1);
        }
        b().ropeWriteCache(query, key, value, positions, frequencies, keyCache, valueCache, {
          ...attributes,
          streaming,
        });
        const rotatedKeys = (await b().read(key)) as Float32Array;
        for (let r = 0; r < rows; r++) {
          for (let h = 0; h < kvHeads; h++) {
            const offset = (r * kvHeads + h) * headDim;
            keys[h]?.push(Float64Array.from(rotatedKeys.subarray(offset, offset + headDim), round));
            values[h]?.push(Float64Array.from(valueData.subarray(offset, offset + headDim), round));
          }
        }
        const out = b().alloc('f32', [rows, heads * headDim]);
        const common = { heads, kvHeads, headDim, scale, keyLength: start + rows, streaming };
        if (rows === 1) {
          b().attentionDecode(query, keyCache, valueCache, out, { ...common, keyLength: 1, lengthFrom: positions });
        } else {
          b().attentionPrefill(query, keyCache, valueCache, out, { ...common, queryStart: start });
        }
        const chunkStart = start;
        const windowStart = (position: number) => (mask === 'chunked' ? chunkStart - recent : position - recent + 1);
        const expected = referenceAttention(
          toMatrix((await b().read(query)) as Float32Array, rows, heads * headDim),
          keys,
          values,
          {
            heads,
            kvHeads,
            headDim,
            scale,
            keyLength: start + rows,
            queryStart: start,
            visible: (position, j, head) =>
              j <= position &&
              (retrievalHeads.includes(Math.floor(head / group)) || j < sink || j >= windowStart(position)),
          },
        );
        const error = relativeError((await b().read(out)) as Float32Array, expected);
        expect(error, `chunk ${index} (${rows} rows from ${start})`).toBeLessThan(TOLERANCE[dtype] as number);
        for (const t of [query, key, value, positions, out]) t.dispose();
        start += rows;
      }
      for (const t of [keyCache, valueCache, streaming.keyCache, streaming.valueCache, frequencies]) t.dispose();
    });

    it('paged tensors reserve address space, map memory in whole pages as asked, and free it', async () => {
      const page = b().pageBytes;
      const rowBytes = 64 * 2;
      const pageRows = page / gcd(page, rowBytes);
      const before = b().memory().allocatedBytes;
      const tensor = b().allocPaged('bf16', [3, 4 * pageRows, 64]);
      expect(b().memory().allocatedBytes).toBe(before);
      expect(b().commitPaged(tensor, 1)).toBe(pageRows);
      expect(b().memory().allocatedBytes - before).toBe(3 * pageRows * rowBytes);
      expect(b().commitPaged(tensor, pageRows + 1)).toBe(2 * pageRows);
      expect(b().commitPaged(tensor, 5)).toBe(2 * pageRows);
      expect(b().memory().allocatedBytes - before).toBe(3 * 2 * pageRows * rowBytes);
      b().fillRandom(tensor, 7);
      let refused = '';
      await b()
        .read(tensor)
        .catch((error: Error) => {
          refused = error.message;
        });
      expect(refused.includes('needs all of it committed')).toBe(true);
      b().commitPaged(tensor, 4 * pageRows);
      const values = (await b().read(tensor)) as Uint16Array;
      expect(values.length).toBe(3 * 4 * pageRows * 64);
      tensor.dispose();
      expect(b().memory().allocatedBytes).toBe(before);
      expect(() => b().allocPaged('bf16', [1, pageRows + 1, 64])).toThrow(DuoArgumentError);
      const plain = b().alloc('f32', [1, 1, 1]);
      expect(() => b().commitPaged(plain, 1)).toThrow('Expected a paged tensor');
      plain.dispose();
    });

    it('paged tensors share whole pages (a write shows through both), copy the partial one, free each page once', async () => {
      const page = b().pageBytes;
      const width = 64;
      const rowBytes = width * 4;
      const pageRows = page / gcd(page, rowBytes);
      const before = b().memory().allocatedBytes;
      const source = b().allocPaged('f32', [2, 4 * pageRows, width]);
      b().commitPaged(source, 4 * pageRows);
      b().fillRandom(source, 3);
      const original = (await b().read(source)) as Float32Array;
      const shared = 2 * pageRows + pageRows / 2;
      const target = b().allocPaged('f32', [2, 3 * pageRows, width]);
      expect(b().sharePaged(target, source, shared)).toBe(3 * pageRows);
      // Two whole pages per span are the source's; the third (partial) page is the target's own.
      expect(b().memory().allocatedBytes - before).toBe(2 * 4 * pageRows * rowBytes + 2 * pageRows * rowBytes);
      const seen = (await b().read(target)) as Float32Array;
      const spanValues = (tensor: Float32Array, span: number, rows: number, length: number) =>
        Array.from(tensor.subarray(span * length * width, (span * length + rows) * width));
      for (const span of [0, 1]) {
        expect(spanValues(seen, span, shared, 3 * pageRows)).toEqual(spanValues(original, span, shared, 4 * pageRows));
      }
      // A write to a shared page shows in the source; one past the shared rows (the copied page) does not.
      const row = new Float32Array(width).fill(42);
      b().write(target, row, (3 * pageRows + 1) * width);
      b().write(target, row, (3 * pageRows + shared) * width);
      const after = (await b().read(source)) as Float32Array;
      expect(Array.from(after.subarray((4 * pageRows + 1) * width, (4 * pageRows + 2) * width))).toEqual(
        Array.from(row),
      );
      expect(after[(4 * pageRows + shared) * width]).toBe(original[(4 * pageRows + shared) * width]);
      // Sharing on from the target (a chain), then freeing in any order: each page once.
      const third = b().allocPaged('f32', [2, 2 * pageRows, width]);
      expect(b().sharePaged(third, target, pageRows)).toBe(pageRows);
      expect(b().memory().allocatedBytes - before).toBe(2 * 4 * pageRows * rowBytes + 2 * pageRows * rowBytes);
      source.dispose();
      expect(b().memory().allocatedBytes - before).toBe(2 * 3 * pageRows * rowBytes);
      b().commitPaged(third, 2 * pageRows);
      const kept = (await b().read(third)) as Float32Array;
      // Span 1, row 1 of the chain's end is the page written through `target` (span 1 starts at 2 · pageRows rows).
      expect(Array.from(kept.subarray((2 * pageRows + 1) * width, (2 * pageRows + 2) * width))).toEqual(
        Array.from(row),
      );
      expect(kept[0]).toBe(original[0]);
      target.dispose();
      expect(b().memory().allocatedBytes - before).toBe(2 * 2 * pageRows * rowBytes);
      third.dispose();
      expect(b().memory().allocatedBytes).toBe(before);
      const plain = b().allocPaged('f32', [2, pageRows, width]);
      b().commitPaged(plain, 1);
      const other = b().allocPaged('f32', [2, pageRows, width]);
      expect(() => b().sharePaged(other, plain, pageRows + 1)).toThrow(DuoArgumentError);
      expect(() => b().sharePaged(plain, other, 0)).toThrow('nothing committed');
      const wrongWidth = b().allocPaged('f32', [2, 2 * pageRows, width / 2]);
      expect(() => b().sharePaged(wrongWidth, plain, 1)).toThrow(DuoArgumentError);
      for (const tensor of [plain, other, wrongWidth]) tensor.dispose();
      expect(b().memory().allocatedBytes).toBe(before);
    });

    // The CPU maps lazily (no out-of-memory point to reach), so this runs on CUDA only.
    (label === 'cuda' ? it : it.skip)(
      'a commit the device cannot back fails as out of memory and leaves the tensor as it was',
      () => {
        const free = b().memory().deviceFreeBytes ?? 0;
        const page = b().pageBytes;
        // Three spans of 40 % of free memory each: the first two map, the third cannot; the first two must be undone.
        const spanRows = Math.floor((0.4 * free) / page) * (page / 2);
        const before = b().memory().allocatedBytes;
        const tensor = b().allocPaged('bf16', [3, spanRows, 1]);
        expect(() => b().commitPaged(tensor, spanRows)).toThrow(DuoOutOfMemoryError);
        expect(b().memory().allocatedBytes).toBe(before);
        // Still usable, and freed cleanly.
        expect(b().commitPaged(tensor, 1)).toBeGreaterThan(0);
        tensor.dispose();
        expect(b().memory().allocatedBytes).toBe(before);
      },
    );

    it('rejects a streaming region too small for the call, naming the argument', () => {
      const keyCache = b().alloc('f32', [1, 64, 16]);
      const valueCache = b().alloc('f32', [1, 64, 16]);
      const region = b().alloc('f32', [1, 4 + 16 + 8, 16]);
      const query = b().alloc('f32', [10, 4 * 16]);
      const out = b().alloc('f32', [10, 4 * 16]);
      const streaming = { retrievalHeads: [1], keyCache: region, valueCache: region, sink: 4, recent: 16 };
      const attributes = { heads: 4, kvHeads: 2, headDim: 16, scale: 0.25, keyLength: 30, queryStart: 20, streaming };
      expect(() => b().attentionPrefill(query, keyCache, valueCache, out, attributes)).toThrow(DuoArgumentError);
      expect(() => b().attentionPrefill(query, keyCache, valueCache, out, attributes)).toThrow(
        'Expected a streaming region of at least sink + recent + rows = 30 slots but received 28',
      );
      expect(() =>
        b().attentionPrefill(query, keyCache, valueCache, out, {
          ...attributes,
          streaming: { ...streaming, retrievalHeads: [3] },
        }),
      ).toThrow('Expected `streaming.retrievalHeads` to be ascending distinct KV heads in [0, 2) but received [3]');
      expect(() =>
        b().attentionPrefill(query, keyCache, valueCache, out, {
          ...attributes,
          streaming: { ...streaming, retrievalHeads: [1, 1] },
        }),
      ).toThrow('ascending distinct KV heads');
      for (const t of [keyCache, valueCache, region, query, out]) t.dispose();
    });
  });
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
