// The CPU side by side with llama.cpp (issue 21): one GGUF file, the same thread count, our CPU backend and
// node-llama-cpp's CPU build measured in turns (the order flipped each repeat), median of the repeats.
//
//   node tools/cpu-peer.mjs NODE_LLAMA_CPP_DIR FILE.gguf [--contexts 512,4096] [--steps 16] [--repeats 3]
//                           [--threads N] [--integer-q8] [--cache-dtype f16|f32] [--out FILE.json]
//
// --integer-q8: our Q8_0 products over x rounded to int8 pieces (BackendTuning.cpuIntegerQ8, what llama.cpp's CPU
// build does with Q8_0); without it, exact x.
// --cache-dtype: the KV cache's element type in both engines (default f16, llama.cpp's own default; our CPU sessions
// keep f32 unless asked, which reads twice the cache bytes per decoded token).
// NODE_LLAMA_CPP_DIR: a directory where `npm i node-llama-cpp` ran (its CPU prebuilt comes from the npm registry).
// Each repeat and context: prefill the context's tokens from an empty cache (a fresh llama.cpp context each time, so
// nothing is reused from an earlier prompt), then decode `steps` greedy tokens after 2 warm-up tokens; prefill in
// tokens/s, decode in ms/token (median over the steps). Needs the packages built (pnpm build).
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { currentCommit, decodeLatency } from '../packages/app-kit/dist/index.js';
import { resolveBackend } from '../packages/kernels/dist/index.js';
import { LlamaModel } from '../packages/model/dist/index.js';

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    contexts: { type: 'string', default: '512,4096' },
    steps: { type: 'string', default: '16' },
    repeats: { type: 'string', default: '3' },
    threads: { type: 'string' },
    'integer-q8': { type: 'boolean', default: false },
    'cache-dtype': { type: 'string', default: 'f16' },
    out: { type: 'string' },
  },
});
const [peerDirectory, file] = positionals;
if (!peerDirectory || !file) {
  console.error(
    'usage: node tools/cpu-peer.mjs NODE_LLAMA_CPP_DIR FILE.gguf [--contexts 512,4096] [--steps 16] [--repeats 3]',
  );
  process.exit(2);
}
const positive = (name, text) => {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`--${name}: expected a positive integer but received ${text}`);
    process.exit(2);
  }
  return value;
};
const contexts = options.contexts.split(',').map((text) => positive('contexts', text));
const steps = positive('steps', options.steps);
const repeats = positive('repeats', options.repeats);
const threads = options.threads ? positive('threads', options.threads) : availableParallelism();
const warmup = 2;
const cacheDtype = options['cache-dtype'];
if (cacheDtype !== 'f16' && cacheDtype !== 'f32') {
  console.error(`--cache-dtype: expected f16 or f32 but received ${cacheDtype}`);
  process.exit(2);
}

const require = createRequire(join(resolve(peerDirectory), 'package.json'));
let peerPackage;
try {
  peerPackage = await import(require.resolve('node-llama-cpp'));
} catch (error) {
  console.error(`no node-llama-cpp under ${peerDirectory} (run \`npm i node-llama-cpp\` there): ${error.message}`);
  process.exit(2);
}
const { getLlama, LlamaLogLevel } = peerPackage;
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const log = (text) => console.error(`[cpu-peer ${new Date().toISOString().slice(11, 19)}] ${text}`);
const tokensFor = (count, vocabulary) => Array.from({ length: count }, (_, i) => (i * 7919 + 13) % vocabulary);

log(`loading ${file} in both engines (${threads} threads, ${cacheDtype} KV cache)`);
const integerQ8 = options['integer-q8'];
const ours = await LlamaModel.load(file, { device: resolveBackend('cpu', { tuning: { cpuIntegerQ8: integerQ8 } }) });
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const peerModel = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
const vocabulary = ours.config.vocabSize;

