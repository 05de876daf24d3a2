// Figures: the specs carry titles, axis titles and legends; the SVG shows them; the PNG is a real, non-blank image.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { figurePath, svgToPng, toPng, toSvg, writeFigure } from './figure-files.js';
import { heatmap, lineChart, tokenCountLabel, wrapTitle } from './figures.js';
import { textWidthEm } from './font-metrics.js';
import { UsageError } from './usage-error.js';

const out = mkdtempSync(join(tmpdir(), 'figures-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const decode = lineChart({
  title: 'Decode <latency> & memory',
  panels: [
    {
      title: 'Decode latency',
      xTitle: 'context (tokens)',
      yTitle: 'ms / token',
      xScale: 'log2',
      series: [
        { label: 'full', points: [1024, 4096, 32768].map((x, i) => ({ x, y: 2 + i })) },
        {
          label: 'duo 50 %',
          points: [1024, 4096, 32768].map((x, i) => ({ x, y: 1 + i / 2, low: 0.9 + i / 2, high: 1.1 + i / 2 })),
        },
        { label: 'did not fit', points: [{ x: 1024, y: Number.NaN }] },
      ],
    },
    {
      title: 'Peak memory',
      xTitle: 'context (tokens)',
      yTitle: 'GB',
      xScale: 'log2',
      series: [{ label: 'full', points: [1024, 4096, 32768].map((x, i) => ({ x, y: i })) }],
    },
  ],
});

const accuracy = heatmap({
  title: 'Passkey accuracy (%), streaming',
  xTitle: 'context (tokens)',
  yTitle: 'needle depth',
  columns: ['1K', '2K'],
  rows: ['25 %', '75 %'],
  values: [
    [100, 50],
    [0, Number.NaN],
  ],
  domain: [0, 100],
  legendTitle: 'accuracy (%)',
});

/** Width, height and RGBA pixels of a PNG (8-bit RGB or RGBA, as resvg writes), unfiltered. */
function decodePng(png: Buffer): { width: number; height: number; channels: number; pixels: Uint8Array } {
  expect(Array.from(png.subarray(0, 8))).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const width = png.readUInt32BE(16);
  const height = png.readUInt32BE(20);
  const channels = png[25] === 6 ? 4 : 3;
  const data: Buffer[] = [];
  for (let offset = 8; offset < png.length; ) {
    const length = png.readUInt32BE(offset);
    if (png.toString('ascii', offset + 4, offset + 8) === 'IDAT')
      data.push(png.subarray(offset + 8, offset + 8 + length));
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(data));
  const stride = width * channels;
  const pixels = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const byte = raw[y * (stride + 1) + 1 + x] as number;
      const left = x >= channels ? (pixels[y * stride + x - channels] as number) : 0;
      const up = y > 0 ? (pixels[(y - 1) * stride + x] as number) : 0;
      const upLeft = x >= channels && y > 0 ? (pixels[(y - 1) * stride + x - channels] as number) : 0;
      const paeth = () => {
        const p = left + up - upLeft;
        const [a, b, c] = [Math.abs(p - left), Math.abs(p - up), Math.abs(p - upLeft)];
        return a <= b && a <= c ? left : b <= c ? up : upLeft;
      };
      const predictor = [0, left, up, (left + up) >> 1, paeth()][filter ?? 0] as number;
      pixels[y * stride + x] = (byte + predictor) & 0xff;
    }
  }
  return { width, height, channels, pixels };
}

