// One model serving full, duo 50 % and duo 75 % + int4 sessions interleaved, on the CPU backend: logits within 1e-6.
import { interleavedPoliciesSuite } from './__fixtures__/interleaved-suite.js';

interleavedPoliciesSuite('cpu', 1e-6);
