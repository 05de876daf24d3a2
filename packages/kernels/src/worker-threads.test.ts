// The addon keeps its state per JS environment: it loads in worker threads, two at once beside the main thread, and
// each environment has its own tensor registry and devices, freed when the worker exits.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { readEnvironment } from '@duoattn/core';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EnvironmentResult, environmentWork } from './__fixtures__/environment-work.js';
import { packageDirectory } from './native.js';
import { createBackend } from './resolve-backend.js';

let directory = '';
let workerFile = '';

// Workers run plain JavaScript: bundle the worker's entry and this package's sources (workspace imports resolved to
// their sources, as vitest resolves them) into one module.
beforeAll(async () => {
  // The repository's shared vitest settings map each workspace package to its sources (TypeScript outside this
  // package's program, so imported at run time).
  const shared = join(packageDirectory(), '..', '..', 'vitest.shared.ts');
  const { workspaceAliases } = (await import(shared)) as {
    workspaceAliases(): { find: RegExp; replacement: string }[];
  };
  const aliases = workspaceAliases();
  const bundle = await build({
    entryPoints: [join(packageDirectory(), 'src', '__fixtures__', 'backend-worker.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    write: false,
    logLevel: 'silent',
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
  directory = mkdtempSync(join(tmpdir(), 'duoattn-workers-'));
  workerFile = join(directory, 'backend-worker.mjs');
  writeFileSync(workerFile, bundle.outputFiles[0]?.text ?? '');
});

afterAll(() => {
  if (directory) rmSync(directory, { recursive: true, force: true });
});

/** Runs environmentWork(seed) in a new worker thread; resolves with its result once the worker has exited cleanly. */
function inWorker(seed: number): Promise<EnvironmentResult> {
  const addon = readEnvironment().nativePath ?? join(packageDirectory(), 'native', 'build', 'Release', 'duoattn.node');
  const worker = new Worker(pathToFileURL(workerFile), {
    workerData: { seed },
    env: { ...process.env, DUO_NATIVE_PATH: addon },
  });
  return new Promise((resolve, reject) => {
    let result: EnvironmentResult | undefined;
    worker.once('message', (message: EnvironmentResult) => {
      result = message;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (code === 0 && result) resolve(result);
      else reject(new Error(`worker for seed ${seed} exited with code ${code} ${result ? '' : 'without a result'}`));
    });
  });
}

describe('the addon in worker threads', () => {
  it('runs in two workers at once and on the main thread, each with its own registry and devices', async () => {
    // The main thread holds a tensor throughout: a worker's fresh environment must not see it.
    const held = createBackend('cpu').alloc('f32', [1024]);
    try {
      const workers = [inWorker(11), inWorker(23)];
      const main = await environmentWork(37);
      const [first, second] = await Promise.all(workers);
      for (const [seed, result] of [
        [11, first],
        [23, second],
      ] as const) {
        expect(result?.allocatedBefore).toBe(0);
        expect(result?.firstId).toBe(1);
        // The same work on the main thread gives the same bits.
        const again = await environmentWork(seed);
        expect(result?.values).toEqual(again.values);
        expect(result?.next).toEqual(again.next);
      }
      expect(first?.values).not.toEqual(second?.values);
      expect(main.values).not.toEqual(first?.values);
      expect(main.values.every(Number.isFinite)).toBe(true);
    } finally {
      held.dispose();
    }
  });

  it('loads again in a new worker after one has exited', async () => {
    const before = await inWorker(5);
    const after = await inWorker(5);
    expect(after).toEqual(before);
  });
});
