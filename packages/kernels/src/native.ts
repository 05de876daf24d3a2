// Loads the compiled addon once, collecting every reason it could not be loaded into one message.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type AttentionBackwardAttributes,
  type Backend,
  type BatchAttentionAttributes,
  type BatchCacheLayer,
  type DecodeAttentionAttributes,
  type DeviceKind,
  type DType,
  DuoBackendUnavailableError,
  type GateMixAttributes,
  type KvQuantScheme,
  type MergeAttentionAttributes,
  type PartialAttentionAttributes,
  type PrefillAttentionAttributes,
  type RopeAttributes,
  readEnvironment,
  type TensorHandle,
} from '@duoattn/core';
import type { ElementwiseName } from './elementwise-ops.js';

/**
 * A spec type as it crosses the native boundary: every tensor becomes its id, everything else (numbers, flags, scheme
 * and mask names, nested attributes) keeps its name and value. Attributes cross as these named fields ("batons"),
 * never as positional tuples or enum indices.
 */
export type NativeFields<T> = T extends TensorHandle
  ? number
  : T extends readonly (infer Element)[]
    ? readonly NativeFields<Element>[]
    : T extends object
      ? { readonly [K in keyof T]: NativeFields<T[K]> }
      : T;

/** `ropeWriteCache`'s attributes (the spec's inline type). */
export type RopeWriteCacheAttributes = Parameters<Backend['ropeWriteCache']>[7];

/** The element-wise ops' exports (ELEMENTWISE_OPS): the input ids, then out's. */
export type ElementwiseNatives = { readonly [Name in ElementwiseName]: (...ids: number[]) => void };

/**
 * Knobs of a backend for benchmarks and A/B runs; every field is optional and the defaults are the shipped behaviour.
 * The CPU backend has none of them. On CUDA the launch rules' knobs are process-wide (the launchers are shared by every
 * environment), the profiler belongs to the backend.
 */
export interface BackendTuning {
  /** Time every op with CUDA events; `NativeBackend.takeProfile()` returns the table. Default false. */
  readonly profile?: boolean;
  /** Programmatic dependent launch (each kernel's prologue overlaps the previous one's tail) on Hopper. Default true. */
  readonly chainLaunches?: boolean;
  /** Smallest split-K slice of the decode GEMV, in elements. Default 1024. */
  readonly gemvMinSlice?: number;
  /** The decode GEMV's split rule: 0 fill, 1 waves, 2 (default) the chained-launch rule when launches chain. */
  readonly gemvWaveRule?: number;
  /** Pins the decode GEMV's split for shapes: "rowsxk:split,…", e.g. "6144x4096:4". Default none. */
  readonly gemvPinnedSplits?: string;
  /**
   * Batch invariance: a row's results never depend on the other rows of a call, so a sequence decoded in a batch gets
   * the bits it gets alone (single rows take the skinny tensor-core matmul instead of the f32 GEMV, its k split fixed by
   * the matrix shape; a batch's decode attention splits each sequence as if alone; f32 weights take a row-tiled matmul
   * up to 64 rows). The CPU backend
   * always is. Holds up to 64 rows per call. Default false.
   */
  readonly batchInvariant?: boolean;
  /**
   * Most rows (0 … 64) the skinny tensor-core matmul takes outside the batch-invariant mode: on Hopper (its
   * warpgroup kernel past 8 rows) every projection; before it, where its warp-MMA kernel beats cuBLAS (a single
   * matrix up to 16 rows, gate+up up to 32, q/k/v up to 64: bench/results/2026-12-06-h100-skinny/); 0: cuBLAS for
   * every 2+ rows. Default 64.
   */
  readonly skinnyRowsMax?: number;
  /**
   * A batch's CUDA decode attention schedules every sequence's full-head splits (the long ones) before any streaming
   * split, so the short ones fill the tail; false: sequence after sequence (an A/B knob). Default true.
   */
  readonly longSplitsFirst?: boolean;
  /**
   * Blocks of the CUDA tensor-core decode attention over 16-bit caches a multiprocessor holds: 2, or 3 (168
   * registers a thread, a few spilled: measured slower; an A/B knob). Default 2.
   */
  readonly decodeMmaBlocks?: number;
  /**
   * CUDA: a batch's decode attention merges each head's split partials in the decode kernel (its last block to finish)
   * when the head has at most this many splits, else in a combine launch (1–64). Default 16 (a single sequence's
   * decode keeps 8: its long heads' merges are faster spread over the combine's threads).
   */
  readonly decodeBatchMerge?: number;
  /**
   * CPU: Q8_0 weights multiply x rounded to int8 pieces of 32 values (step max|x| / 127, ties to even), as CUDA's
   * decode and llama.cpp's CPU build do: byte dot products, about 1.7× the exact path's rate from cache, at a relative
   * error near 10⁻³ in each dot product (ADR 0012). Default true; false: exact f32 x (products equal float64 over the
   * decoded weights, about 10 % slower in a 1B-class Q8_0 prefill).
   */
  readonly cpuIntegerQ8?: boolean;
}

