// duo-bench context-parallel: one long sequence over several ranks (issue 20, ADR 0011), its keys split across them
// (context parallelism) or, with --split weights, its layers' matrices (tensor parallelism). With --gpus the command is a
// launcher: one process per GPU (CUDA_VISIBLE_DEVICES), an NCCL group set up through it (rank 0 makes the id, the
// launcher hands it on); with --ranks the ranks are simulated in this process (the in-process group), on any device.
import {
  attentionPolicies,
  buildPolicy,
  choiceOption,
  duoPlanFor,
  figurePath,
  integerListOption,
  integerOption,
  lineChart,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  type PolicySettings,
  parseOptions,
  policySettings,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import type { AttentionPolicy, AttentionPolicyName, Backend, Communicator } from '@duoattn/core';
import { createInProcessGroup } from '@duoattn/kernels';
import { forkRanks, type LlamaModel, rankRendezvous, type SessionOptions } from '@duoattn/model';
import { benchmarkTokens, decodeLatency, prefillSeconds, TIMING_ONLY } from '../measure.js';
import { BENCHMARK_MODEL_OPTIONS, benchBackend, benchmarkModel } from '../model-options.js';

export const contextParallelHelp = `duo-bench context-parallel (--gpus 1,2,4,8 | --ranks 1,2,4) [--shape NAME | --model PATH] [--device cpu|cuda]
                     [--dtype bf16|f16|f32] [--context N | --context-per-rank N] [--steps N] [--warmup N]
                     [--prefill N|none] [--chunk N] [--split keys|weights] [--out FILE] [--plot FILE.svg|FILE.png]
  One sequence over several ranks: --split keys (default; context parallelism: the retrieval heads' keys dealt to the
  ranks in chunks of --chunk, default the prefill chunk) or --split weights (tensor parallelism: each rank holds its KV
  heads' q/k/v/o and 1/R of the MLP, and the ranks sum o and down with an all-reduce). For each rank count: decode
  ms/token at the context (cache filled with synthetic K/V, --context or --context-per-rank × ranks) and, with
  --prefill, the seconds of a real prefill of that many tokens and its scaling efficiency against one rank
  (T₁ / (R · T_R)). --gpus runs one process per GPU over NCCL (CUDA; NCCL_NVLS_ENABLE=0, DUO_NCCL_PATH where
  libnccl.so.2 is not found by itself); --ranks runs the ranks in this process (in-process group, any device: what CI
  checks). One rank runs a plain session.
${POLICY_HELP}`;

/** What one rank measured. */
interface RankResult {
  readonly rank: number;
  readonly decode?: { msPerToken: number; p10: number; p90: number; context: number };
  readonly prefill?: { tokens: number; seconds: number };
  readonly peakBytes: number;
}

/** The settings every rank runs with (sent to the processes of --gpus as their arguments). */
interface Plan {
  readonly options: Record<string, unknown>;
  /** The policy options, checked before any work (the policy itself needs the model's config). */
  readonly attention: AttentionPolicyName;
  readonly settings: PolicySettings;
  readonly dtype: 'bf16' | 'f16' | 'f32';
  readonly contextPerRank?: number;
  readonly context?: number;
  readonly steps: number;
  readonly warmup: number;
  readonly prefill?: number;
  readonly chunk?: number;
  /** What the ranks divide: the retrieval heads' keys (context parallelism) or the layers' matrices (tensor). */
  readonly split: 'keys' | 'weights';
}

const CHILD_FLAG = '--rank-of-launch';

export async function contextParallelCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    ...POLICY_OPTIONS,
    ...BENCHMARK_MODEL_OPTIONS,
    gpus: { type: 'string' },
    ranks: { type: 'string' },
    context: { type: 'string' },
    'context-per-rank': { type: 'string' },
    steps: { type: 'string' },
    warmup: { type: 'string' },
    prefill: { type: 'string' },
    chunk: { type: 'string' },
    split: { type: 'string' },
    out: { type: 'string' },
    plot: { type: 'string' },
    'rank-of-launch': { type: 'string' },
  });
  const plan = planOf(options);
  const child = options['rank-of-launch'];
  if (child !== undefined) return runChild(String(child), plan);
  if (options.plot !== undefined) outputOption('plot', figurePath('plot', String(options.plot)));
  outputOption('out', options.out);
  if ((options.gpus === undefined) === (options.ranks === undefined)) {
    throw new UsageError('expected one of --gpus (processes over NCCL) and --ranks (in this process)', {
      option: 'gpus',
      expected: '--gpus LIST or --ranks LIST',
    });
  }
  const overGpus = options.gpus !== undefined;
  const countOption = overGpus ? 'gpus' : 'ranks';
  const counts = integerListOption(countOption, options[countOption], [1]);
  if (counts.some((count) => count < 1)) {
    throw UsageError.invalid(countOption, 'positive integers (e.g. 1,2,4,8)', options[countOption]);
  }
  const device = choiceOption('device', options.device, ['cpu', 'cuda'] as const, overGpus ? 'cuda' : 'cpu');
  if (overGpus && device !== 'cuda') {
    throw new UsageError('--gpus runs one process per GPU over NCCL: it needs --device cuda', {
      option: 'device',
      received: device,
      expected: 'cuda with --gpus (or --ranks on the CPU)',
    });
  }
  const rows: (Omit<RankResult, 'rank'> & { ranks: number })[] = [];
  for (const ranks of counts) {
    log(`context-parallel: ${ranks} ${overGpus ? 'GPU' : 'rank'}${ranks === 1 ? '' : 's'}`);
    const results = overGpus ? await launch(argv, ranks, log) : await inProcess(plan, device, ranks);
    rows.push({ ranks, ...summary(results) });
    const last = rows[rows.length - 1];
    if (last?.decode) log(`  decode @ ${last.decode.context}: ${last.decode.msPerToken.toFixed(3)} ms/token`);
    if (last?.prefill) log(`  prefill ${last.prefill.tokens} tokens: ${last.prefill.seconds.toFixed(3)} s`);
  }
  const one = rows.find((row) => row.ranks === 1)?.prefill?.seconds;
  const table = rows.map((row) => ({
    ...row,
    ...(one !== undefined && row.prefill ? { prefillEfficiency: one / (row.ranks * row.prefill.seconds) } : {}),
  }));
  const settings = {
    mode: overGpus ? 'one process per GPU, NCCL (NCCL_NVLS_ENABLE=0)' : 'ranks in one process (in-process group)',
    split:
      plan.split === 'keys'
        ? 'keys: the retrieval heads’ keys by chunk (context parallelism)'
        : 'weights: each rank’s KV heads and 1/R of the MLP, o and down summed by all-reduce (tensor parallelism)',
    device,
    model: options.shape ?? options.model ?? 'the demo model',
    dtype: plan.dtype,
    attention: plan.attention,
    steps: plan.steps,
    warmup: plan.warmup,
    chunk: plan.chunk ?? 'the prefill chunk',
    decodeCache: 'synthetic K/V written directly to each rank’s shard (timing only)',
    timing:
      'decode: median ms between greedy tokens after warm-up, the slowest rank; prefill: wall seconds, slowest rank',
  };
  const card = overGpus ? `${counts.join('/')} × CUDA GPU (see each rank's device)` : `${device} (in-process ranks)`;
  const result = options.out
    ? writeResult(String(options.out), card, settings, { rows: table })
    : { card, settings, rows: table };
  if (options.plot !== undefined) {
    await writeFigure(
      String(options.plot),
      lineChart({
        panels: [
          {
            title: 'Decode at the context',
            xTitle: 'ranks',
            yTitle: 'ms per token',
            series: [
              {
                label: 'decode',
                points: table.flatMap((row) => (row.decode ? [{ x: row.ranks, y: row.decode.msPerToken }] : [])),
              },
            ],
          },
          {
            title: 'Prefill scaling efficiency',
            xTitle: 'ranks',
            yTitle: 'T₁ / (R · T_R)',
            series: [
              {
                label: 'prefill',
                points: table.flatMap((row) =>
                  'prefillEfficiency' in row ? [{ x: row.ranks, y: row.prefillEfficiency as number }] : [],
                ),
              },
            ],
          },
        ],
      }),
    );
    log(`wrote ${String(options.plot)}`);
  }
  return result;
}

