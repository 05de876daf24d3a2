// Quantized cache writes on CUDA against the reference quantizer (identical codes); skips visibly without a GPU.

import { quantizerConformanceSuite } from './quantizer-conformance-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
quantizerConformanceSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
