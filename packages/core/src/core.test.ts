// Error classes, config validation and the environment reader of the spec package.
import { describe, expect, it } from 'vitest';
import {
  DuoArgumentError,
  DuoCheckpointError,
  DuoError,
  dtypeBytes,
  ENVIRONMENT_VARIABLES,
  heldPositions,
  isDType,
  type ModelConfig,
  readEnvironment,
  validateModelConfig,
} from './index.js';

describe('errors', () => {
  it('carry stable codes and are recognised across copies by the marker', () => {
    const error = new DuoArgumentError('weight', 'Expected …');
    expect(error.code).toBe('DUO_ARG');
    expect(error.argument).toBe('weight');
    expect(DuoError.isInstance(error)).toBe(true);
    expect(DuoError.isInstance(new Error('plain'))).toBe(false);
    const foreign = Object.assign(new Error('x'), { [Symbol.for('duoattn.error')]: true });
    expect(DuoError.isInstance(foreign)).toBe(true);
    const checkpoint = new DuoCheckpointError('/m/model.safetensors', 'lm_head.weight', 'truncated');
    expect(checkpoint.message).toBe('/m/model.safetensors (tensor lm_head.weight): truncated');
  });
});

describe('dtypes and configs', () => {
  it('knows dtype sizes', () => {
    expect([dtypeBytes('f32'), dtypeBytes('bf16'), dtypeBytes('f16'), dtypeBytes('i32')]).toEqual([4, 2, 2, 4]);
    expect(isDType('bf16')).toBe(true);
    expect(isDType('f64')).toBe(false);
  });

  it('names the first inconsistent field', () => {
    const config = {
      architecture: 'llama',
      vocabSize: 10,
      hiddenSize: 8,
      intermediateSize: 16,
      numLayers: 1,
      numHeads: 4,
      numKvHeads: 3,
      headDim: 2,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: { type: 'none' },
      ropeStyle: 'half',
      maxPositionEmbeddings: 64,
      attentionBias: false,
      tieWordEmbeddings: false,
      bosTokenId: undefined,
      eosTokenIds: [],
    } satisfies ModelConfig;
    expect(() => validateModelConfig(config)).toThrow('Expected `numHeads` (4) to be a multiple of `numKvHeads` (3)');
    expect(() => validateModelConfig({ ...config, numKvHeads: 2, vocabSize: 0 })).toThrow(
      '`vocabSize` to be a positive integer',
    );
    expect(validateModelConfig({ ...config, numKvHeads: 2 }).numKvHeads).toBe(2);
  });
});

describe('readEnvironment', () => {
  it('parses flags and integers, and names a variable whose value is not an integer', () => {
    const environment = readEnvironment({
      DUO_VERBOSE: '1',
      DUO_NO_GRAPHS: 'false',
      DUO_CUDA_PROFILE: '0',
      DUO_NO_PDL: 'yes',
      DUO_GEMV_WAVES: '1',
      DUO_COMMIT: 'abc',
      DUO_NATIVE_PATH: '',
    });
    expect(environment).toMatchObject({ verbose: true, noGraphs: false, cudaProfile: false, noPdl: true });
    expect(environment.gemvWaves).toBe(1);
    expect(environment.commit).toBe('abc');
    expect(environment.nativePath).toBeUndefined();
    expect(readEnvironment({}).verbose).toBe(false);
    // An unset optional flag stays undefined, so the backend keeps its own default (the CPU's integer Q8_0 products).
    expect(readEnvironment({}).cpuIntegerQ8).toBeUndefined();
    expect(readEnvironment({ DUO_CPU_INTEGER_Q8: '0' }).cpuIntegerQ8).toBe(false);
    expect(readEnvironment({ DUO_CPU_INTEGER_Q8: '1' }).cpuIntegerQ8).toBe(true);
    expect(readEnvironment({ DUO_GEMV_WAVES: '0' }).gemvWaves).toBe(0);
    expect(() => readEnvironment({ DUO_GEMV_WAVES: 'two' })).toThrow(DuoArgumentError);
    expect(() => readEnvironment({ DUO_GEMV_WAVES: '3' })).toThrow(
      'Expected DUO_GEMV_WAVES to be an integer in [0, 2] but it is "3"',
    );
    expect(() => readEnvironment({ DUO_GEMV_MIN_SLICE: '0' })).toThrow('to be an integer ≥ 1');
    expect(readEnvironment({ DUO_DECODE_MMA_BLOCKS: '2' }).decodeMmaBlocks).toBe(2);
    expect(readEnvironment({ DUO_DECODE_BATCH_MERGE: '16' }).decodeBatchMerge).toBe(16);
    expect(() => readEnvironment({ DUO_DECODE_BATCH_MERGE: '65' })).toThrow('DUO_DECODE_BATCH_MERGE');
    expect(() => readEnvironment({ DUO_DECODE_MMA_BLOCKS: '4' })).toThrow(
      'DUO_DECODE_MMA_BLOCKS to be an integer in [2, 3]',
    );
  });

  it('documents every variable it reads', () => {
    const names = ENVIRONMENT_VARIABLES.map((variable) => variable.name);
    expect(new Set(names).size).toBe(names.length);
    for (const variable of ENVIRONMENT_VARIABLES) expect(variable.meaning.length).toBeGreaterThan(10);
  });
});

describe('heldPositions', () => {
  it('counts the positions below an end that a rank holds, as dealing chunks one by one does', () => {
    for (const ranks of [1, 2, 3, 4])
      for (const chunk of [1, 5, 16])
        for (let rank = 0; rank < ranks; rank++) {
          let held = 0;
          for (let end = 0; end <= 100; end++) {
            expect(
              heldPositions({ ranks, rank, chunk }, end),
              `${ranks} ranks, chunk ${chunk}, rank ${rank}, end ${end}`,
            ).toBe(held);
            if (Math.floor(end / chunk) % ranks === rank) held++;
          }
        }
    expect(heldPositions(undefined, 37)).toBe(37);
  });
});