describe('figures', () => {
  it('line charts carry the title, axis titles, a log-2 token axis and one legend outside the data', () => {
    const spec = JSON.stringify(decode);
    for (const text of ['Decode latency', 'Peak memory', 'context (tokens)', 'ms / token', '"GB"', 'errorbar']) {
      expect(spec).toContain(text);
    }
    expect(decode).toMatchObject({ columns: 2, resolve: { legend: { color: 'shared' } } });
    expect(decode.config?.legend?.orient).toBe('right');
    // A series without a finite point has no legend entry.
    expect(spec).toContain('"domain":["full","duo 50 %"]');
  });

  it('the SVG shows the titles, the axis labels and the legend', async () => {
    const svg = await toSvg(decode);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.endsWith('</svg>\n')).toBe(true);
    for (const text of ['Decode &lt;latency&gt; &amp; memory', 'Decode latency', 'context (tokens)', 'ms / token']) {
      expect(svg).toContain(text);
    }
    for (const tick of ['>1K<', '>4K<', '>32K<', '>full<', '>duo 50 %<']) expect(svg).toContain(tick);
    expect(svg).not.toContain('did not fit');
  });

  it('a panel without a finite point still draws its title and axes', async () => {
    const empty = { title: 'Out of memory everywhere', xTitle: 'context (tokens)', yTitle: 'ms / token' };
    const svg = await toSvg(
      lineChart({ panels: [{ ...empty, series: [{ label: 'full', points: [{ x: 1, y: Number.NaN }] }] }] }),
    );
    for (const text of ['Out of memory everywhere', 'context (tokens)', 'ms / token']) expect(svg).toContain(text);
  });

  it('heatmaps have a colour legend, labelled cells and grey cells where there is no value', async () => {
    const svg = await toSvg(accuracy);
    for (const text of ['Passkey accuracy (%), streaming', 'accuracy (%)', 'needle depth', '>25 %<', '>2K<']) {
      expect(svg).toContain(text);
    }
    for (const value of ['>100<', '>50<', '>0<']) expect(svg).toContain(value);
    expect(svg).toContain('#d0d0d0');
    expect(JSON.stringify(accuracy)).toContain('"legend":{"title":"accuracy (%)"');
  });

  it('the PNG has the requested size and is not blank', async () => {
    const svg = await toSvg(accuracy);
    const [, svgWidth, svgHeight] = /width="(\d+)" height="(\d+)"/.exec(svg) ?? [];
    for (const scale of [1, 2]) {
      const { width, height, channels, pixels } = decodePng(await toPng(accuracy, scale));
      expect(width).toBe(Number(svgWidth) * scale);
      expect(height).toBe(Number(svgHeight) * scale);
      const colours = new Set<number>();
      for (let i = 0; i < pixels.length; i += channels) {
        colours.add(((pixels[i] as number) << 16) | ((pixels[i + 1] as number) << 8) | (pixels[i + 2] as number));
      }
      expect(colours.size).toBeGreaterThan(20);
    }
  });

  it('draws text with the packaged font, whatever fonts the system has', async () => {
    const text = (family: string) =>
      `<svg xmlns="http://www.w3.org/2000/svg" width="80" height="24"><text x="4" y="18" font-family="${family}" font-size="16">Ag</text></svg>`;
    for (const family of ['DejaVu Sans', 'sans-serif', 'Helvetica']) {
      const { pixels, channels } = decodePng(await svgToPng(text(family), 1));
      let dark = 0;
      for (let i = 0; i < pixels.length; i += channels) if ((pixels[i] as number) < 128) dark++;
      expect(dark).toBeGreaterThan(20);
    }
  });

  it('writes SVG or PNG by the extension and refuses others before drawing', async () => {
    await writeFigure(join(out, 'deep', 'map.svg'), accuracy);
    await writeFigure(join(out, 'map.png'), accuracy);
    expect(readFileSync(join(out, 'deep', 'map.svg'), 'utf8')).toContain('needle depth');
    expect(readFileSync(join(out, 'map.png')).subarray(1, 4).toString()).toBe('PNG');
    expect(figurePath('plot', 'a/b.PNG')).toBe('a/b.PNG');
    expect(() => figurePath('plot', 'figure.jpg')).toThrow(/--plot: expected a figure file ending in \.svg or \.png/);
    await expect(writeFigure(join(out, 'map.gif'), accuracy)).rejects.toSatisfy(UsageError.isInstance);
  });

  it('measures text with the advance widths of the packaged font', () => {
    // DejaVu Sans: digits are 1303 of 2048 units wide, a space 651; bold is wider; unknown characters count 0.6 em.
    expect(textWidthEm('0123456789')).toBeCloseTo((10 * 1303) / 2048, 9);
    expect(textWidthEm(' ')).toBeCloseTo(651 / 2048, 9);
    expect(textWidthEm('Decode latency', true)).toBeGreaterThan(textWidthEm('Decode latency'));
    expect(textWidthEm('W')).toBeGreaterThan(2 * textWidthEm('i'));
    expect(textWidthEm('\u{1F600}')).toBe(0.6);
  });

  it('labels token counts and wraps long titles instead of clipping them', () => {
    expect([512, 4096, 32768, 1 << 20, 499670, 1007574, 3669978].map(tokenCountLabel)).toEqual([
      '512',
      '4K',
      '32K',
      '1M',
      '488K',
      '984K',
      '3.5M',
    ]);
    const lines = wrapTitle('ACCS by distance: duo 50 %, synthetic P=64 noise 0.1, a title longer than its panel', 200);
    expect(Array.isArray(lines) && lines.length).toBeGreaterThan(1);
    expect(wrapTitle('Short', 200)).toBe('Short');
  });
});
