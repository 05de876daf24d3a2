// The prefix cache on the CPU backend: a cache adopts a cached prefix's full-region rows (shared pages, the partial
// page copied) and streaming window, pages are counted once in the pool and all come back, lookups by policy and tokens,
// LRU eviction under the budget.
import type { HeadPlan, KvQuantScheme } from '@duoattn/core';
import { createBackend, type Tensor } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { DualKvCache } from './dual-kv-cache.js';
import { KvPagePool } from './page-pool.js';
import { CachedPrefix, PrefixCache } from './prefix-cache.js';

const backend = createBackend('cpu');
const config = { numLayers: 2, numKvHeads: 2, headDim: 16 };
const plan: HeadPlan = { retrievalHeads: [[0], [0, 1]], kvHeads: 2, sink: 4, recent: 8, sparsity: 0.25 };
const chunkTokens = 32;
const maxTokens = 1024;

function openCache(
  pool: KvPagePool,
  initialTokens: number,
  kvQuant: KvQuantScheme = 'none',
  dtype: 'f32' | 'bf16' = 'f32',
) {
  return new DualKvCache(backend, { config, plan, dtype, maxTokens, chunkTokens, initialTokens, pool, kvQuant });
}

const tokens = (length: number, seed = 1) => Array.from({ length }, (_, i) => (i * 7 + seed) % 251);

/** Rows `from … to − 1` of every span of a [spans, length, width] tensor read from the device. */
async function spanRows(tensor: Tensor, from: number, to: number): Promise<number[][]> {
  const [spans = 0, length = 0, width = 0] = tensor.shape;
  const values = Array.from((await backend.read(tensor)) as ArrayLike<number>);
  return Array.from({ length: spans }, (_, span) =>
    values.slice((span * length + from) * width, (span * length + to) * width),
  );
}

function prefixOf(cache: DualKvCache, pool: KvPagePool, rows: number, seed = 1): CachedPrefix {
  const snapshots = new Map();
  const snapshot = cache.snapshotStreaming(rows);
  if (snapshot) snapshots.set(rows, snapshot);
  return CachedPrefix.fromCache(backend, cache, tokens(rows, seed), snapshots, pool);
}

