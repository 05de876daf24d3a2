// 1 000 malformed or hostile requests against the built duo-serve (fast-check generates them): bad JSON, wrong types,
// huge and negative numbers, unknown policies and fields, prompts longer than the context, bodies over the limit. Each
// gets a 4xx in OpenAI's shape, and the server keeps serving.
import { request as httpRequest } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { post, type ServeProcess, startServe } from './__fixtures__/serve-process.js';

let serve: ServeProcess;

beforeAll(async () => {
  serve = await startServe(['--log-level', 'silent', '--max-body', '1']);
}, 90_000);

afterAll(async () => {
  await serve?.stop();
});

const chat = { messages: [{ role: 'user', content: 'hello' }], max_tokens: 4 };
const completion = { prompt: 'hello', max_tokens: 4 };

/** A value that is wrong for `field` of a valid body (type, range or name). */
const badField = fc.oneof(
  fc.record({
    field: fc.constant('max_tokens'),
    value: fc.oneof(fc.integer({ max: 0 }), fc.double({ min: 0.1, max: 0.9 }), fc.constant(1e300), fc.string()),
  }),
  fc.record({
    field: fc.constant('temperature'),
    value: fc.oneof(
      fc.double({ min: 2.0001, max: 1e9, noNaN: true }),
      fc.double({ max: -0.0001, noNaN: true }),
      fc.string(),
    ),
  }),
  fc.record({
    field: fc.constant('top_p'),
    value: fc.oneof(fc.constant(0), fc.double({ min: 1.0001, max: 1e6, noNaN: true }), fc.boolean()),
  }),
  fc.record({
    field: fc.constant('n'),
    value: fc.oneof(fc.constant(0), fc.integer({ min: 17, max: 1e9 }), fc.constant(-1)),
  }),
  fc.record({
    field: fc.constant('attention'),
    value: fc.string().filter((text) => !['full', 'streaming', 'duo'].includes(text)),
  }),
  fc.record({
    field: fc.constant('kv_quant'),
    value: fc.string().filter((text) => !['none', 'int8', 'int4', 'fp8'].includes(text)),
  }),
  fc.record({
    field: fc.constant('sparsity'),
    value: fc.oneof(fc.double({ min: 1.0001, max: 1e9, noNaN: true }), fc.double({ max: -0.0001, noNaN: true })),
  }),
  fc.record({ field: fc.constant('seed'), value: fc.oneof(fc.constant(2 ** 60), fc.double({ min: 0.1, max: 0.9 })) }),
  fc.record({
    field: fc.constant('stop'),
    value: fc.oneof(
      fc.constant(''),
      fc.array(fc.string({ minLength: 1 }), { minLength: 5, maxLength: 8 }),
      fc.integer(),
    ),
  }),
  fc.record({ field: fc.constant('stream'), value: fc.oneof(fc.string(), fc.integer()) }),
  fc.record({
    field: fc
      .string({ minLength: 1, maxLength: 12 })
      .filter((name) => /^[a-z_]+$/.test(name))
      .map((name) => `x_${name}`),
    value: fc.jsonValue(),
  }),
);

const hostile = fc.oneof(
  // Not JSON at all, or JSON that is not an object.
  fc.record({ kind: fc.constant('text' as const), body: fc.string().filter((text) => !isJsonObject(text)) }),
  fc.record({
    kind: fc.constant('value' as const),
    body: fc.oneof(
      fc.jsonValue().filter((v) => typeof v !== 'object' || v === null || Array.isArray(v)),
      fc.constant([]),
    ),
  }),
  // A valid body with one field made wrong.
  fc.record({ kind: fc.constant('chat' as const), bad: badField }),
  fc.record({ kind: fc.constant('completion' as const), bad: badField }),
  // Messages of the wrong shape.
  fc.record({
    kind: fc.constant('messages' as const),
    body: fc.oneof(
      fc.constant({ messages: [] }),
      fc.constant({ messages: [{ role: 'wizard', content: 'x' }] }),
      fc.constant({ messages: [{ role: 'user' }] }),
      fc.record({
        messages: fc.array(
          fc.jsonValue().filter((v) => typeof v !== 'object' || v === null),
          { minLength: 1, maxLength: 3 },
        ),
      }),
    ),
  }),
  // Prompts longer than the demo model's 16K context (the byte tokenizer: a token a byte).
  fc.record({ kind: fc.constant('long' as const), extra: fc.integer({ min: 1, max: 40_000 }) }),
  // Bodies over the 1 MiB limit.
  fc.record({ kind: fc.constant('huge' as const), size: fc.integer({ min: 1_100_000, max: 1_500_000 }) }),
);

