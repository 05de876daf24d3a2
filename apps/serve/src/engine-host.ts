// What the server needs of an engine: the batch engine in a worker thread (duo-serve's default) or in this thread (the
// tests, and a CUDA engine whose steps are device work anyway), or a parallel group's engine, behind one interface.
import type { BatchEngineStats, BatchRequest, BatchStream, EngineWorker } from '@duoattn/model';

export interface ServeEngine {
  submit(request: BatchRequest): BatchStream;
  stats(): Promise<BatchEngineStats>;
  close(): Promise<void>;
  /** Why the engine stopped, once a step failed; then every request is refused. */
  readonly failure: unknown;
  /** The device it runs on, e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", when known (/v1/stats reports it). */
  readonly deviceName?: string;
}

/** What an engine in this thread offers: the batch engine's, or a parallel group's (`GroupEngine`). */
export interface LocalEngine {
  submit(request: BatchRequest): BatchStream;
  stats(): BatchEngineStats;
  close(): Promise<void>;
  readonly failure: unknown;
}

/** An engine running in this thread (`deviceName`: its model's `backend.deviceName`, for /v1/stats). */
export function inThread(engine: LocalEngine, deviceName?: string): ServeEngine {
  return {
    ...(deviceName === undefined ? {} : { deviceName }),
    submit: (request) => engine.submit(request),
    stats: async () => engine.stats(),
    close: () => engine.close(),
    get failure() {
      return engine.failure;
    },
  };
}

/** A batch engine in a worker thread (`startEngineWorker`). */
export function inWorker(worker: EngineWorker): ServeEngine {
  return {
    deviceName: worker.info.deviceName,
    submit: (request) => worker.submit(request),
    stats: () => worker.stats(),
    close: () => worker.close(),
    get failure() {
      return worker.failure;
    },
  };
}