describe('PrefixCache', () => {
  for (const kvQuant of ['none', 'int4'] as const) {
    it(`a cache adopts a prefix's full rows and streaming window; pages count once and all come back (${kvQuant})`, async () => {
      const before = backend.memory().allocatedBytes;
      const pool = new KvPagePool({ budgetBytes: 64 * 1024 ** 2, pageBytes: backend.pageBytes });
      const source = openCache(pool, maxTokens, kvQuant);
      source.fillRandom(5);
      const rows = 3 * chunkTokens;
      const prefixes = new PrefixCache({ maxPages: pool.totalPages });
      const usedBefore = pool.usage().usedPages.full;
      expect(prefixes.insert(prefixOf(source, pool, rows))).toBe(true);
      // Only the prefix's partial pages are new: the whole ones are the source's.
      const partial = source.fullPages(rows, 'ceil') - source.fullPages(rows, 'floor');
      expect(pool.usage().usedPages.full - usedBefore).toBe(partial);

      const ask = [...tokens(rows), 1, 2, 3];
      expect(prefixes.lookup('another policy', ask, ask.length - 1)).toBeUndefined();
      const match = prefixes.lookup(source.prefixKey, ask, ask.length - 1);
      expect(match?.rows).toBe(rows);
      prefixes.record(match);
      prefixes.record(undefined);
      const target = openCache(pool, 0, kvQuant);
      target.adoptPrefix(match?.prefix as CachedPrefix, rows);
      expect(target.sharedRows).toBe(rows);
      target.reserve(maxTokens);
      const sourcePlanes = source.fullPlanes();
      for (const [layer, planes] of target.fullPlanes().entries()) {
        for (const [index, plane] of planes.entries()) {
          const theirs = sourcePlanes[layer]?.[index] as Tensor;
          expect(await spanRows(plane as Tensor, 0, rows)).toEqual(await spanRows(theirs, 0, rows));
        }
      }
      // The streaming window the next chunk sees: the sinks and the last `recent` positions' ring slots.
      const sourceRings = source.streamingPlanes();
      const ring = plan.recent + chunkTokens;
      const slots = [
        0,
        1,
        2,
        3,
        ...Array.from({ length: plan.recent }, (_, i) => 4 + ((rows - plan.recent + i - 4) % ring)),
      ];
      for (const [layer, planes] of target.streamingPlanes().entries()) {
        for (const [index, plane] of (planes ?? []).entries()) {
          const theirs = sourceRings[layer]?.[index] as Tensor;
          const mine = await spanRows(plane as Tensor, 0, plane.shape[1] ?? 0);
          const expected = await spanRows(theirs, 0, theirs.shape[1] ?? 0);
          const width = plane.shape[2] ?? 0;
          for (const [head, values] of mine.entries()) {
            for (const slot of slots) {
              expect(values.slice(slot * width, (slot + 1) * width)).toEqual(
                expected[head]?.slice(slot * width, (slot + 1) * width),
              );
            }
          }
        }
      }
      // Shared pages count once: the target's own are its partial page onwards.
      const own = target.fullPages(target.capacity, 'ceil') - target.fullPages(rows, 'floor');
      expect(target.poolPages.full).toBe(own);
      source.dispose();
      prefixes.clear();
      expect(prefixes.stats()).toMatchObject({ entries: 0, pages: 0, hits: 1, hitTokens: rows, lookups: 2 });
      // The target still maps the shared pages: they stay counted until it goes.
      expect(pool.usage().usedPages.full).toBe(target.fullPages(target.capacity, 'ceil'));
      target.dispose();
      expect(pool.usage().usedPages).toEqual({ full: 0, streaming: 0 });
      expect(backend.memory().allocatedBytes).toBe(before);
    });
  }

  it('matches the longest chunk boundary both share, only where a snapshot exists', () => {
    const pool = new KvPagePool({ budgetBytes: 64 * 1024 ** 2, pageBytes: backend.pageBytes });
    const source = openCache(pool, maxTokens);
    source.fillRandom(1);
    const snapshots = new Map();
    for (const rows of [chunkTokens, 3 * chunkTokens]) snapshots.set(rows, source.snapshotStreaming(rows));
    const prefix = CachedPrefix.fromCache(backend, source, tokens(3 * chunkTokens), snapshots, pool);
    const prefixes = new PrefixCache({ maxPages: pool.totalPages });
    prefixes.insert(prefix);
    const diverging = [...tokens(2 * chunkTokens + 5), 999];
    // Shares 69 tokens: boundary 64 has no snapshot, 32 has.
    expect(prefixes.lookup(source.prefixKey, diverging, diverging.length - 1)?.rows).toBe(chunkTokens);
    // The whole prefix, but one token must be left to run.
    const same = tokens(3 * chunkTokens);
    expect(prefixes.lookup(source.prefixKey, same, same.length - 1)?.rows).toBe(chunkTokens);
    expect(prefixes.lookup(source.prefixKey, [...same, 7], same.length)?.rows).toBe(3 * chunkTokens);
    expect(prefixes.covers(source.prefixKey, same)).toBe(true);
    source.dispose();
    prefixes.clear();
    expect(pool.usage().usedPages).toEqual({ full: 0, streaming: 0 });
  });

  it('evicts the least recently used entries to stay within its pages', () => {
    const pool = new KvPagePool({ budgetBytes: 64 * 1024 ** 2, pageBytes: backend.pageBytes });
    const caches = [1, 2, 3].map((seed) => {
      const cache = openCache(pool, maxTokens);
      cache.fillRandom(seed);
      return cache;
    });
    const made = caches.map((cache, i) => prefixOf(cache, pool, 2 * chunkTokens, i + 1));
    for (const cache of caches) cache.dispose();
    const one = (made[0] as CachedPrefix).ownPages + (made[0] as CachedPrefix).blocks.reduce((s, b) => s + b.pages, 0);
    const prefixes = new PrefixCache({ maxPages: 2 * one });
    expect(prefixes.insert(made[0] as CachedPrefix)).toBe(true);
    expect(prefixes.insert(made[1] as CachedPrefix)).toBe(true);
    // Using the first makes the second the least recent: the third evicts it.
    const first = [...tokens(2 * chunkTokens, 1), 0];
    const match = prefixes.lookup(caches[0]?.prefixKey as string, first, first.length - 1);
    expect(match?.rows).toBe(2 * chunkTokens);
    prefixes.record(match);
    expect(prefixes.insert(made[2] as CachedPrefix)).toBe(true);
    expect(prefixes.stats()).toMatchObject({ entries: 2, evictions: 1, pages: 2 * one });
    const second = [...tokens(2 * chunkTokens, 2), 0];
    expect(prefixes.lookup(caches[0]?.prefixKey as string, second, second.length - 1)).toBeUndefined();
    prefixes.clear();
    expect(pool.usage().usedPages).toEqual({ full: 0, streaming: 0 });
  });
});