function planOf(options: Record<string, unknown>): Plan {
  if (options.context !== undefined && options['context-per-rank'] !== undefined) {
    throw new UsageError('expected --context or --context-per-rank, not both', { option: 'context' });
  }
  const prefill =
    options.prefill === undefined || options.prefill === 'none'
      ? undefined
      : integerOption('prefill', options.prefill, 0, 1);
  const attention = attentionPolicies(options.attention, ['duo'])[0] ?? 'duo';
  return {
    options,
    attention,
    settings: policySettings(options, [attention]),
    dtype: choiceOption('dtype', options.dtype, ['bf16', 'f16', 'f32'] as const, 'bf16'),
    ...(options['context-per-rank'] !== undefined
      ? { contextPerRank: integerOption('context-per-rank', options['context-per-rank'], 0, 1) }
      : { context: integerOption('context', options.context, 4096, 1) }),
    steps: integerOption('steps', options.steps, 32, 1),
    warmup: integerOption('warmup', options.warmup, 4, 1),
    ...(prefill === undefined ? {} : { prefill }),
    ...(options.chunk === undefined ? {} : { chunk: integerOption('chunk', options.chunk, 0, 1) }),
    split: choiceOption('split', options.split, ['keys', 'weights'] as const, 'keys'),
  };
}

