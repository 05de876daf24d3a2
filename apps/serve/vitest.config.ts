// This package's tests (`pnpm --filter <this package> test`); the root `pnpm test` runs them with every other package's.
import { packageProject } from '../../vitest.shared.ts';

export default packageProject(import.meta.url);
