// A small HTTP client for a running duo-serve, for load generation: is it ready, what does it serve (/v1/stats), and one
// streamed completion with the arrival time of every token. node:http rather than fetch: its timeouts are ours to
// set (a 32K-token prompt behind 31 others waits minutes for its first token), and no retries hide a failure.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { RunFailure } from './failure.js';

/** What duo-serve's /v1/stats says of itself (the fields the load generator reads and records). */
export interface ServerStats {
  readonly model: string;
  readonly state: string;
  readonly device?: string;
  readonly contextLength: number;
  readonly vocabSize: number;
  readonly tokenizer: boolean;
  readonly running: number;
  readonly waiting: number;
  readonly kv?: { readonly totalBytes: number };
  readonly prefixCache?: { readonly entries: number; readonly bytes: number; readonly hits: number };
  readonly policy: Record<string, unknown>;
  readonly settings: Record<string, unknown>;
}

/** One streamed completion as the client saw it. Times are ms from the moment the request was sent. */
export interface StreamedCompletion {
  /** Why it failed (HTTP status and the server's message, a network error, a timeout); absent when it completed. */
  readonly error?: string;
  /** When each token arrived (a chunk's tokens share its arrival time), in order. */
  readonly tokenTimes: readonly number[];
  /** When the stream ended ([DONE] and the end of the response). */
  readonly endMs: number;
  readonly finishReason?: string;
  readonly usage?: {
    readonly prompt_tokens: number;
    readonly completion_tokens: number;
    readonly prompt_tokens_details?: { readonly cached_tokens?: number };
  };
}

/** A connection pool for `streamCompletion`: at most `sockets` at once, kept alive between requests. */
export function connectionPool(base: URL, sockets: number): HttpAgent {
  const options = { keepAlive: true, maxSockets: sockets };
  return base.protocol === 'https:' ? new HttpsAgent(options) : new HttpAgent(options);
}

/**
 * Checks that duo-serve at `base` is up and ready and returns its /v1/stats; a RunFailure that says what to do when it
 * cannot be reached, is still loading, has failed, or is not duo-serve.
 */
export async function readyServer(base: URL, timeoutMs = 10_000): Promise<ServerStats> {
  const health = await getJson(base, '/health', timeoutMs).catch((error: Error) => {
    throw new RunFailure(
      `cannot reach duo-serve at ${base.href} (${error.message}): start it first (e.g. duo-serve --shape llama-3-8b-1048k --device cuda) and wait for its "ready on" line, or fix --url`,
      { cause: error },
    );
  });
  const status = (health.body as { status?: string; reason?: string } | undefined) ?? {};
  if (health.status !== 200) {
    if (status.status === 'loading')
      throw new RunFailure(`duo-serve at ${base.href} is still loading its model: wait for its "ready on" line`);
    if (status.status === 'failed') throw new RunFailure(`duo-serve at ${base.href} has failed: ${status.reason}`);
    throw new RunFailure(`${base.href}health answered HTTP ${health.status}: is this duo-serve?`);
  }
  const stats = await serverStats(base, timeoutMs);
  if (typeof stats.vocabSize !== 'number' || typeof stats.contextLength !== 'number') {
    throw new RunFailure(
      `${base.href}v1/stats does not give vocabSize and contextLength: is this duo-serve (this build)?`,
    );
  }
  return stats;
}

/** duo-serve's /v1/stats (live counters, the model, the server's settings). */
export async function serverStats(base: URL, timeoutMs = 10_000): Promise<ServerStats> {
  const stats = await getJson(base, '/v1/stats', timeoutMs).catch((error: Error) => {
    throw new RunFailure(`lost duo-serve at ${base.href}: ${base.href}v1/stats: ${error.message}`, { cause: error });
  });
  if (stats.status !== 200 || typeof stats.body !== 'object' || stats.body === null) {
    throw new RunFailure(`${base.href}v1/stats answered HTTP ${stats.status}: is this duo-serve?`);
  }
  return stats.body as ServerStats;
}

