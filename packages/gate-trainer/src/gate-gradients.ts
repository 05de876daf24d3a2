// One training step's forward and backward through the frozen model: the teacher (full attention) and the student
// (per KV head (1 − α)·streaming + α·full, the full term from the teacher's Q/K/V as in the reference), the
// distillation loss on the answer rows' final normed hidden states, and ∂loss/∂α by per-layer recomputation (only each
// layer's input and the teacher's attention output are kept across layers).
import { type Backend, type DType, DuoArgumentError, type ModelConfig, type TensorHandle } from '@duoattn/core';
import { type LlamaBlocks, type LlamaModel, ropeInverseFrequencies } from '@duoattn/model';

/** What one step needs of a model: its config, its block steps over the frozen weights on a backend, RoPE frequencies. */
export interface FrozenModel {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** The model's `blocks`: every step that reads a weight, forward and backward. */
  readonly blocks: LlamaBlocks;
  /** f32 `[headDim / 2]` on the backend. */
  readonly inverseFrequencies: TensorHandle;
  /** KV-cache dtype for the attention ops (f32 on the CPU, the weights' 16-bit type on CUDA). */
  readonly cacheDtype: DType;
}

/**
 * The frozen view of a loaded model that training uses (dispose it to free its RoPE table). Its KV heads are in
 * checkpoint order (a model's weights are never reordered), so the gates line up with the pattern files.
 */
export function freezeModel(model: LlamaModel): FrozenModel & { dispose(): void } {
  const inverseFrequencies = model.backend.upload(
    'f32',
    [model.config.headDim / 2],
    ropeInverseFrequencies(model.config),
  );
  return {
    config: model.config,
    backend: model.backend,
    blocks: model.blocks,
    inverseFrequencies,
    cacheDtype: model.defaultCacheDtype,
    dispose: () => inverseFrequencies.dispose(),
  };
}

/** The streaming heads' window in training (reference: sink 128, recent 256). */
export interface StreamingWindow {
  readonly sink: number;
  readonly recent: number;
}

/**
 * Where the full-attention term of the student's mix comes from. `'teacher'` (the reference code, the default):
 * Full(Q_t, K_t, V_t) from the teacher's pass, a constant. `'student'` (the paper's wording): Full(Q_s, K_s, V_s) on the
 * student's own inputs, differentiated like the streaming term — a causal attention backward per layer, several times
 * slower here. Both found the same retrieval heads on the demo model (docs/decisions/0005-gate-trainer.md).
 */
export type FullTerm = 'student' | 'teacher';

/** How the loss is defined. */
export interface GateLossOptions {
  /** Streaming heads' window (reference: sink 128, recent 256). */
  readonly window: StreamingWindow;
  /** Default `'teacher'`. */
  readonly fullTerm?: FullTerm;
}

export interface GateGradients {
  /** Mean over answer rows and channels of (teacher − student)² of the final normed hidden states. */
  distillation: number;
  /** ∂distillation/∂α in layer-major order; absent for a forward-only evaluation. */
  gradients?: Float64Array;
}