/** The value with the largest `time` (undefined when there is none). */
function slowest<T>(values: readonly (T | undefined)[], time: (value: T) => number): T | undefined {
  let worst: T | undefined;
  for (const value of values)
    if (value !== undefined && (worst === undefined || time(value) > time(worst))) worst = value;
  return worst;
}

/** The slowest rank's figures (the ranks step together, so they differ by little). */
function summary(results: readonly RankResult[]): Omit<RankResult, 'rank'> {
  const decode = slowest(
    results.map((result) => result.decode),
    (value) => value.msPerToken,
  );
  const prefill = slowest(
    results.map((result) => result.prefill),
    (value) => value.seconds,
  );
  return {
    ...(decode ? { decode } : {}),
    ...(prefill ? { prefill } : {}),
    peakBytes: Math.max(...results.map((result) => result.peakBytes)),
  };
}

/** The policy and session options of one rank of `ranks` (`communicator` undefined: a plain session). */
function sessionOptions(model: LlamaModel, plan: Plan, tokens: number, communicator?: Communicator): SessionOptions {
  const { attention, settings } = plan;
  const policy: AttentionPolicy = buildPolicy(
    attention,
    settings,
    model.config,
    duoPlanFor([attention], settings, model.config),
  );
  return {
    policy,
    maxTokens: tokens,
    cacheBlockTokens: tokens,
    ...TIMING_ONLY,
    ...(communicator && communicator.size > 1 && plan.split === 'keys'
      ? { contextParallel: { communicator, chunk: plan.chunk ?? settings.prefillChunk } }
      : {}),
  };
}

/** One rank's measurements: decode at the context over synthetic K/V, then the prefill. */
async function measureRank(
  model: LlamaModel,
  plan: Plan,
  ranks: number,
  rank: number,
  communicator?: Communicator,
): Promise<RankResult> {
  const backend = model.backend;
  backend.resetPeakMemory();
  const context = plan.context ?? (plan.contextPerRank ?? 0) * ranks;
  const decodeSession = model.createSession(
    sessionOptions(model, plan, context + plan.warmup + plan.steps + 2, communicator),
  );
  let decode: RankResult['decode'];
  try {
    decodeSession.syntheticFill(context, context + rank);
    decode = { ...(await decodeLatency(decodeSession, plan.warmup, plan.steps)), context };
  } finally {
    decodeSession.dispose();
  }
  let prefill: RankResult['prefill'];
  if (plan.prefill !== undefined) {
    const session = model.createSession(sessionOptions(model, plan, plan.prefill, communicator));
    try {
      // One timed run after a one-chunk warm-up, as efficiency times its long prompts.
      const tokens = benchmarkTokens(plan.prefill, model.config.vocabSize);
      const { seconds } = await prefillSeconds(backend, session, tokens, 1, session.policy.prefillChunk);
      prefill = { tokens: plan.prefill, seconds };
    } finally {
      session.dispose();
    }
  }
  return { rank, decode, ...(prefill ? { prefill } : {}), peakBytes: backend.memory().peakBytes };
}

