// Test helper: runs a parser call that must refuse its input and returns the UsageError it threw.
import { expect } from 'vitest';
import { UsageError } from '../usage-error.js';

/** The UsageError `run` throws; fails the test when it throws something else or nothing. */
export function usageError(run: () => unknown): UsageError {
  try {
    run();
  } catch (error) {
    expect(UsageError.isInstance(error)).toBe(true);
    return error as UsageError;
  }
  throw new Error('expected a UsageError');
}
