// Figures of a gate-training run: loss, distillation loss and mean gate over the steps, and every gate over the steps
// as a heatmap (one row per KV head in layer-major order, one column per step or group of steps).
import { type FigureSpec, heatmap, lineChart } from '@duoattn/app-kit';

interface ReportPoint {
  step: number;
  loss: number;
  distillation: number;
  meanGate: number;
}

/** Two panels: loss and distillation loss (linear: a log scale would hide the start), and the mean gate. */
export function trainingFigure(reports: readonly ReportPoint[]): FigureSpec {
  const points = (value: (report: ReportPoint) => number) =>
    reports.map((report) => ({ x: report.step + 1, y: value(report) }));
  return lineChart({
    columns: 2,
    panelWidth: 380,
    panels: [
      {
        title: 'Gate training loss',
        xTitle: 'step',
        yTitle: 'loss',
        series: [
          { label: 'loss (distillation + reg · mean|α|)', points: points((r) => r.loss) },
          { label: 'distillation (MSE of final hidden states)', points: points((r) => r.distillation) },
        ],
      },
      {
        title: 'Mean gate',
        xTitle: 'step',
        yTitle: 'mean α',
        series: [{ label: 'mean α', points: points((r) => r.meanGate) }],
      },
    ],
  });
}

/**
 * Gates over the steps (`history[step][gate]`, gates in layer-major order of `kvHeads` per layer), at most `columns`
 * columns (the steps of a column averaged); the colour is α from 0 (streaming) to 1 (full attention).
 */
export function gateHistoryFigure(history: readonly (readonly number[])[], kvHeads: number, columns = 300): FigureSpec {
  const steps = history.length;
  const gates = history[0]?.length ?? 0;
  const width = Math.max(1, Math.min(columns, steps));
  const firstStep = (column: number) => Math.floor((column * steps) / width);
  const values = Array.from({ length: gates }, (_, gate) =>
    Array.from({ length: width }, (_, column) => {
      const first = firstStep(column);
      const last = Math.max(first + 1, firstStep(column + 1));
      let sum = 0;
      for (let step = first; step < last; step++) sum += history[step]?.[gate] ?? 0;
      return sum / (last - first);
    }),
  );
  return heatmap({
    title: `Gates over ${steps} training steps (α: 0 = streaming head, 1 = retrieval head)`,
    xTitle: width < steps ? 'step (first of each column)' : 'step',
    yTitle: 'KV head',
    columns: Array.from({ length: width }, (_, column) => String(firstStep(column) + 1)),
    rows: Array.from(
      { length: gates },
      (_, gate) => `layer ${Math.floor(gate / Math.max(kvHeads, 1))} head ${gate % Math.max(kvHeads, 1)}`,
    ),
    values,
    legendTitle: 'gate α',
    scheme: 'viridis',
    cellLabels: false,
  });
}
