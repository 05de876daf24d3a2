// duo-serve's HTTP side: OpenAI's chat / completions / models endpoints (server-sent events when streamed), tokenize
// and detokenize, health, Prometheus metrics, live stats for the playground, and the playground page. The engine
// arrives after the server listens (health says 503 until then); every error leaves in OpenAI's shape.
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelConfig } from '@duoattn/core';
import { applyChatTemplate, type BatchToken, type ChatMessage, type Tokenizer } from '@duoattn/model';
import cors from '@fastify/cors';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { ZodType } from 'zod';
import type { ServeEngine } from './engine-host.js';
import { ApiError, RETRY_AFTER_SECONDS, toApiError } from './errors.js';
import { type Generation, type GenerationContext, merge, startGeneration, type Usage } from './generation.js';
import { ServeMetrics } from './metrics.js';
import {
  type ChatRequest,
  type CompletionRequest,
  chatRequest,
  completionRequest,
  detokenizeRequest,
  firstIssue,
  tokenizeRequest,
} from './openai-schema.js';
import type { PolicyResolver } from './policies.js';
import { chatShape, completionShape, type ResponseShape } from './response-shapes.js';

/** A chat template for models without one: each message on a line as "role: content", then "assistant:". */
export const PLAIN_CHAT_TEMPLATE =
  '{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}';

/** The model the server serves, as the HTTP side knows it (the engine holds the weights). */
export interface ServedModel {
  readonly id: string;
  readonly config: ModelConfig;
  /** Absent: the server takes token-id prompts only (/v1/completions), e.g. random weights at a named shape. */
  readonly tokenizer: Tokenizer | undefined;
  readonly chatTemplate: string | undefined;
}

export interface ServerOptions {
  readonly model: ServedModel;
  readonly resolver: PolicyResolver;
  /** max_tokens when a request gives none (at most what fits the context). Default 1024. */
  readonly defaultMaxTokens?: number;
  /** Bearer keys; empty or absent: no authentication. */
  readonly apiKeys?: readonly string[];
  /** CORS origins ('*' for any); absent: no CORS headers. */
  readonly corsOrigins?: readonly string[];
  /** Largest request body in bytes. Default 32 MiB (a long document as text). */
  readonly bodyLimit?: number;
  /** Most generation requests in flight; more get 429. Default 256. */
  readonly maxConcurrentRequests?: number;
  /** pino logger options, or false. Default: info to stdout. */
  readonly logger?: boolean | object;
  /** The playground's folder (index.html and its assets). Default: ../public beside this module. */
  readonly publicDirectory?: string;
  /** How the server was started (model, engine limits, …), reported as is by /v1/stats for load generators' records. */
  readonly settings?: Readonly<Record<string, unknown>>;
}

/** The server and its lifecycle: `attach` the engine once loaded, `fail` if it could not be. */
export interface DuoServer {
  readonly app: FastifyInstance;
  readonly metrics: ServeMetrics;
  attach(engine: ServeEngine): void;
  fail(reason: string): void;
  /** The engine, when attached. */
  readonly engine: ServeEngine | undefined;
}

const CHAT_TEMPLATE_MESSAGE_ROLES = new Set(['system', 'user', 'assistant', 'tool']);

