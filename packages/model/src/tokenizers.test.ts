// HF tokenizer.json through @huggingface/tokenizers (byte-level and SentencePiece vocabularies the test writes),
// streaming decode (of a prompt's continuation too, for HF and score-BPE vocabularies), and chat templates through
// @huggingface/jinja.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { afterAll, describe, expect, it } from 'vitest';
import { writeByteTokenizer } from './__fixtures__/byte-tokenizer.js';
import { SENTENCEPIECE_SPECIAL, writeSentencePieceTokenizer } from './__fixtures__/sentencepiece-tokenizer.js';
import { applyChatTemplate } from './chat-template.js';
import { HfTokenizer } from './tokenizers/hf-tokenizer.js';
import { ScoreBpeTokenizer } from './tokenizers/score-bpe.js';
import type { Tokenizer } from './tokenizers/tokenizer.js';

const directory = mkdtempSync(join(tmpdir(), 'duoattn-tokenizer-'));
afterAll(() => rmSync(directory, { recursive: true, force: true }));
const template =
  '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}';
writeByteTokenizer(directory, template);

describe('HF byte-level tokenizer', () => {
  const tokenizer = new HfTokenizer(directory);

  it('encodes text as BOS then its UTF-8 bytes, and decodes it back', () => {
    const text = 'Hello, wörld! 🍰 \n\ttabs';
    const bytes = Array.from(new TextEncoder().encode(text));
    expect(tokenizer.bosTokenId).toBe(256);
    expect(tokenizer.eosTokenIds).toEqual([257]);
    expect(tokenizer.encode(text)).toEqual([256, ...bytes]);
    expect(tokenizer.encode(text, { addBos: false })).toEqual(bytes);
    expect(tokenizer.decode([256, ...bytes, 257])).toBe(text);
  });

  it('streams multi-byte characters only once they are complete', () => {
    const decoder = tokenizer.createStreamDecoder();
    const pieces = Array.from(new TextEncoder().encode('a🍰b')).map((id) => decoder.push(id));
    expect(pieces).toEqual(['a', '', '', '', '🍰', 'b']);
    expect(decoder.flush()).toBe('');
  });

  it('streams across lines: the window restarts after each newline and the text is kept whole', () => {
    const text = 'first line\nsecond 🍰 line\n\nthird';
    const decoder = tokenizer.createStreamDecoder();
    const pieces = Array.from(new TextEncoder().encode(text)).map((id) => decoder.push(id));
    expect(pieces.join('') + decoder.flush()).toBe(text);
    expect(pieces.filter((piece) => piece === '').length).toBe(3);
  });

  it('renders a chat template and carries it from tokenizer_config.json', () => {
    expect(tokenizer.chatTemplate).toBe(template);
    const prompt = applyChatTemplate(template, [{ role: 'user', content: 'What is the passkey?' }], {
      eosToken: '<|eos|>',
    });
    expect(prompt).toBe('<|user|>What is the passkey?<|eos|><|assistant|>');
    expect(() => applyChatTemplate(template, [])).toThrow(DuoArgumentError);
  });
});

/** The text a stream decoder returns for `ids` pushed after `context`. */
function streamed(tokenizer: Tokenizer, ids: readonly number[], context?: readonly number[]): string {
  const decoder = tokenizer.createStreamDecoder(context);
  return ids.map((id) => decoder.push(id)).join('') + decoder.flush();
}

describe('streaming the continuation of a prompt keeps its leading space', () => {
  const sentencePieceDirectory = join(directory, 'sentencepiece');
  writeSentencePieceTokenizer(sentencePieceDirectory);
  const sentencePiece = new HfTokenizer(sentencePieceDirectory);
  const { bos } = SENTENCEPIECE_SPECIAL;

  it('HF SentencePiece: " named Max" after "They saw a big dog", no space at the start of the text or after BOS', () => {
    const prompt = sentencePiece.encode('They saw a big dog');
    const continuation = sentencePiece.encode('named Max', { addBos: false });
    expect(prompt[0]).toBe(bos);
    expect(sentencePiece.decode([...prompt, ...continuation])).toBe('They saw a big dog named Max');
    expect(streamed(sentencePiece, continuation, prompt)).toBe(' named Max');
    expect(streamed(sentencePiece, continuation, [bos])).toBe('named Max');
    expect(streamed(sentencePiece, continuation)).toBe('named Max');
  });

  it('HF SentencePiece: a word after a streamed newline keeps its space, as decoding the whole text does', () => {
    const ids = sentencePiece.encode('a dog\n named Max\n\nThey saw', { addBos: false });
    expect(streamed(sentencePiece, ids)).toBe(sentencePiece.decode(ids));
    expect(streamed(sentencePiece, ids)).toBe('a dog\n named Max\n\nThey saw');
  });

  it('HF SentencePiece: a character split between the prompt and the continuation comes out whole', () => {
    const ids = sentencePiece.encode('dog 🍰', { addBos: false });
    expect(streamed(sentencePiece, ids.slice(-2), ids.slice(0, -2))).toBe('🍰');
  });

  it('score-BPE (llama2.c, GGUF): " named" after " dog", no space at the start of the text or after BOS', () => {
    const cake = Array.from(new TextEncoder().encode('🍰'));
    const tokenizer = new ScoreBpeTokenizer({
      pieces: ['<unk>', '<s>', '</s>', ' dog', ' named', ' Max', ...cake.map((byte) => `<0x${byte.toString(16)}>`)],
      scores: [0, 0, 0, -1, -2, -3, 0, 0, 0, 0],
      byteTokens: new Map(cake.map((byte, i) => [byte, 6 + i])),
      bosTokenId: bos,
      eosTokenIds: [2],
      specialTokenIds: [0, 1, 2],
    });
    const prompt = [bos, 3];
    expect(tokenizer.decode([...prompt, 4, 5])).toBe('dog named Max');
    expect(streamed(tokenizer, [4, 5], prompt)).toBe(' named Max');
    expect(streamed(tokenizer, [4, 5], [bos])).toBe('named Max');
    expect(streamed(tokenizer, [4, 5])).toBe('named Max');
    // A character split between the prompt and the continuation comes out whole.
    expect(streamed(tokenizer, [8, 9], [bos, 3, 6, 7])).toBe('🍰');
  });
});