/** Tensors of one step, freed together. */
class Scope {
  readonly #backend: Backend;
  readonly #tensors: TensorHandle[] = [];
  constructor(backend: Backend) {
    this.#backend = backend;
  }
  alloc(shape: readonly number[], dtype: DType = 'f32'): TensorHandle {
    const tensor = this.#backend.alloc(dtype, shape);
    this.#tensors.push(tensor);
    return tensor;
  }
  /** An f32 tensor of zeros (a fill with standard deviation 0). */
  zeros(shape: readonly number[]): TensorHandle {
    const tensor = this.alloc(shape);
    this.#backend.fillRandom(tensor, 0, 0);
    return tensor;
  }
  upload(dtype: DType, shape: readonly number[], data: Float32Array | Int32Array): TensorHandle {
    const tensor = this.#backend.upload(dtype, shape, data);
    this.#tensors.push(tensor);
    return tensor;
  }
  dispose(): void {
    for (const tensor of this.#tensors) if (!tensor.disposed) tensor.dispose();
  }
}

/**
 * Runs teacher and student over `ids` and returns the distillation loss on rows `answerStart …`, and with
 * `withGradients` its gradient with respect to the gates (`gates`: layer-major, clamped to [0, 1] on the device).
 */
export async function gateGradients(
  model: FrozenModel,
  ids: Int32Array,
  answerStart: number,
  gates: ArrayLike<number>,
  options: GateLossOptions,
  withGradients = true,
): Promise<GateGradients> {
  const fullTerm = options.fullTerm ?? 'teacher';
  if (fullTerm !== 'student' && fullTerm !== 'teacher') {
    throw new DuoArgumentError(
      'fullTerm',
      `Expected \`fullTerm\` to be student or teacher but received ${String(fullTerm)}`,
    );
  }
  const { config, backend, blocks } = model;
  const length = ids.length;
  const answers = length - answerStart;
  if (!Number.isInteger(answerStart) || answerStart < 1 || answers < 1) {
    throw new DuoArgumentError(
      'answerStart',
      `Expected \`answerStart\` in [1, ${length - 1}] (at least one context and one answer token) but received ${answerStart}`,
    );
  }
  const gateCount = config.numLayers * config.numKvHeads;
  if (gates.length !== gateCount) {
    throw new DuoArgumentError('gates', `Expected ${gateCount} gates but received ${gates.length}`);
  }
  const scope = new Scope(backend);
  try {
    const layout = new StepLayout(model, scope, ids, options.window);
    // The teacher's per-layer attention outputs are kept only when they are the student's full term.
    const teacher = layout.teacherPass(fullTerm === 'teacher');
    const full = teacher.attention;
    const teacherHidden = await layout.finalRows(teacher.hidden, answerStart);
    const gateTensors = Array.from({ length: config.numLayers }, (_, layer) =>
      scope.upload(
        'f32',
        [config.numKvHeads],
        Float32Array.from({ length: config.numKvHeads }, (_, head) => gates[layer * config.numKvHeads + head] ?? 0),
      ),
    );
    // Student: keep each layer's input for the backward pass.
    const inputs: TensorHandle[] = [layout.embedded];
    for (let layer = 0; layer < config.numLayers; layer++) {
      const next = scope.alloc([length, config.hiddenSize]);
      layout.studentLayer(layer, inputs[layer] as TensorHandle, next, full[layer], gateTensors[layer] as TensorHandle);
      inputs.push(next);
    }
    const last = inputs[config.numLayers] as TensorHandle;
    const studentHidden = await layout.finalRows(last, answerStart);
    const count = answers * config.hiddenSize;
    let distillation = 0;
    const gradHidden = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const difference = (studentHidden[i] ?? 0) - (teacherHidden[i] ?? 0);
      distillation += difference * difference;
      gradHidden[i] = (2 * difference) / count;
    }
    distillation /= count;
    if (!withGradients) return { distillation };

    // ∂loss/∂(last layer's output): the final norm's backward on the answer rows, zero elsewhere.
    const gradient = scope.zeros([length, config.hiddenSize]);
    const answerRows = scope.alloc([answers, config.hiddenSize]);
    const answerGradient = scope.alloc([answers, config.hiddenSize]);
    backend.copyRows(last, answerRows, answerStart, 0, answers);
    blocks.finalNormBackward(answerRows, scope.upload('f32', [answers, config.hiddenSize], gradHidden), answerGradient);
    backend.copyRows(answerGradient, gradient, 0, answerStart, answers);
    const gateGradient = Array.from({ length: config.numLayers }, () => scope.alloc([config.numKvHeads]));
    for (let layer = config.numLayers - 1; layer >= 0; layer--) {
      layout.studentLayerBackward(
        layer,
        inputs[layer] as TensorHandle,
        full[layer],
        gateTensors[layer] as TensorHandle,
        gradient,
        gateGradient[layer] as TensorHandle,
      );
    }
    const gradients = new Float64Array(gateCount);
    for (let layer = 0; layer < config.numLayers; layer++) {
      const values = (await backend.read(gateGradient[layer] as TensorHandle)) as Float32Array;
      gradients.set(values, layer * config.numKvHeads);
    }
    return { distillation, gradients };
  } finally {
    scope.dispose();
  }
}