/**
 * The raw functions the addon exports (native/ops.def lists them; ops-table.test.ts checks this against it). Each
 * mirrors its spec op: tensors become ids, an attributes object stays an object with the spec's field names
 * (`NativeFields`), devices, dtypes and KV schemes cross by name.
 */
export interface NativeAddon extends ElementwiseNatives {
  readonly cudaCompiled: boolean;
  probe(device: DeviceKind): { available: boolean; name?: string; reason?: string };
  alloc(device: DeviceKind, dtype: DType, shape: readonly number[]): number;
  free(id: number): void;
  write(id: number, data: ArrayBufferView, elementOffset: number): void;
  read(id: number, elementOffset: number, count: number): Promise<ArrayBuffer>;
  synchronize(device: DeviceKind): Promise<void>;
  takeProfile(device: DeviceKind): { name: string; count: number; milliseconds: number }[];
  tune(device: DeviceKind, tuning: BackendTuning): void;
  resetPeak(device: DeviceKind): void;
  allocPaged(device: DeviceKind, dtype: DType, shape: readonly number[]): number;
  commitPaged(tensor: number, rows: number): number;
  sharePaged(target: number, source: number, rows: number): number;
  pageBytes(device: DeviceKind): number;
  memory(device: DeviceKind): {
    allocatedBytes: number;
    peakBytes: number;
    deviceFreeBytes: number;
    deviceTotalBytes: number;
  };
  copyRows(source: number, target: number, sourceRow: number, targetRow: number, rows: number): void;
  convert(source: number, target: number): void;
  fillRandom(id: number, seed: number, standardDeviation: number): void;
  embedding(table: number, ids: number, out: number): void;
  rmsNorm(x: number, weight: number, out: number, eps: number): void;
  matmul(x: number, weight: number, out: number, options: NativeFields<MatmulOptions>): void;
  rope(
    x: number,
    positions: number,
    frequencies: number,
    attributes: NativeFields<RopeAttributes & { readonly inverse?: boolean }>,
  ): void;
  writeCache(source: number, cache: number, start: number): void;
  writeCacheQuantized(
    source: number,
    codes: number,
    scales: number,
    start: number,
    scheme: Exclude<KvQuantScheme, 'none'>,
  ): void;
  attentionPrefill(
    query: number,
    keyCache: number,
    valueCache: number,
    out: number,
    attributes: NativeFields<PrefillAttentionAttributes>,
  ): void;
  attentionDecode(
    query: number,
    keyCache: number,
    valueCache: number,
    out: number,
    attributes: NativeFields<DecodeAttentionAttributes>,
  ): void;
  attentionPartial(
    query: number,
    keyCache: number,
    valueCache: number,
    partial: number,
    attributes: NativeFields<PartialAttentionAttributes>,
  ): void;
  mergeAttention(parts: number, out: number, attributes: MergeAttentionAttributes): void;
  matmulGroup(x: number, weights: readonly number[], outs: readonly number[], biases: readonly number[]): void;
  matmulSwiglu(x: number, gate: number, up: number, out: number): void;
  ropeWriteCache(
    query: number,
    key: number,
    value: number,
    positions: number,
    frequencies: number,
    keyCache: number,
    valueCache: number,
    attributes: NativeFields<RopeWriteCacheAttributes>,
  ): void;
  decodeAdvance(next: number, ids: number, positions: number): void;
  graphBegin(device: DeviceKind): void;
  graphEnd(device: DeviceKind): number;
  graphLaunch(device: DeviceKind, graph: number): void;
  graphFree(device: DeviceKind, graph: number): void;
  /**
   * A new NCCL unique id (256 hex digits) for rank 0 to hand to every rank; CUDA only. `libraryDirectory` (or '') is
   * where NCCL is looked for first (DUO_NCCL_PATH).
   */
  communicatorId(device: DeviceKind, libraryDirectory: string): string;
  /** This rank's NCCL communicator of `size` ranks (blocks until all have joined); its handle. */
  communicatorOpen(device: DeviceKind, libraryDirectory: string, uniqueId: string, rank: number, size: number): number;
  communicatorClose(device: DeviceKind, communicator: number): void;
  /** Enqueued on the device's stream: every rank's `input` bytes into `output` in rank order. */
  allGather(device: DeviceKind, communicator: number, input: number, output: number): void;
  /** Enqueued on the device's stream: rank `root`'s `tensor` bytes into every rank's. */
  broadcast(device: DeviceKind, communicator: number, tensor: number, root: number): void;
  /** Enqueued on the device's stream: every rank's f32 `tensor` replaced by the sum over the ranks. */
  allReduceSum(device: DeviceKind, communicator: number, tensor: number): void;
  argmax(logits: number, out: number): void;
  cacheBatchCreate(
    device: DeviceKind,
    sequences: readonly (readonly NativeFields<BatchCacheLayer>[])[],
    attributes: { layers: number; kvHeads: number; headDim: number },
  ): number;
  cacheBatchSpans(batch: number, spans: Int32Array): void;
  cacheBatchFree(batch: number): void;
  ropeWriteCacheBatch(
    query: number,
    key: number,
    value: number,
    positions: number,
    frequencies: number,
    batch: number,
    layer: number,
    attributes: NativeFields<RopeAttributes & { kvHeads: number }>,
  ): void;
  attentionBatch(query: number, out: number, batch: number, layer: number, attributes: BatchAttentionAttributes): void;
  sample(logits: number, settings: number, out: number): void;
  softmax(logits: number, out: number, temperature: number): void;
  matmulBackward(gradOut: number, weight: number, gradInput: number, options: BackwardOptions): void;
  rmsNormBackward(
    x: number,
    weight: number,
    gradOut: number,
    gradInput: number,
    eps: number,
    options: BackwardOptions,
  ): void;
  swigluBackward(gate: number, up: number, gradOut: number, gradGate: number, gradUp: number): void;
  attentionBackward(
    query: number,
    keyCache: number,
    valueCache: number,
    out: number,
    gradOut: number,
    gradQuery: number,
    gradKey: number,
    gradValue: number,
    attributes: NativeFields<AttentionBackwardAttributes>,
  ): void;
  gateMix(
    streaming: number,
    full: number,
    gates: number,
    out: number,
    attributes: NativeFields<GateMixAttributes>,
  ): void;
  gateMixBackward(
    gradOut: number,
    streaming: number,
    full: number,
    gates: number,
    gradStreaming: number,
    gradGates: number,
    attributes: NativeFields<GateMixAttributes>,
  ): void;
}

