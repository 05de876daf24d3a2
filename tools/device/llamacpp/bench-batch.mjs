#!/usr/bin/env node
// llama.cpp (through node-llama-cpp 3.x) decoding N sequences at once in one context: per-step time and aggregate
// tokens/s at each context length, beside one sequence of the same context (issue 16's continuous-batching peer).
//
//   node bench-batch.mjs --model M.gguf [--contexts 4096,32768] [--sequences 16] [--fallback-sequences 14,12,8]
//        [--steps 32] [--warmup 4] [--kv f16,q8_0] [--batch 2048] [--fill copy|prefill] [--gpu cuda|false]
//        [--threads N] [--seed 1] [--ignore-memory-checks false] [--log-level warn] [--debug false] [--out FILE]
//
// Run from a folder whose node_modules holds node-llama-cpp (tools/device/llamacpp/run.sh copies it next to the
// kit's). The model is loaded once (all layers on the GPU, flash attention). For each KV type and context C, one
// LlamaContext with `sequences: N` is created (node-llama-cpp gives each sequence C + margin cells of its own: llama.cpp
// runs with kv_unified = false, one KV stream per sequence), then:
//   fill     --fill copy (default): sequence 0 prefills C random token ids (timed); each other sequence gets a copy of
//            its KV (llama_memory_seq_cp between streams, which copies the whole stream on the device at the next
//            decode), so every sequence holds C real cells. --fill prefill: all N prefill C tokens (timed, N*C tokens).
//   decode   all N sequences step together: each step calls next() on every sequence's generator in the same tick,
//            so node-llama-cpp puts the N tokens into one batch (one llama_decode), then samples N tokens greedily.
//            The token fed back is a fixed random id, not the sampled one (random weights; keeps all N in every
//            batch). --warmup steps first, then --steps timed ones.
//   batch 1  sequence 0 alone, same context object and KV length, --warmup then --steps steps.
// Step time is host wall clock per step (all N tokens back); decodeMs is the time of node-llama-cpp's decodeBatch
// alone (llama_decode + llama_synchronize); tokensPerSecond = N / median step time. Every measured step is checked to have been
// one decode of N tokens. Progress goes to stderr, the JSON to --out (and stdout).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const ENGINE = 'llama.cpp via node-llama-cpp 3.22.1';
const KV_TYPES = { f16: 'F16', q8_0: 'Q8_0', q4_0: 'Q4_0', bf16: 'BF16', f32: 'F32' };
const OPTION_DEFAULTS = {
  model: '',
  contexts: '4096,32768',
  sequences: '16',
  'fallback-sequences': '14,12,8',
  steps: '32',
  warmup: '4',
  kv: 'f16,q8_0',
  batch: '2048',
  fill: 'copy',
  gpu: 'cuda',
  threads: '',
  seed: '1',
  'ignore-memory-checks': 'false',
  'log-level': 'warn',
  debug: 'false',
  out: '',
};

/** A failure the user can act on: printed as one line, without a stack trace. */
class BenchError extends Error {}

const log = (...message) => console.error(`[bench-batch ${new Date().toISOString().slice(11, 19)}]`, ...message);

function parseArgs(argv) {
  const options = { ...OPTION_DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !(key in options)) throw new BenchError(`unknown option ${argv[i]}`);
    if (argv[i + 1] == null) throw new BenchError(`${argv[i]} needs a value`);
    options[key] = argv[++i];
  }
  if (!options.model) throw new BenchError('--model PATH is required');
  if (!fs.existsSync(options.model)) throw new BenchError(`no GGUF at --model ${options.model}`);
  if (!Object.values(LlamaLogLevel).includes(options['log-level'])) {
    throw new BenchError(
      `--log-level ${options['log-level']}: expected one of ${Object.values(LlamaLogLevel).join(', ')}`,
    );
  }
  if (!['copy', 'prefill'].includes(options.fill))
    throw new BenchError(`--fill ${options.fill}: expected copy or prefill`);
  return options;
}

function parseCount(text) {
  const match = /^(\d+(?:\.\d+)?)([kK]?)$/.exec(String(text).trim());
  if (!match) throw new BenchError(`bad count ${text}`);
  return Math.round(Number(match[1]) * (match[2] ? 1024 : 1));
}

const parseList = (text) =>
  String(text)
    .split(',')
    .filter((item) => item.trim() !== '')
    .map(parseCount);

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const position = (sorted.length - 1) * q,
    low = Math.floor(position),
    high = Math.ceil(position);
  return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
}

function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
  return {
    median: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p10: quantile(sorted, 0.1),
    mean,
    count: values.length,
  };
}

