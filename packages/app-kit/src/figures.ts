// Figures for duoattn's apps as vega-lite specs: line charts and scatter plots in panels, and heatmaps with a colour
// legend — every one with axis titles, a title that wraps rather than clips, and legends beside the data, not on it.
import type { TopLevelSpec } from 'vega-lite';
import { FIGURE_FONT, textWidthEm } from './font-metrics.js';

/** A vega-lite spec, ready for `toSvg` / `toPng` (or any vega-lite tool). */
export type FigureSpec = TopLevelSpec;

/** One point of a series; `low` / `high` draw an error bar (e.g. a bootstrap interval). Non-finite `y` is left out. */
export interface FigurePoint {
  x: number;
  y: number;
  low?: number | undefined;
  high?: number | undefined;
}

/** One line (or, with `line: false`, a cloud of points) of a panel; its label is its legend entry. */
export interface FigureSeries {
  label: string;
  points: readonly FigurePoint[];
  /** Join the points with a line. Default: true. */
  line?: boolean;
}

/** One chart of a figure: its title, axis titles and series. */
export interface FigurePanel {
  title: string;
  xTitle: string;
  yTitle: string;
  series: readonly FigureSeries[];
  /**
   * 'log2' for context lengths: a base-2 log axis ticked at the lengths that occur, labelled 512, 4K, 1M.
   * Default: 'linear'.
   */
  xScale?: 'linear' | 'log2';
  /** Start the y axis at zero. Default: true. */
  yZero?: boolean;
}

/** A figure of one or more panels. */
export interface ChartOptions {
  /** A title above every panel. Default: none (each panel has its own). */
  title?: string;
  panels: readonly FigurePanel[];
  /** Panels per row; more wrap onto the next row. Default: 3. */
  columns?: number;
  /** Width of each panel's plot area in pixels. Default: 340. */
  panelWidth?: number;
  /** Height of each panel's plot area in pixels. Default: 220. */
  panelHeight?: number;
  /** The legend's title. Default: none. */
  legendTitle?: string;
}

/** A heatmap of `values[row][column]`; NaN marks a cell without data (drawn grey). */
export interface HeatmapOptions {
  title: string;
  xTitle: string;
  yTitle: string;
  /** Column labels, left to right. */
  columns: readonly string[];
  /** Row labels, top to bottom. */
  rows: readonly string[];
  values: readonly (readonly number[])[];
  /** The legend's title, e.g. "accuracy (%)". */
  legendTitle: string;
  /** The colour scale's range of values. Default: [0, 1]. */
  domain?: readonly [number, number];
  /** 'redyellowgreen' for scores (red is bad), 'viridis' for a neutral quantity. Default: 'redyellowgreen'. */
  scheme?: 'redyellowgreen' | 'viridis';
  /** Write each cell's value in it (d3-format `labelFormat`, default '.0f'). Default: when there are ≤ 400 cells. */
  cellLabels?: boolean;
  labelFormat?: string;
}

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';

const CONFIG = {
  font: FIGURE_FONT,
  background: 'white',
  padding: 8,
  // Titles centre over the whole figure, axes and legend included, not over the plot area alone.
  title: { fontSize: 14, anchor: 'middle', offset: 10, frame: 'bounds' },
  // Labels keep a gap between them (overlapping ones are dropped) and the end ones are centred on their ticks: flush
  // end labels run into their neighbours.
  axis: {
    labelFontSize: 11,
    titleFontSize: 12,
    titleFontWeight: 'normal',
    gridColor: '#e6e6e6',
    labelSeparation: 6,
    labelFlush: false,
  },
  legend: { orient: 'right', labelFontSize: 11, titleFontSize: 12, labelLimit: 360, symbolStrokeWidth: 2 },
  concat: { spacing: 36 },
  view: { stroke: '#999' },
} as const;

/**
 * A token count as an axis labels it: 512, 4K, 32K, 1M exactly; other counts past 1K to three digits (499 670 → 488K,
 * 1 007 574 → 984K), so a label fits beside its neighbours.
 */
export function tokenCountLabel(count: number): string {
  const [unit, suffix] = count >= 1 << 20 ? [1 << 20, 'M'] : count >= 1024 ? [1024, 'K'] : [1, ''];
  return `${Number((count / unit).toPrecision(3))}${suffix}`;
}

/** `tokenCountLabel` as a vega expression, for the ticks of a log-2 axis. */
const TOKEN_LABEL =
  "datum.value >= 1048576 ? format(datum.value / 1048576, '.3~r') + 'M' : " +
  "datum.value >= 1024 ? format(datum.value / 1024, '.3~r') + 'K' : format(datum.value, '.3~r')";

