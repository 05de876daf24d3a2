// Command-line parsing and validators: accepted values, and errors that name the option, the value and what was
// expected.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { usageError } from './__fixtures__/usage-error.js';
import {
  checkContext,
  choiceOption,
  integerListOption,
  integerOption,
  numberOption,
  outputOption,
  parseOptions,
} from './command-options.js';
import { UsageError } from './usage-error.js';

describe('command options', () => {
  it('parses a spec and rejects unknown options and stray arguments', () => {
    const spec = { model: { type: 'string' }, verbose: { type: 'boolean' } } as const;
    expect(parseOptions(['--model', 'x', '--verbose'], spec)).toEqual({ model: 'x', verbose: true });
    expect(usageError(() => parseOptions(['--modle', 'x'], spec)).message).toContain("'--modle'");
    expect(usageError(() => parseOptions(['stray'], spec)).message).toContain('stray');
  });

  it('reads integers (with a k suffix), numbers and choices, and falls back when absent', () => {
    expect(integerOption('tokens', '16k', 1)).toBe(16384);
    expect(integerOption('tokens', '1m', 1)).toBe(1048576);
    expect(integerOption('tokens', '2M', 1)).toBe(2097152);
    expect(integerOption('tokens', '12', 1)).toBe(12);
    expect(integerOption('tokens', undefined, 7)).toBe(7);
    expect(numberOption('sparsity', '0.75', 0, 0, 1)).toBe(0.75);
    expect(numberOption('sparsity', undefined, 0.5, 0, 1)).toBe(0.5);
    expect(choiceOption('device', 'cpu', ['auto', 'cpu', 'cuda'] as const, 'auto')).toBe('cpu');
    expect(choiceOption('device', undefined, ['auto', 'cpu', 'cuda'] as const, 'auto')).toBe('auto');
    expect(integerListOption('contexts', '4k, 32K,100', [])).toEqual([4096, 32768, 100]);
    expect(integerListOption('contexts', '128k,1m', [])).toEqual([131072, 1048576]);
  });

  it.each([
    [() => integerOption('max-tokens', 'many', 1, 1), 'max-tokens', 'many', 'an integer in [1, 9007199254740991]'],
    [() => integerOption('sink', '-1', 0, 0), 'sink', '-1', 'an integer in [0, 9007199254740991]'],
    [() => integerOption('sink', '1.5', 0, 0), 'sink', '1.5', 'an integer in [0, 9007199254740991]'],
    [() => integerOption('sink', '', 0, 0), 'sink', '', 'an integer in [0, 9007199254740991]'],
    [() => numberOption('sparsity', '2', 0, 0, 1), 'sparsity', '2', 'a number in [0, 1]'],
    [() => numberOption('sparsity', 'half', 0, 0, 1), 'sparsity', 'half', 'a number in [0, 1]'],
    [() => numberOption('sparsity', '', 0, 0, 1), 'sparsity', '', 'a number in [0, 1]'],
    [() => choiceOption('device', 'gpu', ['auto', 'cpu'] as const, 'auto'), 'device', 'gpu', 'one of auto, cpu'],
    [
      () => integerListOption('contexts', '4k,lots', []),
      'contexts',
      '4k,lots',
      'comma-separated integers (e.g. 4k,32k,1m)',
    ],
  ])('rejects a bad value with option, value and expectation (%#)', (run, option, received, expected) => {
    const error = usageError(run);
    expect(error).toMatchObject({ option, received, expected });
    expect(error.message).toBe(`--${option}: expected ${expected} but received "${received}"`);
  });

  it('checks an output path before any work: folders to make under a writable directory, never under a file', () => {
    const directory = mkdtempSync(join(tmpdir(), 'duoattn-options-'));
    onTestFinished(() => rmSync(directory, { recursive: true, force: true }));
    const file = join(directory, 'a-file');
    writeFileSync(file, 'x');
    mkdirSync(join(directory, 'folder'));
    expect(outputOption('out', undefined)).toBeUndefined();
    expect(outputOption('out', join(directory, 'new', 'deeper', 'result.json'))).toBe(
      join(directory, 'new', 'deeper', 'result.json'),
    );
    expect(outputOption('out', file)).toBe(file);
    expect(outputOption('out', join(directory, 'folder'), 'directory')).toBe(join(directory, 'folder'));
    const below = usageError(() => outputOption('out', join(file, 'sub', 'result.json')));
    expect(below.message).toBe(
      `--out: cannot write "${join(file, 'sub', 'result.json')}": "${file}" is not a directory`,
    );
    expect(below).toMatchObject({ option: 'out', expected: 'a file in a writable directory' });
    expect(usageError(() => outputOption('out', join(directory, 'folder'))).message).toContain('it is a directory');
    expect(usageError(() => outputOption('out', file, 'directory')).message).toContain('it is a file, not a directory');
    expect(usageError(() => outputOption('csv', '')).message).toBe('--csv: cannot write "": the path is empty');
  });

  it("names the option, what needs the tokens and the model's context when they do not fit", () => {
    expect(() => checkContext('length', '16k', 16384, 16384, '16384 tokens per window')).not.toThrow();
    const error = usageError(() => checkContext('length', '20k', 20480, 16384, '20480 tokens per window'));
    expect(error.message).toBe(
      "--length: 20480 tokens per window but the model's context holds 16384 tokens (max_position_embeddings)",
    );
    expect(error).toMatchObject({ option: 'length', received: '20k', expected: 'at most 16384 tokens in all' });
    expect(usageError(() => checkContext('max-tokens', 9, 20, 16, '20 tokens', 'at most 5 fit')).message).toBe(
      "--max-tokens: 20 tokens but the model's context holds 16 tokens (max_position_embeddings); at most 5 fit",
    );
  });

  it('recognises usage errors by marker, not by class identity', () => {
    const foreign = Object.assign(new Error('x'), { [Symbol.for('duoattn.usage-error')]: true });
    expect(UsageError.isInstance(foreign)).toBe(true);
    expect(UsageError.isInstance(new Error('x'))).toBe(false);
    expect(new UsageError('bad')).toBeInstanceOf(Error);
  });
});
