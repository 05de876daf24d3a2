// DualKvCache on the CPU backend: region shapes per layer, growth by whole pages in place, byte accounting, errors.
import { DuoArgumentError } from '@duoattn/core';
import { createBackend, f16ToNumber, type Tensor } from '@duoattn/kernels';
import { describe, expect, it } from 'vitest';
import { DualKvCache, dualCacheBytes, pageTokens } from './dual-kv-cache.js';

const backend = createBackend('cpu');
const config = { numLayers: 3, numKvHeads: 4, headDim: 16 };
// Layer 0: two retrieval heads; layer 1: none (every head streams); layer 2: all four.
const plan = { retrievalHeads: [[0, 2], [], [0, 1, 2, 3]], kvHeads: 4, sink: 4, recent: 32, sparsity: 0.5 };
const openCache = (blockTokens: number) =>
  new DualKvCache(backend, { config, plan, dtype: 'f32', maxTokens: 10_000, chunkTokens: 64, blockTokens });

describe('DualKvCache', () => {
  it('gives each layer a full region for its retrieval heads and a ring for the rest', () => {
    const before = backend.memory().allocatedBytes;
    const cache = openCache(100);
    const [first, second, third] = cache.layers;
    expect(first?.keyCache.shape).toEqual([2, expect.any(Number), 16]);
    expect(first?.streaming?.keyCache.shape).toEqual([2, 4 + 32 + 64, 16]);
    expect(first?.retrievalHeads).toEqual([0, 2]);
    expect(first?.streaming?.retrievalHeads).toEqual([0, 2]);
    expect(second?.retrievalHeads).toEqual([]);
    expect(second?.streaming?.keyCache.shape).toEqual([4, 100, 16]);
    expect(third?.streaming).toBeUndefined();
    // Whole pages of one head's 64-byte rows, at least the 100-token block.
    const unit = pageTokens(16 * 4, backend.pageBytes);
    expect(cache.capacity).toBe(Math.ceil(100 / unit) * unit);
    expect(backend.memory().allocatedBytes - before).toBe(cache.bytes().full + cache.bytes().streaming);
    expect(cache.bytes()).toEqual(dualCacheBytes(config, plan, 'f32', cache.capacity, 64, backend.pageBytes));
    cache.dispose();
    expect(backend.memory().allocatedBytes).toBe(before);
  });

  it('grows the full regions in place, by whole pages, while the streaming regions stay put', () => {
    const cache = openCache(1);
    const keys = cache.layers[0]?.keyCache;
    const streaming = cache.bytes().streaming;
    const unit = pageTokens(16 * 4, backend.pageBytes);
    expect(cache.reserve(unit + 1)).toBe(true);
    expect(cache.capacity).toBe(2 * unit);
    expect(cache.reserve(unit)).toBe(false);
    expect(cache.layers[0]?.keyCache).toBe(keys);
    expect(cache.bytes().streaming).toBe(streaming);
    expect(cache.bytes().full).toBe((2 + 4) * 2 * unit * 16 * 4 * 2);
    cache.reserve(10_000);
    expect(cache.capacity).toBe(10_000);
    expect(() => cache.reserve(10_001)).toThrow('Expected `tokens` in [0, 10000] (maxTokens) but received 10001');
    cache.dispose();
    expect(() => cache.reserve(1)).toThrow('The cache was disposed');
  });

  it('names what is wrong with its options', () => {
    const options = { config, plan, dtype: 'f32', maxTokens: 100, chunkTokens: 8 } as const;
    expect(() => new DualKvCache(backend, { ...options, config: { ...config, numLayers: 2 } })).toThrow(
      DuoArgumentError,
    );
    expect(() => new DualKvCache(backend, { ...options, config: { ...config, numLayers: 2 } })).toThrow(
      'Expected a head plan for 2 layers × 4 KV heads but received 3 × 4',
    );
    expect(() => new DualKvCache(backend, { ...options, maxTokens: 0 })).toThrow(
      'Expected `maxTokens` to be a positive integer',
    );
    expect(() => new DualKvCache(backend, { ...options, prefillMask: 'blocky' as 'exact' })).toThrow(
      "Expected `prefillMask` to be 'exact' or 'chunked' but received blocky",
    );
  });

  it.each(['int8', 'int4', 'fp8'] as const)(
    'quantized (%s): code and scale planes per region, paged together, every byte as dualCacheBytes counts it',
    async (kvQuant) => {
      const before = backend.memory().allocatedBytes;
      const wide = { ...config, headDim: 128 };
      const cache = new DualKvCache(backend, {
        config: wide,
        plan,
        dtype: 'bf16',
        maxTokens: 10_000,
        chunkTokens: 64,
        blockTokens: 100,
        kvQuant,
      });
      const [first, second] = cache.layers;
      const codeBytes = kvQuant === 'int4' ? 64 : 128;
      const scaleHalves = kvQuant === 'int4' ? 2 : 1;
      expect(first?.keyCache.dtype).toBe('u8');
      expect(first?.keyCache.shape).toEqual([2, expect.any(Number), codeBytes]);
      expect(first?.quant?.keyScales.shape).toEqual([2, first?.keyCache.shape[1], scaleHalves]);
      expect(first?.quant?.streamKeyScales?.shape).toEqual([2, 4 + 32 + 64, scaleHalves]);
      expect(second?.quant?.scheme).toBe(kvQuant);
      expect(backend.memory().allocatedBytes - before).toBe(cache.bytes().full + cache.bytes().streaming);
      expect(cache.bytes()).toEqual(dualCacheBytes(wide, plan, 'bf16', cache.capacity, 64, backend.pageBytes, kvQuant));
      // Growing commits the scales with the codes.
      cache.reserve(5000);
      expect(backend.memory().allocatedBytes - before).toBe(cache.bytes().full + cache.bytes().streaming);
      // Synthetic fill: random rows quantized into every committed position of both regions; the scratch is freed.
      const held = backend.memory().allocatedBytes;
      cache.fillRandom(1);
      expect(backend.memory().allocatedBytes).toBe(held);
      const ringScales = (await backend.read(first?.quant?.streamKeyScales as Tensor)) as Uint16Array;
      const scaleValues = Array.from(
        ringScales.filter((_, i) => i % scaleHalves === 0),
        f16ToNumber,
      );
      expect(scaleValues.every((value) => value > 0)).toBe(true);
      const ringCodes = (await backend.read(first?.streaming?.valueCache as Tensor)) as Uint8Array;
      expect(new Set(ringCodes).size).toBeGreaterThan(100);
      // The full region (paged, so not read back whole here) through attention: finite, non-zero outputs.
      const layer = first as NonNullable<typeof first>;
      const heads = 2 * wide.numKvHeads;
      const query = backend.alloc('f32', [1, heads * 128]);
      backend.fillRandom(query, 7);
      const out = backend.alloc('f32', [1, heads * 128]);
      backend.attentionDecode(query, layer.keyCache as Tensor, layer.valueCache as Tensor, out, {
        heads,
        kvHeads: wide.numKvHeads,
        headDim: 128,
        scale: 1 / Math.sqrt(128),
        keyLength: cache.capacity,
        streaming: layer.streaming,
        quant: layer.quant,
      });
      const attended = (await backend.read(out)) as Float32Array;
      expect(attended.every(Number.isFinite)).toBe(true);
      expect(attended.filter((value) => value !== 0).length).toBeGreaterThan(attended.length / 2);
      query.dispose();
      out.dispose();
      cache.dispose();
      expect(backend.memory().allocatedBytes).toBe(before);
    },
  );
});
