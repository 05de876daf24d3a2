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
  numberOption,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  runLabel,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import type { AttentionPolicy, AttentionPolicyName, KvQuantScheme } from '@duoattn/core';
import { bytesPerValue, DuoOutOfMemoryError } from '@duoattn/core';
import { maxContext, planMemory, policyPlan } from '@duoattn/dual-cache';
import { kvPlanes, kvRowBytes } from '@duoattn/kv-quant';
import type { LlamaModel } from '@duoattn/model';
import { interruptionPoint } from '../interrupt.js';
import { benchmarkTokens, decodeLatency, prefillSeconds, TIMING_ONLY } from '../measure.js';
import { BENCHMARK_MODEL_OPTIONS, benchBackend, benchmarkModel } from '../model-options.js';
import { readJsonOption } from '../read-json.js';
import { decodeBytesFloor, SHAPES } from '../shapes.js';

export const efficiencyHelp = `duo-bench efficiency [--shape NAME | --model PATH] [--device auto|cpu|cuda] [--dtype bf16|f16|f32]
                     [--attention full,duo,streaming] [--contexts 1k,2k,4k,8k|none] [--max-context] [--prefill 1k,4k|none]
                     [--steps N] [--warmup N] [--bandwidth TBps] [--reserve GB] [--peer FILE] [--out FILE]
                     [--plot FILE.svg|FILE.png] [--profile] [--kv-quant none,int8,int4]
       duo-bench efficiency --from FILE[,FILE] [--peer FILE] [--out FILE] [--plot FILE.svg|FILE.png]
  For each policy: decode ms/token at each context (cache filled with synthetic K/V, the JSON says so) with the
  bytes-moved floor, peak memory and the planner's bytes; prefill seconds for each --prefill length (a real prefill in
  --prefill-chunk chunks); with --max-context also decode at the longest context the planner fits on the device.
  --kv-quant takes a list here: every policy runs with each scheme (the floor counts the codes and scales moved).
  --peer: a PyTorch run (tools/device/torch_duo_bench.py) to compare with and draw beside ours; --from: merge and
  redraw earlier runs without measuring. Shapes: ${Object.keys(SHAPES).join(', ')}; default --model is the demo model.
  Contexts may exceed the model's (the caches are synthetic; only the time counts). Ctrl-C stops after the
  measurement in flight with exit status 130 and writes nothing.
${POLICY_HELP}`;

const GB = 1e9;

/** One measured configuration: the policy's name and KV scheme label the rows, the policy runs the sessions. */
interface Run {
  readonly attention: AttentionPolicyName;
  readonly kvQuant: KvQuantScheme;
  readonly policy: AttentionPolicy;
}

interface Row {
  policy: AttentionPolicyName;
  /** 'none' (or absent, in runs from before KV quantization): rows in the cache dtype. */
  kvQuant?: KvQuantScheme;
  context: number;
  [key: string]: unknown;
}

