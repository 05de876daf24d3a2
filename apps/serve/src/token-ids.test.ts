// duo-serve over a model without a tokenizer, as `--shape` serves one (random weights, here a tiny shape on the CPU in
// this thread): token-id prompts with ignore_eos give exactly max_tokens tokens, a chunk per token with its id; what
// needs text is a 400 naming the field; /v1/stats says what a load generator records; duo-bench serve-load runs on it.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RANDOM_WEIGHTS_SEED } from '@duoattn/app-kit';
import { type ModelConfig, SHAPES } from '@duoattn/core';
import { LlamaModel } from '@duoattn/model';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BENCH_CLI, metric, post, SERVE_CLI } from './__fixtures__/serve-process.js';
import { inThread } from './engine-host.js';
import { modelSource } from './model-source.js';
import { PolicyResolver } from './policies.js';
import { createServer, type DuoServer } from './server.js';

const run = promisify(execFile);

/** Llama-3-8B's layout at a size the CPU serves in a test. */
const TINY: ModelConfig = {
  ...(SHAPES['llama-3-8b'] as ModelConfig),
  vocabSize: 300,
  hiddenSize: 64,
  intermediateSize: 128,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  maxPositionEmbeddings: 2048,
  bosTokenId: 1,
  eosTokenIds: [2],
};

let model: LlamaModel;
let server: DuoServer;
let url: string;

beforeAll(async () => {
  model = LlamaModel.random(TINY, { device: 'cpu', dtype: 'f32', seed: RANDOM_WEIGHTS_SEED });
  server = createServer({
    model: { id: 'tiny', config: TINY, tokenizer: undefined, chatTemplate: undefined },
    resolver: new PolicyResolver(TINY, {
      attention: 'full',
      window: {},
      invert: false,
      prefillMask: 'exact',
      prefillChunk: 128,
      kvQuant: 'none',
    }),
    logger: false,
    settings: { model: 'tiny (random f32 weights)', prefixCache: 'off' },
  });
  server.attach(inThread(model.createBatchEngine({ prefixCache: false }), model.backend.deviceName));
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  url = `http://127.0.0.1:${(server.app.server.address() as { port: number }).port}`;
});

afterAll(async () => {
  await server?.app.close();
  await server?.engine?.close();
  model?.dispose();
});

/** The data lines of a server-sent event stream, parsed ([DONE] left out). */
async function streamed(body: object): Promise<{ choices?: { token_ids?: number[]; finish_reason?: string }[] }[]> {
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  expect(response.status).toBe(200);
  return (await response.text())
    .split('\n\n')
    .filter((event) => event.startsWith('data: ') && event !== 'data: [DONE]')
    .map((event) => JSON.parse(event.slice(6)));
}