export function createServer(options: ServerOptions): DuoServer {
  const { model, resolver } = options;
  const defaultMaxTokens = options.defaultMaxTokens ?? 1024;
  const maxConcurrent = options.maxConcurrentRequests ?? 256;
  const keys = new Set(options.apiKeys ?? []);
  const created = Math.floor(Date.now() / 1000);
  let engine: ServeEngine | undefined;
  let failure: string | undefined;
  let inFlight = 0;
  const tokensPerSecond = new ThroughputMeter();
  let cachedTokensTotal = 0;

  const app = Fastify({
    logger: options.logger ?? { level: 'info' },
    bodyLimit: options.bodyLimit ?? 32 * 1024 * 1024,
    return503OnClosing: true,
  });
  const metrics = new ServeMetrics(model.config, model.id, async () => (engine ? engine.stats() : undefined));
  // A client that sends "Expect: 100-continue" with a body over the limit is refused before it uploads (413 in
  // OpenAI's shape); any other is told to continue, as Node does by default.
  const bodyLimit = options.bodyLimit ?? 32 * 1024 * 1024;
  app.server.on('checkContinue', (request, response) => {
    if (Number(request.headers['content-length'] ?? 0) > bodyLimit) {
      const api = new ApiError(413, `The request body exceeds the server's limit of ${bodyLimit} bytes`, {
        code: 'request_too_large',
      });
      response.writeHead(413, { 'content-type': 'application/json; charset=utf-8', connection: 'close' });
      response.end(JSON.stringify(api.body()));
      return;
    }
    response.writeContinue();
    app.server.emit('request', request, response);
  });

  if (options.corsOrigins && options.corsOrigins.length > 0) {
    const origins = options.corsOrigins;
    void app.register(cors, { origin: origins.includes('*') ? true : [...origins] });
  }

  // Errors in OpenAI's shape; nothing internal (stack traces) leaves the server.
  app.setErrorHandler((error: Error & { statusCode?: number; code?: string }, request, reply) => {
    let api: ApiError;
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      api = new ApiError(
        413,
        `The request body exceeds the server's limit of ${options.bodyLimit ?? 32 * 1024 * 1024} bytes`,
        {
          code: 'request_too_large',
        },
      );
    } else if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      api = new ApiError(415, 'Expected a JSON body (Content-Type: application/json)', {
        code: 'unsupported_media_type',
      });
    } else if (
      error instanceof SyntaxError ||
      error.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ||
      error.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ||
      error.code === 'FST_ERR_CTP_INVALID_CONTENT_LENGTH'
    ) {
      api = new ApiError(400, 'We could not parse the JSON body of your request: it is not valid JSON.', {
        code: 'invalid_json',
      });
    } else if (error instanceof ApiError) {
      api = error;
    } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      api = new ApiError(error.statusCode, error.message);
    } else {
      api = toApiError(error);
    }
    if (api.status >= 500) request.log.error({ err: error }, 'request failed');
    void reply.status(api.status).headers(api.headers).send(api.body());
  });
  app.setNotFoundHandler((request, reply) => {
    const api = new ApiError(404, `No route ${request.method} ${request.url.split('?')[0]}`, { code: 'not_found' });
    void reply.status(404).send(api.body());
  });

  // Bearer keys, for the API routes (health, metrics and the playground page stay open).
  app.addHook('onRequest', async (request) => {
    if (keys.size === 0) return;
    const path = request.url.split('?')[0] ?? '';
    if (!(path.startsWith('/v1/') || path === '/tokenize' || path === '/detokenize')) return;
    const header = request.headers.authorization ?? '';
    const key = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    if (!keys.has(key)) {
      throw new ApiError(401, 'Incorrect API key provided', { type: 'authentication_error', code: 'invalid_api_key' });
    }
  });

  const ready = (): ServeEngine => {
    if (failure !== undefined) throw new ApiError(503, `The engine failed: ${failure}`, { code: 'engine_failed' });
    if (!engine)
      throw new ApiError(503, 'The model is still loading: try again shortly', {
        code: 'model_loading',
        headers: { 'retry-after': '5' },
      });
    if (engine.failure !== undefined) {
      throw new ApiError(500, `The engine failed: ${describe(engine.failure)}`, { code: 'engine_failed' });
    }
    return engine;
  };
  // A model without a tokenizer serves token-id prompts only: what needs text is a 400 naming the field.
  const tokenizerFor = (param: string): Tokenizer => {
    if (model.tokenizer) return model.tokenizer;
    throw new ApiError(
      400,
      `The model '${model.id}' has no tokenizer: send /v1/completions a \`prompt\` of token ids (without \`${param}\`)`,
      { param, code: 'no_tokenizer' },
    );
  };
  const context = (): GenerationContext => ({
    engine: ready(),
    eosTokenIds:
      model.tokenizer && model.tokenizer.eosTokenIds.length > 0
        ? model.tokenizer.eosTokenIds
        : model.config.eosTokenIds,
    contextLength: model.config.maxPositionEmbeddings,
    defaultMaxTokens,
    resolver,
    metrics,
  });
  const checkModel = (name: string | undefined) => {
    if (name !== undefined && name !== model.id) {
      throw new ApiError(404, `The model '${name}' does not exist; this server serves '${model.id}'`, {
        param: 'model',
        code: 'model_not_found',
      });
    }
  };
  const admit = () => {
    if (inFlight >= maxConcurrent) {
      throw new ApiError(429, `The server is at its limit of ${maxConcurrent} requests in flight: try again shortly`, {
        code: 'too_many_requests',
        headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
      });
    }
    inFlight++;
    let released = false;
    return () => {
      if (!released) inFlight--;
      released = true;
    };
  };
  const render = (messages: ChatRequest['messages']) => {
    const chat: ChatMessage[] = messages.map((message) => ({
      role: (message.role === 'developer' ? 'system' : message.role) as ChatMessage['role'],
      content:
        typeof message.content === 'string' ? message.content : message.content.map((part) => part.text).join(''),
    }));
    for (const message of chat) {
      if (!CHAT_TEMPLATE_MESSAGE_ROLES.has(message.role)) throw new ApiError(400, `Unknown role ${message.role}`);
    }
    return applyChatTemplate(model.chatTemplate ?? PLAIN_CHAT_TEMPLATE, chat);
  };

  app.get('/health', async (_request, reply) => {
    if (failure !== undefined || engine?.failure !== undefined) {
      return reply.status(503).send({ status: 'failed', reason: failure ?? describe(engine?.failure) });
    }
    if (!engine) return reply.status(503).send({ status: 'loading' });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_request, reply) => {
    void reply.type('text/plain; version=0.0.4');
    return metrics.text();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: model.id,
        object: 'model',
        created,
        owned_by: 'duoattn',
        max_model_len: model.config.maxPositionEmbeddings,
      },
    ],
  }));

  app.get('/v1/stats', async () => {
    const stats = engine ? await engine.stats() : undefined;
    return {
      model: model.id,
      state: failure !== undefined ? 'failed' : engine ? 'ready' : 'loading',
      device: engine?.deviceName,
      contextLength: model.config.maxPositionEmbeddings,
      vocabSize: model.config.vocabSize,
      tokenizer: model.tokenizer !== undefined,
      running: stats?.running ?? 0,
      waiting: stats?.waiting ?? 0,
      kv: stats
        ? {
            pageBytes: stats.pool.pageBytes,
            totalBytes: stats.pool.totalPages * stats.pool.pageBytes,
            fullBytes: stats.pool.usedPages.full * stats.pool.pageBytes,
            streamingBytes: stats.pool.usedPages.streaming * stats.pool.pageBytes,
            freeBytes: stats.pool.freePages * stats.pool.pageBytes,
          }
        : undefined,
      tokensPerSecond: tokensPerSecond.rate(),
      cachedTokens: cachedTokensTotal,
      prefixCache: stats?.prefixCache
        ? { entries: stats.prefixCache.entries, bytes: stats.prefixCache.bytes, hits: stats.prefixCache.hits }
        : undefined,
      policy: {
        attention: resolver.defaults.attention,
        sparsity: resolver.defaults.sparsity,
        kv_quant: resolver.defaults.kvQuant,
      },
      settings: options.settings ?? {},
    };
  });

  app.post('/tokenize', async (request) => {
    const body = parse(tokenizeRequest, request.body);
    checkModel(body.model);
    const tokens =
      'prompt' in body
        ? tokenizerFor('prompt').encode(body.prompt, { addBos: body.add_special_tokens ?? true })
        : tokenizerFor('messages').encode(render(body.messages));
    return { tokens, count: tokens.length, max_model_len: model.config.maxPositionEmbeddings };
  });

  app.post('/detokenize', async (request) => {
    const body = parse(detokenizeRequest, request.body);
    checkModel(body.model);
    const vocab = model.config.vocabSize;
    const bad = body.tokens.findIndex((token) => token >= vocab);
    if (bad >= 0) {
      throw new ApiError(400, `Token ids must be in [0, ${vocab}) but tokens[${bad}] is ${body.tokens[bad]}`, {
        param: `tokens.${bad}`,
        code: 'invalid_value',
      });
    }
    return { prompt: tokenizerFor('tokens').decode(body.tokens) };
  });

  app.post('/v1/chat/completions', async (request, reply) => {
    const body = parse(chatRequest, request.body);
    checkModel(body.model);
    if (body.top_logprobs !== undefined && body.top_logprobs !== null && !body.logprobs) {
      throw new ApiError(400, "'top_logprobs' needs 'logprobs': true", {
        param: 'top_logprobs',
        code: 'invalid_value',
      });
    }
    const tokenizer = tokenizerFor('messages');
    const prompt = tokenizer.encode(render(body.messages));
    const release = admit();
    let generation: Generation;
    try {
      generation = startGeneration(context(), body, prompt, 0, {
        logprobs: body.logprobs ? (body.top_logprobs ?? 0) : undefined,
        maxTokens: body.max_completion_tokens ?? body.max_tokens,
      });
    } catch (error) {
      release();
      throw error;
    }
    const id = `chatcmpl-${randomUUID()}`;
    const shape = chatShape(id, model.id, tokenizer, Boolean(body.logprobs));
    return respond(
      reply,
      [generation],
      shape,
      Boolean(body.stream),
      Boolean(body.stream_options?.include_usage),
      release,
    );
  });

  app.post('/v1/completions', async (request, reply) => {
    const body = parse(completionRequest, request.body);
    checkModel(body.model);
    if (body.best_of !== undefined && body.best_of !== null && body.best_of !== (body.n ?? 1)) {
      throw new ApiError(400, "'best_of' other than 'n' is not supported", {
        param: 'best_of',
        code: 'unsupported_value',
      });
    }
    if (!model.tokenizer) {
      if (body.stop !== undefined && body.stop !== null) tokenizerFor('stop');
      if (body.logprobs !== undefined && body.logprobs !== null) tokenizerFor('logprobs');
    }
    const prompts = promptList(body.prompt).map((prompt) =>
      typeof prompt === 'string' ? tokenizerFor('prompt').encode(prompt) : checkIds(prompt, model.config.vocabSize),
    );
    // Without a tokenizer the ids are all a client gets (every text is empty): they come whether asked for or not.
    const tokenIds = Boolean(body.return_token_ids) || !model.tokenizer;
    const release = admit();
    const generations: Generation[] = [];
    try {
      const n = body.n ?? 1;
      const shared = context();
      prompts.forEach((prompt, i) => {
        generations.push(
          startGeneration(shared, body, prompt, i * n, {
            logprobs: body.logprobs ?? undefined,
            maxTokens: body.max_tokens,
            everyToken: tokenIds,
          }),
        );
      });
    } catch (error) {
      for (const generation of generations) generation.cancel();
      release();
      throw error;
    }
    const id = `cmpl-${randomUUID()}`;
    const shape = completionShape(id, model.id, model.tokenizer, { logprobs: body.logprobs ?? undefined, tokenIds });
    return respond(
      reply,
      generations,
      shape,
      Boolean(body.stream),
      Boolean(body.stream_options?.include_usage),
      release,
    );
  });

  // The playground (a static page; its browser test drives it).
  const publicDirectory = options.publicDirectory ?? join(import.meta.dirname, '..', 'public');
  app.get('/', async (_request, reply) => {
    const page = join(publicDirectory, 'index.html');
    if (!existsSync(page)) return reply.type('text/plain').send('duo-serve: the playground page is not built');
    return reply.type('text/html; charset=utf-8').send(readFileSync(page));
  });
  app.get('/playground/:file', async (request, reply) => {
    const file = String((request.params as { file: string }).file);
    if (!/^[\w.-]+\.(js|css|svg)$/.test(file) || file.includes('..')) throw new ApiError(404, `No file ${file}`);
    const path = join(publicDirectory, file);
    if (!existsSync(path)) throw new ApiError(404, `No file ${file}`);
    const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.css') ? 'text/css' : 'image/svg+xml';
    return reply.type(`${type}; charset=utf-8`).send(readFileSync(path));
  });

  /** Sends a generation's result as JSON or server-sent events; cancels it when the client goes away. */
  async function respond(
    reply: FastifyReply,
    generations: Generation[],
    shape: ResponseShape,
    stream: boolean,
    includeUsage: boolean,
    release: () => void,
  ): Promise<unknown> {
    let finished = false;
    const cancel = () => {
      if (finished) return;
      for (const generation of generations) generation.cancel();
    };
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) cancel();
      release();
    });
    const events = merge(generations.map((generation) => generation.events));
    const usage = async (): Promise<Usage> => {
      const all = await Promise.all(generations.map((generation) => generation.usage));
      const total = all.reduce(
        (sum, part) => ({
          prompt_tokens: sum.prompt_tokens + part.prompt_tokens,
          completion_tokens: sum.completion_tokens + part.completion_tokens,
          total_tokens: sum.total_tokens + part.total_tokens,
          prompt_tokens_details: {
            cached_tokens: sum.prompt_tokens_details.cached_tokens + part.prompt_tokens_details.cached_tokens,
          },
        }),
        { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, prompt_tokens_details: { cached_tokens: 0 } },
      );
      cachedTokensTotal += total.prompt_tokens_details.cached_tokens;
      return total;
    };
    if (!stream) {
      const choices = new Map<number, { text: string; tokens: BatchToken[]; finishReason: string | null }>();
      for await (const event of events) {
        const choice = choices.get(event.index) ?? { text: '', tokens: [], finishReason: null };
        choice.text += event.text;
        choice.tokens.push(...event.tokens);
        if (event.finishReason) choice.finishReason = event.finishReason;
        choices.set(event.index, choice);
        tokensPerSecond.add(event.tokens.length);
      }
      const total = await usage();
      finished = true;
      return shape.whole(
        [...choices].sort(([a], [b]) => a - b).map(([index, choice]) => ({ index, ...choice })),
        total,
      );
    }
    // Server-sent events: headers now (CORS ones included), then one `data:` line per chunk, `[DONE]` last.
    reply.hijack();
    reply.raw.writeHead(200, {
      ...headersOf(reply),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    // Headers now, not with the first token: a client learns at once that the request was taken (a long prompt's
    // first token can be minutes away under load, past many clients' header timeouts).
    reply.raw.flushHeaders();
    const send = (data: unknown) => {
      if (!reply.raw.writableEnded && !reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    try {
      for (const chunk of shape.opening(generations.length)) send(chunk);
      for await (const event of events) {
        tokensPerSecond.add(event.tokens.length);
        const chunk = shape.chunk(event);
        if (chunk) send(chunk);
      }
      const total = await usage();
      if (includeUsage) send(shape.usageChunk(total));
      finished = true;
    } catch (error) {
      // The stream has started: the error goes as a last event in OpenAI's shape.
      send(toApiError(error).body());
      finished = true;
    }
    if (!reply.raw.writableEnded) reply.raw.end('data: [DONE]\n\n');
    return reply;
  }

  return {
    app,
    metrics,
    attach(attached) {
      engine = attached;
    },
    fail(reason) {
      failure = reason;
    },
    get engine() {
      return engine;
    },
  };
}

/** Validates a body against `schema`; a 400 naming the first bad field otherwise. */
function parse<T>(schema: ZodType<T>, body: unknown): T {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new ApiError(400, 'Expected a JSON object as the request body', { code: 'invalid_json' });
  }
  const result = schema.safeParse(body);
  if (!result.success) {
    const { message, param } = firstIssue(result.error);
    throw new ApiError(400, message, { param, code: 'invalid_value' });
  }
  return result.data;
}

function promptList(prompt: CompletionRequest['prompt']): (string | number[])[] {
  if (typeof prompt === 'string') return [prompt];
  if (prompt.length > 0 && typeof prompt[0] === 'number') return [prompt as number[]];
  return prompt as (string | number[])[];
}

function checkIds(ids: readonly number[], vocab: number): number[] {
  const bad = ids.findIndex((id) => id >= vocab);
  if (bad >= 0) {
    throw new ApiError(400, `Token ids must be in [0, ${vocab}) but prompt[${bad}] is ${ids[bad]}`, {
      param: `prompt.${bad}`,
      code: 'invalid_value',
    });
  }
  return [...ids];
}

function headersOf(reply: FastifyReply): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : String(value);
  }
  return headers;
}

/** Generated tokens per second over the last ten seconds. */
class ThroughputMeter {
  readonly #events: { at: number; count: number }[] = [];

  add(count: number): void {
    if (count > 0) this.#events.push({ at: performance.now(), count });
  }

  rate(): number {
    const now = performance.now();
    while (this.#events.length > 0 && now - (this.#events[0] as { at: number }).at > 10_000) this.#events.shift();
    return this.#events.reduce((sum, event) => sum + event.count, 0) / 10;
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
