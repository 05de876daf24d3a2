// duo-bench passkey: passkey retrieval accuracy over a grid of context lengths × depths, with fresh random passkeys
// and haystacks drawn from a (held-out) book, greedy decoding through duoattn's own runtime.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { seededRandom } from '@duoattn/model';
import { integerListOption, integerOption, parseOptions, UsageError } from '../args.js';
import { defaultModelPath } from '../default-model.js';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';
import {
  applyDuoPlan,
  attentionPolicies,
  POLICY_HELP,
  POLICY_OPTIONS,
  policyPlan,
  policySettings,
  sessionPolicy,
} from '../policy-options.js';
import { writeResult } from '../results.js';
import { heatmapSvg, tickLabel } from '../svg.js';

export const passkeyHelp = `duo-bench passkey [--model PATH] [--haystack FILE] [--lengths 2k,4k,8k,16k] [--depths 10]
                  [--trials 20] [--device auto|cpu|cuda] [--weight-dtype auto|f32|bf16] [--seed S] [--out FILE]
                  [--heatmap FILE.svg] [--attention full|streaming|duo …]
  Inserts " The passkey is NNNNN. Remember it. " at evenly spread depths of a haystack of each length, asks
  " What is the passkey? The passkey is " and checks the greedy answer. Default haystack: Pride and Prejudice from
  ../shared (held out of the demo model's training). With streaming heads, trials are also split by whether the
  needle lies inside the recent window of the answer.
${POLICY_HELP}`;

const NEEDLE = (value: string) => ` The passkey is ${value}. Remember it. `;
const QUESTION = ' What is the passkey? The passkey is ';

