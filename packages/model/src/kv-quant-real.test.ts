// KV quantization on the demo model's real keys and values, on the CPU backend.
import { realKvSuite } from './__fixtures__/real-kv-suite.js';

realKvSuite('cpu');
