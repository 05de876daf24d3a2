// Work one JS environment does on its own backend (worker-threads.test.ts runs it in workers and on the main thread).
import type { DeviceKind } from '@duoattn/core';
import { createBackend } from '../resolve-backend.js';

/** What one environment saw: its backend's memory before it allocated, its first tensor id, and the final values. */
export interface EnvironmentResult {
  allocatedBefore: number;
  firstId: number;
  values: number[];
  next: number[];
}

/**
 * A few hundred ops of a small MLP-like loop on `seed`'s random data: matmul, swiglu, add, rmsNorm, copyRows, then
 * softmax and argmax, read back. Frees everything it allocates.
 */
export async function environmentWork(
  seed: number,
  rounds = 200,
  device: DeviceKind = 'cpu',
): Promise<EnvironmentResult> {
  const backend = createBackend(device);
  const allocatedBefore = backend.memory().allocatedBytes;
  const x = backend.alloc('f32', [16, 64]);
  const weight = backend.alloc('f32', [64, 64]);
  const gain = backend.alloc('f32', [64]);
  const hidden = backend.alloc('f32', [16, 64]);
  const normed = backend.alloc('f32', [16, 64]);
  const probabilities = backend.alloc('f32', [16, 64]);
  const next = backend.alloc('i32', [16]);
  try {
    backend.fillRandom(x, seed);
    backend.fillRandom(weight, seed + 1, 0.125);
    backend.fillRandom(gain, seed + 2);
    for (let round = 0; round < rounds; round++) {
      backend.matmul(x, weight, hidden);
      backend.swiglu(hidden, x, hidden);
      backend.add(x, hidden, x);
      backend.rmsNorm(x, gain, normed, 1e-5);
      backend.copyRows(normed, x);
    }
    backend.softmax(x, probabilities, 0.7);
    backend.argmax(x, next);
    return {
      allocatedBefore,
      firstId: x.id,
      values: Array.from(await backend.read(probabilities)),
      next: Array.from(await backend.read(next)),
    };
  } finally {
    for (const tensor of [x, weight, gain, hidden, normed, probabilities, next]) tensor.dispose();
  }
}
