// The gate trainer's data (METHOD.md, "Gates and the mixed attention"): a haystack of prose with ten passkeys of
// NATO-alphabet words inserted at sorted random depths, then one question per passkey answered in full. The loss
// covers the whole question/answer suffix. Sample `step` depends only on (seed, step), so a resumed run sees the
// same data as an uninterrupted one.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { expectInteger } from '@duoattn/kernels';
import { seededRandom, type Tokenizer } from '@duoattn/model';

export const NATO_ALPHABET = [
  'alpha',
  'bravo',
  'charlie',
  'delta',
  'echo',
  'foxtrot',
  'golf',
  'hotel',
  'india',
  'juliett',
  'kilo',
  'lima',
  'mike',
  'november',
  'oscar',
  'papa',
  'quebec',
  'romeo',
  'sierra',
  'tango',
  'uniform',
  'victor',
  'whiskey',
  'xray',
  'yankee',
  'zulu',
] as const;

export const ORDINALS = [
  'first',
  'second',
  'third',
  'fourth',
  'fifth',
  'sixth',
  'seventh',
  'eighth',
  'ninth',
  'tenth',
  'eleventh',
  'twelfth',
  'thirteenth',
  'fourteenth',
  'fifteenth',
  'sixteenth',
  'seventeenth',
  'eighteenth',
  'nineteenth',
  'twentieth',
] as const;

/** The sentence that hides passkey `index` (0-based) in the haystack. */
export function needleText(index: number, passkey: string): string {
  return `\n\nRemember this sequence of words, it's the ${ordinal(index)} passkey to the vault: ${passkey}\n\n`;
}

/** The question about passkey `index` and its answer, as one piece of the suffix. */
export function questionText(index: number, passkey: string): string {
  return `Based on the content of the book, what is the ${ordinal(index)} passkey to the vault?\nPasskey: ${passkey}\n\n`;
}

/** How a sample's needles, questions and answers read. */
export interface PasskeyFormat {
  readonly name: string;
  /** `count` needles and their questions (each question followed by its answer), each passkey of `size` units. */
  draw(
    random: () => number,
    count: number,
    size: number,
  ): { passkeys: string[]; needles: string[]; questions: string[] };
  /** The longest needle text a passkey of `size` units can make at index `count − 1` (for sizing checks). */
  longestNeedle(count: number, size: number): string;
}

/** The reference's format (METHOD.md): passkeys of `size` NATO words, asked for by ordinal. */
export const REFERENCE_FORMAT: PasskeyFormat = {
  name: 'reference',
  draw(random, count, size) {
    const passkeys = Array.from({ length: count }, () =>
      Array.from({ length: size }, () => pick(NATO_ALPHABET, random)).join(' '),
    );
    return {
      passkeys,
      needles: passkeys.map((passkey, i) => needleText(i, passkey)),
      questions: passkeys.map((passkey, i) => questionText(i, passkey)),
    };
  },
  longestNeedle: (count, size) => needleText(count - 1, longestPasskey(size)),
};

/**
 * Keyed facts, as the demo model was trained on: " The magic number of KEY is DIGITS. " hidden in the haystack, then
 * " What is the magic number of KEY? The magic number of KEY is DIGITS." for each, in order. Keys are distinct NATO
 * words, values `size` random digits.
 */
export const MAGIC_NUMBER_FORMAT: PasskeyFormat = {
  name: 'magic-number',
  draw(random, count, size) {
    const keys: string[] = [];
    while (keys.length < count) {
      const key = pick(NATO_ALPHABET, random);
      if (!keys.includes(key)) keys.push(key);
    }
    const passkeys = keys.map(() => Array.from({ length: size }, () => String(Math.floor(random() * 10))).join(''));
    return {
      passkeys,
      needles: keys.map((key, i) => ` The magic number of ${key} is ${passkeys[i]}. `),
      questions: keys.map(
        (key, i) => ` What is the magic number of ${key}? The magic number of ${key} is ${passkeys[i]}.`,
      ),
    };
  },
  longestNeedle: (_count, size) => ` The magic number of ${longestPasskey(1)} is ${'0'.repeat(size)}. `,
};

/** The formats by name. */
export const PASSKEY_FORMATS: Readonly<Record<string, PasskeyFormat>> = {
  reference: REFERENCE_FORMAT,
  'magic-number': MAGIC_NUMBER_FORMAT,
};

