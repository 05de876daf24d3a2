// Runs the continuous-batching suite on the CPU backend: the batched ops run the single-sequence ops slice by slice,
// so every result equals them exactly, and `sample` picks in float64 as the reference does.
import { batchConformanceSuite } from './batch-conformance-suite.js';
import { createBackend } from './resolve-backend.js';

const cpu = createBackend('cpu');
batchConformanceSuite('cpu', () => cpu, { attentionTolerance: () => 0, sampleSlack: 0 });
