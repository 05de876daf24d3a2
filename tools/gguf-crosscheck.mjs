// Checks our GGUF block formats against llama.cpp itself. For each format, one small random llama is written three
// times: its matrices in the format (our reference encoder); in F32 holding exactly what our reference decoder reads
// from those bytes; and in F32 holding the values before quantization. llama.cpp (node-llama-cpp's CPU build) gives
// the next-token distribution after each of several prompts from each file. If our bit layout is llama.cpp's, the
// quantized file and the file of our decoding are the same model up to llama.cpp quantizing activations for its
// quantized products, so llama.cpp's reading of the file is closer to our decoding than to the original values (which
// differ by the whole weight quantization error). A layout that differed would make them unrelated models (a total
// variation near 1). How much closer depends on the random model (Q8_0's own error is small, as is the activation
// noise): ratios of 0.2 and of 0.4 have both been seen for correct layouts, so the test is only "closer".
//   pnpm --filter @duoattn/core --filter @duoattn/model build && node tools/gguf-crosscheck.mjs DIR [STD]
// DIR: a directory whose node_modules holds node-llama-cpp (not a dependency of this repository: `npm i
// node-llama-cpp` anywhere); STD: the weights' standard deviation (default 0.3, so the distributions are not flat).

import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dequantizeWeights, randomNormal, SHAPES, seededUniform } from '../packages/core/dist/index.js';
import {
  encodeGgufTensor,
  fillerVocabulary,
  ggufVocabularyMetadata,
  llamaMetadata,
  writeGgufFile,
} from '../packages/model/dist/index.js';

const [peerDirectory, stdArgument] = process.argv.slice(2);
if (!peerDirectory) {
  console.error('usage: node tools/gguf-crosscheck.mjs DIR [STD]   (DIR: where node-llama-cpp is installed)');
  process.exit(2);
}
const require = createRequire(join(peerDirectory, 'noop.js'));
const { getLlama, LlamaLogLevel } = await import(require.resolve('node-llama-cpp'));

const config = {
  ...SHAPES['llama-3-8b'],
  vocabSize: 300,
  hiddenSize: 256,
  intermediateSize: 512,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  maxPositionEmbeddings: 512,
  bosTokenId: 1,
  eosTokenIds: [2],
};
const FORMATS = { Q8_0: 'q8_0', Q4_K: 'q4_k', Q5_K: 'q5_k', Q6_K: 'q6_k' };
const std = Number(stdArgument ?? 0.3);

const uniform = seededUniform(12345);
const normal = (count) => randomNormal(count, std, uniform);

/** The model's tensors: [name, shape, values or undefined for a norm of ones]. */
function modelTensors() {
  const { hiddenSize: h, headDim: d, numHeads, numKvHeads, intermediateSize: f, vocabSize: v } = config;
  const tensors = [['token_embd.weight', [v, h], normal(v * h)]];
  for (let layer = 0; layer < config.numLayers; layer++) {
    const blk = `blk.${layer}`;
    tensors.push(
      [`${blk}.attn_norm.weight`, [h]],
      [`${blk}.attn_q.weight`, [numHeads * d, h], normal(numHeads * d * h)],
      [`${blk}.attn_k.weight`, [numKvHeads * d, h], normal(numKvHeads * d * h)],
      [`${blk}.attn_v.weight`, [numKvHeads * d, h], normal(numKvHeads * d * h)],
      [`${blk}.attn_output.weight`, [h, numHeads * d], normal(h * numHeads * d)],
      [`${blk}.ffn_norm.weight`, [h]],
      [`${blk}.ffn_gate.weight`, [f, h], normal(f * h)],
      [`${blk}.ffn_up.weight`, [f, h], normal(f * h)],
      [`${blk}.ffn_down.weight`, [h, f], normal(h * f)],
    );
  }
  tensors.push(['output_norm.weight', [h]], ['output.weight', [v, h], normal(v * h)]);
  return tensors;
}

const directory = mkdtempSync(join(tmpdir(), 'duo-gguf-crosscheck-'));
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const metadata = [...llamaMetadata(config), ...ggufVocabularyMetadata(fillerVocabulary(config.vocabSize), true)];
const prompts = Array.from({ length: 8 }, (_, p) => [
  1,
  ...Array.from({ length: 12 }, (_, i) => 3 + ((p * 97 + i * 31) % 290)),
]);

/** The next-token distribution after each prompt, as dense arrays. */
async function distributions(path) {
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: 256, sequences: 1 });
  const sequence = context.getSequence();
  const out = [];
  for (const prompt of prompts) {
    await sequence.clearHistory();
    for await (const output of sequence.evaluateWithMetadata(prompt, { probabilities: true }, { temperature: 0 })) {
      const dense = new Float64Array(config.vocabSize);
      for (const [token, probability] of output.probabilities) dense[token] = probability;
      out.push(dense);
      break;
    }
  }
  await context.dispose();
  await model.dispose();
  return out;
}

/** Mean total-variation distance between two lists of distributions (1, the most, where one gave none). */
const distance = (a, b) =>
  prompts.reduce((sum, _, i) => {
    const [p, q] = [a[i], b[i]];
    return sum + (p && q ? 0.5 * p.reduce((s, v, t) => s + Math.abs(v - (q[t] ?? 0)), 0) : 1);
  }, 0) / prompts.length;

let failures = 0;
try {
  const tensors = modelTensors();
  for (const [type, format] of Object.entries(FORMATS)) {
    const quantized = [];
    const exact = [];
    for (const [name, shape, values] of tensors) {
      if (!values) {
        const ones = encodeGgufTensor('F32', new Float32Array(shape[0]).fill(1));
        quantized.push({ name, shape, type: 'F32', bytes: ones });
        exact.push({ name, shape, type: 'F32', bytes: ones });
        continue;
      }
      const bytes = encodeGgufTensor(type, values);
      quantized.push({ name, shape, type, bytes });
      exact.push({
        name,
        shape,
        type: 'F32',
        bytes: encodeGgufTensor('F32', dequantizeWeights(format, bytes, values.length)),
      });
    }
    const original = quantized.map((entry, i) => {
      const values = tensors[i][2];
      return values ? { ...entry, type: 'F32', bytes: encodeGgufTensor('F32', values) } : entry;
    });
    const paths = ['quantized', 'decoded', 'original'].map((kind) => join(directory, `${type}-${kind}.gguf`));
    writeGgufFile(paths[0], metadata, quantized);
    writeGgufFile(paths[1], metadata, exact);
    writeGgufFile(paths[2], metadata, original);
    const [q, decoded, before] = [
      await distributions(paths[0]),
      await distributions(paths[1]),
      await distributions(paths[2]),
    ];
    const toDecoded = distance(q, decoded);
    const toOriginal = distance(q, before);
    const ok = toDecoded < toOriginal;
    if (!ok) failures++;
    console.log(
      `${type}: total variation from the ${type} file's next-token distributions to our decoding's ${toDecoded.toFixed(4)}, ` +
        `to the unquantized weights' ${toOriginal.toFixed(4)} ${ok ? '(ok: the same model)' : '(LAYOUTS DIFFER)'}`,
    );
  }
} finally {
  rmSync(directory, { recursive: true, force: true });
}
console.log(
  failures === 0 ? 'crosscheck: every format reads as llama.cpp reads it' : `crosscheck: ${failures} format(s) differ`,
);
process.exit(failures === 0 ? 0 : 1);
