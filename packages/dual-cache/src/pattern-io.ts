// Head patterns on disk: the DuoAttention reference format (full_attention_heads.tsv + config.json) and our JSON.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DuoArgumentError, DuoCheckpointError, type HeadPattern } from '@duoattn/core';

/** File names of the reference format (mit-han-lab/duo-attention `attn_patterns/...`). */
export const REFERENCE_GATES_FILE = 'full_attention_heads.tsv';
export const REFERENCE_CONFIG_FILE = 'config.json';
/** The `format` tag of our JSON files. */
export const PATTERN_FORMAT = 'duoattn-head-pattern';
/**
 * How far outside [0, 1] a stored gate may lie. Trained gates overshoot slightly (the reference's Llama-2-7B-32K pattern
 * holds −1.4e-3), and binarization clips them; a gate further out is a corrupt file, not an overshoot.
 */
export const GATE_TOLERANCE = 0.01;
/** The largest sink or recent window a pattern file may declare (tokens); far above any real window. */
export const MAX_PATTERN_WINDOW = 2 ** 24;

/** Parses the reference's gate table: one row per layer, one tab-separated float per KV head. */
export function parseGateTable(text: string, source = 'gates'): number[][] {
  const rows = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .map((line, layer) =>
      line.split(/\s+/).map((field, head) => {
        const value = Number(field);
        if (!Number.isFinite(value)) {
          throw new DuoCheckpointError(source, undefined, `layer ${layer}, head ${head} is not a number: "${field}"`);
        }
        return value;
      }),
    );
  checkGates(rows, source);
  return rows;
}

/** Formats gates as numpy's `savetxt(fmt='%.18e', delimiter='\t')` does, so files match the reference's byte for byte. */
export function formatGateTable(gates: readonly (readonly number[])[]): string {
  return `${gates.map((row) => row.map((value) => numpyExponential(value, 18)).join('\t')).join('\n')}\n`;
}

/**
 * `%.{digits}e` as C's printf writes it: correctly rounded with ties to even (JavaScript's toExponential rounds ties
 * up) and an exponent of at least two digits.
 */
export function numpyExponential(value: number, digits: number): string {
  if (!Number.isFinite(value)) return String(value);
  // 100 fraction digits hold the exact expansion of the gate values patterns carry (floats with short mantissas).
  const [exact = '', exponentText = '0'] = Math.abs(value).toExponential(100).split('e');
  const all = exact.replace('.', '');
  let kept = all.slice(0, digits + 1);
  const rest = all.slice(digits + 1);
  let exponent = Number(exponentText);
  const tie = /^50*$/.test(rest);
  const above = rest > '5' && !tie;
  if (above || (tie && Number(kept[kept.length - 1]) % 2 === 1)) {
    const rounded = (BigInt(kept) + 1n).toString();
    if (rounded.length > kept.length) exponent++;
    kept = rounded.slice(0, digits + 1);
  }
  const sign = value < 0 || Object.is(value, -0) ? '-' : '';
  const exponentSign = exponent < 0 ? '-' : '+';
  return `${sign}${kept[0]}.${kept.slice(1)}e${exponentSign}${String(Math.abs(exponent)).padStart(2, '0')}`;
}

/** Reads a pattern in the reference format from `directory`. Fields of its config.json other than the window go to provenance. */
export function readReferencePattern(directory: string): HeadPattern {
  const gatesFile = join(directory, REFERENCE_GATES_FILE);
  const configFile = join(directory, REFERENCE_CONFIG_FILE);
  for (const file of [gatesFile, configFile]) {
    if (!existsSync(file)) {
      throw new DuoCheckpointError(
        file,
        undefined,
        `missing: a reference pattern directory holds ${REFERENCE_GATES_FILE} and ${REFERENCE_CONFIG_FILE}`,
      );
    }
  }
  const gates = parseGateTable(readText(gatesFile), gatesFile);
  const config = parseJsonObject(readText(configFile), configFile);
  const sink = windowField(config, 'sink_size', configFile);
  const recent = windowField(config, 'recent_size', configFile);
  const modelId = typeof config.model_name === 'string' ? config.model_name : undefined;
  return { gates, sink, recent, modelId, provenance: { format: 'reference', source: directory, config } };
}

