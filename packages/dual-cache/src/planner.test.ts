// The memory planner: the paper's bytes per token for Llama-3-8B, and the inverse (longest context in a budget).
import { type ModelConfig, SHAPES } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { uniformPlan } from './binarize.js';
import { maxContext, planMemory, weightBytes } from './planner.js';

const llama3 = SHAPES['llama-3-8b'] as ModelConfig;

/** Half the KV heads of every layer as retrieval heads. */
const halfPlan = {
  ...uniformPlan('full', 32, 8, 128, 256),
  retrievalHeads: Array.from({ length: 32 }, () => [0, 1, 2, 3]),
  sparsity: 0.5,
};

describe('memory planner', () => {
  it('gives 128 KiB per token for full attention and 64 KiB at 50 % retrieval (Llama-3-8B, bf16)', () => {
    const base = { config: llama3, weightDtype: 'bf16', kvDtype: 'bf16', tokens: 1 << 20 } as const;
    const full = planMemory({ ...base, plan: uniformPlan('full', 32, 8) });
    const duo = planMemory({ ...base, plan: halfPlan });
    expect(full.bytesPerToken).toBe(128 * 1024);
    expect(duo.bytesPerToken).toBe(64 * 1024);
    expect(full.streamingRegion).toBe(0);
    // Streaming heads: (sink 128 + recent 256 + chunk 512) slots × 4 heads × 32 layers × 128 × 2 (K, V) × 2 bytes.
    expect(duo.streamingRegion).toBe(896 * 4 * 32 * 128 * 2 * 2);
    expect(full.fullRegion).toBe(128 * 1024 * (1 << 20));
    // 8.03 B parameters: the matrices in bf16, the 65 norms in f32, and the RoPE frequencies.
    const norms = 65 * 4096;
    expect(weightBytes(llama3, 'bf16')).toBe(2 * (8_030_261_248 - norms) + 4 * norms + 4 * 64);
    // Kept quantized (ADR 0010): every row of Llama-3-8B splits into 32- and 256-value blocks, so each matrix value
    // costs 34 / 32 bytes in Q8_0, 144 / 256 in Q4_K, 210 / 256 in Q6_K.
    const matrices = 8_030_261_248 - norms;
    expect(weightBytes(llama3, 'bf16', 'q8_0')).toBe((matrices * 34) / 32 + 4 * norms + 4 * 64);
    expect(weightBytes(llama3, 'bf16', 'q4_k')).toBe((matrices * 144) / 256 + 4 * norms + 4 * 64);
    expect(weightBytes(llama3, 'bf16', 'q6_k')).toBe((matrices * 210) / 256 + 4 * norms + 4 * 64);
    expect(planMemory({ ...base, plan: halfPlan, weightQuant: 'q4_k' }).weights).toBe(
      weightBytes(llama3, 'bf16', 'q4_k'),
    );
  });

  it('inverts: the longest context fits the budget and one more token does not', () => {
    const input = { config: llama3, plan: halfPlan, weightDtype: 'bf16', kvDtype: 'bf16' } as const;
    const budget = 80e9;
    const tokens = maxContext(input, budget);
    expect(planMemory({ ...input, tokens }).total).toBeLessThanOrEqual(budget);
    expect(planMemory({ ...input, tokens: tokens + 1 }).total).toBeGreaterThan(budget);
    // Half the bytes per token, less the streaming regions' constant share: just under twice full attention's context.
    const full = maxContext({ ...input, plan: uniformPlan('full', 32, 8) }, budget);
    expect(tokens / full).toBeGreaterThan(1.99);
    expect(tokens / full).toBeLessThan(2);
    expect(maxContext(input, 1e9)).toBe(0);
    // With 2 MiB pages (an H100's mapping unit): 8192-token pages of a 256-byte row, and still the exact boundary.
    const paged = { ...input, pageBytes: 2 << 20 };
    const longest = maxContext(paged, budget);
    expect(longest % 8192).toBe(0);
    expect(planMemory({ ...paged, tokens: longest }).total).toBeLessThanOrEqual(budget);
    expect(planMemory({ ...paged, tokens: longest + 1 }).total).toBeGreaterThan(budget);
    // int4's planes (64-byte codes, 4-byte scales) round to their own pages: 32768- and 524288-token units. The longest
    // context is each plane's own boundary, not a multiple of the common unit (which would lose up to half a million
    // tokens: issue 19's capacity runs stopped at 4 194 304 for Q8_0 and Q4_K weights alike).
    const int4 = { ...paged, kvQuant: 'int4', weightDtype: 'q4_k' } as const;
    const most = maxContext(int4, budget);
    expect(most % 524288).not.toBe(0);
    expect(planMemory({ ...int4, tokens: most }).total).toBeLessThanOrEqual(budget);
    expect(planMemory({ ...int4, tokens: most + 1 }).total).toBeGreaterThan(budget);
  });

  it('counts quantized KV bytes per token exactly for every scheme and policy (Llama-3-8B: int4 68 B per head)', () => {
    const base = { config: llama3, weightDtype: 'bf16', kvDtype: 'bf16', tokens: 1 << 20 } as const;
    const perHead = { none: 256, int8: 130, fp8: 130, int4: 68 } as const;
    for (const kvQuant of ['none', 'int8', 'int4', 'fp8'] as const) {
      const full = planMemory({ ...base, plan: uniformPlan('full', 32, 8), kvQuant });
      const duo = planMemory({ ...base, plan: halfPlan, kvQuant });
      expect(full.bytesPerToken).toBe(32 * 8 * 2 * perHead[kvQuant]);
      expect(duo.bytesPerToken).toBe(32 * 4 * 2 * perHead[kvQuant]);
      expect(duo.streamingRegion).toBe(896 * 4 * 32 * 2 * perHead[kvQuant]);
    }
    // int4 + duo 50 % holds about 3.8× the tokens of bf16 full attention in the same budget.
    const input = { config: llama3, weightDtype: 'bf16', kvDtype: 'bf16' } as const;
    const bf16Full = maxContext({ ...input, plan: uniformPlan('full', 32, 8) }, 80e9);
    const int4Duo = maxContext({ ...input, plan: halfPlan, kvQuant: 'int4' }, 80e9);
    expect(int4Duo / bf16Full).toBeGreaterThan(3.7);
  });
});