/**
 * POSTs a body the server refuses by its Content-Length, as a careful client does: `Expect: 100-continue`, the body
 * only once the server asks for it (it answers 413 instead, before reading anything).
 */
function postLarge(url: string, body: string): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const headers = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      expect: '100-continue',
    };
    const call = httpRequest(url, { method: 'POST', headers }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => {
        call.destroy();
        resolve({ status: response.statusCode ?? 0, json: JSON.parse(text) as unknown });
      });
    });
    call.on('continue', () => call.end(body));
    call.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE' && error.code !== 'ECONNRESET') reject(error);
    });
    call.flushHeaders();
  });
}

function isJsonObject(text: string): boolean {
  try {
    const value = JSON.parse(text) as unknown;
    return typeof value === 'object' && value !== null && !Array.isArray(value);
  } catch {
    return false;
  }
}

describe('hostile requests', () => {
  it('1 000 of them each get a 4xx in OpenAI’s shape, and the server keeps serving', async () => {
    const samples = fc.sample(hostile, { numRuns: 1000, seed: 20261206 });
    let index = 0;
    const statuses = new Map<number, number>();
    // Eight at a time: a bounded load.
    const worker = async () => {
      while (index < samples.length) {
        const sample = samples[index++] as (typeof samples)[number];
        let url = `${serve.url}/v1/chat/completions`;
        let body: unknown;
        switch (sample.kind) {
          case 'text':
            body = sample.body;
            break;
          case 'value':
          case 'messages':
            body = JSON.stringify(sample.body);
            break;
          case 'chat':
            body = { ...chat, [sample.bad.field]: sample.bad.value };
            break;
          case 'completion':
            url = `${serve.url}/v1/completions`;
            body = { ...completion, [sample.bad.field]: sample.bad.value };
            break;
          case 'long':
            url = `${serve.url}/v1/completions`;
            body = { prompt: 'a'.repeat(16_384 + sample.extra), max_tokens: 4 };
            break;
          case 'huge':
            body = { messages: [{ role: 'user', content: 'b'.repeat(sample.size) }] };
            break;
        }
        const response = sample.kind === 'huge' ? await postLarge(url, JSON.stringify(body)) : await post(url, body);
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        const label = `${sample.kind}: ${JSON.stringify(sample).slice(0, 200)} → ${response.status} ${JSON.stringify(response.json).slice(0, 200)}`;
        expect(response.status, label).toBeGreaterThanOrEqual(400);
        expect(response.status, label).toBeLessThan(500);
        expect(response.json, label).toMatchObject({
          error: { message: expect.any(String), type: expect.any(String) },
        });
        const error = (response.json as { error: Record<string, unknown> }).error;
        expect('param' in error && 'code' in error, label).toBe(true);
        if (sample.kind === 'long') expect(error.code, label).toBe('context_length_exceeded');
        if (sample.kind === 'huge') expect(response.status, label).toBe(413);
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    expect([...statuses.values()].reduce((a, b) => a + b, 0)).toBe(1000);
    const health = await fetch(`${serve.url}/health`);
    expect(health.status).toBe(200);
    const after = await post(`${serve.url}/v1/completions`, {
      prompt: 'Once upon a time',
      max_tokens: 4,
      temperature: 0,
    });
    expect(after.status).toBe(200);
    expect(after.json).toMatchObject({ choices: [{ finish_reason: 'length' }] });
  }, 180_000);
});
