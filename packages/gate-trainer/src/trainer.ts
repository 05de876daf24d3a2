// The training loop: one passkey sample per step, teacher/student gradients, λ·mean|α|, AdamW with the reference
// schedule, history for plots, and checkpoints that a resumed run continues from exactly (the sample of step s
// depends only on the seed and s, the optimizer state is saved in full, and the backward ops are deterministic).
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { DuoArgumentError, DuoError } from '@duoattn/core';
import { expectInteger, expectPositive } from '@duoattn/kernels';
import type { PasskeyData } from './dataset.js';
import { type FrozenModel, type FullTerm, gateGradients, type StreamingWindow } from './gate-gradients.js';
import { GateOptimizer, type GateOptimizerState } from './optimizer.js';

/** Settings of a run; a checkpoint only resumes a run with the same settings. */
export interface GateTrainingSettings {
  steps: number;
  learningRate: number;
  /** λ of λ·mean|α|. */
  regularization: number;
  sink: number;
  recent: number;
  fullTerm: FullTerm;
  /** The data's seed and context lengths, so a resumed run is known to see the same samples. */
  dataSeed: number;
  contextLengths: readonly number[];
}

/** What one step did. */
export interface StepReport {
  step: number;
  steps: number;
  /** distillation + λ·mean|α|. */
  loss: number;
  distillation: number;
  meanGate: number;
  learningRate: number;
  tokens: number;
  answerTokens: number;
  seconds: number;
}

export interface TrainingHistory {
  reports: StepReport[];
  /** The gates after each step (clamped, layer-major). */
  gates: number[][];
}

export interface TrainGatesOptions {
  model: FrozenModel;
  data: PasskeyData;
  /** Optimizer steps (reference: 2000). */
  steps?: number;
  /** Peak learning rate (reference: 0.02). */
  learningRate?: number;
  /** λ (reference: 0.05). */
  regularization?: number;
  /** Streaming window in training (reference: sink 128, recent 256). */
  window?: StreamingWindow;
  /** Where the mix's full term comes from (default 'teacher', the reference code's). */
  fullTerm?: FullTerm;
  /** JSON checkpoint written every `checkpointEvery` steps and at the end (atomically: a temp file, then rename). */
  checkpointPath?: string;
  /** Default 10. */
  checkpointEvery?: number;
  /** Continue from `checkpointPath` when it exists (settings must match). */
  resume?: boolean;
  /** Stop after this many steps in total (a deliberate interruption; the checkpoint is written first). */
  stopAfter?: number;
  /** Stops between steps (the checkpoint is written first). */
  signal?: AbortSignal;
  onStep?: (report: StepReport, gates: Float64Array) => void;
}

export interface TrainGatesResult {
  gates: Float64Array;
  settings: GateTrainingSettings;
  history: TrainingHistory;
  /** Steps taken in total (including those before a resume). */
  stepsDone: number;
  finished: boolean;
}

interface Checkpoint {
  format: 'duoattn-gate-checkpoint';
  version: 1;
  settings: GateTrainingSettings;
  optimizer: GateOptimizerState;
  history: TrainingHistory;
}

