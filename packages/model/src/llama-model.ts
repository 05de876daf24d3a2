// LlamaModel: weights on a backend, sessions over them, and generate() as an async iterator of tokens.
import {
  type Backend,
  DEFAULT_MAX_NEW_TOKENS,
  type DType,
  DuoArgumentError,
  DuoDisposedError,
  type ModelConfig,
  type TensorHandle,
  validateModelConfig,
  WEIGHT_QUANT_CHOICES,
  type WeightQuantChoice,
  weightQuantFormat,
} from '@duoattn/core';
import { type BackendRequest, resolveBackend } from '@duoattn/kernels';
import { BatchEngine, type BatchEngineOptions } from './batch/batch-engine.js';
import { LlamaBlocks } from './llama-blocks.js';
import type { Checkpoint } from './loaders/checkpoint.js';
import { openCheckpoint } from './loaders/open-checkpoint.js';
import { ropeInverseFrequencies } from './rope.js';
import { checkSampling, type SamplingOptions, sampleToken, seededRandom } from './sampling.js';
import { Session, type SessionOptions } from './session.js';
import {
  rankConfig,
  type TensorParallelOptions,
  type TensorParallelRank,
  tensorParallelRank,
} from './tensor-parallel.js';
import type { Tokenizer } from './tokenizers/tokenizer.js';
import {
  disposeWeights,
  loadWeights,
  type ModelWeights,
  type RandomWeightOptions,
  randomWeights,
  type WeightDtypeOption,
  weightByName,
} from './weights.js';

/** What every way of making a model takes besides its weights. */
export interface ModelRuntimeOptions {
  /** Sessions replay a captured CUDA graph per greedy decode step where the backend can (`SessionOptions.graphs`). Default true. */
  graphs?: boolean;
  /**
   * Load this model as one rank of a tensor-parallel group (ADR 0011): only the rank's slice of each layer's matrices
   * (its KV heads with their query groups, 1/R of the MLP) is read and kept; every rank loads the same weights with
   * its own communicator and runs the same session calls. The KV heads and the MLP's width must divide by the ranks.
   * Sessions run on such a model (not the batch engine, not context parallelism; their greedy steps are captured as a
   * CUDA graph only with a `streamOrdered` communicator such as NCCL's). Default: whole.
   */
  tensorParallel?: TensorParallelOptions;
}

/** Options of `LlamaModel.load`. */
export interface LoadModelOptions extends ModelRuntimeOptions {
  /** Where to run: 'auto' (default: CUDA when usable, else CPU), 'cpu', 'cuda', or a backend. */
  device?: BackendRequest | Backend;
  /**
   * Weight dtype on the device. Default 'auto': the checkpoint's — GGUF block formats (Q8_0, Q4_K, Q5_K, Q6_K) stay as
   * they are on both backends, whose kernels read them in place (ADR 0010).
   */
  weightDtype?: WeightDtypeOption;
  /**
   * Quantize every matrix into a GGUF block format as it loads (`int8` = Q8_0, `int4` = Q4_K, or a format by name;
   * ADR 0010) — on the CPU, whose kernels read blocks; CUDA refuses it until its kernels do. Default none.
   */
  weightQuant?: WeightQuantChoice;
  /** llama2.c tokenizer file, when it is not beside the checkpoint. */
  tokenizerPath?: string;
  /** Called after each weight tensor is loaded. */
  onProgress?: (done: number, total: number) => void;
}

/** Options of `LlamaModel.random`. */
export interface RandomModelOptions extends ModelRuntimeOptions {
  /** Where to run, as for `load`. Default 'auto'. */
  device?: BackendRequest | Backend;
  /** Weight dtype. Default 'bf16'. */
  dtype?: DType;
  /** Seeds the generator (the same seed gives the same weights on every backend). Default 1. */
  seed?: number;
  /** Standard deviation of the matrices' entries. Default 0.02, like HF's initializer_range. */
  std?: number;
}

/** Options of `generate`. */
export interface GenerateOptions extends SessionOptions {
  /**
   * Most tokens to produce. Default `DEFAULT_MAX_NEW_TOKENS` (128). The prompt and these must fit the model's context
   * (`config.maxPositionEmbeddings`, unless `allowBeyondContext`) or the room left in `session`: a
   * `DuoArgumentError` with the numbers otherwise, before any work.
   */
  maxTokens?: number;
  sampling?: SamplingOptions;
  /** Stop after any of these strings appears in the output (it is included). */
  stopStrings?: readonly string[];
  /** Stop tokens; default the tokenizer's / config's EOS ids. */
  stopTokens?: readonly number[];
  /** Cancels generation between tokens. */
  signal?: AbortSignal;
  /** Receives the timings when generation ends. */
  onStats?: (stats: GenerationStats) => void;
  /** An existing session to continue (its cache is used and extended); default a fresh one, disposed at the end. */
  session?: Session;
}