function pick<T>(items: readonly T[], random: () => number): T {
  return items[Math.floor(random() * items.length)] as T;
}

/** `count` evenly spaced values from `first` to `last` inclusive (numpy's linspace). */
export function linspace(first: number, last: number, count: number): number[] {
  if (count === 1) return [first];
  return Array.from({ length: count }, (_, i) => first + ((last - first) * i) / (count - 1));
}

export interface PasskeyDataOptions {
  /** The haystack, already tokenized (no BOS); shorter haystacks are read cyclically. */
  haystack: readonly number[];
  tokenizer: Pick<Tokenizer, 'encode' | 'bosTokenId'>;
  /** Context lengths (haystack + needles, in tokens) are drawn from `lengthChoices` values spread over this range. */
  contextMin: number;
  contextMax: number;
  /** How many lengths `linspace(contextMin, contextMax, ·)` offers (reference: 50). */
  lengthChoices?: number;
  passkeys?: number;
  wordsPerPasskey?: number;
  seed?: number;
  /** Default the reference's (NATO-word passkeys to a vault). */
  format?: PasskeyFormat;
}

export interface PasskeySample {
  /** BOS (when the tokenizer has one), the context, then the question/answer suffix. */
  ids: Int32Array;
  /** Index of the first suffix token: the loss covers `ids[answerStart …]`. */
  answerStart: number;
  /** Tokens of haystack + needles (the drawn context length). */
  contextTokens: number;
  passkeys: string[];
  /** Sorted depths in (0, 1) at which the needles sit, as fractions of the haystack part. */
  depths: number[];
  /** Token index (in `ids`) where each needle starts. */
  needleStarts: number[];
}

/** Deterministic multi-passkey samples: `sample(step)` depends only on the seed and `step`. */
export class PasskeyData {
  readonly lengths: readonly number[];
  readonly passkeys: number;
  readonly wordsPerPasskey: number;
  readonly seed: number;
  readonly format: PasskeyFormat;
  readonly #haystack: readonly number[];
  readonly #tokenizer: Pick<Tokenizer, 'encode' | 'bosTokenId'>;
  static readonly #depthChoices = linspace(0.05, 0.95, 1000);

