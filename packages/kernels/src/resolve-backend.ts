// Backend selection: an explicit request is honoured or throws; 'auto' walks a priority list and logs each skip.
import { type DeviceKind, DuoArgumentError, DuoBackendUnavailableError, type DuoEnvironment } from '@duoattn/core';
import { type BackendTuning, loadNative } from './native.js';
import { NativeBackend } from './native-backend.js';
import { describeValue } from './validate.js';

/** What the caller asks for: a device, or 'auto' (CUDA when usable, else CPU). */
export type BackendRequest = DeviceKind | 'auto';

/** Options of `resolveBackend`. */
export interface ResolveOptions {
  /** Receives one line per skipped candidate and the final choice. Default: nothing is logged. */
  log?: (message: string) => void;
  /** Benchmark knobs for the chosen backend (`BackendTuning`); default the shipped behaviour. */
  tuning?: BackendTuning;
}

const backends = new Map<DeviceKind, NativeBackend>();

/** The backend for `device`, created once per process. Throws DuoBackendUnavailableError when it can't be used. */
export function createBackend(device: DeviceKind): NativeBackend {
  const existing = backends.get(device);
  if (existing) return existing;
  if (device !== 'cpu' && device !== 'cuda') {
    throw new DuoArgumentError(
      'device',
      `Expected \`device\` to be "cpu", "cuda" or "auto" but received ${describeValue(device)}`,
    );
  }
  const native = loadNative();
  const probe = native.probe(device);
  if (!probe.available) {
    throw new DuoBackendUnavailableError(`The ${device} backend is unavailable: ${probe.reason}`, [
      probe.reason ?? 'unknown',
    ]);
  }
  const backend = new NativeBackend(native, device, probe.name ?? device);
  backends.set(device, backend);
  return backend;
}

/** Why CUDA can't be used here, or undefined when it can. */
export function cudaUnavailableReason(): string | undefined {
  try {
    const probe = loadNative().probe('cuda');
    return probe.available ? undefined : probe.reason;
  } catch (error) {
    return (error as Error).message;
  }
}

/** Resolves a request to a backend. `cuda` where there is none throws: a benchmark never silently runs on the CPU. */
export function resolveBackend(request: BackendRequest = 'auto', options: ResolveOptions = {}): NativeBackend {
  const log = options.log ?? (() => {});
  const tuned = (backend: NativeBackend) => {
    if (options.tuning) backend.tune(options.tuning);
    return backend;
  };
  if (request !== 'auto') return tuned(createBackend(request));
  const reason = cudaUnavailableReason();
  if (reason === undefined) {
    const backend = createBackend('cuda');
    log(`[duoattn] backend: cuda (${backend.deviceName})`);
    return tuned(backend);
  }
  log(`[duoattn] skipped cuda: ${reason}`);
  const backend = createBackend('cpu');
  log(`[duoattn] backend: cpu (${backend.deviceName})`);
  return tuned(backend);
}

/** The backend tuning the DUO_* environment asks for (profiling, batch invariance, launch and GEMV knobs). */
export function environmentTuning(environment: DuoEnvironment): BackendTuning {
  return {
    profile: environment.cudaProfile,
    chainLaunches: !environment.noPdl,
    batchInvariant: environment.batchInvariant,
    ...(environment.skinnyRowsMax === undefined ? {} : { skinnyRowsMax: environment.skinnyRowsMax }),
    ...(environment.longSplitsFirst === undefined ? {} : { longSplitsFirst: environment.longSplitsFirst }),
    ...(environment.decodeMmaBlocks === undefined ? {} : { decodeMmaBlocks: environment.decodeMmaBlocks }),
    ...(environment.decodeBatchMerge === undefined ? {} : { decodeBatchMerge: environment.decodeBatchMerge }),
    ...(environment.cpuIntegerQ8 === undefined ? {} : { cpuIntegerQ8: environment.cpuIntegerQ8 }),
    ...(environment.gemvMinSlice === undefined ? {} : { gemvMinSlice: environment.gemvMinSlice }),
    ...(environment.gemvWaves === undefined ? {} : { gemvWaveRule: environment.gemvWaves }),
    ...(environment.gemvSplit === undefined ? {} : { gemvPinnedSplits: environment.gemvSplit }),
  };
}
