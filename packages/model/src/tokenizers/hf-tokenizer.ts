// HF `tokenizer.json` through @huggingface/tokenizers.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DuoTokenizerError } from '@duoattn/core';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import type { StreamDecoder, Tokenizer } from './tokenizer.js';

/** Context tokens a stream decoder decodes before the first pushed one: a UTF-8 character has at most 4 bytes. */
const CONTEXT_TOKENS = 4;

/** What a model's config.json says about its special tokens: `HfTokenizer` uses it where the tokenizer files are silent. */
export interface HfTokenizerOptions {
  /** config.json's `eos_token_id`(s): generation stops on them as well as on tokenizer_config.json's. Default none. */
  eosTokenIds?: readonly number[];
  /**
   * config.json's `bos_token_id`: the BOS when tokenizer_config.json names none (or is absent) and tokenizer.json's
   * post-processor prepends this token. Default none.
   */
  bosTokenId?: number | undefined;
}

/** A HF tokenizer directory (tokenizer.json and, if present, tokenizer_config.json). */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
  /** The chat template from tokenizer_config.json, if any. */
  readonly chatTemplate: string | undefined;
  readonly #impl: HfTokenizerImpl;
  readonly #addsBos: boolean;
  /** tokenizer.json's path, for messages. */
  readonly #path: string;

  /** `options` may also be the list of config.json's EOS ids (the former second argument). */
  constructor(directory: string, options: HfTokenizerOptions | readonly number[] = {}) {
    const { eosTokenIds = [], bosTokenId: configBos } = isIdList(options) ? { eosTokenIds: options } : options;
    const path = join(directory, 'tokenizer.json');
    this.#path = path;
    const configPath = join(directory, 'tokenizer_config.json');
    const json = readJsonObject(path, 'model');
    checkTokenIds(json, path);
    checkPatterns(json, path);
    const config = existsSync(configPath) ? readJsonObject(configPath) : {};
    let first: number | undefined;
    try {
      this.#impl = new HfTokenizerImpl(json, config);
      this.vocabSize = this.#impl.get_vocab(true).size;
      // What the post-processor puts first (BOS, where it prepends one).
      first = this.#impl.encode('a').ids[0];
    } catch (error) {
      // @huggingface/tokenizers checks little: a file that is JSON but not a tokenizer fails inside it.
      throw new DuoTokenizerError(`${path} is not a usable tokenizer: ${(error as Error).message}`, { cause: error });
    }
    const tokenId = (value: unknown): number | undefined => {
      const text = typeof value === 'string' ? value : (value as { content?: unknown } | undefined)?.content;
      return typeof text === 'string' ? this.#impl.token_to_id(text) : undefined;
    };
    // A bos_token of null in tokenizer_config.json says there is none. config.json's id alone is not enough: models
    // trained without BOS set it too (Qwen2: <|endoftext|>), so it counts only where the post-processor prepends it.
    this.bosTokenId = 'bos_token' in config ? tokenId(config.bos_token) : first === configBos ? configBos : undefined;
    const eos = tokenId(config.eos_token);
    this.eosTokenIds = [...new Set([...eosTokenIds, ...(eos === undefined ? [] : [eos])])];
    this.chatTemplate = typeof config.chat_template === 'string' ? config.chat_template : undefined;
    // Whether the post-processor already inserts BOS (then encode must not add a second one).
    this.#addsBos = this.bosTokenId !== undefined && first === this.bosTokenId;
  }

  encode(text: string, options: { addBos?: boolean } = {}): number[] {
    const ids = this.#guarded('encode', () =>
      Array.from(this.#impl.encode(text, { add_special_tokens: false }).ids, Number),
    );
    const addBos = (options.addBos ?? true) && this.#addsBos && this.bosTokenId !== undefined;
    return addBos ? [this.bosTokenId as number, ...ids] : ids;
  }

  decode(ids: readonly number[]): string {
    // The library refuses an empty list; decoding no tokens is the empty text.
    if (ids.length === 0) return '';
    return this.#guarded('decode', () => this.#impl.decode([...ids], { skip_special_tokens: true }));
  }

  /** Runs a call into @huggingface/tokenizers, whose errors are plain ones, as a DuoTokenizerError. */
  #guarded<T>(what: string, call: () => T): T {
    try {
      return call();
    } catch (error) {
      throw new DuoTokenizerError(`cannot ${what} with ${this.#path}: ${(error as Error).message}`, { cause: error });
    }
  }

  createStreamDecoder(context: readonly number[] = []): StreamDecoder {
    // Decode a window of tokens and emit what it adds to the text already emitted, holding back an incomplete character
    // (U+FFFD). The window opens with tokens whose text is not emitted (the context's last few, enough for a character
    // split across byte tokens; after a newline, the newline's token): decoders that strip a leading space (Llama's
    // Strip, Metaspace) then see the next token as the continuation it is. Restarting at each newline keeps the cost of
    // a token at a line's decode, not the whole output's.
    let window: number[] = [];
    let emitted = '';
    const restart = (opening: readonly number[]) => {
      window = [...opening];
      emitted = opening.length === 0 ? '' : this.decode(opening).replace(/\uFFFD+$/, '');
    };
    const advance = (final: boolean): string => {
      if (window.length === 0) return '';
      const text = this.decode(window);
      if ((!final && text.endsWith('\uFFFD')) || !text.startsWith(emitted)) return '';
      const fresh = text.slice(emitted.length);
      emitted = text;
      if (text.endsWith('\n')) restart(window.slice(-1));
      return fresh;
    };
    restart(context.slice(-CONTEXT_TOKENS));
    return {
      push: (id: number) => {
        window.push(id);
        return advance(false);
      },
      flush: () => advance(true),
    };
  }
}

