import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { HfTokenizer } from '@duoattn/model';
import { describe, expect, it } from 'vitest';
import { linspace, NATO_ALPHABET, needleText, PasskeyData, questionText, readHaystack } from './dataset.js';
import { learningRateMultiplier } from './schedule.js';

// Byte-level stand-in tokenizer: one id per UTF-8 byte, BOS = 256.
const bytes = {
  bosTokenId: 256,
  encode: (text: string) => Array.from(new TextEncoder().encode(text)),
};
const decode = (ids: ArrayLike<number>) => new TextDecoder().decode(Uint8Array.from(Array.from(ids)));
const prose = 'It is a truth universally acknowledged, that a single man in possession of a good fortune. ';
const haystack = bytes.encode(prose.repeat(40));

describe('PasskeyData', () => {
  const data = new PasskeyData({ haystack, tokenizer: bytes, contextMin: 5000, contextMax: 12000, seed: 7 });

  it('offers the reference grid of lengths and builds context + suffix of the drawn length', () => {
    expect(data.lengths).toHaveLength(50);
    expect(data.lengths[0]).toBe(5000);
    expect(data.lengths.at(-1)).toBe(12000);
    for (const step of [0, 1, 2, 17]) {
      const sample = data.sample(step);
      expect(data.lengths).toContain(sample.contextTokens);
      // BOS, then exactly contextTokens of haystack and needles, then the suffix.
      expect(sample.ids[0]).toBe(256);
      expect(sample.answerStart).toBe(1 + sample.contextTokens);
      const suffix = sample.passkeys.map((passkey, i) => questionText(i, passkey)).join('');
      expect(decode(sample.ids.subarray(sample.answerStart))).toBe(suffix);
    }
  });

  it('hides ten passkeys of 32 NATO words at sorted depths, each needle where its depth says', () => {
    const sample = data.sample(3);
    expect(sample.passkeys).toHaveLength(10);
    for (const passkey of sample.passkeys) {
      const words = passkey.split(' ');
      expect(words).toHaveLength(32);
      for (const word of words) expect(NATO_ALPHABET).toContain(word);
    }
    expect([...sample.depths].sort((a, b) => a - b)).toEqual(sample.depths);
    expect(new Set(sample.depths).size).toBe(10);
    for (const depth of sample.depths) {
      expect(depth).toBeGreaterThanOrEqual(0.05);
      expect(depth).toBeLessThanOrEqual(0.95);
    }
    const needleBytes = sample.passkeys.reduce((sum, passkey, i) => sum + needleText(i, passkey).length, 0);
    const fill = sample.contextTokens - needleBytes;
    let before = 0;
    sample.passkeys.forEach((passkey, i) => {
      const start = sample.needleStarts[i] as number;
      const text = needleText(i, passkey);
      expect(decode(sample.ids.subarray(start, start + text.length))).toBe(text);
      // Haystack tokens before needle i: round(depth_i × fill).
      expect(start - 1 - before).toBe(Math.round((sample.depths[i] as number) * fill));
      before += text.length;
    });
  });

  it('depends only on (seed, step): the same sample again, another for another step or seed', () => {
    const again = new PasskeyData({ haystack, tokenizer: bytes, contextMin: 5000, contextMax: 12000, seed: 7 });
    expect(Array.from(again.sample(5).ids)).toEqual(Array.from(data.sample(5).ids));
    expect(data.sample(5).passkeys).not.toEqual(data.sample(6).passkeys);
    const other = new PasskeyData({ haystack, tokenizer: bytes, contextMin: 5000, contextMax: 12000, seed: 8 });
    expect(other.sample(5).passkeys).not.toEqual(data.sample(5).passkeys);
  });

  it('reads a short haystack cyclically and a tokenizer without BOS starts with the context', () => {
    const short = new PasskeyData({
      haystack: bytes.encode('ab'),
      tokenizer: { encode: bytes.encode, bosTokenId: undefined },
      contextMin: 4000,
      contextMax: 4000,
      passkeys: 2,
      wordsPerPasskey: 3,
    });
    const sample = short.sample(0);
    expect(sample.contextTokens).toBe(4000);
    expect(sample.answerStart).toBe(4000);
    const head = decode(sample.ids.subarray(0, sample.needleStarts[0] as number));
    // The haystack "ab" read from a random offset, over and over.
    expect(head).toMatch(/^[ab]+$/);
    expect(head).not.toMatch(/aa|bb/);
  });

  it('rejects contexts too short for the needles and malformed options, naming the argument', () => {
    const make = (options: Partial<ConstructorParameters<typeof PasskeyData>[0]>) =>
      new PasskeyData({ haystack, tokenizer: bytes, contextMin: 5000, contextMax: 12000, ...options });
    expect(() => make({ contextMin: 1000 })).toThrow(
      /`contextMin` above \d+ tokens \(10 needles of up to \d+ tokens\)/,
    );
    expect(() => make({ contextMax: 2000 })).toThrow(DuoArgumentError);
    expect(() => make({ contextMax: 2000 })).toThrow('`contextMax`');
    expect(() => make({ passkeys: 0 })).toThrow('`passkeys`');
    expect(() => make({ passkeys: 21 })).toThrow('`passkeys`');
    expect(() => make({ haystack: [] })).toThrow('Expected a haystack of at least one token but received an empty one');
    expect(() => make({}).sample(-1)).toThrow('`step`');
    expect(() => make({}).sample(1.5)).toThrow('`step`');
  });

  it('encodes through a real tokenizer (the demo model): the suffix decodes to the questions and answers', () => {
    const tokenizer = new HfTokenizer(resolve(import.meta.dirname, '../../../models/duo-demo'));
    const real = new PasskeyData({
      haystack: tokenizer.encode(prose.repeat(200), { addBos: false }),
      tokenizer,
      contextMin: 4096,
      contextMax: 16384,
      seed: 42,
    });
    const sample = real.sample(0);
    const suffix = sample.passkeys.map((passkey, i) => questionText(i, passkey)).join('');
    expect(tokenizer.decode(Array.from(sample.ids.subarray(sample.answerStart)))).toBe(suffix);
    expect(sample.ids.length - sample.answerStart).toBe(tokenizer.encode(suffix, { addBos: false }).length);
  });
});

