// duo-bench: the command-line entry point. Exit status: 0 done, 1 a failure at run time, 2 bad input (options, files),
// 130 stopped by Ctrl-C.
import { readEnvironment } from '@duoattn/core';
import { accsCommand, accsHelp } from './commands/accs.js';
import { attentionCommand, attentionHelp } from './commands/attention.js';
import { batchCommand, batchHelp } from './commands/batch.js';
import { chartCommand, chartHelp } from './commands/chart.js';
import { contextParallelCommand, contextParallelHelp } from './commands/context-parallel.js';
import { efficiencyCommand, efficiencyHelp } from './commands/efficiency.js';
import { gemmCommand, gemmHelp } from './commands/gemm.js';
import { generateCommand, generateHelp } from './commands/generate.js';
import { ggufCommand, ggufHelp } from './commands/gguf.js';
import { kernelsCommand, kernelsHelp } from './commands/kernels.js';
import { niahCommand, niahHelp } from './commands/niah.js';
import { passkeyCommand, passkeyHelp } from './commands/passkey.js';
import { perplexityCommand, perplexityHelp } from './commands/perplexity.js';
import { planCommand, planHelp } from './commands/plan.js';
import { serveLoadCommand, serveLoadHelp } from './commands/serve-load.js';
import { speedCommand, speedHelp } from './commands/speed.js';
import { trainGatesCommand, trainGatesHelp } from './commands/train-gates.js';
import { describeFailure } from './failure.js';
import { catchInterrupts, INTERRUPTED_STATUS } from './interrupt.js';

interface Command {
  help: string;
  /** Long commands: when Ctrl-C stops them (they poll `signal`); the others die on Ctrl-C as usual. */
  stops?: string;
  run: (argv: string[], signal: AbortSignal | undefined) => Promise<unknown>;
}

const log = (line: string) => console.log(line);

const commands: Record<string, Command> = {
  generate: { help: generateHelp, run: (argv) => generateCommand(argv, (text) => process.stdout.write(text)) },
  efficiency: {
    help: efficiencyHelp,
    stops: 'after this measurement',
    run: (argv, signal) => efficiencyCommand(argv, log, signal),
  },
  batch: {
    help: batchHelp,
    stops: 'after this measurement',
    run: (argv, signal) => batchCommand(argv, log, signal),
  },
  'serve-load': {
    help: serveLoadHelp,
    stops: 'after the level in flight',
    run: (argv, signal) => serveLoadCommand(argv, log, signal),
  },
  'context-parallel': { help: contextParallelHelp, run: (argv) => contextParallelCommand(argv, log) },
  plan: { help: planHelp, run: (argv) => planCommand(argv, log) },
  gguf: { help: ggufHelp, run: (argv) => ggufCommand(argv, log) },
  chart: { help: chartHelp, run: (argv) => chartCommand(argv, log) },
  attention: { help: attentionHelp, run: (argv) => attentionCommand(argv, log) },
  gemm: { help: gemmHelp, run: (argv) => gemmCommand(argv, log) },
  kernels: { help: kernelsHelp, run: (argv) => kernelsCommand(argv, log) },
  passkey: { help: passkeyHelp, stops: 'at the next trial', run: (argv, signal) => passkeyCommand(argv, log, signal) },
  niah: { help: niahHelp, stops: 'at the next trial', run: (argv, signal) => niahCommand(argv, log, signal) },
  accs: { help: accsHelp, stops: 'at the next document', run: (argv, signal) => accsCommand(argv, log, signal) },
  perplexity: {
    help: perplexityHelp,
    stops: 'at the next prefill chunk',
    run: (argv, signal) => perplexityCommand(argv, log, signal),
  },
  speed: { help: speedHelp, run: (argv) => speedCommand(argv, log) },
  'train-gates': {
    help: trainGatesHelp,
    stops: 'after this step, saving the checkpoint; --resume continues',
    run: (argv, signal) => trainGatesCommand(argv, log, signal),
  },
};

function usage(): string {
  return `usage: duo-bench <command> [options]\n\n${Object.values(commands)
    .map((command) => command.help)
    .join('\n\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h') {
    process.stdout.write(usage());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`duo-bench: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (rest.includes('--help')) {
    process.stdout.write(`${command.help}\n`);
    return 0;
  }
  const interrupts = command.stops === undefined ? undefined : catchInterrupts(name, command.stops);
  try {
    await command.run(rest, interrupts?.signal);
    // A command that stops by itself on Ctrl-C (train-gates) has written what it did and said so.
    return interrupts?.signal.aborted ? INTERRUPTED_STATUS : 0;
  } catch (error) {
    const failure = describeFailure(name, error, verbose());
    process.stderr.write(failure.text);
    return failure.status;
  } finally {
    interrupts?.dispose();
  }
}

/** DUO_VERBOSE: stacks with failures (false when the environment itself is what failed). */
function verbose(): boolean {
  try {
    return readEnvironment().verbose;
  } catch {
    return false;
  }
}

// Anything that escapes main (a rejection nobody awaited) is an internal error too, reported the same way.
const fail = (error: unknown) => {
  const failure = describeFailure(process.argv[2] ?? '', error, verbose());
  process.stderr.write(failure.text);
  process.exit(failure.status);
};
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
process.exitCode = await main(process.argv.slice(2));
