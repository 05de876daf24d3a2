// Fills the git-ignored .device/ folder that travels to the GPU machine (name it in the device tool's `carry`):
// a Node binary, the CUDA-enabled addon, esbuild bundles of the device tests, duo-bench and duo-serve (with its engine
// worker), the ../shared files the runs read, the peer PyTorch script, and the commit. Run from the repository root:
// `pnpm device:prepare`. `--bundles-only` makes only the bundles and the commit (no addon build, Node or ../shared
// files): a quick check that the bundles build and start (`node .device/duo-serve.mjs --help` after unpacking).
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const out = join(root, '.device');
const shared = join(root, '..', 'shared');
const bundlesOnly = process.argv.includes('--bundles-only');
mkdirSync(out, { recursive: true });

function run(command, args, env = {}) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed`);
}

// 1. The addon with the CUDA path compiled (sm_90a + sm_80 + PTX unless DUO_CUDA_ARCHS narrows it).
if (!bundlesOnly) {
  run('pnpm', ['--filter', '@duoattn/kernels', 'build:native'], { DUO_CUDA: '1' });
  copyFileSync(join(root, 'packages/kernels/native/build/Release/duoattn.node'), join(out, 'duoattn.node'));
}

// 2. Bundles: no node_modules travel, so tests run through a vitest shim.
const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
  // The test files are imported for their side effects (they register suites) in packages marked sideEffects: false.
  ignoreAnnotations: true,
  // resvg is a native module the GPU machine does not have; figures there are SVG (PNG imports it only when asked).
  external: ['@resvg/resvg-js'],
  banner: {
    js: "import { createRequire as __duoRequire } from 'node:module'; const require = __duoRequire(import.meta.url);",
  },
  alias: {
    vitest: join(root, 'tools/device/vitest-shim.ts'),
    '@duoattn/core': join(root, 'packages/core/src/index.ts'),
    '@duoattn/kernels/testing': join(root, 'packages/kernels/src/testing/index.ts'),
    '@duoattn/kernels': join(root, 'packages/kernels/src/index.ts'),
    '@duoattn/kv-quant': join(root, 'packages/kv-quant/src/index.ts'),
    '@duoattn/dual-cache': join(root, 'packages/dual-cache/src/index.ts'),
    '@duoattn/model': join(root, 'packages/model/src/index.ts'),
    '@duoattn/gate-trainer': join(root, 'packages/gate-trainer/src/index.ts'),
    '@duoattn/accs': join(root, 'packages/accs/src/index.ts'),
    '@duoattn/app-kit': join(root, 'packages/app-kit/src/index.ts'),
  },
};
// Every CUDA test file of every package, then the runner: a new *.cuda.test.ts runs on the GPU without a list to edit.
const cudaTests = readdirSync(join(root, 'packages'), { recursive: true })
  .map(String)
  .filter((file) => file.endsWith('.cuda.test.ts') && !file.includes('node_modules'))
  .sort();
const entry = join(out, 'device-tests-entry.ts');
writeFileSync(
  entry,
  [...cudaTests, '../tools/device/device-tests.ts']
    .map((file) => `import ${JSON.stringify(file.startsWith('..') ? file : `../packages/${file}`)};`)
    .join('\n'),
);
console.log(`[device] ${cudaTests.length} CUDA test files: ${cudaTests.join(', ')}`);
await build({ ...common, entryPoints: [entry], outfile: join(out, 'device-tests.mjs') });
await build({ ...common, entryPoints: [join(root, 'apps/bench/src/cli.ts')], outfile: join(out, 'duo-bench.mjs') });
// duo-serve runs its engine in a worker thread whose script startEngineWorker looks for beside the bundle, as
// engine-worker-main.js (run.sh unpacks both into one folder with a package.json that makes .js files ES modules).
// The playground page (apps/serve/public) stays here: the server answers / without it, and the runs need only the API.
await build({ ...common, entryPoints: [join(root, 'apps/serve/src/cli.ts')], outfile: join(out, 'duo-serve.mjs') });
await build({
  ...common,
  entryPoints: [join(root, 'packages/model/src/hosts/engine-worker-main.ts')],
  outfile: join(out, 'engine-worker-main.js'),
});
// duo-serve --gpus forks one rank process per GPU running group-rank-main.js, which startProcessGroup also looks for
// beside the bundle.
await build({
  ...common,
  entryPoints: [join(root, 'packages/model/src/hosts/group-rank-main.ts')],
  outfile: join(out, 'group-rank-main.js'),
});
const bundles = ['device-tests.mjs', 'duo-bench.mjs', 'duo-serve.mjs', 'engine-worker-main.js', 'group-rank-main.js'];

// 3. Node itself (the GPU machine has none): without its symbols and at xz's strongest setting (21.9 MB instead of 24.2,
// room in the 64 MiB a device call carries for a second bundle); made once per Node binary.
const nodeArchive = join(out, 'node.xz');
const nodeStale = !existsSync(nodeArchive) || statSync(nodeArchive).mtimeMs < statSync(process.execPath).mtimeMs;
if (!bundlesOnly && nodeStale) {
  const stripped = join(out, 'node.stripped');
  execFileSync('strip', ['-o', stripped, process.execPath]);
  execFileSync('sh', ['-c', `xz -T2 -9e -c "${stripped}" > "${nodeArchive}" && rm "${stripped}"`]);
}

// 4. What the runs read from ../shared (it does not travel by itself).
for (const part of bundlesOnly
  ? []
  : ['models/stories260K', 'golden/stories260K', 'peer', 'reference-patterns', 'data/gutenberg/1342.txt']) {
  if (existsSync(join(shared, part))) cpSync(join(shared, part), join(out, 'shared', part), { recursive: true });
}

// The gate trainer's haystack: every Gutenberg book, as one xz archive (run.sh unpacks it).
if (!bundlesOnly && existsSync(join(shared, 'data/gutenberg'))) {
  execFileSync('sh', [
    '-c',
    `tar -C "${join(shared, 'data')}" -cf - gutenberg | xz -T2 -6 > "${join(out, 'gutenberg.tar.xz')}"`,
  ]);
}

// The figures' font (app-kit's figureFontFiles resolves it as a package beside the bundle: run.sh unpacks it into
// /tmp/duo-node/node_modules), so --plot, --heatmap and --plots draw on the GPU machine too.
if (!bundlesOnly) {
  const fonts = dirname(
    createRequire(join(root, 'packages/app-kit/package.json')).resolve('dejavu-fonts-ttf/ttf/DejaVuSans.ttf'),
  );
  execFileSync('sh', [
    '-c',
    `tar -C "${fonts}" -cf - DejaVuSans.ttf DejaVuSans-Bold.ttf | xz -T2 -9 > "${join(out, 'fonts.tar.xz')}"`,
  ]);
}

// 5. Compress what is large (the tree that travels, repository included, must stay under 64 MiB); run.sh unpacks.
for (const file of bundlesOnly ? bundles : ['duoattn.node', ...bundles]) {
  execFileSync('sh', ['-c', `xz -T2 -6 -f "${join(out, file)}"`]);
}

// 6. Provenance.
let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  if (execFileSync('git', ['status', '--porcelain'], { cwd: root, encoding: 'utf8' }).trim()) commit += '-dirty';
} catch {}
writeFileSync(join(out, 'commit.txt'), `${commit}\n`);
console.log(
  `[device] .device ready for commit ${commit}: ${execFileSync('du', ['-sh', out], { encoding: 'utf8' }).trim()}`,
);
