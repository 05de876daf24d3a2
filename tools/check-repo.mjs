// Repository rules the compilers cannot see, run by `pnpm lint`: packages depend only on the layers below them (no
// cycles, no undeclared imports); only @duoattn/core's environment module reads DUO_* variables at run time; every
// variable it reads has a row in docs/architecture.md.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// Lower layers first; a package may import only packages of a lower layer (docs/architecture.md draws them).
const LAYERS = [
  ['@duoattn/core'],
  ['@duoattn/kv-quant'],
  ['@duoattn/kernels'],
  ['@duoattn/dual-cache'],
  ['@duoattn/model'],
  ['@duoattn/gate-trainer', '@duoattn/accs', '@duoattn/app-kit'],
  ['duo-bench', 'duo-serve'],
];
const layerOf = new Map(LAYERS.flatMap((names, layer) => names.map((name) => [name, layer])));

const problems = [];

function sourceFiles(directory, extensions) {
  let entries;
  try {
    entries = readdirSync(directory, { recursive: true, withFileTypes: true });
  } catch {
    return [];
  }
  return entries
    .filter((entry) => entry.isFile() && extensions.some((extension) => entry.name.endsWith(extension)))
    .map((entry) => join(entry.parentPath ?? entry.path, entry.name))
    .filter((file) => !/[/\\](node_modules|dist|build)[/\\]/.test(file));
}

const packageDirectories = ['packages', 'apps'].flatMap((group) =>
  readdirSync(join(root, group), { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => join(root, group, entry.name)),
);

for (const directory of packageDirectories) {
  const manifest = JSON.parse(readFileSync(join(directory, 'package.json'), 'utf8'));
  const layer = layerOf.get(manifest.name);
  if (layer === undefined) {
    problems.push(`${manifest.name}: not in the layer list of tools/check-repo.mjs (add it where it belongs)`);
    continue;
  }
  const declared = { ...manifest.dependencies, ...manifest.devDependencies };
  for (const dependency of Object.keys(declared).filter((name) => layerOf.has(name))) {
    if (layerOf.get(dependency) >= layer) {
      problems.push(`${manifest.name} depends on ${dependency}, which is not in a lower layer`);
    }
  }
  for (const file of sourceFiles(join(directory, 'src'), ['.ts'])) {
    const text = readFileSync(file, 'utf8');
    for (const match of text.matchAll(/from '(@duoattn\/[a-z-]+)[^']*'/g)) {
      const imported = match[1];
      if (imported !== manifest.name && !(imported in declared)) {
        problems.push(
          `${relative(root, file)} imports ${imported}, which ${manifest.name}'s package.json does not list`,
        );
      }
    }
  }
}

// Run-time DUO_* reads: only the environment module (build scripts under packages/kernels/native/*.mjs read the build
// switches, and tools/ is repository tooling).
const environmentModule = join(root, 'packages/core/src/environment.ts');
const reads = /process\.env\s*(\.\s*DUO_|\[\s*['"]DUO_)|getenv\(\s*"DUO_/;
const runtimeSources = packageDirectories.flatMap((directory) => [
  ...sourceFiles(join(directory, 'src'), ['.ts']),
  ...sourceFiles(join(directory, 'native'), ['.cc', '.cu', '.cuh', '.h']),
]);
for (const file of runtimeSources) {
  if (file === environmentModule) continue;
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, index) => {
      if (reads.test(line)) {
        problems.push(`${relative(root, file)}:${index + 1} reads a DUO_* variable: use readEnvironment() (core)`);
      }
    });
}

const documented = readFileSync(join(root, 'docs/architecture.md'), 'utf8');
for (const [, name] of readFileSync(environmentModule, 'utf8').matchAll(/name: '(DUO_[A-Z_]+)'/g)) {
  if (!documented.includes(`| \`${name}\``)) problems.push(`docs/architecture.md has no table row for ${name}`);
}

if (problems.length > 0) {
  console.error(`check-repo: ${problems.length} problem(s)\n${problems.map((p) => `  ${p}`).join('\n')}`);
  process.exit(1);
}
console.log(`check-repo: ${packageDirectories.length} packages in their layers; DUO_* read in one place, documented`);
