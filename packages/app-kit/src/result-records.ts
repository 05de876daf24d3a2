// Result records: the JSON documents benchmarks write — provenance (card, commit, date, Node) first, then the
// settings and the figures — and the writer that makes their folders.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { type DuoEnvironment, readEnvironment } from '@duoattn/core';

/**
 * A result document. The figures sit beside the provenance at the top level (`document.decode`,
 * `document.passkey`), as every committed result has them.
 */
export type ResultRecord<Settings extends object = object, Figures extends object = object> = {
  /** The device that produced the figures, e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)". */
  readonly card: string;
  /** The commit measured (`currentCommit`). */
  readonly commit: string;
  /** When the record was written, ISO 8601. */
  readonly date: string;
  /** The Node.js version, e.g. "v20.19.0". */
  readonly node: string;
  /** What was run: model, policy, lengths, … */
  readonly settings: Settings;
} & Figures;

/**
 * The commit being measured: DUO_COMMIT (`readEnvironment`; the device bundle sets it: the checkout there has no .git),
 * else git's short hash, else "unknown".
 */
export function currentCommit(environment: Pick<DuoEnvironment, 'commit'> = readEnvironment()): string {
  if (environment.commit) return environment.commit;
  try {
    return execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return 'unknown';
  }
}

/** A record of `figures` measured on `card` under `settings`, stamped with the commit, the time and Node's version. */
export function resultRecord<Settings extends object, Figures extends object>(
  card: string,
  settings: Settings,
  figures: Figures,
): ResultRecord<Settings, Figures> {
  return {
    card,
    commit: currentCommit(),
    date: new Date().toISOString(),
    node: process.version,
    settings,
    ...figures,
  };
}

/** Writes the record of `figures` to `path` (JSON, provenance fields first; the folder is made) and returns it. */
export function writeResult<Settings extends object, Figures extends object>(
  path: string,
  card: string,
  settings: Settings,
  figures: Figures,
): ResultRecord<Settings, Figures> {
  const record = resultRecord(card, settings, figures);
  writeText(path, `${JSON.stringify(record, null, 2)}\n`);
  return record;
}

/** Writes `text` (or bytes) to `path`, making its folder first. */
export function writeText(path: string, text: string | Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}
