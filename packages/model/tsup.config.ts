import { defineConfig } from 'tsup';
import { packageBuild } from '../../tools/tsup-base.ts';

// The engine worker's and the rank processes' scripts sit beside the bundle's chunks (dist/engine-worker-main.js,
// dist/group-rank-main.js), where startEngineWorker and startProcessGroup look for them.
export default defineConfig(
  packageBuild([], {
    entry: {
      index: 'src/index.ts',
      'engine-worker-main': 'src/hosts/engine-worker-main.ts',
      'group-rank-main': 'src/hosts/group-rank-main.ts',
    },
  }),
);
