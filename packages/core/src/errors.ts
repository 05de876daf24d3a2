// Error classes with stable codes; the native layer's codes map onto these (see mapNativeError in kernels).

const marker = Symbol.for('duoattn.error');

/** Stable error codes. `DUO_CUDA_<name>` codes carry the CUDA error's name, `DUO_NCCL_<name>` NCCL's result. */
export type DuoErrorCode =
  | 'DUO_ARG'
  | 'DUO_OOM'
  | 'DUO_DISPOSED'
  | 'DUO_NO_BACKEND'
  | 'DUO_CHECKPOINT'
  | 'DUO_TOKENIZER'
  | 'DUO_NATIVE'
  | 'DUO_NUMERIC'
  | 'DUO_CAPACITY'
  | `DUO_CUDA_${string}`
  | `DUO_NCCL_${string}`;

/** Base class of every duoattn error; `DuoError.isInstance` works across package copies. */
export class DuoError extends Error {
  readonly code: DuoErrorCode;

  constructor(code: DuoErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DuoError';
    this.code = code;
    // A symbol-keyed marker rather than instanceof, so errors from another copy of this package are recognised.
    Object.defineProperty(this, marker, { value: true });
  }

  /** True for any duoattn error, even one created by another copy of this package. */
  static isInstance(error: unknown): error is DuoError {
    return typeof error === 'object' && error !== null && marker in error;
  }
}

/** A bad argument: the message names the argument, the value received and what was expected. */
export class DuoArgumentError extends DuoError {
  readonly argument: string;
  constructor(argument: string, message: string, options?: { cause?: unknown }) {
    super('DUO_ARG', message, options);
    this.name = 'DuoArgumentError';
    this.argument = argument;
  }
}

/** Device or host memory could not be allocated. */
export class DuoOutOfMemoryError extends DuoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DUO_OOM', message, options);
    this.name = 'DuoOutOfMemoryError';
  }
}

/** A tensor was used after `dispose()`. */
export class DuoDisposedError extends DuoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DUO_DISPOSED', message, options);
    this.name = 'DuoDisposedError';
  }
}

/** The requested backend is not available here (no GPU, no CUDA build, no native binary). */
export class DuoBackendUnavailableError extends DuoError {
  readonly reasons: readonly string[];
  constructor(message: string, reasons: readonly string[], options?: { cause?: unknown }) {
    super('DUO_NO_BACKEND', message, options);
    this.name = 'DuoBackendUnavailableError';
    this.reasons = reasons;
  }
}

/** A CUDA runtime or cuBLAS call failed; `code` is `DUO_CUDA_<error name>`. */
export class DuoCudaError extends DuoError {
  constructor(code: `DUO_CUDA_${string}`, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'DuoCudaError';
  }
}

/**
 * An NCCL call failed, or NCCL could not be loaded (`DUO_NCCL_UNAVAILABLE`, with every path tried); otherwise `code` is
 * `DUO_NCCL_<ncclResult_t name>`.
 */
export class DuoNcclError extends DuoError {
  constructor(code: `DUO_NCCL_${string}`, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'DuoNcclError';
  }
}

/** A checkpoint is missing, truncated, corrupt or inconsistent; names the file and the tensor. */
export class DuoCheckpointError extends DuoError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, tensor: string | undefined, message: string, options?: { cause?: unknown }) {
    super('DUO_CHECKPOINT', `${file}${tensor ? ` (tensor ${tensor})` : ''}: ${message}`, options);
    this.name = 'DuoCheckpointError';
    this.file = file;
    this.tensor = tensor;
  }
}

/** A tokenizer file could not be read or a text could not be encoded. */
export class DuoTokenizerError extends DuoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DUO_TOKENIZER', message, options);
    this.name = 'DuoTokenizerError';
  }
}

/**
 * An engine cannot take a request: its queue is full (`retryable`: try again later) or the request needs more KV
 * memory than the engine's whole budget (not retryable). The message has the numbers.
 */
export class DuoCapacityError extends DuoError {
  readonly retryable: boolean;
  constructor(message: string, retryable: boolean, options?: { cause?: unknown }) {
    super('DUO_CAPACITY', message, options);
    this.name = 'DuoCapacityError';
    this.retryable = retryable;
  }
}
