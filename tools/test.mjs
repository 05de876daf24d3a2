// `pnpm test`: builds every package (turbo, cached), then runs vitest with any extra arguments given.
import { spawnSync } from 'node:child_process';

const build = spawnSync('pnpm', ['run', 'build'], { stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
const tests = spawnSync('pnpm', ['exec', 'vitest', 'run', ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(tests.status ?? 1);
