// duo-bench gguf: a random-weight GGUF file of a named shape in a given type — one file both engines load, for the
// peer comparisons (llama.cpp through node-llama-cpp, and duoattn).
import { statSync } from 'node:fs';
import {
  choiceOption,
  integerOption,
  namedShape,
  numberOption,
  outputOption,
  parseOptions,
  UsageError,
} from '@duoattn/app-kit';
import { type GgufTensorType, openCheckpoint, writeRandomGguf } from '@duoattn/model';
import { loadingProgress } from '../progress.js';
import { SHAPES } from '../shapes.js';

const TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_k', 'q5_k', 'q6_k'] as const;

export const ggufHelp = `duo-bench gguf (--shape NAME | --model PATH) --out FILE.gguf [--type f16|bf16|f32|q8_0|q4_k|q5_k|q6_k]
               [--layers N] [--seed N] [--std S (≤ 1000)]
  Writes a llama model of a named shape (or of --model's shape, e.g. the demo model) with random weights as GGUF
  (v3): matrices in --type (default f16; where a block format cannot split a matrix's rows, ours falls back to Q8_0,
  else F16 — llama.cpp's quantizer would pick Q5_0 / Q5_1, which we do not read yet), norms of 1 in F32, a
  SentencePiece-style filler vocabulary of the shape's size. --layers keeps the first N layers (e.g. one
  Llama-3-8B-width layer). Values ~ N(0, --std, default 0.02), windows into one pool encoded once, so an 8B file
  takes disk time, not encoding time; --seed picks the values (default 1). Shapes: ${Object.keys(SHAPES).join(', ')}.`;

export async function ggufCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    shape: { type: 'string' },
    model: { type: 'string' },
    out: { type: 'string' },
    type: { type: 'string' },
    layers: { type: 'string' },
    seed: { type: 'string' },
    std: { type: 'string' },
  });
  if ((options.shape === undefined) === (options.model === undefined)) {
    const received =
      options.shape === undefined
        ? 'neither'
        : `--shape "${String(options.shape)}" and --model "${String(options.model)}"`;
    const expected = 'exactly one of --shape NAME and --model PATH';
    throw new UsageError(`--shape / --model: expected ${expected} but received ${received}`, {
      option: 'shape',
      received,
      expected,
    });
  }
  if (options.out === undefined) {
    const expected = 'the .gguf file to write';
    throw new UsageError(`--out: expected ${expected} but received none`, { option: 'out', expected });
  }
  const out = outputOption('out', options.out) as string;
  const label = String(options.shape ?? options.model);
  const base = options.shape !== undefined ? namedShape(label) : await shapeOf(label);
  const type = choiceOption('type', options.type, TYPES, 'f16');
  const config = { ...base, numLayers: integerOption('layers', options.layers, base.numLayers, 1, base.numLayers) };
  const seed = integerOption('seed', options.seed, 1, 0, 2 ** 32 - 1);
  // Values past ~4 · 10⁶ would overflow the block formats' f16 scales; 5 σ of 1000 stays far below.
  const std = numberOption('std', options.std, 0.02, 0, 1000);
  const started = performance.now();
  try {
    writeRandomGguf(out, config, {
      type: type.toUpperCase() as GgufTensorType,
      seed,
      std,
      onTensor: loadingProgress(`writing ${out}`),
    });
  } catch (error) {
    // A shape the writer cannot express (biases, RoPE scaling): the checkpoint's, so --model's.
    if (!(error instanceof RangeError)) throw error;
    const expected = 'a llama shape without q/k/v biases or RoPE scaling';
    throw new UsageError(
      `--model: ${error.message.replace(/^writeRandomGguf: /, '')}; expected ${expected}`,
      {
        option: 'model',
        received: label,
        expected,
      },
      { cause: error },
    );
  }
  const bytes = statSync(out).size;
  const seconds = (performance.now() - started) / 1000;
  log(
    `wrote ${out}: ${label}, ${config.numLayers} layers, ${type}, ${(bytes / 1e9).toFixed(3)} GB in ${seconds.toFixed(1)} s`,
  );
  return { file: out, shape: label, layers: config.numLayers, type, seed, std, bytes, seconds };
}

/** The config of the checkpoint at `path`, as a usage error naming --model when it cannot be read. */
async function shapeOf(path: string) {
  try {
    return (await openCheckpoint(path)).config;
  } catch (error) {
    throw new UsageError(
      `--model: ${(error as Error).message}`,
      { option: 'model', received: path, expected: 'a checkpoint (HF directory, .gguf or llama2.c .bin)' },
      { cause: error },
    );
  }
}
