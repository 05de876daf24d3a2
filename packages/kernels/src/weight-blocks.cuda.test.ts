// Weights in GGUF block formats on CUDA: refused by name until the kernels read blocks; skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';
import { weightBlocksSuite } from './weight-blocks-suite.js';

const reason = cudaUnavailableReason();
weightBlocksSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