function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state += 0x6d2b79f5;
    let value = Math.imul(state ^ (state >>> 15), 1 | state);
    value ^= value + Math.imul(value ^ (value >>> 7), 61 | value);
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
  };
}

function gpuCardName(llamaGpuNames) {
  try {
    const name = execFileSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' })
      .split('\n')[0]
      .trim();
    if (name) return name;
  } catch {
    // no nvidia-smi: fall back to what llama.cpp reports
  }
  return llamaGpuNames[0] ?? 'cpu';
}

// getLlama says only "NoBinaryFoundError" when the CUDA binary cannot be used: load it by hand to log why.
async function diagnoseCuda() {
  const { createRequire } = await import('node:module');
  const path = await import('node:path');
  try {
    const { getBinsDir } = await import('@node-llama-cpp/linux-x64-cuda');
    const directory = path.join(getBinsDir().binsDir, 'linux-x64-cuda');
    log(`diagnosing ${directory}`);
    const addon = createRequire(import.meta.url)(path.join(directory, 'llama-addon.node'));
    addon.setLogger((level, message) => process.stderr.write(`[addon ${level}] ${message}`));
    addon.setLoggerLogLevel(6);
    addon.loadBackends(directory);
    log(`after loading ${directory}: GPU type ${addon.getGpuType()}`);
  } catch (error) {
    log(`diagnosis failed: ${error?.message ?? error}`);
  }
}

/**
 * Counts what node-llama-cpp hands to llama.cpp: tokens per batch (initBatch) and time inside llama_decode
 * (decodeBatch), so each measured step can be checked to be one decode of all its sequences. Wraps two methods of
 * the context's internal addon object (node-llama-cpp 3.22.1 `LlamaContext._ctx`).
 */
function instrumentDecodes(context) {
  const addonContext = context._ctx;
  if (typeof addonContext?.initBatch !== 'function' || typeof addonContext?.decodeBatch !== 'function') {
    throw new BenchError('node-llama-cpp internals changed: LlamaContext._ctx.initBatch/decodeBatch not found');
  }
  const record = { batches: [], decodeMs: [] };
  const initBatch = addonContext.initBatch.bind(addonContext);
  const decodeBatch = addonContext.decodeBatch.bind(addonContext);
  // the addon's methods are read-only on its prototype: shadow them with own properties
  const shadow = (name, value) =>
    Object.defineProperty(addonContext, name, { value, configurable: true, writable: true });
  shadow('initBatch', (size) => {
    record.batches.push(size);
    return initBatch(size);
  });
  shadow('decodeBatch', async (...rest) => {
    const start = performance.now();
    const result = await decodeBatch(...rest);
    record.decodeMs.push(performance.now() - start);
    return result;
  });
  return {
    take() {
      const taken = { batches: record.batches.splice(0), decodeMs: record.decodeMs.splice(0) };
      return taken;
    },
  };
}

/**
 * Steps the given sequences together: one generator per sequence, and each step calls next() on all of them in the
 * same tick, so node-llama-cpp dispatches their tokens as one batch (it dispatches at once when every sequence of the
 * context has queued, else on the next event-loop cycle). Returns the wall time of each step in ms.
 */
async function decodeTogether(generators, stepCount, randomToken) {
  const stepMs = [];
  for (let step = 0; step < stepCount; step++) {
    const start = performance.now();
    const outcomes = await Promise.all(generators.map((generator) => generator.next(randomToken())));
    stepMs.push(performance.now() - start);
    if (outcomes.some((outcome) => outcome.done)) throw new BenchError(`a sequence stopped generating at step ${step}`);
  }
  return stepMs;
}

function startGenerators(sequences, randomToken) {
  return sequences.map((sequence) => sequence.evaluate([randomToken()], { temperature: 0, yieldEogToken: true }));
}

async function stopGenerators(generators) {
  await Promise.all(generators.map((generator) => generator.return()));
}

