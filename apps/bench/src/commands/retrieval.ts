// The retrieval protocols of duo-bench (passkey, niah): a needle hidden at evenly spread depths of a haystack of each
// length, a question after it, the greedy answer scored — through duoattn's own runtime, under one attention policy.
import {
  attentionPolicies,
  buildPolicy,
  checkContext,
  duoPlanFor,
  type FigureSpec,
  figurePath,
  heatmap,
  integerListOption,
  integerOption,
  outputOption,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  runLabel,
  tokenCountLabel,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import { policyPlan } from '@duoattn/dual-cache';
import { seededRandom } from '@duoattn/model';
import { heldOutText, readTexts } from '../default-model.js';
import { interruptionPoint } from '../interrupt.js';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';
import { runProgress } from '../progress.js';

/** What a retrieval benchmark hides, asks and counts as right. */
export interface RetrievalProtocol {
  /** The command and the JSON key of its rows. */
  name: 'passkey' | 'niah';
  /** The heatmap's title. */
  title: string;
  /** The heatmap's legend: what its cells show, e.g. "accuracy (%)". */
  scoreTitle: string;
  /** One trial's needle text and the answer it expects. */
  trial(random: () => number): { needle: string; expected: string };
  /** The text after the haystack; the model continues it. */
  question: string;
  /** Tokens to generate for `expected` (the same for every trial: a length counts them). */
  maxTokens(expected: string): number;
  /** The answer's score in [0, 1]. */
  score(answer: string, expected: string): number;
  /** What the JSON records of the protocol. */
  settings: Record<string, string>;
}

const round = (value: number) => Math.round(value * 100) / 100;

/** The default grid: 2K, 4K, 8K and 16K tokens, those the model's context holds (or the context alone). */
export function defaultLengths(context: number): number[] {
  const lengths = [2048, 4096, 8192, 16384].filter((length) => length <= context);
  return lengths.length > 0 ? lengths : [context];
}

/** What passkey and niah say of their grid in --help. */
export const GRID_HELP = `  A length counts every position the model attends over (prompt and answer), so it may be the model's whole context
  and no more; the lengths are checked against the context and the haystack before any trial runs. Default lengths:
  2k,4k,8k,16k, those the context holds. --haystack: a text file or a directory of .txt files. A progress line per trial
  (with an ETA) goes to stderr; Ctrl-C stops at the next trial with exit status 130 and writes nothing.`;

/** What a length counts: every position the model attends over, so a length equal to the model's context fits. */
export const LENGTH_COUNTS = 'prompt + answer tokens: BOS, haystack, needle, question and the tokens generated';

/**
 * Runs `protocol` over lengths × depths for one policy: JSON (and a heatmap) of the mean score per cell, a progress
 * line per trial; the lengths are checked against the model's context and the haystack before any trial runs, and an
 * aborted `signal` (Ctrl-C) stops the run at the next trial.
 */
export async function runRetrieval(
  protocol: RetrievalProtocol,
  argv: string[],
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<object> {
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
  const chosen = policySettings(options, [attention]);
  const askedLengths = options.lengths === undefined ? undefined : integerListOption('lengths', options.lengths, []);
  const depths = integerOption('depths', options.depths, 10, 1, 100);
  const trials = integerOption('trials', options.trials, 20, 1);
  const seed = integerOption('seed', options.seed, 0);
  // --out and --heatmap FILE[,FILE…] (each .svg or .png) are checked before the run.
  const out = outputOption('out', options.out);
  const heatmaps = options.heatmap
    ? String(options.heatmap)
        .split(',')
        .map((file) => outputOption('heatmap', figurePath('heatmap', file)) as string)
    : [];
  const { weightDtype } = modelChoices(options);
  const haystackPath = heldOutText('haystack', options.haystack);
  const { model, path } = await loadModel(options);
  const context = model.config.maxPositionEmbeddings;
  const lengths = askedLengths ?? defaultLengths(context);
  for (const length of lengths) checkContext('lengths', options.lengths, length, context, `${length} tokens`);
  const plan = duoPlanFor([attention], chosen, model.config);
  const policy = buildPolicy(attention, chosen, model.config, plan);
  const running = policyPlan(model.config, policy);
  const window = attention === 'full' ? undefined : running.recent;
  const rows: { length: number; depths: { correct: number; trials: number }[]; [key: string]: unknown }[] = [];
  try {
    const tokenizer = model.tokenizer;
    if (!tokenizer) throw new UsageError(`--model: ${path} has no tokenizer`);
    const haystack = tokenizer.encode(readTexts('haystack', haystackPath), { addBos: false });
    const bos = tokenizer.bosTokenId === undefined ? [] : [tokenizer.bosTokenId];
    const question = tokenizer.encode(protocol.question, { addBos: false });
    const sample = protocol.trial(() => 0);
    const answer = protocol.maxTokens(sample.expected);
    const fixed = bos.length + tokenizer.encode(sample.needle, { addBos: false }).length + question.length + answer;
    for (const length of lengths) {
      if (length <= fixed)
        throw new UsageError(
          `--lengths: ${length} tokens leave no room for a haystack beside the needle, question and answer (${fixed} tokens)`,
        );
      if (length - fixed > haystack.length)
        throw new UsageError(
          `--haystack: "${haystackPath}" holds ${haystack.length} tokens but --lengths ${length} needs ${length - fixed}`,
        );
    }
    const random = seededRandom(seed);
    const progress = runProgress(protocol.name);
    const work = lengths.reduce((sum, length) => sum + length, 0) * trials;
    let done = 0;
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
        await interruptionPoint(signal, `length ${length}, trial ${trial + 1}/${trials}`);
        const cell = cells[trial % depths] as (typeof cells)[number];
        const { needle: needleText, expected } = protocol.trial(random);
        const needle = tokenizer.encode(needleText, { addBos: false });
        // The answer's tokens count in the length, so the whole sequence fits the model's context.
        const room = length - bos.length - needle.length - question.length - protocol.maxTokens(expected);
        if (room <= 0 || room > haystack.length)
          throw new UsageError(`--lengths: ${length} does not fit this haystack`);
        const offset = Math.floor(random() * (haystack.length - room));
        const hay = haystack.slice(offset, offset + room);
        const at = Math.floor(cell.depth * room);
        const prompt = [...bos, ...hay.slice(0, at), ...needle, ...hay.slice(at), ...question];
        const ids: number[] = [];
        for await (const token of model.generate(prompt, {
          policy,
          maxTokens: protocol.maxTokens(expected),
          stopTokens: [],
        }))
          ids.push(token.id);
        const score = protocol.score(tokenizer.decode(ids), expected);
        correct += score;
        cell.correct += score;
        cell.trials++;
        // Inside: the whole needle is still in the window when the last answer token is chosen (the answer counted
        // as at most maxTokens − 1 tokens: for passkeys, their digits).
        const needleStart = bos.length + at;
        const answered = Math.min(ids.length, protocol.maxTokens(expected) - 1);
        const side = window !== undefined && prompt.length + answered - needleStart <= window ? 'inside' : 'outside';
        byWindow[side].trials++;
        byWindow[side].correct += score;
        done += length;
        progress(done, work, `@${length} trial ${trial + 1}/${trials}, score ${round(correct)}/${trial + 1}`);
      }
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
          : `; needle inside the ${window}-token window ${round(byWindow.inside.correct)}/${byWindow.inside.trials}, outside ${round(byWindow.outside.correct)}/${byWindow.outside.trials}`;
      log(
        `${protocol.name} @${length} (${runLabel(attention, chosen.kvQuant)}): ${(accuracy * 100).toFixed(1)} % (${round(correct)}/${trials})${split}`,
      );
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
            pattern: chosen.pattern ?? 'even split',
            inverted: chosen.invert,
            retrievalHeads: plan.retrievalHeads,
          },
        }
      : {}),
    prefillChunk: chosen.prefillChunk,
    prefillMask: chosen.prefillMask,
    kvQuant: chosen.kvQuant,
    lengthCounts: LENGTH_COUNTS,
    depths,
    trials,
    seed,
    weightDtype: weightDtype,
    ...protocol.settings,
  };
  const figures = { [protocol.name]: rows };
  if (heatmaps.length > 0) {
    const run = `${runLabel(attention, chosen.kvQuant)}${plan ? `${chosen.invert ? ' (inverted pattern)' : ''} at sparsity ${plan.sparsity}` : ''}`;
    const figure = retrievalHeatmap(protocol, run, rows);
    for (const file of heatmaps) {
      await writeFigure(file, figure);
      log(`wrote ${file}`);
    }
  }
  return out ? writeResult(out, model.backend.deviceName, settings, figures) : { settings, ...figures };
}

