// Score-ranked BPE with byte fallback: llama2.c's tokenizer (tok*.bin) and SentencePiece-style GGUF vocabularies.
import { readFileSync, statSync } from 'node:fs';
import { DuoTokenizerError } from '@duoattn/core';
import type { StreamDecoder, Tokenizer } from './tokenizer.js';

/** Options of `ScoreBpeTokenizer`. */
export interface ScoreBpeOptions {
  /** Token strings, with spaces as ' ' (SentencePiece's '▁' already replaced). */
  pieces: readonly string[];
  scores: readonly number[];
  /** id of the token for each byte value 0–255 (byte fallback), where the vocabulary has them. */
  byteTokens: ReadonlyMap<number, number>;
  bosTokenId?: number;
  eosTokenIds?: readonly number[];
  /** Ids never printed by decode (BOS, EOS, UNK, …). */
  specialTokenIds?: readonly number[];
}

/**
 * The merge rule of llama2.c `encode()`: prefix a space, split into UTF-8 characters (unknown ones into byte tokens),
 * then repeatedly merge the adjacent pair whose concatenation is in the vocabulary with the highest score
 * (the leftmost on ties).
 */
export class ScoreBpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
  readonly #pieces: readonly string[];
  readonly #scores: readonly number[];
  readonly #lookup = new Map<string, number>();
  readonly #byteTokens: ReadonlyMap<number, number>;
  readonly #tokenBytes: (Uint8Array | undefined)[];
  readonly #special: Set<number>;

  constructor(options: ScoreBpeOptions) {
    this.#pieces = options.pieces;
    this.#scores = options.scores;
    this.vocabSize = options.pieces.length;
    this.bosTokenId = options.bosTokenId;
    this.eosTokenIds = options.eosTokenIds ?? [];
    this.#byteTokens = options.byteTokens;
    this.#special = new Set(options.specialTokenIds ?? []);
    options.pieces.forEach((piece, id) => {
      if (!this.#lookup.has(piece)) this.#lookup.set(piece, id);
    });
    const encoder = new TextEncoder();
    const byteOf = new Map<number, number>();
    for (const [byte, id] of options.byteTokens) byteOf.set(id, byte);
    this.#tokenBytes = options.pieces.map((piece, id) => {
      const byte = byteOf.get(id);
      if (byte !== undefined) return Uint8Array.of(byte);
      return this.#special.has(id) ? undefined : encoder.encode(piece);
    });
  }

  encode(text: string, options: { addBos?: boolean } = {}): number[] {
    const tokens: number[] = [];
    if ((options.addBos ?? true) && this.bosTokenId !== undefined) tokens.push(this.bosTokenId);
    if (text.length === 0) return tokens;
    const work: number[] = [];
    for (const character of ` ${text}`) {
      const id = this.#lookup.get(character);
      if (id !== undefined) {
        work.push(id);
        continue;
      }
      for (const byte of new TextEncoder().encode(character)) {
        const byteId = this.#byteTokens.get(byte);
        if (byteId === undefined) {
          throw new DuoTokenizerError(`cannot encode byte 0x${byte.toString(16)}: the vocabulary has no byte tokens`);
        }
        work.push(byteId);
      }
    }
    for (;;) {
      let bestScore = Number.NEGATIVE_INFINITY;
      let bestId = -1;
      let bestIndex = -1;
      for (let i = 0; i + 1 < work.length; i++) {
        const merged = this.#lookup.get((this.#pieces[work[i] ?? 0] ?? '') + (this.#pieces[work[i + 1] ?? 0] ?? ''));
        if (merged !== undefined && (this.#scores[merged] ?? 0) > bestScore) {
          bestScore = this.#scores[merged] ?? 0;
          bestId = merged;
          bestIndex = i;
        }
      }
      if (bestIndex < 0) break;
      work.splice(bestIndex, 2, bestId);
    }
    tokens.push(...work);
    return tokens;
  }

  decode(ids: readonly number[]): string {
    const decoder = this.createStreamDecoder();
    return ids.map((id) => decoder.push(id)).join('') + decoder.flush();
  }

  createStreamDecoder(context: readonly number[] = []): StreamDecoder {
    const textDecoder = new TextDecoder('utf-8');
    // Like llama2.c, drop the space the encoder prefixed to the first piece of the text (after BOS, if any); a piece
    // that continues a prompt keeps it.
    let atStart = context.every((id) => this.#tokenBytes[id] === undefined);
    // A prompt given as ids may end inside a multi-byte character (at most 3 of its bytes): they wait for the rest.
    for (const id of context.slice(-3)) textDecoder.decode(this.#tokenBytes[id], { stream: true });
    return {
      push: (id: number) => {
        const bytes = this.#tokenBytes[id];
        if (!bytes) return '';
        const trimmed = atStart && bytes[0] === 0x20 ? bytes.subarray(1) : bytes;
        atStart = false;
        return textDecoder.decode(trimmed, { stream: true });
      },
      flush: () => textDecoder.decode(),
    };
  }
}

/** Reads llama2.c's `tok*.bin`: int32 max length, then per token a float32 score, an int32 length and the bytes. */
export function loadLlama2cTokenizer(path: string, vocabSize: number): ScoreBpeTokenizer {
  if (!Number.isInteger(vocabSize) || vocabSize < 1) {
    throw new DuoTokenizerError(`${path}: expected a positive vocabulary size but received ${vocabSize}`);
  }
  let data: Buffer;
  try {
    // A FIFO or device would block or never end: only a regular file is read.
    if (!statSync(path).isFile()) throw new Error('not a regular file');
    data = readFileSync(path);
  } catch (error) {
    throw new DuoTokenizerError(`cannot read tokenizer ${path}: ${(error as Error).message}`, { cause: error });
  }
  // Each token takes at least its score and its length: 8 bytes.
  if (4 + 8 * vocabSize > data.length) {
    throw new DuoTokenizerError(
      `${path}: ${data.length} bytes cannot hold ${vocabSize} tokens (at least 8 bytes each)`,
    );
  }
  const pieces: string[] = [];
  const scores: number[] = [];
  const byteTokens = new Map<number, number>();
  let offset = 4;
  const decoder = new TextDecoder('utf-8');
  for (let id = 0; id < vocabSize; id++) {
    if (offset + 8 > data.length) {
      throw new DuoTokenizerError(`${path}: truncated at token ${id} of ${vocabSize}`);
    }
    const score = data.readFloatLE(offset);
    if (!Number.isFinite(score)) throw new DuoTokenizerError(`${path}: token ${id} has a score of ${score}`);
    scores.push(score);
    const length = data.readInt32LE(offset + 4);
    offset += 8;
    if (length < 0 || offset + length > data.length) {
      throw new DuoTokenizerError(`${path}: token ${id} has an invalid length ${length}`);
    }
    const piece = decoder.decode(data.subarray(offset, offset + length));
    offset += length;
    pieces.push(piece);
    const byteMatch = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (byteMatch?.[1]) byteTokens.set(Number.parseInt(byteMatch[1], 16), id);
  }
  const special = [0, 1, 2].filter((id) => id < vocabSize);
  return new ScoreBpeTokenizer({
    pieces,
    scores,
    byteTokens,
    bosTokenId: vocabSize > 1 ? 1 : undefined,
    eosTokenIds: vocabSize > 2 ? [2] : [],
    specialTokenIds: special,
  });
}

/** A list in GGUF metadata of `length` values that each pass `valid`, or undefined where the key is absent. */
function metadataList<T>(
  metadata: Record<string, unknown>,
  key: string,
  length: number,
  valid: (value: unknown) => value is T,
  source: string,
): T[] | undefined {
  const list = metadata[key];
  if (list === undefined) return undefined;
  if (!Array.isArray(list) || list.length !== length || !list.every(valid)) {
    throw new DuoTokenizerError(`${source}: expected ${key} to be a list of ${length} valid values`);
  }
  return list;
}

/** A token id in GGUF metadata (a number or a u64 bigint) inside [0, vocabSize), or undefined where absent. */
function metadataTokenId(metadata: Record<string, unknown>, key: string, vocabSize: number, source: string) {
  const value = metadata[key];
  if (value === undefined) return undefined;
  const id = typeof value === 'bigint' && value < BigInt(vocabSize) ? Number(value) : value;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new DuoTokenizerError(`${source}: expected ${key} to be a token id in [0, ${vocabSize}) but found ${id}`);
  }
  return id;
}

const isString = (value: unknown): value is string => typeof value === 'string';
const isFiniteNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value);
const isInteger = (value: unknown): value is number => Number.isInteger(value);

