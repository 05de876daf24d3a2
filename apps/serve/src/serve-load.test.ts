// duo-bench serve-load against the built duo-serve with the demo model on the CPU, at small sizes: every figure of every
// policy × concurrency level present and sane, no KV pages left in use, the figure redrawn from the record; token-id
// prompts with ignore_eos give exactly max_tokens tokens; a prompt past the context is refused naming the option.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BENCH_CLI, metric, post, type ServeProcess, startServe } from './__fixtures__/serve-process.js';

const run = promisify(execFile);
const out = mkdtempSync(join(tmpdir(), 'serve-load-'));
let serve: ServeProcess;

beforeAll(async () => {
  serve = await startServe(['--log-level', 'warn']);
}, 90_000);

afterAll(async () => {
  await serve?.stop();
  rmSync(out, { recursive: true, force: true });
});

/** Runs duo-bench serve-load; resolves with the exit code and output, whatever the code. */
async function serveLoad(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, [BENCH_CLI, 'serve-load', ...args]).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (error: { code: number; stdout: string; stderr: string }) => error,
  );
}

interface Summary {
  p50: number;
  p99: number;
  mean: number;
  max: number;
  count: number;
}

describe('duo-bench serve-load on the demo model', () => {
  it('gives every figure for full and duo 50 % at concurrency 1 and 4; then no pages are in use', async () => {
    const file = join(out, 'load.json');
    const result = await serveLoad([
      '--url',
      serve.url,
      '--prompt-tokens',
      '256',
      '--output-tokens',
      '8',
      '--concurrency',
      '1,4',
      '--out',
      file,
    ]);
    expect(result.code, result.stderr).toBe(0);
    const record = JSON.parse(readFileSync(file, 'utf8'));
    expect(record.card).toMatch(/\S/);
    expect(record.commit).toMatch(/\S/);
    expect(record.settings).toMatchObject({
      model: 'duo-demo',
      promptTokens: 256,
      outputTokens: 8,
      concurrency: [1, 4],
      policies: [
        { label: 'full', attention: 'full' },
        { label: 'duo 50 %', attention: 'duo', sparsity: 0.5 },
      ],
      server: { tokenizer: true, prefixCache: 'default (half the KV budget)' },
    });
    expect(
      record.levels.map((level: { policy: string; concurrency: number }) => `${level.policy} × ${level.concurrency}`),
    ).toEqual(['full × 1', 'full × 4', 'duo 50 % × 1', 'duo 50 % × 4']);
    for (const level of record.levels) {
      const requests = Math.max(2, level.concurrency);
      expect(level).toMatchObject({ requests, completed: requests, failed: 0, errors: [], cachedPromptTokens: 0 });
      expect(level.prefixCacheHits).toBe(0);
      for (const name of ['ttftMs', 'itlMs', 'e2eMs', 'tpotMs'] as const) {
        const summary = level[name] as Summary;
        expect(summary.p50, name).toBeGreaterThan(0);
        expect(summary.p99, name).toBeGreaterThanOrEqual(summary.p50);
        expect(summary.max, name).toBeGreaterThanOrEqual(summary.p99);
      }
      expect(level.ttftMs.count).toBe(requests);
      expect(level.itlMs.count).toBe(requests * 7);
      expect(level.e2eMs.p50).toBeGreaterThan(level.ttftMs.p50);
      for (const name of ['wallSeconds', 'outputTokensPerSecond', 'promptTokensPerSecond', 'requestsPerSecond']) {
        expect(level[name], name).toBeGreaterThan(0);
      }
      expect(level.outputTokensPerSecond).toBeCloseTo(level.requestsPerSecond * 8, 6);
      expect(level.perRequest).toHaveLength(requests);
      for (const request of level.perRequest) {
        expect(request.outputTokens).toBe(8);
        expect(request.itlMs).toHaveLength(7);
        expect(request.itlMs.every((gap: number) => gap >= 0)).toBe(true);
        expect(request.ttftMs).toBeGreaterThan(0);
        expect(request.e2eMs).toBeGreaterThanOrEqual(request.ttftMs);
      }
    }
    expect(result.stdout).toMatch(/duo 50 % +× +4: TTFT p50 [\d.]+ s, p99 [\d.]+ s; ITL p50 [\d.]+ ms/);
    const metrics = await (await fetch(`${serve.url}/metrics`)).text();
    expect(metric(metrics, 'duoattn_kv_pages', { state: 'requests' })).toBe(0);

    const figure = join(out, 'load.svg');
    const redrawn = await serveLoad(['--from', file, '--plot', figure]);
    expect(redrawn.code, redrawn.stderr).toBe(0);
    const svg = readFileSync(figure, 'utf8');
    for (const text of ['Time to first token', 'Inter-token latency', 'concurrent requests', 'duo 50 % p99']) {
      expect(svg).toContain(text);
    }
  }, 180_000);

  it('token-id prompts with ignore_eos give exactly max_tokens tokens; return_token_ids streams one id a chunk', async () => {
    const prompt = Array.from({ length: 64 }, (_, i) => (i * 11 + 3) % 256);
    const whole = await post(`${serve.url}/v1/completions`, {
      prompt,
      max_tokens: 40,
      ignore_eos: true,
      temperature: 0,
      return_token_ids: true,
    });
    expect(whole.status).toBe(200);
    const choice = (whole.json as { choices: { token_ids: number[]; finish_reason: string }[] }).choices[0];
    expect(choice?.token_ids).toHaveLength(40);
    expect(choice?.finish_reason).toBe('length');
    expect(whole.json).toMatchObject({ usage: { prompt_tokens: 64, completion_tokens: 40 } });
    const response = await fetch(`${serve.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt,
        max_tokens: 40,
        ignore_eos: true,
        temperature: 0,
        stream: true,
        return_token_ids: true,
      }),
    });
    const ids = (await response.text())
      .split('\n\n')
      .filter((event) => event.startsWith('data: {'))
      .map((event) => JSON.parse(event.slice(6)).choices[0]?.token_ids as number[]);
    expect(ids.filter((chunk) => chunk.length > 0).every((chunk) => chunk.length === 1)).toBe(true);
    expect(ids.flat()).toEqual(choice?.token_ids);
  }, 60_000);

  it('refuses a prompt past the model context naming --prompt-tokens (exit 2), before sending anything', async () => {
    const result = await serveLoad(['--url', serve.url, '--prompt-tokens', '16k', '--output-tokens', '8']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      '--prompt-tokens: 16384 prompt + 8 output tokens per request but duo-demo holds 16384 tokens',
    );
  });
});