/** One length of a retrieval result: its cells in depth order (as the JSON holds them). */
interface RetrievalRow {
  length: number;
  depths: readonly { correct: number; trials: number }[];
}

/**
 * The heatmap of a retrieval run (`run` names the policy): the mean score in % per needle depth (rows, nearest the
 * start on top) and context length (columns); grey where a cell had no trial.
 */
export function retrievalHeatmap(
  protocol: Pick<RetrievalProtocol, 'title' | 'scoreTitle'>,
  run: string,
  rows: readonly RetrievalRow[],
): FigureSpec {
  const depths = Math.max(0, ...rows.map((row) => row.depths.length));
  return heatmap({
    title: `${protocol.title}, ${run}`,
    xTitle: 'context (tokens)',
    yTitle: 'needle depth',
    columns: rows.map((row) => tokenCountLabel(row.length)),
    rows: Array.from({ length: depths }, (_, d) => `${Math.round(((d + 0.5) / depths) * 100)} %`),
    values: Array.from({ length: depths }, (_, d) =>
      rows.map((row) => {
        const cell = row.depths[d];
        return cell && cell.trials > 0 ? (100 * cell.correct) / cell.trials : Number.NaN;
      }),
    ),
    domain: [0, 100],
    legendTitle: protocol.scoreTitle,
  });
}
