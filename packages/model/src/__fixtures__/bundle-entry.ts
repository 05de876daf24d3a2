// Bundles a script that runs outside vitest (a worker thread's, a rank process's) with the workspace packages'
// sources, as vitest resolves them, into a folder inside the package (so it finds the package's own dependencies).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readEnvironment } from '@duoattn/core';
import { build } from 'esbuild';

const PACKAGE = join(import.meta.dirname, '..', '..');

/** A bundled entry: its URL, the environment that points it at the built addon, and how to remove it. */
export interface BundledEntry {
  readonly url: URL;
  readonly env: NodeJS.ProcessEnv;
  remove(): void;
}

/** Bundles `src/<entry>` (e.g. 'batch/engine-worker-main.ts') into a temporary `.mjs`. */
export async function bundleEntry(entry: string): Promise<BundledEntry> {
  const { workspaceAliases } = (await import(join(PACKAGE, '..', '..', 'vitest.shared.ts'))) as {
    workspaceAliases(): { find: RegExp; replacement: string }[];
  };
  const aliases = workspaceAliases();
  const bundle = await build({
    entryPoints: [join(PACKAGE, 'src', entry)],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    write: false,
    logLevel: 'silent',
    external: ['@huggingface/*'],
    plugins: [
      {
        name: 'workspace-sources',
        setup(builder) {
          builder.onResolve({ filter: /^@duoattn\// }, (args) => {
            const alias = aliases.find(({ find }) => find.test(args.path));
            return alias ? { path: alias.replacement } : undefined;
          });
        },
      },
    ],
  });
  const directory = mkdtempSync(join(PACKAGE, 'node_modules', '.bundled-entry-'));
  const file = join(directory, entry.replace(/^.*\//, '').replace(/\.ts$/, '.mjs'));
  writeFileSync(file, bundle.outputFiles[0]?.text ?? '');
  const addon =
    readEnvironment().nativePath ?? join(PACKAGE, '..', 'kernels', 'native', 'build', 'Release', 'duoattn.node');
  return {
    url: pathToFileURL(file),
    env: { ...process.env, DUO_NATIVE_PATH: addon },
    remove: () => rmSync(directory, { recursive: true, force: true }),
  };
}