/** Trains one gate per KV head on `data`; see `TrainGatesOptions`. */
export async function trainGates(options: TrainGatesOptions): Promise<TrainGatesResult> {
  const { model, data } = options;
  const { config } = model;
  const window = options.window ?? { sink: 128, recent: 256 };
  const settings: GateTrainingSettings = {
    steps: expectInteger('steps', options.steps ?? 2000, 1),
    learningRate: expectPositive('learningRate', options.learningRate ?? 0.02),
    regularization: expectPositive('regularization', options.regularization ?? 0.05, -1e-300),
    sink: expectInteger('sink', window.sink, 0),
    recent: expectInteger('recent', window.recent, 1),
    fullTerm: options.fullTerm ?? 'teacher',
    dataSeed: data.seed,
    contextLengths: [...data.lengths],
  };
  const every = expectInteger('checkpointEvery', options.checkpointEvery ?? 10, 1);
  const gateCount = config.numLayers * config.numKvHeads;
  let optimizer = new GateOptimizer(gateCount, { learningRate: settings.learningRate, totalSteps: settings.steps });
  let history: TrainingHistory = { reports: [], gates: [] };
  const path = options.checkpointPath;
  if (options.resume) {
    if (!path) throw new DuoArgumentError('resume', 'Expected a `checkpointPath` to resume from');
    if (existsSync(path)) {
      const checkpoint = readCheckpoint(path, settings, gateCount);
      optimizer = GateOptimizer.fromState(checkpoint.optimizer);
      history = checkpoint.history;
    }
  }
  const save = () => {
    if (!path) return;
    const checkpoint: Checkpoint = {
      format: 'duoattn-gate-checkpoint',
      version: 1,
      settings,
      optimizer: optimizer.state(),
      history,
    };
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(`${path}.tmp`, JSON.stringify(checkpoint));
    renameSync(`${path}.tmp`, path);
  };
  const stopAt = Math.min(settings.steps, options.stopAfter ?? settings.steps);
  while (optimizer.steps < stopAt && !(await aborted(options.signal))) {
    const step = optimizer.steps;
    const started = performance.now();
    const sample = data.sample(step);
    const gates = optimizer.clamped();
    const { distillation, gradients } = await gateGradients(model, sample.ids, sample.answerStart, gates, {
      window,
      fullTerm: settings.fullTerm,
    });
    if (!Number.isFinite(distillation) || !gradients) {
      throw new DuoError(
        'DUO_NUMERIC',
        `Step ${step}: the distillation loss is ${distillation} (sample of ${sample.ids.length} tokens); the checkpoint keeps the last good step`,
      );
    }
    // λ·mean|α| and its (sub)gradient λ·sign(α)/G, as torch differentiates abs.
    const meanGate = gates.reduce((sum, gate) => sum + Math.abs(gate), 0) / gateCount;
    for (let i = 0; i < gateCount; i++) {
      gradients[i] = (gradients[i] ?? 0) + (settings.regularization * Math.sign(gates[i] ?? 0)) / gateCount;
    }
    const learningRate = optimizer.step(gradients);
    const report: StepReport = {
      step,
      steps: settings.steps,
      loss: distillation + settings.regularization * meanGate,
      distillation,
      meanGate,
      learningRate,
      tokens: sample.ids.length,
      answerTokens: sample.ids.length - sample.answerStart,
      seconds: (performance.now() - started) / 1000,
    };
    history.reports.push(report);
    history.gates.push(Array.from(optimizer.clamped()));
    options.onStep?.(report, optimizer.clamped());
    if (optimizer.steps % every === 0) save();
  }
  save();
  return {
    gates: optimizer.clamped(),
    settings,
    history,
    stepsDone: optimizer.steps,
    finished: optimizer.steps >= settings.steps,
  };
}

/**
 * Whether `signal` was aborted, after letting the event loop turn: a step on the CPU resolves its promises at once, so
 * without the turn a SIGINT handler that aborts the signal would never run before the last step.
 */
async function aborted(signal: AbortSignal | undefined): Promise<boolean> {
  if (!signal) return false;
  await new Promise((resolve) => setImmediate(resolve));
  return signal.aborted;
}

function readCheckpoint(path: string, settings: GateTrainingSettings, gateCount: number): Checkpoint {
  let checkpoint: Checkpoint;
  try {
    checkpoint = JSON.parse(readFileSync(path, 'utf8')) as Checkpoint;
  } catch (error) {
    throw new DuoArgumentError(
      'checkpointPath',
      `Could not read the checkpoint "${path}": ${(error as Error).message}`,
    );
  }
  if (
    typeof checkpoint !== 'object' ||
    checkpoint === null ||
    checkpoint.format !== 'duoattn-gate-checkpoint' ||
    checkpoint.version !== 1
  ) {
    throw new DuoArgumentError('checkpointPath', `Expected a duoattn gate checkpoint (version 1) in "${path}"`);
  }
  const saved = JSON.stringify(checkpoint.settings);
  if (saved !== JSON.stringify(settings)) {
    throw new DuoArgumentError(
      'resume',
      `The checkpoint "${path}" was made with other settings (${saved}); this run has ${JSON.stringify(settings)}`,
    );
  }
  const { optimizer, history } = checkpoint;
  const numbers = (value: unknown) => Array.isArray(value) && value.every((item) => typeof item === 'number');
  if (
    typeof optimizer !== 'object' ||
    optimizer === null ||
    typeof optimizer.settings !== 'object' ||
    optimizer.settings === null ||
    !numbers(optimizer.gates) ||
    !numbers(optimizer.firstMoment) ||
    !numbers(optimizer.secondMoment) ||
    typeof history !== 'object' ||
    history === null ||
    !Array.isArray(history.reports) ||
    !Array.isArray(history.gates)
  ) {
    throw new DuoArgumentError(
      'checkpointPath',
      `The checkpoint "${path}" is incomplete: expected its optimizer's gates and moments and its history`,
    );
  }
  if (checkpoint.optimizer.gates.length !== gateCount) {
    throw new DuoArgumentError(
      'resume',
      `The checkpoint "${path}" holds ${checkpoint.optimizer.gates.length} gates; this model has ${gateCount}`,
    );
  }
  return checkpoint;
}
