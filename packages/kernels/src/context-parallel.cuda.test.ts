// Context parallelism's ops on the CUDA backend: sharded cache writes, partial attention over a rank's keys (prefill
// chunks on the warpgroup prefill kernel where the build has sm_90a and the cache is 16-bit or quantized, else the
// CUDA-core one; decode rows on the split-K decode kernels), the rank-ordered merge. A rank's
// keys are split and tiled differently from one device's, whose own kernels may take the tensor cores, so the merged
// rows may differ by what those ops' own tests allow against float64: 1e-2 where 16-bit tiles go to the tensor cores,
// 1e-4 for f32 caches. Skips visibly without a usable GPU.
import { contextParallelSuite } from './context-parallel-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
contextParallelSuite(
  'cuda',
  () => (reason === undefined ? createBackend('cuda') : undefined),
  { tolerance: (kind) => (kind === 'f32' ? 1e-4 : 1e-2) },
  reason,
);