/** Builds the tokenizer of a GGUF file's `tokenizer.ggml.*` metadata (model "llama"); `source` names the file. */
export function ggufVocabularyTokenizer(metadata: Record<string, unknown>, source = 'GGUF file'): ScoreBpeTokenizer {
  const model = metadata['tokenizer.ggml.model'];
  if (model !== 'llama') {
    throw new DuoTokenizerError(
      `${source}: GGUF tokenizer model "${String(model)}" is not supported (expected "llama"); use a HF tokenizer.json`,
    );
  }
  const tokens = metadata['tokenizer.ggml.tokens'];
  if (!Array.isArray(tokens) || tokens.length === 0 || !tokens.every(isString)) {
    throw new DuoTokenizerError(`${source}: expected tokenizer.ggml.tokens to be a non-empty list of strings`);
  }
  const scores =
    metadataList(metadata, 'tokenizer.ggml.scores', tokens.length, isFiniteNumber, source) ?? tokens.map(() => 0);
  const types = metadataList(metadata, 'tokenizer.ggml.token_type', tokens.length, isInteger, source) ?? [];
  const byteTokens = new Map<number, number>();
  const special: number[] = [];
  const pieces = tokens.map((token, id) => {
    const type = types[id];
    if (type === 6) {
      const match = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
      if (match?.[1]) byteTokens.set(Number.parseInt(match[1], 16), id);
    }
    if (type === 2 || type === 3) special.push(id);
    return token.replaceAll('\u2581', ' ');
  });
  const bos = metadataTokenId(metadata, 'tokenizer.ggml.bos_token_id', tokens.length, source);
  const eos = metadataTokenId(metadata, 'tokenizer.ggml.eos_token_id', tokens.length, source);
  return new ScoreBpeTokenizer({
    pieces,
    scores,
    byteTokens,
    bosTokenId: bos,
    eosTokenIds: eos === undefined ? [] : [eos],
    specialTokenIds: special,
  });
}
