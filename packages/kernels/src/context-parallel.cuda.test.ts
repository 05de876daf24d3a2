// Context parallelism's ops on the CUDA backend: the rank-ordered merge, and attentionPartial refused by name (the CUDA
// kernels read slot = position; sharded attention runs on the CPU so far). Skips visibly without a usable GPU.
import { contextParallelSuite } from './context-parallel-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
contextParallelSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), false, reason);
