// `pnpm test` at the root: every package's own vitest project (its vitest.config.ts) in one run.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    projects: ['packages/*/vitest.config.ts', 'apps/*/vitest.config.ts'],
    reporters: ['default'],
  },
});