/**
 * `text` as lines at most `width` pixels wide in bold `fontSize` px, of about equal length (no lone last word); one
 * word longer than that keeps its own line.
 */
export function wrapTitle(text: string, width: number, fontSize = 14): string | string[] {
  const measure = (line: string) => textWidthEm(line, true) * fontSize;
  const total = measure(text);
  if (total <= width) return text;
  const target = Math.min(width, (total / Math.ceil(total / width)) * 1.15);
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    const longer = line ? `${line} ${word}` : word;
    if (line && measure(longer) > target) {
      lines.push(line);
      line = word;
    } else line = longer;
  }
  if (line) lines.push(line);
  return lines;
}

const isFinitePoint = (point: FigurePoint) => Number.isFinite(point.x) && Number.isFinite(point.y);

/** A panel's points as data rows: finite points only, with `low` / `high` where both are finite. */
function panelRows(series: FigureSeries): { series: string; x: number; y: number; low?: number; high?: number }[] {
  return series.points.filter(isFinitePoint).map((point) => ({
    series: series.label,
    x: point.x,
    y: point.y,
    ...(Number.isFinite(point.low) && Number.isFinite(point.high) ? { low: point.low, high: point.high } : {}),
  }));
}

/** The x encoding: a log-2 token axis ticked at the lengths that occur, or a linear one (whole steps for integers). */
function xEncoding(panel: FigurePanel, xs: readonly number[]): object {
  const distinct = [...new Set(xs)].sort((a, b) => a - b);
  const log2 = panel.xScale === 'log2';
  return {
    field: 'x',
    type: 'quantitative',
    title: panel.xTitle,
    // Log axes end at the data: nice round powers of 2 past the last length would only leave empty space.
    scale: log2 ? { type: 'log', base: 2, nice: false } : { zero: false },
    axis: {
      ...(log2 ? { labelExpr: TOKEN_LABEL, ...(distinct.length <= 12 ? { values: distinct } : {}) } : {}),
      ...(distinct.every(Number.isInteger) ? { tickMinStep: 1 } : {}),
    },
  };
}

/** One panel: error bars, lines (with point marks while there are few points), lone points; one colour per series. */
function panelSpec(
  panel: FigurePanel,
  domain: readonly string[],
  legendTitle: string | null,
  width: number,
  height: number,
): object {
  const lines = panel.series.filter((series) => series.line !== false).flatMap(panelRows);
  const points = panel.series.filter((series) => series.line === false).flatMap(panelRows);
  const intervals = [...lines, ...points].filter((row) => 'low' in row);
  const x = xEncoding(
    panel,
    [...lines, ...points].map((row) => row.x),
  );
  const y = { type: 'quantitative', title: panel.yTitle, scale: { zero: panel.yZero ?? true }, field: 'y' };
  // One series needs no legend: the panel's title and axis name it.
  const legend = domain.length > 1 ? { title: legendTitle } : null;
  const color = { field: 'series', type: 'nominal', scale: { domain: [...domain] }, legend };
  const mostPoints = Math.max(
    0,
    ...panel.series.filter((series) => series.line !== false).map((series) => series.points.length),
  );
  const layers = [
    { values: intervals, mark: { type: 'errorbar', ticks: true }, y: { ...y, field: 'low' }, y2: { field: 'high' } },
    { values: lines, mark: { type: 'line', strokeWidth: 2, point: mostPoints <= 30 }, y },
    { values: points, mark: { type: 'point', filled: true, size: 28, opacity: 0.75 }, y },
  ]
    .filter((layer) => layer.values.length > 0)
    .map(({ values, mark, ...encoding }) => ({ data: { values }, mark, encoding: { x, color, ...encoding } }));
  // A panel without data still gets its axes and title, so a missing series shows as missing, not as a crash.
  const layer = layers.length > 0 ? layers : [{ data: { values: [] }, mark: 'point', encoding: { x, y } }];
  return { title: wrapTitle(panel.title, width), width, height, layer };
}

/**
 * Line charts, one panel per `options.panels` entry (`columns` to a row), one colour per series label across all the
 * panels and one legend for them, at the right; error bars where a point has `low` and `high`.
 */
