// Weights kept in GGUF block formats on the CPU backend, against float64 over the decoded values: Q8_0 by integer
// products over x rounded to int8 pieces (the default, ADR 0012) and with exact x (`cpuIntegerQ8: false`).
import { quantizeWeights } from '@duoattn/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from './resolve-backend.js';
import { randomArray } from './testing/reference.js';
import { weightBlocksSuite } from './weight-blocks-suite.js';

const cpu = createBackend('cpu');
weightBlocksSuite('cpu', () => cpu, undefined, true);

describe('cpuIntegerQ8: false (exact x)', () => {
  beforeAll(() => cpu.tune({ cpuIntegerQ8: false }));
  afterAll(() => cpu.tune({}));
  weightBlocksSuite('cpu with exact x', () => cpu);
});

describe('integer Q8_0 products (the default)', () => {
  it("Q8_0: x's infinities and NaNs reach the products as NaN, zero rows give zeros, other rows unchanged", async () => {
    // k = 96: a block pair and a lone last block; rows 1 and 3 hold a NaN and an infinity in different pieces.
    const [n, k, m] = [4, 96, 10];
    const weight = cpu.upload('q8_0', [m, k], quantizeWeights('q8_0', randomArray(m * k, 31, 0.1)));
    const input = randomArray(n * k, 32, 1);
    input.fill(0, 2 * k, 3 * k);
    const clean = cpu.upload('f32', [n, k], input);
    input[k + 40] = Number.NaN;
    input[3 * k + 70] = Number.POSITIVE_INFINITY;
    const hostile = cpu.upload('f32', [n, k], input);
    const outs = [cpu.alloc('f32', [n, m]), cpu.alloc('f32', [n, m])];
    cpu.matmul(clean, weight, outs[0] as never);
    cpu.matmul(hostile, weight, outs[1] as never);
    const [before, after] = [
      (await cpu.read(outs[0] as never)) as Float32Array,
      (await cpu.read(outs[1] as never)) as Float32Array,
    ];
    expect(Array.from(after.subarray(0, m))).toEqual(Array.from(before.subarray(0, m)));
    expect(after.subarray(m, 2 * m).every(Number.isNaN)).toBe(true);
    expect(Array.from(after.subarray(2 * m, 3 * m))).toEqual(new Array(m).fill(0));
    expect(after.subarray(3 * m).every(Number.isNaN)).toBe(true);
    for (const tensor of [weight, clean, hostile, ...outs]) tensor.dispose();
  });
});
