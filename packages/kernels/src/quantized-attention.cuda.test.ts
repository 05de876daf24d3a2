// Attention over quantized caches on CUDA against float64 attention; skips visibly without a GPU. The tensor-core
// kernels (head dims 64 and 128) stage dequantized rows as bf16 (relative rounding 2⁻⁹, as a bf16 cache would hold
// them) and round P to bf16; the CUDA-core kernels keep f32 tiles.

import { quantizedAttentionSuite } from './quantized-attention-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
quantizedAttentionSuite(
  'cuda',
  () => (reason === undefined ? createBackend('cuda') : undefined),
  (headDim) => (headDim === 64 || headDim === 128 ? 1e-2 : 1e-4),
  reason,
);
