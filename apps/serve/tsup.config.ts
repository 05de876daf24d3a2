import { defineConfig } from 'tsup';
import { packageBuild } from '../../tools/tsup-base.ts';

export default defineConfig(packageBuild(['src/cli.ts'], { dts: false, banner: { js: '#!/usr/bin/env node' } }));
