// Writes a Llama-style (SentencePiece BPE with byte fallback) HF tokenizer.json for tests: a few whole words, letters,
// the 256 byte tokens, and a post-processor that prepends BOS.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Ids of the special tokens, as in Llama 2's vocabulary. */
export const SENTENCEPIECE_SPECIAL = { unk: 0, bos: 1, eos: 2 } as const;

const WORDS = ['dog', 'named', 'Max', 'They', 'saw', 'big', 'a'];
const LETTERS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,';

/** The vocabulary and the merges that build each word of `WORDS` (with its '▁') one character at a time. */
function vocabulary(): { vocab: Record<string, number>; merges: [string, string][] } {
  const pieces = ['<unk>', '<s>', '</s>'];
  for (let byte = 0; byte < 256; byte++) pieces.push(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`);
  pieces.push('\u2581', ...LETTERS);
  const merges: [string, string][] = [];
  for (const word of WORDS) {
    let prefix = '\u2581';
    for (const character of word) {
      if (!pieces.includes(prefix + character)) {
        merges.push([prefix, character]);
        pieces.push(prefix + character);
      }
      prefix += character;
    }
  }
  return { vocab: Object.fromEntries(pieces.map((piece, id) => [piece, id])), merges };
}

/** Options of `writeSentencePieceTokenizer`. */
export interface SentencePieceTokenizerOptions {
  /** Also write tokenizer_config.json, naming BOS and EOS. Default true. */
  withConfig?: boolean;
  /** Give tokenizer.json the post-processor that prepends BOS (Llama's TemplateProcessing). Default true. */
  prependsBos?: boolean;
}

/** Writes tokenizer.json (and tokenizer_config.json) into `directory`. Returns the vocabulary size. */
export function writeSentencePieceTokenizer(directory: string, options: SentencePieceTokenizerOptions = {}): number {
  mkdirSync(directory, { recursive: true });
  const { vocab, merges } = vocabulary();
  const special = (content: string, id: number) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const bos = { SpecialToken: { id: '<s>', type_id: 0 } };
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special('<unk>', 0), special('<s>', 1), special('</s>', 2)],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '\u2581' },
        { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
      ],
    },
    pre_tokenizer: null,
    post_processor: !(options.prependsBos ?? true)
      ? null
      : {
          type: 'TemplateProcessing',
          single: [bos, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [bos, { Sequence: { id: 'A', type_id: 0 } }, bos, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { '<s>': { id: '<s>', ids: [SENTENCEPIECE_SPECIAL.bos], tokens: ['<s>'] } },
        },
    // Llama 2's decoder: the Strip step drops the space SentencePiece prefixed to the text.
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  writeFileSync(join(directory, 'tokenizer.json'), JSON.stringify(tokenizer));
  if (options.withConfig ?? true) {
    writeFileSync(
      join(directory, 'tokenizer_config.json'),
      JSON.stringify({ bos_token: '<s>', eos_token: '</s>', clean_up_tokenization_spaces: false }),
    );
  }
  return Object.keys(vocab).length;
}
