// Result records: provenance first, settings, then the figures at the top level; statistics of repeated timings.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readEnvironment } from '@duoattn/core';
import { afterAll, describe, expect, it } from 'vitest';
import { currentCommit, type ResultRecord, writeResult, writeText } from './result-records.js';
import { median, quantile } from './statistics.js';

const out = mkdtempSync(join(tmpdir(), 'app-kit-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('result records', () => {
  it('writes provenance, settings and figures, making the folder', () => {
    const file = join(out, 'deep', 'run.json');
    const record: ResultRecord<{ model: string }, { decode: number[] }> = writeResult(
      file,
      'test card',
      { model: 'demo' },
      { decode: [1, 2] },
    );
    const text = readFileSync(file, 'utf8');
    expect(JSON.parse(text)).toEqual(record);
    expect(Object.keys(record)).toEqual(['card', 'commit', 'date', 'node', 'settings', 'decode']);
    expect(record.settings.model).toBe('demo');
    expect(record.node).toBe(process.version);
    expect(Number.isNaN(Date.parse(record.date))).toBe(false);
    expect(text.endsWith('}\n')).toBe(true);
  });

  it('takes the commit from DUO_COMMIT when set, else git or "unknown"', () => {
    expect(currentCommit({ commit: 'abc123' })).toBe('abc123');
    expect(currentCommit(readEnvironment({ DUO_COMMIT: 'def456' }))).toBe('def456');
    expect(currentCommit({})).toMatch(/^([0-9a-f]{12}|unknown)$/);
  });

  it('writes text into a new folder', () => {
    const file = join(out, 'a', 'b.csv');
    writeText(file, 'x,y\n');
    expect(readFileSync(file, 'utf8')).toBe('x,y\n');
  });
});

describe('statistics', () => {
  it('median and nearest-rank quantiles', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBe(0);
    expect(quantile([5, 1, 4, 2, 3], 0.1)).toBe(1);
    expect(quantile([5, 1, 4, 2, 3], 0.9)).toBe(5);
    expect(quantile([5, 1, 4, 2, 3], 0.5)).toBe(3);
  });
});