describe('duo-serve without a tokenizer', () => {
  it('token-id prompts with ignore_eos give exactly max_tokens tokens, one chunk and id each, in both policies', async () => {
    const prompt = Array.from({ length: 200 }, (_, i) => (i * 37 + 5) % TINY.vocabSize);
    for (const policy of [{}, { attention: 'duo', sparsity: 0.5 }]) {
      const chunks = await streamed({
        prompt,
        max_tokens: 12,
        ignore_eos: true,
        stream_options: { include_usage: true },
        ...policy,
      });
      const tokenChunks = chunks.filter((chunk) => (chunk.choices?.[0]?.token_ids?.length ?? 0) > 0);
      expect(tokenChunks).toHaveLength(12);
      expect(tokenChunks.every((chunk) => chunk.choices?.[0]?.token_ids?.length === 1)).toBe(true);
      expect(chunks.at(-2)?.choices?.[0]?.finish_reason).toBe('length');
      expect(chunks.at(-1)).toMatchObject({ usage: { prompt_tokens: 200, completion_tokens: 12 } });
      const whole = await post(`${url}/v1/completions`, { prompt, max_tokens: 12, ignore_eos: true, ...policy });
      expect(whole.status).toBe(200);
      const choice = (whole.json as { choices: { text: string; token_ids: number[]; finish_reason: string }[] })
        .choices[0];
      expect(choice?.token_ids).toHaveLength(12);
      expect(choice?.text).toBe('');
      expect(choice?.finish_reason).toBe('length');
    }
  });

  it('what needs text is a 400 naming the field', async () => {
    const ids = [5, 6, 7];
    const cases: [string, object, string][] = [
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] }, 'messages'],
      ['/v1/completions', { prompt: 'hello' }, 'prompt'],
      ['/v1/completions', { prompt: ids, stop: 'x' }, 'stop'],
      ['/v1/completions', { prompt: ids, logprobs: 2 }, 'logprobs'],
      ['/tokenize', { prompt: 'hello' }, 'prompt'],
      ['/detokenize', { tokens: ids }, 'tokens'],
    ];
    for (const [path, body, param] of cases) {
      const answer = await post(`${url}${path}`, body);
      expect(answer.status, path).toBe(400);
      expect(answer.json).toMatchObject({ error: { code: 'no_tokenizer', param } });
      expect((answer.json as { error: { message: string } }).error.message).toContain("'tiny' has no tokenizer");
    }
    const outside = await post(`${url}/v1/completions`, { prompt: [TINY.vocabSize] });
    expect(outside.status).toBe(400);
    expect(outside.json).toMatchObject({ error: { param: 'prompt.0' } });
  });

  it('/v1/stats says what a load generator records: device, vocabulary, context, no tokenizer, settings', async () => {
    const stats = await (await fetch(`${url}/v1/stats`)).json();
    expect(stats).toMatchObject({
      model: 'tiny',
      state: 'ready',
      device: model.backend.deviceName,
      vocabSize: TINY.vocabSize,
      contextLength: TINY.maxPositionEmbeddings,
      tokenizer: false,
      settings: { prefixCache: 'off' },
    });
  });

  it('duo-bench serve-load measures full and duo 50 % on it; no KV pages stay in use', async () => {
    const out = mkdtempSync(join(tmpdir(), 'serve-load-'));
    try {
      const file = join(out, 'load.json');
      const { stdout } = await run(process.execPath, [
        BENCH_CLI,
        'serve-load',
        '--url',
        `${url}/v1`,
        '--prompt-tokens',
        '96',
        '--output-tokens',
        '5',
        '--concurrency',
        '1,3',
        '--out',
        file,
      ]);
      expect(stdout).toContain('serve-load: tiny on');
      const record = JSON.parse(readFileSync(file, 'utf8'));
      expect(record.card).toBe(model.backend.deviceName);
      expect(record.settings.server).toEqual({ model: 'tiny (random f32 weights)', prefixCache: 'off' });
      expect(record.levels.map((level: { policy: string; concurrency: number }) => level.policy)).toEqual([
        'full',
        'full',
        'duo 50 %',
        'duo 50 %',
      ]);
      for (const level of record.levels) {
        expect(level).toMatchObject({ completed: level.requests, failed: 0, cachedPromptTokens: 0 });
        expect(level.perRequest.every((request: { itlMs: number[] }) => request.itlMs.length === 4)).toBe(true);
      }
      const text = await (await fetch(`${url}/metrics`)).text();
      expect(metric(text, 'duoattn_kv_pages', { state: 'requests' })).toBe(0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe('duo-serve --shape', () => {
  it('serves random weights of the named shape in its dtype, with no tokenizer', async () => {
    const source = await modelSource({ shape: 'llama-3-8b-1048k' }, 'cuda');
    expect(source).toMatchObject({
      defaultId: 'llama-3-8b-1048k',
      tokenizer: undefined,
      description: 'llama-3-8b-1048k (random bf16 weights made on the device)',
      worker: { random: SHAPES['llama-3-8b-1048k'], device: 'cuda', dtype: 'bf16', seed: RANDOM_WEIGHTS_SEED },
    });
    expect(source.config.maxPositionEmbeddings).toBe(1048576);
    expect((await modelSource({ shape: 'llama-3-8b', dtype: 'f16' }, 'auto')).worker).toMatchObject({ dtype: 'f16' });
  });

  it('refuses what does not go with a shape, naming the flag, before any work (exit 2)', async () => {
    const cases: [string[], string][] = [
      [['--shape', 'llama-9'], '--shape: expected one of llama-3-8b'],
      [['--shape', 'llama-3-8b', '--model', 'models/duo-demo'], '--model: does not go with --shape'],
      [['--shape', 'llama-3-8b', '--chat-template', 'x.jinja'], '--chat-template: does not go with --shape'],
      [['--shape', 'llama-3-8b', '--dtype', 'f8'], '--dtype: expected one of bf16, f16, f32 but received "f8"'],
      [['--dtype', 'bf16'], '--dtype: applies to --shape'],
    ];
    for (const [flags, message] of cases) {
      const failure = await run(process.execPath, [SERVE_CLI, '--device', 'cpu', '--port', '0', ...flags]).then(
        () => ({ code: 0, stderr: '' }),
        (error: { code: number; stderr: string }) => error,
      );
      expect(failure.code, flags.join(' ')).toBe(2);
      expect(failure.stderr).toContain(message);
    }
  });
});
