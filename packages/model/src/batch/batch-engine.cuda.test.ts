// The batch engine on CUDA with the demo model: batched equals alone (identical greedy tokens); skips visibly without a
// usable GPU.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { batchEngineSuite } from '../__fixtures__/batch-engine-suite.js';

batchEngineSuite('cuda', cudaUnavailableReason());
