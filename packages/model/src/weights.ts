// The model's weights on a backend: loaded from a checkpoint, or random (made on the device) for benchmarks.
import {
  type Backend,
  type DType,
  type ModelConfig,
  quantizeWeights,
  storedWeightFormat,
  type TensorHandle,
  type WeightFormat,
} from '@duoattn/core';
import {
  type Checkpoint,
  loadTensor,
  loadTensorColumns,
  readTensorF32,
  requireTensor,
  storedRows,
} from './loaders/checkpoint.js';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames, weightShapes } from './loaders/names.js';
import { rankConfig, type SplitWeight, type TensorParallelRank, weightSlice } from './tensor-parallel.js';

/** One decoder layer's tensors. Norms and biases are f32; matrices keep the chosen weight dtype. */
export interface LayerWeights {
  attentionNorm: TensorHandle;
  query: TensorHandle;
  key: TensorHandle;
  value: TensorHandle;
  queryBias?: TensorHandle;
  keyBias?: TensorHandle;
  valueBias?: TensorHandle;
  output: TensorHandle;
  mlpNorm: TensorHandle;
  gate: TensorHandle;
  up: TensorHandle;
  down: TensorHandle;
}

export interface ModelWeights {
  embedding: TensorHandle;
  layers: LayerWeights[];
  finalNorm: TensorHandle;
  /** The output projection; the same tensor as `embedding` when tied. */
  lmHead: TensorHandle;
}

/** Weight dtype: keep the checkpoint's ('auto') or convert to one. */
export type WeightDtypeOption = 'auto' | 'f32' | 'f16' | 'bf16';

/** Frees every tensor of a weights object (the tied head once). */
export function disposeWeights(weights: ModelWeights): void {
  const seen = new Set<TensorHandle>();
  const all = [
    weights.embedding,
    weights.finalNorm,
    weights.lmHead,
    ...weights.layers.flatMap((l) => Object.values(l)),
  ];
  for (const tensor of all) {
    if (tensor && !seen.has(tensor)) {
      seen.add(tensor);
      tensor.dispose();
    }
  }
}

/** The tensor a canonical (HF Llama) name refers to, or undefined when the model has none by that name. */
export function weightByName(weights: ModelWeights, name: string): TensorHandle | undefined {
  if (name === EMBEDDING) return weights.embedding;
  if (name === FINAL_NORM) return weights.finalNorm;
  if (name === LM_HEAD) return weights.lmHead;
  const layer = /^model\.layers\.(\d+)\./.exec(name)?.[1];
  const layerWeights = layer === undefined ? undefined : weights.layers[Number(layer)];
  if (!layerWeights) return undefined;
  const names = layerNames(Number(layer));
  const field = (Object.keys(names) as (keyof typeof names)[]).find((key) => names[key] === name);
  return field === undefined ? undefined : layerWeights[field];
}

/**
 * Loads every weight of `checkpoint` onto `backend`, checking names and shapes; frees what it made on failure. With
 * `quant`, every matrix is quantized into that block format as it loads (our fallback, Q8_0 or f16, for rows the
 * format cannot split; ADR 0010) — on a backend that reads blocks (the CPU). With `part` (tensor parallelism, not with
 * `quant`), only the rank's slice of each split matrix is read and uploaded; the rest stays on disk.
 */
