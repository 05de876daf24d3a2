// The one module that reads duoattn's DUO_* environment variables at run time. Library entry points take options;
// the apps, the loader's override and the test tools read the environment here and pass what they found on.
import { DuoArgumentError } from './errors.js';

/** A run-time DUO_* variable: its name, what it sets and which code passes it on (docs/architecture.md lists them). */
export interface EnvironmentVariable {
  readonly name: string;
  readonly kind: 'flag' | 'integer' | 'path' | 'text';
  readonly meaning: string;
  readonly usedBy: string;
}

/** Every run-time DUO_* variable (build switches such as DUO_CUDA are read by the kernels' build scripts). */
export const ENVIRONMENT_VARIABLES = [
  {
    name: 'DUO_NATIVE_PATH',
    kind: 'path',
    meaning: 'load the addon from this file instead of the package build (device bundles, prebuilt binaries)',
    usedBy: '@duoattn/kernels loader',
  },
  {
    name: 'DUO_NCCL_PATH',
    kind: 'path',
    meaning:
      'a directory holding libnccl.so.2, tried before the CUDA library directories and the dynamic loader’s search when an NCCL communicator is first asked for',
    usedBy: '@duoattn/kernels ncclUniqueId / openNcclCommunicator → the addon’s NCCL loader',
  },
  {
    name: 'DUO_VERBOSE',
    kind: 'flag',
    meaning: 'log why a backend was or was not chosen; print the stack of a failure',
    usedBy: 'duo-bench → resolveBackend({ log }), its failure report',
  },
  {
    name: 'DUO_NO_GRAPHS',
    kind: 'flag',
    meaning: 'enqueue every greedy decode step instead of replaying a captured CUDA graph (profiling)',
    usedBy: 'duo-bench → LlamaModel.load({ graphs: false })',
  },
  {
    name: 'DUO_CUDA_PROFILE',
    kind: 'flag',
    meaning: 'time every CUDA op with events and print a per-op table (slows decode)',
    usedBy: 'duo-bench, duo-serve → BackendTuning.profile',
  },
  {
    name: 'DUO_BATCH_INVARIANT',
    kind: 'flag',
    meaning:
      "CUDA's batch-invariant mode: a sequence gets the same bits in a batch as alone (single rows leave the f32 GEMV)",
    usedBy: 'duo-bench, duo-serve → BackendTuning.batchInvariant',
  },
  {
    name: 'DUO_SKINNY_ROWS_MAX',
    kind: 'integer',
    meaning:
      'most rows (0–64) the CUDA skinny tensor-core matmul takes where it beats cuBLAS (default 64; 0: all to cuBLAS; a tuning knob)',
    usedBy: 'duo-bench, duo-serve → BackendTuning.skinnyRowsMax',
  },
  {
    name: 'DUO_LONG_SPLITS_FIRST',
    kind: 'integer',
    meaning:
      "1 (default): a batch's CUDA decode attention starts every sequence's full-head splits before streaming ones; 0: sequence after sequence (a tuning knob)",
    usedBy: 'duo-bench, duo-serve → BackendTuning.longSplitsFirst',
  },
  {
    name: 'DUO_DECODE_MMA_BLOCKS',
    kind: 'integer',
    meaning:
      'blocks a multiprocessor holds of the CUDA tensor-core decode attention over 16-bit caches: 2 (default) or 3 (168 registers a thread); a tuning knob',
    usedBy: 'duo-bench, duo-serve → BackendTuning.decodeMmaBlocks',
  },
  {
    name: 'DUO_DECODE_BATCH_MERGE',
    kind: 'integer',
    meaning:
      "a batch's CUDA decode attention merges heads of at most this many splits in the kernel (1–64, default 16), longer ones in a combine launch; a tuning knob",
    usedBy: 'duo-bench, duo-serve → BackendTuning.decodeBatchMerge',
  },

  {
    name: 'DUO_CPU_INTEGER_Q8',
    kind: 'flag',
    meaning:
      "0: the CPU's Q8_0 products multiply x exactly (f32, slower) instead of x rounded to int8 pieces of 32 values (the default: llama.cpp's and CUDA's numerics)",
    usedBy: 'duo-bench, duo-serve, tools/cpu-peer → BackendTuning.cpuIntegerQ8',
  },
  {
    name: 'DUO_NO_PDL',
    kind: 'flag',
    meaning: 'launch CUDA kernels without programmatic dependent launch (A/B runs)',
    usedBy: 'duo-bench, duo-serve → BackendTuning.chainLaunches',
  },
  {
    name: 'DUO_GEMV_MIN_SLICE',
    kind: 'integer',
    meaning: 'smallest split-K slice of the decode GEMV, in elements (default 1024; a tuning knob)',
    usedBy: 'duo-bench, duo-serve → BackendTuning.gemvMinSlice',
  },
  {
    name: 'DUO_GEMV_WAVES',
    kind: 'integer',
    meaning: "the decode GEMV's split rule: 0 fill, 1 waves, 2 (default) the chained-launch rule (a tuning knob)",
    usedBy: 'duo-bench, duo-serve → BackendTuning.gemvWaveRule',
  },
  {
    name: 'DUO_GEMV_SPLIT',
    kind: 'text',
    meaning: 'pins the decode GEMV split-K factor per shape, "rowsxk:split,…" e.g. "6144x4096:4" (a tuning knob)',
    usedBy: 'duo-bench, duo-serve → BackendTuning.gemvPinnedSplits',
  },
  {
    name: 'DUO_COMMIT',
    kind: 'text',
    meaning: 'the commit written into result records (set by the device bundle, which has no git)',
    usedBy: '@duoattn/app-kit currentCommit',
  },
  {
    name: 'DUO_PRINT_JSON',
    kind: 'flag',
    meaning: 'duo-bench speed also prints its result record on stdout',
    usedBy: 'duo-bench speed',
  },
  {
    name: 'DUO_SHARED_DIR',
    kind: 'path',
    meaning: 'where tests and benchmarks find ../shared (models, golden outputs, books)',
    usedBy: 'tests (kernels/testing sharedPath)',
  },
  {
    name: 'DUO_REPO_DIR',
    kind: 'path',
    meaning: 'the checkout whose models/ tests read (bundles that run elsewhere)',
    usedBy: 'tests (demo-model fixtures)',
  },
  {
    name: 'DUO_API_KEYS',
    kind: 'text',
    meaning:
      'comma-separated bearer keys duo-serve accepts (instead of --api-key on the command line, where ps shows it)',
    usedBy: 'duo-serve → createServer({ apiKeys })',
  },
] as const satisfies readonly EnvironmentVariable[];

