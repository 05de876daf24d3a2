// The trainer's ∂loss/∂α on CUDA against finite differences of the float64 loss; skips visibly without a GPU.
import { createBackend, cudaUnavailableReason } from '@duoattn/kernels';
import { gateGradientSuite } from './gradient-check.js';

const reason = cudaUnavailableReason();
gateGradientSuite('cuda', () => (reason === undefined ? createBackend('cuda') : undefined), reason);
