// Entry of the device test bundle: the CUDA conformance suites, the golden and demo-model checks and DuoAttention
// through the model on CUDA, the gate trainer's gradients on CUDA, run with the vitest shim.
import { writeFileSync } from 'node:fs';
import '../../packages/kernels/src/conformance.cuda.test.ts';
import '../../packages/model/src/golden.cuda.test.ts';
import '../../packages/model/src/demo-model.cuda.test.ts';
import '../../packages/model/src/duo.cuda.test.ts';
import '../../packages/model/src/kv-quant-real.cuda.test.ts';
import '../../packages/gate-trainer/src/gate-gradients.cuda.test.ts';
import '../../packages/kv-quant/src/quantizer.cuda.test.ts';
import '../../packages/kv-quant/src/quantized-attention.cuda.test.ts';
import { runRegistered } from './vitest-shim.ts';

const outcomes = await runRegistered((line) => console.log(line));
const count = (status: string) => outcomes.filter((o) => o.status === status).length;
const summary = `${count('passed')} passed, ${count('failed')} failed, ${count('skipped')} skipped`;
console.log(summary);
if (process.env.DUO_TEST_JSON)
  writeFileSync(process.env.DUO_TEST_JSON, `${JSON.stringify({ summary, outcomes }, null, 1)}\n`);
process.exitCode = count('failed') > 0 ? 1 : 0;
