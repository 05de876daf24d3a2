// Runs the conformance suite on the CUDA backend; skips visibly, with the reason, where there is no usable GPU.
import { backwardConformanceSuite } from './backward-conformance-suite.js';
import { conformanceSuite } from './conformance-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';
import { streamingConformanceSuite } from './streaming-conformance-suite.js';

const reason = cudaUnavailableReason();
conformanceSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
streamingConformanceSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
backwardConformanceSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