/** Fills every sequence with `contextLength` cells; returns what was done and how long it took. */
async function fillSequences(sequences, contextLength, method, randomTokens) {
  const [first, ...others] = sequences;
  if (method === 'prefill') {
    const start = performance.now();
    await Promise.all(
      sequences.map((sequence) => sequence.evaluateWithoutGeneratingNewTokens(randomTokens(contextLength))),
    );
    const seconds = (performance.now() - start) / 1000;
    return { method, tokens: contextLength * sequences.length, seconds, sequencesPrefilled: sequences.length };
  }
  const start = performance.now();
  await first.evaluateWithoutGeneratingNewTokens(randomTokens(contextLength));
  const seconds = (performance.now() - start) / 1000;
  const copyStart = performance.now();
  for (const sequence of others) {
    // internal in 3.22.1 (used by LlamaDecisionContext): llama_memory_seq_cp of the whole sequence
    if (typeof sequence._copyStateFromOtherSequence !== 'function') {
      throw new BenchError(
        'node-llama-cpp internals changed: no LlamaContextSequence._copyStateFromOtherSequence; use --fill prefill',
      );
    }
    const copied = await sequence._copyStateFromOtherSequence(first, contextLength);
    if (!copied || sequence.nextTokenIndex !== contextLength) {
      throw new BenchError(
        `KV copy to sequence ${sequence.sequenceId} failed (next token index ${sequence.nextTokenIndex}); use --fill prefill`,
      );
    }
  }
  return {
    method,
    tokens: contextLength,
    seconds,
    sequencesPrefilled: 1,
    copy: {
      sequences: others.length,
      queueSeconds: (performance.now() - copyStart) / 1000,
      note: 'llama_memory_seq_cp between KV streams; the device copy of each stream runs inside the first warm-up decode',
    },
  };
}

function checkBatches(taken, sequenceCount, stepCount, label) {
  const sizes = [...new Set(taken.batches)];
  if (taken.batches.length !== stepCount || sizes.length !== 1 || sizes[0] !== sequenceCount) {
    throw new BenchError(
      `${label}: expected ${stepCount} decodes of ${sequenceCount} tokens, saw ${taken.batches.length} ` +
        `decodes of sizes ${sizes.join('/')} (batching did not group the sequences)`,
    );
  }
  return { decodesPerStep: taken.batches.length / stepCount, tokensPerDecode: sizes[0] };
}

function resultOf({ contextLength, sequenceCount, kvName, stepMs, taken, fill, check }) {
  const step = summary(stepMs);
  const decode = summary(taken.decodeMs);
  return {
    context: contextLength,
    sequences: sequenceCount,
    kvType: kvName,
    stepMs: { median: step.median, p90: step.p90, p10: step.p10, mean: step.mean },
    decodeMs: { median: decode.median, p90: decode.p90 },
    tokensPerSecond: (sequenceCount * 1000) / step.median,
    steps: stepMs.length,
    batchCheck: check,
    prefill: fill,
  };
}

/**
 * A context of `sequenceCount` sequences with room for `contextLength` cells each plus both decode phases; null (and
 * the reason logged) when node-llama-cpp or llama.cpp cannot make it, e.g. its KV does not fit in VRAM.
 */
async function createBatchContext({ model, options, kvName, contextLength, sequenceCount }) {
  const steps = parseCount(options.steps),
    warmup = parseCount(options.warmup);
  const contextSize = Math.ceil((contextLength + 2 * (steps + warmup) + 16) / 256) * 256;
  const startCreate = performance.now();
  try {
    const context = await model.createContext({
      contextSize,
      sequences: sequenceCount,
      batchSize: parseCount(options.batch),
      flashAttention: true,
      threads: options.threads ? Number(options.threads) : undefined,
      experimentalKvCacheKeyType: kvName,
      experimentalKvCacheValueType: kvName,
      failedCreationRemedy: false,
      ignoreMemorySafetyChecks: options['ignore-memory-checks'] === 'true',
    });
    log(
      `  context of ${sequenceCount} x ${context.contextSize} cells, KV ${kvName}, batch ${context.batchSize}, ` +
        `flash attention ${context.flashAttention}, created in ${((performance.now() - startCreate) / 1000).toFixed(1)} s`,
    );
    return { context };
  } catch (error) {
    const reason = String(error?.message ?? error).split('\n')[0];
    log(`  no context of ${sequenceCount} x ${contextSize} cells, KV ${kvName}: ${reason}`);
    return { reason };
  }
}

