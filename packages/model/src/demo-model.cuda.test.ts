// The embedded demo model against its PyTorch golden logits on the CUDA backend; skips visibly without a GPU.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { demoModelSuite } from './__fixtures__/demo-suite.js';

demoModelSuite('cuda', cudaUnavailableReason());
