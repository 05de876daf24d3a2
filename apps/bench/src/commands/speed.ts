// duo-bench speed: prefill tokens/s and decode ms/token of the engine, on a named shape (random weights made on the
// device) or a real model, with the bytes-moved floor of each decode figure.
import { writeFileSync } from 'node:fs';
import { resolveBackend } from '@duoattn/kernels';
import { LlamaModel } from '@duoattn/model';
import { choiceOption, integerListOption, integerOption, numberOption, parseOptions, UsageError } from '../args.js';
import { loadingProgress } from '../progress.js';
import { median, quantile, writeResult } from '../results.js';
import { decodeBytesFloor, SHAPES } from '../shapes.js';

export const speedHelp = `duo-bench speed (--shape NAME | --model PATH) [--device auto|cpu|cuda] [--dtype bf16|f16|f32]
                [--prefill N] [--contexts 4k,32k] [--steps N] [--warmup N] [--bandwidth TBps] [--out FILE] [--profile]
  Prefill time for N tokens, then decode ms/token at each context (the cache filled with synthetic K/V
  so long contexts need no long prefill; the JSON says so). Shapes: ${Object.keys(SHAPES).join(', ')}.`;

export async function speedCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    shape: { type: 'string' },
    model: { type: 'string' },
    device: { type: 'string' },
    dtype: { type: 'string' },
    prefill: { type: 'string' },
    contexts: { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    bandwidth: { type: 'string' },
    out: { type: 'string' },
    profile: { type: 'boolean' },
  });
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  const dtype = choiceOption('dtype', options.dtype, ['bf16', 'f16', 'f32'] as const, 'bf16');
  const prefillTokens = integerOption('prefill', options.prefill, 4096, 0);
  const contexts = integerListOption('contexts', options.contexts, [4096, 32768]);
  const steps = integerOption('steps', options.steps, 64, 1);
  const warmup = integerOption('warmup', options.warmup, 8, 2);
  const bandwidthTBps = numberOption('bandwidth', options.bandwidth, 3.0, 0.001);
  const backend = resolveBackend(device);
  let model: LlamaModel;
  if (options.shape !== undefined) {
    const config = SHAPES[String(options.shape)];
    if (!config)
      throw new UsageError(
        `--shape: expected one of ${Object.keys(SHAPES).join(', ')} but received "${String(options.shape)}"`,
      );
    model = LlamaModel.random(config, { device: backend, dtype, seed: 1 });
  } else if (options.model !== undefined) {
    model = await LlamaModel.load(String(options.model), {
      device: backend,
      onProgress: loadingProgress(String(options.model)),
    });
  } else {
    throw new UsageError('speed needs --shape NAME or --model PATH');
  }
  const config = model.config;
  const weightBytes = model.weights.lmHead.dtype === 'f32' ? 4 : 2;
  const capacity = Math.max(prefillTokens, ...contexts) + warmup + steps + 2;
  const session = model.createSession({ maxTokens: capacity, prefillChunk: Math.max(prefillTokens, 1) });
  const cacheBytes = session.cacheDtype === 'f32' ? 4 : 2;
  const tokens = Int32Array.from({ length: prefillTokens }, (_, i) => (i * 7919 + 13) % config.vocabSize);
  try {
    let prefill: object | undefined;
    if (prefillTokens > 0) {
      const times: number[] = [];
      for (let run = 0; run < 3; run++) {
        session.reset();
        await backend.synchronize();
        const start = performance.now();
        await session.forward(tokens, { logits: 'last' });
        times.push((performance.now() - start) / 1000);
      }
      const seconds = median(times.slice(1));
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
      // Per-token latency in the steady state: the time between consecutive tokens of one greedy run (on CUDA a
      // replayed graph with one step in flight, as generate() runs).
      const times: number[] = [];
      let last = performance.now();
      let count = 0;
      for await (const _token of session.greedyTokens(1, warmup + steps)) {
        const now = performance.now();
        if (count >= warmup) times.push(now - last);
        last = now;
        count++;
      }
      const ms = median(times);
      const profile = options.profile ? backend.takeProfile() : [];
      for (const entry of profile.sort((a, b) => b.milliseconds - a.milliseconds)) {
        log(
          `  ${entry.name.padEnd(18)} ${(entry.milliseconds / steps).toFixed(3)} ms/token over ${entry.count / steps} launches`,
        );
      }
      const floorBytes = decodeBytesFloor(config, weightBytes, context + warmup + steps / 2, cacheBytes);
      const floorMs = (floorBytes / (bandwidthTBps * 1e12)) * 1000;
      decode.push({
        context,
        msPerToken: ms,
        profile,
        p10: quantile(times, 0.1),
        p90: quantile(times, 0.9),
        floorMs,
        ratioToFloor: ms / floorMs,
      });
      log(
        `decode @${context}: ${ms.toFixed(3)} ms/token (floor ${floorMs.toFixed(3)} ms, ${(ms / floorMs).toFixed(2)}×)`,
      );
    }
    const settings = {
      model: model.source === 'random' ? `${String(options.shape)} (random weights made on the device)` : model.source,
      device: backend.device,
      weightDtype: model.weights.lmHead.dtype,
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
    if (process.env.DUO_PRINT_JSON) writeFileSync(1, `${JSON.stringify(document)}\n`);
    return document;
  } finally {
    session.dispose();
    model.dispose();
  }
}
