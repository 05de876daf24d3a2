// The package's `install` script: builds the addon where @duoattn/kernels is installed — the CUDA backend when nvcc,
// its headers and a CUDA driver are found, else the CPU one — and on failure prints why and the loader's fixes instead
// of node-gyp's log. Inside the duoattn workspace it does nothing: `pnpm build` builds the addon there (turbo-cached).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeRoot = dirname(fileURLToPath(import.meta.url));
const packageRoot = dirname(nativeRoot);
const say = (line) => console.log(`[duoattn] ${line}`);

// A published tarball has no src/; the workspace checkout has it and the workspace file two levels up.
if (existsSync(join(packageRoot, 'src')) && existsSync(join(packageRoot, '..', '..', 'pnpm-workspace.yaml'))) {
  say('workspace checkout: `pnpm build` builds the addon, so the install step does not');
  process.exit(0);
}
if (process.env.DUO_NATIVE_PATH) {
  say(`DUO_NATIVE_PATH is set (${process.env.DUO_NATIVE_PATH}): not building the addon`);
  process.exit(0);
}

/** The build's answer (detect-cuda.mjs: env DUO_CUDA=0|1 wins, else nvcc, its headers and a CUDA driver). */
function cudaChoice() {
  const forced = process.env.DUO_CUDA;
  const ask = (question) =>
    spawnSync(process.execPath, [join(nativeRoot, 'detect-cuda.mjs'), question], { encoding: 'utf8' }).stdout.trim();
  say(`CUDA backend: ${ask('enabled') === '1' ? 'on' : 'off'} (${ask('why')})`);
  return { cuda: ask('enabled') === '1' ? '1' : '0', forced: forced === '0' || forced === '1' };
}

/** Runs native/build.mjs with its output in a log file; returns the exit status and the log's path. */
function build(cuda) {
  const log = join(tmpdir(), `duoattn-build-${process.pid}-${cuda === '1' ? 'cuda' : 'cpu'}.log`);
  say(`building the native addon (CUDA ${cuda === '1' ? 'on: several minutes' : 'off: about a minute'}; log: ${log})`);
  const result = spawnSync(process.execPath, [join(nativeRoot, 'build.mjs')], {
    cwd: packageRoot,
    env: { ...process.env, DUO_CUDA: cuda },
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  writeFileSync(log, `${result.stdout ?? ''}${result.stderr ?? ''}${result.error ? String(result.error) : ''}`);
  return { status: result.error ? 1 : (result.status ?? 1), log };
}

/** The lines of a failed build's log that say what went wrong, without node-gyp's environment dump. */
function errorLines(log) {
  const noise = /gyp ERR! (cwd|node -v|node-gyp -v|command|System|not ok|stack +at )|^\s*at /;
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((line) => /\berror\b|Error:|not found|No such file|command not found/i.test(line) && !noise.test(line))
    .slice(0, 12);
}

/** The loader's own message: every place it looked for the addon and the fixes (from the built dist/). */
async function loaderMessage() {
  try {
    const { loadNative } = await import('../dist/index.js');
    loadNative();
    return '';
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

const choice = cudaChoice();
let attempt = build(choice.cuda);
if (attempt.status !== 0 && choice.cuda === '1' && !choice.forced) {
  say(`the CUDA build failed (log: ${attempt.log}); building the CPU backend instead`);
  attempt = build('0');
}
if (attempt.status === 0) {
  say('native addon built');
  process.exit(0);
}
console.error(`[duoattn] could not build the native addon (full log: ${attempt.log}):`);
for (const line of errorLines(attempt.log)) console.error(`    ${line.trim()}`);
const message = await loaderMessage();
if (message) console.error(message);
console.error(
  'node-gyp needs Python 3, make and a C++17 compiler. Then rerun the build with `npm rebuild @duoattn/kernels` ' +
    '(DUO_CUDA=0 skips the CUDA backend), or install with --ignore-scripts and point DUO_NATIVE_PATH at a built duoattn.node.',
);
process.exit(1);
