// duo-bench passkey: passkey retrieval accuracy over a grid of context lengths × depths, with fresh random passkeys
// and haystacks drawn from a (held-out) book, greedy decoding through duoattn's own runtime.
import { POLICY_HELP } from '@duoattn/app-kit';
import { GRID_HELP, type RetrievalProtocol, runRetrieval } from './retrieval.js';

export const passkeyHelp = `duo-bench passkey [--model PATH] [--haystack FILE|DIR] [--lengths 2k,4k,8k,16k] [--depths 10]
                  [--trials 20] [--device auto|cpu|cuda] [--weight-dtype auto|f32|bf16] [--seed S] [--out FILE]
                  [--heatmap FILE.svg,FILE.png] [--attention full|streaming|duo …]
  Inserts " The passkey is NNNNN. Remember it. " at evenly spread depths of a haystack of each length, asks
  " What is the passkey? The passkey is " and checks the greedy answer. Default haystack: Pride and Prejudice from
  ../shared (held out of the demo model's training). With streaming heads, trials are also split by whether the
  needle lies inside the recent window of the answer.
${GRID_HELP}
${POLICY_HELP}`;

const NEEDLE = (value: string) => ` The passkey is ${value}. Remember it. `;

export const PASSKEY: RetrievalProtocol = {
  name: 'passkey',
  title: 'Passkey accuracy (%)',
  scoreTitle: 'accuracy (%)',
  trial: (random) => {
    const value = String(10000 + Math.floor(random() * 90000));
    return { needle: NEEDLE(value), expected: value };
  },
  question: ' What is the passkey? The passkey is ',
  maxTokens: (expected) => expected.length + 1,
  score: (answer, expected) => (answer.startsWith(expected) ? 1 : 0),
  settings: {
    needle: NEEDLE('NNNNN'),
    question: ' What is the passkey? The passkey is ',
    decoding: 'greedy, passkey length + 1 tokens, correct when the answer starts with the passkey',
  },
};

export function passkeyCommand(argv: string[], log: (line: string) => void, signal?: AbortSignal): Promise<object> {
  return runRetrieval(PASSKEY, argv, log, signal);
}
