// The memory planner: exact bytes of weights, cache regions and session scratch for a model, plan and context; and the
// inverse, the longest context that fits a byte budget.
import {
  DEFAULT_PREFILL_CHUNK,
  type DType,
  DuoArgumentError,
  dtypeBytes,
  type HeadPlan,
  isBlockDType,
  type KvQuantScheme,
  type ModelConfig,
  storedWeightBytes,
  type WeightFormat,
} from '@duoattn/core';
import { kvPlanes } from '@duoattn/kv-quant';
import { dualCacheBytes, kvPageTokens } from './dual-kv-cache.js';

/** What a plan is computed for. */
export interface MemoryPlanInput {
  readonly config: ModelConfig;
  /** Retrieval heads per layer (`uniformPlan('full', …)` for full attention). */
  readonly plan: HeadPlan;
  /** Dtype of the matrices (norms and biases are always f32). */
  readonly weightDtype: DType;
  /**
   * Matrices kept in a block format instead (ADR 0010): every matrix — embedding, projections, LM head — in it, or
   * in its fallback where rows cannot be split into its blocks. Default: none (`weightDtype`).
   */
  readonly weightQuant?: WeightFormat;
  /** Dtype of the KV cache. */
  readonly kvDtype: DType;
  /** Quantized KV storage (codes + fp16 scales, ADR 0006); `kvDtype` then only names the model's dtype. Default 'none'. */
  readonly kvQuant?: KvQuantScheme;
  /** Tokens the full regions hold. */
  readonly tokens: number;
  /** Prefill chunk: sizes the streaming ring and the session's chunk workspace. Default `DEFAULT_PREFILL_CHUNK` (512). */
  readonly prefillChunk?: number;
  /** A session that only decodes (a synthetic cache, no prefill) holds no chunk workspace. Default false. */
  readonly decodeOnly?: boolean;
  /** The backend's page (`Backend.pageBytes`): full regions map whole pages. Default 1 (bytes exactly per token). */
  readonly pageBytes?: number;
}

/** Bytes of each part. `total` is what a session of `tokens` tokens holds beside the backend's own scratch. */
export interface MemoryPlan {
  readonly weights: number;
  readonly fullRegion: number;
  readonly streamingRegion: number;
  /** The session's workspaces (one chunk, one decode row) and logits. */
  readonly scratch: number;
  readonly total: number;
  /** Full-region bytes added by each token (the slope of memory in context length). */
  readonly bytesPerToken: number;
}

/**
 * Bytes of the model's tensors as the loaders and `randomWeights` allocate them: matrices in `dtype`; with `quant`, as
 * a model whose every matrix is kept in that block format would take them (storedWeightBytes: our fallback where rows
 * cannot split into its blocks; ADR 0010).
 */
export function weightBytes(config: ModelConfig, dtype: DType, quant?: WeightFormat): number {
  const { hiddenSize: h, numHeads, numKvHeads, headDim, intermediateSize: f, vocabSize, numLayers } = config;
  // A model loaded in a block format (a GGUF kept quantized on the CPU) counts as that format.
  if (!quant && isBlockDType(dtype)) return weightBytes(config, 'f16', dtype);
  const element = dtypeBytes(dtype);
  const matrix = (rows: number, rowLength: number) =>
    quant ? storedWeightBytes(quant, rows, rowLength) : rows * rowLength * element;
  const queryRows = numHeads * headDim;
  const keyRows = numKvHeads * headDim;
  const perLayer =
    matrix(queryRows, h) +
    2 * matrix(keyRows, h) +
    matrix(h, queryRows) +
    2 * matrix(f, h) +
    matrix(h, f) +
    2 * h * 4 +
    (config.attentionBias ? (queryRows + 2 * keyRows) * 4 : 0);
  const embedding = matrix(vocabSize, h);
  const head = config.tieWordEmbeddings ? 0 : embedding;
  const frequencies = (headDim / 2) * 4;
  return embedding + head + numLayers * perLayer + h * 4 + frequencies;
}

/** Bytes of a session's own scratch: a workspace of `rows` rows, the decode workspace and the last-row logits. */
export function sessionScratchBytes(config: ModelConfig, chunkRows: number): number {
  const workspace = (rows: number) =>
    rows *
    4 *
    (2 +
      2 * config.hiddenSize +
      2 * config.numHeads * config.headDim +
      2 * config.numKvHeads * config.headDim +
      config.intermediateSize);
  const last = 4 * (2 * config.hiddenSize + config.vocabSize + 1);
  return workspace(chunkRows) + (chunkRows === 1 ? 0 : workspace(1)) + last;
}

/** Exact bytes for `input`. */
export function planMemory(input: MemoryPlanInput): MemoryPlan {
  const { config, plan, weightDtype, kvDtype, tokens } = input;
  const chunk = input.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
  if (!Number.isInteger(tokens) || tokens < 1) {
    throw new DuoArgumentError('tokens', `Expected \`tokens\` to be a positive integer but received ${String(tokens)}`);
  }
  const cache = dualCacheBytes(config, plan, kvDtype, tokens, chunk, input.pageBytes, input.kvQuant);
  const perToken = dualCacheBytes(config, plan, kvDtype, 1, chunk, 1, input.kvQuant).full; // before rounding to pages
  const weights = weightBytes(config, weightDtype, input.weightQuant);
  const scratch = sessionScratchBytes(config, input.decodeOnly ? 1 : chunk);
  return {
    weights,
    fullRegion: cache.full,
    streamingRegion: cache.streaming,
    scratch,
    total: weights + cache.full + cache.streaming + scratch,
    bytesPerToken: perToken,
  };
}

/**
 * The longest context whose plan fits `budgetBytes` (all of weights, caches and scratch), or 0 when not even one
 * token does. `reserveBytes` is kept free for the backend's own scratch and the allocator (default 0).
 */
export function maxContext(input: Omit<MemoryPlanInput, 'tokens'>, budgetBytes: number, reserveBytes = 0): number {
  const fixed = planMemory({ ...input, tokens: 1, pageBytes: 1 });
  const available = budgetBytes - reserveBytes - (fixed.total - fixed.fullRegion);
  if (fixed.bytesPerToken === 0) return available >= 0 ? Number.POSITIVE_INFINITY : 0;
  // Full regions map whole pages, each plane its own (codes and scales round up separately): a context at a boundary
  // of every plane's pages fits exactly as estimated; past it, the planes' own page boundaries decide, so the longest
  // context is searched up to the next common boundary (that unit is half a million tokens for int4 on 2 MiB pages).
  const unit = kvPageTokens(kvPlanes(input.config.headDim, input.kvDtype, input.kvQuant), input.pageBytes ?? 1);
  const lower = Math.max(0, Math.floor(Math.floor(available / fixed.bytesPerToken) / unit) * unit);
  const fits = (tokens: number) => planMemory({ ...input, tokens }).total <= budgetBytes - reserveBytes;
  if (lower === 0 && !fits(1)) return 0;
  let [good, bad] = [Math.max(lower, 1), lower + unit];
  while (bad - good > 1) {
    const middle = Math.floor((good + bad) / 2);
    if (fits(middle)) good = middle;
    else bad = middle;
  }
  return good;
}
