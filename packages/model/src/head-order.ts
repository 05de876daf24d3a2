// Reorders a model's KV heads (q/k/v rows and biases, o_proj columns) so each layer's retrieval heads come first.
import type { Backend, HostArray, ModelConfig, TensorHandle } from '@duoattn/core';
import type { LayerWeights, ModelWeights } from './weights.js';

/**
 * Permutes the heads of every layer from `current[layer]` to `target[layer]` (position i of a layer holds checkpoint
 * KV head `order[i]`; its query heads follow it as a group). Attention over all heads is unchanged by the order, so a
 * reordered model still runs full attention exactly; DuoAttention then finds each layer's retrieval heads as a slice.
 * q/k/v rows move on the device; biases and o_proj's columns go through the host.
 */
export async function reorderKvHeads(
  backend: Backend,
  config: ModelConfig,
  weights: ModelWeights,
  current: readonly (readonly number[])[],
  target: readonly (readonly number[])[],
): Promise<void> {
  const group = config.numHeads / config.numKvHeads;
  const d = config.headDim;
  for (let layer = 0; layer < config.numLayers; layer++) {
    const from = current[layer] ?? [];
    const to = target[layer] ?? [];
    // source[i]: the current position of the head that goes to position i.
    const source = to.map((head) => from.indexOf(head));
    if (source.every((j, i) => j === i)) continue;
    const lw = weights.layers[layer] as LayerWeights;
    lw.query = permuteRows(backend, lw.query, source, group * d);
    lw.key = permuteRows(backend, lw.key, source, d);
    lw.value = permuteRows(backend, lw.value, source, d);
    if (lw.queryBias) await permuteHost(backend, lw.queryBias, source, group * d, 1);
    if (lw.keyBias) await permuteHost(backend, lw.keyBias, source, d, 1);
    if (lw.valueBias) await permuteHost(backend, lw.valueBias, source, d, 1);
    await permuteHost(backend, lw.output, source, group * d, config.hiddenSize);
  }
}

/** A copy of `matrix` with row blocks of `block` rows permuted (block i comes from block source[i]); frees the old. */
function permuteRows(backend: Backend, matrix: TensorHandle, source: readonly number[], block: number): TensorHandle {
  const permuted = backend.alloc(matrix.dtype, matrix.shape);
  for (const [i, j] of source.entries()) backend.copyRows(matrix, permuted, j * block, i * block, block);
  matrix.dispose();
  return permuted;
}

/**
 * Permutes, in place through the host, blocks of `block` consecutive elements within each of `rows` rows of `tensor`
 * (o_proj's columns per head group, or a bias vector with rows = 1).
 */
async function permuteHost(
  backend: Backend,
  tensor: TensorHandle,
  source: readonly number[],
  block: number,
  rows: number,
): Promise<void> {
  const data = await backend.read(tensor);
  const out = data.slice() as HostArray;
  const width = data.length / rows;
  for (let r = 0; r < rows; r++) {
    const row = r * width;
    for (const [i, j] of source.entries())
      out.set(data.subarray(row + j * block, row + (j + 1) * block), row + i * block);
  }
  backend.write(tensor, out);
}