/** One generated token and the text it completed. */
export interface GeneratedToken {
  id: number;
  text: string;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  finishReason: 'stop' | 'length' | 'context' | 'abort';
}

function resolveDevice(device: LoadModelOptions['device']): Backend {
  if (device === undefined || typeof device === 'string') return resolveBackend(device ?? 'auto');
  return device;
}

/**
 * A Llama-family model on one backend. Immutable after load: every session brings its own attention policy, so one
 * model serves full, streaming and DuoAttention sessions (any plans, any KV quantization) side by side.
 */
export class LlamaModel {
  readonly config: ModelConfig;
  readonly backend: Backend;
  readonly tokenizer: Tokenizer | undefined;
  readonly chatTemplate: string | undefined;
  /**
   * The Llama block's steps over this model's weights, for code that runs its own attention around them (the gate
   * trainer, analyses). `createSession` is how to run the model.
   */
  readonly blocks: LlamaBlocks;
  /** Where the weights came from (a path, or "random"). */
  readonly source: string;
  /** Never handed out: sessions and `blocks` use them, so the model stays as loaded. */
  readonly #weights: ModelWeights;
  readonly #inverseFrequencies: TensorHandle;
  readonly #runtime: { graphs: boolean };
  #disposed = false;

  private constructor(
    config: ModelConfig,
    backend: Backend,
    weights: ModelWeights,
    source: string,
    runtime: ModelRuntimeOptions,
    part: TensorParallelRank | undefined,
    tokenizer?: Tokenizer,
    chatTemplate?: string,
  ) {
    this.#runtime = { graphs: runtime.graphs ?? true };
    this.config = config;
    this.backend = backend;
    this.#weights = weights;
    this.blocks = new LlamaBlocks(backend, part ? rankConfig(config, part.size) : config, weights, part);
    this.source = source;
    this.tokenizer = tokenizer;
    this.chatTemplate = chatTemplate;
    this.#inverseFrequencies = backend.upload('f32', [config.headDim / 2], ropeInverseFrequencies(config));
  }

  /** The dtype the weights are stored in on the device (the checkpoint's, or the `weightDtype` asked for at load). */
  get weightDtype(): DType {
    return this.#weights.lmHead.dtype;
  }

  /** Loads a HF directory, a .gguf or a llama2.c .bin. */
  static async load(path: string, options: LoadModelOptions = {}): Promise<LlamaModel> {
    const checkpoint = await openCheckpoint(path, { tokenizerPath: options.tokenizerPath });
    return LlamaModel.fromCheckpoint(checkpoint, options);
  }

  /** Loads the weights of an opened checkpoint. */
  static fromCheckpoint(checkpoint: Checkpoint, options: LoadModelOptions = {}): LlamaModel {
    const backend = resolveDevice(options.device);
    const dtype = options.weightDtype ?? 'auto';
    if (!['auto', 'f32', 'f16', 'bf16'].includes(dtype)) {
      throw new DuoArgumentError(
        'weightDtype',
        `Expected \`weightDtype\` to be auto, f32, f16 or bf16 but received ${String(dtype)}`,
      );
    }
    const choice = options.weightQuant ?? 'none';
    if (!(WEIGHT_QUANT_CHOICES as readonly string[]).includes(choice)) {
      throw new DuoArgumentError(
        'weightQuant',
        `Expected \`weightQuant\` to be one of ${WEIGHT_QUANT_CHOICES.join(', ')} but received ${String(choice)}`,
      );
    }
    const quant = weightQuantFormat(choice);
    const part = options.tensorParallel ? tensorParallelRank(options.tensorParallel, checkpoint.config) : undefined;
    if (part && quant) {
      throw new DuoArgumentError(
        'weightQuant',
        `Expected no \`weightQuant\` with \`tensorParallel\` (quantize the checkpoint to GGUF first, whose blocks load sliced) but received ${choice}`,
      );
    }
    const weights = loadWeights(checkpoint, backend, dtype, options.onProgress, quant, part);
    return new LlamaModel(
      checkpoint.config,
      backend,
      weights,
      checkpoint.source,
      options,
      part,
      checkpoint.tokenizer,
      checkpoint.chatTemplate,
    );
  }

