// Test support: the gate trainer's loss computed in float64 from the same weights (teacher and student streams, the
// gate mix with the teacher's full attention, the Λ mask), its finite-difference gradient, and a check that runs
// `gateGradients` on a backend against it, registered as a suite by the CPU and CUDA tests.
import type { Backend, ModelConfig } from '@duoattn/core';
import {
  finiteDifferences,
  type Matrix,
  referenceAttention,
  referenceMatmul,
  referenceRmsNorm,
  referenceRope,
  referenceSwiglu,
  relativeError,
  toMatrix,
} from '@duoattn/kernels/testing';
import { EMBEDDING, FINAL_NORM, LlamaModel, layerNames, ropeInverseFrequencies } from '@duoattn/model';
import { describe, expect, it } from 'vitest';
import { type FullTerm, freezeModel, gateGradients, type StreamingWindow } from './gate-gradients.js';

/** A small Llama shape (GQA 4/2) for gradient checks. */
export const CHECK_CONFIG: ModelConfig = {
  architecture: 'llama',
  vocabSize: 61,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  rmsNormEps: 1e-5,
  ropeTheta: 10_000,
  ropeScaling: { type: 'none' },
  ropeStyle: 'half',
  maxPositionEmbeddings: 512,
  attentionBias: false,
  tieWordEmbeddings: false,
  bosTokenId: 1,
  eosTokenIds: [2],
};

interface HostLayer {
  attentionNorm: Float64Array;
  query: Matrix;
  key: Matrix;
  value: Matrix;
  output: Matrix;
  mlpNorm: Float64Array;
  gate: Matrix;
  up: Matrix;
  down: Matrix;
}

interface HostModel {
  embedding: Matrix;
  layers: HostLayer[];
  finalNorm: Float64Array;
}

/** The model's weights in float64 on the host (matrices `[out, in]`, as stored). */
async function hostModel(model: LlamaModel): Promise<HostModel> {
  const { hiddenSize, intermediateSize, numHeads, numKvHeads, headDim, vocabSize } = model.config;
  const matrix = async (name: string, rows: number) => {
    const values = await model.readWeight(name);
    return toMatrix(values, rows, values.length / rows);
  };
  const vector = async (name: string) => Float64Array.from(await model.readWeight(name));
  const layers: HostLayer[] = [];
  for (let layer = 0; layer < model.config.numLayers; layer++) {
    const names = layerNames(layer);
    layers.push({
      attentionNorm: await vector(names.attentionNorm),
      query: await matrix(names.query, numHeads * headDim),
      key: await matrix(names.key, numKvHeads * headDim),
      value: await matrix(names.value, numKvHeads * headDim),
      output: await matrix(names.output, hiddenSize),
      mlpNorm: await vector(names.mlpNorm),
      gate: await matrix(names.gate, intermediateSize),
      up: await matrix(names.up, intermediateSize),
      down: await matrix(names.down, hiddenSize),
    });
  }
  return { embedding: await matrix(EMBEDDING, vocabSize), layers, finalNorm: await vector(FINAL_NORM) };
}

/** Keys of one projection output laid out per KV head: [kvHeads][position] vectors. */
function perHead(rows: Matrix, kvHeads: number, headDim: number): Float64Array[][] {
  return Array.from({ length: kvHeads }, (_, g) => rows.map((row) => row.slice(g * headDim, (g + 1) * headDim)));
}

