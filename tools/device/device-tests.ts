// Runner of the device test bundle: runs every suite registered before it with the vitest shim. `pnpm device:prepare`
// bundles an entry that imports every packages/*/src/**/*.cuda.test.ts first (so none can be forgotten), then this.
import { writeFileSync } from 'node:fs';
import { runRegistered } from './vitest-shim.ts';

const outcomes = await runRegistered((line) => console.log(line));
const count = (status: string) => outcomes.filter((o) => o.status === status).length;
const summary = `${count('passed')} passed, ${count('failed')} failed, ${count('skipped')} skipped`;
console.log(summary);
if (process.env.DUO_TEST_JSON)
  writeFileSync(process.env.DUO_TEST_JSON, `${JSON.stringify({ summary, outcomes }, null, 1)}\n`);
process.exitCode = count('failed') > 0 ? 1 : 0;
