// llama2.c checkpoints: a 7-int32 header, then every weight as float32 in a fixed order.
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DuoCheckpointError, type ModelConfig, validateModelConfig } from '@duoattn/core';
import { loadLlama2cTokenizer } from '../tokenizers/score-bpe.js';
import { type Checkpoint, checkTensorBounds, type StoredTensor } from './checkpoint.js';
import { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './names.js';

/** Options of `openLlama2c`. */
export interface Llama2cOptions {
  /** The tokenizer file; default: `tok<vocab>.bin`, then `tokenizer.bin`, beside the checkpoint. */
  tokenizerPath?: string;
}

/** Opens a llama2.c `.bin` checkpoint (legacy export: float32, shared classifier when vocab_size > 0). */
export function openLlama2c(path: string, options: Llama2cOptions = {}): Checkpoint {
  const header = Buffer.alloc(28);
  const fd = openSync(path, 'r');
  let got: number;
  try {
    got = readSync(fd, header, 0, 28, 0);
  } finally {
    closeSync(fd);
  }
  if (got !== 28) throw new DuoCheckpointError(path, undefined, 'file too short for a llama2.c header (28 bytes)');
  const [dim, hidden, layers, heads, kvHeads, signedVocab, seqLen] = Array.from({ length: 7 }, (_, i) =>
    header.readInt32LE(i * 4),
  ) as [number, number, number, number, number, number, number];
  const vocab = Math.abs(signedVocab);
  const shared = signedVocab > 0;
  const headDim = dim / heads;
  let config: ModelConfig;
  try {
    config = validateModelConfig({
      architecture: 'llama',
      vocabSize: vocab,
      hiddenSize: dim,
      intermediateSize: hidden,
      numLayers: layers,
      numHeads: heads,
      numKvHeads: kvHeads,
      headDim,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: { type: 'none' },
      ropeStyle: 'interleaved',
      maxPositionEmbeddings: seqLen,
      attentionBias: false,
      tieWordEmbeddings: shared,
      bosTokenId: 1,
      eosTokenIds: [2],
    });
  } catch (error) {
    throw new DuoCheckpointError(path, undefined, `invalid llama2.c header: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const tensors = new Map<string, StoredTensor>();
  let offset = 28;
  const add = (name: string, shape: number[]) => {
    tensors.set(name, { name, file: path, offset, encoding: 'f32', shape });
    offset += shape.reduce((a, b) => a * b, 1) * 4;
  };
  const perLayer = (field: keyof ReturnType<typeof layerNames>, shape: number[]) => {
    for (let layer = 0; layer < layers; layer++) add(layerNames(layer)[field], shape);
  };
  const kvDim = kvHeads * headDim;
  add(EMBEDDING, [vocab, dim]);
  perLayer('attentionNorm', [dim]);
  perLayer('query', [dim, dim]);
  perLayer('key', [kvDim, dim]);
  perLayer('value', [kvDim, dim]);
  perLayer('output', [dim, dim]);
  perLayer('mlpNorm', [dim]);
  perLayer('gate', [hidden, dim]);
  perLayer('down', [dim, hidden]);
  perLayer('up', [hidden, dim]);
  add(FINAL_NORM, [dim]);
  offset += seqLen * headDim * 4; // freq_cis_real and freq_cis_imag, which we recompute
  if (!shared) add(LM_HEAD, [vocab, dim]);
  checkTensorBounds(tensors.values());

  const candidates = options.tokenizerPath
    ? [options.tokenizerPath]
    : [join(dirname(path), `tok${vocab}.bin`), join(dirname(path), 'tokenizer.bin')];
  const tokenizerPath = candidates.find((candidate) => existsSync(candidate));
  const tokenizer = tokenizerPath ? loadLlama2cTokenizer(tokenizerPath, vocab) : undefined;
  return { format: 'llama2c', source: path, config, tensors, tokenizer, chatTemplate: undefined };
}