export async function efficiencyCommand(
  argv: string[],
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<object> {
  const options = parseOptions(argv, {
    ...POLICY_OPTIONS,
    ...BENCHMARK_MODEL_OPTIONS,
    contexts: { type: 'string' },
    'max-context': { type: 'boolean' },
    prefill: { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    bandwidth: { type: 'string' },
    reserve: { type: 'string' },
    peer: { type: 'string' },
    from: { type: 'string' },
    profile: { type: 'boolean' },
    out: { type: 'string' },
    plot: { type: 'string' },
  });
  if (options.plot !== undefined) outputOption('plot', figurePath('plot', String(options.plot)));
  outputOption('out', options.out);
  const peer = options.peer === undefined ? undefined : readPeer(String(options.peer));
  if (options.from !== undefined) return redraw(String(options.from), peer, options, log);
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  const dtype = choiceOption('dtype', options.dtype, ['bf16', 'f16', 'f32'] as const, 'bf16');
  const policies = attentionPolicies(options.attention, ['full', 'duo', 'streaming'], true);
  // 'none' skips a phase (a decode-only or prefill-only run).
  const contexts =
    options.contexts === 'none' ? [] : integerListOption('contexts', options.contexts, [1024, 2048, 4096, 8192]);
  const prefillLengths = options.prefill === 'none' ? [] : integerListOption('prefill', options.prefill, [1024, 4096]);
  const steps = integerOption('steps', options.steps, 16, 1);
  const warmup = integerOption('warmup', options.warmup, 4, 2);
  // The floor is a GPU figure (HBM bandwidth); on the CPU it is reported only when --bandwidth is given.
  const bandwidthTBps = numberOption('bandwidth', options.bandwidth, 3.0, 0.001);
  const reserve = numberOption('reserve', options.reserve, 2.5, 0) * GB;
  const quants = kvQuantList(options['kv-quant']);
  const settings = policySettings({ ...options, 'kv-quant': undefined }, policies);
  const backend = benchBackend(device);
  const { model, label } = await benchmarkModel(options, backend, dtype);
  try {
    const duo = duoPlanFor(policies, settings, model.config);
    const weightBytes = bytesPerValue(model.weightDtype);
    const kvDtype = model.defaultCacheDtype;
    const budget = backend.memory().deviceTotalBytes;
    const decode: Row[] = [];
    const prefill: Row[] = [];
    const total =
      policies.length * quants.length * (contexts.length + (options['max-context'] ? 1 : 0) + prefillLengths.length);
    let done = 0;
    const progress = (what: string) => {
      done++;
      if (process.stderr.isTTY) process.stderr.write(`\r[duo-bench] efficiency ${done}/${total}: ${what}        `);
    };
    for (const [attention, kvQuant] of policies.flatMap((p) => quants.map((q) => [p, q] as const))) {
      const policy = buildPolicy(attention, { ...settings, kvQuant }, model.config, duo);
      const measured: Run = { attention, kvQuant, policy };
      const run = runLabel(attention, kvQuant);
      const plan = policyPlan(model.config, policy);
      const plannerInput = {
        config: model.config,
        plan,
        weightDtype: model.weightDtype,
        kvDtype,
        kvQuant,
        prefillChunk: settings.prefillChunk,
        pageBytes: backend.pageBytes,
      };
      const lengths = [...contexts];
      let longest: number | undefined;
      if (options['max-context']) {
        if (budget === undefined) throw new UsageError('--max-context needs a device that reports its memory (CUDA)');
        longest = Math.min(maxContext(plannerInput, budget, reserve) - warmup - steps - 2, 1 << 24);
        lengths.push(longest);
      }
      for (const context of lengths) {
        await interruptionPoint(signal, `${run} decode @${context}`);
        if (options.profile) backend.takeProfile();
        const row = await measureDecode(model, measured, context, warmup, steps);
        if (options.profile) {
          // Device time per op (CUDA with DUO_CUDA_PROFILE=1; DUO_NO_GRAPHS=1 so each op is timed on its own).
          const profile = backend.takeProfile().sort((a, b) => b.milliseconds - a.milliseconds);
          const tokens = warmup + steps;
          row.profile = profile.map((entry) => ({ ...entry, msPerToken: entry.milliseconds / tokens }));
          for (const entry of profile) {
            log(
              `  ${entry.name.padEnd(18)} ${(entry.milliseconds / tokens).toFixed(4)} ms/token over ${entry.count / tokens} launches`,
            );
          }
        }
        const floorMs =
          (decodeBytesFloor(
            model.config,
            weightBytes,
            context + warmup + steps / 2,
            kvRowBytes(kvPlanes(model.config.headDim, kvDtype, kvQuant)),
            plan,
          ) /
            (bandwidthTBps * 1e12)) *
          1000;
        if (typeof row.msPerToken === 'number') {
          if (backend.device === 'cuda' || options.bandwidth !== undefined) {
            row.floorMs = floorMs;
            row.ratioToFloor = row.msPerToken / floorMs;
          }
          const planned = planMemory({ ...plannerInput, tokens: row.capacity as number, decodeOnly: true });
          row.plannedSessionBytes = planned.total - planned.weights;
          row.plannedToAllocated = (row.plannedSessionBytes as number) / (row.sessionBytes as number);
          // The planner's whole figure (weights, cache, scratch) against the peak the device allocator saw.
          row.plannedTotalBytes = planned.total;
          row.peakToPlanned = (row.peakBytes as number) / planned.total;
          const floor =
            row.floorMs === undefined
              ? ''
              : ` (floor ${floorMs.toFixed(3)}, ${(row.ratioToFloor as number).toFixed(3)}×)`;
          log(
            `${run.padEnd(16)} decode @${context}: ${(row.msPerToken as number).toFixed(3)} ms/token${floor}, peak ${((row.peakBytes as number) / GB).toFixed(3)} GB, planned/allocated ${(row.plannedToAllocated as number).toFixed(3)}, peak/planned ${(row.peakToPlanned as number).toFixed(4)}`,
          );
        } else {
          // What it would have needed, beside what the device has.
          const capacity = context + warmup + steps + 2;
          row.plannedTotalBytes = planMemory({ ...plannerInput, tokens: capacity, decodeOnly: true }).total;
          row.deviceBytes = budget;
          const needed = `planned ${((row.plannedTotalBytes as number) / GB).toFixed(2)} GB`;
          const device = budget === undefined ? '' : ` of ${(budget / GB).toFixed(2)} GB on the device`;
          log(`${run.padEnd(16)} decode @${context}: ${String(row.error)} (${needed}${device})`);
        }
        row.maxContext = context === longest;
        decode.push(row);
        progress(`${run} decode @${context}`);
      }
      for (const length of prefillLengths) {
        await interruptionPoint(signal, `${run} prefill ${length}`);
        const row = await measurePrefill(model, measured, length);
        if (typeof row.seconds === 'number')
          log(`${run.padEnd(16)} prefill ${length}: ${(row.seconds as number).toFixed(3)} s`);
        else log(`${run.padEnd(16)} prefill ${length}: ${String(row.error)}`);
        prefill.push(row);
        progress(`${run} prefill ${length}`);
      }
    }
    if (process.stderr.isTTY) process.stderr.write('\n');
    const comparisons = report(decode, prefill, peer, log);
    const runSettings = {
      model: label,
      device: backend.device,
      weightDtype: model.weightDtype,
      kvDtype,
      kvQuant: quants,
      policies,
      headPlan: duo
        ? {
            sparsity: duo.sparsity,
            sink: duo.sink,
            recent: duo.recent,
            retrievalHeads: duo.retrievalHeads.map((h) => h.length),
          }
        : undefined,
      streaming: (({ sink, recent }) => ({ sink, recent }))(
        policyPlan(model.config, buildPolicy('streaming', settings, model.config)),
      ),
      prefillChunk: settings.prefillChunk,
      prefillMask: settings.prefillMask,
      steps,
      warmup,
      bandwidthTBps,
      reserveBytes: reserve,
      decodeCache:
        'synthetic K/V written directly to reach each context (quantized caches: random normal rows quantized into them)',
      timing:
        'decode: host wall clock between consecutive greedy tokens (CUDA: replayed graph, one step in flight), median; prefill: wall clock of a whole chunked prefill, one run after a warm-up on its first chunk',
      peer: options.peer,
    };
    const figures = { decode, prefill, comparisons };
    // The record first: a figure that cannot be drawn must not cost the measurements.
    const result = options.out
      ? writeResult(String(options.out), backend.deviceName, runSettings, figures)
      : { card: backend.deviceName, settings: runSettings, ...figures };
    await plot(decode, prefill, peer, options, log);
    return result;
  } finally {
    model.dispose();
  }
}

/** Comparisons (logged), from measured or reloaded rows. */
function report(decode: Row[], prefill: Row[], peer: PeerDocument | undefined, log: (line: string) => void): object[] {
  const comparisons = compare(decode, prefill, peer);
  for (const line of comparisons.lines) log(line);
  return comparisons.table;
}

/** --plot: the decode and prefill figure of measured or reloaded rows. */
async function plot(
  decode: Row[],
  prefill: Row[],
  peer: PeerDocument | undefined,
  options: Record<string, unknown>,
  log: (line: string) => void,
): Promise<void> {
  if (options.plot) {
    const figure = panels(decode, prefill, peer);
    if (figure.length === 0)
      log(`--plot: no decode or prefill figure was measured; ${String(options.plot)} not written`);
    else {
      await writeFigure(String(options.plot), lineChart({ panels: figure }));
      log(`wrote ${String(options.plot)}`);
    }
  }
}

/** --from FILE[,FILE…]: merges earlier runs (e.g. a decode run and a prefill run), compares with --peer, redraws. */
async function redraw(
  files: string,
  peer: PeerDocument | undefined,
  options: Record<string, unknown>,
  log: (line: string) => void,
): Promise<object> {
  const runs = files.split(',').map((file) => ({
    file,
    ...readJsonOption<{ card?: string; decode?: Row[]; prefill?: Row[]; settings?: object }>('from', file),
  }));
  const decode = runs.flatMap((run) => run.decode ?? []);
  const prefill = runs.flatMap((run) => run.prefill ?? []);
  const comparisons = report(decode, prefill, peer, log);
  const card = runs[0]?.card ?? 'unknown';
  const settings = { mergedFrom: runs.map((run) => ({ file: run.file, settings: run.settings })), peer: options.peer };
  const figures = { decode, prefill, comparisons, ...(peer ? { peer } : {}) };
  const result = options.out
    ? writeResult(String(options.out), card, settings, figures)
    : { card, settings, ...figures };
  await plot(decode, prefill, peer, options, log);
  return result;
}

/** Decode at `context`: a fresh session sized for the run, synthetic K/V, timed greedy steps, memory. */
async function measureDecode(
  model: LlamaModel,
  { attention, kvQuant, policy }: Run,
  context: number,
  warmup: number,
  steps: number,
): Promise<Row> {
  const backend = model.backend;
  const capacity = context + warmup + steps + 2;
  const before = backend.memory().allocatedBytes;
  backend.resetPeakMemory();
  let session: ReturnType<LlamaModel['createSession']> | undefined;
  try {
    session = model.createSession({ policy, maxTokens: capacity, cacheBlockTokens: capacity, ...TIMING_ONLY });
    session.syntheticFill(context, context);
    const timing = await decodeLatency(session, warmup, steps);
    const memory = backend.memory();
    return {
      policy: attention,
      kvQuant,
      context,
      capacity,
      ...timing,
      peakBytes: memory.peakBytes,
      sessionBytes: memory.allocatedBytes - before,
      cacheBytes: session.cacheBytes(),
    };
  } catch (error) {
    if (error instanceof DuoOutOfMemoryError) return { policy: attention, kvQuant, context, error: 'out of memory' };
    throw error;
  } finally {
    session?.dispose();
  }
}

async function measurePrefill(model: LlamaModel, { attention, kvQuant, policy }: Run, length: number): Promise<Row> {
  const backend = model.backend;
  backend.resetPeakMemory();
  let session: ReturnType<LlamaModel['createSession']> | undefined;
  try {
    session = model.createSession({ policy, maxTokens: length, cacheBlockTokens: length, ...TIMING_ONLY });
    // One timed run after a one-chunk warm-up: these prompts are 128K to millions of tokens.
    const { seconds, runs } = await prefillSeconds(
      backend,
      session,
      benchmarkTokens(length, model.config.vocabSize),
      1,
      session.policy.prefillChunk,
    );
    return {
      policy: attention,
      kvQuant,
      context: length,
      chunk: session.policy.prefillChunk,
      seconds,
      runs,
      tokensPerSecond: length / seconds,
      peakBytes: backend.memory().peakBytes,
    };
  } catch (error) {
    if (error instanceof DuoOutOfMemoryError)
      return { policy: attention, kvQuant, context: length, error: 'out of memory' };
    throw error;
  } finally {
    session?.dispose();
  }
}

interface PeerDocument {
  card?: string;
  decode?: { policy: string; context: number; msPerToken?: number; peakBytes?: number }[];
  prefill?: { policy: string; tokens: number; seconds?: number }[];
}

function readPeer(path: string): PeerDocument {
  return readJsonOption<PeerDocument>('peer', path);
}

/** Duo/full speed-ups and, with a peer, our time against the peer's at each shared point. */
function compare(decode: Row[], prefill: Row[], peer: PeerDocument | undefined): { lines: string[]; table: object[] } {
  const lines: string[] = [];
  const table: object[] = [];
  const quantOf = (row: Row) => row.kvQuant ?? 'none';
  const ms = (policy: string, context: number, kvQuant: KvQuantScheme = 'none') =>
    decode.find((row) => row.policy === policy && row.context === context && quantOf(row) === kvQuant)?.msPerToken as
      | number
      | undefined;
  for (const row of decode.filter((r) => r.policy === 'duo')) {
    const full = ms('full', row.context, quantOf(row));
    const duo = row.msPerToken as number | undefined;
    if (full && duo) {
      const suffix = quantOf(row) === 'none' ? '' : ` (both ${quantOf(row)})`;
      table.push({ kind: `duo/full decode speed-up${suffix}`, context: row.context, value: full / duo });
      lines.push(`duo/full decode speed-up${suffix} @${row.context}: ${(full / duo).toFixed(3)}×`);
    }
  }
  // Quantized against the cache dtype, same policy and context: fewer bytes moved should show as less time.
  for (const row of decode.filter((r) => quantOf(r) !== 'none')) {
    const plain = ms(row.policy, row.context);
    const quantized = row.msPerToken as number | undefined;
    if (plain && quantized) {
      const kind = `${row.policy}: ${quantOf(row)}/unquantized decode speed-up`;
      table.push({ kind, context: row.context, value: plain / quantized });
      lines.push(`${kind} @${row.context}: ${(plain / quantized).toFixed(3)}×`);
    }
  }
  for (const row of peer?.decode ?? []) {
    const ours = ms(row.policy, row.context);
    if (ours && row.msPerToken) {
      table.push({ kind: `peer/ours decode (${row.policy})`, context: row.context, value: row.msPerToken / ours });
      lines.push(
        `${row.policy} decode @${row.context}: peer ${row.msPerToken.toFixed(2)} ms vs ours ${ours.toFixed(2)} ms (${(row.msPerToken / ours).toFixed(2)}× faster)`,
      );
    }
  }
  for (const row of peer?.prefill ?? []) {
    const ours = prefill.find((p) => p.policy === row.policy && p.context === row.tokens)?.seconds as
      | number
      | undefined;
    if (ours && row.seconds) {
      table.push({ kind: `peer/ours prefill (${row.policy})`, context: row.tokens, value: row.seconds / ours });
      lines.push(`${row.policy} prefill ${row.tokens}: peer ${row.seconds.toFixed(2)} s vs ours ${ours.toFixed(2)} s`);
    }
  }
  return { lines, table };
}

/**
 * The figure's panels: decode latency and peak memory where the runs decoded, prefill time and peak memory where they
 * prefilled (a record may hold either alone), each with the peer's figures beside ours.
 */
function panels(decode: Row[], prefill: Row[], peer: PeerDocument | undefined): FigurePanel[] {
  const labelOf = (row: Row) => runLabel(row.policy, row.kvQuant ?? 'none');
  const series = (rows: readonly Row[], field: string, scale = 1) =>
    [...new Set(rows.map(labelOf))].map((run) => ({
      label: run,
      points: rows
        .filter((row) => labelOf(row) === run && typeof row[field] === 'number')
        .map((row) => ({ x: row.context, y: (row[field] as number) * scale })),
    }));
  const peerSeries = <R extends { policy: string }>(
    rows: readonly R[],
    x: (row: R) => number,
    y: (row: R) => unknown,
  ) =>
    [...new Set(rows.map((row) => row.policy))].map((policy) => ({
      label: `${policy} (PyTorch reference method)`,
      points: rows
        .filter((row) => row.policy === policy && typeof y(row) === 'number')
        .map((row) => ({ x: x(row), y: y(row) as number })),
    }));
  // Per phase that was measured: a time panel (ours and the peer's) and a peak-memory panel over the same axis.
  const phases = [
    {
      phase: 'decode',
      rows: decode,
      field: 'msPerToken',
      title: 'Decode latency',
      xTitle: 'context (tokens)',
      yTitle: 'ms / token',
      peer: peerSeries(
        peer?.decode ?? [],
        (row) => row.context,
        (row) => row.msPerToken,
      ),
    },
    {
      phase: 'prefill',
      rows: prefill,
      field: 'seconds',
      title: 'Prefill time',
      xTitle: 'prompt (tokens)',
      yTitle: 'seconds',
      peer: peerSeries(
        peer?.prefill ?? [],
        (row) => row.tokens,
        (row) => row.seconds,
      ),
    },
  ];
  return phases
    .filter(({ rows, field }) => rows.some((row) => typeof row[field] === 'number'))
    .flatMap(({ phase, rows, field, title, xTitle, yTitle, peer: peerPoints }): FigurePanel[] => [
      { title, xTitle, yTitle, series: [...series(rows, field), ...peerPoints], xScale: 'log2' },
      {
        title: `Peak memory during ${phase}`,
        xTitle,
        yTitle: 'GB',
        series: series(rows, 'peakBytes', 1 / GB),
        xScale: 'log2',
      },
    ]);
}
