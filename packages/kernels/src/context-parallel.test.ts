// Context parallelism's ops on the CPU backend: sharded cache writes, partial attention per rank, the rank-ordered merge.
import { contextParallelSuite } from './context-parallel-suite.js';
import { createBackend } from './resolve-backend.js';

const cpu = createBackend('cpu');
contextParallelSuite('cpu', () => cpu, { tolerance: () => 1e-5 });
