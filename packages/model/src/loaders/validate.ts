// The checks every loader applies to an untrusted file before it allocates or reads: numbers, tensor spans, paths.
import { closeSync, existsSync, fstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { DuoCheckpointError, isBlockDType, type ModelConfig, validateModelConfig, WEIGHT_FORMATS } from '@duoattn/core';
import { elementCount, type StoredEncoding, type StoredTensor, storedBytes } from './checkpoint.js';

/** What a number read from a file must be. Every rule also requires a finite number. */
export interface NumberRule {
  /** Whole numbers only. Default false. */
  readonly integer?: boolean;
  /** Smallest value allowed (inclusive). Default none. */
  readonly min?: number;
  /** Largest value allowed (inclusive). Default none. */
  readonly max?: number;
  /** Values must be greater than this (exclusive). Default none. */
  readonly above?: number;
  /** Values must be less than this (exclusive). Default none. */
  readonly below?: number;
}

/**
 * Ranges of the hyperparameters a checkpoint declares. The upper bounds are far above any real model (the largest
 * vocabularies are ~2^18, the deepest models ~2^7 layers, the longest contexts ~2^23 tokens) and exist so that a
 * corrupt value is refused by name instead of sizing a loop, a table or a cache.
 */
export const CONFIG_LIMITS = {
  vocabSize: { integer: true, min: 1, max: 2 ** 24 },
  hiddenSize: { integer: true, min: 1, max: 2 ** 20 },
  intermediateSize: { integer: true, min: 1, max: 2 ** 22 },
  numLayers: { integer: true, min: 1, max: 4096 },
  numHeads: { integer: true, min: 1, max: 4096 },
  numKvHeads: { integer: true, min: 1, max: 4096 },
  headDim: { integer: true, min: 2, max: 4096 },
  rmsNormEps: { above: 0, below: 1 },
  ropeTheta: { above: 0 },
  maxPositionEmbeddings: { integer: true, min: 1, max: 2 ** 26 },
  ropeScalingFactor: { above: 0, max: 2 ** 16 },
  tokenId: { integer: true, min: 0, max: 2 ** 24 },
} as const satisfies Record<string, NumberRule>;

/** Text that says what a rule asks for: "an integer in [1, 4096]", "a finite number > 0". */
function expectation(rule: NumberRule): string {
  const bounds: string[] = [];
  if (rule.min !== undefined && rule.max !== undefined) bounds.push(`in [${rule.min}, ${rule.max}]`);
  else if (rule.min !== undefined) bounds.push(`≥ ${rule.min}`);
  else if (rule.max !== undefined) bounds.push(`≤ ${rule.max}`);
  if (rule.above !== undefined) bounds.push(`> ${rule.above}`);
  if (rule.below !== undefined) bounds.push(`< ${rule.below}`);
  return `${rule.integer ? 'an integer' : 'a finite number'}${bounds.length ? ` ${bounds.join(' and ')}` : ''}`;
}

/** A value as a message shows it: numbers as JS prints them, anything else as (shortened) JSON. */
export function describeValue(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (value === undefined) return 'nothing';
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Checks `value` (a number, or a bigint that is a safe integer) against `rule`; the error names file, field and value. */
export function checkNumber(file: string, field: string, value: unknown, rule: NumberRule, tensor?: string): number {
  const number =
    typeof value === 'bigint' && value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(value)
      : value;
  const valid =
    typeof number === 'number' &&
    Number.isFinite(number) &&
    (!rule.integer || Number.isInteger(number)) &&
    (rule.min === undefined || number >= rule.min) &&
    (rule.max === undefined || number <= rule.max) &&
    (rule.above === undefined || number > rule.above) &&
    (rule.below === undefined || number < rule.below);
  if (!valid) {
    throw new DuoCheckpointError(
      file,
      tensor,
      `expected \`${field}\` to be ${expectation(rule)} but found ${describeValue(value)}`,
    );
  }
  return number as number;
}

/** True for a JSON object (not null, not an array). */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads typed fields of one object of a file (config.json, GGUF metadata, a llama2.c header), naming them in errors. */
export class FieldReader {
  /** `prefix` is prepended to every key (GGUF's `llama.`); `label` prefixes names in messages only. */
  constructor(
    readonly file: string,
    readonly fields: Readonly<Record<string, unknown>>,
    readonly prefix = '',
    readonly label = '',
  ) {}

  /** The raw value of `key`; undefined where the file has none (or null). */
  raw(key: string): unknown {
    const value = this.fields[this.prefix + key];
    return value === null ? undefined : value;
  }

  /** A number that meets `rule`; `fallback` where the field is absent (checked too: it may be derived). */
  number(key: string, rule: NumberRule, fallback?: number): number {
    const value = this.raw(key);
    if (value === undefined && fallback === undefined) {
      throw new DuoCheckpointError(
        this.file,
        undefined,
        `\`${this.#name(key)}\` is missing: expected ${expectation(rule)}`,
      );
    }
    const field = value === undefined ? `${this.#name(key)} (absent; its default)` : this.#name(key);
    return checkNumber(this.file, field, value ?? fallback, rule);
  }

  /** A number that meets `rule`, or undefined where the field is absent. */
  optionalNumber(key: string, rule: NumberRule): number | undefined {
    return this.raw(key) === undefined ? undefined : this.number(key, rule);
  }

  /** A boolean; `fallback` where absent. */
  boolean(key: string, fallback: boolean): boolean {
    return this.#typed(key, fallback, (value): value is boolean => typeof value === 'boolean', 'true or false');
  }

  /** A string; `fallback` where absent. */
  string(key: string, fallback?: string): string {
    return this.#typed(key, fallback, (value): value is string => typeof value === 'string', 'a string');
  }

  #typed<T>(key: string, fallback: T | undefined, valid: (value: unknown) => value is T, expected: string): T {
    const value = this.raw(key) ?? fallback;
    if (!valid(value)) {
      throw new DuoCheckpointError(
        this.file,
        undefined,
        `expected \`${this.#name(key)}\` to be ${expected} but found ${describeValue(value)}`,
      );
    }
    return value;
  }

  /** Token ids: one id or a list (HF's `eos_token_id`), each in [0, 2^24]; [] where absent. */
  tokenIds(key: string): number[] {
    const value = this.raw(key);
    if (value === undefined) return [];
    const list = Array.isArray(value) ? value : [value];
    return list.map((id, i) =>
      checkNumber(
        this.file,
        Array.isArray(value) ? `${this.#name(key)}[${i}]` : this.#name(key),
        id,
        CONFIG_LIMITS.tokenId,
      ),
    );
  }

  #name(key: string): string {
    return this.label + this.prefix + key;
  }
}