/** Our CPU backend: prefill `context` tokens in one chunk, then greedy decode. */
async function measureOurs(context) {
  const session = ours.createSession({
    policy: { attention: 'full', prefillChunk: context },
    maxTokens: context + warmup + steps + 4,
    allowBeyondContext: true,
    cacheDtype,
  });
  try {
    const start = performance.now();
    await session.forward(Int32Array.from(tokensFor(context, vocabulary)), { logits: 'last' });
    const prefillSeconds = (performance.now() - start) / 1000;
    const timing = await decodeLatency(session, warmup, steps);
    return { prefillTokensPerSecond: context / prefillSeconds, decodeMsPerToken: timing.msPerToken };
  } finally {
    session.dispose();
  }
}

/** llama.cpp: a fresh context (nothing cached), the same tokens, then greedy decode. */
async function measurePeer(context) {
  const contextSize = Math.ceil((context + warmup + steps + 16) / 256) * 256;
  const kvType = cacheDtype.toUpperCase();
  const llamaContext = await peerModel.createContext({
    contextSize,
    sequences: 1,
    threads,
    flashAttention: true,
    experimentalKvCacheKeyType: kvType,
    experimentalKvCacheValueType: kvType,
  });
  try {
    const sequence = llamaContext.getSequence();
    const start = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens(tokensFor(context, vocabulary));
    const prefillSeconds = (performance.now() - start) / 1000;
    const generator = sequence.evaluate([13], { temperature: 0, yieldEogToken: true });
    const times = [];
    for (let step = 0; step < warmup + steps; step++) {
      const begin = performance.now();
      const outcome = await generator.next();
      if (outcome.done) throw new Error(`llama.cpp stopped generating at step ${step}`);
      if (step >= warmup) times.push(performance.now() - begin);
    }
    await generator.return();
    return { prefillTokensPerSecond: context / prefillSeconds, decodeMsPerToken: median(times) };
  } finally {
    await llamaContext.dispose();
  }
}

const rows = [];
for (const context of contexts) {
  const runs = { ours: [], llamacpp: [] };
  for (let repeat = 0; repeat < repeats; repeat++) {
    // Engines in turns, the order flipped each repeat (ours first, then llama.cpp first, …), so the machine's drift
    // within a repeat favours neither.
    if (repeat % 2 === 0) {
      runs.ours.push(await measureOurs(context));
      runs.llamacpp.push(await measurePeer(context));
    } else {
      runs.llamacpp.push(await measurePeer(context));
      runs.ours.push(await measureOurs(context));
    }
    const [a, b] = [runs.ours.at(-1), runs.llamacpp.at(-1)];
    log(
      `@${context} repeat ${repeat + 1}/${repeats}: ours ${a.decodeMsPerToken.toFixed(2)} ms/token, ${a.prefillTokensPerSecond.toFixed(0)} tok/s prefill; llama.cpp ${b.decodeMsPerToken.toFixed(2)} ms/token, ${b.prefillTokensPerSecond.toFixed(0)} tok/s`,
    );
  }
  const summary = (list) => ({
    decodeMsPerToken: median(list.map((run) => run.decodeMsPerToken)),
    prefillTokensPerSecond: median(list.map((run) => run.prefillTokensPerSecond)),
    runs: list,
  });
  rows.push({ context, ours: summary(runs.ours), llamacpp: summary(runs.llamacpp) });
}

const result = {
  file,
  weights: ours.weightDtype,
  cpuIntegerQ8: integerQ8,
  cacheDtype,
  threads,
  cpu: cpus()[0]?.model ?? 'unknown',
  commit: currentCommit(),
  peer: 'llama.cpp via node-llama-cpp (CPU prebuilt, flash attention)',
  steps,
  warmup,
  repeats,
  rows,
};
console.log('context  decode ms/token (ours / llama.cpp)  prefill tok/s (ours / llama.cpp)');
for (const row of rows) {
  console.log(
    `${String(row.context).padStart(7)}  ${row.ours.decodeMsPerToken.toFixed(2).padStart(8)} / ${row.llamacpp.decodeMsPerToken.toFixed(2).padEnd(20)}  ${row.ours.prefillTokensPerSecond.toFixed(0).padStart(6)} / ${row.llamacpp.prefillTokensPerSecond.toFixed(0)}`,
  );
}
if (options.out) writeFileSync(options.out, `${JSON.stringify(result, null, 2)}\n`);
await peerModel.dispose();
await ours.dispose?.();
