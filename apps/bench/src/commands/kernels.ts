// duo-bench kernels: throughput of the hot kernels on a backend (GEMV at Llama-3-8B shapes, decode attention) and
// the cost of a small op, measured as many back-to-back ops between two synchronisations.

import { choiceOption, integerOption, median, outputOption, parseOptions, writeResult } from '@duoattn/app-kit';
import type { Backend, TensorHandle } from '@duoattn/core';
import { benchBackend } from '../model-options.js';

export const kernelsHelp = `duo-bench kernels [--device auto|cpu|cuda] [--repeats N] [--out FILE]
  GEMV bandwidth at Llama-3-8B shapes (bf16 weights), decode attention bandwidth at 4K-128K keys (bf16 cache),
  the GPU time of a small op, and the host time to enqueue one.`;

/** Device ms per op from the CUDA profiler (DUO_CUDA_PROFILE=1), or undefined when it is off. */
function profiledMs(backend: Backend, calls: number): number | undefined {
  const entries = (backend as Backend & { takeProfile?: () => { milliseconds: number }[] }).takeProfile?.() ?? [];
  if (entries.length === 0) return undefined;
  return entries.reduce((sum, entry) => sum + entry.milliseconds, 0) / calls;
}

async function timeOps(backend: Backend, repeats: number, op: () => void): Promise<number> {
  op();
  await backend.synchronize();
  profiledMs(backend, 1);
  const samples: number[] = [];
  for (let trial = 0; trial < 5; trial++) {
    const start = performance.now();
    for (let i = 0; i < repeats; i++) op();
    await backend.synchronize();
    samples.push((performance.now() - start) / repeats);
  }
  // With the profiler on, report device time (events between ops) rather than host-bound wall time.
  return profiledMs(backend, 5 * repeats) ?? median(samples);
}

export async function kernelsCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    device: { type: 'string' },
    repeats: { type: 'string' },
    out: { type: 'string' },
  });
  outputOption('out', options.out);
  const backend = benchBackend(choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto'));
  const repeats = integerOption('repeats', options.repeats, backend.device === 'cuda' ? 200 : 5, 1);
  const made: TensorHandle[] = [];
  const alloc = (dtype: 'f32' | 'bf16', shape: number[], seed: number) => {
    const tensor = backend.alloc(dtype, shape);
    backend.fillRandom(tensor, seed, 0.5);
    made.push(tensor);
    return tensor;
  };
  try {
    const gemv = [];
    for (const [m, k] of [
      [4096, 4096],
      [1024, 4096],
      [14336, 4096],
      [4096, 14336],
      [128256, 4096],
    ] as const) {
      const x = alloc('f32', [1, k], 1);
      const w = alloc('bf16', [m, k], 2);
      const out = alloc('f32', [1, m], 3);
      const ms = await timeOps(backend, repeats, () => backend.matmul(x, w, out));
      const TBps = (m * k * 2) / (ms / 1000) / 1e12;
      gemv.push({ m, k, ms, TBps });
      log(`gemv bf16 ${m}×${k}: ${(ms * 1000).toFixed(1)} µs, ${TBps.toFixed(2)} TB/s`);
    }
    {
      // The fused decode launches: q/k/v in one pass, gate/up with SwiGLU in one pass.
      const x = alloc('f32', [1, 4096], 11);
      const weights = [4096, 1024, 1024].map((m, i) => alloc('bf16', [m, 4096], 12 + i));
      const outs = [4096, 1024, 1024].map((m, i) => alloc('f32', [1, m], 15 + i));
      const qkvMs = await timeOps(backend, repeats, () => backend.matmulGroup(x, weights, outs));
      const qkvTBps = (6144 * 4096 * 2) / (qkvMs / 1000) / 1e12;
      gemv.push({ m: 6144, k: 4096, ms: qkvMs, TBps: qkvTBps, op: 'matmulGroup q/k/v' });
      log(`matmulGroup q/k/v 6144×4096: ${(qkvMs * 1000).toFixed(1)} µs, ${qkvTBps.toFixed(2)} TB/s`);
      const gate = alloc('bf16', [14336, 4096], 18);
      const up = alloc('bf16', [14336, 4096], 19);
      const out = alloc('f32', [1, 14336], 20);
      const swigluMs = await timeOps(backend, repeats, () => backend.matmulSwiglu(x, gate, up, out));
      const swigluTBps = (2 * 14336 * 4096 * 2) / (swigluMs / 1000) / 1e12;
      gemv.push({ m: 2 * 14336, k: 4096, ms: swigluMs, TBps: swigluTBps, op: 'matmulSwiglu gate/up' });
      log(`matmulSwiglu 2×14336×4096: ${(swigluMs * 1000).toFixed(1)} µs, ${swigluTBps.toFixed(2)} TB/s`);
    }
    const attention = [];
    for (const keys of backend.device === 'cuda' ? [4096, 32768, 131072] : [4096]) {
      const q = alloc('f32', [1, 32 * 128], 4);
      const kc = alloc('bf16', [8, keys, 128], 5);
      const vc = alloc('bf16', [8, keys, 128], 6);
      const out = alloc('f32', [1, 32 * 128], 7);
      const attributes = { heads: 32, kvHeads: 8, headDim: 128, scale: 1 / Math.sqrt(128), keyLength: keys };
      const ms = await timeOps(backend, Math.max(1, Math.floor(repeats / 4)), () =>
        backend.attentionDecode(q, kc, vc, out, attributes),
      );
      const TBps = (2 * 8 * keys * 128 * 2) / (ms / 1000) / 1e12;
      attention.push({ keys, ms, TBps });
      log(`decode attention ${keys} keys: ${(ms * 1000).toFixed(1)} µs, ${TBps.toFixed(2)} TB/s`);
    }
    const x = alloc('f32', [1, 4096], 8);
    const w = alloc('f32', [4096], 9);
    const out = alloc('f32', [1, 4096], 10);
    const smallOpMs = await timeOps(backend, repeats * 5, () => backend.rmsNorm(x, w, out, 1e-5));
    await backend.synchronize();
    const enqueueStart = performance.now();
    const enqueueCount = 400;
    for (let i = 0; i < enqueueCount; i++) backend.rmsNorm(x, w, out, 1e-5);
    const enqueueUs = ((performance.now() - enqueueStart) / enqueueCount) * 1000;
    await backend.synchronize();
    log(
      `small op (rmsNorm 1×4096): ${(smallOpMs * 1000).toFixed(2)} µs device, ${enqueueUs.toFixed(2)} µs host enqueue`,
    );
    const figures = { gemv, attention, smallOp: { deviceUs: smallOpMs * 1000, hostEnqueueUs: enqueueUs } };
    const settings = { repeats, timing: 'back-to-back ops between synchronisations, host clock, median of 5 trials' };
    return options.out ? writeResult(String(options.out), backend.deviceName, settings, figures) : figures;
  } finally {
    for (const tensor of made) tensor.dispose();
  }
}
