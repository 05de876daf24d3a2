// duo-bench: the command-line entry point.
import { UsageError } from '@duoattn/app-kit';
import { DuoError } from '@duoattn/core';
import { accsCommand, accsHelp } from './commands/accs.js';
import { chartCommand, chartHelp } from './commands/chart.js';
import { efficiencyCommand, efficiencyHelp } from './commands/efficiency.js';
import { gemmCommand, gemmHelp } from './commands/gemm.js';
import { generateCommand, generateHelp } from './commands/generate.js';
import { kernelsCommand, kernelsHelp } from './commands/kernels.js';
import { niahCommand, niahHelp } from './commands/niah.js';
import { passkeyCommand, passkeyHelp } from './commands/passkey.js';
import { perplexityCommand, perplexityHelp } from './commands/perplexity.js';
import { planCommand, planHelp } from './commands/plan.js';
import { speedCommand, speedHelp } from './commands/speed.js';
import { trainGatesCommand, trainGatesHelp } from './commands/train-gates.js';

const commands: Record<string, { help: string; run: (argv: string[]) => Promise<unknown> }> = {
  generate: { help: generateHelp, run: (argv) => generateCommand(argv, (text) => process.stdout.write(text)) },
  efficiency: { help: efficiencyHelp, run: (argv) => efficiencyCommand(argv, (line) => console.log(line)) },
  plan: { help: planHelp, run: (argv) => planCommand(argv, (line) => console.log(line)) },
  chart: { help: chartHelp, run: (argv) => chartCommand(argv, (line) => console.log(line)) },
  gemm: { help: gemmHelp, run: (argv) => gemmCommand(argv, (line) => console.log(line)) },
  kernels: { help: kernelsHelp, run: (argv) => kernelsCommand(argv, (line) => console.log(line)) },
  passkey: { help: passkeyHelp, run: (argv) => passkeyCommand(argv, (line) => console.log(line)) },
  niah: { help: niahHelp, run: (argv) => niahCommand(argv, (line) => console.log(line)) },
  accs: { help: accsHelp, run: (argv) => accsCommand(argv, (line) => console.log(line)) },
  perplexity: { help: perplexityHelp, run: (argv) => perplexityCommand(argv, (line) => console.log(line)) },
  speed: { help: speedHelp, run: (argv) => speedCommand(argv, (line) => console.log(line)) },
  'train-gates': { help: trainGatesHelp, run: (argv) => trainGatesCommand(argv, (line) => console.log(line)) },
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
  try {
    await command.run(rest);
    return 0;
  } catch (error) {
    if (UsageError.isInstance(error)) {
      process.stderr.write(`duo-bench ${name}: ${error.message}\n`);
      return 2;
    }
    if (DuoError.isInstance(error)) {
      process.stderr.write(`duo-bench ${name}: ${error.message} [${error.code}]\n`);
      return 1;
    }
    throw error;
  }
}

process.exitCode = await main(process.argv.slice(2));
