// duo-serve: the OpenAI-compatible server. Listens at once (health says "loading"), loads the model into a batch engine
// in a worker thread, serves; SIGTERM / SIGINT drain: no new requests, running streams finish, then the engine closes.
// Exit status: 0 after a drain, 1 when the model cannot be loaded or the server cannot listen, 2 for bad flags.
import {
  attentionPolicies,
  choiceOption,
  integerOption,
  numberOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  UsageError,
} from '@duoattn/app-kit';
import { readEnvironment, SHAPES } from '@duoattn/core';
import { environmentTuning } from '@duoattn/kernels';
import {
  GroupEngine,
  type ParallelSplit,
  startEngineWorker,
  startProcessGroup,
  type WorkerModel,
} from '@duoattn/model';
import { inThread, inWorker, type ServeEngine } from './engine-host.js';
import { type ModelSource, modelSource } from './model-source.js';
import { PolicyResolver } from './policies.js';
import { createServer } from './server.js';

export const serveHelp = `duo-serve [--model PATH | --shape NAME [--dtype bf16|f16|f32]] [--device auto|cpu|cuda] [--host 127.0.0.1]
          [--port 8000] [--served-model-name NAME] [--attention full|streaming|duo] [--pattern DIR] [--sparsity S]
          [--kv-quant none|int8|int4|fp8] … [--max-tokens N] [--max-sequences N] [--step-tokens N] [--max-waiting N]
          [--kv-budget GB] [--admission reserve|optimistic] [--max-concurrent N] [--max-body MB] [--api-key KEY]
          [--cors ORIGINS] [--chat-template FILE] [--prefix-cache GB] [--log-level info|warn|error|silent]
          [--gpus N | --ranks N] [--split keys|weights]
  An OpenAI-compatible server over duoattn's batch engine: POST /v1/chat/completions and /v1/completions (streamed as
  server-sent events or whole), GET /v1/models, POST /tokenize and /detokenize, GET /health (503 while loading or
  after an engine failure), GET /metrics (Prometheus), GET /v1/stats (live JSON), and the playground at /.
  Requests choose their policy with the extensions attention, sparsity, kv_quant, sink and recent; these flags set
  the defaults. --model defaults to the embedded demo model (models/duo-demo); --pattern to the model's pattern/
  folder when it has one. --shape NAME serves random weights made on the device (--dtype, default bf16) at a named
  shape (${Object.keys(SHAPES).join(', ')}), for benchmarks: it has no tokenizer, so requests go to
  /v1/completions with token-id prompts (return_token_ids: true streams every token's id, ignore_eos: true makes
  max_tokens exact). --max-tokens: max_tokens when a request gives none (default 1024). --kv-budget: GB of KV cache
  all requests share (default: 85 % of free GPU memory, 2 on the CPU). --max-waiting: requests queued for memory
  before 429 (default 256). --api-key (repeatable; or DUO_API_KEYS=k1,k2) requires "Authorization: Bearer KEY" on
  /v1, /tokenize and /detokenize. --cors: comma-separated allowed origins, or '*'. --prefix-cache: GB of KV the cache
  of prompt prefixes may keep (a second question about a document reuses its pages; 0: off; default half the KV
  budget).
  --gpus N serves one long sequence at a time over N GPUs (one rank process each, NCCL; CUDA): --split keys (default)
  shards the retrieval heads' keys by position (context parallelism: N times the context), --split weights each
  layer's matrices (tensor parallelism: a model too big for one GPU). --ranks N runs such a group's ranks in the engine
  worker instead (the CPU; tests). A group runs requests one at a time, so --max-sequences, --step-tokens,
  --admission and --prefix-cache do not apply; --kv-budget is each rank's.
${POLICY_HELP}`;

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: ${serveHelp}\n`);
    return 0;
  }
  const options = parseOptions(argv, {
    ...POLICY_OPTIONS,
    model: { type: 'string' },
    shape: { type: 'string' },
    dtype: { type: 'string' },
    device: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    'served-model-name': { type: 'string' },
    'max-tokens': { type: 'string' },
    'max-sequences': { type: 'string' },
    'step-tokens': { type: 'string' },
    'max-waiting': { type: 'string' },
    'kv-budget': { type: 'string' },
    admission: { type: 'string' },
    'max-concurrent': { type: 'string' },
    'max-body': { type: 'string' },
    'api-key': { type: 'string', multiple: true } as unknown as { type: 'string' },
    cors: { type: 'string' },
    'chat-template': { type: 'string' },
    'prefix-cache': { type: 'string' },
    'log-level': { type: 'string' },
    gpus: { type: 'string' },
    ranks: { type: 'string' },
    split: { type: 'string' },
  });
  const group = groupOptions(options);
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  if (group?.processes && device === 'cpu') {
    throw new UsageError('--gpus: runs one process per GPU over NCCL: it needs CUDA (--ranks runs ranks on the CPU)', {
      option: 'device',
      received: device,
      expected: 'auto or cuda with --gpus',
    });
  }
  const host = typeof options.host === 'string' ? options.host : '127.0.0.1';
  const port = integerOption('port', options.port, 8000, 0, 65535);
  const maxTokens = integerOption('max-tokens', options['max-tokens'], 1024, 1);
  const maxSequences = integerOption('max-sequences', options['max-sequences'], 64, 1, 4096);
  const stepTokens = integerOption('step-tokens', options['step-tokens'], Math.max(1024, maxSequences), maxSequences);
  const maxWaiting = integerOption('max-waiting', options['max-waiting'], 256, 1);
  const kvBudget =
    options['kv-budget'] === undefined ? undefined : numberOption('kv-budget', options['kv-budget'], 0, 0.001) * 1e9;
  const admission = choiceOption('admission', options.admission, ['reserve', 'optimistic'] as const, 'reserve');
  // GB the prefix cache may hold (0: off); default half the KV budget.
  const prefixCache =
    options['prefix-cache'] === undefined
      ? undefined
      : numberOption('prefix-cache', options['prefix-cache'], 0, 0) * 1e9;
  const maxConcurrent = integerOption('max-concurrent', options['max-concurrent'], 256, 1);
  const maxBody = numberOption('max-body', options['max-body'], 32, 0.001, 4096) * 1024 * 1024;
  const logLevel = choiceOption(
    'log-level',
    options['log-level'],
    ['info', 'warn', 'error', 'silent'] as const,
    'info',
  );
  const attention = attentionPolicies(options.attention, ['full'])[0] ?? 'full';
  const source = await modelSource(options, group?.processes ? 'cuda' : device);
  const pattern = options.pattern ?? source.ownPattern;
  const settings = policySettings({ ...options, pattern });
  const apiKeys = [
    ...((options['api-key'] as unknown as string[] | undefined) ?? []),
    ...(readEnvironment().apiKeys ?? []),
  ];
  const cors =
    typeof options.cors === 'string'
      ? options.cors
          .split(',')
          .map((origin) => origin.trim())
          .filter(Boolean)
      : [];

  const id = typeof options['served-model-name'] === 'string' ? options['served-model-name'] : source.defaultId;
  const engineOptions = {
    maxSequences,
    stepTokens,
    maxWaiting,
    admission,
    ...(kvBudget === undefined ? {} : { kvBudgetBytes: kvBudget }),
    ...(prefixCache === undefined
      ? {}
      : { prefixCache: prefixCache === 0 ? (false as const) : { maxBytes: prefixCache } }),
  };
  const server = createServer({
    model: { id, config: source.config, tokenizer: source.tokenizer, chatTemplate: source.chatTemplate },
    resolver: new PolicyResolver(source.config, { ...settings, attention }),
    defaultMaxTokens: maxTokens,
    apiKeys,
    corsOrigins: cors,
    bodyLimit: Math.round(maxBody),
    maxConcurrentRequests: maxConcurrent,
    logger: logLevel === 'silent' ? false : { level: logLevel },
    // What /v1/stats reports of how the server was started (load generators record it beside their figures).
    settings: {
      model: source.description,
      tokenizer: source.tokenizer !== undefined,
      maxSequences,
      stepTokens,
      maxWaiting,
      admission,
      kvBudget: kvBudget === undefined ? 'default (85 % of free GPU memory, 2 GB on the CPU)' : `${kvBudget / 1e9} GB`,
      prefixCache:
        prefixCache === undefined
          ? 'default (half the KV budget)'
          : prefixCache === 0
            ? 'off'
            : `${prefixCache / 1e9} GB`,
      prefillChunk: settings.prefillChunk,
      ...(group
        ? { group: `${group.ranks} ${group.processes ? 'GPUs' : 'in-process ranks'}, ${group.split} split` }
        : {}),
    },
  });
  const { app } = server;
  await app.listen({ host, port });
  const on = group?.processes ? `cuda, ${group.ranks} GPUs` : device;
  app.log.info(`duo-serve: loading ${source.description} (${on}); /health says "loading" until it is ready`);

  let draining = false;
  const drain = async (signal: string) => {
    if (draining) return;
    draining = true;
    app.log.info(`duo-serve: ${signal}: draining (no new requests; running streams finish)`);
    await app.close();
    await server.engine?.close();
    app.log.info('duo-serve: drained');
  };
  const stopped = new Promise<void>((resolveStop) => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.once(signal, () => void drain(signal).then(resolveStop));
    }
  });

  try {
    // DUO_BATCH_INVARIANT and the CUDA knobs of the environment reach the worker's backend.
    const tuning = environmentTuning(readEnvironment());
    const model = { ...source.worker, tuning };
    const engine = group?.processes
      ? await startGroupProcesses(model, group, engineOptions, source, (line) => app.log.info(line))
      : inWorker(
          await startEngineWorker({
            model,
            engine: engineOptions,
            ...(group ? { group: { ranks: group.ranks, split: group.split } } : {}),
          }),
        );
    server.attach(engine);
    const where = group ? ` (${group.ranks} ${group.processes ? 'GPUs' : 'ranks'}, ${group.split} split)` : '';
    // Always said (whatever --log-level): scripts wait for this line.
    process.stderr.write(
      `duo-serve: ready on http://${host}:${(app.server.address() as { port: number }).port} — ${id} on ${engine.deviceName}${where}, ${attention} attention by default${source.tokenizer ? '' : '; no tokenizer: token-id prompts only'}\n`,
    );
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    server.fail(reason);
    app.log.error(`duo-serve: the model could not be loaded: ${reason}`);
    await app.close();
    return 1;
  }
  await stopped;
  return 0;
}