/** File field names of the ModelConfig fields, for messages about relations between them. */
export type ConfigFieldNames = Partial<Record<keyof ModelConfig, string>>;

/**
 * Checks the relations between a config's fields (each field was range-checked as it was read): heads divide, token
 * ids lie in the vocabulary, RoPE scaling is consistent; then the spec's own `validateModelConfig`.
 */
export function checkModelConfig(file: string, config: ModelConfig, names: ConfigFieldNames): ModelConfig {
  const name = (key: keyof ModelConfig) => `\`${names[key] ?? key}\``;
  const fail = (message: string): never => {
    throw new DuoCheckpointError(file, undefined, message);
  };
  if (config.numHeads % config.numKvHeads !== 0) {
    fail(
      `expected ${name('numHeads')} (${config.numHeads}) to be a multiple of ${name('numKvHeads')} (${config.numKvHeads})`,
    );
  }
  if (config.headDim % 2 !== 0)
    fail(`expected an even ${name('headDim')} (RoPE rotates pairs) but found ${config.headDim}`);
  for (const [key, ids] of [
    ['bosTokenId', config.bosTokenId === undefined ? [] : [config.bosTokenId]],
    ['eosTokenIds', config.eosTokenIds],
  ] as const) {
    for (const id of ids) {
      if (id >= config.vocabSize) {
        fail(`expected ${name(key)} to lie in [0, ${config.vocabSize}) (the vocabulary) but found ${id}`);
      }
    }
  }
  const scaling = config.ropeScaling;
  if (scaling.type === 'llama3' && !(scaling.highFreqFactor > scaling.lowFreqFactor)) {
    fail(
      `expected rope_scaling's high_freq_factor (${scaling.highFreqFactor}) to exceed its low_freq_factor (${scaling.lowFreqFactor})`,
    );
  }
  try {
    return validateModelConfig(config);
  } catch (error) {
    throw new DuoCheckpointError(file, undefined, (error as Error).message, { cause: error });
  }
}

