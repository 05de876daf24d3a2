// DuoAttention through the model on the CPU backend, against float64 (1e-4).
import { duoSuite } from './__fixtures__/duo-suite.js';

duoSuite('cpu', 1e-4);
