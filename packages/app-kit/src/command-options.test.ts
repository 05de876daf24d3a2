// Command-line parsing and validators: accepted values, and errors that name the option, the value and what was
// expected.
import { describe, expect, it } from 'vitest';
import { choiceOption, integerListOption, integerOption, numberOption, parseOptions } from './command-options.js';
import { UsageError } from './usage-error.js';

function usageError(run: () => unknown): UsageError {
  try {
    run();
  } catch (error) {
    expect(UsageError.isInstance(error)).toBe(true);
    return error as UsageError;
  }
  throw new Error('expected a UsageError');
}

describe('command options', () => {
  it('parses a spec and rejects unknown options and stray arguments', () => {
    const spec = { model: { type: 'string' }, verbose: { type: 'boolean' } } as const;
    expect(parseOptions(['--model', 'x', '--verbose'], spec)).toEqual({ model: 'x', verbose: true });
    expect(usageError(() => parseOptions(['--modle', 'x'], spec)).message).toContain("'--modle'");
    expect(usageError(() => parseOptions(['stray'], spec)).message).toContain('stray');
  });

  it('reads integers (with a k suffix), numbers and choices, and falls back when absent', () => {
    expect(integerOption('tokens', '16k', 1)).toBe(16384);
    expect(integerOption('tokens', '12', 1)).toBe(12);
    expect(integerOption('tokens', undefined, 7)).toBe(7);
    expect(numberOption('sparsity', '0.75', 0, 0, 1)).toBe(0.75);
    expect(numberOption('sparsity', undefined, 0.5, 0, 1)).toBe(0.5);
    expect(choiceOption('device', 'cpu', ['auto', 'cpu', 'cuda'] as const, 'auto')).toBe('cpu');
    expect(choiceOption('device', undefined, ['auto', 'cpu', 'cuda'] as const, 'auto')).toBe('auto');
    expect(integerListOption('contexts', '4k, 32K,100', [])).toEqual([4096, 32768, 100]);
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
      'comma-separated integers (e.g. 4k,32k)',
    ],
  ])('rejects a bad value with option, value and expectation (%#)', (run, option, received, expected) => {
    const error = usageError(run);
    expect(error).toMatchObject({ option, received, expected });
    expect(error.message).toBe(`--${option}: expected ${expected} but received "${received}"`);
  });

  it('recognises usage errors by marker, not by class identity', () => {
    const foreign = Object.assign(new Error('x'), { [Symbol.for('duoattn.usage-error')]: true });
    expect(UsageError.isInstance(foreign)).toBe(true);
    expect(UsageError.isInstance(new Error('x'))).toBe(false);
    expect(new UsageError('bad')).toBeInstanceOf(Error);
  });
});
