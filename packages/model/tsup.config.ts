import { defineConfig } from 'tsup';
import { packageBuild } from '../../tools/tsup-base.ts';

// The engine worker's script sits beside the bundle's chunks (dist/engine-worker-main.js), where startEngineWorker
// looks for it.
export default defineConfig(
  packageBuild([], { entry: { index: 'src/index.ts', 'engine-worker-main': 'src/batch/engine-worker-main.ts' } }),
);