/** --gpus / --ranks and --split: a parallel group, or undefined for the batch engine. */
interface GroupChoice {
  readonly ranks: number;
  /** One process per GPU (--gpus) rather than ranks in the engine worker (--ranks). */
  readonly processes: boolean;
  readonly split: ParallelSplit;
}

function groupOptions(options: Record<string, unknown>): GroupChoice | undefined {
  if (options.gpus !== undefined && options.ranks !== undefined) {
    throw new UsageError('--gpus and --ranks: give one (processes over NCCL, or ranks in the engine worker)', {
      option: 'ranks',
    });
  }
  const processes = options.gpus !== undefined;
  if (!processes && options.ranks === undefined) {
    if (options.split !== undefined) {
      throw new UsageError('--split: applies to a parallel group (--gpus N or --ranks N)', { option: 'split' });
    }
    return undefined;
  }
  const ranks = processes
    ? integerOption('gpus', options.gpus, 1, 1, 64)
    : integerOption('ranks', options.ranks, 1, 1, 64);
  const split = choiceOption('split', options.split, ['keys', 'weights'] as const, 'keys');
  for (const batchOnly of ['max-sequences', 'step-tokens', 'admission', 'prefix-cache'] as const) {
    if (options[batchOnly] === undefined) continue;
    throw new UsageError(
      `--${batchOnly}: applies to the batch engine; a parallel group (--${processes ? 'gpus' : 'ranks'}) runs one request at a time`,
      { option: batchOnly, received: String(options[batchOnly]) },
    );
  }
  return { ranks, processes, split };
}

/** --gpus: the rank processes, started and ready, behind the group engine (in this thread: it only relays). */
async function startGroupProcesses(
  model: WorkerModel,
  group: GroupChoice,
  engine: { maxWaiting: number; kvBudgetBytes?: number },
  source: ModelSource,
  log: (line: string) => void,
): Promise<ServeEngine> {
  const ranks = await startProcessGroup({
    model: { ...model, device: 'cuda' },
    ranks: group.ranks,
    split: group.split,
    progress: (line) => log(`duo-serve: ${line}`),
    ...(engine.kvBudgetBytes === undefined ? {} : { kvBudgetBytes: engine.kvBudgetBytes }),
  });
  const groupEngine = new GroupEngine(ranks, { config: source.config, tokenizer: source.tokenizer }, engine);
  return inThread(groupEngine, ranks.deviceName);
}

main(process.argv.slice(2)).then(
  (status) => {
    process.exitCode = status;
  },
  (error: unknown) => {
    if (UsageError.isInstance(error)) {
      process.stderr.write(`duo-serve: ${(error as Error).message}\n\nusage: ${serveHelp}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`duo-serve: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
