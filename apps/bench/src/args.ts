// Command-line parsing with errors that name the option, the value and what was expected.
import { parseArgs } from 'node:util';

/** Thrown for bad command-line input; the CLI prints the message and exits with status 2. */
export class UsageError extends Error {}

export type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; default?: string | boolean }>;

/** Parses `argv` against `spec`; unknown options and stray arguments are usage errors. */
export function parseOptions<S extends OptionSpec>(
  argv: string[],
  spec: S,
): Record<keyof S, string | boolean | undefined> {
  try {
    const { values } = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: false });
    return values as unknown as Record<keyof S, string | boolean | undefined>;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** An integer option in [min, max] ("16k" = 16384, as in lists). */
export function integerOption(
  name: string,
  value: unknown,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined) return fallback;
  const kilo = /^\s*(\d+)\s*[kK]\s*$/.exec(String(value));
  const parsed = kilo ? Number(kilo[1]) * 1024 : Number(value);
  if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
    throw new UsageError(`--${name}: expected an integer in [${min}, ${max}] but received "${String(value)}"`);
  }
  return parsed;
}

/** A number option in [min, max]. */
export function numberOption(name: string, value: unknown, fallback: number, min = -Infinity, max = Infinity): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < min || parsed > max) {
    throw new UsageError(`--${name}: expected a number in [${min}, ${max}] but received "${String(value)}"`);
  }
  return parsed;
}

/** One of `choices`. */
export function choiceOption<T extends string>(name: string, value: unknown, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!choices.includes(value as T)) {
    throw new UsageError(`--${name}: expected one of ${choices.join(', ')} but received "${String(value)}"`);
  }
  return value as T;
}

/** A comma-separated list of integers, e.g. "4096,32768" (k and K suffixes allowed: "4k", "32K"). */
export function integerListOption(name: string, value: unknown, fallback: number[]): number[] {
  if (value === undefined) return fallback;
  return String(value)
    .split(',')
    .map((item) => {
      const match = /^\s*(\d+)\s*([kK]?)\s*$/.exec(item);
      if (!match)
        throw new UsageError(
          `--${name}: expected comma-separated integers (e.g. 4k,32k) but received "${String(value)}"`,
        );
      return Number(match[1]) * (match[2] ? 1024 : 1);
    });
}
