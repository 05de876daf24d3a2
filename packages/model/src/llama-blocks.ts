// The Llama block, written once: each step that reads a weight (embedding, attention input and output, MLP, final
// norm and head, and their backward), composed by sessions, the gate trainer and analyses around their own attention.
import { type Backend, DuoArgumentError, type ModelConfig, type TensorHandle } from '@duoattn/core';
import type { TensorParallelRank } from './tensor-parallel.js';
import type { LayerWeights, ModelWeights } from './weights.js';

/**
 * The steps of a Llama-family forward (and the backward through the frozen weights) over one model's weights. Each
 * step enqueues backend ops into tensors the caller owns, so a caller keeps its own buffers, its own attention (cache
 * writes, prefill or decode, DuoAttention's gate mix) and, on CUDA, can capture the same ops in a graph. The weights
 * themselves never leave the model. Activations are f32; `n` below is the number of rows (tokens).
 *
 * On a rank of a tensor-parallel group (`tensorParallel`), `config` is the rank's share (its heads, its part of the
 * MLP's width) and the two row-parallel products leave a partial residual stream: after `attentionOutput` and after
 * `mlp` the caller awaits `reduce` on the same tensor, which sums it over the ranks (rank 0 alone adds the residual).
 */
export class LlamaBlocks {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** The model's place in a tensor-parallel group, or undefined when it holds every weight whole. */
  readonly tensorParallel: TensorParallelRank | undefined;
  readonly #weights: ModelWeights;

  /** @internal Made by `LlamaModel`; use `model.blocks`. */
  constructor(backend: Backend, config: ModelConfig, weights: ModelWeights, tensorParallel?: TensorParallelRank) {
    this.backend = backend;
    this.config = config;
    this.tensorParallel = tensorParallel;
    this.#weights = weights;
  }

  /**
   * Tensor parallelism: sums `hidden` over the ranks after `attentionOutput` or `mlp` (every rank then holds the whole
   * residual stream, the same bits on each). Alone: nothing to do. The collective is called synchronously (a refused
   * argument throws here), so a stream-ordered one is enqueued when this returns.
   */
  reduce(hidden: TensorHandle): Promise<void> {
    return this.tensorParallel ? this.tensorParallel.communicator.allReduceSum(hidden) : Promise.resolve();
  }

