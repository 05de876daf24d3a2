// The GGUF writer: random-weight models that our loader reads back (config, vocabulary, values), block formats laid
// out at the offsets the header declares, and the fallbacks a block format takes on rows it cannot split.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dequantizeWeights, type ModelConfig, SHAPES } from '@duoattn/core';
import { weightBytes } from '@duoattn/dual-cache';
import { gguf } from '@huggingface/gguf';
import { afterAll, describe, expect, it } from 'vitest';
import { readTensorF32 } from './checkpoint.js';
import { encodeGgufTensor, ggufValue, storedType, writeGgufFile, writeRandomGguf } from './gguf-writer.js';
import { openCheckpoint } from './open-checkpoint.js';

const root = mkdtempSync(join(tmpdir(), 'duo-gguf-writer-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A small llama whose rows split into 256-value blocks but ffn_down's (288 values: Q8_0 blocks of 32 only). */
const config: ModelConfig = {
  ...(SHAPES['llama-3-8b'] as ModelConfig),
  vocabSize: 300,
  hiddenSize: 256,
  intermediateSize: 288,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  maxPositionEmbeddings: 2048,
  bosTokenId: 1,
  eosTokenIds: [2],
};

describe('GGUF writer', () => {
  it('writes a random model in F16 and Q8_0 that our loader reads back: config, vocabulary, values', async () => {
    for (const type of ['F16', 'Q8_0'] as const) {
      const path = join(root, `random-${type}.gguf`);
      writeRandomGguf(path, config, { type, seed: 3 });
      const checkpoint = await openCheckpoint(path);
      expect(checkpoint.config).toMatchObject({
        hiddenSize: 256,
        intermediateSize: 288,
        numLayers: 2,
        numHeads: 4,
        numKvHeads: 2,
        vocabSize: 300,
      });
      expect(checkpoint.tokenizer?.encode('w0 w1', { addBos: false }).length).toBeGreaterThan(0);
      const gate = checkpoint.tensors.get('model.layers.1.mlp.gate_proj.weight');
      expect(gate?.shape).toEqual([288, 256]);
      const values = readTensorF32(gate as NonNullable<typeof gate>);
      const std = Math.sqrt(values.reduce((sum, v) => sum + v * v, 0) / values.length);
      expect(std).toBeGreaterThan(0.018);
      expect(std).toBeLessThan(0.022);
      const norm = readTensorF32(checkpoint.tensors.get('model.norm.weight') as NonNullable<typeof gate>);
      expect(Array.from(norm)).toEqual(new Array(256).fill(1));
    }
  });

  it('refuses a type GGUF does not name before writing anything (a lower-case one would write a lying header)', () => {
    const path = join(root, 'refused.gguf');
    expect(() => writeRandomGguf(path, config, { type: 'f16' as never })).toThrow(
      'writeRandomGguf: options.type: expected a GGUF tensor type (F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K) but received "f16"',
    );
    expect(existsSync(path)).toBe(false);
    const tensor = { name: 'x', shape: [2], type: 'q8' as never, bytes: new Uint8Array(8) };
    expect(() => writeGgufFile(path, [], [tensor])).toThrow('writeGgufFile: tensor x: expected a GGUF tensor type');
    expect(existsSync(path)).toBe(false);
  });

  it('lays block formats out where the header says: Q4_K matrices, a Q8_0 fallback, the whole file accounted for', async () => {
    const path = join(root, 'random-Q4_K.gguf');
    writeRandomGguf(path, config, { type: 'Q4_K', seed: 5 });
    const { tensorInfos, tensorDataOffset } = await gguf(path, { allowLocalFile: true });
    const types = new Map(tensorInfos.map((info) => [info.name, info.dtype as number]));
    expect(types.get('blk.0.ffn_gate.weight')).toBe(12); // rows of 256: Q4_K
    expect(types.get('blk.0.ffn_down.weight')).toBe(8); // rows of 288: Q8_0
    expect(types.get('blk.0.attn_norm.weight')).toBe(0); // vectors: F32
    // Every tensor's data follows the previous one's, 32-byte aligned, and the last one ends the file.
    let expected = 0;
    for (const info of tensorInfos) {
      expect(Number(info.offset)).toBe(expected);
      const values = info.shape.reduce((a, b) => a * Number(b), 1);
      const bytes = { 0: values * 4, 1: values * 2, 8: (values / 32) * 34, 12: (values / 256) * 144 }[
        info.dtype as number
      ] as number;
      expected += bytes + ((32 - (bytes % 32)) % 32);
    }
    expect(statSync(path).size).toBe(Number(tensorDataOffset) + expected);
    // The planner counts the same bytes (beside the RoPE frequencies the loader adds), fallbacks included.
    const data = tensorInfos.reduce((sum, info) => {
      const values = info.shape.reduce((a, b) => a * Number(b), 1);
      return sum + ({ 0: values * 4, 8: (values / 32) * 34, 12: (values / 256) * 144 }[info.dtype as number] as number);
    }, 0);
    expect(weightBytes(config, 'bf16', 'q4_k')).toBe(data + (config.headDim / 2) * 4);
    // Our loader reads it, each tensor in its own format (the CPU keeps them so).
    const checkpoint = await openCheckpoint(path);
    expect(checkpoint.tensors.get('model.layers.0.mlp.gate_proj.weight')?.encoding).toBe('q4_k');
    expect(checkpoint.tensors.get('model.layers.0.mlp.down_proj.weight')?.encoding).toBe('q8_0');
  });

  it('declares a non-default alignment, refuses byte counts its shapes do not take, and leaves no partial file', async () => {
    const path = join(root, 'aligned.gguf');
    const seven = { name: 'x', shape: [1], type: 'F32' as const, bytes: encodeGgufTensor('F32', [7]) };
    writeGgufFile(path, [['general.name', ggufValue.string('aligned')]], [seven], { alignment: 64 });
    const parsed = await gguf(path, { allowLocalFile: true });
    expect((parsed.metadata as Record<string, unknown>)['general.alignment']).toBe(64);
    expect(Number(parsed.tensorDataOffset) % 64).toBe(0);
    const bad = join(root, 'short.gguf');
    expect(() => writeGgufFile(bad, [], [{ ...seven, shape: [2] }])).toThrow(
      'GGUF tensor x: F32 [2] takes 8 bytes but 4 were given',
    );
    expect(existsSync(bad)).toBe(false);
    const pieces = { name: 'y', shape: [2], type: 'F32' as const, byteLength: 8, bytes: () => [seven.bytes] };
    expect(() => writeGgufFile(bad, [], [pieces])).toThrow('its pieces held 4 bytes of 8');
    expect(existsSync(bad)).toBe(false);
  });

  it('refuses shapes a llama GGUF cannot say here, and gives every seed its own values', () => {
    expect(() => writeRandomGguf(join(root, 'bias.gguf'), { ...config, attentionBias: true }, { type: 'F16' })).toThrow(
      'q/k/v biases are not written',
    );
    const [zero, one] = [0, 1].map((seed) => {
      const path = join(root, `seed-${seed}.gguf`);
      writeRandomGguf(path, { ...config, numLayers: 1 }, { type: 'F32', seed });
      return readFileSync(path);
    });
    expect(Buffer.compare(zero as Buffer, one as Buffer)).not.toBe(0);
  });

  it('encodes plain types little-endian and block types by the reference encoder; falls back on rows it cannot split', () => {
    expect(Array.from(encodeGgufTensor('F16', [1, -2]))).toEqual([0x00, 0x3c, 0x00, 0xc0]);
    expect(Array.from(encodeGgufTensor('BF16', [1]))).toEqual([0x80, 0x3f]);
    expect(encodeGgufTensor('F32', [1, 2, 3]).length).toBe(12);
    const row = Float32Array.from({ length: 256 }, (_, i) => Math.sin(i) / 10);
    const back = dequantizeWeights('q6_k', encodeGgufTensor('Q6_K', row), 256);
    expect(Math.max(...back.map((v, i) => Math.abs(v - (row[i] as number))))).toBeLessThan(0.01);
    expect(storedType('Q4_K', [4096, 4096])).toBe('Q4_K');
    expect(storedType('Q4_K', [64, 64])).toBe('Q8_0');
    expect(storedType('Q5_K', [64, 172])).toBe('F16');
    expect(storedType('F16', [64, 172])).toBe('F16');
  });
});
