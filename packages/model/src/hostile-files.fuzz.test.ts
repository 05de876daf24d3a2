// The fuzz suite of issue 15: seeded mutations of real headers of every format (safetensors, model-directory JSON, GGUF,
// llama2.c and its tokenizer, tokenizer.json, head patterns). Every input must end in a typed error or a correct load:
// never another exception, never a case that runs past its time, never weights larger than the file.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createContext, Script } from 'node:vm';
import { DuoError, type HeadPattern } from '@duoattn/core';
import { GATE_TOLERANCE, loadPattern, patternFromJson } from '@duoattn/dual-cache';
import { resolveBackend } from '@duoattn/kernels';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  GGUF_VALUE,
  ggufTensors,
  ggufVocabularyMetadata,
  llama2cHeaderBytes,
  llama2cWeightBytes,
  randomWeights,
  readSafetensorsParts,
  tinyConfig,
  tinyLlama2cHeader,
  writeGguf,
  writeLlama2cTokenizer,
  writeSafetensorsParts,
  writeSparseFile,
} from './__fixtures__/checkpoints.js';
import { demoModelDirectory } from './__fixtures__/demo-suite.js';
import { byteMutations, HOSTILE_INTEGERS, jsonMutations, mutateBytes, mutateJson } from './__fixtures__/mutations.js';
import { sharedPath } from './__fixtures__/shared.js';
import type { Checkpoint } from './loaders/checkpoint.js';
import { walkGgufHeader } from './loaders/gguf-header.js';
import { LLAMA2C_HEADER_FIELDS } from './loaders/llama2c.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';
import { withFile } from './loaders/validate.js';
import { HfTokenizer } from './tokenizers/hf-tokenizer.js';
import { loadLlama2cTokenizer } from './tokenizers/score-bpe.js';
import { disposeWeights, loadWeights } from './weights.js';

/** One seed for the whole suite: a failure prints the input and the seed path that reproduces it. */
const SEED = 20_15;
/** Inputs per property: 12 200 in all. */
const RUNS = {
  safetensorsJson: 2000,
  safetensorsBytes: 1000,
  modelJson: 1000,
  ggufBytes: 1500,
  ggufMetadata: 1000,
  ggufStories: 400,
  llama2c: 1500,
  llama2cTokenizer: 600,
  tokenizerJson: 800,
  patternTsv: 1200,
  patternJson: 1200,
} as const;
/** A case past this is a hang: its synchronous part is stopped by a watchdog, and the whole case is timed. */
const CASE_LIMIT_MS = 2000;
/** Every how many accepted checkpoints the weights are loaded too (on the CPU backend). */
const LOAD_EVERY = 10;

