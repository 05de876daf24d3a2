// The CPU side by side with llama.cpp (issue 21): one GGUF file, the same thread count, our CPU backend and
// node-llama-cpp's CPU build measured in turns, median of the repeats.
//
//   node tools/cpu-peer.mjs NODE_LLAMA_CPP_DIR FILE.gguf [--contexts 512,4096] [--steps 16] [--burst 4]
//                           [--repeats 3] [--prefills 1] [--threads N] [--exact-q8] [--cache-dtype f16|f32]
//                           [--out FILE.json]
//
// --exact-q8: our Q8_0 products over exact f32 x (BackendTuning.cpuIntegerQ8 false); by default x is rounded to int8
// pieces, as llama.cpp's CPU build does with Q8_0 (ADR 0012).
// --cache-dtype: the KV cache's element type in both engines (default f16, llama.cpp's own default; our CPU sessions
// keep f32 unless asked, which reads twice the cache bytes per decoded token).
// NODE_LLAMA_CPP_DIR: a directory where `npm i node-llama-cpp` ran (its CPU prebuilt comes from the npm registry).
// Each repeat and context: both engines prefill the context's tokens from an empty cache (a fresh llama.cpp context
// each time, so nothing is reused from an earlier prompt; the order flips each repeat), then, after 2 warm-up tokens
// each, decode `steps` greedy tokens in alternating bursts of `burst` (each burst after one untimed step); prefill in
// tokens/s, decode in ms/token (median over the steps). --prefills N: N timed prefills per engine and repeat,
// alternating between the engines, their median kept (small models prefill in tens of ms, where one run is noise).
// Needs the packages built (pnpm build).
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { currentCommit } from '../packages/app-kit/dist/index.js';
import { resolveBackend } from '../packages/kernels/dist/index.js';
import { LlamaModel } from '../packages/model/dist/index.js';

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    contexts: { type: 'string', default: '512,4096' },
    steps: { type: 'string', default: '16' },
    burst: { type: 'string', default: '4' },
    repeats: { type: 'string', default: '3' },
    prefills: { type: 'string', default: '1' },
    threads: { type: 'string' },
    'exact-q8': { type: 'boolean', default: false },
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
const burst = positive('burst', options.burst);
const repeats = positive('repeats', options.repeats);
const prefills = positive('prefills', options.prefills);
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
const integerQ8 = !options['exact-q8'];
const ours = await LlamaModel.load(file, { device: resolveBackend('cpu', { tuning: { cpuIntegerQ8: integerQ8 } }) });
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const peerModel = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
const vocabulary = ours.config.vocabSize;

/** Our CPU backend: a session that prefills the context in one chunk, then decodes one greedy token a step. */
async function openOurs(context, room) {
  const session = ours.createSession({
    policy: { attention: 'full', prefillChunk: context },
    maxTokens: context + room,
    allowBeyondContext: true,
    cacheDtype,
  });
  let token = 13;
  return {
    prefill: (tokens) => session.forward(Int32Array.from(tokens), { logits: 'last' }),
    step: async () => {
      token = await session.greedyStep(token);
    },
    close: async () => session.dispose(),
  };
}

/** llama.cpp: a fresh context (nothing cached from an earlier prompt), then one greedy token a step. */
async function openPeer(context, room) {
  const contextSize = Math.ceil((context + room) / 256) * 256;
  const kvType = cacheDtype.toUpperCase();
  const llamaContext = await peerModel.createContext({
    contextSize,
    sequences: 1,
    threads,
    flashAttention: true,
    experimentalKvCacheKeyType: kvType,
    experimentalKvCacheValueType: kvType,
  });
  const sequence = llamaContext.getSequence();
  let generator;
  let produced = 0;
  return {
    prefill: async (tokens) => {
      await sequence.evaluateWithoutGeneratingNewTokens(tokens);
      generator = sequence.evaluate([13], { temperature: 0, yieldEogToken: true });
    },
    step: async () => {
      const outcome = await generator.next();
      if (outcome.done) throw new Error(`llama.cpp stopped generating after ${produced} tokens`);
      produced++;
    },
    close: async () => {
      await generator?.return();
      await llamaContext.dispose();
    },
  };
}

const openers = { ours: openOurs, llamacpp: openPeer };

/**
 * One repeat at one context: both engines prefill the same tokens (in `order`), then decode in alternating bursts —
 * one untimed step (caches warm again after the other engine ran) and `burst` timed steps each — so the machine's
 * drift, ±25 % over tens of seconds here, reaches both engines' steps alike.
 */
async function measurePair(context, order) {
  const bursts = Math.ceil(steps / burst);
  const room = warmup + bursts * (burst + 1) + 16;
  const engines = {};
  const result = {};
  try {
    // `prefills` timed prefills per engine, alternating (each from a fresh session or context, opened untimed); the
    // last one's session decodes.
    const rates = Object.fromEntries(order.map((name) => [name, []]));
    for (let pass = 0; pass < prefills; pass++) {
      for (const name of pass % 2 === 0 ? order : [...order].reverse()) {
        if (engines[name]) await engines[name].close();
        engines[name] = await openers[name](context, room);
        const start = performance.now();
        await engines[name].prefill(tokensFor(context, vocabulary));
        rates[name].push(context / ((performance.now() - start) / 1000));
      }
    }
    for (const name of order) result[name] = { prefillTokensPerSecond: median(rates[name]), times: [] };
    for (const name of order) for (let step = 0; step < warmup; step++) await engines[name].step();
    for (let round = 0; round < bursts; round++) {
      for (const name of round % 2 === 0 ? order : [...order].reverse()) {
        await engines[name].step();
        for (let step = 0; step < burst; step++) {
          const begin = performance.now();
          await engines[name].step();
          result[name].times.push(performance.now() - begin);
        }
      }
    }
  } finally {
    for (const name of Object.keys(engines)) await engines[name].close();
  }
  for (const name of order) {
    result[name].decodeMsPerToken = median(result[name].times);
    delete result[name].times;
  }
  return result;
}

const rows = [];
for (const context of contexts) {
  const runs = { ours: [], llamacpp: [] };
  for (let repeat = 0; repeat < repeats; repeat++) {
    // The prefill order flips each repeat (ours first, then llama.cpp first, …).
    const pair = await measurePair(context, repeat % 2 === 0 ? ['ours', 'llamacpp'] : ['llamacpp', 'ours']);
    runs.ours.push(pair.ours);
    runs.llamacpp.push(pair.llamacpp);
    const [a, b] = [pair.ours, pair.llamacpp];
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
  burst,
  warmup,
  repeats,
  prefills,
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