/**
 * POSTs `body` (a streamed completion) to `base`/v1/completions and records when each token arrives; never rejects:
 * what went wrong is the result's `error`. The whole request must end within `timeoutMs`.
 */
export function streamCompletion(
  base: URL,
  body: object,
  agent: HttpAgent,
  timeoutMs: number,
): Promise<StreamedCompletion> {
  const payload = JSON.stringify(body);
  const tokenTimes: number[] = [];
  let finishReason: string | undefined;
  let usage: StreamedCompletion['usage'];
  let done = false;
  let started = 0;
  return new Promise((resolve) => {
    let settled = false;
    const settle = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const endMs = performance.now() - started;
      const incomplete = !error && !done ? 'the stream ended without [DONE]' : undefined;
      const why = error ?? incomplete;
      resolve({
        ...(why === undefined ? {} : { error: why }),
        tokenTimes,
        endMs,
        ...(finishReason === undefined ? {} : { finishReason }),
        ...(usage === undefined ? {} : { usage }),
      });
    };
    const send = base.protocol === 'https:' ? httpsRequest : httpRequest;
    const request = send(new URL('v1/completions', base), {
      method: 'POST',
      agent,
      headers: {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
        accept: 'text/event-stream',
      },
    });
    const timer = setTimeout(() => {
      request.destroy();
      settle(`no complete answer within ${timeoutMs / 1000} s (--timeout)`);
    }, timeoutMs);
    request.on('error', (error) => settle(`${error.message}`));
    request.on('response', (response) => {
      if (response.statusCode !== 200) {
        void readAll(response).then((text) => settle(`HTTP ${response.statusCode}: ${errorMessage(text)}`));
        return;
      }
      response.setEncoding('utf8');
      let buffer = '';
      response.on('data', (chunk: string) => {
        const now = performance.now() - started;
        buffer += chunk;
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const problem = onEvent(event, now);
          if (problem) {
            request.destroy();
            settle(problem);
            return;
          }
        }
      });
      response.on('end', () => settle());
      response.on('error', (error) => settle(error.message));
    });
    /** One server-sent event; returns what went wrong, if anything. */
    const onEvent = (event: string, now: number): string | undefined => {
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        let chunk: StreamChunk;
        try {
          chunk = JSON.parse(data) as StreamChunk;
        } catch {
          return `a chunk that is not JSON: ${data.slice(0, 120)}`;
        }
        if (chunk.error) return `error in the stream: ${chunk.error.message ?? JSON.stringify(chunk.error)}`;
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices ?? []) {
          if (!Array.isArray(choice.token_ids))
            return 'a chunk without token_ids (a duo-serve without return_token_ids?)';
          for (let i = 0; i < choice.token_ids.length; i++) tokenTimes.push(now);
          if (choice.finish_reason) finishReason = choice.finish_reason;
        }
      }
      return undefined;
    };
    started = performance.now();
    request.end(payload);
  });
}

interface StreamChunk {
  error?: { message?: string };
  usage?: StreamedCompletion['usage'];
  choices?: { token_ids?: number[]; finish_reason?: string | null }[];
}

function getJson(base: URL, path: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const send = base.protocol === 'https:' ? httpsRequest : httpRequest;
    const request = send(new URL(path.slice(1), base), { method: 'GET', timeout: timeoutMs });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    request.on('error', reject);
    request.on('response', (response) => {
      void readAll(response).then((text) => {
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        resolve({ status: response.statusCode ?? 0, body });
      }, reject);
    });
    request.end();
  });
}

function readAll(response: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    response.setEncoding('utf8');
    response.on('data', (chunk: string) => {
      // An error body is short; a runaway one is cut rather than held.
      if (text.length < 65_536) text += chunk;
    });
    response.on('end', () => resolve(text));
    response.on('error', reject);
  });
}

/** The message of an error body in OpenAI's shape, else the text's start. */
function errorMessage(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: string } };
    if (body.error?.message) return body.error.message;
  } catch {
    // not JSON
  }
  return text.slice(0, 200);
}
