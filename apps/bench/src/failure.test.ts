// How a failed command is reported: exit status by kind of error, one line, the stack only with DUO_VERBOSE.
import { UsageError } from '@duoattn/app-kit';
import { DuoArgumentError, DuoCheckpointError, DuoError, DuoOutOfMemoryError, DuoTokenizerError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { describeFailure, ISSUES_URL, RunFailure } from './failure.js';
import { InterruptedError } from './interrupt.js';

describe('describeFailure', () => {
  it('exits 2 for bad input: options, arguments, checkpoint and tokenizer files', () => {
    for (const error of [
      new UsageError('--lengths: 32768 tokens but …'),
      new DuoArgumentError('maxTokens', 'The prompt …'),
      new DuoCheckpointError('model.safetensors', 'w', 'truncated'),
      new DuoTokenizerError('tokenizer.json: no model'),
    ]) {
      const failure = describeFailure('passkey', error, false);
      expect(failure.status).toBe(2);
      expect(failure.text).toBe(
        `duo-bench passkey: ${error.message}${UsageError.isInstance(error) ? '' : ` [${(error as DuoError).code}]`}\n`,
      );
    }
  });

  it('exits 1 for failures at run time (out of memory, a refused system call), 130 after Ctrl-C', () => {
    expect(describeFailure('speed', new DuoOutOfMemoryError('CPU reservation failed'), false)).toEqual({
      status: 1,
      text: 'duo-bench speed: CPU reservation failed [DUO_OOM]\n',
    });
    const full = Object.assign(new Error("ENOSPC: no space left on device, write '/out/x.json'"), {
      code: 'ENOSPC',
      syscall: 'write',
    });
    expect(describeFailure('plan', full, false)).toEqual({
      status: 1,
      text: "duo-bench plan: ENOSPC: no space left on device, write '/out/x.json'\n",
    });
    expect(
      describeFailure('niah', new InterruptedError('interrupted by Ctrl-C at length 2048, trial 3/20'), false),
    ).toEqual({ status: 130, text: 'duo-bench niah: interrupted by Ctrl-C at length 2048, trial 3/20\n' });
  });

  it('reports an unexpected exception as an internal error in one line, with the stack only when verbose', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'gates')\nsecond line");
    const quiet = describeFailure('train-gates', bug, false);
    expect(quiet.status).toBe(1);
    expect(quiet.text.trimEnd().split('\n')).toHaveLength(1);
    expect(quiet.text).toContain(
      "duo-bench train-gates: internal error (TypeError: Cannot read properties of undefined (reading 'gates'))",
    );
    expect(quiet.text).toContain(ISSUES_URL);
    expect(quiet.text).toContain('DUO_VERBOSE=1');
    expect(quiet.text).not.toMatch(/^ {4}at /m);
    const verbose = describeFailure('train-gates', bug, true);
    expect(verbose.text).toMatch(/^ {4}at /m);
    expect(describeFailure('x', 'a thrown string', false).text).toContain('internal error (a thrown string)');
    expect(describeFailure('x', new DuoError('DUO_NATIVE', 'kernel failed'), true).text).toMatch(/^ {4}at /m);
  });

  it('exits 1 for a run-time failure the command explains (RunFailure), without calling it a bug', () => {
    const error = new RunFailure('cannot reach duo-serve at http://127.0.0.1:8000/ (connect ECONNREFUSED)');
    expect(describeFailure('serve-load', error, false)).toEqual({
      status: 1,
      text: `duo-bench serve-load: ${error.message}\n`,
    });
  });
});
