// Loads the compiled addon once, collecting every reason it could not be loaded into one message.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuoBackendUnavailableError } from '@duoattn/core';

/** The raw functions the addon exports. Arguments are tensor ids and plain numbers; see native/addon.cc. */
export interface NativeAddon {
  readonly cudaCompiled: boolean;
  probe(device: number): { available: boolean; name?: string; reason?: string };
  alloc(device: number, dtype: number, shape: readonly number[]): number;
  free(id: number): void;
  write(id: number, data: ArrayBufferView, elementOffset: number): void;
  read(id: number, elementOffset: number, count: number): Promise<ArrayBuffer>;
  synchronize(device: number): Promise<void>;
  takeProfile(device: number): { name: string; count: number; milliseconds: number }[];
  resetPeak(device: number): void;
  allocPaged(device: number, dtype: number, shape: readonly number[]): number;
  commitPaged(tensor: number, rows: number): number;
  pageBytes(device: number): number;
  memory(device: number): {
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
  matmul(x: number, weight: number, out: number, bias: number, residual: number): void;
  rope(
    x: number,
    positions: number,
    frequencies: number,
    heads: number,
    headDim: number,
    interleaved: boolean,
    inverse?: boolean,
  ): void;
  swiglu(gate: number, up: number, out: number): void;
  writeCacheQuantized(source: number, codes: number, scales: number, start: number, scheme: number): void;
  matmulBackward(gradOut: number, weight: number, gradInput: number, accumulate: boolean): void;
  rmsNormBackward(
    x: number,
    weight: number,
    gradOut: number,
    gradInput: number,
    eps: number,
    accumulate: boolean,
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
    heads: number,
    kvHeads: number,
    headDim: number,
    scale: number,
    length: number,
    sink: number,
    recent: number,
  ): void;
  gateMix(
    streaming: number,
    full: number,
    gates: number,
    out: number,
    heads: number,
    kvHeads: number,
    headDim: number,
  ): void;
  gateMixBackward(
    gradOut: number,
    streaming: number,
    full: number,
    gates: number,
    gradStreaming: number,
    gradGates: number,
    heads: number,
    kvHeads: number,
    headDim: number,
  ): void;
  add(a: number, b: number, out: number): void;
  writeCache(source: number, cache: number, start: number): void;
  attentionPrefill(
    q: number,
    k: number,
    v: number,
    out: number,
    heads: number,
    kvHeads: number,
    headDim: number,
    scale: number,
    keyLength: number,
    queryStart: number,
    streaming?: StreamingFields,
    quant?: QuantFields,
  ): void;
  attentionDecode(
    q: number,
    k: number,
    v: number,
    out: number,
    heads: number,
    kvHeads: number,
    headDim: number,
    scale: number,
    keyLength: number,
    lengthFrom: number,
    streaming?: StreamingFields,
    quant?: QuantFields,
  ): void;
  matmulGroup(x: number, weights: number[], outs: number[], biases: number[]): void;
  matmulSwiglu(x: number, gate: number, up: number, out: number): void;
  ropeWriteCache(
    q: number,
    k: number,
    v: number,
    positions: number,
    frequencies: number,
    keyCache: number,
    valueCache: number,
    heads: number,
    kvHeads: number,
    headDim: number,
    interleaved: boolean,
    streaming?: StreamingFields,
    quant?: QuantFields,
  ): void;
  decodeAdvance(next: number, ids: number, positions: number): void;
  graphBegin(device: number): void;
  graphEnd(device: number): number;
  graphLaunch(device: number, graph: number): void;
  graphFree(device: number, graph: number): void;
  argmax(logits: number, out: number): void;
  softmax(logits: number, out: number, temperature: number): void;
}

let cached: NativeAddon | undefined;

/** Directory of the @duoattn/kernels package (works from src/ under vitest and from dist/). */
export function packageDirectory(): string {
  return dirname(dirname(fileURLToPath(import.meta.url)));
}

/** Loads the addon, or throws one error listing every place looked and how to fix it. */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const candidates = [
    process.env.DUO_NATIVE_PATH ? resolve(process.env.DUO_NATIVE_PATH) : undefined,
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
      'Fixes: run `pnpm build` (needs a C++ compiler and Python for node-gyp), or set DUO_NATIVE_PATH to a built ' +
      'duoattn.node. Build without CUDA with DUO_CUDA=0.',
    reasons,
  );
}

/** A layer's streaming heads as the addon takes them: region key and value ids, the streaming KV heads, sink, recent, chunked. */
export type StreamingFields = [number, number, number[], number, number, boolean];
/** A quantized cache as the addon takes it: [scheme index, keyScales, valueScales, streamKeyScales, streamValueScales] (0: none). */
export type QuantFields = [number, number, number, number, number];
