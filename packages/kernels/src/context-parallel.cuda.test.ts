// Context parallelism's ops on the CUDA backend: sharded cache writes, the decode kernels' partial attention over a
// rank's keys, the rank-ordered merge; a prefill chunk's partial attention refused by name (CPU only so far). The
// decode splits a rank's keys differently from one device, so the merged rows may differ by what the decode op's own
// tests allow against float64: 1e-2 where 16-bit tiles go to the tensor cores, 1e-4 for f32 caches. Skips visibly
// without a usable GPU.
import { contextParallelSuite } from './context-parallel-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
contextParallelSuite(
  'cuda',
  () => (reason === undefined ? createBackend('cuda') : undefined),
  { rows: 'decode', tolerance: (kind) => (kind === 'f32' ? 1e-4 : 1e-2) },
  reason,
);
