// Ctrl-C in long commands: the CLI turns the first SIGINT into an aborted signal, and a command stops at its next
// interruption point (a trial, a window, a training step) instead of dying mid-write; a second Ctrl-C quits at once.

/** The exit status of an interrupted command: 128 + SIGINT, what a shell reports for a process Ctrl-C killed. */
export const INTERRUPTED_STATUS = 130;

const marker = Symbol.for('duoattn.bench.interrupted');

/** Thrown at an interruption point once Ctrl-C was pressed; the CLI prints its message and exits with status 130. */
export class InterruptedError extends Error {
  constructor(message = 'interrupted by Ctrl-C; nothing was written') {
    super(message);
    this.name = 'InterruptedError';
    Object.defineProperty(this, marker, { value: true });
  }

  /** True for an InterruptedError, even from another copy of this module. */
  static isInstance(error: unknown): error is InterruptedError {
    return typeof error === 'object' && error !== null && marker in error;
  }
}

/**
 * Lets the event loop turn, then throws an InterruptedError naming `where` (e.g. "length 4096, trial 3/20") if `signal`
 * was aborted. The turn matters: CPU work resolves its promises at once, so a loop of awaits alone never lets the
 * SIGINT handler run.
 */
export async function interruptionPoint(signal: AbortSignal | undefined, where: string): Promise<void> {
  if (!signal) return;
  await new Promise((resolve) => setImmediate(resolve));
  if (signal.aborted) throw new InterruptedError(`interrupted by Ctrl-C at ${where}; nothing was written`);
}

/**
 * Handles SIGINT while a command runs: the first aborts the returned signal (its reason an InterruptedError) and says
 * on `stream` that the command stops `when` (e.g. "at the next trial"); a second exits with status 130 at once.
 * `dispose` removes the handler.
 */
export function catchInterrupts(
  command: string,
  when: string,
  stream: NodeJS.WritableStream = process.stderr,
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const handler = () => {
    if (controller.signal.aborted) {
      stream.write(`\nduo-bench ${command}: interrupted again; quitting now\n`);
      process.exit(INTERRUPTED_STATUS);
    }
    stream.write(`\n[duo-bench] Ctrl-C: ${command} stops ${when} (Ctrl-C again quits at once)\n`);
    controller.abort(new InterruptedError());
  };
  process.on('SIGINT', handler);
  return { signal: controller.signal, dispose: () => process.off('SIGINT', handler) };
}
