// The packed-tarball consumer test (`pnpm test:consumer`, a CI step): builds, packs every published package, installs
// the tarballs with npm into a fresh project outside the workspace (other dependencies come from the registry), and
// runs examples/quickstart.mjs — the README's library example — there on the CPU against models/duo-demo.
// Options: --no-build (use the packages' current dist/), --keep (leave the temporary directory), --cuda (let the
// install compile CUDA where it finds it; by default it builds the CPU addon: CUDA takes minutes and CI has no GPU).
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const example = join(root, 'examples', 'quickstart.mjs');
const model = join(root, 'models', 'duo-demo');
const args = new Set(process.argv.slice(2));
const work = mkdtempSync(join(tmpdir(), 'duoattn-consumer-'));
const started = performance.now();

/** The environment of the consumer's commands: none of pnpm's npm_* settings leak into npm, no workspace paths. */
const consumerEnvironment = Object.fromEntries(
  Object.entries(process.env).filter(([name]) => !/^(npm_|pnpm_|PNPM_|INIT_CWD$|DUO_NATIVE_PATH$)/i.test(name)),
);
// CPU unless --cuda: then the install detects CUDA as a user's would (nvcc, headers and a driver).
if (args.has('--cuda')) delete consumerEnvironment.DUO_CUDA;
else consumerEnvironment.DUO_CUDA = '0';

function step(name, body) {
  const stepStarted = performance.now();
  console.log(`[consumer] ${name}`);
  body();
  console.log(`[consumer] ${name}: ${((performance.now() - stepStarted) / 1000).toFixed(1)} s`);
}

function run(command, commandArgs, options = {}) {
  const result = spawnSync(command, commandArgs, { stdio: 'inherit', encoding: 'utf8', ...options });
  if (result.status !== 0) {
    throw new Error(`${command} ${commandArgs.join(' ')} exited with ${result.status ?? result.error?.message}`);
  }
  return result;
}

/** The published packages: every package under packages/ that is not private. */
function publishedPackages() {
  return readdirSync(join(root, 'packages'))
    .map((name) => join(root, 'packages', name))
    .filter((directory) => existsSync(join(directory, 'package.json')))
    .filter((directory) => !JSON.parse(readFileSync(join(directory, 'package.json'), 'utf8')).private);
}

/**
 * The fresh project's package.json. It approves the kernels install script as npm asks a user to (a warning today, an
 * error under strict-allow-scripts); a registry install names `@duoattn/kernels`, a tarball its `file:` path.
 */
function consumerManifest(tarballs) {
  const kernels = tarballs.find((tarball) => basename(tarball).startsWith('duoattn-kernels-'));
  return {
    name: 'duoattn-consumer',
    version: '1.0.0',
    private: true,
    type: 'module',
    allowScripts: { [`file:${kernels}`]: true },
  };
}

/** The README must show examples/quickstart.mjs verbatim, so the code users read is the code this test runs. */
function checkReadmeShowsExample() {
  const code = readFileSync(example, 'utf8');
  if (!readFileSync(join(root, 'README.md'), 'utf8').includes(`\`\`\`js\n${code}\`\`\``)) {
    throw new Error(
      'README.md no longer shows examples/quickstart.mjs verbatim in a ```js block: update one or the other',
    );
  }
}

/** The kernels tarball carries what its install step compiles, and no build output of this machine. */
function checkKernelsTarball(tarball) {
  const files = run('tar', ['-tzf', tarball], { stdio: 'pipe' }).stdout.split('\n');
  const needed = ['package/native/binding.gyp', 'package/native/build.mjs', 'package/native/install.mjs'];
  const missing = needed.filter((file) => !files.includes(file));
  if (!files.some((file) => /^package\/native\/.*\.cc$/.test(file))) missing.push('package/native/**/*.cc');
  if (missing.length > 0) throw new Error(`${tarball} lacks ${missing.join(', ')}`);
  const built = files.filter((file) => file.startsWith('package/native/build/'));
  if (built.length > 0) throw new Error(`${tarball} carries build output: ${built.slice(0, 3).join(', ')}…`);
}

const packs = join(work, 'packs');
const project = join(work, 'project');
try {
  checkReadmeShowsExample();
  if (!args.has('--no-build')) step('build', () => run('pnpm', ['run', 'build'], { cwd: root }));
  step('pack', () => {
    mkdirSync(packs);
    for (const directory of publishedPackages()) {
      run('pnpm', ['pack', '--pack-destination', packs], { cwd: directory, stdio: ['ignore', 'ignore', 'inherit'] });
    }
    const kernels = readdirSync(packs).find((file) => file.startsWith('duoattn-kernels-'));
    if (!kernels) throw new Error('no @duoattn/kernels tarball was packed');
    checkKernelsTarball(join(packs, kernels));
  });
  step(`npm install of the tarballs (DUO_CUDA=${consumerEnvironment.DUO_CUDA ?? 'detected'})`, () => {
    mkdirSync(project);
    const tarballs = readdirSync(packs).map((file) => join(packs, file));
    writeFileSync(join(project, 'package.json'), `${JSON.stringify(consumerManifest(tarballs), null, 2)}\n`);
    run('npm', ['install', '--no-audit', '--no-fund', '--foreground-scripts', ...tarballs], {
      cwd: project,
      env: consumerEnvironment,
    });
  });
  step('quickstart', () => {
    copyFileSync(example, join(project, 'quickstart.mjs'));
    const result = run(process.execPath, ['quickstart.mjs', model], {
      cwd: project,
      env: consumerEnvironment,
      stdio: ['ignore', 'pipe', 'inherit'],
      timeout: 300_000,
    });
    console.log(result.stdout.trimEnd());
    if (result.stdout.trim() === '') throw new Error('the quickstart printed no text');
  });
  console.log(`[consumer] passed in ${((performance.now() - started) / 1000).toFixed(1)} s (${work})`);
} catch (error) {
  console.error(`[consumer] FAILED: ${error instanceof Error ? error.message : error} (kept ${work})`);
  process.exitCode = 1;
} finally {
  if (process.exitCode !== 1 && !args.has('--keep')) rmSync(work, { recursive: true, force: true });
}
