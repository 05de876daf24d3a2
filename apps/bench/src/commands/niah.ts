// duo-bench niah: the reference's needle-in-a-haystack evaluation (METHOD.md) — the San Francisco needle at evenly
// spread depths of a haystack of each length, up to 50 greedy tokens, scored by ROUGE-1 F against the needle's fact.
import { POLICY_HELP } from '@duoattn/app-kit';
import { GRID_HELP, type RetrievalProtocol, runRetrieval } from './retrieval.js';

export const niahHelp = `duo-bench niah [--model PATH] [--haystack FILE|DIR] [--lengths 2k,4k,8k,16k] [--depths 10] [--trials 20]
               [--device auto|cpu|cuda] [--weight-dtype auto|f32|bf16] [--seed S] [--out FILE]
               [--heatmap FILE.svg,FILE.png] [--attention full|streaming|duo …]
  Hides "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day." in the
  haystack, asks what the best thing to do in San Francisco is, decodes up to 50 tokens greedily and scores the answer
  by ROUGE-1 F (unigram overlap) against the needle's fact; the heatmap shows the mean score by depth × length.
${GRID_HELP}
${POLICY_HELP}`;

const FACT = 'eat a sandwich and sit in Dolores Park on a sunny day.';

/** ROUGE-1 F: the harmonic mean of unigram precision and recall (lower-cased words, punctuation dropped). */
export function rouge1F(candidate: string, reference: string): number {
  const words = (text: string) => text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
  const counts = (list: string[]) =>
    list.reduce((map, w) => map.set(w, (map.get(w) ?? 0) + 1), new Map<string, number>());
  const a = counts(words(candidate));
  const b = counts(words(reference));
  let overlap = 0;
  for (const [word, count] of a) overlap += Math.min(count, b.get(word) ?? 0);
  const total = (map: Map<string, number>) => [...map.values()].reduce((sum, n) => sum + n, 0);
  if (overlap === 0) return 0;
  const precision = overlap / total(a);
  const recall = overlap / total(b);
  return (2 * precision * recall) / (precision + recall);
}

export const NIAH: RetrievalProtocol = {
  name: 'niah',
  title: 'NIAH score (ROUGE-1 F, %)',
  scoreTitle: 'ROUGE-1 F (%)',
  trial: () => ({ needle: ` The best thing to do in San Francisco is ${FACT} `, expected: FACT }),
  question: ' What is the best thing to do in San Francisco? The best thing to do in San Francisco is',
  maxTokens: () => 50,
  // The answer is cut at its first sentence end, so text generated after the fact does not dilute it.
  score: (answer, expected) => rouge1F(answer.split(/(?<=[.!?])\s/)[0] ?? '', expected),
  settings: {
    needle: ` The best thing to do in San Francisco is ${FACT} `,
    question: ' What is the best thing to do in San Francisco? The best thing to do in San Francisco is',
    decoding: 'greedy, up to 50 tokens; score = ROUGE-1 F of the first sentence against the fact',
  },
};

export function niahCommand(argv: string[], log: (line: string) => void, signal?: AbortSignal): Promise<object> {
  return runRetrieval(NIAH, argv, log, signal);
}
