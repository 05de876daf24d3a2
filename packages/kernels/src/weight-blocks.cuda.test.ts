// Weights in GGUF block formats on CUDA, read in place by its kernels; skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';
import { weightBlocksSuite } from './weight-blocks-suite.js';

const reason = cudaUnavailableReason();
const cuda = () => (reason === undefined ? createBackend('cuda') : undefined);
weightBlocksSuite('cuda', cuda, reason);
// The decode matmul's grid with just enough warps that each streams the same number of columns (BackendTuning).
weightBlocksSuite('cuda, even columns a warp', cuda, reason, false, { blockGemvGrid: 1 });
