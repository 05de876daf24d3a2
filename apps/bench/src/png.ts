// A dependency-free PNG writer (8-bit RGB, zlib from Node) and a line chart drawn into it.
import { deflateSync } from 'node:zlib';

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = (CRC_TABLE[(crc ^ byte) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), 8 + data.length);
  return out;
}

/** An RGB image to draw on. */
export class Canvas {
  readonly pixels: Uint8Array;
  constructor(
    readonly width: number,
    readonly height: number,
    background: [number, number, number] = [255, 255, 255],
  ) {
    this.pixels = new Uint8Array(width * height * 3);
    for (let i = 0; i < width * height; i++) this.pixels.set(background, i * 3);
  }

  set(x: number, y: number, color: [number, number, number]): void {
    const px = Math.round(x);
    const py = Math.round(y);
    if (px < 0 || py < 0 || px >= this.width || py >= this.height) return;
    this.pixels.set(color, (py * this.width + px) * 3);
  }

  /** A line of `thickness` pixels from (x0, y0) to (x1, y1). */
  line(x0: number, y0: number, x1: number, y1: number, color: [number, number, number], thickness = 1): void {
    const steps = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let s = 0; s <= steps; s++) {
      const x = x0 + ((x1 - x0) * s) / steps;
      const y = y0 + ((y1 - y0) * s) / steps;
      for (let dx = 0; dx < thickness; dx++) for (let dy = 0; dy < thickness; dy++) this.set(x + dx, y + dy, color);
    }
  }

  /** PNG bytes (8-bit RGB, no interlace). */
  toPng(): Buffer {
    const raw = Buffer.alloc((this.width * 3 + 1) * this.height);
    for (let y = 0; y < this.height; y++) {
      raw[y * (this.width * 3 + 1)] = 0;
      raw.set(this.pixels.subarray(y * this.width * 3, (y + 1) * this.width * 3), y * (this.width * 3 + 1) + 1);
    }
    const header = Buffer.alloc(13);
    header.writeUInt32BE(this.width, 0);
    header.writeUInt32BE(this.height, 4);
    header[8] = 8; // bit depth
    header[9] = 2; // RGB
    return Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      chunk('IHDR', header),
      chunk('IDAT', deflateSync(raw)),
      chunk('IEND', new Uint8Array(0)),
    ]);
  }
}

/**
 * A line chart of `points` with axes and a light grid (10 divisions each way); returns the PNG. Text labels belong in
 * the caption around the image.
 */
export function lineChart(points: readonly { x: number; y: number }[], width = 720, height = 360): Buffer {
  const canvas = new Canvas(width, height);
  const margin = 30;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [xMin, xMax, yMin, yMax] = [Math.min(...xs), Math.max(...xs), Math.min(0, ...ys), Math.max(...ys)];
  const px = (x: number) => margin + ((x - xMin) / Math.max(xMax - xMin, 1e-12)) * (width - 2 * margin);
  const py = (y: number) => height - margin - ((y - yMin) / Math.max(yMax - yMin, 1e-12)) * (height - 2 * margin);
  for (let i = 0; i <= 10; i++) {
    const gx = margin + (i / 10) * (width - 2 * margin);
    const gy = margin + (i / 10) * (height - 2 * margin);
    canvas.line(gx, margin, gx, height - margin, [230, 230, 230]);
    canvas.line(margin, gy, width - margin, gy, [230, 230, 230]);
  }
  canvas.line(margin, height - margin, width - margin, height - margin, [0, 0, 0], 2);
  canvas.line(margin, margin, margin, height - margin, [0, 0, 0], 2);
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1] as { x: number; y: number };
    const b = points[i] as { x: number; y: number };
    canvas.line(px(a.x), py(a.y), px(b.x), py(b.y), [31, 119, 180], 2);
  }
  return canvas.toPng();
}

/**
 * A heatmap of `values` (rows × columns, each in [0, 1]; NaN for an empty cell): red at 0 through yellow to green at
 * 1, empty cells grey, one-pixel white grid lines. Row 0 is drawn at the top; labels belong in the caption.
 */
export function heatmapPng(values: readonly (readonly number[])[], cellWidth = 48, cellHeight = 24): Buffer {
  const rows = values.length;
  const columns = Math.max(0, ...values.map((row) => row.length));
  const canvas = new Canvas(Math.max(1, columns * cellWidth), Math.max(1, rows * cellHeight));
  values.forEach((row, r) => {
    for (let c = 0; c < columns; c++) {
      const color = heatColor(row[c] ?? Number.NaN);
      for (let y = 1; y < cellHeight; y++)
        for (let x = 1; x < cellWidth; x++) canvas.set(c * cellWidth + x, r * cellHeight + y, color);
    }
  });
  return canvas.toPng();
}

/** Red (0) → yellow (0.5) → green (1); grey for NaN. */
export function heatColor(value: number): [number, number, number] {
  if (Number.isNaN(value)) return [200, 200, 200];
  const v = Math.min(1, Math.max(0, value));
  return v < 0.5
    ? [215, Math.round(48 + (v / 0.5) * (200 - 48)), 39]
    : [Math.round(215 - ((v - 0.5) / 0.5) * (215 - 26)), 200, Math.round(39 + ((v - 0.5) / 0.5) * (150 - 39))];
}