/** `matmul`'s options (the spec's inline type). */
type MatmulOptions = NonNullable<Parameters<Backend['matmul']>[3]>;
/** The backward ops' options (the spec's inline type). */
type BackwardOptions = NonNullable<Parameters<Backend['matmulBackward']>[3]>;

let cached: NativeAddon | undefined;

/** Directory of the @duoattn/kernels package (works from src/ under vitest and from dist/). */
export function packageDirectory(): string {
  return dirname(dirname(fileURLToPath(import.meta.url)));
}

/** Loads the addon, or throws one error listing every place looked and how to fix it. */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const override = readEnvironment().nativePath;
  const candidates = [
    override ? resolve(override) : undefined,
    join(packageDirectory(), 'native', 'build', 'Release', 'duoattn.node'),
    join(packageDirectory(), 'native', 'build', 'Debug', 'duoattn.node'),
  ].filter((path): path is string => Boolean(path));
  const reasons: string[] = [];
  for (const path of candidates) {
    if (!existsSync(path)) {
      reasons.push(`${path}: not found`);
      continue;
    }
    try {
      cached = require(path) as NativeAddon;
      return cached;
    } catch (error) {
      reasons.push(`${path}: ${(error as Error).message}`);
    }
  }
  throw new DuoBackendUnavailableError(
    `The duoattn native addon could not be loaded.\n${reasons.map((r) => `  - ${r}`).join('\n')}\n` +
      'Fixes: in a checkout run `pnpm build`; where the package was installed, `npm rebuild @duoattn/kernels` (both need ' +
      'a C++ compiler and Python for node-gyp); or set DUO_NATIVE_PATH to a built duoattn.node. Build without CUDA ' +
      'with DUO_CUDA=0.',
    reasons,
  );
}