/** One KV type, one context length, one sequence count: fill, N-way decode, then batch 1 on the same context. */
async function measure({ model, context, options, kvName, contextLength, sequenceCount, random }) {
  const steps = parseCount(options.steps),
    warmup = parseCount(options.warmup);
  const vocabSize = ggufInfo(model, options.model).shape.vocab;
  const randomToken = () => 3 + Math.floor(random() * (vocabSize - 3)); // skip <unk> <s> </s>
  const randomTokens = (count) => Array.from({ length: count }, randomToken);
  try {
    const decodes = instrumentDecodes(context);
    const sequences = Array.from({ length: sequenceCount }, () => context.getSequence());
    const fill = await fillSequences(sequences, contextLength, options.fill, randomTokens);
    decodes.take();
    log(
      `  filled: ${fill.method === 'copy' ? `sequence 0 prefilled ${contextLength} tokens` : `${fill.tokens} tokens prefilled`} ` +
        `in ${fill.seconds.toFixed(2)} s (${(fill.tokens / fill.seconds).toFixed(0)} tok/s)` +
        (fill.copy ? `, KV copied to ${fill.copy.sequences} more` : ''),
    );

    const together = startGenerators(sequences, randomToken);
    const warmupMs = await decodeTogether(together, warmup, randomToken);
    // with --fill copy the device copy of the KV streams runs in the first decode: its time, beside the second's
    if (fill.copy)
      Object.assign(fill.copy, { firstDecodeStepMs: warmupMs[0], secondDecodeStepMs: warmupMs[1] ?? null });
    decodes.take();
    const kvStart = sequences[0].nextTokenIndex;
    const stepMs = await decodeTogether(together, steps, randomToken);
    const taken = decodes.take();
    const kvEnd = sequences[0].nextTokenIndex;
    await stopGenerators(together);
    const batched = resultOf({
      contextLength,
      sequenceCount,
      kvName,
      stepMs,
      taken,
      fill,
      check: checkBatches(taken, sequenceCount, steps, `${sequenceCount} sequences`),
    });
    Object.assign(batched, {
      kvLength: { start: kvStart, end: kvEnd },
      cellsPerSequence: context.contextSize,
      contextVramBytes: context.memoryUsage.vram,
    });
    log(
      `  ${sequenceCount} sequences: ${batched.stepMs.median.toFixed(2)} ms/step median (p90 ` +
        `${batched.stepMs.p90.toFixed(2)}, decode ${batched.decodeMs.median.toFixed(2)}), ${batched.tokensPerSecond.toFixed(0)} tok/s`,
    );

    const [first] = sequences;
    const alone = startGenerators([first], randomToken);
    await decodeTogether(alone, warmup, randomToken);
    decodes.take();
    const singleKvStart = first.nextTokenIndex;
    const singleMs = await decodeTogether(alone, steps, randomToken);
    const singleTaken = decodes.take();
    const singleKvEnd = first.nextTokenIndex;
    await stopGenerators(alone);
    const single = resultOf({
      contextLength,
      sequenceCount: 1,
      kvName,
      stepMs: singleMs,
      taken: singleTaken,
      fill: {
        method: 'shared',
        note: `sequence 0 of the ${sequenceCount}-sequence context above`,
        tokens: 0,
        seconds: 0,
      },
      check: checkBatches(singleTaken, 1, steps, 'batch 1'),
    });
    Object.assign(single, {
      kvLength: { start: singleKvStart, end: singleKvEnd },
      cellsPerSequence: context.contextSize,
      contextSequences: sequenceCount,
    });
    batched.speedupOverBatch1 = batched.tokensPerSecond / single.tokensPerSecond;
    log(
      `  batch 1: ${single.stepMs.median.toFixed(2)} ms/step median (p90 ${single.stepMs.p90.toFixed(2)}), ` +
        `${single.tokensPerSecond.toFixed(0)} tok/s; batched/single throughput ${batched.speedupOverBatch1.toFixed(2)}x`,
    );
    return [batched, single];
  } finally {
    await context.dispose();
  }
}

