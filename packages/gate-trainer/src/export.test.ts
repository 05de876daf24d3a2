import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPattern } from '@duoattn/dual-cache';
import { describe, expect, it } from 'vitest';
import { exportPattern, modelHash } from './export.js';

describe('exportPattern', () => {
  it('writes the reference files and our JSON; both load back with the clipped gates and the window', () => {
    const directory = mkdtempSync(join(tmpdir(), 'pattern-'));
    const provenance = { modelHash: 'sha256:00', steps: 50, data: { haystack: 'book.txt' } };
    const pattern = exportPattern(directory, {
      gates: [0.25, 1.3, -0.2, 0.875, 0.5, 0.0625],
      layers: 3,
      kvHeads: 2,
      sink: 64,
      recent: 256,
      modelId: 'duo-demo',
      provenance,
    });
    expect(pattern.gates).toEqual([
      [0.25, 1],
      [0, 0.875],
      [0.5, 0.0625],
    ]);
    const reference = loadPattern(directory);
    expect(reference.gates).toEqual(pattern.gates);
    expect([reference.sink, reference.recent, reference.modelId]).toEqual([64, 256, 'duo-demo']);
    expect(readFileSync(join(directory, 'full_attention_heads.tsv'), 'utf8').split('\n')[0]).toBe(
      '2.500000000000000000e-01\t1.000000000000000000e+00',
    );
    const ours = loadPattern(join(directory, 'pattern.json'));
    expect(ours.gates).toEqual(pattern.gates);
    expect(ours.provenance).toEqual(provenance);
  });

  it('rejects a gate count that does not match the shape', () => {
    expect(() =>
      exportPattern(tmpdir(), { gates: [1, 1, 1], layers: 2, kvHeads: 2, sink: 4, recent: 8, provenance: {} }),
    ).toThrow('Expected 2 × 2 = 4 gates but received 3');
  });
});

describe('modelHash', () => {
  it('hashes config and weight files in name order; any byte changes it', () => {
    const directory = mkdtempSync(join(tmpdir(), 'model-'));
    writeFileSync(join(directory, 'config.json'), '{"hidden_size": 8}');
    writeFileSync(join(directory, 'model.safetensors'), Buffer.from([1, 2, 3, 4]));
    writeFileSync(join(directory, 'README.md'), 'not part of the model');
    const first = modelHash(directory);
    expect(first).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(modelHash(directory)).toBe(first);
    writeFileSync(join(directory, 'README.md'), 'edited');
    expect(modelHash(directory)).toBe(first);
    writeFileSync(join(directory, 'model.safetensors'), Buffer.from([1, 2, 3, 5]));
    expect(modelHash(directory)).not.toBe(first);
    expect(() => modelHash(mkdtempSync(join(tmpdir(), 'empty-')))).toThrow(
      /Expected model files in ".*" but found none/,
    );
  });
});