/** The distillation loss in float64 for either full term (gates used as given). */
export function referenceDistillation(
  model: HostModel,
  config: ModelConfig,
  ids: ArrayLike<number>,
  answerStart: number,
  gates: ArrayLike<number>,
  window: StreamingWindow,
  fullTerm: FullTerm,
): number {
  const { numHeads: heads, numKvHeads: kvHeads, headDim, rmsNormEps: eps } = config;
  const length = ids.length;
  const positions = Array.from({ length }, (_, i) => i);
  const frequencies = ropeInverseFrequencies(config);
  const interleaved = config.ropeStyle === 'interleaved';
  const shape = { heads, kvHeads, headDim, scale: 1 / Math.sqrt(headDim), keyLength: length, queryStart: 0 };
  const lambda = (i: number, j: number) => j <= i && (j < window.sink || i - j < window.recent);
  const attention = (layer: HostLayer, x: Matrix, visible?: (i: number, j: number) => boolean) => {
    const normed = referenceRmsNorm(x, layer.attentionNorm, eps);
    const q = referenceRope(referenceMatmul(normed, layer.query), positions, frequencies, heads, headDim, interleaved);
    const k = referenceRope(referenceMatmul(normed, layer.key), positions, frequencies, kvHeads, headDim, interleaved);
    const v = referenceMatmul(normed, layer.value);
    return referenceAttention(q, perHead(k, kvHeads, headDim), perHead(v, kvHeads, headDim), {
      ...shape,
      ...(visible ? { visible } : {}),
    });
  };
  const mlp = (layer: HostLayer, x: Matrix) => {
    const normed = referenceRmsNorm(x, layer.mlpNorm, eps);
    const activation = referenceSwiglu(referenceMatmul(normed, layer.gate), referenceMatmul(normed, layer.up));
    return referenceMatmul(activation, layer.down, undefined, x);
  };
  const embedded = Array.from(ids, (id) => Float64Array.from(model.embedding[id] ?? []));
  let teacher: Matrix = embedded;
  let student: Matrix = embedded;
  model.layers.forEach((layer, l) => {
    const teacherFull = attention(layer, teacher);
    teacher = mlp(layer, referenceMatmul(teacherFull, layer.output, undefined, teacher));
    const full = fullTerm === 'teacher' ? teacherFull : attention(layer, student);
    const stream = attention(layer, student, lambda);
    const mixed = stream.map((row, r) =>
      row.map((s, c) => {
        const gate = gates[l * kvHeads + Math.floor(Math.floor(c / headDim) / (heads / kvHeads))] ?? 0;
        return (1 - gate) * s + gate * (full[r]?.[c] ?? 0);
      }),
    );
    student = mlp(layer, referenceMatmul(mixed, layer.output, undefined, student));
  });
  const finalTeacher = referenceRmsNorm(teacher.slice(answerStart), model.finalNorm, eps);
  const finalStudent = referenceRmsNorm(student.slice(answerStart), model.finalNorm, eps);
  let sum = 0;
  let count = 0;
  finalStudent.forEach((row, r) => {
    row.forEach((value, c) => {
      sum += (value - (finalTeacher[r]?.[c] ?? 0)) ** 2;
      count++;
    });
  });
  return sum / count;
}

export interface GradientCheck {
  /** ‖backend − finite differences‖ / ‖finite differences‖ over all gates. */
  relativeError: number;
  /** |backend loss − float64 loss| / float64 loss. */
  lossError: number;
  gradients: Float64Array;
  expected: Float64Array;
}

/**
 * Builds a random f32 model on `backend` (matrix entries with standard deviation 0.3, so attention is far from
 * uniform), runs `gateGradients`, and compares with central finite differences of the float64 loss.
 */
export async function checkGateGradients(backend: Backend, fullTerm: FullTerm, seed = 7): Promise<GradientCheck> {
  const config = CHECK_CONFIG;
  const model = LlamaModel.random(config, { device: backend, dtype: 'f32', seed, std: 0.3 });
  const frozen = freezeModel(model);
  try {
    const ids = Int32Array.from({ length: 29 }, (_, i) => (i * 17 + seed) % config.vocabSize);
    const answerStart = 21;
    const window = { sink: 2, recent: 5 };
    const gates = [0.35, 0.8, 0.55, 0.2];
    const result = await gateGradients(frozen, ids, answerStart, gates, { window, fullTerm });
    const host = await hostModel(model);
    const point = Float64Array.from(gates);
    const loss = () => referenceDistillation(host, config, ids, answerStart, point, window, fullTerm);
    const reference = loss();
    const expected = finiteDifferences(point, loss, 1e-5);
    const gradients = result.gradients ?? new Float64Array(0);
    return {
      relativeError: relativeError(gradients, expected),
      lossError: Math.abs(result.distillation - reference) / reference,
      gradients,
      expected,
    };
  } finally {
    frozen.dispose();
    model.dispose();
  }
}

/** Registers the gradient check for one backend; `backend()` returns undefined when it is absent (skips visibly). */
export function gateGradientSuite(label: string, backend: () => Backend | undefined, skipReason?: string): void {
  const suite = skipReason ? describe.skip : describe;
  suite(`gate gradients (${label})${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
    it.each([
      ['student', 7],
      ['student', 8],
      ['teacher', 7],
    ] as const)(
      'match finite differences of the float64 loss within 1e-3 (full term from the %s, seed %i)',
      async (fullTerm, seed) => {
        const check = await checkGateGradients(backend() as Backend, fullTerm, seed);
        expect(check.lossError).toBeLessThan(1e-4);
        expect(check.relativeError).toBeLessThan(1e-3);
        // Not a vacuous match: every gate moves the loss.
        for (const value of check.expected) expect(Math.abs(value)).toBeGreaterThan(1e-6);
      },
    );
  });
}
