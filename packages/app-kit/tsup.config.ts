import { defineConfig } from 'tsup';
import { packageBuild } from '../../tools/tsup-base.ts';

export default defineConfig(packageBuild(['src/index.ts']));
