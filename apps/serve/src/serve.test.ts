// duo-serve end to end, as users run it (the built CLI, the engine in its worker thread, the demo model on the CPU):
// the official openai client (chat and completions, streamed and whole, usage) giving duo-bench generate's text at
// temperature 0; 64 concurrent streams; errors in OpenAI's shape; clients that leave mid-stream; SIGTERM's drain.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { benchGenerate, metric, post, type ServeProcess, startServe } from './__fixtures__/serve-process.js';

let serve: ServeProcess;
let client: OpenAI;

beforeAll(async () => {
  serve = await startServe(['--log-level', 'warn']);
  client = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: 'unused', maxRetries: 0 });
}, 90_000);

afterAll(async () => {
  await serve?.stop();
});

async function pagesInUse(): Promise<number> {
  const text = await (await fetch(`${serve.url}/metrics`)).text();
  return metric(text, 'duoattn_kv_pages', { state: 'requests' }) ?? -1;
}

async function settle(): Promise<void> {
  for (let i = 0; i < 100 && (await pagesInUse()) !== 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
}

describe('the openai client against duo-serve', () => {
  it('completions, whole and streamed, equal duo-bench generate at temperature 0, with usage', async () => {
    const prompt = 'The little dragon found a key';
    for (const [policy, extra] of [
      [[], {}],
      [
        ['--attention', 'duo', '--pattern', 'models/duo-demo/pattern', '--sparsity', '0.5', '--kv-quant', 'int8'],
        { attention: 'duo', sparsity: 0.5, kv_quant: 'int8' },
      ],
    ] as const) {
      const expected = benchGenerate(prompt, 24, [...policy]);
      const whole = await client.completions.create({
        model: 'duo-demo',
        prompt,
        max_tokens: 24,
        temperature: 0,
        ...extra,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      expect(prompt + (whole.choices[0]?.text ?? '')).toBe(expected);
      expect(whole.choices[0]?.finish_reason).toBe('length');
      expect(whole.usage).toMatchObject({
        completion_tokens: 24,
        total_tokens: (whole.usage?.prompt_tokens ?? 0) + 24,
      });
      const stream = await client.completions.create({
        model: 'duo-demo',
        prompt,
        max_tokens: 24,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        ...extra,
      } as OpenAI.CompletionCreateParamsStreaming);
      let text = '';
      let usage: OpenAI.CompletionUsage | undefined;
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        text += chunk.choices[0]?.text ?? '';
        if (chunk.usage) usage = chunk.usage;
      }
      expect(prompt + text).toBe(expected);
      expect(chunks).toBeGreaterThan(2);
      expect(usage?.completion_tokens).toBe(24);
    }
  }, 120_000);

  it('chat, whole and streamed, with usage, logprobs and n', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me about the sea.' }];
    const whole = await client.chat.completions.create({
      model: 'duo-demo',
      messages,
      max_tokens: 16,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const answer = whole.choices[0]?.message.content ?? '';
    expect(answer.length).toBeGreaterThan(0);
    expect(whole.usage?.completion_tokens).toBe(16);
    expect(whole.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(0);
    const content = whole.choices[0]?.logprobs?.content ?? [];
    expect(content).toHaveLength(16);
    expect(content[0]?.top_logprobs).toHaveLength(3);
    expect(content[0]?.logprob).toBeLessThanOrEqual(0);
    const stream = await client.chat.completions.create({
      model: 'duo-demo',
      messages,
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed = '';
    let finish: string | null | undefined;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(streamed).toBe(answer);
    expect(finish).toBe('length');
    expect(usage?.total_tokens).toBe((usage?.prompt_tokens ?? 0) + 16);
    const several = await client.chat.completions.create({
      model: 'duo-demo',
      messages,
      max_tokens: 8,
      temperature: 0.9,
      seed: 5,
      n: 3,
    });
    expect(several.choices.map((choice) => choice.index)).toEqual([0, 1, 2]);
    expect(several.usage?.completion_tokens).toBe(24);
    const models = await client.models.list();
    expect(models.data.map((model) => model.id)).toEqual(['duo-demo']);
  }, 60_000);

  it('stop strings end the answer and are left out of it', async () => {
    const reference = await client.completions.create({
      model: 'duo-demo',
      prompt: 'Once upon a time',
      max_tokens: 20,
      temperature: 0,
    });
    const text = reference.choices[0]?.text ?? '';
    const stop = text.slice(6, 8);
    const stopped = await client.completions.create({
      model: 'duo-demo',
      prompt: 'Once upon a time',
      max_tokens: 20,
      temperature: 0,
      stop,
    });
    expect(stopped.choices[0]?.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(stopped.choices[0]?.finish_reason).toBe('stop');
  }, 30_000);
});

describe('load and faults', () => {
  it('64 concurrent streaming chats all complete with the answers they give alone; then no pages are in use', async () => {
    const questions = Array.from({ length: 8 }, (_, i) => `Question ${i}: where is the key number ${i * 7}?`);
    const alone = new Map<string, string>();
    for (const question of questions) {
      const reply = await client.chat.completions.create({
        model: 'duo-demo',
        messages: [{ role: 'user', content: question }],
        max_tokens: 24,
        temperature: 0,
      });
      alone.set(question, reply.choices[0]?.message.content ?? '');
    }
    const streams = Array.from({ length: 64 }, async (_, i) => {
      const question = questions[i % questions.length] as string;
      const stream = await client.chat.completions.create({
        model: 'duo-demo',
        messages: [{ role: 'user', content: question }],
        max_tokens: 24,
        temperature: 0,
        stream: true,
      });
      let text = '';
      let finish: string | null = null;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      return { question, text, finish };
    });
    const results = await Promise.all(streams);
    for (const result of results) {
      expect(result.finish).toBe('length');
      expect(result.text).toBe(alone.get(result.question));
    }
    await settle();
    expect(await pagesInUse()).toBe(0);
  }, 180_000);

  it('50 clients that leave mid-stream leave no pages in use, and the server keeps serving', async () => {
    const leavers = Array.from({ length: 50 }, async (_, i) => {
      const controller = new AbortController();
      const response = await fetch(`${serve.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: `story ${i}` }], max_tokens: 2000, stream: true }),
        signal: controller.signal,
      });
      const reader = response.body?.getReader();
      await reader?.read();
      controller.abort();
    });
    await Promise.allSettled(leavers);
    await settle();
    expect(await pagesInUse()).toBe(0);
    const stats = (await (await fetch(`${serve.url}/v1/stats`)).json()) as { running: number; waiting: number };
    expect(stats.running + stats.waiting).toBe(0);
    const after = await client.completions.create({
      model: 'duo-demo',
      prompt: 'Hello',
      max_tokens: 4,
      temperature: 0,
    });
    expect(after.choices[0]?.finish_reason).toBe('length');
  }, 120_000);
});

describe('prefix cache', () => {
  /** Streams a chat; returns the answer and the time from the request to its first content. */
  async function ask(url: string, document: string, question: string): Promise<{ text: string; firstMs: number }> {
    const own = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const started = performance.now();
    const stream = await own.chat.completions.create({
      model: 'duo-demo',
      messages: [{ role: 'user', content: `${document}\n\nQuestion: ${question}` }],
      max_tokens: 16,
      temperature: 0,
      stream: true,
    });
    let text = '';
    let firstMs = 0;
    for await (const chunk of stream) {
      const piece = chunk.choices[0]?.delta.content ?? '';
      if (piece !== '' && firstMs === 0) firstMs = performance.now() - started;
      text += piece;
    }
    return { text, firstMs };
  }

  it('a second question about a cached 12K-token document starts 10× sooner and answers as a cold run does', async () => {
    // 12 000 bytes of varied text: 12K tokens for the demo model's byte vocabulary.
    const words = ['river', 'lantern', 'north', 'seven', 'copper', 'meadow', 'whistle', 'harbor', 'amber', 'falcon'];
    let document = '';
    for (let i = 0; document.length < 12_000; i++)
      document += `${words[(i * 7) % 10]} ${words[(i * 3 + 1) % 10]} ${i}. `;
    document = document.slice(0, 12_000);
    const first = await ask(serve.url, document, 'Which word comes after harbor?');
    const second = await ask(serve.url, document, 'What is the number after falcon?');
    expect(second.firstMs * 10).toBeLessThan(first.firstMs);
    const stats = (await (await fetch(`${serve.url}/v1/stats`)).json()) as { cachedTokens: number };
    expect(stats.cachedTokens).toBeGreaterThan(11_000);
    const cold = await startServe(['--log-level', 'warn', '--prefix-cache', '0']);
    try {
      expect((await ask(cold.url, document, 'What is the number after falcon?')).text).toBe(second.text);
    } finally {
      await cold.stop();
    }
  }, 180_000);
});

describe('SIGTERM', () => {
  it('finishes the running stream, refuses new requests, then exits 0', async () => {
    const own = await startServe(['--log-level', 'warn']);
    try {
      const response = await fetch(`${own.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'A long time ago', max_tokens: 300, temperature: 0, stream: true }),
      });
      const reader = response.body?.getReader() as ReadableStreamDefaultReader<Uint8Array>;
      let text = new TextDecoder().decode((await reader.read()).value);
      own.child.kill('SIGTERM');
      // New work is refused while it drains (the listener closes; a kept-alive socket gets 503).
      await new Promise((resolve) => setTimeout(resolve, 200));
      const refused = await fetch(`${own.url}/health`).then(
        (late) => late.status,
        () => 'refused',
      );
      expect([503, 'refused']).toContain(refused);
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      expect(text).toContain('"finish_reason":"length"');
      expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
      expect(await own.exited).toBe(0);
    } finally {
      await own.stop();
    }
  }, 120_000);
});

describe('limits', () => {
  it('429 with Retry-After when the queue is full, 401 without the key, 413 for a body over the limit', async () => {
    const own = await startServe([
      '--log-level',
      'warn',
      '--max-sequences',
      '1',
      '--max-waiting',
      '1',
      '--api-key',
      'sesame',
      '--max-body',
      '0.01',
    ]);
    try {
      const auth = { authorization: 'Bearer sesame' };
      const denied = await post(`${own.url}/v1/completions`, { prompt: 'x', max_tokens: 2 });
      expect(denied.status).toBe(401);
      expect(denied.json).toMatchObject({ error: { type: 'authentication_error', code: 'invalid_api_key' } });
      const big = await post(`${own.url}/v1/completions`, { prompt: 'x'.repeat(20_000) }, auth);
      expect(big.status).toBe(413);
      expect(big.json).toMatchObject({ error: { code: 'request_too_large' } });
      const body = { prompt: 'Once upon a time', max_tokens: 200 };
      const results = await Promise.all(Array.from({ length: 4 }, () => post(`${own.url}/v1/completions`, body, auth)));
      const statuses = results.map((result) => result.status).sort();
      expect(statuses).toContain(200);
      expect(statuses).toContain(429);
      const limited = results.find((result) => result.status === 429);
      expect(limited?.headers.get('retry-after')).toBe('1');
      expect(limited?.json).toMatchObject({ error: { type: 'rate_limit_error', code: 'queue_full' } });
    } finally {
      await own.stop();
    }
  }, 120_000);
});