/**
 * Refuses token ids that are not whole, are negative, or lie far beyond the tokens the file lists (twice their number,
 * plus 1 024): @huggingface/tokenizers sizes its tables by the largest id, so a single id of 2^31 costs a minute and
 * gigabytes before anything fails.
 */
function checkTokenIds(json: Record<string, unknown>, path: string): void {
  const model = json.model as Record<string, unknown>;
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) {
    throw new DuoTokenizerError(`${path}: expected \`added_tokens\` to be a list but found ${describe(added)}`);
  }
  // Unigram lists [piece, score] pairs whose ids are their positions; BPE, WordPiece and WordLevel map pieces to ids.
  const unigram = model.type === 'Unigram';
  const vocab = model.vocab ?? (unigram ? [] : {});
  const isMap = typeof vocab === 'object' && vocab !== null && !Array.isArray(vocab);
  const pairs = Array.isArray(vocab) && vocab.every((entry) => Array.isArray(entry) && typeof entry[0] === 'string');
  if (unigram ? !pairs : !isMap) {
    const expected = unigram ? 'a list of [piece, score] pairs' : 'an object of piece → id';
    throw new DuoTokenizerError(`${path}: expected \`model.vocab\` to be ${expected} but found ${describe(vocab)}`);
  }
  const ids: [string, unknown][] = isMap ? Object.entries(vocab) : [];
  for (const token of added) {
    const entry = token as { content?: unknown; id?: unknown } | null;
    if (typeof entry?.content !== 'string') {
      throw new DuoTokenizerError(`${path}: an added token has no \`content\` string: ${describe(token)}`);
    }
    ids.push([entry.content, entry.id]);
  }
  const listed = (Array.isArray(vocab) ? vocab.length : 0) + ids.length;
  const limit = 2 * listed + 1024;
  for (const [piece, id] of ids) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= limit) {
      throw new DuoTokenizerError(
        `${path}: token ${describe(piece)} has id ${describe(id)}, not an integer in [0, ${limit}) (the file lists ${listed} tokens)`,
      );
    }
  }
}

/**
 * Refuses a regular expression in tokenizer.json (a Split pre-tokenizer's or a Replace normalizer's `Regex`) with a
 * quantified group that itself holds a quantifier, such as `(a+)+`: JavaScript's engine backtracks through them in
 * exponential time, so one such pattern would let a short prompt hold the process for minutes. Real tokenizers' patterns
 * (GPT-2's, Llama 3's, Qwen2's) have none.
 */
function checkPatterns(value: unknown, path: string): void {
  if (typeof value !== 'object' || value === null) return;
  for (const [key, item] of Object.entries(value)) {
    if (key === 'Regex' && typeof item === 'string' && hasNestedQuantifier(item)) {
      throw new DuoTokenizerError(
        `${path}: the pattern ${describe(item)} repeats a group that repeats (like (a+)+), which can take exponential time`,
      );
    }
    checkPatterns(item, path);
  }
}

/** Whether `pattern` has a group repeated by *, + or {…} whose body holds such a repetition too. */
export function hasNestedQuantifier(pattern: string): boolean {
  // One flag per open group: whether its body repeats something. The outermost entry is the pattern itself.
  const groups: boolean[] = [false];
  const repeatsAt = (i: number) => pattern[i] === '*' || pattern[i] === '+' || /^\{\d*,?\d*\}/.test(pattern.slice(i));
  for (let i = 0; i < pattern.length; i++) {
    const character = pattern[i];
    if (character === '\\') {
      // \p{L}, \u{…}: the braces belong to the escape.
      const close = /^[pPu]\{/.test(pattern.slice(i + 1, i + 3)) ? pattern.indexOf('}', i) : i + 1;
      i = close < 0 ? pattern.length : close;
    } else if (character === '[') {
      for (i++; i < pattern.length && pattern[i] !== ']'; i++) if (pattern[i] === '\\') i++;
    } else if (character === '(') {
      groups.push(false);
    } else if (character === ')') {
      const repeatsInside = groups.pop() ?? false;
      if (repeatsInside && repeatsAt(i + 1)) return true;
      if (groups.length === 0) groups.push(false);
      groups[groups.length - 1] ||= repeatsInside;
    } else if (repeatsAt(i)) {
      groups[groups.length - 1] = true;
    }
  }
  return false;
}

/** A value as a message shows it: (shortened) JSON. */
function describe(value: unknown): string {
  return String(JSON.stringify(value)).slice(0, 60);
}

/** Reads a JSON file that must hold an object (with an object under `requiredKey`, where given). */
function readJsonObject(path: string, requiredKey?: string): Record<string, unknown> {
  let value: unknown;
  try {
    // A FIFO or a device would block the read or never end it: only a regular file is read.
    if (!statSync(path).isFile()) throw new Error('not a regular file');
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new DuoTokenizerError(`cannot read ${path}: ${(error as Error).message}`, { cause: error });
  }
  const isObject = (candidate: unknown): candidate is Record<string, unknown> =>
    typeof candidate === 'object' && candidate !== null && !Array.isArray(candidate);
  if (!isObject(value) || (requiredKey !== undefined && !isObject(value[requiredKey]))) {
    const expected = requiredKey === undefined ? 'an object' : `an object with a \`${requiredKey}\` object`;
    throw new DuoTokenizerError(`${path}: expected ${expected} but found ${describe(value)}`);
  }
  return value;
}

function isIdList(options: HfTokenizerOptions | readonly number[]): options is readonly number[] {
  return Array.isArray(options);
}