/** Buffers and the per-layer forward/backward of one step over a sequence of `length` tokens. */
class StepLayout {
  readonly #model: FrozenModel;
  readonly #scope: Scope;
  readonly #window: StreamingWindow;
  readonly length: number;
  readonly positions: TensorHandle;
  readonly embedded: TensorHandle;
  // Work buffers, reused by every layer.
  readonly #normed: TensorHandle;
  readonly #query: TensorHandle;
  readonly #key: TensorHandle;
  readonly #value: TensorHandle;
  readonly #attention: TensorHandle;
  readonly #mixed: TensorHandle;
  readonly #hidden: TensorHandle;
  readonly #mlp: TensorHandle;
  /** The student's own full attention (fullTerm 'student'). */
  readonly #full: TensorHandle;
  #zeros: TensorHandle | undefined;
  readonly #streamKeys: TensorHandle;
  readonly #streamValues: TensorHandle;
  readonly #noFullHeads: TensorHandle;

  constructor(model: FrozenModel, scope: Scope, ids: Int32Array, window: StreamingWindow) {
    const { config, blocks, cacheDtype } = model;
    const length = ids.length;
    const { hiddenSize, numHeads, numKvHeads, headDim, intermediateSize } = config;
    this.#model = model;
    this.#scope = scope;
    this.#window = window;
    this.length = length;
    this.positions = scope.upload(
      'i32',
      [length],
      Int32Array.from({ length }, (_, i) => i),
    );
    this.embedded = scope.alloc([length, hiddenSize]);
    blocks.embed(scope.upload('i32', [length], ids), this.embedded);
    this.#normed = scope.alloc([length, hiddenSize]);
    this.#query = scope.alloc([length, numHeads * headDim]);
    this.#key = scope.alloc([length, numKvHeads * headDim]);
    this.#value = scope.alloc([length, numKvHeads * headDim]);
    this.#attention = scope.alloc([length, numHeads * headDim]);
    this.#mixed = scope.alloc([length, numHeads * headDim]);
    this.#hidden = scope.alloc([length, hiddenSize]);
    this.#mlp = scope.alloc([length, intermediateSize]);
    this.#full = scope.alloc([length, numHeads * headDim]);
    // The student's keys at slot = position. Read as a plain cache they serve full attention; read as a streaming
    // region (sinks, then a ring long enough never to wrap within the sequence) they serve the Λ mask.
    const slots = window.sink + window.recent + length;
    this.#streamKeys = scope.alloc([numKvHeads, slots, headDim], cacheDtype);
    this.#streamValues = scope.alloc([numKvHeads, slots, headDim], cacheDtype);
    this.#noFullHeads = scope.alloc([0, length, headDim], cacheDtype);
  }

