// The gate-training figures: loss and mean gate over the steps, and the gate-history heatmap.
import { toPng, toSvg } from '@duoattn/app-kit';
import { describe, expect, it } from 'vitest';
import { gateHistoryFigure, trainingFigure } from './gate-plots.js';

describe('gate plots', () => {
  it('draws loss, distillation and mean gate with their titles, axis titles and legend', async () => {
    const reports = [0, 1, 2].map((step) => ({
      step,
      loss: 0.05 - step * 0.01,
      distillation: step * 0.001,
      meanGate: 1 - step * 0.1,
    }));
    const svg = await toSvg(trainingFigure(reports));
    for (const label of ['Gate training loss', 'distillation (MSE of final hidden states)', 'Mean gate', 'mean α']) {
      expect(svg).toContain(label);
    }
    expect(svg).toContain('>step<');
  });

  it('draws one row per KV head and averages steps into at most the asked columns', async () => {
    const history = Array.from({ length: 10 }, (_, step) => [1, step / 9, 0, 0.5]);
    const spec = gateHistoryFigure(history, 2, 5);
    const cells = (spec as { data: { values: { row: string; column: string; value: number }[] } }).data.values;
    expect(new Set(cells.map((cell) => cell.row))).toEqual(
      new Set(['layer 0 head 0', 'layer 0 head 1', 'layer 1 head 0', 'layer 1 head 1']),
    );
    expect([...new Set(cells.map((cell) => cell.column))]).toEqual(['1', '3', '5', '7', '9']);
    // The second gate rises from 0 to 1: its first column averages steps 0 and 1.
    expect(cells.find((cell) => cell.row === 'layer 0 head 1' && cell.column === '1')?.value).toBeCloseTo(1 / 18, 9);
    const svg = await toSvg(spec);
    for (const label of ['gate α', 'KV head', 'step (first of each column)', 'layer 1 head 1']) {
      expect(svg).toContain(label);
    }
    expect((await toPng(spec)).subarray(1, 4).toString()).toBe('PNG');
  });
});