/** The names of the run-time variables. */
export type EnvironmentVariableName = (typeof ENVIRONMENT_VARIABLES)[number]['name'];

/** The run-time DUO_* settings, parsed. Absent variables are undefined (flags false). */
export interface DuoEnvironment {
  readonly nativePath?: string;
  readonly ncclPath?: string;
  readonly verbose: boolean;
  readonly noGraphs: boolean;
  readonly cudaProfile: boolean;
  readonly noPdl: boolean;
  readonly batchInvariant: boolean;
  readonly skinnyRowsMax?: number;
  readonly longSplitsFirst?: boolean;
  readonly decodeMmaBlocks?: number;
  readonly decodeBatchMerge?: number;
  readonly cpuIntegerQ8?: boolean;
  readonly gemvMinSlice?: number;
  readonly gemvWaves?: number;
  readonly gemvSplit?: string;
  readonly commit?: string;
  readonly printJson: boolean;
  readonly sharedDir?: string;
  readonly repoDir?: string;
  readonly apiKeys?: readonly string[];
}

type Environment = Readonly<Record<string, string | undefined>>;

/**
 * Reads the DUO_* variables of `environment` (default `process.env`). A flag is on for any value but '', '0' and
 * 'false'; an integer that does not parse is a `DuoArgumentError` naming the variable (a typo must not silently
 * tune nothing).
 */
export function readEnvironment(environment: Environment = process.env): DuoEnvironment {
  const text = (name: EnvironmentVariableName) => {
    const value = environment[name];
    return value === undefined || value === '' ? undefined : value;
  };
  const flag = (name: EnvironmentVariableName) => {
    const value = text(name);
    return value !== undefined && value !== '0' && value.toLowerCase() !== 'false';
  };
  /** A flag that is unset (undefined) unless given: its default lives with the code that reads it. */
  const optionalFlag = (name: EnvironmentVariableName) => (text(name) === undefined ? undefined : flag(name));
  const integer = (name: EnvironmentVariableName, least: number, most = Number.MAX_SAFE_INTEGER) => {
    const value = text(name);
    if (value === undefined) return undefined;
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < least || parsed > most) {
      const range = most === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${least}` : `an integer in [${least}, ${most}]`;
      throw new DuoArgumentError(name, `Expected ${name} to be ${range} but it is "${value}"`);
    }
    return parsed;
  };
  const longSplits = integer('DUO_LONG_SPLITS_FIRST', 0, 1);
  return {
    nativePath: text('DUO_NATIVE_PATH'),
    ncclPath: text('DUO_NCCL_PATH'),
    verbose: flag('DUO_VERBOSE'),
    noGraphs: flag('DUO_NO_GRAPHS'),
    cudaProfile: flag('DUO_CUDA_PROFILE'),
    noPdl: flag('DUO_NO_PDL'),
    cpuIntegerQ8: optionalFlag('DUO_CPU_INTEGER_Q8'),
    batchInvariant: flag('DUO_BATCH_INVARIANT'),
    skinnyRowsMax: integer('DUO_SKINNY_ROWS_MAX', 0, 64),
    longSplitsFirst: longSplits === undefined ? undefined : longSplits === 1,
    decodeMmaBlocks: integer('DUO_DECODE_MMA_BLOCKS', 2, 3),
    decodeBatchMerge: integer('DUO_DECODE_BATCH_MERGE', 1, 64),
    gemvMinSlice: integer('DUO_GEMV_MIN_SLICE', 1),
    gemvWaves: integer('DUO_GEMV_WAVES', 0, 2),
    gemvSplit: text('DUO_GEMV_SPLIT'),
    commit: text('DUO_COMMIT'),
    printJson: flag('DUO_PRINT_JSON'),
    sharedDir: text('DUO_SHARED_DIR'),
    repoDir: text('DUO_REPO_DIR'),
    apiKeys: text('DUO_API_KEYS')
      ?.split(',')
      .map((key) => key.trim())
      .filter((key) => key !== ''),
  };
}