export function lineChart(options: ChartOptions): FigureSpec {
  const width = options.panelWidth ?? 340;
  const height = options.panelHeight ?? 220;
  const columns = Math.max(1, Math.min(options.columns ?? 3, options.panels.length));
  const domain = [
    ...new Set(
      options.panels.flatMap((panel) =>
        panel.series.filter((series) => series.points.some(isFinitePoint)).map((series) => series.label),
      ),
    ),
  ];
  const panels = options.panels.map((panel) => panelSpec(panel, domain, options.legendTitle ?? null, width, height));
  const title =
    options.title === undefined
      ? {}
      : { title: { text: wrapTitle(options.title, columns * (width + 80), 16), fontSize: 16 } };
  const layout =
    panels.length === 1
      ? panels[0]
      : { columns, concat: panels, resolve: { scale: { color: 'shared' }, legend: { color: 'shared' } } };
  return { $schema: SCHEMA, ...layout, ...title, config: CONFIG } as FigureSpec;
}

/** Scatter plots: `lineChart` with every series drawn as points. */
export function scatter(options: ChartOptions): FigureSpec {
  return lineChart({
    ...options,
    panels: options.panels.map((panel) => ({
      ...panel,
      series: panel.series.map((series) => ({ ...series, line: false })),
    })),
  });
}

/** At most `count` of `labels`, evenly spread and always the first and the last: the axis labels of a wide map. */
function thinned(labels: readonly string[], count: number): string[] {
  if (labels.length <= count) return [...labels];
  const step = Math.ceil((labels.length - 1) / (count - 1));
  return labels.filter((_, i) => i % step === 0 || i === labels.length - 1);
}

/** The heatmap's axes: columns left to right, rows top to bottom, thinned labels where there are many. */
function heatmapAxes(options: HeatmapOptions): object {
  const axis = (field: string, labels: readonly string[], title: string, shown: number, extra: object) => ({
    field,
    type: 'ordinal',
    sort: [...labels],
    title,
    axis: { values: thinned(labels, shown), ...extra },
  });
  return {
    x: axis('column', options.columns, options.xTitle, 12, { labelAngle: 0, labelOverlap: true }),
    y: axis('row', options.rows, options.yTitle, 24, {}),
  };
}

/**
 * A heatmap: one cell per row × column, coloured on `domain` with a colour legend at the right, each cell's value
 * written in it (white on dark cells) while there are few enough cells to read, grey cells where there is no value.
 */
export function heatmap(options: HeatmapOptions): FigureSpec {
  const [low, high] = options.domain ?? [0, 1];
  const scheme = options.scheme ?? 'redyellowgreen';
  const cellWidth = Math.max(2, Math.min(60, Math.floor(900 / Math.max(options.columns.length, 1))));
  const cellHeight = Math.max(3, Math.min(32, Math.floor(480 / Math.max(options.rows.length, 1))));
  const values = options.rows.flatMap((row, r) =>
    options.columns.map((column, c) => {
      const value = options.values[r]?.[c] ?? Number.NaN;
      return { row, column, value: Number.isFinite(value) ? value : null };
    }),
  );
  // Dark ends of the scheme (both ends of red-yellow-green, the low end of viridis) take white text.
  const t = `(datum.value - ${low}) / ${high - low || 1}`;
  const dark = scheme === 'viridis' ? `${t} < 0.45` : `${t} < 0.2 || ${t} > 0.8`;
  const valid = { filter: 'isValid(datum.value)' };
  // White gaps between cells while cells are large enough to spare a pixel.
  const gaps = cellWidth >= 8 && cellHeight >= 8 ? { stroke: 'white', strokeWidth: 1 } : {};
  const legend = {
    title: options.legendTitle,
    gradientLength: Math.max(80, Math.min(200, cellHeight * options.rows.length)),
  };
  const layer: object[] = [
    { transform: [{ filter: '!isValid(datum.value)' }], mark: { type: 'rect', fill: '#d0d0d0', ...gaps } },
    {
      transform: [valid],
      mark: { type: 'rect', ...gaps },
      encoding: { color: { field: 'value', type: 'quantitative', scale: { domain: [low, high], scheme }, legend } },
    },
  ];
  if (options.cellLabels ?? values.length <= 400) {
    layer.push({
      transform: [valid],
      mark: { type: 'text', fontSize: 11 },
      encoding: {
        text: { field: 'value', type: 'quantitative', format: options.labelFormat ?? '.0f' },
        color: { condition: { test: dark, value: 'white' }, value: 'black' },
      },
    });
  }
  const width = cellWidth * options.columns.length;
  return {
    $schema: SCHEMA,
    // The title may span the map, its row labels and its legend.
    title: wrapTitle(options.title, Math.max(width + 200, 360)),
    data: { values },
    width,
    height: cellHeight * options.rows.length,
    encoding: heatmapAxes(options),
    layer,
    config: { ...CONFIG, view: { stroke: null } },
  } as FigureSpec;
}
