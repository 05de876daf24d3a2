// Writes a byte-level HF tokenizer (256 byte tokens + BOS / EOS / PAD, no merges) for tests.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** GPT-2's byte → printable character table used by ByteLevel pre-tokenizers. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  }
  return table;
}

export const SPECIAL = { bos: '<|bos|>', eos: '<|eos|>', pad: '<|pad|>' };

/** Writes tokenizer.json and tokenizer_config.json (with `chatTemplate`) into `directory`. */
export function writeByteTokenizer(directory: string, chatTemplate?: string): void {
  mkdirSync(directory, { recursive: true });
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((character, byte) => {
    vocab[character] = byte;
  });
  const specials = [SPECIAL.bos, SPECIAL.eos, SPECIAL.pad];
  const added = specials.map((content, i) => ({
    id: 256 + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: SPECIAL.bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: SPECIAL.bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [SPECIAL.bos]: { id: SPECIAL.bos, ids: [256], tokens: [SPECIAL.bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  writeFileSync(join(directory, 'tokenizer.json'), JSON.stringify(tokenizer));
  writeFileSync(
    join(directory, 'tokenizer_config.json'),
    JSON.stringify({
      bos_token: SPECIAL.bos,
      eos_token: SPECIAL.eos,
      pad_token: SPECIAL.pad,
      chat_template: chatTemplate,
    }),
  );
}
