// The tokenizer interface every format implements.

/** Turns text into token ids and back. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenIds: readonly number[];
  /** Encodes `text`; `addBos` (default true) prepends BOS where the tokenizer has one. */
  encode(text: string, options?: { addBos?: boolean }): number[];
  /** Decodes ids to text, skipping special tokens. */
  decode(ids: readonly number[]): string;
  /** A decoder for streaming: `push` returns the text that became complete (multi-byte characters wait). */
  createStreamDecoder(): StreamDecoder;
}

/** Incremental decoder returned by `Tokenizer.createStreamDecoder`. */
export interface StreamDecoder {
  push(id: number): string;
  flush(): string;
}