/** Dimensions of a tensor as a file declares them: whole, non-negative, safe numbers (or bigints). */
export function checkShape(file: string, tensor: string, shape: unknown): number[] {
  if (!Array.isArray(shape) || shape.length > 8) {
    throw new DuoCheckpointError(
      file,
      tensor,
      `expected \`shape\` to be a list of at most 8 dimensions but found ${describeValue(shape)}`,
    );
  }
  return shape.map((extent, i) =>
    checkNumber(file, `shape[${i}]`, extent, { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER }, tensor),
  );
}

/**
 * Bytes a tensor of `shape` takes in `encoding`, refused when larger than `limit` (the file's size) before the product
 * can overflow; a block format's rows must hold whole blocks (Q8_0: 32 values, the k-quants: 256).
 */
export function tensorBytes(
  file: string,
  tensor: string,
  encoding: StoredEncoding,
  shape: readonly number[],
  limit: number,
): number {
  let elements = 1;
  for (const extent of shape) {
    elements *= extent;
    // Half a byte per element is the least any encoding takes (Q4_K: 4.5 bits): past 2 · `limit` it cannot fit.
    if (elements > 2 * limit) {
      throw new DuoCheckpointError(
        file,
        tensor,
        `shape [${shape.join(', ')}] needs more bytes than the whole file holds (${limit})`,
      );
    }
  }
  if (isBlockDType(encoding) && (shape[shape.length - 1] ?? 0) % WEIGHT_FORMATS[encoding].blockValues !== 0) {
    const { ggmlName, blockValues } = WEIGHT_FORMATS[encoding];
    throw new DuoCheckpointError(
      file,
      tensor,
      `a ${ggmlName} tensor's rows must hold whole blocks of ${blockValues} values but shape [${shape.join(', ')}] has rows of ${shape[shape.length - 1]}`,
    );
  }
  if (storedBytes(encoding, elements) > limit) {
    throw new DuoCheckpointError(
      file,
      tensor,
      `shape [${shape.join(', ')}] needs more bytes than the whole file holds (${limit})`,
    );
  }
  return storedBytes(encoding, elements);
}

/** The part of a file that holds tensor data, and how tensors must sit in it. */
export interface DataArea {
  /** First byte of the data area. */
  readonly start: number;
  /** One past its last byte (the file's size). */
  readonly end: number;
  /** Offsets (from `start`) must be multiples of this. Default 1. */
  readonly alignment?: number;
  /** safetensors: the tensors cover the area exactly, one after another, without gaps. Default false. */
  readonly contiguous?: boolean;
}

