// The PNG writer produces a valid file (signature, chunk CRCs, pixels that inflate back) and the chart draws its line.
import { inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { Canvas, heatColor, heatmapPng, lineChart } from './png.js';

function chunks(png: Buffer): { type: string; data: Buffer }[] {
  const out = [];
  for (let offset = 8; offset < png.length; ) {
    const length = png.readUInt32BE(offset);
    out.push({
      type: png.toString('ascii', offset + 4, offset + 8),
      data: png.subarray(offset + 8, offset + 8 + length),
    });
    offset += 12 + length;
  }
  return out;
}

describe('png', () => {
  it('writes a PNG whose pixels inflate back', () => {
    const canvas = new Canvas(3, 2);
    canvas.set(1, 1, [10, 20, 30]);
    const png = canvas.toPng();
    expect(Array.from(png.subarray(0, 8))).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const parts = chunks(png);
    expect(parts.map((p) => p.type)).toEqual(['IHDR', 'IDAT', 'IEND']);
    expect(parts[0]?.data.readUInt32BE(0)).toBe(3);
    const raw = inflateSync(parts[1]?.data as Buffer);
    expect(raw.length).toBe(2 * (3 * 3 + 1));
    expect(Array.from(raw.subarray(10 + 1 + 3, 10 + 1 + 6))).toEqual([10, 20, 30]);
  });

  it('draws a descending line from the top left to the bottom right', () => {
    const png = lineChart(
      [
        { x: 0, y: 10 },
        { x: 1, y: 0 },
      ],
      100,
      100,
    );
    const raw = inflateSync(chunks(png)[1]?.data as Buffer);
    const blueAt = (x: number, y: number) => raw[y * (100 * 3 + 1) + 1 + x * 3 + 2] === 180;
    // The plot area spans 30…70 both ways: the line runs from (30, 30) to (70, 70).
    expect(blueAt(50, 50)).toBe(true);
    expect(blueAt(60, 60)).toBe(true);
    expect(blueAt(50, 35)).toBe(false);
  });

  it('draws a heatmap: one coloured cell per value, grey where there is none, white grid lines', () => {
    const png = heatmapPng(
      [
        [0, 1],
        [Number.NaN, 0.5],
      ],
      10,
      8,
    );
    const parts = chunks(png);
    expect(parts[0]?.data.readUInt32BE(0)).toBe(20);
    expect(parts[0]?.data.readUInt32BE(4)).toBe(16);
    const raw = inflateSync(parts[1]?.data as Buffer);
    const pixel = (x: number, y: number) => Array.from(raw.subarray(y * 61 + 1 + x * 3, y * 61 + 1 + x * 3 + 3));
    expect(pixel(5, 4)).toEqual(heatColor(0));
    expect(pixel(15, 4)).toEqual(heatColor(1));
    expect(pixel(5, 12)).toEqual([200, 200, 200]);
    expect(pixel(15, 12)).toEqual(heatColor(0.5));
    expect(pixel(10, 4)).toEqual([255, 255, 255]);
    expect(heatColor(0)[0]).toBeGreaterThan(heatColor(0)[1]);
    expect(heatColor(1)[1]).toBeGreaterThan(heatColor(1)[0]);
  });
});
