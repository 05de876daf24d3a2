// Runner of the device test bundle: runs every suite registered before it with the vitest shim. `pnpm device:prepare`
// bundles an entry that imports every packages/*/src/**/*.cuda.test.ts first (so none can be forgotten), then this.
import { writeFileSync } from 'node:fs';
import { runRegistered } from './vitest-shim.ts';

// DUO_TEST_ONLY (a regular expression): run just the tests whose full name it matches, e.g. for a call that carries
// no demo model; the summary says so.
const only = process.env.DUO_TEST_ONLY ? new RegExp(process.env.DUO_TEST_ONLY) : undefined;
const outcomes = await runRegistered((line) => console.log(line), only);
const count = (status: string) => outcomes.filter((o) => o.status === status).length;
const summary = `${count('passed')} passed, ${count('failed')} failed, ${count('skipped')} skipped${only ? ` (only ${only})` : ''}`;
console.log(summary);
if (process.env.DUO_TEST_JSON)
  writeFileSync(process.env.DUO_TEST_JSON, `${JSON.stringify({ summary, outcomes }, null, 1)}\n`);
process.exitCode = count('failed') > 0 ? 1 : 0;