export async function passkeyCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    haystack: { type: 'string' },
    lengths: { type: 'string' },
    depths: { type: 'string' },
    trials: { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    heatmap: { type: 'string' },
    ...POLICY_OPTIONS,
  });
  const [attention = 'full'] = attentionPolicies(options.attention, ['full']);
  const policy = policySettings(options);
  const lengths = integerListOption('lengths', options.lengths, [2048, 4096, 8192, 16384]);
  const depths = integerOption('depths', options.depths, 10, 1, 100);
  const trials = integerOption('trials', options.trials, 20, 1);
  const seed = integerOption('seed', options.seed, 0);
  const { weightDtype } = modelChoices(options);
  const haystackPath =
    (options.haystack as string | undefined) ??
    resolve(defaultModelPath(), '..', '..', '..', 'shared', 'data', 'gutenberg', '1342.txt');
  if (!existsSync(haystackPath)) throw new UsageError(`--haystack: "${haystackPath}" does not exist`);
  const { model, path } = await loadModel(options);
  const plan = await applyDuoPlan(model, [attention], policy);
  const sessionOptions = sessionPolicy(attention, policy);
  const running = policyPlan(attention, policy, model.config, plan);
  const window = attention === 'full' ? undefined : running.recent;
  const tokenizer = model.tokenizer;
  if (!tokenizer) throw new UsageError(`--model: ${path} has no tokenizer`);
  const haystack = tokenizer.encode(readFileSync(haystackPath, 'utf8'), { addBos: false });
  const random = seededRandom(seed);
  const rows: { length: number; depths: { correct: number; trials: number }[]; [key: string]: unknown }[] = [];
  try {
    for (const length of lengths) {
      let correct = 0;
      const cells: { depth: number; correct: number; trials: number }[] = Array.from({ length: depths }, (_, d) => ({
        depth: (d + 0.5) / depths,
        correct: 0,
        trials: 0,
      }));
      const byWindow = { inside: { correct: 0, trials: 0 }, outside: { correct: 0, trials: 0 } };
      const started = performance.now();
      for (let trial = 0; trial < trials; trial++) {
        const cell = cells[trial % depths] as (typeof cells)[number];
        const value = String(10000 + Math.floor(random() * 90000));
        const needle = tokenizer.encode(NEEDLE(value), { addBos: false });
        const question = tokenizer.encode(QUESTION, { addBos: false });
        const bos = tokenizer.bosTokenId === undefined ? [] : [tokenizer.bosTokenId];
        const room = length - bos.length - needle.length - question.length;
        if (room <= 0 || room > haystack.length)
          throw new UsageError(`--lengths: ${length} does not fit this haystack`);
        const offset = Math.floor(random() * (haystack.length - room));
        const hay = haystack.slice(offset, offset + room);
        const at = Math.floor(cell.depth * room);
        const prompt = [...bos, ...hay.slice(0, at), ...needle, ...hay.slice(at), ...question];
        const ids: number[] = [];
        for await (const token of model.generate(prompt, {
          ...sessionOptions,
          maxTokens: value.length + 1,
          stopTokens: [],
        }))
          ids.push(token.id);
        const answer = tokenizer.decode(ids);
        const ok = answer.startsWith(value);
        correct += ok ? 1 : 0;
        cell.correct += ok ? 1 : 0;
        cell.trials++;
        // Inside: the whole needle is still in the window when the last answer token is chosen.
        const needleStart = bos.length + at;
        const side =
          window !== undefined && prompt.length + value.length - needleStart <= window ? 'inside' : 'outside';
        byWindow[side].trials++;
        byWindow[side].correct += ok ? 1 : 0;
        if (process.stderr.isTTY)
          process.stderr.write(`\r[duo-bench] passkey ${length}: ${trial + 1}/${trials}, ${correct} correct`);
      }
      if (process.stderr.isTTY) process.stderr.write('\n');
      const accuracy = correct / trials;
      rows.push({
        length,
        trials,
        correct,
        accuracy,
        seconds: (performance.now() - started) / 1000,
        depths: cells,
        ...(window === undefined ? {} : { window: byWindow }),
      });
      const split =
        window === undefined
          ? ''
          : `; needle inside the ${window}-token window ${byWindow.inside.correct}/${byWindow.inside.trials}, outside ${byWindow.outside.correct}/${byWindow.outside.trials}`;
      log(`passkey @${length} (${attention}): ${(accuracy * 100).toFixed(1)} % (${correct}/${trials})${split}`);
    }
  } finally {
    model.dispose();
  }
  const settings = {
    model: path,
    haystack: haystackPath,
    attention,
    ...(attention === 'full' ? {} : { sink: running.sink, recent: running.recent }),
    ...(plan
      ? {
          headPlan: {
            sparsity: plan.sparsity,
            pattern: policy.pattern ?? 'even split',
            retrievalHeads: plan.retrievalHeads,
          },
        }
      : {}),
    prefillChunk: policy.prefillChunk,
    prefillMask: policy.prefillMask,
    depths,
    trials,
    seed,
    weightDtype: weightDtype,
    needle: NEEDLE('NNNNN'),
    question: QUESTION,
    decoding: 'greedy, passkey length + 1 tokens, correct when the answer starts with the passkey',
  };
  const figures = { passkey: rows };
  if (options.heatmap) {
    writeFileSync(
      String(options.heatmap),
      heatmapSvg({
        title: `Passkey accuracy (%), ${attention}${plan ? ` at sparsity ${plan.sparsity}` : ''}`,
        rowLabel: 'needle depth',
        columnLabel: 'context (tokens)',
        rows: Array.from({ length: depths }, (_, d) => `${Math.round(((d + 0.5) / depths) * 100)} %`),
        columns: rows.map((row) => tickLabel(row.length)),
        values: Array.from({ length: depths }, (_, d) =>
          rows.map((row) => {
            const cell = row.depths[d];
            return cell && cell.trials > 0 ? cell.correct / cell.trials : Number.NaN;
          }),
        ),
      }),
    );
    log(`wrote ${String(options.heatmap)}`);
  }
  return options.out
    ? writeResult(String(options.out), model.backend.deviceName, settings, figures)
    : { settings, ...figures };
}
