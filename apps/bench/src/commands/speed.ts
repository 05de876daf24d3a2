// duo-bench speed: prefill tokens/s and decode ms/token of the engine, on a named shape (random weights made on the
// device) or a real model, with the bytes-moved floor of each decode figure.
import { writeFileSync } from 'node:fs';
import {
  choiceOption,
  integerListOption,
  integerOption,
  numberOption,
  outputOption,
  parseOptions,
  UsageError,
  writeResult,
} from '@duoattn/app-kit';
import { bytesPerValue, dtypeBytes, readEnvironment } from '@duoattn/core';
import { benchmarkTokens, decodeLatency, prefillSeconds, TIMING_ONLY } from '../measure.js';
import { BENCHMARK_MODEL_OPTIONS, benchBackend, benchmarkModel } from '../model-options.js';
import { decodeBytesFloor, SHAPES } from '../shapes.js';

export const speedHelp = `duo-bench speed (--shape NAME | --model PATH) [--device auto|cpu|cuda] [--dtype bf16|f16|f32]
                [--prefill N] [--contexts 4k,32k] [--steps N] [--warmup N] [--bandwidth TBps] [--out FILE] [--profile]
  Prefill time for N tokens, then decode ms/token at each context (the cache filled with synthetic K/V
  so long contexts need no long prefill; the JSON says so). Shapes: ${Object.keys(SHAPES).join(', ')}.`;

export async function speedCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    ...BENCHMARK_MODEL_OPTIONS,
    prefill: { type: 'string' },
    contexts: { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    bandwidth: { type: 'string' },
    out: { type: 'string' },
    profile: { type: 'boolean' },
  });
  outputOption('out', options.out);
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  const dtype = choiceOption('dtype', options.dtype, ['bf16', 'f16', 'f32'] as const, 'bf16');
  const prefillTokens = integerOption('prefill', options.prefill, 4096, 0);
  const contexts = integerListOption('contexts', options.contexts, [4096, 32768]);
  const steps = integerOption('steps', options.steps, 64, 1);
  const warmup = integerOption('warmup', options.warmup, 8, 2);
  const bandwidthTBps = numberOption('bandwidth', options.bandwidth, 3.0, 0.001);
  const backend = benchBackend(device);
  if (options.shape === undefined && options.model === undefined)
    throw new UsageError('speed needs --shape NAME or --model PATH');
  const { model, label } = await benchmarkModel(options, backend, dtype);
  const config = model.config;
  const weightBytes = bytesPerValue(model.weightDtype);
  const capacity = Math.max(prefillTokens, ...contexts) + warmup + steps + 2;
  let session: ReturnType<typeof model.createSession> | undefined;
  try {
    // Full attention, the whole prompt in one prefill chunk.
    session = model.createSession({
      policy: { attention: 'full', prefillChunk: Math.max(prefillTokens, 1) },
      maxTokens: capacity,
      ...TIMING_ONLY,
    });
    const cacheBytes = dtypeBytes(session.cacheDtype);
    const tokens = benchmarkTokens(prefillTokens, config.vocabSize);
    let prefill: object | undefined;
    if (prefillTokens > 0) {
      const { seconds, runs: times } = await prefillSeconds(backend, session, tokens);
      if (options.profile) {
        for (const entry of backend.takeProfile().sort((a, b) => b.milliseconds - a.milliseconds)) {
          log(
            `  ${entry.name.padEnd(18)} ${(entry.milliseconds / 3).toFixed(2)} ms per prefill over ${entry.count / 3} launches`,
          );
        }
      }
      prefill = { tokens: prefillTokens, seconds, tokensPerSecond: prefillTokens / seconds, runs: times };
      log(`prefill ${prefillTokens} tokens: ${seconds.toFixed(3)} s, ${(prefillTokens / seconds).toFixed(0)} tok/s`);
    }
    const decode = [];
    for (const context of contexts) {
      session.syntheticFill(context, context);
      if (options.profile) backend.takeProfile();
      const timing = await decodeLatency(session, warmup, steps);
      const ms = timing.msPerToken;
      const profile = options.profile ? backend.takeProfile() : [];
      for (const entry of profile.sort((a, b) => b.milliseconds - a.milliseconds)) {
        log(
          `  ${entry.name.padEnd(18)} ${(entry.milliseconds / steps).toFixed(3)} ms/token over ${entry.count / steps} launches`,
        );
      }
      const floorBytes = decodeBytesFloor(
        config,
        weightBytes,
        context + warmup + steps / 2,
        config.headDim * cacheBytes,
      );
      const floorMs = (floorBytes / (bandwidthTBps * 1e12)) * 1000;
      decode.push({
        context,
        msPerToken: ms,
        profile,
        p10: timing.p10,
        p90: timing.p90,
        floorMs,
        ratioToFloor: ms / floorMs,
      });
      log(
        `decode @${context}: ${ms.toFixed(3)} ms/token (floor ${floorMs.toFixed(3)} ms, ${(ms / floorMs).toFixed(2)}×)`,
      );
    }
    const settings = {
      model: label,
      device: backend.device,
      weightDtype: model.weightDtype,
      cacheDtype: session.cacheDtype,
      prefillTokens,
      contexts,
      steps,
      warmup,
      bandwidthTBps,
      decodeCache: 'synthetic K/V written directly to reach each context',
      timing:
        'host wall clock between consecutive tokens of one greedy run (argmax on device; CUDA: replayed graph, one step in flight), median',
    };
    const figures = { prefill, decode };
    const out = options.out as string | undefined;
    if (out) return writeResult(out, backend.deviceName, settings, figures);
    const document = { card: backend.deviceName, settings, ...figures };
    if (readEnvironment().printJson) writeFileSync(1, `${JSON.stringify(document)}\n`);
    return document;
  } finally {
    session?.dispose();
    model.dispose();
  }
}
