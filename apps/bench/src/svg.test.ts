// SVG figures: every point inside its axes, labels escaped, heatmap cells coloured by value.
import { describe, expect, it } from 'vitest';
import { heatmapSvg, lineChartsSvg, tickLabel } from './svg.js';

describe('svg figures', () => {
  it('keeps every point inside the plot area and labels context ticks compactly', () => {
    const svg = lineChartsSvg([
      {
        title: 'Decode <latency>',
        xLabel: 'context',
        yLabel: 'ms',
        logX: true,
        series: [
          {
            label: 'full',
            points: [
              { x: 32768, y: 7.6 },
              { x: 262144, y: 89.4 },
            ],
          },
          {
            label: 'duo',
            points: [
              { x: 32768, y: 6.8 },
              { x: 262144, y: Number.NaN },
            ],
          },
        ],
      },
    ]);
    expect(svg).toContain('Decode &lt;latency&gt;');
    const plot = /<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="none"/.exec(svg);
    const [left, top, width, height] = (plot?.slice(1) ?? []).map(Number) as [number, number, number, number];
    const circles = [...svg.matchAll(/<circle cx="([\d.]+)" cy="([\d.]+)"/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(circles).toHaveLength(3);
    for (const [x, y] of circles) {
      expect(x).toBeGreaterThanOrEqual(left - 0.01);
      expect(x).toBeLessThanOrEqual(left + width + 0.01);
      expect(y).toBeGreaterThanOrEqual(top - 0.01);
      expect(y).toBeLessThanOrEqual(top + height + 0.01);
    }
    expect([tickLabel(32768), tickLabel(1 << 20), tickLabel(0.25), tickLabel(499670)]).toEqual([
      '32K',
      '1M',
      '0.25',
      '499670',
    ]);
  });

  it('draws a heatmap with one labelled cell per value and grey for missing ones', () => {
    const svg = heatmapSvg({
      title: 'Passkey',
      rowLabel: 'depth',
      columnLabel: 'context',
      rows: ['5 %', '95 %'],
      columns: ['1K', '2K'],
      values: [
        [1, 0],
        [0.5, Number.NaN],
      ],
    });
    expect(svg.match(/<rect x=/g)).toHaveLength(4);
    expect(svg).toContain('fill="#ccc"');
    expect(svg).toContain('>100<');
    expect(svg).toContain('>50<');
  });
});
