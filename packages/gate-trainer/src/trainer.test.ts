// The training loop on the CPU: gates move, checkpoints resume exactly, settings and data problems are reported.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBackend } from '@duoattn/kernels';
import { LlamaModel } from '@duoattn/model';
import { afterAll, describe, expect, it } from 'vitest';
import { PasskeyData } from './dataset.js';
import { freezeModel } from './gate-gradients.js';
import { CHECK_CONFIG } from './gradient-check.js';
import { trainGates } from './trainer.js';

const backend = createBackend('cpu');
const config = { ...CHECK_CONFIG, vocabSize: 257 };
const random = LlamaModel.random(config, { device: backend, dtype: 'f32', seed: 3, std: 0.3 });
const model = freezeModel(random);
const bytes = {
  encode: (text: string) => Array.from(new TextEncoder().encode(text)),
  bosTokenId: 256,
};
const haystack = bytes.encode('The quick brown fox jumps over the lazy dog while the river runs to the sea. ');
const data = new PasskeyData({
  haystack,
  tokenizer: bytes,
  contextMin: 200,
  contextMax: 320,
  passkeys: 2,
  wordsPerPasskey: 2,
  seed: 5,
});
const directory = mkdtempSync(join(tmpdir(), 'duo-train-'));
const settings = { model, data, steps: 6, learningRate: 0.05, window: { sink: 4, recent: 16 } };

afterAll(() => {
  model.dispose();
  random.dispose();
  rmSync(directory, { recursive: true, force: true });
});

describe('trainGates (cpu)', () => {
  it('moves the gates, reports every step and resumes a stopped run exactly', async () => {
    const reports: number[] = [];
    const whole = await trainGates({ ...settings, onStep: (report) => reports.push(report.step) });
    expect(whole.finished).toBe(true);
    expect(reports).toEqual([0, 1, 2, 3, 4, 5]);
    expect(
      whole.history.reports.every((r) => Number.isFinite(r.loss) && r.distillation >= 0 && r.answerTokens > 0),
    ).toBe(true);
    expect(Array.from(whole.gates).some((gate) => gate < 1)).toBe(true);

    const checkpointPath = join(directory, 'run.json');
    const first = await trainGates({ ...settings, checkpointPath, checkpointEvery: 2, stopAfter: 3 });
    expect(first.finished).toBe(false);
    expect(first.stepsDone).toBe(3);
    const resumedSteps: number[] = [];
    const resumed = await trainGates({
      ...settings,
      checkpointPath,
      resume: true,
      onStep: (report) => resumedSteps.push(report.step),
    });
    expect(resumedSteps).toEqual([3, 4, 5]); // only the steps the first run did not take
    expect(resumed.stepsDone).toBe(6);
    expect(resumed.history.reports.map((r) => r.step)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(Array.from(resumed.gates)).toEqual(Array.from(whole.gates));
  });

  it('refuses to resume a checkpoint made with other settings', async () => {
    const checkpointPath = join(directory, 'other.json');
    await trainGates({ ...settings, checkpointPath, stopAfter: 1 });
    await expect(trainGates({ ...settings, learningRate: 0.01, checkpointPath, resume: true })).rejects.toThrow(
      /made with other settings/,
    );
  });

  it('refuses a corrupt or incomplete checkpoint with a DuoArgumentError naming the file', async () => {
    const checkpointPath = join(directory, 'broken.json');
    await trainGates({ ...settings, checkpointPath, stopAfter: 1 });
    const saved = JSON.parse(readFileSync(checkpointPath, 'utf8'));
    for (const [text, message] of [
      ['{"format": "duoattn-gate-ch', /Could not read the checkpoint/],
      ['null', /Expected a duoattn gate checkpoint \(version 1\)/],
      [JSON.stringify({ ...saved, optimizer: null }), /is incomplete/],
      [JSON.stringify({ ...saved, optimizer: { ...saved.optimizer, gates: 'x' } }), /is incomplete/],
      [JSON.stringify({ ...saved, history: {} }), /is incomplete/],
    ] as const) {
      writeFileSync(checkpointPath, text);
      await expect(trainGates({ ...settings, checkpointPath, resume: true })).rejects.toMatchObject({
        code: 'DUO_ARG',
        message: expect.stringMatching(message),
      });
    }
  });

  it('stops after the step in flight once its signal is aborted, even when every step resolves at once', async () => {
    const controller = new AbortController();
    // An abort that can only arrive from the event loop, as a SIGINT handler's does.
    setImmediate(() => controller.abort());
    const stopped = await trainGates({ ...settings, signal: controller.signal });
    expect(stopped.finished).toBe(false);
    expect(stopped.stepsDone).toBeLessThan(settings.steps);
  });
});
