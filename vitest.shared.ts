// The vitest settings every package shares: one project per package, workspace imports resolved to their sources.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineProject, type UserWorkspaceConfig } from 'vitest/config';

const repositoryRoot = dirname(fileURLToPath(import.meta.url));

interface PackageManifest {
  name: string;
  exports?: Record<string, { import?: string }>;
}

/**
 * Every export of every package under `packages/` (`@duoattn/kernels/testing` too), mapped to its TypeScript source
 * by the build's naming rule (`./dist/x/index.js` is built from `./src/x/index.ts`), so tests run on the sources
 * of the packages they import, built or not. Derived from the manifests, so a new package needs no entry here.
 */
export function workspaceAliases(): { find: RegExp; replacement: string }[] {
  const packagesDirectory = join(repositoryRoot, 'packages');
  const aliases: { find: RegExp; replacement: string }[] = [];
  for (const directory of readdirSync(packagesDirectory)) {
    const manifestPath = join(packagesDirectory, directory, 'package.json');
    if (!existsSync(manifestPath)) continue;
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as PackageManifest;
    for (const [subpath, target] of Object.entries(manifest.exports ?? {})) {
      if (!target.import?.startsWith('./dist/')) continue;
      const sourceFile = target.import.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts');
      const specifier = subpath === '.' ? manifest.name : `${manifest.name}${subpath.slice(1)}`;
      // Exact matches only: `@duoattn/kernels` must not also rewrite `@duoattn/kernels/testing`.
      aliases.push({
        find: new RegExp(`^${specifier.replace(/[/.-]/g, '\\$&')}$`),
        replacement: join(packagesDirectory, directory, sourceFile),
      });
    }
  }
  return aliases;
}

/**
 * The vitest project of the package whose `vitest.config.ts` calls this (pass its `import.meta.url`): named after
 * the package's directory (`core`, `bench`), running `src/**\/*.test.ts` there. The same project serves
 * `pnpm --filter <package> test` (vitest started in the package) and the root `pnpm test` (every project at once).
 */
export function packageProject(configUrl: string): UserWorkspaceConfig {
  const root = dirname(fileURLToPath(configUrl));
  return defineProject({
    resolve: { alias: workspaceAliases() },
    test: {
      name: basename(root),
      root,
      include: ['src/**/*.test.ts'],
      testTimeout: 120_000,
      hookTimeout: 120_000,
    },
  });
}
