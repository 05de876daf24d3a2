// AdamW on the gates only (METHOD.md): lr 0.02, betas (0.9, 0.999), eps 1e-8, no weight decay, the warm-up / decay
// schedule, gates clamped to [0, 1] in place before every step. Its whole state is plain numbers, so a checkpoint
// restores a run exactly.
import { DuoArgumentError } from '@duoattn/core';
import { expectInteger, expectPositive } from '@duoattn/kernels';
import { learningRateMultiplier } from './schedule.js';

export interface GateOptimizerSettings {
  learningRate: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  weightDecay: number;
  totalSteps: number;
}

export const REFERENCE_OPTIMIZER: GateOptimizerSettings = {
  learningRate: 0.02,
  beta1: 0.9,
  beta2: 0.999,
  epsilon: 1e-8,
  weightDecay: 0,
  totalSteps: 2000,
};

/** Everything a checkpoint needs to continue: settings, the steps taken, gates and both moments. */
export interface GateOptimizerState {
  settings: GateOptimizerSettings;
  steps: number;
  gates: number[];
  firstMoment: number[];
  secondMoment: number[];
}

export class GateOptimizer {
  readonly settings: GateOptimizerSettings;
  readonly gates: Float64Array;
  readonly #first: Float64Array;
  readonly #second: Float64Array;
  #steps = 0;

  /** Gates start at 1.0 (every head full attention), as in the reference. */
  constructor(count: number, settings: Partial<GateOptimizerSettings> = {}) {
    expectInteger('count', count, 1);
    this.settings = { ...REFERENCE_OPTIMIZER, ...settings };
    const { learningRate, beta1, beta2, epsilon, weightDecay, totalSteps } = this.settings;
    expectPositive('learningRate', learningRate);
    expectPositive('epsilon', epsilon);
    expectInteger('totalSteps', totalSteps, 1);
    for (const [name, value] of [
      ['beta1', beta1],
      ['beta2', beta2],
      ['weightDecay', weightDecay],
    ] as const) {
      if (!(value >= 0 && value < 1)) {
        throw new DuoArgumentError(name, `Expected \`${name}\` in [0, 1) but received ${value}`);
      }
    }
    this.gates = new Float64Array(count).fill(1);
    this.#first = new Float64Array(count);
    this.#second = new Float64Array(count);
  }

  /** Steps taken so far (the next step's index in the schedule). */
  get steps(): number {
    return this.#steps;
  }

  /** The gates the forward pass uses: clamped to [0, 1]. */
  clamped(): Float64Array {
    return this.gates.map(clamp);
  }

  /** One AdamW step with ∂L/∂α: clamp in place, then update at the scheduled learning rate. Returns that rate. */
  step(gradients: ArrayLike<number>): number {
    if (gradients.length !== this.gates.length) {
      throw new DuoArgumentError(
        'gradients',
        `Expected ${this.gates.length} gate gradients but received ${gradients.length}`,
      );
    }
    const { learningRate, beta1, beta2, epsilon, weightDecay, totalSteps } = this.settings;
    const rate = learningRate * learningRateMultiplier(this.#steps, totalSteps);
    const t = this.#steps + 1;
    const correction1 = 1 - beta1 ** t;
    const correction2 = 1 - beta2 ** t;
    for (let i = 0; i < this.gates.length; i++) {
      const g = gradients[i] ?? 0;
      if (!Number.isFinite(g)) {
        throw new DuoArgumentError('gradients', `Expected finite gate gradients but gradient ${i} is ${g}`);
      }
      const gate = clamp(this.gates[i] ?? 0) * (1 - rate * weightDecay);
      const m = beta1 * (this.#first[i] ?? 0) + (1 - beta1) * g;
      const v = beta2 * (this.#second[i] ?? 0) + (1 - beta2) * g * g;
      this.#first[i] = m;
      this.#second[i] = v;
      this.gates[i] = gate - (rate * (m / correction1)) / (Math.sqrt(v / correction2) + epsilon);
    }
    this.#steps = t;
    return rate;
  }

  state(): GateOptimizerState {
    return {
      settings: { ...this.settings },
      steps: this.#steps,
      gates: Array.from(this.gates),
      firstMoment: Array.from(this.#first),
      secondMoment: Array.from(this.#second),
    };
  }

  /** An optimizer that continues exactly where `state` was taken. */
  static fromState(state: GateOptimizerState): GateOptimizer {
    const count = state.gates.length;
    if (state.firstMoment.length !== count || state.secondMoment.length !== count) {
      throw new DuoArgumentError('state', `Expected ${count} values in each moment of the optimizer state`);
    }
    const optimizer = new GateOptimizer(count, state.settings);
    optimizer.gates.set(state.gates);
    optimizer.#first.set(state.firstMoment);
    optimizer.#second.set(state.secondMoment);
    optimizer.#steps = expectInteger('state.steps', state.steps, 0, state.settings.totalSteps);
    return optimizer;
  }
}

function clamp(value: number): number {
  return Math.min(1, Math.max(0, value));
}