export function loadWeights(
  checkpoint: Checkpoint,
  backend: Backend,
  dtype: WeightDtypeOption,
  onProgress?: (done: number, total: number) => void,
  quant?: WeightFormat,
  part?: TensorParallelRank,
): ModelWeights {
  const { config } = checkpoint;
  const shape = weightShapes(config);
  const made: TensorHandle[] = [];
  const total = 3 + config.numLayers * 9;
  let done = 0;
  const matrix = (name: string, expected: number[], split?: SplitWeight): TensorHandle => {
    const stored = requireTensor(checkpoint, name, expected);
    const format = quant ? storedWeightFormat(quant, expected[expected.length - 1] ?? 0) : undefined;
    const target = quant ? 'f16' : dtype === 'auto' ? stored.encoding : dtype;
    const slice = part && split ? weightSlice(split, part) : undefined;
    const tensor = format
      ? backend.upload(format, expected, quantizeWeights(format, readTensorF32(stored)))
      : slice?.dimension === 'columns'
        ? loadTensorColumns(backend, stored, target, slice.start, slice.count)
        : loadTensor(backend, slice ? storedRows(stored, slice.start, slice.count) : stored, target);
    made.push(tensor);
    onProgress?.(++done, total);
    return tensor;
  };
  const vector = (name: string, length: number, split?: SplitWeight): TensorHandle => {
    const whole = requireTensor(checkpoint, name, [length]);
    const slice = part && split ? weightSlice(split, part) : undefined;
    const stored = slice ? storedRows(whole, slice.start, slice.count) : whole;
    const tensor = backend.upload('f32', [stored.shape[0] ?? 0], readTensorF32(stored));
    made.push(tensor);
    return tensor;
  };
  try {
    const embedding = matrix(EMBEDDING, shape.embedding);
    const layers = Array.from({ length: config.numLayers }, (_, layer): LayerWeights => {
      const names = layerNames(layer);
      const biases = config.attentionBias
        ? {
            queryBias: vector(names.queryBias, shape.query[0] ?? 0, 'query'),
            keyBias: vector(names.keyBias, shape.key[0] ?? 0, 'key'),
            valueBias: vector(names.valueBias, shape.value[0] ?? 0, 'value'),
          }
        : {};
      const attentionNorm = vector(names.attentionNorm, config.hiddenSize);
      onProgress?.(++done, total);
      return {
        attentionNorm,
        query: matrix(names.query, shape.query, 'query'),
        key: matrix(names.key, shape.key, 'key'),
        value: matrix(names.value, shape.value, 'value'),
        ...biases,
        output: matrix(names.output, shape.output, 'output'),
        mlpNorm: vector(names.mlpNorm, config.hiddenSize),
        gate: matrix(names.gate, shape.gate, 'gate'),
        up: matrix(names.up, shape.up, 'up'),
        down: matrix(names.down, shape.down, 'down'),
      };
    });
    const finalNorm = vector(FINAL_NORM, config.hiddenSize);
    onProgress?.(++done, total);
    const lmHead =
      config.tieWordEmbeddings && !checkpoint.tensors.has(LM_HEAD) ? embedding : matrix(LM_HEAD, shape.embedding);
    return { embedding, layers, finalNorm, lmHead };
  } catch (error) {
    for (const tensor of made) tensor.dispose();
    throw error;
  }
}

/** Options of `randomWeights`. */
export interface RandomWeightOptions {
  dtype: DType;
  seed?: number;
  /** Standard deviation of matrix entries. Default 0.02, like HF's initializer_range. */
  std?: number;
  /** A rank of a tensor-parallel group: the matrices are its slices' shapes. Default: the whole model. */
  part?: TensorParallelRank;
}

/**
 * Random weights generated on the backend itself (no host copy), for benchmarks at real shapes.
 * Norms are ones; biases small random values.
 */
export function randomWeights(config: ModelConfig, backend: Backend, options: RandomWeightOptions): ModelWeights {
  // A rank of a tensor-parallel group: its slices' shapes (random either way); rankConfig keeps the vocabulary and
  // hidden size, so the embedding and head stay whole.
  const shape = weightShapes(options.part ? rankConfig(config, options.part.size) : config);
  let seed = options.seed ?? 1;
  const std = options.std ?? 0.02;
  const made: TensorHandle[] = [];
  const matrix = (dims: number[]): TensorHandle => {
    const tensor = backend.alloc(options.dtype, dims);
    made.push(tensor);
    backend.fillRandom(tensor, seed++, std);
    return tensor;
  };
  const ones = (length: number): TensorHandle => {
    const tensor = backend.upload('f32', [length], new Float32Array(length).fill(1));
    made.push(tensor);
    return tensor;
  };
  const bias = (length: number): TensorHandle => {
    const tensor = backend.alloc('f32', [length]);
    made.push(tensor);
    backend.fillRandom(tensor, seed++, std);
    return tensor;
  };
  try {
    const embedding = matrix(shape.embedding);
    const layers = Array.from(
      { length: config.numLayers },
      (): LayerWeights => ({
        attentionNorm: ones(config.hiddenSize),
        query: matrix(shape.query),
        key: matrix(shape.key),
        value: matrix(shape.value),
        ...(config.attentionBias
          ? {
              queryBias: bias(shape.query[0] ?? 0),
              keyBias: bias(shape.key[0] ?? 0),
              valueBias: bias(shape.value[0] ?? 0),
            }
          : {}),
        output: matrix(shape.output),
        mlpNorm: ones(config.hiddenSize),
        gate: matrix(shape.gate),
        up: matrix(shape.up),
        down: matrix(shape.down),
      }),
    );
    const finalNorm = ones(config.hiddenSize);
    const lmHead = config.tieWordEmbeddings ? embedding : matrix(shape.embedding);
    return { embedding, layers, finalNorm, lmHead };
  } catch (error) {
    for (const tensor of made) tensor.dispose();
    throw error;
  }
}
