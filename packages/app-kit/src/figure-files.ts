// Figures out of specs: SVG compiled by vega-lite and drawn by vega headlessly, PNG rasterized from it by resvg with
// the DejaVu fonts of an npm package (the same pixels on every machine, fonts installed or not); files by extension.
import { extname } from 'node:path';
import type { FigureSpec } from './figures.js';
import { FIGURE_FONT, figureFontFiles, textWidthEm } from './font-metrics.js';
import { writeText } from './result-records.js';
import { UsageError } from './usage-error.js';

/** The file formats a figure path may name, by extension. */
export const FIGURE_EXTENSIONS = ['.svg', '.png'] as const;

/** What vega's text metrics read of a text mark. */
interface TextItem {
  fontSize?: number | string | null;
  fontWeight?: number | string | null;
  limit?: number;
}

/** vega's text-measuring hook, which its type declarations leave out. */
interface VegaTextMetrics {
  textMetrics: { width: (item: TextItem, text: unknown) => number };
}

const isBold = (weight: TextItem['fontWeight']) => weight === 'bold' || Number(weight) >= 600;

/**
 * The figure's SVG document. vega and vega-lite are loaded on first use, so commands that draw nothing do not pay
 * for them. Warnings of the compiler (a spec that asks for something vega-lite cannot draw) are errors here: a
 * figure that silently drops a layer would mislead.
 */
export async function toSvg(spec: FigureSpec): Promise<string> {
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  // Lay text out with the advance widths of the font the PNG is drawn in (vl-convert replaces this hook the same way).
  (vega as unknown as VegaTextMetrics).textMetrics.width = (item, text) => {
    const line = text == null ? '' : String(text).trim();
    const width = textWidthEm(line, isBold(item.fontWeight)) * (item.fontSize == null ? 11 : Number(item.fontSize));
    return item.limit !== undefined && item.limit > 0 ? Math.min(width, item.limit) : width;
  };
  const problems: string[] = [];
  const logger = vega.logger(vega.Warn);
  logger.warn = (...messages: unknown[]) => {
    problems.push(messages.map(String).join(' '));
    return logger;
  };
  const compiled = vegaLite.compile(spec, { logger }).spec;
  if (problems.length > 0) throw new Error(`figure spec: ${problems.join('; ')}`);
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Warn });
  try {
    return `${await view.toSVG()}\n`;
  } finally {
    view.finalize();
  }
}

/** `svg` as PNG bytes, `scale` device pixels per SVG pixel (2: sharp on high-density screens), on white. */
export async function svgToPng(svg: string, scale = 2): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js');
  const renderer = new Resvg(svg, {
    background: 'white',
    fitTo: { mode: 'zoom', value: scale },
    font: {
      loadSystemFonts: false,
      fontFiles: figureFontFiles(),
      defaultFontFamily: FIGURE_FONT,
      sansSerifFamily: FIGURE_FONT,
    },
  });
  return renderer.render().asPng();
}

/** The figure as PNG bytes (`scale` as for `svgToPng`). */
export async function toPng(spec: FigureSpec, scale = 2): Promise<Buffer> {
  return svgToPng(await toSvg(spec), scale);
}

/**
 * `path` when it names a figure format (.svg or .png), else a UsageError that names `option` — check figure paths
 * when the options are read, before a long run, not when the figure is written.
 */
export function figurePath(option: string, path: string): string {
  if (!FIGURE_EXTENSIONS.some((extension) => extname(path).toLowerCase() === extension)) {
    throw UsageError.invalid(option, `a figure file ending in ${FIGURE_EXTENSIONS.join(' or ')}`, path);
  }
  return path;
}

/** Writes the figure to `path` as SVG or PNG, by its extension (the folder is made). */
export async function writeFigure(path: string, spec: FigureSpec): Promise<void> {
  const extension = extname(figurePath('out', path)).toLowerCase();
  const svg = await toSvg(spec);
  writeText(path, extension === '.png' ? await svgToPng(svg) : svg);
}
