// Runs the conformance suite on the CPU backend.
import { backwardConformanceSuite } from './backward-conformance-suite.js';
import { conformanceSuite } from './conformance-suite.js';
import { createBackend } from './resolve-backend.js';
import { streamingConformanceSuite } from './streaming-conformance-suite.js';

const cpu = createBackend('cpu');
conformanceSuite('cpu', () => cpu);
streamingConformanceSuite('cpu', () => cpu);
backwardConformanceSuite('cpu', () => cpu);
