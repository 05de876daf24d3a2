// KV quantization on the demo model's real keys and values, on CUDA (the CUDA quantizer's codes against the
// reference); skips visibly without a usable GPU.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { realKvSuite } from './__fixtures__/real-kv-suite.js';

realKvSuite('cuda', cudaUnavailableReason());
