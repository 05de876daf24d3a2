// KvPagePool with DualKvCache on the CPU backend: caches take their pages before mapping, a growth the pool cannot give
// fails with nothing mapped, disposal gives every page back, and the pool's own arguments are checked.
import { DuoArgumentError, DuoOutOfMemoryError } from '@duoattn/core';
import { createBackend } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { DualKvCache } from './dual-kv-cache.js';
import { KvPagePool } from './page-pool.js';

const backend = createBackend('cpu');
const config = { numLayers: 2, numKvHeads: 4, headDim: 16 };
const plan = { retrievalHeads: [[0, 2], [1]], kvHeads: 4, sink: 4, recent: 32, sparsity: 0.5 };
const open = (pool: KvPagePool, initialTokens: number) =>
  new DualKvCache(backend, {
    config,
    plan,
    dtype: 'f32',
    maxTokens: 4096,
    chunkTokens: 64,
    blockTokens: 256,
    initialTokens,
    pool,
  });

describe('KvPagePool', () => {
  it('counts each cache’s pages per region as they are mapped, and takes them all back on dispose', () => {
    const pool = new KvPagePool({ budgetBytes: 4096 * 1000, pageBytes: backend.pageBytes });
    const cache = open(pool, 100);
    const bytes = cache.bytes();
    expect(pool.usage().usedPages).toEqual({
      full: pool.pagesFor(bytes.full),
      streaming: pool.pagesFor(bytes.streaming),
    });
    expect(cache.poolPages).toEqual(pool.usage().usedPages);
    cache.reserve(1000);
    expect(pool.usage().usedPages.full).toBe(pool.pagesFor(cache.bytes().full));
    const other = open(pool, 50);
    expect(pool.freePages).toBe(pool.totalPages - pool.usage().usedPages.full - pool.usage().usedPages.streaming);
    cache.dispose();
    other.dispose();
    expect(pool.usage()).toMatchObject({ usedPages: { full: 0, streaming: 0 }, freePages: pool.totalPages });
  });

  it('refuses a growth it cannot give before mapping anything', () => {
    const probe = new KvPagePool({ budgetBytes: 1e9, pageBytes: backend.pageBytes });
    const sizing = open(probe, 256);
    const pages = probe.usage().usedPages.full + probe.usage().usedPages.streaming;
    sizing.dispose();
    const pool = new KvPagePool({ budgetBytes: (pages + 1) * backend.pageBytes, pageBytes: backend.pageBytes });
    const cache = open(pool, 256);
    const capacity = cache.capacity;
    const used = pool.usage().usedPages;
    expect(() => cache.reserve(capacity + 1)).toThrow(DuoOutOfMemoryError);
    expect(() => cache.reserve(capacity + 1)).toThrow(/free pages/);
    expect(cache.capacity).toBe(capacity);
    expect(pool.usage().usedPages).toEqual(used);
    // A cache whose first pages do not fit is never made, and leaves the pool as it was.
    expect(() => open(pool, 256)).toThrow(DuoOutOfMemoryError);
    expect(pool.usage().usedPages).toEqual(used);
    cache.dispose();
    expect(pool.freePages).toBe(pool.totalPages);
  });

  it('checks its arguments', () => {
    expect(() => new KvPagePool({ budgetBytes: -1, pageBytes: 4096 })).toThrow(DuoArgumentError);
    expect(() => new KvPagePool({ budgetBytes: 1e6, pageBytes: 0 })).toThrow(/pageBytes/);
    const pool = new KvPagePool({ budgetBytes: 10 * 4096, pageBytes: 4096 });
    expect(() => pool.give(1, 'full')).toThrow(/at most the 0 pages/);
    expect(() => pool.take(1.5, 'full')).toThrow(DuoArgumentError);
    expect(() => pool.take(11, 'streaming')).toThrow(DuoOutOfMemoryError);
  });
});