  constructor(options: PasskeyDataOptions) {
    const { contextMin, contextMax } = options;
    this.passkeys = expectInteger('passkeys', options.passkeys ?? 10, 1, ORDINALS.length);
    this.wordsPerPasskey = expectInteger('wordsPerPasskey', options.wordsPerPasskey ?? 32, 1, 4096);
    this.seed = expectInteger('seed', options.seed ?? 42, 0, 2 ** 32 - 1);
    this.format = options.format ?? REFERENCE_FORMAT;
    if (this.format.name === 'magic-number' && this.passkeys > NATO_ALPHABET.length) {
      throw new DuoArgumentError(
        'passkeys',
        `Expected at most ${NATO_ALPHABET.length} keyed passkeys but received ${this.passkeys}`,
      );
    }
    const choices = expectInteger('lengthChoices', options.lengthChoices ?? 50, 1, 100_000);
    expectInteger('contextMin', contextMin, 1);
    expectInteger('contextMax', contextMax, contextMin);
    if (options.haystack.length === 0) {
      throw new DuoArgumentError('haystack', 'Expected a haystack of at least one token but received an empty one');
    }
    this.#haystack = options.haystack;
    this.#tokenizer = options.tokenizer;
    this.lengths = [...new Set(linspace(contextMin, contextMax, choices).map((value) => Math.round(value)))];
    // The longest needles must leave room for haystack at the shortest length.
    const longest = longestNeedleTokens(this.#tokenizer, this.passkeys, this.wordsPerPasskey, this.format);
    if (longest * this.passkeys >= contextMin) {
      throw new DuoArgumentError(
        'contextMin',
        `Expected \`contextMin\` above ${longest * this.passkeys} tokens (${this.passkeys} needles of up to ${longest} tokens) but received ${contextMin}`,
      );
    }
  }

  /** The sample of training step `step`. */
  sample(step: number): PasskeySample {
    expectInteger('step', step, 0);
    const random = seededRandom(mix(this.seed, step));
    const contextTokens = this.lengths[Math.floor(random() * this.lengths.length)] as number;
    const drawn = this.format.draw(random, this.passkeys, this.wordsPerPasskey);
    const passkeys = drawn.passkeys;
    const depths = pickSorted(PasskeyData.#depthChoices, this.passkeys, random);
    const needles = drawn.needles.map((needle) => this.#encode(needle));
    const fill = contextTokens - needles.reduce((sum, needle) => sum + needle.length, 0);
    const offset = Math.floor(random() * this.#haystack.length);
    const ids: number[] = [];
    if (this.#tokenizer.bosTokenId !== undefined) ids.push(this.#tokenizer.bosTokenId);
    const needleStarts: number[] = [];
    let taken = 0;
    depths.forEach((depth, i) => {
      const until = Math.round(depth * fill);
      for (; taken < until; taken++) ids.push(this.#haystack[(offset + taken) % this.#haystack.length] as number);
      needleStarts.push(ids.length);
      ids.push(...(needles[i] as number[]));
    });
    for (; taken < fill; taken++) ids.push(this.#haystack[(offset + taken) % this.#haystack.length] as number);
    const answerStart = ids.length;
    for (const question of drawn.questions) ids.push(...this.#encode(question));
    return { ids: Int32Array.from(ids), answerStart, contextTokens, passkeys, depths, needleStarts };
  }

  #encode(text: string): number[] {
    return this.#tokenizer.encode(text, { addBos: false });
  }
}

/** Tokens the longest needle of `passkeys` needles of `words` NATO words can take (the longest word every time). */
export function longestNeedleTokens(
  tokenizer: Pick<Tokenizer, 'encode'>,
  passkeys: number,
  words: number,
  format: PasskeyFormat = REFERENCE_FORMAT,
): number {
  return tokenizer.encode(format.longestNeedle(passkeys, words), { addBos: false }).length;
}

/**
 * The reference's 10 passkeys of 32 words when their needles fill at most `share` of `contextMin` tokens, else the
 * largest smaller setting that does (byte-level models need fewer words for short contexts).
 */
export function fittingPasskeys(
  tokenizer: Pick<Tokenizer, 'encode'>,
  contextMin: number,
  format: PasskeyFormat = REFERENCE_FORMAT,
  share = 1 / 3,
): { passkeys: number; words: number } {
  const ladder = [
    [10, 32],
    [10, 16],
    [10, 8],
    [8, 6],
    [6, 4],
    [4, 4],
    [3, 3],
    [2, 2],
    [1, 1],
  ] as const;
  for (const [passkeys, words] of ladder) {
    if (longestNeedleTokens(tokenizer, passkeys, words, format) * passkeys <= contextMin * share)
      return { passkeys, words };
  }
  return { passkeys: 1, words: 1 };
}

/** The text of a haystack: one file, or every `.txt` file of a directory in name order, separated by blank lines. */
export function readHaystack(path: string): string {
  if (!statSync(path).isDirectory()) return readFileSync(path, 'utf8');
  const files = readdirSync(path)
    .filter((name) => name.endsWith('.txt'))
    .sort();
  if (files.length === 0) throw new DuoArgumentError('haystack', `Expected .txt files in "${path}" but found none`);
  return files.map((name) => readFileSync(join(path, name), 'utf8')).join('\n\n');
}

function ordinal(index: number): string {
  const word = ORDINALS[index];
  if (word === undefined) {
    throw new DuoArgumentError('index', `Expected a passkey index in [0, ${ORDINALS.length}) but received ${index}`);
  }
  return word;
}

function longestPasskey(words: number): string {
  const longest = NATO_ALPHABET.reduce((a, b) => (b.length > a.length ? b : a));
  return Array.from({ length: words }, () => longest).join(' ');
}

/** `count` distinct values of `choices` (uniformly, without replacement), in ascending order. */
function pickSorted(choices: readonly number[], count: number, random: () => number): number[] {
  const indices = Array.from(choices.keys());
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(random() * (indices.length - i));
    [indices[i], indices[j]] = [indices[j] as number, indices[i] as number];
  }
  return indices
    .slice(0, count)
    .sort((a, b) => a - b)
    .map((i) => choices[i] as number);
}

/** A 32-bit seed for (seed, step) (splitmix32-style mixing). */
function mix(seed: number, step: number): number {
  let x = (seed ^ Math.imul(step + 1, 0x9e3779b9)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}
