// One vitest project per package; tests import workspace packages from source.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const source = (name: string) => fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url));
const alias = {
  '@duoattn/core': source('core'),
  '@duoattn/kernels/testing': fileURLToPath(new URL('./packages/kernels/src/testing/index.ts', import.meta.url)),
  '@duoattn/kernels': source('kernels'),
  '@duoattn/kv-quant': source('kv-quant'),
  '@duoattn/dual-cache': source('dual-cache'),
  '@duoattn/model': source('model'),
  '@duoattn/gate-trainer': source('gate-trainer'),
  '@duoattn/accs': source('accs'),
};
const project = (name: string, root: string) => ({
  resolve: { alias },
  test: { name, root, include: ['src/**/*.test.ts'], testTimeout: 120_000, hookTimeout: 120_000 },
});

export default defineConfig({
  test: {
    projects: [
      project('core', 'packages/core'),
      project('kernels', 'packages/kernels'),
      project('kv-quant', 'packages/kv-quant'),
      project('dual-cache', 'packages/dual-cache'),
      project('model', 'packages/model'),
      project('gate-trainer', 'packages/gate-trainer'),
      project('accs', 'packages/accs'),
      project('bench', 'apps/bench'),
    ],
    reporters: ['default'],
  },
});