  /** `out` (f32 `[n, hiddenSize]`) = the embedding rows of `ids` (i32 `[n]`). */
  embed(ids: TensorHandle, out: TensorHandle): void {
    this.backend.embedding(this.#weights.embedding, ids, out);
  }

  /**
   * The attention's inputs of layer `layer`: `normed` = RMSNorm(`hidden`), then `query`, `key`, `value` (f32
   * `[n, heads · headDim]`, `[n, kvHeads · headDim]` twice) = its q/k/v projections with their biases, in one pass
   * over `normed`. RoPE and the cache writes are the caller's.
   */
  attentionInput(
    layer: number,
    hidden: TensorHandle,
    normed: TensorHandle,
    query: TensorHandle,
    key: TensorHandle,
    value: TensorHandle,
  ): void {
    const weights = this.#layer(layer);
    this.backend.rmsNorm(hidden, weights.attentionNorm, normed, this.config.rmsNormEps);
    this.backend.matmulGroup(
      normed,
      [weights.query, weights.key, weights.value],
      [query, key, value],
      [weights.queryBias, weights.keyBias, weights.valueBias],
    );
  }

  /**
   * `out` = `hidden` + o_proj(`attention`): the attention's output projection and the residual (in place by default).
   * Tensor parallelism: this rank's partial product (rank 0's with the residual); `reduce(out)` completes it.
   */
  attentionOutput(layer: number, attention: TensorHandle, hidden: TensorHandle, out: TensorHandle = hidden): void {
    this.backend.matmul(attention, this.#layer(layer).output, out, this.#residual(hidden));
  }

  /**
   * `hidden` += down(silu(gate(x)) ⊙ up(x)) with x = RMSNorm(`hidden`): the MLP half of layer `layer`, in place.
   * `normed` (f32 `[n, hiddenSize]`) and `activation` (f32 `[n, intermediateSize]`) are work buffers. Tensor
   * parallelism: `hidden` becomes this rank's partial sum; `reduce(hidden)` completes it.
   */
  mlp(layer: number, hidden: TensorHandle, normed: TensorHandle, activation: TensorHandle): void {
    const weights = this.#layer(layer);
    this.backend.rmsNorm(hidden, weights.mlpNorm, normed, this.config.rmsNormEps);
    this.backend.matmulSwiglu(normed, weights.gate, weights.up, activation);
    this.backend.matmul(activation, weights.down, hidden, this.#residual(hidden));
  }

  /** The residual a row-parallel product adds: always alone, only on rank 0 of a tensor-parallel group. */
  #residual(hidden: TensorHandle): { residual?: TensorHandle } {
    return !this.tensorParallel || this.tensorParallel.rank === 0 ? { residual: hidden } : {};
  }

  /** `out` = the final RMSNorm of `hidden` (both f32 `[n, hiddenSize]`). */
  finalNorm(hidden: TensorHandle, out: TensorHandle): void {
    this.backend.rmsNorm(hidden, this.#weights.finalNorm, out, this.config.rmsNormEps);
  }

  /** `logits` (f32 `[n, vocabSize]`) of the last layer's `hidden`: the final norm into `normed`, then the output head. */
  logits(hidden: TensorHandle, normed: TensorHandle, logits: TensorHandle): void {
    this.finalNorm(hidden, normed);
    this.backend.matmul(normed, this.#weights.lmHead, logits);
  }

  /** `gradHidden` = ∂loss/∂`hidden` of the final norm, given `gradNormed` = ∂loss/∂(its output). */
  finalNormBackward(hidden: TensorHandle, gradNormed: TensorHandle, gradHidden: TensorHandle): void {
    this.#whole('finalNormBackward');
    this.backend.rmsNormBackward(hidden, this.#weights.finalNorm, gradNormed, gradHidden, this.config.rmsNormEps);
  }

  /**
   * The MLP's backward by recomputation: `hidden` is its input, `gradient` holds ∂loss/∂(its output) and becomes
   * ∂loss/∂`hidden` in place (the residual passes it through; the MLP's path is added). `normed` and `activation`
   * are work buffers shaped as for `mlp`; the other intermediates are made and freed here.
   */
  mlpBackward(
    layer: number,
    hidden: TensorHandle,
    gradient: TensorHandle,
    normed: TensorHandle,
    activation: TensorHandle,
  ): void {
    this.#whole('mlpBackward');
    const b = this.backend;
    const weights = this.#layer(layer);
    const rows = hidden.shape[0] ?? 0;
    const { hiddenSize, intermediateSize, rmsNormEps } = this.config;
    const made: TensorHandle[] = [];
    const alloc = (width: number) => {
      const tensor = b.alloc('f32', [rows, width]);
      made.push(tensor);
      return tensor;
    };
    try {
      // The SwiGLU backward needs both pre-activations, so gate and up run apart here (`mlp` fuses them).
      b.rmsNorm(hidden, weights.mlpNorm, normed, rmsNormEps);
      const gate = activation;
      const up = alloc(intermediateSize);
      b.matmul(normed, weights.gate, gate);
      b.matmul(normed, weights.up, up);
      const gradActivation = alloc(intermediateSize);
      const gradGate = alloc(intermediateSize);
      b.matmulBackward(gradient, weights.down, gradActivation);
      // ∂/∂up overwrites the upstream gradient in place (element by element, each read before it is written).
      b.swigluBackward(gate, up, gradActivation, gradGate, gradActivation);
      const gradNormed = alloc(hiddenSize);
      b.matmulBackward(gradGate, weights.gate, gradNormed);
      b.matmulBackward(gradActivation, weights.up, gradNormed, { accumulate: true });
      b.rmsNormBackward(hidden, weights.mlpNorm, gradNormed, gradient, rmsNormEps, { accumulate: true });
    } finally {
      for (const tensor of made) tensor.dispose();
    }
  }

  /** `gradAttention` = ∂loss/∂(the attention output) through o_proj, given `gradient` = ∂loss/∂(the layer's sum). */
  attentionOutputBackward(layer: number, gradient: TensorHandle, gradAttention: TensorHandle): void {
    this.#whole('attentionOutputBackward');
    this.backend.matmulBackward(gradient, this.#layer(layer).output, gradAttention);
  }

  /**
   * Adds to `gradient` the attention input's share of ∂loss/∂`hidden`: back through the q/k/v projections and the
   * attention norm, given ∂loss/∂ of the unrotated `query`, `key` and `value` (undo RoPE first).
   */
  attentionInputBackward(
    layer: number,
    hidden: TensorHandle,
    gradQuery: TensorHandle,
    gradKey: TensorHandle,
    gradValue: TensorHandle,
    gradient: TensorHandle,
  ): void {
    this.#whole('attentionInputBackward');
    const b = this.backend;
    const weights = this.#layer(layer);
    const gradNormed = b.alloc('f32', [hidden.shape[0] ?? 0, this.config.hiddenSize]);
    try {
      b.matmulBackward(gradQuery, weights.query, gradNormed);
      b.matmulBackward(gradKey, weights.key, gradNormed, { accumulate: true });
      b.matmulBackward(gradValue, weights.value, gradNormed, { accumulate: true });
      b.rmsNormBackward(hidden, weights.attentionNorm, gradNormed, gradient, this.config.rmsNormEps, {
        accumulate: true,
      });
    } finally {
      gradNormed.dispose();
    }
  }

  /** The backward steps need every weight whole: a tensor-parallel rank holds slices. */
  #whole(step: string): void {
    if (this.tensorParallel) {
      throw new DuoArgumentError(
        'model',
        `${step} needs a model that holds every weight whole, but this one is rank ${this.tensorParallel.rank} of a tensor-parallel group of ${this.tensorParallel.size} (load it without tensorParallel to train gates)`,
      );
    }
  }

  #layer(layer: number): LayerWeights {
    const weights = this.#weights.layers[layer];
    if (!weights) {
      throw new DuoArgumentError(
        'layer',
        `Expected \`layer\` in [0, ${this.#weights.layers.length}) but received ${String(layer)}`,
      );
    }
    return weights;
  }
}
