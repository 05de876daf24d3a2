// Weights in GGUF block formats on CUDA, read in place by its kernels; skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';
import { weightBlocksSuite } from './weight-blocks-suite.js';

const reason = cudaUnavailableReason();
weightBlocksSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
