// Attention over quantized caches on the CPU backend (rows dequantized as they are read), against float64 attention.

import { quantizedAttentionSuite } from './quantized-attention-suite.js';
import { createBackend } from './resolve-backend.js';

const cpu = createBackend('cpu');
quantizedAttentionSuite(
  'cpu',
  () => cpu,
  () => 1e-4,
);
