// The progress lines: weight loading (drawn in place on a terminal, silent otherwise) and gate training.
import { describe, expect, it } from 'vitest';
import { duration, loadingProgress, runProgress, trainingProgress } from './progress.js';

describe('loadingProgress', () => {
  it('redraws one line on a terminal and ends it when done', () => {
    const written: string[] = [];
    const stream = { isTTY: true, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const progress = loadingProgress('model', stream);
    progress(1, 4);
    progress(4, 4);
    expect(written[0]).toMatch(/^\r\[duo-bench\] loading model \[#{8}-{22}\] 1\/4 /);
    expect(written[1]).toMatch(/\[#{30}\] 4\/4 /);
    expect(written[2]).toBe('\n');
  });

  it('writes nothing when the stream is not a terminal', () => {
    const written: string[] = [];
    const stream = { isTTY: false, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    loadingProgress('model', stream)(1, 1);
    expect(written).toEqual([]);
  });
});

describe('trainingProgress', () => {
  const step = (index: number) => ({
    step: index,
    loss: 0.05,
    distillation: 0.01,
    meanGate: 0.5,
    tokens: 1000,
    seconds: 0.5,
  });

  it('redraws loss, distillation, mean gate, tokens/s and ETA on a terminal', () => {
    const written: string[] = [];
    const stream = { isTTY: true, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const progress = trainingProgress(4, stream);
    for (let i = 0; i < 4; i++) progress(step(i));
    expect(written[0]).toMatch(
      /^\r\[train-gates\] step 1\/4 \[#{6}-{18}\] loss 5\.000e-2 distill 1\.000e-2 gate 0\.500 2000 tok\/s ETA 2s$/,
    );
    expect(written.at(-2)).toMatch(/step 4\/4 .* ETA 0s$/);
    expect(written.at(-1)).toBe('\n');
  });

  it('prints every tenth step and the last one to a log', () => {
    const written: string[] = [];
    const stream = { isTTY: false, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const progress = trainingProgress(25, stream);
    for (let i = 0; i < 25; i++) progress(step(i));
    expect(written.map((line) => /step (\d+)\//.exec(line)?.[1])).toEqual(['1', '10', '20', '25']);
  });

  it('formats durations', () => {
    expect([duration(5), duration(75), duration(4000)]).toEqual(['5s', '1m15s', '1h06m']);
  });
});

describe('runProgress', () => {
  it('shows the work done, what was just done, the rate and an ETA; in a log the first, every tenth and the last', async () => {
    const written: string[] = [];
    const stream = { isTTY: false, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const progress = runProgress('passkey', stream);
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (let trial = 1; trial <= 12; trial++) progress(trial * 100, 1200, `@100 trial ${trial}/12`);
    expect(written.map((line) => /trial (\d+)\//.exec(line)?.[1])).toEqual(['1', '10', '12']);
    expect(written[0]).toMatch(/^\[duo-bench\] passkey \[#{2}-{18}\] @100 trial 1\/12; [\d.]+k? tok\/s, ETA \S+\n$/);
    expect(written.at(-1)).toMatch(/\[#{20}\] @100 trial 12\/12; .* ETA 0s\n$/);
  });
});
