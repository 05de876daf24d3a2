// Quantized cache writes on the CPU backend against the reference quantizer.
import { createBackend } from '@duoattn/kernels';
import { quantizerConformanceSuite } from './quantizer-conformance.js';

const cpu = createBackend('cpu');
quantizerConformanceSuite('cpu', () => cpu);