/** The model a rank runs: whole (one rank, or keys split), or its slice of the weights (--split weights). */
async function rankModel(plan: Plan, backend: Backend, communicator?: Communicator): Promise<LlamaModel> {
  const tensorParallel =
    plan.split === 'weights' && communicator && communicator.size > 1 ? { communicator } : undefined;
  return (await benchmarkModel(plan.options, backend, plan.dtype, tensorParallel ? { tensorParallel } : {})).model;
}

/**
 * --ranks: every rank a session in this process, meeting in the in-process group; keys split: one model for all,
 * weights split: a model slice each.
 */
async function inProcess(plan: Plan, device: 'cpu' | 'cuda', ranks: number): Promise<RankResult[]> {
  const backend = benchBackend(device);
  const group = ranks === 1 ? [undefined] : createInProcessGroup(Array.from({ length: ranks }, () => backend));
  const models: LlamaModel[] = [];
  try {
    if (plan.split === 'weights') {
      for (const communicator of group) models.push(await rankModel(plan, backend, communicator));
    } else models.push(await rankModel(plan, backend));
    return await Promise.all(
      group.map((communicator, rank) =>
        measureRank((models[rank] ?? models[0]) as LlamaModel, plan, ranks, rank, communicator),
      ),
    );
  } finally {
    for (const model of models) model.dispose();
  }
}

/** Messages between the launcher and its rank processes. */
type Message = { kind: 'result'; result: RankResult } | { kind: 'failure'; message: string };

/** --gpus: one process per GPU running this command as rank r of `ranks`; resolves with every rank's result. */
function launch(argv: readonly string[], ranks: number, log: (line: string) => void): Promise<RankResult[]> {
  const script = process.argv[1];
  if (!script) throw new UsageError('--gpus: cannot tell which script to run for the ranks (process.argv[1] is empty)');
  const results: RankResult[] = [];
  return new Promise<RankResult[]>((resolve, reject) => {
    let settled = false;
    const fail = (message: string) => {
      if (settled) return;
      settled = true;
      for (const child of children) child.kill('SIGKILL');
      reject(new Error(message));
    };
    const children = forkRanks({
      script,
      args: (rank) => ['context-parallel', ...argv, CHILD_FLAG, `${rank}/${ranks}`],
      ranks,
      gpus: true,
    });
    for (const [rank, child] of children.entries()) {
      child.on('message', (raw) => {
        const message = raw as Message;
        if (message.kind === 'failure') fail(`rank ${rank}: ${message.message}`);
        else if (message.kind === 'result') {
          results[message.result.rank] = message.result;
          if (results.filter(Boolean).length === ranks && !settled) {
            settled = true;
            resolve(results);
          }
        }
      });
      child.on('exit', (code, signal) => {
        if (results[rank] === undefined) fail(`rank ${rank} exited (${signal ?? `status ${code}`}) before its result`);
      });
    }
    log(`  launched ${ranks} rank process${ranks === 1 ? '' : 'es'} (CUDA_VISIBLE_DEVICES 0 … ${ranks - 1})`);
  });
}

/** A rank process of --gpus (`rank/ranks`): joins the NCCL group, measures, reports to the launcher. */
async function runChild(which: string, plan: Plan): Promise<object> {
  const match = /^(\d+)\/(\d+)$/.exec(which);
  const send = (message: Message) => process.send?.(message);
  if (!match || !process.send) throw new UsageError(`${CHILD_FLAG} is the launcher's own option (rank/ranks)`);
  const rank = Number(match[1]);
  const ranks = Number(match[2]);
  // Listening from the start: the launcher may hand on rank 0's NCCL id before this rank has its backend.
  const rendezvous = rankRendezvous();
  try {
    const backend = benchBackend('cuda');
    const communicator = await rendezvous.join(backend, rank, ranks);
    const model = await rankModel(plan, backend, communicator);
    try {
      send({ kind: 'result', result: await measureRank(model, plan, ranks, rank, communicator) });
    } finally {
      model.dispose();
      communicator?.close();
    }
  } catch (error) {
    send({ kind: 'failure', message: (error as Error).message });
  }
  process.disconnect?.();
  return {};
}
