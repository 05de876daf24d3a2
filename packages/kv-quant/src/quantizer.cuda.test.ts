// Quantized cache writes on CUDA against the reference quantizer (identical codes); skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from '@duoattn/kernels';
import { quantizerConformanceSuite } from './quantizer-conformance.js';

const reason = cudaUnavailableReason();
quantizerConformanceSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
