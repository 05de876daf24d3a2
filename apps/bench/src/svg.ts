// Dependency-free SVG figures with real labels: multi-series line charts (panels side by side) and heatmaps.

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

/**
 * One line of a chart. Points with a non-finite y are left out (e.g. a context that did not fit); `low` / `high` draw
 * an error bar (a confidence interval); `line: false` draws the points alone (a scatter).
 */
export interface Series {
  label: string;
  points: readonly { x: number; y: number; low?: number; high?: number }[];
  line?: boolean;
}

/** One panel: its title, axis labels and lines. */
export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly Series[];
  /** Logarithmic x axis (base 2), for context lengths. */
  logX?: boolean;
}

const escapeXml = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A compact label for a tick value: 32768 → "32K", 1048576 → "1M", 0.25 → "0.25". */
export function tickLabel(value: number): string {
  if (value >= 1 << 20 && value % (1 << 20) === 0) return `${value / (1 << 20)}M`;
  if (value >= 1024 && value % 1024 === 0) return `${value / 1024}K`;
  if (Math.abs(value) >= 100) return value.toFixed(0);
  return Number(value.toPrecision(3)).toString();
}

function niceTicks(min: number, max: number, count = 5): number[] {
  const span = Math.max(max - min, 1e-12);
  const step = 10 ** Math.floor(Math.log10(span / count));
  const factor = [1, 2, 5, 10].find((f) => span / (f * step) <= count) ?? 10;
  const unit = factor * step;
  // From the first tick at or below `min` to the first at or above `max`, so every point lies inside the axis.
  const ticks: number[] = [];
  for (let t = Math.floor(min / unit) * unit; ; t += unit) {
    ticks.push(Number(t.toPrecision(12)));
    if (t >= max - unit * 1e-9) break;
  }
  return ticks;
}

function panelSvg(panel: Panel, left: number, width: number, height: number): string {
  const margin = { top: 36, right: 16, bottom: 46, left: 62 };
  const points = panel.series.flatMap((s) => s.points.filter((p) => Number.isFinite(p.y)));
  const xs = points.map((p) => (panel.logX ? Math.log2(p.x) : p.x));
  const ys = points.flatMap((p) => [p.y, p.low ?? p.y, p.high ?? p.y]).filter(Number.isFinite);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  const yTicks = niceTicks(Math.min(0, ...ys), Math.max(...ys) * 1.05);
  const [yMin, yMax] = [yTicks[0] ?? 0, yTicks.at(-1) ?? 1];
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const px = (x: number) =>
    left + margin.left + (((panel.logX ? Math.log2(x) : x) - xMin) / Math.max(xMax - xMin, 1e-12)) * plotWidth;
  const py = (y: number) => margin.top + plotHeight - ((y - yMin) / Math.max(yMax - yMin, 1e-12)) * plotHeight;
  // Every x that occurs, unless there are many (a scatter): then round ticks over the range.
  const distinct = [...new Set(points.map((p) => p.x))].sort((a, b) => a - b);
  const xTickValues =
    distinct.length > 12 && !panel.logX ? niceTicks(xMin, xMax).filter((t) => t >= xMin && t <= xMax) : distinct;
  const parts: string[] = [];
  parts.push(
    `<text x="${left + width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(panel.title)}</text>`,
  );
  for (const tick of yTicks) {
    parts.push(
      `<line x1="${left + margin.left}" x2="${left + margin.left + plotWidth}" y1="${py(tick)}" y2="${py(tick)}" stroke="#e5e5e5"/>`,
    );
    parts.push(
      `<text x="${left + margin.left - 6}" y="${py(tick) + 4}" text-anchor="end" font-size="11">${tickLabel(tick)}</text>`,
    );
  }
  for (const tick of xTickValues) {
    parts.push(
      `<line x1="${px(tick)}" x2="${px(tick)}" y1="${margin.top}" y2="${margin.top + plotHeight}" stroke="#f0f0f0"/>`,
    );
    parts.push(
      `<text x="${px(tick)}" y="${margin.top + plotHeight + 16}" text-anchor="middle" font-size="11">${tickLabel(tick)}</text>`,
    );
  }
  parts.push(
    `<rect x="${left + margin.left}" y="${margin.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`,
  );
  parts.push(
    `<text x="${left + margin.left + plotWidth / 2}" y="${height - 8}" text-anchor="middle" font-size="12">${escapeXml(panel.xLabel)}</text>`,
  );
  parts.push(
    `<text transform="translate(${left + 14} ${margin.top + plotHeight / 2}) rotate(-90)" text-anchor="middle" font-size="12">${escapeXml(panel.yLabel)}</text>`,
  );
  panel.series.forEach((series, i) => {
    const color = PALETTE[i % PALETTE.length];
    const visible = series.points.filter((p) => Number.isFinite(p.y));
    for (const p of visible) {
      if (p.low === undefined || p.high === undefined || !Number.isFinite(p.low) || !Number.isFinite(p.high)) continue;
      const x = px(p.x).toFixed(1);
      parts.push(
        `<path d="M${x},${py(p.low).toFixed(1)} V${py(p.high).toFixed(1)} M${(px(p.x) - 3).toFixed(1)},${py(p.low).toFixed(1)} h6 M${(px(p.x) - 3).toFixed(1)},${py(p.high).toFixed(1)} h6" stroke="${color}" stroke-width="1"/>`,
      );
    }
    if (visible.length > 1 && series.line !== false) {
      const path = visible.map((p, j) => `${j === 0 ? 'M' : 'L'}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' ');
      parts.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="2"/>`);
    }
    for (const p of visible)
      parts.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3" fill="${color}"/>`);
    const legendY = margin.top + 14 + i * 16;
    parts.push(`<rect x="${left + margin.left + 8}" y="${legendY - 9}" width="12" height="3" fill="${color}"/>`);
    parts.push(
      `<text x="${left + margin.left + 24}" y="${legendY - 4}" font-size="11">${escapeXml(series.label)}</text>`,
    );
  });
  return parts.join('\n');
}

