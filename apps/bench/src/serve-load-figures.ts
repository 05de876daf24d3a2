// duo-bench serve-load's figures: what a level's streamed requests come to (per request, p50 / p99 per level,
// throughput), the line the log prints per level and the figure drawn from a record's levels.
import { type FigurePanel, lineChart, quantile } from '@duoattn/app-kit';
import type { StreamedCompletion } from './serve-client.js';

/** One request's figures (ms). */
export interface RequestFigures {
  readonly ttftMs: number;
  readonly e2eMs: number;
  readonly outputTokens: number;
  readonly cachedTokens: number;
  readonly itlMs: readonly number[];
}

/** p50 / p99 / mean / max of a list of ms. */
export interface Summary {
  readonly p50: number;
  readonly p99: number;
  readonly mean: number;
  readonly max: number;
  readonly count: number;
}

/** One policy × concurrency level. */
export interface LoadLevel {
  readonly policy: string;
  readonly concurrency: number;
  readonly requests: number;
  readonly completed: number;
  readonly failed: number;
  readonly errors: readonly string[];
  readonly wallSeconds: number;
  readonly ttftMs: Summary;
  readonly itlMs: Summary;
  readonly e2eMs: Summary;
  /** Per request: (e2e − ttft) / (output tokens − 1). */
  readonly tpotMs: Summary;
  readonly outputTokensPerSecond: number;
  readonly promptTokensPerSecond: number;
  readonly requestsPerSecond: number;
  /** Prompt tokens the server served from its prefix cache (usage.prompt_tokens_details.cached_tokens): 0 expected. */
  readonly cachedPromptTokens: number;
  readonly prefixCacheHits: number;
  readonly perRequest: readonly RequestFigures[];
}

/** What is wrong with a streamed request that should have completed with exactly `outputTokens` tokens, if anything. */
export function check(request: StreamedCompletion, outputTokens: number): string | undefined {
  if (request.error) return request.error;
  if (request.tokenTimes.length !== outputTokens || request.finishReason !== 'length') {
    return `${request.tokenTimes.length} tokens (finish_reason ${request.finishReason}) where ${outputTokens} were asked for with ignore_eos`;
  }
  if (request.usage && request.usage.completion_tokens !== outputTokens) {
    return `usage says ${request.usage.completion_tokens} completion tokens where ${outputTokens} streamed`;
  }
  return undefined;
}

/** The figures of one level from its requests; failed requests are counted, not measured. */
export function summarize(
  policy: string,
  concurrency: number,
  streamed: readonly StreamedCompletion[],
  outputTokens: number,
  promptTokens: number,
  wallSeconds: number,
): Omit<LoadLevel, 'prefixCacheHits'> {
  const errors = streamed.map((request) => check(request, outputTokens)).filter((error) => error !== undefined);
  const complete = streamed.filter((request) => check(request, outputTokens) === undefined);
  const perRequest = complete.map((request): RequestFigures => {
    const times = request.tokenTimes;
    return {
      ttftMs: round(times[0] as number),
      e2eMs: round(request.endMs),
      outputTokens: times.length,
      cachedTokens: request.usage?.prompt_tokens_details?.cached_tokens ?? 0,
      itlMs: times.slice(1).map((time, i) => round(time - (times[i] as number))),
    };
  });
  const output = perRequest.reduce((sum, request) => sum + request.outputTokens, 0);
  return {
    policy,
    concurrency,
    requests: streamed.length,
    completed: complete.length,
    failed: errors.length,
    errors: [...new Set(errors)].slice(0, 5),
    wallSeconds,
    ttftMs: summary(perRequest.map((request) => request.ttftMs)),
    itlMs: summary(perRequest.flatMap((request) => request.itlMs)),
    e2eMs: summary(perRequest.map((request) => request.e2eMs)),
    tpotMs: summary(perRequest.map((request) => (request.e2eMs - request.ttftMs) / (request.outputTokens - 1))),
    outputTokensPerSecond: output / wallSeconds,
    promptTokensPerSecond: (complete.length * promptTokens) / wallSeconds,
    requestsPerSecond: complete.length / wallSeconds,
    cachedPromptTokens: perRequest.reduce((sum, request) => sum + request.cachedTokens, 0),
    perRequest,
  };
}

function summary(values: readonly number[]): Summary {
  const mean = values.length === 0 ? 0 : values.reduce((sum, value) => sum + value, 0) / values.length;
  return {
    p50: round(quantile(values, 0.5)),
    p99: round(quantile(values, 0.99)),
    mean: round(mean),
    max: round(values.length === 0 ? 0 : Math.max(...values)),
    count: values.length,
  };
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;

export function levelLine(level: LoadLevel): string {
  const failed = level.failed > 0 ? `; ${level.failed} FAILED (${level.errors[0]})` : '';
  return `${level.policy.padEnd(12)} × ${String(level.concurrency).padStart(3)}: TTFT p50 ${(level.ttftMs.p50 / 1000).toFixed(3)} s, p99 ${(level.ttftMs.p99 / 1000).toFixed(3)} s; ITL p50 ${level.itlMs.p50.toFixed(2)} ms, p99 ${level.itlMs.p99.toFixed(2)} ms; ${level.outputTokensPerSecond.toFixed(1)} output tokens/s, ${level.requestsPerSecond.toFixed(3)} requests/s (${level.completed}/${level.requests} in ${level.wallSeconds.toFixed(1)} s)${failed}`;
}

/** TTFT, inter-token latency, output throughput and request throughput against concurrency, one line per policy. */
export function loadFigure(levels: readonly LoadLevel[]) {
  const policies = [...new Set(levels.map((level) => level.policy))];
  const series = (value: (level: LoadLevel) => number, suffix = '') =>
    policies.map((policy) => ({
      label: `${policy}${suffix}`,
      points: levels
        .filter((level) => level.policy === policy && level.completed > 0)
        .map((level) => ({ x: level.concurrency, y: value(level) })),
    }));
  const panel = (title: string, yTitle: string, lines: FigurePanel['series']): FigurePanel => ({
    title,
    xTitle: 'concurrent requests',
    yTitle,
    xScale: 'log2',
    series: lines,
  });
  return lineChart({
    panels: [
      panel('Time to first token', 'seconds', [
        ...series((level) => level.ttftMs.p50 / 1000, ' p50'),
        ...series((level) => level.ttftMs.p99 / 1000, ' p99'),
      ]),
      panel('Inter-token latency', 'ms', [
        ...series((level) => level.itlMs.p50, ' p50'),
        ...series((level) => level.itlMs.p99, ' p99'),
      ]),
      panel(
        'Output throughput',
        'output tokens per second',
        series((level) => level.outputTokensPerSecond),
      ),
      panel(
        'Request throughput',
        'requests per second',
        series((level) => level.requestsPerSecond),
      ),
    ],
    columns: 2,
    legendTitle: 'policy',
  });
}
