// Command-line options: parsing against a spec and the validators whose errors name the option, the value and what
// was expected.
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './usage-error.js';

/** A `node:util` parseArgs option spec. */
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
    throw new UsageError((error as Error).message, {}, { cause: error });
  }
}

/** Token counts as people write them: "16k" = 16 × 1024, "1m" = 1024 × 1024 (either case); undefined if not one. */
function suffixedInteger(text: string): number | undefined {
  const match = /^\s*(\d+)\s*([kKmM]?)\s*$/.exec(text);
  if (!match) return undefined;
  const unit = { '': 1, k: 1024, m: 1024 * 1024 }[(match[2] as string).toLowerCase() as '' | 'k' | 'm'];
  return Number(match[1]) * unit;
}

/** An integer option in [min, max] (`fallback` when absent; "16k" = 16384 and "1m" = 1048576, as in lists). */
export function integerOption(
  name: string,
  value: unknown,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined) return fallback;
  const parsed = suffixedInteger(String(value)) ?? Number(value);
  // Number('') is 0: an empty value is not a number.
  if (String(value).trim() === '' || !Number.isInteger(parsed) || parsed < min || parsed > max) {
    throw UsageError.invalid(name, `an integer in [${min}, ${max}]`, value);
  }
  return parsed;
}

/** A number option in [min, max] (`fallback` when absent). */
export function numberOption(name: string, value: unknown, fallback: number, min = -Infinity, max = Infinity): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  // Number('') is 0: an empty value is not a number.
  if (String(value).trim() === '' || !Number.isFinite(parsed) || parsed < min || parsed > max) {
    throw UsageError.invalid(name, `a number in [${min}, ${max}]`, value);
  }
  return parsed;
}

/** One of `choices` (`fallback` when absent). */
export function choiceOption<T extends string>(name: string, value: unknown, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!choices.includes(value as T)) throw UsageError.invalid(name, `one of ${choices.join(', ')}`, value);
  return value as T;
}

/** A comma-separated list of integers, e.g. "4096,32768" (k and m suffixes allowed: "4k", "32K", "1m"). */
export function integerListOption(name: string, value: unknown, fallback: number[]): number[] {
  if (value === undefined) return fallback;
  return String(value)
    .split(',')
    .map((item) => {
      const parsed = suffixedInteger(item);
      if (parsed === undefined) throw UsageError.invalid(name, 'comma-separated integers (e.g. 4k,32k,1m)', value);
      return parsed;
    });
}

/**
 * An output path, checked before any work so a long run does not fail at its end: a path that exists must be a file
 * (`kind` 'file', the default) or a directory ('directory') and writable; otherwise its nearest existing ancestor must
 * be a writable directory (the folders in between are made when the output is written). Returns the path as given,
 * undefined when absent.
 */
export function outputOption(name: string, value: unknown, kind: 'file' | 'directory' = 'file'): string | undefined {
  if (value === undefined) return undefined;
  const path = String(value);
  const cannot = (why: string) =>
    new UsageError(`--${name}: cannot write "${path}": ${why}`, {
      option: name,
      received: path,
      expected: kind === 'file' ? 'a file in a writable directory' : 'a writable directory',
    });
  if (path.trim() === '') throw cannot('the path is empty');
  const target = resolve(path);
  if (existsSync(target)) {
    const isDirectory = statSync(target).isDirectory();
    if (kind === 'file' && isDirectory) throw cannot('it is a directory');
    if (kind === 'directory' && !isDirectory) throw cannot('it is a file, not a directory');
    if (!writable(target)) throw cannot('it is not writable');
    return path;
  }
  // existsSync is false below a regular file too (ENOTDIR): walk up to what does exist and look at it.
  let ancestor = dirname(target);
  while (!existsSync(ancestor)) ancestor = dirname(ancestor);
  if (!statSync(ancestor).isDirectory()) throw cannot(`"${ancestor}" is not a directory`);
  if (!writable(ancestor)) throw cannot(`the directory "${ancestor}" is not writable`);
  return path;
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A usage error unless `tokens` fit a model's context of `context` tokens (its max_position_embeddings): the message
 * names the option, what needs the tokens (`what`, e.g. "20480 tokens per window"), the context and `hint` (what fits).
 */
export function checkContext(
  option: string,
  value: unknown,
  tokens: number,
  context: number,
  what: string,
  hint?: string,
): void {
  if (tokens <= context) return;
  throw new UsageError(
    `--${option}: ${what} but the model's context holds ${context} tokens (max_position_embeddings)${hint ? `; ${hint}` : ''}`,
    { option, received: String(value), expected: `at most ${context} tokens in all` },
  );
}
