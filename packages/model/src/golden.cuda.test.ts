// stories260K golden check on the CUDA backend (within 2e-3); skips visibly without a usable GPU.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { goldenSuite } from './__fixtures__/golden-suite.js';

goldenSuite('cuda', 2e-3, cudaUnavailableReason());