  get #attributes() {
    const { numHeads, numKvHeads, headDim, ropeStyle } = this.#model.config;
    return {
      heads: numHeads,
      kvHeads: numKvHeads,
      headDim,
      interleaved: ropeStyle === 'interleaved',
      scale: 1 / Math.sqrt(headDim),
    };
  }

  get #streaming() {
    return {
      retrievalHeads: [],
      keyCache: this.#streamKeys,
      valueCache: this.#streamValues,
      sink: this.#window.sink,
      recent: this.#window.recent,
    };
  }

  /**
   * The teacher's pass with full attention: its last hidden state (before the final norm) and, with `keep`, each
   * layer's attention output (the full term).
   */
  teacherPass(keep: boolean): { attention: (TensorHandle | undefined)[]; hidden: TensorHandle } {
    const { config, backend, blocks, cacheDtype } = this.#model;
    const { numKvHeads, headDim, numHeads } = config;
    const attributes = this.#attributes;
    const keys = this.#scope.alloc([numKvHeads, this.length, headDim], cacheDtype);
    const values = this.#scope.alloc([numKvHeads, this.length, headDim], cacheDtype);
    const hidden = this.#scope.alloc([this.length, config.hiddenSize]);
    backend.copyRows(this.embedded, hidden);
    const outputs = Array.from({ length: config.numLayers }, (_, layer) => {
      const out = keep ? this.#scope.alloc([this.length, numHeads * headDim]) : this.#full;
      this.#projectQkv(layer, hidden, keys, values);
      backend.attentionPrefill(this.#query, keys, values, out, {
        ...attributes,
        keyLength: this.length,
        queryStart: 0,
      });
      blocks.attentionOutput(layer, out, hidden);
      blocks.mlp(layer, hidden, this.#normed, this.#mlp);
      return keep ? out : undefined;
    });
    keys.dispose();
    values.dispose();
    return { attention: outputs, hidden };
  }

  /** The final norm of rows `first …` of `hidden`, read to the host. */
  async finalRows(hidden: TensorHandle, first: number): Promise<Float32Array> {
    const { backend, blocks, config } = this.#model;
    const rows = this.length - first;
    const picked = this.#scope.alloc([rows, config.hiddenSize]);
    const normed = this.#scope.alloc([rows, config.hiddenSize]);
    backend.copyRows(hidden, picked, first, 0, rows);
    blocks.finalNorm(picked, normed);
    const values = (await backend.read(normed)) as Float32Array;
    picked.dispose();
    normed.dispose();
    return values;
  }

  /** One student layer from `input` into `output` (gated attention, then the MLP). */
  studentLayer(
    layer: number,
    input: TensorHandle,
    output: TensorHandle,
    teacherFull: TensorHandle | undefined,
    gates: TensorHandle,
  ): void {
    this.#studentAttention(layer, input, teacherFull, gates, output);
    this.#model.blocks.mlp(layer, output, this.#normed, this.#mlp);
  }

  /**
   * Recomputes student layer `layer` from its input, then turns `gradient` (∂loss/∂output, in place) into
   * ∂loss/∂input and writes ∂loss/∂α of the layer's KV heads into `gateGradient`.
   */
  studentLayerBackward(
    layer: number,
    input: TensorHandle,
    teacherFull: TensorHandle | undefined,
    gates: TensorHandle,
    gradient: TensorHandle,
    gateGradient: TensorHandle,
  ): void {
    const { config, backend, blocks, inverseFrequencies } = this.#model;
    const { numHeads, numKvHeads, headDim } = config;
    const attributes = this.#attributes;
    const scope = this.#scope;
    const hidden = this.#hidden;
    const full = this.#studentAttention(layer, input, teacherFull, gates, hidden);
    // The MLP's backward (the residual passes the gradient through).
    blocks.mlpBackward(layer, hidden, gradient, this.#normed, this.#mlp);
    // Attention: o_proj, the gate mix (∂α), streaming attention under the Λ mask, RoPE, q/k/v, norm.
    const gradMixed = scope.alloc([this.length, numHeads * headDim]);
    blocks.attentionOutputBackward(layer, gradient, gradMixed);
    const gradStreaming = this.#mixed;
    backend.gateMixBackward(gradMixed, this.#attention, full, gates, gradStreaming, gateGradient, attributes);
    // The student's own full term gets α · ∂/∂mixed (the mix of zeros and the gradient).
    const gradFull = teacherFull ? undefined : scope.alloc([this.length, numHeads * headDim]);
    if (gradFull) backend.gateMix(this.#zerosLike(), gradMixed, gates, gradFull, attributes);
    const gradQuery = gradMixed; // ∂/∂(mixed) is spent: reuse it
    const gradKey = scope.alloc([this.length, numKvHeads * headDim]);
    const gradValue = scope.alloc([this.length, numKvHeads * headDim]);
    const attentionGradients = (
      out: TensorHandle,
      gradOut: TensorHandle,
      targets: [TensorHandle, TensorHandle, TensorHandle],
      window?: StreamingWindow,
    ) =>
      backend.attentionBackward(this.#query, this.#streamKeys, this.#streamValues, out, gradOut, ...targets, {
        ...attributes,
        length: this.length,
        ...(window ? { window } : {}),
      });
    attentionGradients(this.#attention, gradStreaming, [gradQuery, gradKey, gradValue], this.#window);
    if (gradFull) {
      const fullTargets: [TensorHandle, TensorHandle, TensorHandle] = [
        this.#mixed, // ∂/∂streaming is spent too
        scope.alloc([this.length, numKvHeads * headDim]),
        scope.alloc([this.length, numKvHeads * headDim]),
      ];
      attentionGradients(full, gradFull, fullTargets);
      const targets = [gradQuery, gradKey, gradValue];
      for (let i = 0; i < targets.length; i++) {
        backend.add(targets[i] as TensorHandle, fullTargets[i] as TensorHandle, targets[i] as TensorHandle);
      }
      fullTargets[1].dispose();
      fullTargets[2].dispose();
      gradFull.dispose();
    }
    backend.rope(gradQuery, this.positions, inverseFrequencies, { ...attributes, inverse: true });
    backend.rope(gradKey, this.positions, inverseFrequencies, { ...attributes, heads: numKvHeads, inverse: true });
    blocks.attentionInputBackward(layer, input, gradQuery, gradKey, gradValue, gradient);
    for (const t of [gradQuery, gradKey, gradValue]) t.dispose();
  }

  /**
   * Gated attention of `input` plus the residual, into `output`; returns the full term it mixed in. Leaves q (rotated),
   * the streaming output, the student's keys/values and (fullTerm 'student') its full attention set for the backward.
   */
  #studentAttention(
    layer: number,
    input: TensorHandle,
    teacherFull: TensorHandle | undefined,
    gates: TensorHandle,
    output: TensorHandle,
  ): TensorHandle {
    const { backend, blocks } = this.#model;
    const attributes = this.#attributes;
    this.#projectQkv(layer, input, this.#streamKeys, this.#streamValues);
    const whole = { ...attributes, keyLength: this.length, queryStart: 0 };
    backend.attentionPrefill(this.#query, this.#noFullHeads, this.#noFullHeads, this.#attention, {
      ...whole,
      streaming: this.#streaming,
    });
    const full = teacherFull ?? this.#full;
    if (!teacherFull) backend.attentionPrefill(this.#query, this.#streamKeys, this.#streamValues, full, whole);
    backend.gateMix(this.#attention, full, gates, this.#mixed, attributes);
    blocks.attentionOutput(layer, this.#mixed, input, output);
    return full;
  }

  /** A zero tensor shaped like the attention rows (made once per step). */
  #zerosLike(): TensorHandle {
    this.#zeros ??= this.#scope.zeros([this.length, this.#model.config.numHeads * this.#model.config.headDim]);
    return this.#zeros;
  }

  /** q, k, v of `input`; q and k rotated in place, k and v written into `keys` / `values` at slot = position. */
  #projectQkv(layer: number, input: TensorHandle, keys: TensorHandle, values: TensorHandle): void {
    const { backend, blocks, inverseFrequencies } = this.#model;
    blocks.attentionInput(layer, input, this.#normed, this.#query, this.#key, this.#value);
    backend.ropeWriteCache(
      this.#query,
      this.#key,
      this.#value,
      this.positions,
      inverseFrequencies,
      keys,
      values,
      this.#attributes,
    );
  }
}
