// Reading a JSON file that an option names (an earlier run's record, a peer's figures): a file that cannot be read or
// parsed is a usage error naming the option and the path.
import { readFileSync } from 'node:fs';
import { UsageError } from '@duoattn/app-kit';

/** The parsed contents of `file`, given as `--option`; the caller states the shape it expects. */
export function readJsonOption<T>(option: string, file: string): T {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch (error) {
    throw new UsageError(`--${option}: cannot read "${file}": ${(error as Error).message}`, { option });
  }
}
