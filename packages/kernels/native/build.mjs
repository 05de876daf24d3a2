// Builds the addon with node-gyp: configures when the CUDA toggle changed or nothing is configured, else builds
// incrementally. Prints which backends the binary contains.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const packageRoot = dirname(dirname(fileURLToPath(import.meta.url)));
const detect = (question) =>
  spawnSync(process.execPath, [join(packageRoot, 'native', 'detect-cuda.mjs'), question], {
    encoding: 'utf8',
  }).stdout.trim();
const settings = { cuda: detect('enabled'), gencode: detect('gencode'), node: process.version };
const nativeRoot = join(packageRoot, 'native');
const stamp = join(nativeRoot, 'build', 'duo-settings.json');
const previous = existsSync(stamp) ? readFileSync(stamp, 'utf8') : '';
const configured = existsSync(join(nativeRoot, 'build', 'Makefile')) && previous === JSON.stringify(settings);

// Use the Node headers installed beside this Node (Debian puts them in /usr/include/node): nothing to download.
const nodedirArgs = [];
if (!process.env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) nodedirArgs.push(`--nodedir=${prefix}`);
}
// node-gyp is a dependency of this package, so an installed copy builds with the version it was tested with rather than
// whichever node-gyp is on PATH (npm's bundled one, then PATH, are the fallbacks when it cannot be resolved).
function nodeGyp() {
  try {
    return [process.execPath, createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js')];
  } catch {
    return process.env.npm_config_node_gyp ? [process.execPath, process.env.npm_config_node_gyp] : ['node-gyp'];
  }
}
const args = [configured ? 'build' : 'rebuild', '--jobs=max', ...nodedirArgs];
console.log(`[duoattn] CUDA backend ${settings.cuda === '1' ? 'on' : 'off'}: ${detect('why')}`);
if (settings.cuda === '1') {
  const files = readdirSync(join(nativeRoot, 'cuda')).filter((file) => file.endsWith('.cu')).length;
  console.log(
    `[duoattn] compiling ${files} CUDA files (${[...new Set(settings.gencode.match(/sm_\w+|compute_\w+/g))].join(', ')}): minutes on a small ` +
      'machine; each is named as nvcc starts it. DUO_CUDA_ARCHS=90a narrows the targets, DUO_CUDA=0 skips CUDA.',
  );
}
console.log(`[duoattn] node-gyp ${args.join(' ')}`);
const [command, ...gypArgs] = nodeGyp();
const result = spawnSync(command, [...gypArgs, ...args], { cwd: nativeRoot, stdio: 'inherit' });
if (result.error) {
  console.error(`[duoattn] could not run node-gyp: ${result.error.message}`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status ?? 1);
writeFileSync(stamp, JSON.stringify(settings));
