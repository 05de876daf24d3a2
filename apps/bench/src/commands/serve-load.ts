import {
  attentionPolicies,
  figurePath,
  integerListOption,
  integerOption,
  numberOption,
  outputOption,
  parseOptions,
  policySettings,
  resultRecord,
  runLabel,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import { type AttentionPolicyName, DEFAULT_SPARSITY } from '@duoattn/core';
import { RunFailure } from '../failure.js';
import { interruptionPoint } from '../interrupt.js';
import { readJsonOption } from '../read-json.js';
import {
  connectionPool,
  readyServer,
  type ServerStats,
  type StreamedCompletion,
  serverStats,
  streamCompletion,
} from '../serve-client.js';
import { check, type LoadLevel, levelLine, loadFigure, summarize } from '../serve-load-figures.js';

export const serveLoadHelp = `duo-bench serve-load [--url http://127.0.0.1:8000] [--attention full,duo] [--sparsity 0.5] [--sink N]
                     [--recent N] [--concurrency 1,8,32] [--requests N] [--prompt-tokens 32k] [--output-tokens 64]
                     [--warmup 1] [--timeout 900] [--seed 1] [--card NAME] [--out FILE] [--plot FILE.svg|FILE.png]
       duo-bench serve-load --from FILE --plot FILE.svg|FILE.png
  Load on a running duo-serve (start it first; duo-serve --shape NAME serves random weights): for each policy (sent
  per request as duoattn's extensions, so one server runs them all; duo at --sparsity) and each concurrency level,
  --requests streamed /v1/completions (default max(2, concurrency)) with at most that many in flight, each a distinct
  random token-id prompt of --prompt-tokens (its first tokens differ from every other request's, so no prompt reuses
  another's cached prefix) and exactly --output-tokens tokens (ignore_eos). Per request: time to first token, every
  inter-token gap, end-to-end latency; per level: their p50 and p99, output tokens/s and requests/s over the level's
  wall time. --warmup requests per policy first (not measured). --timeout: seconds one request may take. The record
  holds the server's device, model and settings (/v1/stats) and the commit (DUO_COMMIT); a request that fails, or a
  run that stops part way (a failed warm-up, a server gone), fails the command (status 1) after the record (with
  what was measured) is written.`;

/** The most requests in flight a level may ask for, and the most requests a level may send. */
const MOST_CONCURRENCY = 1024;
const MOST_REQUESTS = 4096;

/** One policy as the requests carry it. */
interface LoadPolicy {
  readonly label: string;
  readonly extensions: Readonly<Record<string, unknown>>;
}

export async function serveLoadCommand(
  argv: string[],
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<object> {
  const options = parseOptions(argv, {
    url: { type: 'string' },
    attention: { type: 'string' },
    sparsity: { type: 'string' },
    sink: { type: 'string' },
    recent: { type: 'string' },
    concurrency: { type: 'string' },
    requests: { type: 'string' },
    'prompt-tokens': { type: 'string' },
    'output-tokens': { type: 'string' },
    warmup: { type: 'string' },
    timeout: { type: 'string' },
    seed: { type: 'string' },
    card: { type: 'string' },
    out: { type: 'string' },
    plot: { type: 'string' },
    from: { type: 'string' },
  });
  if (options.plot !== undefined) outputOption('plot', figurePath('plot', String(options.plot)));
  outputOption('out', options.out);
  if (options.from !== undefined) return redraw(String(options.from), options.plot as string | undefined, log);
  const base = serverUrl(options.url);
  const attentions = attentionPolicies(options.attention, ['full', 'duo'], true);
  const policies = loadPolicies(attentions, policySettings(options, attentions));
  const levels = integerListOption('concurrency', options.concurrency, [1, 8, 32]);
  for (const level of levels) {
    if (level < 1 || level > MOST_CONCURRENCY)
      throw UsageError.invalid('concurrency', `levels in [1, ${MOST_CONCURRENCY}]`, options.concurrency);
  }
  const requestsOption =
    options.requests === undefined ? undefined : integerOption('requests', options.requests, 0, 1, MOST_REQUESTS);
  const promptTokens = integerOption('prompt-tokens', options['prompt-tokens'], 32768, 2, 1 << 24);
  const outputTokens = integerOption('output-tokens', options['output-tokens'], 64, 2, 1 << 20);
  const warmup = integerOption('warmup', options.warmup, 1, 0, 16);
  const timeoutMs = numberOption('timeout', options.timeout, 900, 1, 24 * 3600) * 1000;
  const seed = integerOption('seed', options.seed, 1, 0, 2 ** 31 - 1);

  const server = await readyServer(base);
  if (promptTokens + outputTokens > server.contextLength) {
    throw new UsageError(
      `--prompt-tokens: ${promptTokens} prompt + ${outputTokens} output tokens per request but ${server.model} holds ${server.contextLength} tokens (its max_position_embeddings); serve a shape with a longer context (e.g. duo-serve --shape llama-3-8b-1048k) or ask for fewer`,
      { option: 'prompt-tokens', received: String(promptTokens), expected: `at most ${server.contextLength} in all` },
    );
  }
  const totalRequests =
    policies.length * (warmup + levels.reduce((sum, level) => sum + (requestsOption ?? Math.max(2, level)), 0));
  if (totalRequests > server.vocabSize ** 2) {
    throw new UsageError(`--requests: ${totalRequests} requests in all cannot all start differently`, {
      option: 'requests',
    });
  }
  log(
    `serve-load: ${server.model} on ${server.device ?? 'an unnamed device'} at ${base.href}: ${policies.map((policy) => policy.label).join(', ')} × concurrency ${levels.join(', ')}; ${promptTokens}-token prompts, ${outputTokens} output tokens`,
  );
  const plan: LoadPlan = { policies, levels, requests: requestsOption, promptTokens, outputTokens, warmup, timeoutMs };
  const { results, stopped } = await measure(
    base,
    plan,
    new PromptMaker(server.vocabSize, promptTokens, seed),
    log,
    signal,
  );
  const settings = {
    url: base.href,
    model: server.model,
    server: server.settings,
    serverPolicyDefaults: server.policy,
    kvPoolBytes: server.kv?.totalBytes,
    policies: policies.map((policy) => ({ label: policy.label, ...policy.extensions })),
    concurrency: levels,
    requestsPerLevel: requestsOption ?? 'max(2, concurrency)',
    promptTokens,
    outputTokens,
    warmupPerPolicy: warmup,
    timeoutSeconds: timeoutMs / 1000,
    seed,
    prompts:
      'random token ids, distinct per request: the first two tokens number the request, so no prompt shares a cached prefix with another',
    requests:
      'POST /v1/completions, stream with include_usage, ignore_eos, temperature 0, return_token_ids (each token timed on arrival)',
    timing:
      'client wall clock on the load generator: TTFT = send → first token; ITL = gaps between consecutive tokens; e2e = send → end of stream; throughput over the level’s wall time (first send → last end)',
  };
  const card = typeof options.card === 'string' ? options.card : (server.device ?? 'unknown');
  const figures = { levels: results, ...(stopped === undefined ? {} : { stopped }) };
  const record = options.out
    ? writeResult(String(options.out), card, settings, figures)
    : resultRecord(card, settings, figures);
  if (options.out) log(`wrote ${String(options.out)}`);
  if (options.plot) {
    await writeFigure(String(options.plot), loadFigure(results));
    log(`wrote ${String(options.plot)}`);
  }
  const written = options.out ? `; the record (${String(options.out)}) holds what was measured` : '';
  if (stopped !== undefined) throw new RunFailure(`stopped after ${results.length} levels: ${stopped}${written}`);
  const failed = results.reduce((sum, level) => sum + level.failed, 0);
  if (failed > 0) {
    const first = results.find((level) => level.errors.length > 0);
    throw new RunFailure(
      `${failed} of ${results.reduce((sum, level) => sum + level.requests, 0)} requests failed (first, ${first?.policy} at concurrency ${first?.concurrency}: ${first?.errors[0]})${options.out ? `; the record (${String(options.out)}) lists them` : ''}`,
    );
  }
  return record;
}

/** What one run measures: the policies × concurrency levels, the requests' shape and their bounds. */
interface LoadPlan {
  readonly policies: readonly LoadPolicy[];
  readonly levels: readonly number[];
  /** Requests per level; absent: max(2, concurrency). */
  readonly requests: number | undefined;
  readonly promptTokens: number;
  readonly outputTokens: number;
  readonly warmup: number;
  readonly timeoutMs: number;
}

/**
 * Runs the plan: per policy its warm-up, then each level with the server idle before the next. A run that stops part
 * way (a failed warm-up, a server that went away: a RunFailure) keeps what it measured, with the reason.
 */
async function measure(
  base: URL,
  plan: LoadPlan,
  prompts: PromptMaker,
  log: (line: string) => void,
  signal: AbortSignal | undefined,
): Promise<{ results: LoadLevel[]; stopped?: string }> {
  const { policies, levels, promptTokens, outputTokens, warmup, timeoutMs } = plan;
  const results: LoadLevel[] = [];
  try {
    for (const policy of policies) {
      const body = (prompt: readonly number[]) => ({
        prompt,
        max_tokens: outputTokens,
        ignore_eos: true,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        return_token_ids: true,
        ...policy.extensions,
      });
      if (warmup > 0) {
        await interruptionPoint(signal, `${policy.label} warm-up`);
        const warm = await runLevel(base, 1, warmup, () => body(prompts.next()), timeoutMs);
        const problem = warm.find((request) => check(request, outputTokens) !== undefined);
        if (problem) {
          throw new RunFailure(`the ${policy.label} warm-up request failed: ${check(problem, outputTokens)}`);
        }
      }
      for (const concurrency of levels) {
        await interruptionPoint(signal, `${policy.label} at concurrency ${concurrency}`);
        const count = plan.requests ?? Math.max(2, concurrency);
        const before = await serverStats(base);
        const started = performance.now();
        const streamed = await runLevel(base, concurrency, count, () => body(prompts.next()), timeoutMs);
        const wallSeconds = (performance.now() - started) / 1000;
        const after = await idleServer(base);
        const level = summarize(policy.label, concurrency, streamed, outputTokens, promptTokens, wallSeconds);
        const hits = (after.prefixCache?.hits ?? 0) - (before.prefixCache?.hits ?? 0);
        const row = { ...level, prefixCacheHits: hits };
        results.push(row);
        log(levelLine(row));
      }
    }
  } catch (error) {
    if (!RunFailure.isInstance(error)) throw error;
    return { results, stopped: error.message };
  }
  return { results };
}

/** --url: duo-serve's base URL (an OpenAI-style ".../v1" is taken too). */
function serverUrl(value: unknown): URL {
  const text = value === undefined ? 'http://127.0.0.1:8000' : String(value);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw UsageError.invalid('url', 'an http(s) URL such as http://127.0.0.1:8000', text);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw UsageError.invalid('url', 'an http(s) URL such as http://127.0.0.1:8000', text);
  url.pathname = `${url.pathname.replace(/\/v1\/?$/, '').replace(/\/$/, '')}/`;
  url.search = '';
  url.hash = '';
  return url;
}

/** The policies as request extensions: duo at --sparsity (labelled by its share of retrieval heads, "duo 50 %"). */
function loadPolicies(
  attentions: readonly AttentionPolicyName[],
  settings: ReturnType<typeof policySettings>,
): LoadPolicy[] {
  const sparsity = settings.sparsity ?? DEFAULT_SPARSITY;
  return attentions.map((attention) => {
    const window = attention === 'full' ? {} : settings.window;
    const label = attention === 'duo' ? `duo ${Math.round((1 - sparsity) * 100)} %` : attention;
    return {
      label: runLabel(label, settings.kvQuant),
      extensions: { attention, ...(attention === 'duo' ? { sparsity } : {}), ...window },
    };
  });
}

/** Runs `count` requests with at most `concurrency` in flight (each slot sends its next as its last one ends). */
async function runLevel(
  base: URL,
  concurrency: number,
  count: number,
  body: () => object,
  timeoutMs: number,
): Promise<StreamedCompletion[]> {
  // Bodies are made first: the clock of each request starts at its send, not while its prompt is drawn.
  const bodies = Array.from({ length: count }, body);
  const pool = connectionPool(base, concurrency);
  const results: StreamedCompletion[] = new Array(count);
  let next = 0;
  const slot = async () => {
    for (let index = next++; index < count; index = next++) {
      results[index] = await streamCompletion(base, bodies[index] as object, pool, timeoutMs);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, slot));
  } finally {
    pool.destroy();
  }
  return results;
}

/** Waits (up to a minute) until the server runs and queues nothing, so levels do not overlap; returns its stats. */
async function idleServer(base: URL): Promise<ServerStats> {
  for (let waited = 0; ; waited += 100) {
    const stats = await serverStats(base);
    if (stats.running + stats.waiting === 0) return stats;
    if (waited >= 60_000) {
      throw new RunFailure(
        `the server still runs ${stats.running} and queues ${stats.waiting} requests a minute after the level's last one ended`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Random token ids for prompts, distinct per request: the first two tokens number the request (base `vocabSize`), the
 * rest come from a seeded generator, so a run is the same run again and no prompt starts like another.
 */
class PromptMaker {
  readonly #vocabSize: number;
  readonly #length: number;
  readonly #seed: number;
  #index = 0;

  constructor(vocabSize: number, length: number, seed: number) {
    this.#vocabSize = vocabSize;
    this.#length = length;
    this.#seed = seed;
  }

  next(): number[] {
    const index = this.#index++;
    const vocab = this.#vocabSize;
    let state = (Math.imul(this.#seed, 0x9e3779b1) + Math.imul(index, 0x85ebca6b)) >>> 0;
    const prompt = new Array<number>(this.#length);
    prompt[0] = index % vocab;
    prompt[1] = Math.floor(index / vocab) % vocab;
    for (let i = 2; i < this.#length; i++) {
      // mulberry32
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      prompt[i] = Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * vocab);
    }
    return prompt;
  }
}

/** --from FILE: draws an earlier run's figure (runs on the GPU machine write JSON; figures are drawn here). */
async function redraw(file: string, plot: string | undefined, log: (line: string) => void): Promise<object> {
  const record = readJsonOption<{ levels?: LoadLevel[] }>('from', file);
  if (!Array.isArray(record.levels) || record.levels.some((level) => typeof level?.ttftMs?.p50 !== 'number'))
    throw new UsageError(`--from: "${file}" has no levels (not a duo-bench serve-load record)`, { option: 'from' });
  for (const level of record.levels) log(levelLine(level));
  if (plot) {
    await writeFigure(plot, loadFigure(record.levels));
    log(`wrote ${plot}`);
  }
  return record;
}
