// duo-bench serve-load's refusals, through the built CLI: bad options name the option and exit 2 before any request; a
// server that cannot be reached, or is not ready, is a run-time failure (exit 1) that says what to do. The load itself
// is tested against a real duo-serve in apps/serve (serve-load.test.ts, token-ids.test.ts).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const cli = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'dist/cli.js');
const out = mkdtempSync(join(tmpdir(), 'serve-load-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

async function serveLoad(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, [cli, 'serve-load', ...args]).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (error: { code: number; stdout: string; stderr: string }) => error,
  );
}

/** A loopback HTTP server answering every request with `status` and `body` (or as `answer` says, by path). */
async function fakeServer(
  status: number,
  body: object,
  answer: (path: string) => [number, object] = () => [status, body],
): Promise<{ server: Server; url: string }> {
  const server = createServer((request, response) => {
    const [code, json] = answer(request.url ?? '/');
    response.writeHead(code, { 'content-type': 'application/json' });
    response.end(JSON.stringify(json));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
}

describe('duo-bench serve-load refuses', () => {
  it('bad options with a message naming the option, exit 2', async () => {
    const notRecord = join(out, 'other.json');
    writeFileSync(notRecord, JSON.stringify({ decode: [] }));
    const cases: [string[], string][] = [
      [['--url', 'localhost:8000'], '--url: expected an http(s) URL such as http://127.0.0.1:8000 but received'],
      [['--url', 'not a url'], '--url: expected an http(s) URL'],
      [['--concurrency', '0'], '--concurrency: expected levels in [1, 1024] but received "0"'],
      [['--concurrency', '1,2000'], '--concurrency: expected levels in [1, 1024]'],
      [['--concurrency', 'many'], '--concurrency: expected comma-separated integers'],
      [['--requests', '0'], '--requests: expected an integer in [1, 4096]'],
      [['--output-tokens', '1'], '--output-tokens: expected an integer in [2,'],
      [['--prompt-tokens', 'long'], '--prompt-tokens: expected an integer in [2,'],
      [['--timeout', '0'], '--timeout: expected a number in [1, 86400]'],
      [['--attention', 'sparse'], '--attention: expected one of full, streaming, duo but received "sparse"'],
      [['--attention', 'full', '--sparsity', '0.5'], '--sparsity: applies to --attention duo but this run uses full'],
      [['--sparsity', '1.5'], '--sparsity: expected a number in [0, 1] but received "1.5"'],
      [['--plot', join(out, 'figure.gif')], '--plot'],
      [['--from', join(out, 'missing.json')], '--from: cannot read'],
      [['--from', notRecord], 'has no levels (not a duo-bench serve-load record)'],
      [['--bogus'], "Unknown option '--bogus'"],
    ];
    for (const [args, message] of cases) {
      const result = await serveLoad(args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toContain(message);
    }
  });

  it('a server it cannot reach, or one not ready, with what to do (exit 1)', async () => {
    const closed = await fakeServer(200, {});
    await new Promise((done) => closed.server.close(done));
    const unreachable = await serveLoad(['--url', closed.url]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toContain(`cannot reach duo-serve at ${closed.url}/ (connect ECONNREFUSED`);
    expect(unreachable.stderr).toContain('start it first');
    for (const [body, message] of [
      [{ status: 'loading' }, 'is still loading its model'],
      [{ status: 'failed', reason: 'CUDA out of memory' }, 'has failed: CUDA out of memory'],
      [{ error: 'nope' }, 'health answered HTTP 503: is this duo-serve?'],
    ] as const) {
      const fake = await fakeServer(503, body);
      try {
        const result = await serveLoad(['--url', fake.url]);
        expect(result.code).toBe(1);
        expect(result.stderr).toContain(message);
      } finally {
        await new Promise((done) => fake.server.close(done));
      }
    }
    const other = await fakeServer(200, { status: 'ok' });
    try {
      const result = await serveLoad(['--url', other.url]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('does not give vocabSize and contextLength: is this duo-serve');
    } finally {
      await new Promise((done) => other.server.close(done));
    }
  });

  it('a server whose requests fail: the record keeps what was measured and why, then exit 1', async () => {
    const stats = { model: 'm', state: 'ready', contextLength: 4096, vocabSize: 100, tokenizer: false, running: 0 };
    const fake = await fakeServer(200, {}, (path) => {
      if (path === '/health') return [200, { status: 'ok' }];
      if (path === '/v1/stats') return [200, { ...stats, waiting: 0, policy: {}, settings: {} }];
      return [500, { error: { message: 'The engine failed: CUDA error' } }];
    });
    try {
      const file = join(out, 'failed.json');
      const warm = await serveLoad(['--url', fake.url, '--prompt-tokens', '64', '--out', file]);
      expect(warm.code).toBe(1);
      expect(warm.stderr).toContain(
        'stopped after 0 levels: the full warm-up request failed: HTTP 500: The engine failed: CUDA error',
      );
      expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ levels: [], stopped: expect.any(String) });
      const cold = await serveLoad([
        '--url',
        fake.url,
        '--prompt-tokens',
        '64',
        '--warmup',
        '0',
        '--concurrency',
        '2',
        '--out',
        file,
      ]);
      expect(cold.code).toBe(1);
      expect(cold.stderr).toContain(
        '4 of 4 requests failed (first, full at concurrency 2: HTTP 500: The engine failed',
      );
      const record = JSON.parse(readFileSync(file, 'utf8'));
      expect(record.levels.map((level: { failed: number }) => level.failed)).toEqual([2, 2]);
    } finally {
      await new Promise((done) => fake.server.close(done));
    }
  });
});