describe('readHaystack', () => {
  it('reads a file, or the .txt files of a directory in name order', () => {
    const directory = mkdtempSync(join(tmpdir(), 'haystack-'));
    writeFileSync(join(directory, 'b.txt'), 'second');
    writeFileSync(join(directory, 'a.txt'), 'first');
    writeFileSync(join(directory, 'notes.md'), 'ignored');
    expect(readHaystack(directory)).toBe('first\n\nsecond');
    expect(readHaystack(join(directory, 'b.txt'))).toBe(readFileSync(join(directory, 'b.txt'), 'utf8'));
    const empty = mkdtempSync(join(tmpdir(), 'haystack-'));
    expect(() => readHaystack(empty)).toThrow(`Expected .txt files in "${empty}" but found none`);
  });
});

describe('learningRateMultiplier', () => {
  it('warms up and decays over a fifth of the steps each, never below 0.1 (the reference schedule)', () => {
    expect(learningRateMultiplier(0, 2000)).toBe(0.1);
    expect(learningRateMultiplier(99, 2000)).toBeCloseTo(0.25, 12);
    expect(learningRateMultiplier(399, 2000)).toBe(1);
    expect(learningRateMultiplier(1000, 2000)).toBe(1);
    expect(learningRateMultiplier(1700, 2000)).toBeCloseTo(0.75, 12);
    expect(learningRateMultiplier(1999, 2000)).toBe(0.1);
    expect(linspace(1000, 32000, 50)[1]).toBeCloseTo(1000 + 31000 / 49, 9);
    expect(() => learningRateMultiplier(2000, 2000)).toThrow('`step`');
    expect(() => learningRateMultiplier(0, 0)).toThrow('`totalSteps`');
  });
});
