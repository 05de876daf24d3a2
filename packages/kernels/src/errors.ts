// Maps errors thrown by the addon (plain Errors with a `code`) onto the typed error classes of @duoattn/core.
import {
  DuoArgumentError,
  DuoBackendUnavailableError,
  DuoCudaError,
  DuoDisposedError,
  DuoError,
  DuoNcclError,
  DuoOutOfMemoryError,
} from '@duoattn/core';

/** Returns the typed error for a native error, keeping the original as `cause`. */
export function mapNativeError(error: unknown): unknown {
  if (DuoError.isInstance(error) || !(error instanceof Error)) return error;
  const code = (error as Error & { code?: string }).code;
  const options = { cause: error };
  if (code === 'DUO_ARG') return new DuoArgumentError('native', error.message, options);
  if (code === 'DUO_OOM') return new DuoOutOfMemoryError(error.message, options);
  if (code === 'DUO_DISPOSED') return new DuoDisposedError(error.message, options);
  if (code === 'DUO_NO_BACKEND') return new DuoBackendUnavailableError(error.message, [error.message], options);
  if (code?.startsWith('DUO_CUDA_')) return new DuoCudaError(code as `DUO_CUDA_${string}`, error.message, options);
  if (code?.startsWith('DUO_NCCL_')) return new DuoNcclError(code as `DUO_NCCL_${string}`, error.message, options);
  if (code === 'DUO_NATIVE') return new DuoError('DUO_NATIVE', error.message, options);
  return error;
}

/** Calls `body`, rethrowing native errors as typed ones. */
export function callNative<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw mapNativeError(error);
  }
}
