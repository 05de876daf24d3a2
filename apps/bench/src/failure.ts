// How duo-bench reports a failed command: status 2 for bad input, 1 for a failure at run time, 130 after Ctrl-C, and
// an unexpected exception as an internal error to report, in one line (its stack only with DUO_VERBOSE).
import { UsageError } from '@duoattn/app-kit';
import { DuoError } from '@duoattn/core';
import { INTERRUPTED_STATUS, InterruptedError } from './interrupt.js';

/** Where an internal error should be reported. */
export const ISSUES_URL = 'https://github.com/duoattn/duoattn/issues';

const runFailureMarker = Symbol.for('duoattn.bench.run-failure');

/**
 * A failure at run time that the command explains in full (a server that cannot be reached, requests that failed):
 * reported as its message with status 1, not as an internal error.
 */
export class RunFailure extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RunFailure';
    Object.defineProperty(this, runFailureMarker, { value: true });
  }

  /** True for a RunFailure, even from another copy of this module. */
  static isInstance(error: unknown): error is RunFailure {
    return typeof error === 'object' && error !== null && runFailureMarker in error;
  }
}

/** Codes of errors about what the user gave: an argument, a checkpoint or pattern file, a tokenizer file. */
const BAD_INPUT_CODES = new Set(['DUO_ARG', 'DUO_CHECKPOINT', 'DUO_TOKENIZER']);

/** The exit status and the text for stderr of a command that threw `error`. */
export function describeFailure(
  command: string,
  error: unknown,
  verbose: boolean,
): { status: 1 | 2 | typeof INTERRUPTED_STATUS; text: string } {
  const prefix = `duo-bench ${command}:`;
  const stack = verbose && error instanceof Error && error.stack ? `${error.stack}\n` : '';
  if (UsageError.isInstance(error)) return { status: 2, text: `${prefix} ${error.message}\n` };
  if (InterruptedError.isInstance(error)) return { status: INTERRUPTED_STATUS, text: `${prefix} ${error.message}\n` };
  if (DuoError.isInstance(error)) {
    return {
      status: BAD_INPUT_CODES.has(error.code) ? 2 : 1,
      text: `${prefix} ${error.message} [${error.code}]\n${stack}`,
    };
  }
  if (RunFailure.isInstance(error)) return { status: 1, text: `${prefix} ${error.message}\n${stack}` };
  if (isSystemError(error)) return { status: 1, text: `${prefix} ${error.message}\n${stack}` };
  const what = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return {
    status: 1,
    text: `${prefix} internal error (${firstLine(what)}); this is a bug, please report it with the command line at ${ISSUES_URL}${verbose ? '' : ' (DUO_VERBOSE=1 shows where it happened)'}\n${stack}`,
  };
}

/** A failed system call (a file the OS refused, a full disk): a failure at run time, its message says which. */
function isSystemError(error: unknown): error is Error & { code: string; syscall: string } {
  return (
    error instanceof Error &&
    typeof (error as { code?: unknown }).code === 'string' &&
    typeof (error as { syscall?: unknown }).syscall === 'string'
  );
}

function firstLine(text: string): string {
  return text.split('\n', 1)[0] ?? '';
}