const demo = demoModelDirectory();
const root = mkdtempSync(join(tmpdir(), 'duoattn-fuzz-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const tallies: string[] = [];
afterAll(() => console.log(`fuzz (seed ${SEED}):\n  ${tallies.join('\n  ')}`));

const watchdog = createContext({ run: (): unknown => undefined });
const callRun = new Script('run()');

/**
 * Runs `open` under the watchdog and returns its result, or undefined where it ended in a typed error; any other
 * exception, or a case past CASE_LIMIT_MS, fails the property (fast-check then shrinks and reports the input).
 */
async function outcome<T>(open: () => T | Promise<T>): Promise<T | undefined> {
  const started = performance.now();
  let result: T | undefined;
  try {
    watchdog.run = open;
    result = await (callRun.runInContext(watchdog, { timeout: CASE_LIMIT_MS }) as T | Promise<T>);
  } catch (error) {
    if (!DuoError.isInstance(error)) throw error;
  }
  const elapsed = performance.now() - started;
  if (elapsed > CASE_LIMIT_MS) throw new Error(`the case ran ${Math.round(elapsed)} ms (limit ${CASE_LIMIT_MS})`);
  return result;
}

/** Counts accepted and refused inputs of one property, loads a sample of the accepted checkpoints, and reports. */
class Tally {
  accepted = 0;
  refused = 0;
  loads = 0;
  readonly #started = performance.now();

  constructor(readonly name: string) {}

  count(result: unknown): void {
    if (result === undefined) this.refused++;
    else this.accepted++;
  }

  /**
   * Loads every LOAD_EVERY-th accepted checkpoint: a typed error, or weights within twice `fileBytes` (norms and biases
   * go to the device as f32, doubling 16-bit ones; these files hold no Q8_0); nothing is left allocated either way.
   */
  async sampleLoad(checkpoint: Checkpoint | undefined, fileBytes: number): Promise<void> {
    if (!checkpoint || this.accepted % LOAD_EVERY !== 1) return;
    const backend = resolveBackend('cpu');
    const before = backend.memory().allocatedBytes;
    const weights = await outcome(() => loadWeights(checkpoint, backend, 'auto'));
    if (weights) {
      this.loads++;
      expect(backend.memory().allocatedBytes - before).toBeLessThanOrEqual(2 * fileBytes);
      disposeWeights(weights);
    }
    expect(backend.memory().allocatedBytes).toBe(before);
  }

  done(runs: number): void {
    const seconds = ((performance.now() - this.#started) / 1000).toFixed(1);
    tallies.push(
      `${this.name}: ${runs} inputs, ${this.accepted} accepted, ${this.refused} refused, ${this.loads} loaded, ${seconds} s`,
    );
    expect(this.accepted + this.refused).toBe(runs);
  }
}

async function fuzz<T>(
  name: string,
  runs: number,
  input: fc.Arbitrary<T>,
  check: (value: T, tally: Tally) => Promise<void>,
) {
  const tally = new Tally(name);
  await fc.assert(
    fc.asyncProperty(input, (value) => check(value, tally)),
    { seed: SEED, numRuns: runs, endOnFailure: true },
  );
  tally.done(runs);
}

describe('HF model directories (models/duo-demo)', () => {
  const directory = join(root, 'hf');
  const SHARD = 'model-00001-of-00002.safetensors';
  const shard = join(directory, SHARD);
  const { header, data } = readSafetensorsParts(join(demo, SHARD));
  const baseHeader = JSON.parse(header);
  const prefixed = Buffer.concat([Buffer.alloc(8), Buffer.from(header)]);
  prefixed.writeBigUInt64LE(BigInt(header.length));
  let fileBytes = 0;

  beforeAll(() => {
    mkdirSync(directory);
    for (const file of ['config.json', 'model.safetensors.index.json', 'model-00002-of-00002.safetensors']) {
      copyFileSync(join(demo, file), join(directory, file));
    }
    // The data area is a sparse run of zeros: the headers are what is fuzzed; the loads read zeros.
    writeSafetensorsParts(shard, header, data.length);
    fileBytes = [shard, join(directory, 'model-00002-of-00002.safetensors')].reduce(
      (sum, file) => sum + statSync(file).size,
      0,
    );
  });

  // Each property starts from the unchanged shard, whatever the one before left.
  afterEach(() => writeSafetensorsParts(shard, header, data.length));

  it(`safetensors JSON header: ${RUNS.safetensorsJson} mutations (values, types, offsets, nulls, missing fields)`, async () => {
    await fuzz('safetensors header JSON', RUNS.safetensorsJson, jsonMutations, async (mutations, tally) => {
      writeSafetensorsParts(shard, JSON.stringify(mutateJson(baseHeader, mutations)), data.length);
      const checkpoint = await outcome(() => openCheckpoint(directory));
      tally.count(checkpoint);
      await tally.sampleLoad(checkpoint, fileBytes);
    });
  });

  it(`safetensors raw bytes: ${RUNS.safetensorsBytes} mutations of the 8-byte length and the header text`, async () => {
    const input = fc.record({
      mutations: byteMutations,
      length: fc.option(fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.integer({ min: -16, max: 16 })), {
        nil: undefined,
      }),
    });
    await fuzz('safetensors header bytes', RUNS.safetensorsBytes, input, async ({ mutations, length }, tally) => {
      const head = mutateBytes(prefixed, prefixed.length, mutations);
      if (typeof length === 'bigint' && head.length >= 8) head.writeBigUInt64LE(length, 0);
      if (typeof length === 'number' && head.length >= 8)
        head.writeBigUInt64LE(BigInt(Math.max(0, header.length + length)), 0);
      writeSparseFile(shard, head, head.length + data.length);
      const checkpoint = await outcome(() => openCheckpoint(directory));
      tally.count(checkpoint);
      await tally.sampleLoad(checkpoint, fileBytes);
    });
  });

  it(`config.json and the shard index: ${RUNS.modelJson} mutations (ranges, NaN, shard paths)`, async () => {
    const documents = ['config.json', 'model.safetensors.index.json'].map((file) => ({
      path: join(directory, file),
      text: readFileSync(join(demo, file), 'utf8'),
    }));
    const input = fc.record({ document: fc.nat({ max: documents.length - 1 }), mutations: jsonMutations });
    await fuzz('config.json and index', RUNS.modelJson, input, async ({ document, mutations }, tally) => {
      const { path, text } = documents[document] ?? { path: '', text: '' };
      writeFileSync(path, JSON.stringify(mutateJson(JSON.parse(text), mutations)));
      try {
        const checkpoint = await outcome(() => openCheckpoint(directory));
        tally.count(checkpoint);
        await tally.sampleLoad(checkpoint, fileBytes);
      } finally {
        writeFileSync(path, text);
      }
    });
  });
});

describe('GGUF', () => {
  const config = tinyConfig('llama', {
    hidden_size: 64,
    intermediate_size: 96,
    num_attention_heads: 8,
    vocab_size: 300,
  });
  const pieces = [
    '<unk>',
    '<s>',
    '</s>',
    ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`),
  ];
  while (pieces.length < config.vocab_size) pieces.push(`\u2581w${pieces.length}`);
  const tensors = ggufTensors(randomWeights(config, 900), 'F16');
  const vocabulary = ggufVocabularyMetadata(pieces);
  const fixture = join(root, 'fixture.gguf');
  const target = join(root, 'mutated.gguf');

  /** The header (bytes before the tensor data) of a GGUF file. */
  const headerOf = (path: string) => {
    const bytes = readFileSync(path);
    return { bytes, end: withFile(path, (fd, size) => walkGgufHeader(path, fd, size)) };
  };

  /** Rewrites `base`'s header with `mutations` (the data becomes a sparse run of zeros) and opens the result. */
  const mutatedHeader = async (
    base: { bytes: Buffer; end: number },
    mutations: Parameters<typeof mutateBytes>[2],
    tally: Tally,
  ) => {
    const head = mutateBytes(base.bytes.subarray(0, base.end), base.end, mutations);
    writeSparseFile(target, head, head.length + base.bytes.length - base.end);
    const checkpoint = await outcome(() => openCheckpoint(target));
    tally.count(checkpoint);
    await tally.sampleLoad(checkpoint, base.bytes.length);
  };

  it(`a small GGUF (F16 + vocabulary): ${RUNS.ggufBytes} mutations of its header bytes`, async () => {
    writeGguf(fixture, config, tensors, vocabulary);
    expect((await openCheckpoint(fixture)).tokenizer?.vocabSize).toBe(config.vocab_size);
    const base = headerOf(fixture);
    await fuzz('GGUF fixture header bytes', RUNS.ggufBytes, byteMutations, (mutations, tally) =>
      mutatedHeader(base, mutations, tally),
    );
  });

  it(`a small GGUF: ${RUNS.ggufMetadata} hostile metadata values and tensor offsets`, async () => {
    const keys = [
      'general.architecture',
      'general.alignment',
      'llama.context_length',
      'llama.embedding_length',
      'llama.feed_forward_length',
      'llama.block_count',
      'llama.attention.head_count',
      'llama.attention.head_count_kv',
      'llama.attention.key_length',
      'llama.attention.layer_norm_rms_epsilon',
      'llama.rope.freq_base',
      'llama.rope.scaling.type',
      'llama.rope.scaling.factor',
      'llama.vocab_size',
      ...Object.keys(vocabulary),
    ];
    const value = fc.record({
      key: fc.constantFrom(...keys),
      // Types 0–12 are GGUF's; 13 and 2^31 are not.
      type: fc.constantFrom(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 2 ** 31),
      number: fc.oneof(
        fc.constantFrom(...HOSTILE_INTEGERS.map(BigInt)),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n }),
      ),
      float: fc.double(),
      text: fc.oneof(fc.constantFrom('llama', 'linear', 'yarn', 'gpt2', ''), fc.string({ maxLength: 6 })),
      drop: fc.boolean(),
    });
    const input = fc.record({
      values: fc.array(value, { minLength: 1, maxLength: 3 }),
      offsets: fc.array(
        fc.record({
          tensor: fc.nat(),
          offset: fc.oneof(fc.constantFrom(...HOSTILE_INTEGERS.filter((n) => n >= 0 && n < 2 ** 53)), fc.nat()),
        }),
        { maxLength: 2 },
      ),
    });
    await fuzz('GGUF fixture metadata', RUNS.ggufMetadata, input, async ({ values, offsets }, tally) => {
      const overrides: Record<string, readonly [number, Buffer] | null> = { ...vocabulary };
      for (const { key, type, number, float, text, drop } of values) {
        overrides[key] = drop ? null : [type, ggufValue(type, number, float, text)];
      }
      const placed = tensors.map((tensor, i) => {
        const moved = offsets.find((entry) => entry.tensor % tensors.length === i);
        return moved ? { ...tensor, offset: moved.offset } : tensor;
      });
      writeGguf(target, config, placed, overrides);
      const checkpoint = await outcome(() => openCheckpoint(target));
      tally.count(checkpoint);
      await tally.sampleLoad(checkpoint, readFileSync(target).length);
    });
  });

  const stories = sharedPath('models', 'stories260K', 'stories260K.gguf');
  it.skipIf(!stories)(
    `stories260K.gguf${stories ? '' : ' (skipped: ../shared/models/stories260K/stories260K.gguf not found)'}: ${RUNS.ggufStories} mutations of its header bytes`,
    async () => {
      const base = headerOf(stories as string);
      await fuzz('GGUF stories260K header bytes', RUNS.ggufStories, byteMutations, (mutations, tally) =>
        mutatedHeader(base, mutations, tally),
      );
    },
  );
});

/** A GGUF value of `type` built from the fuzzer's number, float or text (arrays hold three of them). */
function ggufValue(type: number, number: bigint, float: number, text: string): Buffer {
  const sized = (bytes: number) => {
    const out = Buffer.alloc(bytes);
    const bits = BigInt.asUintN(bytes * 8, number);
    for (let i = 0; i < bytes; i++) out[i] = Number((bits >> BigInt(8 * i)) & 0xffn);
    return out;
  };
  switch (type) {
    case 6:
      return GGUF_VALUE.f32(float);
    case 12: {
      const out = Buffer.alloc(8);
      out.writeDoubleLE(float);
      return out;
    }
    case 8:
      return GGUF_VALUE.string(text);
    case 9:
      return GGUF_VALUE.array(4, [sized(4), sized(4), sized(4)]);
    default:
      return sized({ 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 7: 1, 10: 8, 11: 8 }[type] ?? 4);
  }
}

describe('llama2.c', () => {
  const stories = sharedPath('models', 'stories260K', 'stories260K.bin');
  const storiesTokenizer = sharedPath('models', 'stories260K', 'tok512.bin');
  const directory = join(root, 'llama2c');
  const checkpoint = join(directory, 'model.bin');
  const tokenizer = join(directory, 'tok512.bin');
  // stories260K's header when ../shared has it (a fixture of the same shape otherwise).
  const header = stories ? readFileSync(stories).subarray(0, 28) : llama2cHeaderBytes(tinyLlama2cHeader());
  const length = 28 + llama2cWeightBytes(tinyLlama2cHeader());

  beforeAll(() => {
    mkdirSync(directory);
    if (storiesTokenizer) copyFileSync(storiesTokenizer, tokenizer);
    else {
      const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
      const pieces = ['<unk>', '<s>', '</s>', ...bytes];
      while (pieces.length < 512) pieces.push(` w${pieces.length}`);
      writeLlama2cTokenizer(tokenizer, pieces);
    }
  });

  it(`header ints: ${RUNS.llama2c} mutations (hostile int32 per field, the file cut or extended)`, async () => {
    const int32 = fc.oneof(
      fc.constantFrom(0, 1, -1, 2, 3, 8, 64, 512, -512, 2 ** 31 - 1, -(2 ** 31), 2 ** 16, 2 ** 24),
      fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
    );
    const input = fc.record({
      fields: fc.array(fc.record({ field: fc.nat({ max: LLAMA2C_HEADER_FIELDS.length - 1 }), value: int32 }), {
        minLength: 1,
        maxLength: 3,
      }),
      resize: fc.option(fc.integer({ min: -4096, max: 4096 }), { nil: undefined }),
    });
    await fuzz('llama2.c header', RUNS.llama2c, input, async ({ fields, resize }, tally) => {
      const head = Buffer.from(header);
      for (const { field, value } of fields) head.writeInt32LE(value, field * 4);
      const bytes = Math.max(0, length + (resize ?? 0));
      writeSparseFile(checkpoint, head.subarray(0, Math.min(28, bytes)), bytes);
      const opened = await outcome(() => openCheckpoint(checkpoint));
      tally.count(opened);
      await tally.sampleLoad(opened, bytes);
    });
  });

  it(`tok512.bin: ${RUNS.llama2cTokenizer} mutations of its bytes, then encode and decode`, async () => {
    const base = readFileSync(tokenizer);
    const mutated = join(directory, 'mutated-tok.bin');
    await fuzz('llama2.c tokenizer', RUNS.llama2cTokenizer, byteMutations, async (mutations, tally) => {
      writeFileSync(mutated, mutateBytes(base, base.length, mutations));
      const loaded = await outcome(() => {
        const tokenizer = loadLlama2cTokenizer(mutated, 512);
        const ids = tokenizer.encode('Once upon a time, Lily saw 3 cats. ☃');
        tokenizer.decode(ids);
        return tokenizer;
      });
      tally.count(loaded);
    });
  });
});

describe('tokenizer.json (models/duo-demo)', () => {
  it(`${RUNS.tokenizerJson} JSON mutations, then encode, decode and stream`, async () => {
    const directory = join(root, 'tokenizer');
    mkdirSync(directory);
    copyFileSync(join(demo, 'tokenizer_config.json'), join(directory, 'tokenizer_config.json'));
    const base = JSON.parse(readFileSync(join(demo, 'tokenizer.json'), 'utf8'));
    await fuzz('tokenizer.json', RUNS.tokenizerJson, jsonMutations, async (mutations, tally) => {
      writeFileSync(join(directory, 'tokenizer.json'), JSON.stringify(mutateJson(base, mutations)));
      const tokenizer = await outcome(() => {
        const loaded = new HfTokenizer(directory);
        const ids = loaded.encode('Once upon a time, Lily saw 3 cats.\n☃');
        loaded.decode(ids);
        const stream = loaded.createStreamDecoder();
        for (const id of ids) stream.push(id);
        stream.flush();
        return loaded;
      });
      tally.count(tokenizer);
    });
  });
});

describe('head patterns (models/duo-demo/pattern)', () => {
  /** A loaded pattern is what the format promises: a rectangular table of gates near [0, 1], whole windows. */
  const expectSound = (pattern: HeadPattern | undefined) => {
    if (!pattern) return;
    const width = pattern.gates[0]?.length ?? 0;
    expect(width).toBeGreaterThan(0);
    for (const row of pattern.gates) {
      expect(row.length).toBe(width);
      for (const gate of row) expect(gate >= -GATE_TOLERANCE && gate <= 1 + GATE_TOLERANCE).toBe(true);
    }
    for (const window of [pattern.sink, pattern.recent]) expect(Number.isSafeInteger(window) && window >= 0).toBe(true);
  };

  it(`full_attention_heads.tsv + config.json: ${RUNS.patternTsv} mutations of fields, rows and the config`, async () => {
    const directory = join(root, 'pattern');
    mkdirSync(directory);
    const rows = readFileSync(join(demo, 'pattern', 'full_attention_heads.tsv'), 'utf8')
      .trimEnd()
      .split('\n');
    const config = JSON.parse(readFileSync(join(demo, 'pattern', 'config.json'), 'utf8'));
    const field = fc.oneof(
      fc.constantFrom(
        'nan',
        'NaN',
        'inf',
        '-inf',
        '1e309',
        '-0.5',
        '1.5',
        '1.004',
        '-0.011',
        '0x10',
        '',
        ' ',
        '1,0',
        '١',
        '1e-400',
        '-0',
      ),
      fc.double().map(String),
    );
    const edit = fc.record({
      kind: fc.constantFrom('field', 'field', 'drop-field', 'add-field', 'drop-row', 'copy-row', 'blank', 'crlf'),
      row: fc.nat(),
      column: fc.nat(),
      text: field,
    });
    const input = fc.record({
      edits: fc.array(edit, { minLength: 1, maxLength: 3 }),
      config: fc.option(jsonMutations, { nil: undefined }),
    });
    await fuzz('pattern TSV', RUNS.patternTsv, input, async ({ edits, config: configMutations }, tally) => {
      const table = rows.map((row) => row.split('\t'));
      for (const { kind, row, column, text } of edits) {
        const at = row % table.length;
        const cells = table[at] ?? [];
        const index = column % Math.max(1, cells.length);
        if (kind === 'field') cells[index] = text;
        if (kind === 'drop-field') cells.splice(index, 1);
        if (kind === 'add-field') cells.splice(index, 0, text);
        if (kind === 'drop-row' && table.length > 1) table.splice(at, 1);
        if (kind === 'copy-row') table.splice(at, 0, [...cells]);
        if (kind === 'blank') table.splice(at, 0, [text]);
        if (kind === 'crlf') cells[cells.length - 1] = `${cells[cells.length - 1] ?? ''}\r`;
      }
      writeFileSync(join(directory, 'full_attention_heads.tsv'), table.map((cells) => cells.join('\t')).join('\n'));
      writeFileSync(
        join(directory, 'config.json'),
        JSON.stringify(configMutations ? mutateJson(config, configMutations) : config),
      );
      const pattern = await outcome(() => loadPattern(directory));
      tally.count(pattern);
      expectSound(pattern);
    });
  });

  it(`pattern.json: ${RUNS.patternJson} JSON mutations`, async () => {
    const base = JSON.parse(readFileSync(join(demo, 'pattern', 'pattern.json'), 'utf8'));
    await fuzz('pattern JSON', RUNS.patternJson, jsonMutations, async (mutations, tally) => {
      const text = JSON.stringify(mutateJson(base, mutations));
      const pattern = await outcome(() => patternFromJson(text, 'pattern.json'));
      tally.count(pattern);
      expectSound(pattern);
    });
  });
});

it(`the suite runs at least 10 000 inputs (${Object.values(RUNS).reduce((a, b) => a + b, 0)})`, () => {
  expect(Object.values(RUNS).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(10_000);
});
