// UsageError: bad input from a user (a command-line option, later a request's policy field), as opposed to a failure.

const marker = Symbol.for('duoattn.usage-error');

/** What a usage error is about, for callers that report it in their own shape (an HTTP 400's `param`). */
export interface UsageErrorDetails {
  /** The option's name without dashes, e.g. `sparsity`. */
  readonly option?: string;
  /** The value received, as the user wrote it. */
  readonly received?: string;
  /** What was expected, e.g. `a number in [0, 1]`. */
  readonly expected?: string;
}

/**
 * Bad user input. The message names the option, the value and what was expected; a CLI prints it and exits with
 * status 2. `UsageError.isInstance` recognises errors from another copy of this package too.
 */
export class UsageError extends Error {
  readonly option: string | undefined;
  readonly received: string | undefined;
  readonly expected: string | undefined;

  constructor(message: string, details: UsageErrorDetails = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsageError';
    this.option = details.option;
    this.received = details.received;
    this.expected = details.expected;
    Object.defineProperty(this, marker, { value: true });
  }

  /** `--option: expected … but received "value"`. */
  static invalid(option: string, expected: string, value: unknown): UsageError {
    const received = String(value);
    return new UsageError(`--${option}: expected ${expected} but received "${received}"`, {
      option,
      received,
      expected,
    });
  }

  /** True for any UsageError, even one created by another copy of this package. */
  static isInstance(error: unknown): error is UsageError {
    return typeof error === 'object' && error !== null && marker in error;
  }
}