  /** A model with random weights generated on the device (norms are ones), for benchmarks at real shapes and tests. */
  static random(config: ModelConfig, options: RandomModelOptions = {}): LlamaModel {
    const backend = resolveDevice(options.device);
    const part = options.tensorParallel ? tensorParallelRank(options.tensorParallel, config) : undefined;
    const random: RandomWeightOptions = {
      dtype: options.dtype ?? 'bf16',
      seed: options.seed,
      std: options.std,
      ...(part ? { part } : {}),
    };
    const weights = randomWeights(validateModelConfig(config), backend, random);
    return new LlamaModel(config, backend, weights, 'random', options, part);
  }

  /** The model's place in a tensor-parallel group (`LoadModelOptions.tensorParallel`), or undefined when whole. */
  get tensorParallel(): TensorParallelRank | undefined {
    return this.blocks.tensorParallel;
  }

  /** The KV-cache dtype sessions use by default. */
  get defaultCacheDtype(): DType {
    if (this.backend.device === 'cpu') return 'f32';
    return this.#weights.embedding.dtype === 'f32' ? 'f32' : 'bf16';
  }

  /**
   * An engine that runs many requests at once over this model (continuous batching): each with its own policy, KV
   * cache, sampling and position, from one shared page pool. Close it before disposing the model.
   */
  createBatchEngine(options: BatchEngineOptions = {}): BatchEngine {
    this.#checkLive();
    const part = this.blocks.tensorParallel;
    if (part) {
      throw new DuoArgumentError(
        'model',
        `The batch engine runs a model that holds every weight whole, but this one is rank ${part.rank} of a tensor-parallel group of ${part.size}: run sessions on it`,
      );
    }
    return new BatchEngine(
      {
        config: this.config,
        backend: this.backend,
        blocks: this.blocks,
        inverseFrequencies: this.#inverseFrequencies,
        tokenizer: this.tokenizer,
        defaultCacheDtype: this.defaultCacheDtype,
      },
      options,
    );
  }

