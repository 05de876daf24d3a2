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
  /**
   * A decoder for streaming: `push` returns the text that became complete (multi-byte characters wait).
   * `context` (default none: the pushed ids start the text) lists the ids the pushed ones continue, such as a prompt:
   * their text is not returned, but the first pushed token is decoded as their continuation — it keeps the leading
   * space that SentencePiece vocabularies drop only at the start of the text or after BOS.
   */
  createStreamDecoder(context?: readonly number[]): StreamDecoder;
}

/** Incremental decoder returned by `Tokenizer.createStreamDecoder`. */
export interface StreamDecoder {
  push(id: number): string;
  flush(): string;
}
