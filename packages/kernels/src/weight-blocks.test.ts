// Weights kept in GGUF block formats on the CPU backend, against float64 over the decoded values.
import { createBackend } from './resolve-backend.js';
import { weightBlocksSuite } from './weight-blocks-suite.js';

const cpu = createBackend('cpu');
weightBlocksSuite('cpu', () => cpu);
