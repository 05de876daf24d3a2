// The retrieval protocols of duo-bench (passkey, niah): a needle hidden at evenly spread depths of a haystack of each
// length, a question after it, the greedy answer scored — through duoattn's own runtime, under one attention policy.
import { readFileSync } from 'node:fs';
import {
  attentionPolicies,
  buildPolicy,
  duoPlanFor,
  type FigureSpec,
  figurePath,
  heatmap,
  integerListOption,
  integerOption,
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
import { heldOutText } from '../default-model.js';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';

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
  /** Tokens to generate for `expected`. */
  maxTokens(expected: string): number;
  /** The answer's score in [0, 1]. */
  score(answer: string, expected: string): number;
  /** What the JSON records of the protocol. */
  settings: Record<string, string>;
}

const round = (value: number) => Math.round(value * 100) / 100;

/** Runs `protocol` over lengths × depths for one policy: JSON (and a heatmap) of the mean score per cell. */
export async function runRetrieval(
  protocol: RetrievalProtocol,
  argv: string[],
  log: (line: string) => void,
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
  const lengths = integerListOption('lengths', options.lengths, [2048, 4096, 8192, 16384]);
  const depths = integerOption('depths', options.depths, 10, 1, 100);
  const trials = integerOption('trials', options.trials, 20, 1);
  const seed = integerOption('seed', options.seed, 0);
  // --heatmap FILE[,FILE…]: each .svg or .png, checked before the run.
  const heatmaps = options.heatmap
    ? String(options.heatmap)
        .split(',')
        .map((file) => figurePath('heatmap', file))
    : [];
  const { weightDtype } = modelChoices(options);
  const haystackPath = heldOutText('haystack', options.haystack);
  const { model, path } = await loadModel(options);
  const plan = duoPlanFor([attention], chosen, model.config);
  const policy = buildPolicy(attention, chosen, model.config, plan);
  const running = policyPlan(model.config, policy);
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
        const { needle: needleText, expected } = protocol.trial(random);
        const needle = tokenizer.encode(needleText, { addBos: false });
        const question = tokenizer.encode(protocol.question, { addBos: false });
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
        if (process.stderr.isTTY)
          process.stderr.write(
            `\r[duo-bench] ${protocol.name} ${length}: ${trial + 1}/${trials}, score ${correct.toFixed(1)}`,
          );
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
  return options.out
    ? writeResult(String(options.out), model.backend.deviceName, settings, figures)
    : { settings, ...figures };
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
