// Figures of a gate-training run: loss, distillation loss and mean gate over the steps (SVG), and every gate over the
// steps as a heatmap (PNG; one row per gate in layer-major order, one column per step or group of steps).
import { heatmapPng } from './png.js';
import { lineChartsSvg } from './svg.js';

interface ReportPoint {
  step: number;
  loss: number;
  distillation: number;
  meanGate: number;
}

/** Two panels: loss and distillation loss (log scale would hide the start; linear), and the mean gate. */
export function trainingSvg(reports: readonly ReportPoint[]): string {
  const points = (value: (report: ReportPoint) => number) =>
    reports.map((report) => ({ x: report.step + 1, y: value(report) }));
  return lineChartsSvg([
    {
      title: 'Gate training loss',
      xLabel: 'step',
      yLabel: 'loss',
      series: [
        { label: 'loss (distillation + reg · mean|α|)', points: points((r) => r.loss) },
        { label: 'distillation (MSE of final hidden states)', points: points((r) => r.distillation) },
      ],
    },
    {
      title: 'Mean gate',
      xLabel: 'step',
      yLabel: 'mean α',
      series: [{ label: 'mean α', points: points((r) => r.meanGate) }],
    },
  ]);
}

/** Gates over the steps (`history[step][gate]`), at most `columns` columns (steps averaged per column). */
export function gateHistoryPng(history: readonly (readonly number[])[], columns = 300): Buffer {
  const steps = history.length;
  const gates = history[0]?.length ?? 0;
  const width = Math.max(1, Math.min(columns, steps));
  const values = Array.from({ length: gates }, (_, gate) =>
    Array.from({ length: width }, (_, column) => {
      const first = Math.floor((column * steps) / width);
      const last = Math.max(first + 1, Math.floor(((column + 1) * steps) / width));
      let sum = 0;
      for (let step = first; step < last; step++) sum += history[step]?.[gate] ?? 0;
      return sum / (last - first);
    }),
  );
  const cellHeight = Math.max(4, Math.min(24, Math.floor(480 / Math.max(gates, 1))));
  const cellWidth = Math.max(3, Math.min(24, Math.floor(900 / width)));
  return heatmapPng(values, cellWidth, cellHeight);
}
