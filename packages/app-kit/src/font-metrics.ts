// The figures' font, DejaVu Sans from the dejavu-fonts-ttf package: its files for the rasterizer, and the advance
// width of each character read from them, so vega lays text out for the font resvg draws (vega alone guesses 0.8 em
// a character, which widens legends, truncates labels and hides axis labels it thinks overlap).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

/** The family name the SVGs use. */
export const FIGURE_FONT = 'DejaVu Sans';

const FILES = { regular: 'DejaVuSans.ttf', bold: 'DejaVuSans-Bold.ttf' } as const;

/** Paths of the regular and bold font files. */
export function figureFontFiles(): string[] {
  const require = createRequire(import.meta.url);
  return Object.values(FILES).map((file) => require.resolve(`dejavu-fonts-ttf/ttf/${file}`));
}

/** Advance widths in em of a TrueType font's characters (cmap format 4, the Basic Multilingual Plane). */
function advanceWidths(font: Buffer): (codePoint: number) => number | undefined {
  const tables = new Map<string, number>();
  for (let i = 0; i < font.readUInt16BE(4); i++) {
    tables.set(font.toString('latin1', 12 + 16 * i, 16 + 16 * i), font.readUInt32BE(20 + 16 * i));
  }
  const table = (tag: string) => {
    const offset = tables.get(tag);
    if (offset === undefined) throw new Error(`font: no ${tag} table`);
    return offset;
  };
  const unitsPerEm = font.readUInt16BE(table('head') + 18);
  const metrics = font.readUInt16BE(table('hhea') + 34);
  const hmtx = table('hmtx');
  const advance = (glyph: number) => font.readUInt16BE(hmtx + 4 * Math.min(glyph, metrics - 1)) / unitsPerEm;
  const cmap = table('cmap');
  let subtable: number | undefined;
  for (let i = 0; i < font.readUInt16BE(cmap + 2); i++) {
    const record = cmap + 4 + 8 * i;
    const [platform, encoding] = [font.readUInt16BE(record), font.readUInt16BE(record + 2)];
    const offset = cmap + font.readUInt32BE(record + 4);
    if (((platform === 3 && encoding === 1) || platform === 0) && font.readUInt16BE(offset) === 4) subtable = offset;
  }
  if (subtable === undefined) throw new Error('font: no cmap format 4 subtable');
  const segments = font.readUInt16BE(subtable + 6) / 2;
  const ends = subtable + 14;
  const starts = ends + 2 * segments + 2;
  const deltas = starts + 2 * segments;
  const rangeOffsets = deltas + 2 * segments;
  return (codePoint) => {
    for (let s = 0; s < segments; s++) {
      if (font.readUInt16BE(ends + 2 * s) < codePoint) continue;
      const start = font.readUInt16BE(starts + 2 * s);
      if (start > codePoint) return undefined;
      const delta = font.readUInt16BE(deltas + 2 * s);
      const rangeOffset = font.readUInt16BE(rangeOffsets + 2 * s);
      if (rangeOffset === 0) return advance((codePoint + delta) & 0xffff);
      const glyph = font.readUInt16BE(rangeOffsets + 2 * s + rangeOffset + 2 * (codePoint - start));
      return glyph === 0 ? undefined : advance((glyph + delta) & 0xffff);
    }
    return undefined;
  };
}

type Face = { width: (codePoint: number) => number | undefined; cache: Map<number, number> };
let faces: { regular: Face; bold: Face } | undefined;

/** The width of `text` in em, in the regular or the bold face (characters the font lacks count 0.6 em). */
export function textWidthEm(text: string, bold = false): number {
  faces ??= (() => {
    const [regular, boldFace] = figureFontFiles().map((file) => ({
      width: advanceWidths(readFileSync(file)),
      cache: new Map<number, number>(),
    }));
    return { regular: regular as Face, bold: boldFace as Face };
  })();
  const face = bold ? faces.bold : faces.regular;
  let total = 0;
  for (const character of text) {
    const codePoint = character.codePointAt(0) as number;
    let width = face.cache.get(codePoint);
    if (width === undefined) {
      width = (codePoint <= 0xffff ? face.width(codePoint) : undefined) ?? 0.6;
      face.cache.set(codePoint, width);
    }
    total += width;
  }
  return total;
}
