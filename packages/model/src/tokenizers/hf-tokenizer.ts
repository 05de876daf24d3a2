// HF `tokenizer.json` through @huggingface/tokenizers.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DuoTokenizerError } from '@duoattn/core';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import type { StreamDecoder, Tokenizer } from './tokenizer.js';

/** A HF tokenizer directory (tokenizer.json and, if present, tokenizer_config.json). */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
  /** The chat template from tokenizer_config.json, if any. */
  readonly chatTemplate: string | undefined;
  readonly #impl: HfTokenizerImpl;
  readonly #addsBos: boolean;

  constructor(directory: string, eosTokenIds: readonly number[] = []) {
    const path = join(directory, 'tokenizer.json');
    let json: Record<string, unknown>;
    let config: Record<string, unknown> = {};
    try {
      json = JSON.parse(readFileSync(path, 'utf8'));
      const configPath = join(directory, 'tokenizer_config.json');
      if (existsSync(configPath)) config = JSON.parse(readFileSync(configPath, 'utf8'));
    } catch (error) {
      throw new DuoTokenizerError(`cannot read ${path}: ${(error as Error).message}`, { cause: error });
    }
    this.#impl = new HfTokenizerImpl(json, config);
    this.vocabSize = this.#impl.get_vocab(true).size;
    const tokenId = (value: unknown): number | undefined => {
      const text = typeof value === 'string' ? value : (value as { content?: string } | undefined)?.content;
      return text === undefined ? undefined : this.#impl.token_to_id(text);
    };
    this.bosTokenId = tokenId(config.bos_token);
    const eos = tokenId(config.eos_token);
    this.eosTokenIds = [...new Set([...eosTokenIds, ...(eos === undefined ? [] : [eos])])];
    this.chatTemplate = typeof config.chat_template === 'string' ? config.chat_template : undefined;
    // Whether the post-processor already inserts BOS (then encode must not add a second one).
    const probe = this.#impl.encode('a').ids;
    this.#addsBos = this.bosTokenId !== undefined && probe[0] === this.bosTokenId;
  }

  encode(text: string, options: { addBos?: boolean } = {}): number[] {
    const ids = Array.from(this.#impl.encode(text, { add_special_tokens: false }).ids, Number);
    const addBos = (options.addBos ?? true) && this.#addsBos && this.bosTokenId !== undefined;
    return addBos ? [this.bosTokenId as number, ...ids] : ids;
  }

  decode(ids: readonly number[]): string {
    return this.#impl.decode([...ids], { skip_special_tokens: true });
  }

  createStreamDecoder(): StreamDecoder {
    // Decode the tokens since the last completed line and emit the new suffix, holding back an incomplete character
    // (U+FFFD); after a newline the window restarts, so each token costs a line's decode, not the whole output's.
    let window: number[] = [];
    let emitted = '';
    const advance = (final: boolean): string => {
      const text = this.decode(window);
      if ((!final && text.endsWith('\uFFFD')) || !text.startsWith(emitted)) return '';
      const fresh = text.slice(emitted.length);
      emitted = text;
      if (text.endsWith('\n')) {
        window = [];
        emitted = '';
      }
      return fresh;
    };
    return {
      push: (id: number) => {
        window.push(id);
        return advance(false);
      },
      flush: () => advance(true),
    };
  }
}
