// Prometheus metrics: vLLM's names where vLLM has one (so existing dashboards work), and what no peer exports — the KV
// bytes and pages per region of the dual cache, and the token slots the streaming heads did not have to store.
import type { AttentionPolicy, ModelConfig } from '@duoattn/core';
import { policyPlan } from '@duoattn/dual-cache';
import type { BatchEngineStats } from '@duoattn/model';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

const LATENCY_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320,
];

/** One finished request, as the metrics count it. */
export interface FinishedRequest {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly cachedTokens: number;
  readonly finishReason: string;
  readonly firstTokenSeconds: number | undefined;
  readonly interTokenSeconds: readonly number[];
  readonly totalSeconds: number;
  readonly policy: AttentionPolicy;
}

export class ServeMetrics {
  readonly registry = new Registry();
  readonly #config: ModelConfig;
  readonly #modelName: string;
  readonly #running: Gauge;
  readonly #waiting: Gauge;
  readonly #usage: Gauge;
  readonly #kvBytes: Gauge;
  readonly #kvPages: Gauge;
  readonly #ttft: Histogram;
  readonly #itl: Histogram;
  readonly #e2e: Histogram;
  readonly #promptTokens: Counter;
  readonly #generationTokens: Counter;
  readonly #success: Counter;
  readonly #prefixQueries: Counter;
  readonly #prefixHits: Counter;
  readonly #streamingSaved: Counter;
  readonly #preemptions: Gauge;
  readonly #stats: () => Promise<BatchEngineStats | undefined>;

  constructor(config: ModelConfig, modelName: string, stats: () => Promise<BatchEngineStats | undefined>) {
    this.#config = config;
    this.#modelName = modelName;
    this.#stats = stats;
    const registry = this.registry;
    const labels = ['model_name'];
    this.#running = new Gauge({
      name: 'vllm:num_requests_running',
      help: 'Requests running in the engine (sequences in its steps)',
      labelNames: labels,
      registers: [registry],
    });
    this.#waiting = new Gauge({
      name: 'vllm:num_requests_waiting',
      help: 'Requests waiting for admission (KV pages or a slot)',
      labelNames: labels,
      registers: [registry],
    });
    this.#usage = new Gauge({
      name: 'vllm:kv_cache_usage_perc',
      help: 'Fraction of the KV page pool in use (1 = full)',
      labelNames: labels,
      registers: [registry],
    });
    this.#kvBytes = new Gauge({
      name: 'duoattn_kv_bytes',
      help: 'KV cache bytes in use per region of the dual cache (full: retrieval heads, streaming: sink + recent rings)',
      labelNames: [...labels, 'region'],
      registers: [registry],
    });
    this.#kvPages = new Gauge({
      name: 'duoattn_kv_pages',
      help: 'KV pool pages per state: in use by each region (full, streaming), free, held by the prefix cache (prefix_cache), in use by requests beside it (requests)',
      labelNames: [...labels, 'state'],
      registers: [registry],
    });
    this.#preemptions = new Gauge({
      name: 'duoattn_preemptions',
      help: 'Sequences preempted (evicted and recomputed) since the engine started',
      labelNames: labels,
      registers: [registry],
    });
    const histogram = (name: string, help: string) =>
      new Histogram({ name, help, labelNames: labels, buckets: LATENCY_BUCKETS, registers: [registry] });
    this.#ttft = histogram('vllm:time_to_first_token_seconds', 'Time to first token');
    this.#itl = histogram('vllm:inter_token_latency_seconds', 'Time between consecutive output tokens of a request');
    this.#e2e = histogram('vllm:e2e_request_latency_seconds', 'End-to-end request latency');
    const counter = (name: string, help: string, extra: string[] = []) =>
      new Counter({ name, help, labelNames: [...labels, ...extra], registers: [registry] });
    this.#promptTokens = counter('vllm:prompt_tokens_total', 'Prompt tokens processed');
    this.#generationTokens = counter('vllm:generation_tokens_total', 'Tokens generated');
    this.#success = counter('vllm:request_success_total', 'Requests finished, by reason', ['finished_reason']);
    this.#prefixQueries = counter('vllm:prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache');
    this.#prefixHits = counter('vllm:prefix_cache_hits_total', 'Prompt tokens found in the prefix cache');
    this.#streamingSaved = counter(
      'duoattn_streaming_tokens_saved_total',
      'Token × KV-head slots the streaming heads did not store (tokens past sink + recent, per streaming head and layer)',
    );
  }

  /** Counts a finished request. */
  finished(request: FinishedRequest): void {
    const model = { model_name: this.#modelName };
    this.#promptTokens.inc(model, request.promptTokens);
    this.#generationTokens.inc(model, request.completionTokens);
    this.#success.inc({ ...model, finished_reason: request.finishReason });
    this.#prefixQueries.inc(model, request.promptTokens);
    this.#prefixHits.inc(model, request.cachedTokens);
    if (request.firstTokenSeconds !== undefined) this.#ttft.observe(model, request.firstTokenSeconds);
    for (const gap of request.interTokenSeconds) this.#itl.observe(model, gap);
    this.#e2e.observe(model, request.totalSeconds);
    this.#streamingSaved.inc(
      model,
      streamingSaved(this.#config, request.policy, request.promptTokens + request.completionTokens),
    );
  }

  /** The text exposition of every metric, the engine's gauges read first. */
  async text(): Promise<string> {
    const stats = await this.#stats();
    if (stats) {
      const model = { model_name: this.#modelName };
      this.#running.set(model, stats.running);
      this.#waiting.set(model, stats.waiting);
      const { pool } = stats;
      this.#usage.set(model, pool.totalPages === 0 ? 0 : (pool.totalPages - pool.freePages) / pool.totalPages);
      this.#kvBytes.set({ ...model, region: 'full' }, pool.usedPages.full * pool.pageBytes);
      this.#kvBytes.set({ ...model, region: 'streaming' }, pool.usedPages.streaming * pool.pageBytes);
      this.#kvPages.set({ ...model, state: 'full' }, pool.usedPages.full);
      this.#kvPages.set({ ...model, state: 'streaming' }, pool.usedPages.streaming);
      this.#kvPages.set({ ...model, state: 'free' }, pool.freePages);
      // Pages the prefix cache holds, and what the requests hold beside it (0 when nothing runs).
      const cached = stats.prefixCache?.pages ?? 0;
      this.#kvPages.set({ ...model, state: 'prefix_cache' }, cached);
      this.#kvPages.set(
        { ...model, state: 'requests' },
        Math.max(0, pool.usedPages.full + pool.usedPages.streaming - cached),
      );
      this.#preemptions.set(model, stats.preemptions);
    }
    return this.registry.metrics();
  }
}

/** Token × KV-head slots a sequence of `tokens` did not store in its streaming heads. */
function streamingSaved(config: ModelConfig, policy: AttentionPolicy, tokens: number): number {
  if (policy.attention === 'full') return 0;
  const plan = policyPlan(config, policy);
  const beyond = Math.max(0, tokens - (plan.sink + plan.recent));
  return plan.retrievalHeads.reduce((sum, heads) => sum + (config.numKvHeads - heads.length) * beyond, 0);
}
