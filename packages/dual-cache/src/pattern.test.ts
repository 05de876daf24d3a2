// Head patterns: the reference's six trained patterns load; binarization is exact and deterministic; formats round-trip.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError, DuoCheckpointError, retrievalHeadCount } from '@duoattn/core';
import { sharedPath, sharedSkipReason } from '@duoattn/kernels/testing';
import { describe, expect, it } from 'vitest';
import { evenPlan, invertPlan, planHeads, uniformPlan } from './binarize.js';
import {
  formatGateTable,
  GATE_TOLERANCE,
  loadPattern,
  patternFromJson,
  patternToJson,
  readReferencePattern,
  savePattern,
  writeReferencePattern,
} from './pattern-io.js';

const patternsSkip = sharedSkipReason('reference-patterns');
const patternDirectories = () => {
  const root = sharedPath('reference-patterns') as string;
  return readdirSync(root, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => join(root, entry.name));
};

describe.skipIf(patternsSkip !== undefined)(
  `reference patterns${patternsSkip ? ` (skipped: ${patternsSkip})` : ''}`,
  () => {
    it('loads all six, with the window of their config.json', () => {
      const directories = patternDirectories();
      expect(directories).toHaveLength(6);
      for (const directory of directories) {
        const pattern = readReferencePattern(directory);
        expect(pattern.gates.length, directory).toBe(32);
        expect([8, 32], directory).toContain(pattern.gates[0]?.length);
        expect(pattern.sink).toBe(128);
        expect(pattern.recent).toBe(256);
        expect(pattern.modelId).toMatch(/^models\//);
      }
    });

    it.each([0.5, 0.75])(
      'binarizes at sparsity %f to exactly round(sparsity × total) streaming heads, the same every run',
      (sparsity) => {
        for (const directory of patternDirectories()) {
          const pattern = loadPattern(directory);
          const total = pattern.gates.length * (pattern.gates[0]?.length ?? 0);
          const plan = planHeads(pattern, { sparsity });
          expect(total - retrievalHeadCount(plan), directory).toBe(Math.round(sparsity * total));
          expect(planHeads(loadPattern(directory), { sparsity }).retrievalHeads).toEqual(plan.retrievalHeads);
          // Every retrieval head's gate is ≥ every streaming head's gate.
          const gate = (layer: number, head: number) => Math.min(1, Math.max(0, pattern.gates[layer]?.[head] ?? 0));
          let lowestKept = 1;
          let highestDropped = 0;
          for (const [layer, row] of pattern.gates.entries()) {
            for (const head of row.keys()) {
              if (plan.retrievalHeads[layer]?.includes(head)) lowestKept = Math.min(lowestKept, gate(layer, head));
              else highestDropped = Math.max(highestDropped, gate(layer, head));
            }
          }
          expect(lowestKept).toBeGreaterThanOrEqual(highestDropped);
        }
      },
    );

    it('writes the reference format back byte for byte in numpy style', () => {
      const directory = patternDirectories()[0] as string;
      const original = readFileSync(join(directory, 'full_attention_heads.tsv'), 'utf8');
      const pattern = readReferencePattern(directory);
      expect(formatGateTable(pattern.gates)).toBe(original);
      const out = mkdtempSync(join(tmpdir(), 'duo-pattern-'));
      writeReferencePattern(out, pattern);
      const again = readReferencePattern(out);
      expect(again.gates).toEqual(pattern.gates);
      expect([again.sink, again.recent]).toEqual([128, 256]);
    });
  },
);

describe('patterns and plans', () => {
  const pattern = {
    gates: [
      [0.9, 0.1, 1, 1],
      [1, 1, 0.2, -0.0001],
    ],
    sink: 4,
    recent: 16,
    modelId: 'fixture',
    provenance: { steps: 3 },
  };

  it('round-trips our JSON form and rejects malformed files with the file named', () => {
    expect(patternFromJson(patternToJson(pattern))).toEqual(pattern);
    const file = join(mkdtempSync(join(tmpdir(), 'duo-pattern-')), 'pattern.json');
    savePattern(file, pattern);
    expect(loadPattern(file)).toEqual(pattern);
    writeFileSync(file, JSON.stringify({ format: 'duoattn-head-pattern', gates: [[1, 2], [3]], sink: 1, recent: 2 }));
    expect(() => loadPattern(file)).toThrow(DuoCheckpointError);
    expect(() => loadPattern(file)).toThrow(`${file}: layer 1 has 1 gates but layer 0 has 2`);
    expect(() => patternFromJson('{"format":"other"}', 'x.json')).toThrow(
      'x.json: expected "format": "duoattn-head-pattern"',
    );
  });

  it('ties among equal gates break the same way every time, and sparsity 0 and 1 are all-full and all-streaming', () => {
    const half = planHeads(pattern, { sparsity: 0.5 });
    expect(retrievalHeadCount(half)).toBe(4);
    // The four 1.0 gates tie for the last retrieval places: two of them must go, by the fixed tie order.
    expect(half.retrievalHeads.flat().length).toBe(4);
    expect(planHeads(pattern, { sparsity: 0.5 }).retrievalHeads).toEqual(half.retrievalHeads);
    expect(planHeads(pattern, { sparsity: 0 }).retrievalHeads).toEqual([
      [0, 1, 2, 3],
      [0, 1, 2, 3],
    ]);
    expect(retrievalHeadCount(planHeads(pattern, { sparsity: 1 }))).toBe(0);
    expect(planHeads(pattern, { threshold: 0.5 }).retrievalHeads).toEqual([
      [0, 2, 3],
      [0, 1],
    ]);
    expect(planHeads(pattern, { sparsity: 0.5, sink: 64 }).sink).toBe(64);
  });

  it('inverts plans, and names bad options', () => {
    const plan = planHeads(pattern, { threshold: 0.5 });
    expect(invertPlan(plan).retrievalHeads).toEqual([[1], [2, 3]]);
    expect(uniformPlan('streaming', 3, 2).retrievalHeads).toEqual([[], [], []]);
    const even = evenPlan(3, 4, 0.6);
    expect(even.retrievalHeads.map((heads) => heads.length)).toEqual([1, 2, 2]);
    expect(even.sparsity).toBe(7 / 12);
    expect(evenPlan(32, 8, 0.5).retrievalHeads.every((heads) => heads.length === 4)).toBe(true);
    expect(() => planHeads(pattern, { sparsity: 1.5 })).toThrow(DuoArgumentError);
    expect(() => planHeads(pattern, { sparsity: 1.5 })).toThrow('Expected `sparsity` in [0, 1] but received 1.5');
    expect(() => planHeads(pattern, { sparsity: 0.5, recent: 0 })).toThrow(
      'Expected `recent` to be a positive integer',
    );
  });
});

describe('hostile pattern files', () => {
  const directory = () => mkdtempSync(join(tmpdir(), 'duo-pattern-hostile-'));
  /** A reference-format directory holding `table` and a valid config.json. */
  const referenceDirectory = (table: string, config: object = { sink_size: 4, recent_size: 16 }) => {
    const path = directory();
    writeFileSync(join(path, 'full_attention_heads.tsv'), table);
    writeFileSync(join(path, 'config.json'), JSON.stringify(config));
    return path;
  };
  const json = (gates: number[][], extra: object = {}) =>
    JSON.stringify({ format: 'duoattn-head-pattern', gates, sink: 4, recent: 16, ...extra });

  it.each([
    [-0.5, 'layer 1, head 0 has gate -0.5'],
    [1.5, 'layer 1, head 0 has gate 1.5'],
    [1.02, 'layer 1, head 0 has gate 1.02'],
  ])('a gate of %d is refused, in the reference format and in JSON', (gate, message) => {
    const path = referenceDirectory(`0.5\t1\n${gate}\t0\n`);
    expect(() => loadPattern(path)).toThrow(DuoCheckpointError);
    expect(() => loadPattern(path)).toThrow(message);
    expect(() => loadPattern(path)).toThrow(`outside [0, 1] by more than ${GATE_TOLERANCE}`);
    expect(() =>
      patternFromJson(
        json([
          [0.5, 1],
          [gate, 0],
        ]),
        'p.json',
      ),
    ).toThrow(`p.json: ${message}`);
  });

  it(`gates within ${GATE_TOLERANCE} of [0, 1] load as stored and binarize clipped`, () => {
    const pattern = loadPattern(referenceDirectory('-0.005\t1.004\n0.5\t-0.0014\n'));
    expect(pattern.gates).toEqual([
      [-0.005, 1.004],
      [0.5, -0.0014],
    ]);
    expect(planHeads(pattern, { threshold: 0.5 }).retrievalHeads).toEqual([[1], [0]]);
  });

  it('gates that JSON reads as Infinity (1e999) are refused', () => {
    expect(() => patternFromJson('{"format":"duoattn-head-pattern","gates":[[1e999]],"sink":1,"recent":2}')).toThrow(
      'has gate Infinity',
    );
  });

  it.each(['null', '[]', '"pattern"', '7'])('a JSON pattern that is %s is a checkpoint error', (text) => {
    expect(() => patternFromJson(text, 'p.json')).toThrow(DuoCheckpointError);
    expect(() => patternFromJson(text, 'p.json')).toThrow('p.json: expected a JSON object');
  });

  it('a reference config.json that is null, and windows too large to be real, are refused', () => {
    expect(() => loadPattern(referenceDirectory('1\t0\n', null as unknown as object))).toThrow(
      'expected a JSON object but found null',
    );
    expect(() => loadPattern(referenceDirectory('1\t0\n', { sink_size: 1e15, recent_size: 16 }))).toThrow(
      'expected "sink_size" to be an integer in [0, 16777216] but found 1000000000000000',
    );
  });

  it('a pattern.json that is a directory is a checkpoint error, not EISDIR', () => {
    const path = directory();
    mkdirSync(join(path, 'pattern.json'));
    expect(() => loadPattern(path)).toThrow(DuoCheckpointError);
    // Named itself, it is a directory that holds no pattern: an argument error.
    expect(() => loadPattern(join(path, 'pattern.json'))).toThrow(DuoArgumentError);
  });
});
