// The Backend implementation over the native addon: validates in TypeScript, then makes one native call.
import {
  type AttentionBackwardAttributes,
  type Backend,
  type BackendMemory,
  type BatchAttentionAttributes,
  type BatchCacheLayer,
  type CacheBatch,
  type ContextShard,
  type DecodeAttentionAttributes,
  type DeviceKind,
  DTYPES,
  type DType,
  DuoArgumentError,
  dtypeBytes,
  type GateMixAttributes,
  type HostArray,
  isBlockDType,
  isDType,
  type KvQuantScheme,
  type MergeAttentionAttributes,
  type PartialAttentionAttributes,
  type PrefillAttentionAttributes,
  type QuantizedKv,
  type RopeAttributes,
  type StreamingHeads,
  tensorByteLength,
  WEIGHT_FORMATS,
} from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/kv-quant';
import {
  attentionIds,
  cacheRowWidth,
  expectHeads,
  expectScheme,
  mainCacheHeads,
  partialAttentionIds,
  quantFields,
  shardFields,
  streamingFields,
} from './attention-arguments.js';
import { expectCacheBatch, NativeCacheBatch } from './cache-batch.js';
import { ELEMENTWISE_NAMES, ELEMENTWISE_OPS, type ElementwiseName } from './elementwise-ops.js';
import { callNative, mapNativeError } from './errors.js';
import type { BackendTuning, NativeAddon } from './native.js';
import { Tensor } from './tensor.js';
import {
  describeValue,
  expectDistinct,
  expectInteger,
  expectPositive,
  expectTensor,
  F32,
  FLOAT_TYPES,
  I32,
} from './validate.js';

/** Dtypes with per-element storage (copies and conversions work element by element). */
const ELEMENT_TYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8'];

/** Weight dtypes of the CPU backend: the floats and the block formats it reads in place. */
const WEIGHT_TYPES: readonly DType[] = [...FLOAT_TYPES, 'q8_0', 'q4_k', 'q5_k', 'q6_k'];

/** Host array type that holds a dtype's raw elements (a block format's raw bytes). */
export function hostArrayFor(dtype: DType, buffer: ArrayBuffer): HostArray {
  if (dtype === 'f32') return new Float32Array(buffer);
  if (dtype === 'i32') return new Int32Array(buffer);
  if (dtype === 'u8' || isBlockDType(dtype)) return new Uint8Array(buffer);
  return new Uint16Array(buffer);
}

/** The units `write` and `read` address in a tensor: its elements, or a block format's bytes. */
function storageLength(tensor: Tensor): number {
  return isBlockDType(tensor.dtype) ? tensorByteLength(tensor.dtype, tensor.shape) : tensor.size;
}

function expectHostArray(argument: string, dtype: DType, data: unknown): HostArray {
  const bytes = dtype === 'u8' || isBlockDType(dtype);
  const ok =
    (dtype === 'f32' && data instanceof Float32Array) ||
    (dtype === 'i32' && data instanceof Int32Array) ||
    (bytes && data instanceof Uint8Array) ||
    ((dtype === 'f16' || dtype === 'bf16') && data instanceof Uint16Array);
  if (!ok) {
    const wanted =
      dtype === 'f32'
        ? 'Float32Array'
        : dtype === 'i32'
          ? 'Int32Array'
          : bytes
            ? 'Uint8Array'
            : 'Uint16Array (raw bits)';
    throw new DuoArgumentError(
      argument,
      `Expected a ${wanted} for \`${argument}\` (${dtype}) but received ${describeValue(data)}`,
    );
  }
  return data as HostArray;
}

/**
 * The element-wise ops of the spec, one per ELEMENTWISE_OPS entry: NativeBackend installs them from the table (a
 * new op needs no method written here), and this declaration gives them their spec signatures.
 */
export interface NativeBackend extends Pick<Backend, ElementwiseName> {}

/** A CPU or CUDA backend backed by the native addon. Create it with `createBackend` or `resolveBackend`. */
// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the element-wise methods are declared above.
export class NativeBackend implements Backend {
  readonly specificationVersion = 'v1' as const;
  readonly device: DeviceKind;
  readonly deviceName: string;
  readonly #native: NativeAddon;
  #pageBytes: number | undefined;

  /** @internal */
  constructor(native: NativeAddon, device: DeviceKind, deviceName: string) {
    this.#native = native;
    this.device = device;
    this.deviceName = deviceName;
  }

  get pageBytes(): number {
    this.#pageBytes ??= callNative(() => this.#native.pageBytes(this.device));
    return this.#pageBytes;
  }

