// The gate-training figures: the loss/mean-gate SVG and the gate-history PNG.
import { inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { gateHistoryPng, trainingSvg } from './gate-plots.js';

describe('gate plots', () => {
  it('draws loss, distillation and mean gate with their labels', () => {
    const reports = [0, 1, 2].map((step) => ({
      step,
      loss: 0.05 - step * 0.01,
      distillation: step * 0.001,
      meanGate: 1 - step * 0.1,
    }));
    const svg = trainingSvg(reports);
    expect(svg.startsWith('<svg')).toBe(true);
    for (const label of ['Gate training loss', 'distillation (MSE of final hidden states)', 'Mean gate', 'mean α']) {
      expect(svg).toContain(label);
    }
  });

  it('draws one row per gate and averages steps into at most the asked columns', () => {
    const history = Array.from({ length: 10 }, (_, step) => [1, step / 9, 0]);
    const png = gateHistoryPng(history, 5);
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    // 5 columns of at least 3 px, 3 rows of the same height.
    expect(width % 5).toBe(0);
    expect(height % 3).toBe(0);
    const idat = png.indexOf('IDAT');
    expect(inflateSync(png.subarray(idat + 4, idat + 4 + png.readUInt32BE(idat - 4))).length).toBe(
      height * (1 + width * 3),
    );
  });
});
