// One model serving full, duo 50 % and duo 75 % + int4 sessions interleaved, on CUDA: identical greedy tokens.
import { cudaUnavailableReason } from '@duoattn/kernels';
import { interleavedPoliciesSuite } from './__fixtures__/interleaved-suite.js';

interleavedPoliciesSuite('cuda', undefined, cudaUnavailableReason());
