import { basename } from 'node:path';
import {
  type FigurePanel,
  type FigureSeries,
  figurePath,
  lineChart,
  outputOption,
  parseOptions,
  UsageError,
  writeFigure,
} from '@duoattn/app-kit';
import { readJsonOption } from '../read-json.js';

export const chartHelp = `duo-bench chart --json FILE --list KEY --x FIELD --y FIELD --out FILE.png|FILE.svg [--title TEXT]
                [--series FIELD,...] [--panel FIELD] [--where FIELD=VALUE,...] [--log-x]
  Plots y against x for every entry of the list under KEY (e.g. --list history --x step --y loss), the axes titled
  with the field names; the default title is "Y by X (FILE)". --series: one line per value of these fields (joined
  in the legend); --panel: one panel per value of FIELD (titled with it); --where: only the entries whose fields hold
  these values (as text; VALUE|VALUE for either); --log-x: x on a log2 scale.`;

type Entry = Record<string, unknown>;

/** FIELD=VALUE pairs of --where. */
function filters(text: string | undefined): [string, string][] {
  if (text === undefined) return [];
  return text.split(',').map((pair) => {
    const at = pair.indexOf('=');
    if (at <= 0) throw new UsageError(`--where: expected FIELD=VALUE pairs separated by commas but received "${text}"`);
    return [pair.slice(0, at), pair.slice(at + 1)];
  });
}

export async function chartCommand(argv: string[], log: (line: string) => void): Promise<void> {
  const options = parseOptions(argv, {
    json: { type: 'string' },
    list: { type: 'string' },
    x: { type: 'string' },
    y: { type: 'string' },
    out: { type: 'string' },
    title: { type: 'string' },
    series: { type: 'string' },
    panel: { type: 'string' },
    where: { type: 'string' },
    'log-x': { type: 'boolean' },
  });
  for (const name of ['json', 'list', 'x', 'y', 'out'] as const) {
    if (options[name] === undefined) throw new UsageError(`--${name} is required`);
  }
  const out = outputOption('out', figurePath('out', String(options.out))) as string;
  const where = filters(options.where as string | undefined);
  const document = readJsonOption<Record<string, unknown>>('json', String(options.json));
  const list = document[String(options.list)];
  if (!Array.isArray(list) || list.length < 2) {
    throw new UsageError(
      `--list: expected "${String(options.list)}" to be a list of at least two entries in ${String(options.json)}`,
    );
  }
  const [x, y] = [String(options.x), String(options.y)];
  const seriesFields = options.series === undefined ? [] : String(options.series).split(',');
  const panelField = options.panel === undefined ? undefined : String(options.panel);
  const kept = (list as Entry[]).filter((entry) =>
    where.every(([field, values]) => values.split('|').includes(String(entry[field]))),
  );
  if (kept.length === 0)
    throw new UsageError(`--where: no entry of "${String(options.list)}" matches ${options.where}`);
  const panels = new Map<string, Map<string, { x: number; y: number }[]>>();
  kept.forEach((entry, i) => {
    const px = Number(entry[x]);
    const py = Number(entry[y]);
    if (!Number.isFinite(px) || !Number.isFinite(py)) {
      throw new UsageError(`--x/--y: entry ${i} has no numeric "${x}" and "${y}"`);
    }
    const panel = panelField === undefined ? '' : String(entry[panelField]);
    const label = seriesFields.length === 0 ? y : seriesFields.map((field) => String(entry[field])).join(' ');
    const lines = panels.get(panel) ?? new Map<string, { x: number; y: number }[]>();
    panels.set(panel, lines);
    const points = lines.get(label) ?? [];
    lines.set(label, points);
    points.push({ x: px, y: py });
  });
  const title =
    options.title === undefined ? `${y} by ${x} (${basename(String(options.json))})` : String(options.title);
  const figurePanels: FigurePanel[] = [...panels].map(([panel, lines]) => ({
    title: panelField === undefined ? title : panel,
    xTitle: x,
    yTitle: y,
    series: [...lines].map(([label, points]): FigureSeries => ({ label, points: points.sort((a, b) => a.x - b.x) })),
    ...(options['log-x'] ? { xScale: 'log2' as const } : {}),
  }));
  await writeFigure(
    out,
    lineChart({
      ...(panelField === undefined ? {} : { title }),
      panels: figurePanels,
      panelWidth: panelField === undefined ? 640 : 320,
      ...(seriesFields.length > 0 ? { legendTitle: seriesFields.join(' ') } : {}),
    }),
  );
  const first = figurePanels[0]?.series[0]?.points ?? [];
  const lines = figurePanels.reduce((sum, panel) => sum + panel.series.length, 0);
  log(
    `wrote ${out}: ${kept.length} points, ${y} from ${first[0]?.y} to ${first.at(-1)?.y}` +
      (lines > 1 ? ` (the first line; ${figurePanels.length} panel(s), ${lines} lines)` : ''),
  );
}