  allocPaged(dtype: DType, shape: readonly [number, number, number]): Tensor {
    if (!isDType(dtype)) {
      throw new DuoArgumentError(
        'dtype',
        `Expected \`dtype\` to be one of ${DTYPES.join(', ')} but received ${describeValue(dtype)}`,
      );
    }
    if (!Array.isArray(shape) || shape.length !== 3) {
      throw new DuoArgumentError(
        'shape',
        `Expected \`shape\` to be [spans, length, width] but received ${describeValue(shape)}`,
      );
    }
    for (const [i, extent] of shape.entries()) expectInteger(`shape[${i}]`, extent, 0);
    const spanBytes = shape[1] * shape[2] * dtypeBytes(dtype);
    if (spanBytes % this.pageBytes !== 0) {
      throw new DuoArgumentError(
        'shape',
        `Expected each span of a paged tensor (shape[1] × shape[2] × ${dtypeBytes(dtype)} bytes = ${spanBytes}) to be a multiple of the ${this.pageBytes}-byte page`,
      );
    }
    const id = callNative(() => this.#native.allocPaged(this.device, dtype, shape));
    const tensor = new Tensor(this.#native, id, dtype, shape, this.device);
    tensor.committedRows = 0;
    return tensor;
  }

  commitPaged(tensor: Tensor, rows: number): number {
    const id = expectTensor('tensor', tensor, this.device);
    if (tensor.committedRows === undefined) {
      throw new DuoArgumentError(
        'tensor',
        `Expected a paged tensor (from allocPaged) but received ${tensor.describe()}`,
      );
    }
    expectInteger('rows', rows, 0, tensor.shape[1]);
    tensor.committedRows = callNative(() => this.#native.commitPaged(id, rows));
    return tensor.committedRows;
  }

  sharePaged(target: Tensor, source: Tensor, rows: number): number {
    const targetId = expectTensor('target', target, this.device);
    const sourceId = expectTensor('source', source, this.device);
    for (const [name, tensor] of [
      ['target', target],
      ['source', source],
    ] as const) {
      if (tensor.committedRows === undefined) {
        throw new DuoArgumentError(name, `Expected a paged tensor (from allocPaged) but received ${tensor.describe()}`);
      }
    }
    if (target === source)
      throw new DuoArgumentError('target', 'Expected `target` and `source` to be different tensors');
    if (target.dtype !== source.dtype || target.shape[0] !== source.shape[0] || target.shape[2] !== source.shape[2]) {
      throw new DuoArgumentError(
        'target',
        `Expected \`target\` of \`source\`'s dtype, spans and width (${source.describe()}) but received ${target.describe()}`,
      );
    }
    if (target.committedRows !== 0) {
      throw new DuoArgumentError(
        'target',
        `Expected a \`target\` with nothing committed but it backs ${target.committedRows} rows`,
      );
    }
    expectInteger('rows', rows, 0, Math.min(target.shape[1] ?? 0, source.committedRows ?? 0));
    target.committedRows = callNative(() => this.#native.sharePaged(targetId, sourceId, rows));
    return target.committedRows;
  }

  alloc(dtype: DType, shape: readonly number[]): Tensor {
    if (!isDType(dtype)) {
      throw new DuoArgumentError(
        'dtype',
        `Expected \`dtype\` to be one of ${DTYPES.join(', ')} but received ${describeValue(dtype)}`,
      );
    }
    if (!Array.isArray(shape) || shape.length === 0) {
      throw new DuoArgumentError(
        'shape',
        `Expected \`shape\` to be a non-empty array of sizes but received ${describeValue(shape)}`,
      );
    }
    for (const [i, extent] of shape.entries()) expectInteger(`shape[${i}]`, extent, 0);
    if (isBlockDType(dtype) && (shape[shape.length - 1] as number) % WEIGHT_FORMATS[dtype].blockValues !== 0) {
      const values = WEIGHT_FORMATS[dtype].blockValues;
      throw new DuoArgumentError(
        'shape',
        `Expected rows of whole ${values}-value blocks for a ${dtype} tensor but received shape [${shape.join(', ')}]`,
      );
    }
    const id = callNative(() => this.#native.alloc(this.device, dtype, shape));
    return new Tensor(this.#native, id, dtype, shape, this.device);
  }

  upload(dtype: DType, shape: readonly number[], data: HostArray): Tensor {
    const tensor = this.alloc(dtype, shape);
    try {
      this.write(tensor, data);
    } catch (error) {
      tensor.dispose();
      throw error;
    }
    return tensor;
  }

  write(tensor: Tensor, data: HostArray, offset = 0): void {
    const id = expectTensor('tensor', tensor, this.device);
    const array = expectHostArray('data', tensor.dtype, data);
    expectInteger('offset', offset, 0, storageLength(tensor) - array.length);
    callNative(() => this.#native.write(id, array, offset));
  }

  async read(tensor: Tensor, offset = 0, count?: number): Promise<HostArray> {
    const id = expectTensor('tensor', tensor, this.device);
    expectInteger('offset', offset, 0, storageLength(tensor));
    const length = count ?? storageLength(tensor) - offset;
    expectInteger('count', length, 0, storageLength(tensor) - offset);
    try {
      return hostArrayFor(tensor.dtype, await callNative(() => this.#native.read(id, offset, length)));
    } catch (error) {
      throw mapNativeError(error);
    }
  }

  copyRows(source: Tensor, target: Tensor, sourceRow = 0, targetRow = 0, rows?: number): void {
    const sourceId = expectTensor('source', source, this.device, { dtypes: ELEMENT_TYPES });
    const targetId = expectTensor('target', target, this.device, { dtypes: [source.dtype] });
    if (target.cols !== source.cols) {
      throw new DuoArgumentError(
        'target',
        `Expected \`target\` rows of ${source.cols} elements like \`source\` but received ${target.describe()}`,
      );
    }
    const count = rows ?? Math.min(source.rows - sourceRow, target.rows - targetRow);
    expectInteger('sourceRow', sourceRow, 0, source.rows);
    expectInteger('targetRow', targetRow, 0, target.rows);
    expectInteger('rows', count, 0, Math.min(source.rows - sourceRow, target.rows - targetRow));
    callNative(() => this.#native.copyRows(sourceId, targetId, sourceRow, targetRow, count));
  }

  convert(source: Tensor, target: Tensor): void {
    const sourceId = expectTensor('source', source, this.device, { dtypes: ELEMENT_TYPES });
    const targetId = expectTensor('target', target, this.device, { size: source.size, dtypes: ELEMENT_TYPES });
    callNative(() => this.#native.convert(sourceId, targetId));
  }

  /**
   * Fills a float tensor with approximately normal values (mean 0, standard deviation `std`) from a counter-based
   * generator: the same seed gives the same values on every backend. For benchmarks and tests.
   */
  fillRandom(tensor: Tensor, seed: number, std = 1): void {
    const id = expectTensor('tensor', tensor, this.device, { dtypes: FLOAT_TYPES });
    expectInteger('seed', seed, 0);
    expectPositive('std', std, -1e-30);
    callNative(() => this.#native.fillRandom(id, seed, std));
  }

  synchronize(): Promise<void> {
    return this.#native.synchronize(this.device).catch((error: unknown) => {
      throw mapNativeError(error);
    });
  }

  /** Sets the backend's knobs (`BackendTuning`); each backend reads its own (the CPU: `cpuIntegerQ8`). */
  tune(tuning: BackendTuning): void {
    const { gemvMinSlice, gemvWaveRule, gemvPinnedSplits, skinnyRowsMax, decodeMmaBlocks, decodeBatchMerge } = tuning;
    if (skinnyRowsMax !== undefined) expectInteger('tuning.skinnyRowsMax', skinnyRowsMax, 0, 64);
    if (decodeMmaBlocks !== undefined) expectInteger('tuning.decodeMmaBlocks', decodeMmaBlocks, 2, 3);
    if (decodeBatchMerge !== undefined) expectInteger('tuning.decodeBatchMerge', decodeBatchMerge, 1, 64);
    if (gemvMinSlice !== undefined) expectInteger('tuning.gemvMinSlice', gemvMinSlice, 1);
    if (gemvWaveRule !== undefined) expectInteger('tuning.gemvWaveRule', gemvWaveRule, 0, 2);
    if (gemvPinnedSplits !== undefined && !/^(\d+x\d+:\d+)(,\d+x\d+:\d+)*$/.test(gemvPinnedSplits)) {
      throw new DuoArgumentError(
        'tuning.gemvPinnedSplits',
        `Expected \`tuning.gemvPinnedSplits\` like "6144x4096:4,4096x14336:2" but received ${JSON.stringify(gemvPinnedSplits)}`,
      );
    }
    // The addon reads the fields it knows by name (absent ones keep their defaults).
    callNative(() => this.#native.tune(this.device, tuning));
  }

  /**
   * Device time per op name since the last call (launch gaps included), when the CUDA backend runs with
   * DUO_CUDA_PROFILE=1; an empty list otherwise. Synchronises.
   */
  takeProfile(): { name: string; count: number; milliseconds: number }[] {
    return callNative(() => this.#native.takeProfile(this.device));
  }

  resetPeakMemory(): void {
    callNative(() => this.#native.resetPeak(this.device));
  }

  memory(): BackendMemory {
    const memory = callNative(() => this.#native.memory(this.device));
    return this.device === 'cpu' ? { allocatedBytes: memory.allocatedBytes, peakBytes: memory.peakBytes } : memory;
  }

  /**
   * The dtypes a weight may have: the floats and the block formats kept quantized (ADR 0010), read in place by both
   * backends' forward ops. The matmul's backward on CUDA reads floats only (gate training keeps f32/bf16 weights):
   * a block-format weight there is refused by name with the way out.
   */
  #weightTypes(argument: string, weight: unknown, backward = false): readonly DType[] {
    if (!backward || this.device === 'cpu') return WEIGHT_TYPES;
    const dtype = (weight as { dtype?: unknown } | undefined)?.dtype;
    if (typeof dtype === 'string' && isDType(dtype) && isBlockDType(dtype)) {
      throw new DuoArgumentError(
        argument,
        `Expected a f32/f16/bf16 tensor for \`${argument}\` but received ${dtype}: the CUDA matmul backward does not read ${dtype} blocks — load the model with weightDtype 'bf16' for gate training (or run on the CPU)`,
      );
    }
    return FLOAT_TYPES;
  }

  embedding(table: Tensor, ids: Tensor, out: Tensor): void {
    const tableId = expectTensor('table', table, this.device, {
      dtypes: this.#weightTypes('table', table),
      shape: [null, null],
    });
    const idsId = expectTensor('ids', ids, this.device, { dtypes: I32, shape: [null] });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: [ids.size, table.cols] });
    callNative(() => this.#native.embedding(tableId, idsId, outId));
  }

  rmsNorm(x: Tensor, weight: Tensor, out: Tensor, eps: number): void {
    const xId = expectTensor('x', x, this.device, { dtypes: F32 });
    const weightId = expectTensor('weight', weight, this.device, { dtypes: FLOAT_TYPES, shape: [x.cols] });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: x.shape });
    expectPositive('eps', eps);
    callNative(() => this.#native.rmsNorm(xId, weightId, outId, eps));
  }

  matmul(x: Tensor, weight: Tensor, out: Tensor, options: { bias?: Tensor; residual?: Tensor } = {}): void {
    const weightId = expectTensor('weight', weight, this.device, {
      dtypes: this.#weightTypes('weight', weight),
      shape: [null, null],
    });
    const [outputs = 0, inner = 0] = weight.shape;
    const xId = expectTensor('x', x, this.device, { dtypes: F32, shape: [null, inner] });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: [x.rows, outputs] });
    const bias = options.bias
      ? expectTensor('bias', options.bias, this.device, { dtypes: F32, shape: [outputs] })
      : undefined;
    const residual = options.residual
      ? expectTensor('residual', options.residual, this.device, { dtypes: F32, shape: [x.rows, outputs] })
      : undefined;
    if (out === x) throw new DuoArgumentError('out', '`out` must not alias `x` in matmul');
    callNative(() => this.#native.matmul(xId, weightId, outId, { bias, residual }));
  }

  matmulGroup(
    x: Tensor,
    weights: readonly Tensor[],
    outs: readonly Tensor[],
    biases: readonly (Tensor | undefined)[] = [],
  ): void {
    if (!Array.isArray(weights) || weights.length < 1 || weights.length > 3 || outs.length !== weights.length) {
      throw new DuoArgumentError(
        'weights',
        `Expected one to three \`weights\` and as many \`outs\` but received ${describeValue(weights)} and ${describeValue(outs)}`,
      );
    }
    const inner = weights[0]?.shape[1] ?? 0;
    const xId = expectTensor('x', x, this.device, { dtypes: F32, shape: [null, inner] });
    const weightIds: number[] = [];
    const outIds: number[] = [];
    const biasIds: number[] = [];
    weights.forEach((weight, i) => {
      const dtypes = this.#weightTypes(`weights[${i}]`, weight);
      weightIds.push(expectTensor(`weights[${i}]`, weight, this.device, { dtypes, shape: [null, inner] }));
      const outputs = weight.shape[0] ?? 0;
      outIds.push(expectTensor(`outs[${i}]`, outs[i], this.device, { dtypes: F32, shape: [x.rows, outputs] }));
      const bias = biases[i];
      biasIds.push(bias ? expectTensor(`biases[${i}]`, bias, this.device, { dtypes: F32, shape: [outputs] }) : 0);
    });
    callNative(() => this.#native.matmulGroup(xId, weightIds, outIds, biasIds));
  }

  matmulSwiglu(x: Tensor, gate: Tensor, up: Tensor, out: Tensor): void {
    const gateId = expectTensor('gate', gate, this.device, {
      dtypes: this.#weightTypes('gate', gate),
      shape: [null, null],
    });
    const upId = expectTensor('up', up, this.device, { dtypes: [gate.dtype], shape: gate.shape });
    const xId = expectTensor('x', x, this.device, { dtypes: F32, shape: [null, gate.shape[1] ?? 0] });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: [x.rows, gate.shape[0] ?? 0] });
    callNative(() => this.#native.matmulSwiglu(xId, gateId, upId, outId));
  }

  ropeWriteCache(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    positions: Tensor,
    inverseFrequencies: Tensor,
    keyCache: Tensor,
    valueCache: Tensor,
    attributes: RopeAttributes & {
      kvHeads: number;
      streaming?: StreamingHeads;
      quant?: QuantizedKv;
      shard?: ContextShard;
    },
  ): void {
    const { heads, kvHeads, headDim, interleaved, quant } = attributes;
    expectInteger('heads', heads, 1);
    expectInteger('kvHeads', kvHeads, 1, heads);
    expectInteger('headDim', headDim, 2);
    if (headDim % 2 !== 0)
      throw new DuoArgumentError('headDim', `Expected an even \`headDim\` but received ${headDim}`);
    const queryId = expectTensor('query', query, this.device, { dtypes: F32, shape: [null, heads * headDim] });
    const keyId = expectTensor('key', key, this.device, { dtypes: F32, shape: [query.rows, kvHeads * headDim] });
    const valueId = expectTensor('value', value, this.device, { dtypes: F32, shape: key.shape });
    const positionsId = expectTensor('positions', positions, this.device, { dtypes: I32, shape: [query.rows] });
    const frequencyId = expectTensor('inverseFrequencies', inverseFrequencies, this.device, {
      dtypes: F32,
      shape: [headDim / 2],
    });
    const keyCacheId = expectTensor('keyCache', keyCache, this.device, {
      dtypes: quant ? ['u8'] : FLOAT_TYPES,
      shape: [mainCacheHeads(attributes.streaming, kvHeads), null, cacheRowWidth(quant, headDim)],
    });
    const valueCacheId = expectTensor('valueCache', valueCache, this.device, {
      dtypes: [keyCache.dtype],
      shape: keyCache.shape,
    });
    const streaming = streamingFields(this.device, attributes.streaming, kvHeads, keyCache, 0);
    const nativeQuant = quantFields(this.device, attributes, keyCache);
    const shard = shardFields(attributes.shard);
    callNative(() =>
      this.#native.ropeWriteCache(queryId, keyId, valueId, positionsId, frequencyId, keyCacheId, valueCacheId, {
        heads,
        kvHeads,
        headDim,
        interleaved: Boolean(interleaved),
        streaming,
        quant: nativeQuant,
        ...(shard ? { shard } : {}),
      }),
    );
  }

  rope(
    x: Tensor,
    positions: Tensor,
    inverseFrequencies: Tensor,
    attributes: RopeAttributes & { inverse?: boolean },
  ): void {
    const { heads, headDim, interleaved } = attributes;
    expectInteger('heads', heads, 1);
    expectInteger('headDim', headDim, 2);
    if (headDim % 2 !== 0)
      throw new DuoArgumentError('headDim', `Expected an even \`headDim\` but received ${headDim}`);
    const xId = expectTensor('x', x, this.device, { dtypes: F32, shape: [null, heads * headDim] });
    const positionsId = expectTensor('positions', positions, this.device, { dtypes: I32, shape: [x.rows] });
    const frequencyId = expectTensor('inverseFrequencies', inverseFrequencies, this.device, {
      dtypes: F32,
      shape: [headDim / 2],
    });
    const inverse = Boolean(attributes.inverse);
    callNative(() =>
      this.#native.rope(xId, positionsId, frequencyId, { heads, headDim, interleaved: Boolean(interleaved), inverse }),
    );
  }

  // The element-wise ops (ELEMENTWISE_OPS): one method per entry, installed on the prototype here. Each checks its
  // inputs (f32, the first input's shape) and `out`, then calls the addon's export of the same name.
  static {
    for (const name of ELEMENTWISE_NAMES) {
      const method = function (this: NativeBackend, ...tensors: unknown[]): void {
        this.#elementwise(name, tensors);
      };
      Object.defineProperty(NativeBackend.prototype, name, { value: method, writable: true, configurable: true });
    }
  }

  #elementwise(name: ElementwiseName, tensors: readonly unknown[]): void {
    const { inputs } = ELEMENTWISE_OPS[name];
    const [first] = tensors;
    expectTensor(inputs[0] ?? 'input', first, this.device, { dtypes: F32 });
    const shape = (first as Tensor).shape;
    const ids = [...inputs, 'out'].map((input, i) =>
      expectTensor(input, tensors[i], this.device, { dtypes: F32, shape }),
    );
    callNative(() => this.#native[name](...ids));
  }

  writeCache(source: Tensor, cache: Tensor, start: number): void {
    const cacheId = expectTensor('cache', cache, this.device, { dtypes: FLOAT_TYPES, shape: [null, null, null] });
    const [kvHeads = 0, capacity = 0, headDim = 0] = cache.shape;
    const sourceId = expectTensor('source', source, this.device, { dtypes: F32, shape: [null, kvHeads * headDim] });
    expectInteger('start', start, 0, capacity - source.rows);
    callNative(() => this.#native.writeCache(sourceId, cacheId, start));
  }

  attentionPrefill(
    query: Tensor,
    keyCache: Tensor,
    valueCache: Tensor,
    out: Tensor,
    attributes: PrefillAttentionAttributes,
  ): void {
    const ids = attentionIds(this.device, query, keyCache, valueCache, out, attributes);
    expectInteger('queryStart', attributes.queryStart, 0);
    const fields = this.#prefillFields(attributes, keyCache, query.rows);
    callNative(() => this.#native.attentionPrefill(...ids, fields));
  }

  /** A prefill-shaped attention's fields for the addon (the caller checked its tensors). */
  #prefillFields(attributes: PrefillAttentionAttributes, keyCache: Tensor, rows: number) {
    const { heads, kvHeads, headDim, scale, keyLength, queryStart } = attributes;
    const streaming = streamingFields(this.device, attributes.streaming, kvHeads, keyCache, rows);
    const quant = quantFields(this.device, attributes, keyCache);
    return { heads, kvHeads, headDim, scale, keyLength, queryStart, streaming, quant };
  }

  attentionPartial(
    query: Tensor,
    keyCache: Tensor,
    valueCache: Tensor,
    partial: Tensor,
    attributes: PartialAttentionAttributes,
  ): void {
    const ids = partialAttentionIds(this.device, query, keyCache, valueCache, partial, attributes);
    const fields = this.#prefillFields(attributes, keyCache, query.rows);
    const shard = shardFields(attributes.shard);
    callNative(() => this.#native.attentionPartial(...ids, { ...fields, ...(shard ? { shard } : {}) }));
  }

  mergeAttention(parts: Tensor, out: Tensor, attributes: MergeAttentionAttributes): void {
    const { parts: count, heads, headDim } = attributes;
    expectInteger('parts', count, 1);
    expectInteger('heads', heads, 1);
    expectInteger('headDim', headDim, 1);
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: [null, heads * headDim] });
    const partsId = expectTensor('parts', parts, this.device, {
      dtypes: F32,
      shape: [count * out.rows, heads * (headDim + 1)],
    });
    callNative(() => this.#native.mergeAttention(partsId, outId, { parts: count, heads, headDim }));
  }

  attentionDecode(
    query: Tensor,
    keyCache: Tensor,
    valueCache: Tensor,
    out: Tensor,
    attributes: DecodeAttentionAttributes,
  ): void {
    const ids = attentionIds(this.device, query, keyCache, valueCache, out, attributes);
    const { heads, kvHeads, headDim, scale, keyLength, lengthFrom } = attributes;
    expectInteger('keyLength', keyLength, 1);
    const lengthId = lengthFrom
      ? expectTensor('lengthFrom', lengthFrom, this.device, { dtypes: I32, shape: [1] })
      : undefined;
    const streaming = streamingFields(this.device, attributes.streaming, kvHeads, keyCache, 1);
    const quant = quantFields(this.device, attributes, keyCache);
    callNative(() =>
      this.#native.attentionDecode(...ids, {
        heads,
        kvHeads,
        headDim,
        scale,
        keyLength,
        lengthFrom: lengthId,
        streaming,
        quant,
      }),
    );
  }

  decodeAdvance(next: Tensor, ids: Tensor, positions: Tensor): void {
    const nextId = expectTensor('next', next, this.device, { dtypes: I32, shape: [1] });
    const idsId = expectTensor('ids', ids, this.device, { dtypes: I32, shape: [1] });
    const positionsId = expectTensor('positions', positions, this.device, { dtypes: I32, shape: [1] });
    callNative(() => this.#native.decodeAdvance(nextId, idsId, positionsId));
  }

  /** Whether `captureGraph` works here (CUDA). */
  get supportsGraphs(): boolean {
    return this.device === 'cuda';
  }

  captureGraph(record: () => void): number {
    if (!this.supportsGraphs) throw new DuoArgumentError('backend', `The ${this.device} backend cannot capture graphs`);
    callNative(() => this.#native.graphBegin(this.device));
    try {
      record();
    } catch (error) {
      try {
        this.#native.graphEnd(this.device);
      } catch {
        // The capture is already broken; the original error says why.
      }
      throw error;
    }
    return callNative(() => this.#native.graphEnd(this.device));
  }

  launchGraph(graph: number): void {
    expectInteger('graph', graph, 1);
    callNative(() => this.#native.graphLaunch(this.device, graph));
  }

  disposeGraph(graph: number): void {
    callNative(() => this.#native.graphFree(this.device, graph));
  }

  argmax(logits: Tensor, out: Tensor): void {
    const logitsId = expectTensor('logits', logits, this.device, { dtypes: F32 });
    const outId = expectTensor('out', out, this.device, { dtypes: I32, size: logits.rows });
    callNative(() => this.#native.argmax(logitsId, outId));
  }

  createCacheBatch(
    sequences: readonly (readonly BatchCacheLayer[])[],
    attributes: { readonly kvHeads: number; readonly headDim: number },
  ): NativeCacheBatch {
    return new NativeCacheBatch(this.#native, this.device, sequences, attributes);
  }

  ropeWriteCacheBatch(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    positions: Tensor,
    inverseFrequencies: Tensor,
    batch: CacheBatch,
    layer: number,
    attributes: RopeAttributes & { readonly kvHeads: number },
  ): void {
    const { heads, kvHeads, headDim, interleaved } = attributes;
    expectHeads(heads, kvHeads);
    expectInteger('headDim', headDim, 2);
    if (headDim % 2 !== 0)
      throw new DuoArgumentError('headDim', `Expected an even \`headDim\` but received ${headDim}`);
    const cacheBatch = expectCacheBatch(batch, layer, kvHeads, headDim);
    const rows = cacheBatch.rows;
    const queryId = expectTensor('query', query, this.device, { dtypes: F32, shape: [rows, heads * headDim] });
    const keyId = expectTensor('key', key, this.device, { dtypes: F32, shape: [rows, kvHeads * headDim] });
    const valueId = expectTensor('value', value, this.device, { dtypes: F32, shape: key.shape });
    const positionsId = expectTensor('positions', positions, this.device, { dtypes: I32, shape: [rows] });
    const frequencyId = expectTensor('inverseFrequencies', inverseFrequencies, this.device, {
      dtypes: F32,
      shape: [headDim / 2],
    });
    callNative(() =>
      this.#native.ropeWriteCacheBatch(queryId, keyId, valueId, positionsId, frequencyId, cacheBatch.id, layer, {
        heads,
        kvHeads,
        headDim,
        interleaved: Boolean(interleaved),
      }),
    );
  }

  attentionBatch(
    query: Tensor,
    out: Tensor,
    batch: CacheBatch,
    layer: number,
    attributes: BatchAttentionAttributes,
  ): void {
    const { heads, kvHeads, headDim, scale } = attributes;
    expectHeads(heads, kvHeads);
    expectInteger('headDim', headDim, 1);
    expectPositive('scale', scale);
    const cacheBatch = expectCacheBatch(batch, layer, kvHeads, headDim);
    const queryId = expectTensor('query', query, this.device, {
      dtypes: F32,
      shape: [cacheBatch.rows, heads * headDim],
    });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: query.shape });
    callNative(() =>
      this.#native.attentionBatch(queryId, outId, cacheBatch.id, layer, { heads, kvHeads, headDim, scale }),
    );
  }

  sample(logits: Tensor, settings: Tensor, out: Tensor): void {
    const logitsId = expectTensor('logits', logits, this.device, { dtypes: F32, shape: [null, null] });
    const settingsId = expectTensor('settings', settings, this.device, { dtypes: F32, shape: [logits.rows, 4] });
    const outId = expectTensor('out', out, this.device, { dtypes: I32, shape: [logits.rows] });
    callNative(() => this.#native.sample(logitsId, settingsId, outId));
  }

  softmax(logits: Tensor, out: Tensor, temperature: number): void {
    const logitsId = expectTensor('logits', logits, this.device, { dtypes: F32 });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: logits.shape });
    expectPositive('temperature', temperature);
    callNative(() => this.#native.softmax(logitsId, outId, temperature));
  }

  writeCacheQuantized(
    source: Tensor,
    codes: Tensor,
    scales: Tensor,
    start: number,
    scheme: Exclude<KvQuantScheme, 'none'>,
  ): void {
    expectScheme(scheme);
    const codesId = expectTensor('codes', codes, this.device, { dtypes: ['u8'], shape: [null, null, null] });
    const [kvHeads = 0, capacity = 0] = codes.shape;
    const sourceId = expectTensor('source', source, this.device, { dtypes: F32, shape: [null, null] });
    const headDim = source.cols / Math.max(kvHeads, 1);
    if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
      throw new DuoArgumentError(
        'source',
        `Expected \`source\` rows of kvHeads (${kvHeads}) × an even head size but received ${source.describe()}`,
      );
    }
    const layout = kvQuantLayout(scheme, headDim);
    expectTensor('codes', codes, this.device, { dtypes: ['u8'], shape: [kvHeads, capacity, layout.codeBytes] });
    const scalesId = expectTensor('scales', scales, this.device, {
      dtypes: ['f16'],
      shape: [kvHeads, capacity, layout.scaleHalves],
    });
    expectInteger('start', start, 0, capacity - source.rows);
    callNative(() => this.#native.writeCacheQuantized(sourceId, codesId, scalesId, start, scheme));
  }

  matmulBackward(gradOut: Tensor, weight: Tensor, gradInput: Tensor, options: { accumulate?: boolean } = {}): void {
    const weightId = expectTensor('weight', weight, this.device, {
      dtypes: this.#weightTypes('weight', weight, true),
      shape: [null, null],
    });
    const gradOutId = expectTensor('gradOut', gradOut, this.device, {
      dtypes: F32,
      shape: [null, weight.shape[0] ?? 0],
    });
    const gradInputId = expectTensor('gradInput', gradInput, this.device, {
      dtypes: F32,
      shape: [gradOut.rows, weight.shape[1] ?? 0],
    });
    expectDistinct({ gradOut, gradInput });
    const accumulate = Boolean(options.accumulate);
    callNative(() => this.#native.matmulBackward(gradOutId, weightId, gradInputId, { accumulate }));
  }

  rmsNormBackward(
    x: Tensor,
    weight: Tensor,
    gradOut: Tensor,
    gradInput: Tensor,
    eps: number,
    options: { accumulate?: boolean } = {},
  ): void {
    const xId = expectTensor('x', x, this.device, { dtypes: F32 });
    const weightId = expectTensor('weight', weight, this.device, { dtypes: FLOAT_TYPES, shape: [x.cols] });
    const gradOutId = expectTensor('gradOut', gradOut, this.device, { dtypes: F32, shape: x.shape });
    const gradInputId = expectTensor('gradInput', gradInput, this.device, { dtypes: F32, shape: x.shape });
    expectPositive('eps', eps);
    expectDistinct({ x, gradInput });
    const accumulate = Boolean(options.accumulate);
    callNative(() => this.#native.rmsNormBackward(xId, weightId, gradOutId, gradInputId, eps, { accumulate }));
  }

  swigluBackward(gate: Tensor, up: Tensor, gradOut: Tensor, gradGate: Tensor, gradUp: Tensor): void {
    const gateId = expectTensor('gate', gate, this.device, { dtypes: F32 });
    const ids = (Object.entries({ up, gradOut, gradGate, gradUp }) as [string, Tensor][]).map(([name, tensor]) =>
      expectTensor(name, tensor, this.device, { dtypes: F32, shape: gate.shape }),
    );
    expectDistinct({ gradGate, gradUp, gate, up });
    const [upId = 0, gradOutId = 0, gradGateId = 0, gradUpId = 0] = ids;
    callNative(() => this.#native.swigluBackward(gateId, upId, gradOutId, gradGateId, gradUpId));
  }

  attentionBackward(
    query: Tensor,
    keyCache: Tensor,
    valueCache: Tensor,
    out: Tensor,
    gradOut: Tensor,
    gradQuery: Tensor,
    gradKey: Tensor,
    gradValue: Tensor,
    attributes: AttentionBackwardAttributes,
  ): void {
    const { heads, kvHeads, headDim, scale, length, window } = attributes;
    expectHeads(heads, kvHeads);
    expectInteger('headDim', headDim, 1, this.device === 'cuda' ? 256 : Number.MAX_SAFE_INTEGER);
    expectPositive('scale', scale);
    expectInteger('length', length, 0);
    if (window) {
      expectInteger('window.sink', window.sink, 0);
      expectInteger('window.recent', window.recent, 1);
    }
    const keyId = expectTensor('keyCache', keyCache, this.device, {
      dtypes: FLOAT_TYPES,
      shape: [kvHeads, null, headDim],
    });
    const valueId = expectTensor('valueCache', valueCache, this.device, {
      dtypes: [keyCache.dtype],
      shape: keyCache.shape,
    });
    expectInteger('length', length, 0, keyCache.shape[1] ?? 0);
    const rows = [length, heads * headDim];
    const queryId = expectTensor('query', query, this.device, { dtypes: F32, shape: rows });
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: rows });
    const gradOutId = expectTensor('gradOut', gradOut, this.device, { dtypes: F32, shape: rows });
    const gradQueryId = expectTensor('gradQuery', gradQuery, this.device, { dtypes: F32, shape: rows });
    const keyRows = [length, kvHeads * headDim];
    const gradKeyId = expectTensor('gradKey', gradKey, this.device, { dtypes: F32, shape: keyRows });
    const gradValueId = expectTensor('gradValue', gradValue, this.device, { dtypes: F32, shape: keyRows });
    expectDistinct({ gradQuery, gradKey, gradValue, query, gradOut });
    callNative(() =>
      this.#native.attentionBackward(queryId, keyId, valueId, outId, gradOutId, gradQueryId, gradKeyId, gradValueId, {
        heads,
        kvHeads,
        headDim,
        scale,
        length,
        window: window ? { sink: window.sink, recent: window.recent } : undefined,
      }),
    );
  }

  gateMix(streaming: Tensor, full: Tensor, gates: Tensor, out: Tensor, attributes: GateMixAttributes): void {
    const [streamingId, fullId, gatesId] = this.#gateMixIds(streaming, full, gates, attributes);
    const outId = expectTensor('out', out, this.device, { dtypes: F32, shape: streaming.shape });
    const { heads, kvHeads, headDim } = attributes;
    callNative(() => this.#native.gateMix(streamingId, fullId, gatesId, outId, { heads, kvHeads, headDim }));
  }

  gateMixBackward(
    gradOut: Tensor,
    streaming: Tensor,
    full: Tensor,
    gates: Tensor,
    gradStreaming: Tensor,
    gradGates: Tensor,
    attributes: GateMixAttributes,
  ): void {
    const [streamingId, fullId, gatesId] = this.#gateMixIds(streaming, full, gates, attributes);
    const gradOutId = expectTensor('gradOut', gradOut, this.device, { dtypes: F32, shape: streaming.shape });
    const gradStreamingId = expectTensor('gradStreaming', gradStreaming, this.device, {
      dtypes: F32,
      shape: streaming.shape,
    });
    const gradGatesId = expectTensor('gradGates', gradGates, this.device, {
      dtypes: F32,
      shape: [attributes.kvHeads],
    });
    expectDistinct({ gradStreaming, streaming, full });
    const { heads, kvHeads, headDim } = attributes;
    callNative(() =>
      this.#native.gateMixBackward(gradOutId, streamingId, fullId, gatesId, gradStreamingId, gradGatesId, {
        heads,
        kvHeads,
        headDim,
      }),
    );
  }

  #gateMixIds(streaming: Tensor, full: Tensor, gates: Tensor, attributes: GateMixAttributes): [number, number, number] {
    const { heads, kvHeads, headDim } = attributes;
    expectHeads(heads, kvHeads);
    expectInteger('headDim', headDim, 1);
    const streamingId = expectTensor('streaming', streaming, this.device, {
      dtypes: F32,
      shape: [null, heads * headDim],
    });
    const fullId = expectTensor('full', full, this.device, { dtypes: F32, shape: streaming.shape });
    const gatesId = expectTensor('gates', gates, this.device, { dtypes: F32, shape: [kvHeads] });
    return [streamingId, fullId, gatesId];
  }
}
