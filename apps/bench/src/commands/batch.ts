import {
  attentionPolicies,
  buildPolicy,
  choiceOption,
  duoPlanFor,
  type FigurePanel,
  figurePath,
  integerListOption,
  integerOption,
  kvQuantList,
  lineChart,
  median,
  numberOption,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  quantile,
  runLabel,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import { type AttentionPolicy, bytesPerValue, DuoCapacityError, type KvQuantScheme } from '@duoattn/core';
import { policyPlan } from '@duoattn/dual-cache';
import { kvPlanes, kvRowBytes } from '@duoattn/kv-quant';
import type { BatchStream, LlamaModel } from '@duoattn/model';
import { interruptionPoint } from '../interrupt.js';
import { benchmarkTokens } from '../measure.js';
import { BENCHMARK_MODEL_OPTIONS, benchBackend, benchmarkModel } from '../model-options.js';
import { readJsonOption } from '../read-json.js';
import { decodeBytesFloor, SHAPES } from '../shapes.js';

export const batchHelp = `duo-bench batch [--shape NAME | --model PATH] [--device auto|cpu|cuda] [--dtype bf16|f16|f32]
                [--attention full,duo] [--kv-quant none,int8,int4] [--batch 1,4,16,64] [--contexts 4k,32k]
                [--steps N] [--warmup N] [--bandwidth TBps] [--admit 128k|none] [--admit-batch N]
                [--admit-context N] [--admit-chunk N] [--run-ahead on|off] [--kv-budget GB] [--out FILE]
                [--plot FILE.svg|FILE.png] [--profile]
       duo-bench batch --from FILE --plot FILE.svg|FILE.png
  Continuous batching: for each policy, KV scheme, context and batch size, that many sequences decode together (their
  caches filled with synthetic K/V to the context; the JSON says so); reports the median step time, aggregate
  tokens/s and the step's bytes-moved floor (the weights once plus every sequence's KV, at --bandwidth TB/s).
  --admit LENGTH: then --admit-batch sequences decode at --admit-context while a prompt of LENGTH random tokens is
  admitted and prefilled in --admit-chunk chunks between their steps; reports their inter-token latency (median, p90,
  p99, max) before and during the prefill. --run-ahead off: the engine reads every step's tokens before it enqueues the
  next (default on: a decode step is enqueued while the previous one's tokens are read). --kv-budget: the page pool's
  size in GB (default the engine's: 85 % of free GPU memory), e.g. small enough for a profiler's kernel replay, which
  saves and restores device memory. --profile: device time per op and step (CUDA with DUO_CUDA_PROFILE=1; each
  op timed with events, so steps run slower than unprofiled ones), beside the step's wall time. Defaults: on CUDA batch 1,4,16,64 at 4k,32k; on the CPU (the demo model)
  batch 1,2,4,8,16 at 256,1k. Shapes: ${Object.keys(SHAPES).join(', ')}. Ctrl-C stops after the measurement in flight.
${POLICY_HELP}`;

interface Row {
  policy: string;
  kvQuant: KvQuantScheme;
  context: number;
  batch: number;
  [key: string]: unknown;
}

export async function batchCommand(argv: string[], log: (line: string) => void, signal?: AbortSignal): Promise<object> {
  const options = parseOptions(argv, {
    ...POLICY_OPTIONS,
    ...BENCHMARK_MODEL_OPTIONS,
    batch: { type: 'string' },
    contexts: { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    bandwidth: { type: 'string' },
    admit: { type: 'string' },
    'admit-batch': { type: 'string' },
    'admit-context': { type: 'string' },
    'admit-chunk': { type: 'string' },
    out: { type: 'string' },
    plot: { type: 'string' },
    from: { type: 'string' },
    profile: { type: 'boolean' },
    'run-ahead': { type: 'string' },
    'kv-budget': { type: 'string' },
  });
  if (options.plot !== undefined) outputOption('plot', figurePath('plot', String(options.plot)));
  outputOption('out', options.out);
  if (options.from !== undefined) return redraw(String(options.from), options.plot as string | undefined, log);
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  const dtype = choiceOption('dtype', options.dtype, ['bf16', 'f16', 'f32'] as const, 'bf16');
  const policies = attentionPolicies(options.attention, ['full', 'duo'], true);
  const quants = kvQuantList(options['kv-quant']);
  const steps = integerOption('steps', options.steps, 32, 2);
  const warmup = integerOption('warmup', options.warmup, 4, 1);
  const bandwidthTBps = numberOption('bandwidth', options.bandwidth, 3.0, 0.001);
  const runAhead = choiceOption('run-ahead', options['run-ahead'], ['on', 'off'] as const, 'on') === 'on';
  const kvBudgetBytes =
    options['kv-budget'] === undefined ? undefined : numberOption('kv-budget', options['kv-budget'], 0, 1e-6) * 1e9;
  // The floor is a GPU figure (HBM bandwidth); on the CPU it is reported only when --bandwidth is given.
  const withFloor = (backend: { device: string }) => backend.device === 'cuda' || options.bandwidth !== undefined;
  const settings = policySettings({ ...options, 'kv-quant': undefined }, policies);
  const backend = benchBackend(device);
  const gpu = backend.device === 'cuda';
  const batches = integerListOption('batch', options.batch, gpu ? [1, 4, 16, 64] : [1, 2, 4, 8, 16]);
  const contexts = integerListOption('contexts', options.contexts, gpu ? [4096, 32768] : [256, 1024]);
  const admit =
    options.admit === undefined || options.admit === 'none'
      ? 0
      : (integerListOption('admit', options.admit, [])[0] ?? 0);
  const admitBatch = integerOption('admit-batch', options['admit-batch'], 16, 1);
  const admitContext = integerOption('admit-context', options['admit-context'], contexts[0] ?? 4096, 1);
  const admitChunk = integerOption('admit-chunk', options['admit-chunk'], settings.prefillChunk ?? 512, 1);
  const { model, label } = await benchmarkModel(options, backend, dtype);
  try {
    const duo = duoPlanFor(policies, settings, model.config);
    const weightBytes = bytesPerValue(model.weightDtype);
    const kvDtype = model.defaultCacheDtype;
    const rows: Row[] = [];
    const runs = policies.flatMap((attention) => quants.map((kvQuant) => ({ attention, kvQuant })));
    const total = runs.length * contexts.length * batches.length;
    for (const { attention, kvQuant } of runs) {
      const policy = buildPolicy(attention, { ...settings, kvQuant }, model.config, duo);
      const plan = policyPlan(model.config, policy);
      const rowBytes = kvRowBytes(kvPlanes(model.config.headDim, kvDtype, kvQuant));
      const weightsOnly = decodeBytesFloor(model.config, weightBytes, 0, rowBytes);
      for (const context of contexts) {
        for (const batch of batches) {
          await interruptionPoint(signal, `batch ${batch} @${context}`);
          const run = runLabel(attention, kvQuant);
          if (process.stderr.isTTY) {
            process.stderr.write(
              `\r[duo-bench] batch ${rows.length + 1}/${total}: ${run} × ${batch} @${context}        `,
            );
          }
          const row: Row = { policy: attention, kvQuant, context, batch };
          // The floor: the weights once, and each sequence's keys and values at the middle of the measured steps.
          const middle = context + warmup + steps / 2;
          const kvPerSequence = decodeBytesFloor(model.config, weightBytes, middle, rowBytes, plan) - weightsOnly;
          row.floorBytes = weightsOnly + batch * kvPerSequence;
          if (withFloor(backend)) row.floorMs = ((row.floorBytes as number) / (bandwidthTBps * 1e12)) * 1000;
          if (options.profile) backend.takeProfile();
          Object.assign(
            row,
            await measureSteps(model, policy, context, batch, warmup, steps, { runAhead, kvBudgetBytes }),
          );
          if (options.profile && typeof row.stepMs === 'number') {
            // Device time per op over every step of the run (warm-up and the last token included).
            const total = warmup + steps + 1;
            const profile = backend.takeProfile().sort((a, b) => b.milliseconds - a.milliseconds);
            row.profile = profile.map((entry) => ({ ...entry, msPerStep: entry.milliseconds / total }));
            const device = profile.reduce((sum, entry) => sum + entry.milliseconds, 0) / total;
            log(`  device ${device.toFixed(3)} ms/step over ${profile.length} ops:`);
            for (const entry of profile.slice(0, 12)) {
              log(
                `  ${entry.name.padEnd(20)} ${(entry.milliseconds / total).toFixed(4)} ms/step over ${(entry.count / total).toFixed(1)} launches`,
              );
            }
          }
          if (typeof row.stepMs === 'number') {
            row.tokensPerSecond = (batch * 1000) / row.stepMs;
            const floor = typeof row.floorMs === 'number' ? row.floorMs : undefined;
            if (floor !== undefined) row.ratioToFloor = row.stepMs / floor;
            const versus =
              floor === undefined ? '' : ` (floor ${floor.toFixed(3)}, ${(row.stepMs / floor).toFixed(3)}×)`;
            log(
              `${run.padEnd(12)} batch ${String(batch).padStart(3)} @${context}: ${row.stepMs.toFixed(3)} ms/step${versus}, ${(row.tokensPerSecond as number).toFixed(1)} tokens/s, host ${(row.hostMs as number).toFixed(3)} ms/step`,
            );
          } else {
            log(`${run.padEnd(12)} batch ${String(batch).padStart(3)} @${context}: ${String(row.error)}`);
          }
          rows.push(row);
        }
      }
    }
    if (process.stderr.isTTY) process.stderr.write('\n');
    const speedups = batchSpeedups(rows);
    for (const line of speedups.lines) log(line);
    let latency: object | undefined;
    if (admit > 0) {
      await interruptionPoint(signal, `admitting a ${admit}-token prompt`);
      const attention = policies.includes('duo') ? 'duo' : (policies[0] ?? 'full');
      const policy = buildPolicy(attention, { ...settings, kvQuant: quants[0] ?? 'none' }, model.config, duo);
      latency = await admissionLatency(model, policy, admitBatch, admitContext, admit, admitChunk, log);
    }
    const runSettings = {
      model: label,
      device: backend.device,
      weightDtype: model.weightDtype,
      kvDtype,
      policies,
      kvQuant: quants,
      headPlan: duo ? { sparsity: duo.sparsity, sink: duo.sink, recent: duo.recent } : undefined,
      batches,
      contexts,
      steps,
      warmup,
      bandwidthTBps,
      admit: admit > 0 ? { length: admit, batch: admitBatch, context: admitContext, chunk: admitChunk } : undefined,
      decodeCache: 'synthetic K/V written directly to reach each context (quantized: random rows quantized into them)',
      runAhead,
      kvBudgetBytes: kvBudgetBytes ?? 'the engine’s default',
      timing:
        'step: host wall clock between consecutive tokens of the batch, median over --steps after --warmup; every measured step holds the whole batch; hostMs: the engine’s host-busy time per step (BatchEngineStats.hostMs), median over the same steps',
      floor:
        'weights once (without the embedding table) + every sequence’s K/V read at the middle of the measured steps',
    };
    const figures = { decode: rows, speedups: speedups.table, ...(latency ? { admission: latency } : {}) };
    // The record first: a figure that cannot be drawn must not lose the measurements.
    const record = options.out
      ? writeResult(String(options.out), backend.deviceName, runSettings, figures)
      : { card: backend.deviceName, settings: runSettings, ...figures };
    if (options.plot) {
      await writeFigure(String(options.plot), lineChart({ panels: panels(rows), legendTitle: 'policy @ context' }));
      log(`wrote ${String(options.plot)}`);
    }
    return record;
  } finally {
    model.dispose();
  }
}

/** Bytes in GB with three significant digits (a small pool reads 0.00332 GB, not 0.00 GB). */
function gigabytes(bytes: number): string {
  const value = bytes / 1e9;
  return `${value >= 100 ? value.toFixed(0) : value.toPrecision(3)} GB`;
}

/** `batch` sequences at `context` decoding together: the median step time over `steps` after `warmup`. */
async function measureSteps(
  model: LlamaModel,
  policy: AttentionPolicy,
  context: number,
  batch: number,
  warmup: number,
  steps: number,
  engineOptions: { runAhead: boolean; kvBudgetBytes: number | undefined },
): Promise<Record<string, unknown>> {
  const engine = model.createBatchEngine({
    maxSequences: batch,
    stepTokens: Math.max(batch, 64),
    allowBeyondContext: true,
    runAhead: engineOptions.runAhead,
    ...(engineOptions.kvBudgetBytes === undefined ? {} : { kvBudgetBytes: engineOptions.kvBudgetBytes }),
  });
  try {
    const request = { prompt: [1], policy, syntheticContext: context, maxTokens: warmup + steps + 1, stopTokens: [] };
    const pages = engine.pagesFor(request).most * batch;
    if (pages > engine.pool.totalPages) {
      return {
        error: `does not fit: ${batch} sequences need ${gigabytes(pages * engine.pool.pageBytes)} of KV, the pool holds ${gigabytes(engine.pool.totalPages * engine.pool.pageBytes)}`,
      };
    }
    const streams = Array.from({ length: batch }, () => engine.submit(request));
    const times: number[] = [];
    const rowsPerStep: number[] = [];
    const hostTimes: number[] = [];
    const first = streams[0] as BatchStream;
    const others = streams.slice(1).map(async (stream) => {
      for await (const _token of stream) {
        // drained: every stream must be consumed
      }
    });
    for await (const _token of first) {
      times.push(performance.now());
      const stats = engine.stats();
      rowsPerStep.push(stats.lastStepRows);
      hostTimes.push(stats.hostMs);
    }
    await Promise.all(others);
    const intervals = times.slice(warmup + 1).map((time, i) => time - (times[warmup + i] as number));
    const hostIntervals = hostTimes.slice(warmup + 1).map((time, i) => time - (hostTimes[warmup + i] as number));
    const partial = rowsPerStep.slice(warmup + 1).filter((rows) => rows !== batch).length;
    if (partial > 0) return { error: `${partial} measured steps did not hold the whole batch` };
    const peak = model.backend.memory();
    return {
      stepMs: median(intervals),
      stepP90Ms: quantile(intervals, 0.9),
      hostMs: median(hostIntervals),
      kvBytes: pages * engine.pool.pageBytes,
      peakBytes: peak.peakBytes,
    };
  } catch (error) {
    if (error instanceof DuoCapacityError) return { error: error.message };
    throw error;
  } finally {
    await engine.close();
  }
}

/**
 * Inter-token latency of `batch` sequences decoding at `context` before and while a prompt of `length` random tokens
 * is admitted and prefilled in chunks of `chunk` between their steps.
 */
async function admissionLatency(
  model: LlamaModel,
  policy: AttentionPolicy,
  batch: number,
  context: number,
  length: number,
  chunk: number,
  log: (line: string) => void,
): Promise<object> {
  const engine = model.createBatchEngine({
    maxSequences: batch + 1,
    stepTokens: batch + chunk,
    allowBeyondContext: true,
  });
  const warm = 16;
  const before: number[] = [];
  const during: number[] = [];
  let admittedAt = 0;
  let prefilledAt = 0;
  try {
    // Room for the warm-up, one step per prefill chunk (twice over) and the steps after it.
    const maxTokens = warm + 2 * Math.ceil(length / chunk) + 64;
    const running = Array.from({ length: batch }, () =>
      engine.submit({ prompt: [1], policy, syntheticContext: context, maxTokens, stopTokens: [] }),
    );
    let long: BatchStream | undefined;
    let afterPrefill = 0;
    const last: number[] = new Array(batch).fill(0);
    const controller = new AbortController();
    await Promise.all(
      running.map(async (stream, index) => {
        let count = 0;
        for await (const _token of stream) {
          const now = performance.now();
          const previous = last[index] as number;
          last[index] = now;
          count++;
          if (previous > 0 && count > 2) (admittedAt === 0 ? before : during).push(now - previous);
          if (index === 0 && count === warm) {
            admittedAt = now;
            long = engine.submit({
              prompt: Array.from(benchmarkTokens(length, model.config.vocabSize)),
              policy: { ...policy, prefillChunk: chunk },
              maxTokens: 2,
              stopTokens: [],
            });
            void long.result.then(() => {
              prefilledAt = performance.now();
            });
          }
          if (index === 0 && prefilledAt > 0 && ++afterPrefill === 8) controller.abort();
          if (controller.signal.aborted) stream.cancel();
        }
      }),
    );
    await long?.result;
  } finally {
    await engine.close();
  }
  const summary = (values: number[]) => ({
    count: values.length,
    medianMs: median(values),
    p90Ms: quantile(values, 0.9),
    p99Ms: quantile(values, 0.99),
    maxMs: Math.max(...values),
  });
  const result = {
    batch,
    context,
    promptTokens: length,
    chunk,
    prefillSeconds: (prefilledAt - admittedAt) / 1000,
    before: summary(before),
    during: summary(during),
  };
  const ratio = result.during.p99Ms / result.during.medianMs;
  log(
    `admitting ${length} tokens (chunks of ${chunk}) into ${batch} sequences @${context}: prefill ${result.prefillSeconds.toFixed(2)} s; inter-token latency before ${result.before.medianMs.toFixed(2)} ms median, during ${result.during.medianMs.toFixed(2)} ms median, ${result.during.p99Ms.toFixed(2)} ms p99 (${ratio.toFixed(2)}× the median)`,
  );
  return { ...result, p99ToMedian: ratio };
}

/** --from FILE: draws an earlier run's figure (runs on the GPU machine write JSON; figures are drawn here). */
async function redraw(file: string, plot: string | undefined, log: (line: string) => void): Promise<object> {
  const record = readJsonOption<{ decode?: Row[] }>('from', file);
  if (!Array.isArray(record.decode))
    throw new UsageError(`--from: "${file}" has no decode rows (not a duo-bench batch record)`);
  for (const line of batchSpeedups(record.decode).lines) log(line);
  if (plot) {
    await writeFigure(plot, lineChart({ panels: panels(record.decode), legendTitle: 'policy @ context' }));
    log(`wrote ${plot}`);
  }
  return record;
}

/** Aggregate tokens/s of each batch size over batch 1's, per policy, scheme and context. */
function batchSpeedups(rows: readonly Row[]): { lines: string[]; table: object[] } {
  const lines: string[] = [];
  const table: object[] = [];
  for (const row of rows) {
    if (row.batch === 1 || typeof row.tokensPerSecond !== 'number') continue;
    const single = rows.find(
      (other) =>
        other.batch === 1 &&
        other.policy === row.policy &&
        other.kvQuant === row.kvQuant &&
        other.context === row.context,
    );
    if (typeof single?.tokensPerSecond !== 'number') continue;
    const speedup = row.tokensPerSecond / single.tokensPerSecond;
    table.push({ policy: row.policy, kvQuant: row.kvQuant, context: row.context, batch: row.batch, speedup });
    lines.push(
      `${runLabel(row.policy, row.kvQuant)} @${row.context}: batch ${row.batch} decodes ${speedup.toFixed(2)}× the tokens/s of batch 1`,
    );
  }
  return { lines, table };
}

/** Step time (with the floor) and aggregate tokens/s against batch size, one line per policy, scheme and context. */
function panels(rows: readonly Row[]): FigurePanel[] {
  const groups = new Map<string, Row[]>();
  for (const row of rows) {
    const key = `${runLabel(row.policy, row.kvQuant)} @${row.context >= 1024 ? `${row.context / 1024}K` : row.context}`;
    groups.set(key, [...(groups.get(key) ?? []), row]);
  }
  const series = (value: (row: Row) => unknown, suffix = '') =>
    [...groups].map(([label, group]) => ({
      label: `${label}${suffix}`,
      points: group
        .filter((row) => typeof value(row) === 'number')
        .map((row) => ({ x: row.batch, y: value(row) as number })),
    }));
  return [
    {
      title: 'Decode step time',
      xTitle: 'sequences in the batch',
      yTitle: 'ms per step',
      xScale: 'log2',
      series: [...series((row) => row.stepMs), ...series((row) => row.floorMs, ' (floor)')],
    },
    {
      title: 'Aggregate decode throughput',
      xTitle: 'sequences in the batch',
      yTitle: 'tokens per second',
      xScale: 'log2',
      series: series((row) => row.tokensPerSecond),
    },
  ];
}
