// Quantized cache writes on the CPU backend against the reference quantizer.

import { quantizerConformanceSuite } from './quantizer-conformance-suite.js';
import { createBackend } from './resolve-backend.js';

const cpu = createBackend('cpu');
quantizerConformanceSuite('cpu', () => cpu);
