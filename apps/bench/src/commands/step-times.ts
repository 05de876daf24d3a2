// Timing of gate-training steps at chosen context lengths (one warm-up step, then the median of timed steps), peak
// memory, and the projected time of a whole schedule whose lengths are linspace(ctx-min, ctx-max, 50).
import { join } from 'node:path';
import { median, writeResult } from '@duoattn/app-kit';
import {
  type FrozenModel,
  type FullTerm,
  gateGradients,
  linspace,
  type PasskeySample,
  type StreamingWindow,
} from '@duoattn/gate-trainer';

export interface StepTimeSettings {
  contextMin: number;
  contextMax: number;
  /** Steps of the schedule to project (reference: 2000). */
  steps: number;
  window: StreamingWindow;
  fullTerm: FullTerm;
  out: string;
  provenance: object;
  log: (line: string) => void;
  /** Timed steps per length after the warm-up. Default 2. */
  repeats?: number;
}

/** Least-squares fit of t(L) = a + b·L + c·L² (fewer terms when fewer points), evaluated at `at`. */
export function fitStepTime(points: readonly { length: number; seconds: number }[]): (length: number) => number {
  const terms = Math.min(3, points.length);
  const scale = Math.max(...points.map((p) => p.length), 1);
  const basis = (length: number) => [1, length / scale, (length / scale) ** 2].slice(0, terms);
  // Normal equations, solved by Gaussian elimination (3 × 3 at most).
  const matrix = Array.from({ length: terms }, () => new Array<number>(terms + 1).fill(0));
  for (const { length, seconds } of points) {
    const row = basis(length);
    for (let i = 0; i < terms; i++) {
      for (let j = 0; j < terms; j++)
        (matrix[i] as number[])[j] = ((matrix[i] as number[])[j] ?? 0) + (row[i] ?? 0) * (row[j] ?? 0);
      (matrix[i] as number[])[terms] = ((matrix[i] as number[])[terms] ?? 0) + (row[i] ?? 0) * seconds;
    }
  }
  for (let pivot = 0; pivot < terms; pivot++) {
    const pivotRow = matrix[pivot] as number[];
    for (let r = 0; r < terms; r++) {
      if (r === pivot) continue;
      const row = matrix[r] as number[];
      const factor = (row[pivot] ?? 0) / (pivotRow[pivot] ?? 1);
      for (let c = pivot; c <= terms; c++) row[c] = (row[c] ?? 0) - factor * (pivotRow[c] ?? 0);
    }
  }
  const coefficients = matrix.map((row, i) => (row[terms] ?? 0) / (row[i] ?? 1));
  return (length) => basis(length).reduce((sum, value, i) => sum + value * (coefficients[i] ?? 0), 0);
}

/** Times steps at `lengths`; writes step-times.json into `settings.out` and returns the document. */
export async function measureStepTimes(
  model: FrozenModel,
  sampleAt: (length: number) => PasskeySample,
  lengths: readonly number[],
  settings: StepTimeSettings,
): Promise<object> {
  const { backend, config } = model;
  const gates = new Float64Array(config.numLayers * config.numKvHeads).fill(1);
  const repeats = settings.repeats ?? 2;
  const rows: { length: number; tokens: number; seconds: number; samples: number[]; peakBytes: number }[] = [];
  for (const length of lengths) {
    const sample = sampleAt(length);
    const step = () =>
      gateGradients(model, sample.ids, sample.answerStart, gates, {
        window: settings.window,
        fullTerm: settings.fullTerm,
      });
    backend.resetPeakMemory();
    await step(); // warm-up: first-use allocations, cuBLAS heuristics
    const samples: number[] = [];
    for (let i = 0; i < repeats; i++) {
      await backend.synchronize();
      const started = performance.now();
      await step(); // ends by reading the gradients back: the step is complete
      samples.push((performance.now() - started) / 1000);
    }
    const peakBytes = backend.memory().peakBytes;
    const seconds = median(samples);
    rows.push({ length, tokens: sample.ids.length, seconds, samples, peakBytes });
    settings.log(
      `[train-gates] step at ${sample.ids.length} tokens: ${seconds.toFixed(3)} s (median of ${repeats}), peak ${(peakBytes / 2 ** 30).toFixed(1)} GiB`,
    );
  }
  const fit = fitStepTime(rows.map((row) => ({ length: row.tokens, seconds: row.seconds })));
  const schedule = linspace(settings.contextMin, settings.contextMax, 50);
  const meanStep = schedule.reduce((sum, length) => sum + fit(length), 0) / schedule.length;
  const projectedSeconds = meanStep * settings.steps;
  settings.log(
    `[train-gates] projected ${settings.steps} steps over linspace(${settings.contextMin}, ${settings.contextMax}, 50): ${(projectedSeconds / 3600).toFixed(2)} h on ${backend.deviceName}`,
  );
  const memory = backend.memory();
  return writeResult(
    join(settings.out, 'step-times.json'),
    backend.deviceName,
    { ...settings.provenance, steps: settings.steps, window: settings.window, fullTerm: settings.fullTerm, repeats },
    {
      rows,
      fit: 't(L) = a + b·L + c·L², least squares over the rows',
      meanStepSeconds: meanStep,
      projectedSeconds,
      projectedHours: projectedSeconds / 3600,
      deviceTotalBytes: memory.deviceTotalBytes,
      reference: 'about 4 hours for a 7B model on one 8×A100 server (METHOD.md)',
    },
  );
}
