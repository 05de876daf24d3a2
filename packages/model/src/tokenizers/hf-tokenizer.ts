// HF `tokenizer.json` through @huggingface/tokenizers.
import { existsSync, readFileSync } from 'node:fs';
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

  /** `options` may also be the list of config.json's EOS ids (the former second argument). */
  constructor(directory: string, options: HfTokenizerOptions | readonly number[] = {}) {
    const { eosTokenIds = [], bosTokenId: configBos } = isIdList(options) ? { eosTokenIds: options } : options;
    const path = join(directory, 'tokenizer.json');
    const configPath = join(directory, 'tokenizer_config.json');
    const json = readJsonObject(path, 'model');
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
    const ids = Array.from(this.#impl.encode(text, { add_special_tokens: false }).ids, Number);
    const addBos = (options.addBos ?? true) && this.#addsBos && this.bosTokenId !== undefined;
    return addBos ? [this.bosTokenId as number, ...ids] : ids;
  }

  decode(ids: readonly number[]): string {
    return this.#impl.decode([...ids], { skip_special_tokens: true });
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

/** Reads a JSON file that must hold an object (with an object under `requiredKey`, where given). */
function readJsonObject(path: string, requiredKey?: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new DuoTokenizerError(`cannot read ${path}: ${(error as Error).message}`, { cause: error });
  }
  const isObject = (candidate: unknown): candidate is Record<string, unknown> =>
    typeof candidate === 'object' && candidate !== null && !Array.isArray(candidate);
  if (!isObject(value) || (requiredKey !== undefined && !isObject(value[requiredKey]))) {
    const expected = requiredKey === undefined ? 'an object' : `an object with a \`${requiredKey}\` object`;
    throw new DuoTokenizerError(
      `${path}: expected ${expected} but found ${String(JSON.stringify(value)).slice(0, 60)}`,
    );
  }
  return value;
}

function isIdList(options: HfTokenizerOptions | readonly number[]): options is readonly number[] {
  return Array.isArray(options);
}
