// duo-bench chart: a line chart (PNG or SVG) of two fields of a list in a JSON file, e.g. a training loss curve.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { figurePath, lineChart, outputOption, parseOptions, UsageError, writeFigure } from '@duoattn/app-kit';

export const chartHelp = `duo-bench chart --json FILE --list KEY --x FIELD --y FIELD --out FILE.png|FILE.svg [--title TEXT]
  Plots y against x for every entry of the list under KEY (e.g. --list history --x step --y loss), the axes titled
  with the field names; the default title is "Y by X (FILE)".`;

export async function chartCommand(argv: string[], log: (line: string) => void): Promise<void> {
  const options = parseOptions(argv, {
    json: { type: 'string' },
    list: { type: 'string' },
    x: { type: 'string' },
    y: { type: 'string' },
    out: { type: 'string' },
    title: { type: 'string' },
  });
  for (const name of ['json', 'list', 'x', 'y', 'out'] as const) {
    if (options[name] === undefined) throw new UsageError(`--${name} is required`);
  }
  const out = outputOption('out', figurePath('out', String(options.out))) as string;
  let document: Record<string, unknown>;
  try {
    document = JSON.parse(readFileSync(String(options.json), 'utf8'));
  } catch (error) {
    throw new UsageError(`--json: cannot read "${String(options.json)}": ${(error as Error).message}`);
  }
  const list = document[String(options.list)];
  if (!Array.isArray(list) || list.length < 2) {
    throw new UsageError(
      `--list: expected "${String(options.list)}" to be a list of at least two entries in ${String(options.json)}`,
    );
  }
  const points = list.map((entry: Record<string, unknown>, i) => {
    const x = Number(entry[String(options.x)]);
    const y = Number(entry[String(options.y)]);
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      throw new UsageError(`--x/--y: entry ${i} has no numeric "${String(options.x)}" and "${String(options.y)}"`);
    }
    return { x, y };
  });
  const [x, y] = [String(options.x), String(options.y)];
  const title =
    options.title === undefined ? `${y} by ${x} (${basename(String(options.json))})` : String(options.title);
  await writeFigure(
    out,
    lineChart({ panels: [{ title, xTitle: x, yTitle: y, series: [{ label: y, points }] }], panelWidth: 640 }),
  );
  log(`wrote ${out}: ${points.length} points, ${String(options.y)} from ${points[0]?.y} to ${points.at(-1)?.y}`);
}