/** Panels side by side in one SVG document. */
export function lineChartsSvg(panels: readonly Panel[], panelWidth = 420, height = 320): string {
  const width = panelWidth * panels.length;
  const body = panels.map((panel, i) => panelSvg(panel, i * panelWidth, panelWidth, height)).join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${body}\n</svg>\n`;
}

/** A heatmap of values in [0, 1] (rows × columns), red (0) to green (1), each cell labelled with its value in %. */
export function heatmapSvg(options: {
  title: string;
  rowLabel: string;
  columnLabel: string;
  rows: readonly string[];
  columns: readonly string[];
  values: readonly (readonly number[])[];
}): string {
  const cell = 44;
  const margin = { top: 40, left: 90, bottom: 50 };
  const width = margin.left + cell * options.columns.length + 20;
  const height = margin.top + cell * options.rows.length + margin.bottom;
  const color = (v: number) => {
    const t = Math.min(1, Math.max(0, v));
    return `rgb(${Math.round(215 - 170 * t)},${Math.round(48 + 140 * t)},${Math.round(39 + 40 * t)})`;
  };
  const parts = [
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(options.title)}</text>`,
  ];
  options.values.forEach((row, r) => {
    row.forEach((value, c) => {
      const x = margin.left + c * cell;
      const y = margin.top + r * cell;
      parts.push(
        `<rect x="${x}" y="${y}" width="${cell - 1}" height="${cell - 1}" fill="${Number.isFinite(value) ? color(value) : '#ccc'}"/>`,
      );
      if (Number.isFinite(value)) {
        parts.push(
          `<text x="${x + cell / 2}" y="${y + cell / 2 + 4}" text-anchor="middle" font-size="11" fill="white">${Math.round(value * 100)}</text>`,
        );
      }
    });
    parts.push(
      `<text x="${margin.left - 6}" y="${margin.top + r * cell + cell / 2 + 4}" text-anchor="end" font-size="11">${escapeXml(options.rows[r] ?? '')}</text>`,
    );
  });
  options.columns.forEach((label, c) => {
    parts.push(
      `<text x="${margin.left + c * cell + cell / 2}" y="${margin.top + options.rows.length * cell + 16}" text-anchor="middle" font-size="11">${escapeXml(label)}</text>`,
    );
  });
  parts.push(
    `<text x="${margin.left + (cell * options.columns.length) / 2}" y="${height - 10}" text-anchor="middle" font-size="12">${escapeXml(options.columnLabel)}</text>`,
  );
  parts.push(
    `<text transform="translate(14 ${margin.top + (cell * options.rows.length) / 2}) rotate(-90)" text-anchor="middle" font-size="12">${escapeXml(options.rowLabel)}</text>`,
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
}
