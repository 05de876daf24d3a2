// HF tokenizer.json through @huggingface/tokenizers (a byte-level vocabulary the test writes), streaming decode,
// and chat templates through @huggingface/jinja.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoArgumentError } from '@duoattn/core';
import { afterAll, describe, expect, it } from 'vitest';
import { writeByteTokenizer } from './__fixtures__/byte-tokenizer.js';
import { applyChatTemplate } from './chat-template.js';
import { HfTokenizer } from './tokenizers/hf-tokenizer.js';

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
