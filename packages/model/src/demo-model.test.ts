// The embedded demo model against its PyTorch golden logits on the CPU backend.
import { demoModelSuite } from './__fixtures__/demo-suite.js';

demoModelSuite('cpu');
