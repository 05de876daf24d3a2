// `pnpm test`: builds every package (turbo, cached), then runs vitest. Extra arguments go to vitest; with
// DUO_TEST_REPORT=FILE a JSON report is written there too (CI counts its results from it).
import { spawnSync } from 'node:child_process';

const build = spawnSync('pnpm', ['run', 'build'], { stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
const extra = process.argv.slice(2).filter((argument) => argument !== '--');
const report = process.env.DUO_TEST_REPORT;
if (report) extra.push('--reporter=default', '--reporter=json', `--outputFile=${report}`);
const tests = spawnSync('pnpm', ['exec', 'vitest', 'run', ...extra], { stdio: 'inherit' });
process.exit(tests.status ?? 1);