function ggufInfo(model, modelPath) {
  const metadata = model.fileInfo.metadata ?? {};
  const architecture = metadata.general?.architecture ?? 'llama';
  const block = metadata[architecture] ?? {};
  const fileTypes = { 0: 'F32', 1: 'F16', 7: 'Q8_0', 32: 'BF16' };
  return {
    path: modelPath,
    bytes: fs.statSync(modelPath).size,
    name: metadata.general?.name ?? null,
    type: fileTypes[metadata.general?.file_type] ?? `file_type ${metadata.general?.file_type}`,
    shape: {
      architecture,
      layers: block.block_count,
      dim: block.embedding_length,
      heads: block.attention?.head_count,
      kvHeads: block.attention?.head_count_kv,
      ffn: block.feed_forward_length,
      vocab: block.vocab_size ?? metadata.tokenizer?.ggml?.tokens?.length,
      ropeTheta: block.rope?.freq_base,
    },
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const contexts = parseList(options.contexts);
  const sequenceCounts = [
    parseCount(options.sequences),
    ...parseList(options['fallback-sequences']).filter((count) => count < parseCount(options.sequences)),
  ];
  const kvNames = options.kv.split(',').map((name) => {
    const kvName = KV_TYPES[name.trim().toLowerCase()];
    if (!kvName) throw new BenchError(`--kv ${name}: expected one of ${Object.keys(KV_TYPES).join(', ')}`);
    return kvName;
  });
  const gpu = options.gpu === 'false' ? false : options.gpu;
  const started = performance.now();

  let llama;
  try {
    llama = await getLlama({
      gpu,
      build: 'never',
      usePrebuiltBinaries: true,
      skipDownload: true,
      progressLogs: false,
      logLevel: options['log-level'],
    });
  } catch (error) {
    if (gpu === 'cuda') await diagnoseCuda();
    throw new BenchError(`node-llama-cpp could not load its ${gpu || 'cpu'} binary: ${error?.message ?? error}`);
  }
  if (gpu && llama.gpu !== gpu) throw new BenchError(`asked for gpu ${gpu}, node-llama-cpp got ${llama.gpu}`);
  const gpuNames = llama.gpu ? await llama.getGpuDeviceNames().catch(() => []) : [];
  log(
    `backend ${llama.gpu || 'cpu'} ${gpuNames.join(', ')} (${llama.buildType}, llama.cpp ${llama.llamaCppRelease.release})`,
  );

  const loadStart = performance.now();
  const model = await llama.loadModel({
    modelPath: options.model,
    gpuLayers: llama.gpu ? 'max' : 0,
    defaultContextFlashAttention: true,
  });
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const gguf = ggufInfo(model, options.model);
  const vram = llama.gpu ? await llama.getVramState().catch(() => null) : null;
  log(
    `model loaded in ${loadSeconds.toFixed(1)} s: ${model.gpuLayers} layers on the GPU, ${(gguf.bytes / 1e9).toFixed(2)} GB ${gguf.type}`,
  );

  const random = mulberry32(Number(options.seed));
  const results = [],
    skipped = [];
  for (const kvName of kvNames) {
    for (const contextLength of contexts) {
      for (const sequenceCount of sequenceCounts) {
        log(`KV ${kvName}, context ${contextLength}, ${sequenceCount} sequences`);
        const { context, reason } = await createBatchContext({ model, options, kvName, contextLength, sequenceCount });
        if (!context) {
          skipped.push({ context: contextLength, sequences: sequenceCount, kvType: kvName, reason });
          continue;
        }
        results.push(...(await measure({ model, context, options, kvName, contextLength, sequenceCount, random })));
        break;
      }
    }
  }

  const report = {
    card: gpuCardName(gpuNames),
    engine: ENGINE,
    nodeLlamaCpp: JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.resolve('node-llama-cpp')), 'utf8'))
      .version,
    llamaCppRelease: llama.llamaCppRelease,
    backend: llama.gpu || 'cpu',
    gguf,
    settings: {
      contexts,
      sequences: sequenceCounts[0],
      fallbackSequences: sequenceCounts.slice(1),
      steps: parseCount(options.steps),
      warmupSteps: parseCount(options.warmup),
      kvTypes: kvNames,
      batchSize: parseCount(options.batch),
      gpuLayers: model.gpuLayers,
      flashAttention: true,
      fill: options.fill,
      loadSeconds,
      vramAfterLoad: vram ? { totalBytes: vram.total, usedBytes: vram.used } : null,
      kvLayout:
        'node-llama-cpp 3.22.1 runs llama.cpp with kv_unified = false: one KV stream of contextSize cells per sequence',
      sampling: 'greedy (temperature 0) on each sequence every step; the token fed back is a fixed random id',
      timing:
        'stepMs: host wall clock per step until all sequences have their token; decodeMs: node-llama-cpp decodeBatch alone (llama_decode + llama_synchronize); tokensPerSecond = sequences / median stepMs',
      host: {
        cpu: os.cpus()[0]?.model,
        cores: os.cpus().length,
        node: process.version,
      },
    },
    results,
    skipped,
    date: new Date().toISOString(),
    totalSeconds: (performance.now() - started) / 1000,
  };
  const json = JSON.stringify(report, null, 2);
  if (options.out) fs.writeFileSync(options.out, json + '\n');
  console.log(json);
  await model.dispose();
  await llama.dispose();
  if (results.length === 0)
    throw new BenchError(`no configuration ran (${skipped.map((entry) => entry.reason).join('; ')})`);
}

main().catch((error) => {
  // one line for the caller; the stack only when asked for
  console.error(
    `bench-batch: ${error instanceof BenchError ? '' : 'unexpected error: '}${String(error?.message ?? error).split('\n')[0]}`,
  );
  if (process.argv[process.argv.indexOf('--debug') + 1] === 'true') console.error(error);
  process.exit(2);
});
