import { describe, expect, it } from 'vitest';
import { GateOptimizer } from './optimizer.js';

describe('GateOptimizer (AdamW on the gates)', () => {
  it('moves each gate by about the scheduled rate on the first step, against the gradient', () => {
    const optimizer = new GateOptimizer(3);
    expect(Array.from(optimizer.gates)).toEqual([1, 1, 1]);
    const rate = optimizer.step([0.5, -0.5, 0]);
    // Step 0 of 2000: 0.02 × 0.1. Bias-corrected moments are g and g², so the step is rate · g / (|g| + ε).
    expect(rate).toBeCloseTo(0.002, 15);
    expect(optimizer.gates[0]).toBeCloseTo(1 - 0.002, 10);
    expect(optimizer.gates[1]).toBeCloseTo(1 + 0.002, 10);
    expect(optimizer.gates[2]).toBe(1);
    // The forward pass sees gates clamped to [0, 1].
    expect(Array.from(optimizer.clamped())).toEqual([optimizer.gates[0], 1, 1]);
  });

  it('clamps in place before each step, then applies the bias-corrected moments', () => {
    const optimizer = new GateOptimizer(1);
    optimizer.step([-0.5]);
    expect(optimizer.gates[0]).toBeGreaterThan(1);
    optimizer.step([0]);
    // By hand: m = 0.9 · (0.1 · −0.5), v = 0.999 · (0.001 · 0.25); corrections 1 − 0.9², 1 − 0.999².
    const m = (0.9 * 0.1 * -0.5) / (1 - 0.9 ** 2);
    const v = (0.999 * 0.001 * 0.25) / (1 - 0.999 ** 2);
    const rate = 0.02 * Math.max(2 / 400, 0.1);
    expect(optimizer.gates[0]).toBeCloseTo(1 - (rate * m) / (Math.sqrt(v) + 1e-8), 12);
  });

  it('restores from its state exactly: a resumed run ends with the gates of an uninterrupted one', () => {
    const gradient = (step: number) => Array.from({ length: 4 }, (_, i) => Math.sin(step * 7 + i) * 0.3 + 0.05);
    const uninterrupted = new GateOptimizer(4, { totalSteps: 20 });
    for (let s = 0; s < 10; s++) uninterrupted.step(gradient(s));
    const first = new GateOptimizer(4, { totalSteps: 20 });
    for (let s = 0; s < 6; s++) first.step(gradient(s));
    const resumed = GateOptimizer.fromState(JSON.parse(JSON.stringify(first.state())));
    expect(resumed.steps).toBe(6);
    for (let s = 6; s < 10; s++) resumed.step(gradient(s));
    expect(Array.from(resumed.gates)).toEqual(Array.from(uninterrupted.gates));
    expect(resumed.state()).toEqual(uninterrupted.state());
  });

  it('rejects gradients of the wrong count or not finite, and bad settings, naming them', () => {
    const optimizer = new GateOptimizer(2);
    expect(() => optimizer.step([1])).toThrow('Expected 2 gate gradients but received 1');
    expect(() => optimizer.step([1, Number.NaN])).toThrow('Expected finite gate gradients but gradient 1 is NaN');
    expect(() => new GateOptimizer(0)).toThrow('`count`');
    expect(() => new GateOptimizer(2, { beta1: 1 })).toThrow('`beta1`');
    expect(() => new GateOptimizer(2, { learningRate: 0 })).toThrow('`learningRate`');
    const state = optimizer.state();
    expect(() => GateOptimizer.fromState({ ...state, firstMoment: [0] })).toThrow('Expected 2 values in each moment');
  });
});