  /** A new sequence with its own KV cache, attending as `options.policy` says (default full). Dispose it when done. */
  createSession(options: SessionOptions = {}): Session {
    this.#checkLive();
    return new Session(this.blocks, this.#inverseFrequencies, { ...this.#runtime, ...options }, this.defaultCacheDtype);
  }

  /**
   * A host copy (f32) of one weight by its canonical HF Llama name (`EMBEDDING`, `layerNames(l).query`, …), for
   * float64 references and inspection: the model's own tensors never leave it, so nothing can change them. On a rank
   * of a tensor-parallel group, the rank's slice (`tensorParallel`; its shape tells which part).
   */
  async readWeight(name: string): Promise<Float32Array> {
    this.#checkLive();
    const tensor = weightByName(this.#weights, name);
    if (!tensor) {
      throw new DuoArgumentError(
        'name',
        `Expected \`name\` to name one of this model's weights (EMBEDDING, FINAL_NORM, LM_HEAD or a layerNames(l) entry) but received ${JSON.stringify(name)}`,
      );
    }
    if (tensor.dtype === 'f32') return (await this.backend.read(tensor)) as Float32Array;
    const converted = this.backend.alloc('f32', tensor.shape);
    try {
      this.backend.convert(tensor, converted);
      return (await this.backend.read(converted)) as Float32Array;
    } finally {
      converted.dispose();
    }
  }

  /** Encodes text with the model's tokenizer (BOS added). */
  encode(text: string): number[] {
    if (!this.tokenizer)
      throw new DuoArgumentError('prompt', 'This model has no tokenizer: pass token ids instead of text');
    return this.tokenizer.encode(text);
  }

  /**
   * Generates tokens after `prompt` (text, or token ids). Yields each token with the text it completed.
   * Greedy sampling runs the argmax on the device and reads back one integer per token.
   */
  async *generate(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<GeneratedToken, GenerationStats> {
    this.#checkLive();
    const promptIds = typeof prompt === 'string' ? this.encode(prompt) : [...prompt];
    if (promptIds.length === 0) throw new DuoArgumentError('prompt', 'Expected a non-empty prompt');
    const maxTokens = options.maxTokens ?? DEFAULT_MAX_NEW_TOKENS;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) {
      throw new DuoArgumentError('maxTokens', `Expected \`maxTokens\` to be an integer ≥ 0 but received ${maxTokens}`);
    }
    this.#checkRoom(promptIds.length, maxTokens, options);
    const sampling = checkSampling(options.sampling ?? {});
    const random = seededRandom(sampling.seed);
    const stopTokens = new Set(options.stopTokens ?? this.tokenizer?.eosTokenIds ?? this.config.eosTokenIds);
    const ownSession = !options.session;
    const session = options.session ?? this.createSession({ ...options, maxTokens: promptIds.length + maxTokens });
    const decoder = this.tokenizer?.createStreamDecoder(promptIds);
    const greedy = sampling.temperature === 0;
    let text = '';
    let generated = 0;
    let finishReason: GenerationStats['finishReason'] = 'length';
    const started = performance.now();
    let prefillEnd = started;
    try {
      const stop = (id: number) =>
        stopTokens.has(id) || (options.stopStrings?.some((needle) => text.includes(needle)) ?? false);
      const tokens = greedy
        ? greedyTokens(session, promptIds, maxTokens)
        : sampledTokens(session, promptIds, maxTokens, sampling, random);
      let first = true;
      for await (const id of tokens) {
        if (first) {
          prefillEnd = performance.now();
          first = false;
        }
        if (options.signal?.aborted) {
          finishReason = 'abort';
          break;
        }
        generated++;
        const piece = decoder ? decoder.push(id) : '';
        text += piece;
        yield { id, text: piece };
        if (stop(id)) {
          finishReason = 'stop';
          break;
        }
      }
      if (finishReason === 'length' && generated < maxTokens && session.position >= session.capacity) {
        finishReason = 'context';
      }
    } finally {
      if (ownSession) session.dispose();
    }
    const end = performance.now();
    const prefillSeconds = (prefillEnd - started) / 1000;
    const decodeSeconds = (end - prefillEnd) / 1000;
    const stats: GenerationStats = {
      promptTokens: promptIds.length,
      generatedTokens: generated,
      prefillSeconds,
      decodeSeconds,
      prefillTokensPerSecond: promptIds.length / Math.max(prefillSeconds, 1e-9),
      decodeTokensPerSecond: Math.max(generated - 1, 0) / Math.max(decodeSeconds, 1e-9),
      finishReason,
    };
    options.onStats?.(stats);
    return stats;
  }

  /** Frees the weights. Sessions created from this model must be disposed first. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    disposeWeights(this.#weights);
    this.#inverseFrequencies.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Refuses a generation that would not fit before any work: the prompt and `maxTokens` new tokens must fit the
   * model's context (unless `allowBeyondContext`), or the room left in the session it continues.
   */
  #checkRoom(promptTokens: number, maxTokens: number, options: GenerateOptions): void {
    const session = options.session;
    if (!session && options.allowBeyondContext) return;
    const room = session ? session.capacity - session.position : this.config.maxPositionEmbeddings;
    if (promptTokens + maxTokens <= room) return;
    const limit = session
      ? `the session's room (${room} of its ${session.capacity} tokens are free)`
      : `the model's ${room}-token context (max_position_embeddings)`;
    if (promptTokens > room) {
      throw new DuoArgumentError('prompt', `The prompt has ${promptTokens} tokens, more than ${limit}`);
    }
    throw new DuoArgumentError(
      'maxTokens',
      `The prompt's ${promptTokens} tokens + \`maxTokens\` ${maxTokens} = ${promptTokens + maxTokens} tokens exceed ${limit}; at most ${room - promptTokens} new tokens fit`,
    );
  }

  #checkLive(): void {
    if (this.#disposed) throw new DuoDisposedError('The model was disposed: load it again');
  }
}

/**
 * Greedy tokens after `prompt`: all but the last prompt token are prefilled, then the device picks each argmax (on
 * CUDA one replayed graph per token with a step in flight).
 */
async function* greedyTokens(session: Session, prompt: readonly number[], maxTokens: number): AsyncGenerator<number> {
  if (prompt.length > 1) await session.forward(prompt.slice(0, -1), { logits: 'none' });
  const steps = Math.min(maxTokens, session.capacity - session.position);
  yield* session.greedyTokens(prompt[prompt.length - 1] ?? 0, steps);
}

/** Sampled tokens after `prompt`, each drawn on the host from the last logits; stops when the session is full. */
async function* sampledTokens(
  session: Session,
  prompt: readonly number[],
  maxTokens: number,
  sampling: Required<SamplingOptions>,
  random: () => number,
): AsyncGenerator<number> {
  if (maxTokens === 0) return;
  let { logits } = await session.forward(prompt);
  for (let produced = 0; ; ) {
    const next = sampleToken(logits ?? [], sampling, random);
    yield next;
    if (++produced >= maxTokens || session.position >= session.capacity) return;
    ({ logits } = await session.forward([next]));
  }
}