/** Throws unless every tensor lies inside `area`, aligned, and no two overlap (and, if asked, without gaps). */
export function checkTensorLayout(file: string, tensors: readonly StoredTensor[], area: DataArea): void {
  const alignment = area.alignment ?? 1;
  const spans = tensors.map((tensor) => {
    const bytes = storedBytes(tensor.encoding, elementCount(tensor.shape));
    const relative = tensor.offset - area.start;
    if (!Number.isSafeInteger(tensor.offset) || relative < 0 || tensor.offset + bytes > area.end) {
      throw new DuoCheckpointError(
        file,
        tensor.name,
        `the tensor needs bytes [${relative}, ${relative + bytes}) of the data area, which has ${area.end - area.start}: ` +
          'the file is truncated or its header is wrong',
      );
    }
    if (relative % alignment !== 0) {
      throw new DuoCheckpointError(
        file,
        tensor.name,
        `the tensor's offset ${relative} is not a multiple of the alignment ${alignment}`,
      );
    }
    return { name: tensor.name, begin: tensor.offset, end: tensor.offset + bytes };
  });
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let previous: (typeof spans)[number] | undefined;
  for (const span of spans) {
    if (previous && span.begin < previous.end && span.end > span.begin) {
      throw new DuoCheckpointError(
        file,
        span.name,
        `the tensor's bytes [${span.begin}, ${span.end}) overlap ${previous.name}'s [${previous.begin}, ${previous.end})`,
      );
    }
    const expected = previous?.end ?? area.start;
    if (area.contiguous && span.begin !== expected) {
      throw new DuoCheckpointError(
        file,
        span.name,
        `the tensor starts at byte ${span.begin} but ${previous ? `${previous.name} ends` : 'the data area starts'} at ` +
          `${expected}: the format requires tensors back to back, without gaps`,
      );
    }
    if (span.end > span.begin) previous = span;
  }
  const last = previous?.end ?? area.start;
  if (area.contiguous && last !== area.end) {
    throw new DuoCheckpointError(
      file,
      undefined,
      `${area.end - last} bytes after the last tensor are not indexed by the header (the format forbids trailing data)`,
    );
  }
}

/** The size of a regular file; refuses directories, devices and FIFOs (opening a FIFO would block). */
export function regularFileSize(file: string): number {
  let stats: ReturnType<typeof statSync>;
  try {
    stats = statSync(file);
  } catch (error) {
    throw new DuoCheckpointError(file, undefined, `cannot read: ${(error as Error).message}`, { cause: error });
  }
  if (!stats.isFile()) throw new DuoCheckpointError(file, undefined, 'not a regular file');
  return stats.size;
}

/** Reads exactly `length` bytes at `position` of an open file; a short read is a truncated file. */
export function readExactly(fd: number, file: string, length: number, position: number): Buffer {
  const bytes = Buffer.alloc(length);
  const got = readSync(fd, bytes, 0, length, position);
  if (got !== length) {
    throw new DuoCheckpointError(file, undefined, `truncated: wanted ${length} bytes at ${position} but got ${got}`);
  }
  return bytes;
}

/** Opens a regular file, hands its descriptor and size to `use`, and closes it. */
export function withFile<T>(file: string, use: (fd: number, size: number) => T): T {
  regularFileSize(file);
  const fd = openSync(file, 'r');
  try {
    return use(fd, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}

/**
 * `name` inside `directory` (where a model directory's index, config or shard lives), refused when it leads outside:
 * an absolute path, `..`, or a symlink whose target is elsewhere. The one exception is a HF hub cache snapshot
 * (`…/snapshots/<revision>/`), whose files link into the repository's `blobs/`.
 */
export function fileInsideDirectory(directory: string, name: unknown, listedIn: string): string {
  if (typeof name !== 'string' || name.length === 0 || name.includes('\0')) {
    throw new DuoCheckpointError(listedIn, undefined, `expected a file name but found ${describeValue(name)}`);
  }
  const path = resolve(directory, name);
  const outside = (root: string, target: string) => {
    const rest = relative(root, target);
    return rest === '..' || rest.startsWith(`..${'/'}`) || rest.startsWith('..\\') || isAbsolute(rest);
  };
  const refuse = (why: string): never => {
    throw new DuoCheckpointError(
      listedIn,
      undefined,
      `"${name}" ${why} outside the model directory ${directory}; copy the file into it (or link the whole directory)`,
    );
  };
  if (isAbsolute(name) || outside(resolve(directory), path)) refuse('lies');
  if (!existsSync(path)) return path;
  const root = realpathSync(directory);
  const target = realpathSync(path);
  const roots = [root];
  if (basename(dirname(root)) === 'snapshots') roots.push(join(dirname(dirname(root)), 'blobs'));
  if (roots.every((allowed) => outside(allowed, target))) refuse(`links to ${target},`);
  return path;
}
