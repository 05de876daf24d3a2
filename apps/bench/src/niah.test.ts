import { describe, expect, it } from 'vitest';
import { NIAH, rouge1F } from './commands/niah.js';

describe('niah scoring', () => {
  it('ROUGE-1 F is 1 for the fact, a harmonic mean of unigram precision and recall otherwise, 0 without overlap', () => {
    const fact = 'eat a sandwich and sit in Dolores Park on a sunny day.';
    expect(rouge1F(fact, fact)).toBe(1);
    expect(rouge1F('Eat a sandwich, and sit in Dolores Park on a sunny day', fact)).toBe(1);
    // 3 of the candidate's 4 words are in the 12-word reference: P = 3/4, R = 3/12, F = 2PR/(P + R) = 0.375.
    expect(rouge1F('eat a sandwich quickly', fact)).toBeCloseTo(0.375, 12);
    expect(rouge1F('go hiking', fact)).toBe(0);
    expect(rouge1F('', fact)).toBe(0);
  });

  it('scores only the first sentence of the answer', () => {
    const { expected } = NIAH.trial(() => 0);
    expect(NIAH.score(` ${expected} Then she went home and slept for a long time.`, expected)).toBe(1);
    // Only " to read a book." counts: "a" is its one shared word (P = 1/4, R = 1/12, F = 0.125).
    expect(NIAH.score(' to read a book. Eat a sandwich and sit in Dolores Park.', expected)).toBeCloseTo(0.125, 12);
  });
});