/** Writes `pattern` in the reference format into `directory` (created if needed). */
export function writeReferencePattern(directory: string, pattern: HeadPattern): void {
  mkdirSync(directory, { recursive: true });
  writeFileSync(join(directory, REFERENCE_GATES_FILE), formatGateTable(pattern.gates));
  const config = {
    ...(pattern.modelId ? { model_name: pattern.modelId } : {}),
    sink_size: pattern.sink,
    recent_size: pattern.recent,
    duoattn_provenance: pattern.provenance ?? {},
  };
  writeFileSync(join(directory, REFERENCE_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
}

/** Our JSON form: gates, window, model id and provenance in one file. */
export function patternToJson(pattern: HeadPattern): string {
  return `${JSON.stringify({ format: PATTERN_FORMAT, version: 1, ...pattern }, null, 2)}\n`;
}

/** Parses our JSON form, checking every field. */
export function patternFromJson(text: string, source = 'pattern'): HeadPattern {
  const data = parseJsonObject(text, source);
  if (data.format !== PATTERN_FORMAT) {
    throw new DuoCheckpointError(
      source,
      undefined,
      `expected "format": "${PATTERN_FORMAT}" but found ${JSON.stringify(data.format)}`,
    );
  }
  if (
    !Array.isArray(data.gates) ||
    !data.gates.every((row) => Array.isArray(row) && row.every((v) => typeof v === 'number'))
  ) {
    throw new DuoCheckpointError(source, undefined, `"gates" must be an array of arrays of numbers`);
  }
  const gates = data.gates as number[][];
  checkGates(gates, source);
  return {
    gates,
    sink: windowField(data, 'sink', source),
    recent: windowField(data, 'recent', source),
    modelId: typeof data.modelId === 'string' ? data.modelId : undefined,
    provenance:
      typeof data.provenance === 'object' && data.provenance !== null
        ? (data.provenance as Record<string, unknown>)
        : undefined,
  };
}

/** Loads a pattern from a reference directory or one of our JSON files. */
export function loadPattern(path: string): HeadPattern {
  if (!existsSync(path))
    throw new DuoArgumentError('pattern', `Expected a pattern directory or JSON file but ${path} does not exist`);
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, REFERENCE_GATES_FILE))) return readReferencePattern(path);
    const json = join(path, 'pattern.json');
    if (existsSync(json)) return patternFromJson(readText(json), json);
    throw new DuoArgumentError(
      'pattern',
      `Expected ${path} to hold ${REFERENCE_GATES_FILE} (reference format) or pattern.json`,
    );
  }
  return patternFromJson(readText(path), path);
}

/** A pattern file's text; anything but a readable regular file (a directory, a FIFO) is a checkpoint error. */
function readText(file: string): string {
  try {
    if (!statSync(file).isFile()) throw new Error('not a regular file');
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new DuoCheckpointError(file, undefined, `cannot read: ${(error as Error).message}`, { cause: error });
  }
}

function parseJsonObject(text: string, source: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new DuoCheckpointError(source, undefined, `not valid JSON: ${(error as Error).message}`, { cause: error });
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new DuoCheckpointError(
      source,
      undefined,
      `expected a JSON object but found ${String(JSON.stringify(data)).slice(0, 60)}`,
    );
  }
  return data as Record<string, unknown>;
}

/** Writes our JSON form to `file`. */
export function savePattern(file: string, pattern: HeadPattern): void {
  writeFileSync(file, patternToJson(pattern));
}

function checkGates(gates: readonly (readonly number[])[], source: string): void {
  const width = gates[0]?.length ?? 0;
  if (gates.length === 0 || width === 0) throw new DuoCheckpointError(source, undefined, `the gate table is empty`);
  gates.forEach((row, layer) => {
    if (row.length !== width) {
      throw new DuoCheckpointError(
        source,
        undefined,
        `layer ${layer} has ${row.length} gates but layer 0 has ${width}`,
      );
    }
  });
  gates.forEach((row, layer) => {
    row.forEach((gate, head) => {
      if (!(gate >= -GATE_TOLERANCE && gate <= 1 + GATE_TOLERANCE)) {
        throw new DuoCheckpointError(
          source,
          undefined,
          `layer ${layer}, head ${head} has gate ${gate}, outside [0, 1] by more than ${GATE_TOLERANCE} ` +
            `(gates within ${GATE_TOLERANCE} of [0, 1] are kept and clipped when binarized; further out, the file is corrupt)`,
        );
      }
    });
  });
}

function windowField(data: Record<string, unknown>, key: string, source: string): number {
  const value = data[key];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_PATTERN_WINDOW) {
    throw new DuoCheckpointError(
      source,
      undefined,
      `expected "${key}" to be an integer in [0, ${MAX_PATTERN_WINDOW}] but found ${JSON.stringify(value)}`,
    );
  }
  return value;
}
