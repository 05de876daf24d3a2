// Writing a trained pattern: the reference's full_attention_heads.tsv + config.json and our pattern.json, side by side
// in one directory, both carrying the provenance (model hash, data, steps, settings).
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DuoArgumentError, type HeadPattern } from '@duoattn/core';
import { savePattern, writeReferencePattern } from '@duoattn/dual-cache';
import { expectInteger } from '@duoattn/kernels';

/** Files of a model directory that define its weights and shape, in the order the hash reads them. */
const MODEL_FILES = /^(config\.json|.*\.safetensors|.*\.safetensors\.index\.json|.*\.gguf|.*\.bin)$/;

/**
 * SHA-256 of a model: its config.json and weight files (safetensors, GGUF, llama2.c .bin) read in name order, each
 * preceded by its name. A single weights file is hashed as it is.
 */
export function modelHash(path: string): string {
  const hash = createHash('sha256');
  const files = statSync(path).isDirectory()
    ? readdirSync(path)
        .filter((name) => MODEL_FILES.test(name))
        .sort()
        .map((name) => join(path, name))
    : [path];
  if (files.length === 0) throw new DuoArgumentError('model', `Expected model files in "${path}" but found none`);
  const buffer = Buffer.alloc(1 << 22);
  for (const file of files) {
    hash.update(`${basename(file)}\0`);
    const descriptor = openSync(file, 'r');
    try {
      for (let read = readSync(descriptor, buffer); read > 0; read = readSync(descriptor, buffer)) {
        hash.update(buffer.subarray(0, read));
      }
    } finally {
      closeSync(descriptor);
    }
  }
  return `sha256:${hash.digest('hex')}`;
}

export interface TrainedGates {
  /** Gates in layer-major order (layer 0's KV heads first), as the optimizer holds them. */
  gates: ArrayLike<number>;
  layers: number;
  kvHeads: number;
  sink: number;
  recent: number;
  modelId?: string;
  /** Model hash, data, steps, settings: whatever tells how the gates were made. */
  provenance: Record<string, unknown>;
}

/** Writes the pattern in both formats into `directory` and returns it; gates are clipped to [0, 1]. */
export function exportPattern(directory: string, trained: TrainedGates): HeadPattern {
  const layers = expectInteger('layers', trained.layers, 1);
  const kvHeads = expectInteger('kvHeads', trained.kvHeads, 1);
  if (trained.gates.length !== layers * kvHeads) {
    throw new DuoArgumentError(
      'gates',
      `Expected ${layers} × ${kvHeads} = ${layers * kvHeads} gates but received ${trained.gates.length}`,
    );
  }
  const gates = Array.from({ length: layers }, (_, layer) =>
    Array.from({ length: kvHeads }, (_, head) => Math.min(1, Math.max(0, trained.gates[layer * kvHeads + head] ?? 0))),
  );
  const pattern: HeadPattern = {
    gates,
    sink: expectInteger('sink', trained.sink, 0),
    recent: expectInteger('recent', trained.recent, 1),
    modelId: trained.modelId,
    provenance: trained.provenance,
  };
  writeReferencePattern(directory, pattern);
  savePattern(join(directory, 'pattern.json'), pattern);
  return pattern;
}
