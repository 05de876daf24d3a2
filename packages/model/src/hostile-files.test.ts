// Hostile checkpoints and tokenizers (issue 15): each is models/duo-demo or a fixture with one field changed, and each
// must end in a typed error naming the file, the field and the value, before anything is allocated.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuoCheckpointError, type DuoError, DuoTokenizerError } from '@duoattn/core';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ggufTensors,
  llama2cWeightBytes,
  randomWeights,
  readSafetensorsParts,
  tinyConfig,
  tinyLlama2cHeader,
  writeGguf,
  writeLlama2c,
  writeSafetensorsParts,
} from './__fixtures__/checkpoints.js';
import { demoModelDirectory } from './__fixtures__/demo-suite.js';
import { LlamaModel } from './llama-model.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';
import { HfTokenizer, hasNestedQuantifier } from './tokenizers/hf-tokenizer.js';

const root = mkdtempSync(join(tmpdir(), 'duoattn-hostile-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const demo = demoModelDirectory();
const SHARD = 'model-00001-of-00002.safetensors';

/** A copy of models/duo-demo under `name`, with `edit` applied to it. */
function demoCopy(name: string, edit: (directory: string) => void): string {
  const directory = join(root, name);
  cpSync(demo, directory, { recursive: true });
  edit(directory);
  return directory;
}

/** A copy of models/duo-demo whose first shard's header went through `edit` (the data bytes are unchanged). */
function demoWithHeader(name: string, edit: (header: Record<string, unknown>) => unknown): string {
  return demoCopy(name, (directory) => {
    const file = join(directory, SHARD);
    const { header, data } = readSafetensorsParts(file);
    const parsed = JSON.parse(header) as Record<string, unknown>;
    const edited = edit(parsed);
    writeSafetensorsParts(file, JSON.stringify(edited === undefined ? parsed : edited), data);
  });
}

/** A copy of models/duo-demo whose config.json has `changes` applied. */
function demoWithConfig(name: string, changes: Record<string, unknown>): string {
  return demoCopy(name, (directory) => {
    const file = join(directory, 'config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...changes }));
  });
}

type Entry = { dtype: string; shape: number[]; data_offsets: [number, number] };

/** The error `openCheckpoint` ends in (undefined when it opened), and how long it took. */
async function openError(path: string): Promise<{ error: unknown; milliseconds: number }> {
  const started = performance.now();
  const error = await openCheckpoint(path).then(
    () => undefined,
    (e: unknown) => e,
  );
  return { error, milliseconds: performance.now() - started };
}

async function expectRefused(
  path: string,
  pieces: (string | RegExp)[],
  type: abstract new (...args: never[]) => DuoError = DuoCheckpointError,
) {
  const { error } = await openError(path);
  expect(error, 'the file was accepted').toBeInstanceOf(type);
  for (const piece of pieces) expect((error as Error).message).toMatch(piece);
  return error as DuoError;
}

describe('safetensors headers', () => {
  const embed = 'model.embed_tokens.weight';
  const file = (directory: string) => join(directory, SHARD);

  it('negative data_offsets (which would read the header as weights) are refused', async () => {
    const directory = demoWithHeader('negative-offsets', (header) => {
      const entry = header[embed] as Entry;
      const length = entry.data_offsets[1] - entry.data_offsets[0];
      entry.data_offsets = [-64, length - 64];
    });
    await expectRefused(directory, [file(directory), embed, 'data_offsets', '-64']);
  });

  it('overlapping tensors are refused', async () => {
    const key = 'model.layers.0.self_attn.k_proj.weight';
    const value = 'model.layers.0.self_attn.v_proj.weight';
    const directory = demoWithHeader('overlap', (header) => {
      (header[value] as Entry).data_offsets = [...(header[key] as Entry).data_offsets];
    });
    await expectRefused(directory, [file(directory), /overlap/, /[kv]_proj/]);
  });

  /** The header with the embedding's entry changed (an undefined field is dropped by JSON.stringify). */
  const withEmbedding = (changes: Record<string, unknown>) => (h: Record<string, unknown>) => ({
    ...h,
    [embed]: { ...(h[embed] as object), ...changes },
  });

  it.each([
    ['the header is null', () => null, /expected a JSON object/],
    ['an entry is null', (h: Record<string, unknown>) => ({ ...h, [embed]: null }), embed],
    ['data_offsets is missing', withEmbedding({ data_offsets: undefined }), 'data_offsets'],
    ['data_offsets is fractional', withEmbedding({ data_offsets: [0.5, 265216.5] }), /data_offsets.*0\.5/],
    ['shape is a string', withEmbedding({ shape: '259,512' }), 'shape'],
    ['dtype is a number', withEmbedding({ dtype: 7 }), 'dtype'],
    ['the header is an array', () => [1, 2, 3], /expected a JSON object/],
  ])('%s: a checkpoint error, not a stack trace', async (name, edit, piece) => {
    const directory = demoWithHeader(`header-${name.replaceAll(' ', '-')}`, edit);
    const error = await expectRefused(directory, [file(directory), piece]);
    expect(error.message).not.toMatch(/Cannot read|undefined|is not a function|is not iterable/);
  });
});

describe('model directories', () => {
  it('a shard outside the model directory (../../../../etc/passwd) is never opened', async () => {
    const directory = demoCopy('escape', (d) => {
      const index = join(d, 'model.safetensors.index.json');
      const parsed = JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> };
      parsed.weight_map['model.norm.weight'] = '../../../../etc/passwd';
      writeFileSync(index, JSON.stringify(parsed));
    });
    await expectRefused(directory, ['../../../../etc/passwd', /outside the model directory/]);
  });

  it('a shard that is a symlink leading outside the model directory is refused too', async () => {
    // The link points at a perfectly good shard: only where it lives is wrong.
    const outside = join(root, 'elsewhere');
    mkdirSync(outside, { recursive: true });
    cpSync(join(demo, SHARD), join(outside, SHARD));
    const directory = demoCopy('symlink', (d) => {
      rmSync(join(d, SHARD));
      symlinkSync(join(outside, SHARD), join(d, SHARD));
    });
    await expectRefused(directory, [SHARD, /outside the model directory/]);
  });

  it.each([
    ['rope_theta', 'NaN', /rope_theta.*NaN/],
    ['rope_theta', -1, /rope_theta.*-1/],
    ['max_position_embeddings', 0, /max_position_embeddings.*0/],
    ['num_hidden_layers', 2 ** 31 - 1, /num_hidden_layers.*2147483647/],
    ['num_key_value_heads', 3, /num(_key_value|Kv)_?[hH]eads/],
    ['vocab_size', 0, /vocab_size.*0/],
    ['rms_norm_eps', 'nope', /rms_norm_eps/],
    ['hidden_size', 511.5, /hidden_size.*511\.5/],
    ['bos_token_id', 259, /bos_token_id.*259/],
  ])('config.json %s = %j is refused, naming the field and the value', async (field, value, pattern) => {
    const directory = demoWithConfig(`config-${field}-${String(value)}`, { [field]: value });
    await expectRefused(directory, [join(directory, 'config.json'), pattern]);
  });

  it('a FIFO where a file belongs is refused, not read (reading one blocks until a writer comes)', async () => {
    const fifo = (path: string) => {
      rmSync(path);
      execFileSync('mkfifo', [path]);
    };
    const config = demoCopy('fifo-config', (d) => fifo(join(d, 'config.json')));
    await expectRefused(config, [join(config, 'config.json'), 'not a regular file']);
    const tokenizer = demoCopy('fifo-tokenizer', (d) => fifo(join(d, 'tokenizer.json')));
    await expectRefused(tokenizer, [join(tokenizer, 'tokenizer.json'), 'not a regular file'], DuoTokenizerError);
    const bin = join(root, 'fifo.bin');
    execFileSync('mkfifo', [bin]);
    await expectRefused(bin, [bin, 'not a regular file']);
  });

  it('tokenizer.json that is {} gives a tokenizer error naming the file', async () => {
    const directory = demoCopy('tokenizer-empty', (d) => writeFileSync(join(d, 'tokenizer.json'), '{}'));
    await expectRefused(directory, [join(directory, 'tokenizer.json')], DuoTokenizerError);
    expect(() => new HfTokenizer(directory)).toThrow(DuoTokenizerError);
  });

  it('tokenizer_config.json that is null gives a tokenizer error', async () => {
    const directory = demoCopy('tokenizer-config-null', (d) => writeFileSync(join(d, 'tokenizer_config.json'), 'null'));
    await expectRefused(directory, [join(directory, 'tokenizer_config.json')], DuoTokenizerError);
  });
});

describe('GGUF', () => {
  const config = tinyConfig('llama');
  const tensors = ggufTensors(randomWeights(config, 700), 'F32');
  const f32 = (value: number) => {
    const bytes = Buffer.alloc(4);
    bytes.writeFloatLE(value);
    return bytes;
  };
  const u32 = (value: number) => {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(value);
    return bytes;
  };

  it('the fixture itself opens', async () => {
    const path = join(root, 'valid.gguf');
    writeGguf(path, config, tensors);
    expect((await openCheckpoint(path)).config.numLayers).toBe(2);
  });

  it('a tensor offset that is not a multiple of general.alignment (32 by default) is refused', async () => {
    const path = join(root, 'unaligned.gguf');
    // The first tensor (f32, 18 624 bytes) ends on an aligned offset; start the second 4 bytes later.
    const misplaced = (tensors[0]?.data.length ?? 0) * 4 + 4;
    const shifted = tensors.map((tensor, i) => (i === 1 ? { ...tensor, offset: misplaced } : tensor));
    writeGguf(path, config, shifted);
    await expectRefused(path, [path, tensors[1]?.name ?? '', /alignment/, /32/]);
  });

  it('tensors that overlap are refused', async () => {
    const path = join(root, 'overlap.gguf');
    writeGguf(
      path,
      config,
      tensors.map((tensor) => ({ ...tensor, offset: 0 })),
    );
    await expectRefused(path, [path, /overlap/]);
  });

  it.each([
    ['llama.rope.freq_base', [6, f32(Number.NaN)], /freq_base.*NaN/],
    ['llama.context_length', [4, u32(0)], /context_length.*0/],
    ['llama.block_count', [4, u32(2 ** 31 - 1)], /block_count.*2147483647/],
    ['llama.attention.layer_norm_rms_epsilon', [6, f32(Number.POSITIVE_INFINITY)], /epsilon.*Infinity/],
    ['general.alignment', [4, u32(24)], /alignment.*24/],
    [
      'llama.embedding_length',
      [8, Buffer.concat([Buffer.from([2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('48')])],
      /embedding_length/,
    ],
  ] as [string, [number, Buffer], RegExp][])('metadata %s refused', async (key, value, pattern) => {
    const path = join(root, `${key}.gguf`);
    writeGguf(path, config, tensors, { [key]: value });
    await expectRefused(path, [path, pattern]);
  });

  it('a header that declares more tensors and keys than the file can hold fails at once', async () => {
    const path = join(root, 'counts.gguf');
    writeGguf(path, config, tensors);
    const bytes = readFileSync(path);
    bytes.writeBigUInt64LE(2n ** 40n, 8);
    writeFileSync(path, bytes);
    const { error, milliseconds } = await openError(path);
    expect(error).toBeInstanceOf(DuoCheckpointError);
    expect((error as Error).message).toMatch(/1099511627776/);
    expect(milliseconds).toBeLessThan(1000);
  });
});

describe('llama2.c', () => {
  it.each([
    ['seq_len', 0],
    ['seq_len', -5],
    ['n_heads', 0],
    ['n_kv_heads', 3],
    ['vocab_size', 0],
    ['dim', -64],
  ] as const)('a header with %s = %d is refused', async (field, value) => {
    const path = join(root, `llama2c-${field}${value}.bin`);
    // As long as the unchanged header needs: the file is large enough for whatever the changed one implies.
    writeLlama2c(path, tinyLlama2cHeader({ [field]: value }), 28 + llama2cWeightBytes(tinyLlama2cHeader()));
    await expectRefused(path, [path, new RegExp(`${field}.*${value}|${field}`)]);
  });

  it('n_layers 2^31 − 1 fails in milliseconds: the implied weights exceed the file', async () => {
    const path = join(root, 'llama2c-layers.bin');
    writeLlama2c(path, tinyLlama2cHeader({ n_layers: 2 ** 31 - 1 }), 1 << 20);
    const { error, milliseconds } = await openError(path);
    expect(error).toBeInstanceOf(DuoCheckpointError);
    expect((error as Error).message).toMatch(/n_layers.*2147483647/);
    expect(milliseconds).toBeLessThan(200);
  });

  it('weights implied by a plausible header but missing from the file: refused before loading', async () => {
    const path = join(root, 'llama2c-short.bin');
    writeLlama2c(path, tinyLlama2cHeader({ n_layers: 6 }), 28 + 100_000);
    await expectRefused(path, [path, /implies \d+ bytes/, /has 100028/]);
  });

  it('an explicit tokenizer path that does not exist is an error, not a model without tokenizer', async () => {
    const path = join(root, 'llama2c-valid.bin');
    writeLlama2c(path, tinyLlama2cHeader());
    await expect(LlamaModel.load(path, { device: 'cpu', tokenizerPath: join(root, 'nope.bin') })).rejects.toThrow(
      /nope\.bin/,
    );
  });
});

describe('cases the fuzz suite found (hostile-files.fuzz.test.ts)', () => {
  it('a tokenizer.json token id of 2^31 is refused at once (@huggingface/tokenizers spent 80 s sizing tables by it)', async () => {
    const directory = demoCopy('tokenizer-huge-id', (d) => {
      const file = join(d, 'tokenizer.json');
      const json = JSON.parse(readFileSync(file, 'utf8')) as { model: { vocab: Record<string, number> } };
      const piece = Object.keys(json.model.vocab)[5] as string;
      json.model.vocab[piece] = 2 ** 31 + 5;
      writeFileSync(file, JSON.stringify(json));
    });
    const { error, milliseconds } = await openError(directory);
    expect(error).toBeInstanceOf(DuoTokenizerError);
    expect((error as Error).message).toMatch(/id 2147483653, not an integer in \[0, \d+\)/);
    expect(milliseconds).toBeLessThan(1000);
  });

  it('decoding no tokens is the empty text, and library errors come back as tokenizer errors', () => {
    const tokenizer = new HfTokenizer(demo);
    expect(tokenizer.decode([])).toBe('');
    expect(() => tokenizer.decode([1.5])).toThrow(DuoTokenizerError);
  });

  it('a BPE vocab that is a list (whose values would be ids up to 2^31) is refused', async () => {
    const directory = demoCopy('tokenizer-vocab-list', (d) => {
      const file = join(d, 'tokenizer.json');
      const json = JSON.parse(readFileSync(file, 'utf8')) as { model: { vocab: unknown } };
      json.model.vocab = [197372, 813919, 2147528991];
      writeFileSync(file, JSON.stringify(json));
    });
    await expectRefused(directory, [/model\.vocab.*an object of piece → id/], DuoTokenizerError);
  });
});

describe('tokenizer.json regular expressions', () => {
  it('a Split pattern with a repeated group that repeats is refused (it took 60 s on a 30-character prompt)', async () => {
    const directory = demoCopy('tokenizer-redos', (d) => {
      const file = join(d, 'tokenizer.json');
      const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      json.pre_tokenizer = { type: 'Split', pattern: { Regex: '(a+)+$' }, behavior: 'Isolated', invert: false };
      writeFileSync(file, JSON.stringify(json));
    });
    await expectRefused(directory, [/\(a\+\)\+\$.*exponential/], DuoTokenizerError);
  });

  it.each([
    ["'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", false],
    [
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      false,
    ],
    ['(ab)+', false],
    ['\\(a+\\)+', false],
    ['[(+]+(x)', false],
    ['\\p{', false],
    ['(a+)+$', true],
    ['(?:\\s*x)*', true],
    ['((ab)*c)+', true],
    ['(\\p{L}+)*', true],
    ['(a{1,5}){2,}', true],
  ])('hasNestedQuantifier(%j) is %s', (pattern, nested) => {
    expect(hasNestedQuantifier(pattern)).toBe(nested);
  });
});
