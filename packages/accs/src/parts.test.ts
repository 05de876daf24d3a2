// Perturbations, compressibility and collapse diagnostics.
import { seededRandom } from '@duoattn/model';
import { describe, expect, it } from 'vitest';
import { collapseDiagnostics, unigramPrior } from './collapse.js';
import { compressibility, lzmaRatio, tokenBytes } from './compress.js';
import { perturbPrefix } from './perturb.js';
import { syntheticDocuments } from './synthetic.js';

describe('perturbPrefix', () => {
  const prefix = Array.from({ length: 50 }, (_, i) => (i * 7) % 40);
  const context = (seed: number) => ({ random: seededRandom(seed), vocabSize: 40, special: new Set([0, 1]) });

  it('shuffle permutes the prefix: same tokens, another order, the same for the same seed', () => {
    const shuffled = perturbPrefix('shuffle', prefix, context(3));
    expect([...shuffled].sort((a, b) => a - b)).toEqual([...prefix].sort((a, b) => a - b));
    expect(shuffled).not.toEqual(prefix);
    expect(perturbPrefix('shuffle', prefix, context(3))).toEqual(shuffled);
    expect(perturbPrefix('shuffle', prefix, context(4))).not.toEqual(shuffled);
  });

  it('random draws ordinary ids below the vocabulary; document takes the donor; truncate drops the prefix', () => {
    const random = perturbPrefix('random', prefix, context(5));
    expect(random).toHaveLength(50);
    expect(random.every((id) => id >= 2 && id < 40)).toBe(true);
    expect(new Set(random).size).toBeGreaterThan(20);
    const donor = Array.from({ length: 80 }, (_, i) => 100 + i);
    expect(perturbPrefix('document', prefix, { ...context(1), donor })).toEqual(donor.slice(0, 50));
    expect(perturbPrefix('truncate', prefix, context(1))).toEqual([]);
  });

  it('names what is wrong', () => {
    expect(() => perturbPrefix('reverse' as never, prefix, context(1))).toThrow(
      /one of shuffle, random, document, truncate/,
    );
    expect(() => perturbPrefix('document', prefix, { ...context(1), donor: [1, 2] })).toThrow(/donor of at least 50/);
    expect(() => perturbPrefix('random', prefix, { ...context(1), vocabSize: 2 })).toThrow(/No ordinary token/);
  });
});

describe('compressibility', () => {
  it('repetitive sequences compress far better than random ones; ids are packed as u16 (u32 past 65535)', () => {
    const random = seededRandom(9);
    const periodic = Array.from({ length: 2000 }, (_, i) => [5, 17, 3, 99][i % 4] as number);
    const noisy = Array.from({ length: 2000 }, () => Math.floor(random() * 50000));
    const regular = compressibility(periodic, 'abcd'.repeat(500));
    expect(regular.tokens).toBeLessThan(0.05);
    expect(regular.text).toBeLessThan(0.05);
    expect(compressibility(noisy).tokens).toBeGreaterThan(0.4);
    expect(compressibility(noisy).text).toBeUndefined();
    expect(Array.from(tokenBytes([1, 258]))).toEqual([1, 0, 2, 1]);
    expect(Array.from(tokenBytes([1, 70000]))).toEqual([1, 0, 0, 0, 0x70, 0x11, 1, 0]);
    expect(lzmaRatio(new Uint8Array(0))).toBeNaN();
  });
});

describe('collapse diagnostics', () => {
  it('uniform logits: entropy log V, KL to uniform 0; a sharp distribution: entropy near 0', () => {
    const vocab = 8;
    const prior = unigramPrior([[0, 0, 0, 1]], vocab);
    expect(prior.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(prior[0]).toBeCloseTo(4 / 12, 12); // add-one smoothing: (3 + 1) / (4 + 8)
    const flat = collapseDiagnostics(new Float32Array(2 * vocab).fill(0.5), vocab, prior);
    expect(flat.entropy).toBeCloseTo(Math.log(vocab), 10);
    expect(flat.klUniform).toBeCloseTo(0, 10);
    // KL(uniform ‖ prior) = Σ (1/V)(log(1/V) − log prior_i)
    const expected = Array.from(prior).reduce((sum, q) => sum + (1 / vocab) * (Math.log(1 / vocab) - Math.log(q)), 0);
    expect(flat.klUnigram).toBeCloseTo(expected, 10);
    const sharp = new Float32Array(vocab).fill(-30);
    sharp[3] = 30;
    const peaked = collapseDiagnostics(sharp, vocab, prior);
    expect(peaked.entropy).toBeLessThan(1e-6);
    expect(peaked.klUnigram).toBeCloseTo(-Math.log(prior[3] as number), 5);
    expect(() => collapseDiagnostics(new Float32Array(5), vocab, prior)).toThrow(/rows of 8 logits/);
  });
});

describe('syntheticDocuments', () => {
  it('repeats a random segment of the period, with noise as the compressibility dial', () => {
    const special = new Set([0, 1, 2]);
    const [clean] = syntheticDocuments({
      documents: 1,
      length: 400,
      period: 7,
      noise: 0,
      vocabSize: 50,
      special,
      seed: 1,
    });
    expect(clean?.slice(0, 7)).toEqual(clean?.slice(7, 14));
    expect(clean?.every((id) => id > 2 && id < 50)).toBe(true);
    const ratio = (noise: number) =>
      compressibility(
        syntheticDocuments({ documents: 1, length: 4000, period: 16, noise, vocabSize: 256, seed: 2 })[0] ?? [],
      ).tokens;
    expect(ratio(0)).toBeLessThan(ratio(0.2));
    expect(ratio(0.2)).toBeLessThan(ratio(1));
    const documents = syntheticDocuments({ documents: 3, length: 10, period: 4, noise: 0.5, vocabSize: 9, seed: 3 });
    expect(documents).toHaveLength(3);
    expect(documents[0]).not.toEqual(documents[1]);
    expect(() => syntheticDocuments({ documents: 1, length: 10, period: 0, noise: 0, vocabSize: 9 })).toThrow(
      /`period`/,
    );
    expect(() => syntheticDocuments({ documents: 1, length: 10, period: 2, noise: 2, vocabSize: 9 })).toThrow(
      /`noise` in \[0, 1\]/,
    );
  });
});
