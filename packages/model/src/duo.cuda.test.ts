// DuoAttention through the model on CUDA, against float64 (2e-3); skips visibly without a usable GPU.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { duoSuite } from './__fixtures__/duo-suite.js';

duoSuite('cuda', 2e-3, cudaUnavailableReason());
