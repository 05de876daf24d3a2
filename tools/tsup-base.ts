// Shared tsup settings: every package builds ESM for Node 20 with declarations and source maps.
import type { Options } from 'tsup';

/** tsup options for a package whose entry points are `entry` (paths relative to the package). */
export function packageBuild(entry: string[], extra: Partial<Options> = {}): Options {
  return {
    entry,
    format: ['esm'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node20',
    ...extra,
  };
}
