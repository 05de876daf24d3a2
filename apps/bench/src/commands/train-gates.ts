// duo-bench train-gates: learns one DuoAttention gate per KV head on synthetic multi-passkey data, with a progress
// line, checkpoints (--resume), loss and gate plots, and the pattern written in the reference format and ours.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  checkContext,
  choiceOption,
  integerListOption,
  integerOption,
  namedShape,
  numberOption,
  outputOption,
  parseOptions,
  RANDOM_WEIGHTS_SEED,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import {
  exportPattern,
  fittingPasskeys,
  freezeModel,
  modelHash,
  PASSKEY_FORMATS,
  PasskeyData,
  type PasskeyFormat,
  type StepReport,
  trainGates,
} from '@duoattn/gate-trainer';
import { LlamaModel } from '@duoattn/model';
import { readTexts, sharedBooks, textFiles } from '../default-model.js';
import { encodeInPieces } from '../encode.js';
import { gateHistoryFigure, trainingFigure } from '../gate-plots.js';
import { benchBackend, loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';
import { trainingProgress } from '../progress.js';
import { checkSamplesFit, contextMaxFor, sampleOverhead } from '../training-contexts.js';
import { measureStepTimes } from './step-times.js';

export const trainGatesHelp = `duo-bench train-gates [--model DIR | --shape NAME] [--haystack PATH] [--out DIR] [--steps 2000]
                  [--lr 0.02] [--reg 0.05] [--sink 128] [--recent 256] [--ctx-min 1000] [--ctx-max 32000 or the context]
                  [--format reference|magic-number] [--passkeys P] [--words W] [--seed 42] [--device auto|cpu|cuda]
                  [--weight-dtype …] [--full-term teacher|student] [--checkpoint-every 10] [--resume] [--stop-after N]
                  [--haystack-chars 2000000] [--measure-steps 1000,8750,16500,32000]
  Trains one gate per KV head (DuoAttention): teacher = full attention, student = (1 − α)·streaming + α·full per KV
  head; loss = MSE of the final normed hidden states on the answer tokens + reg·mean|α|; AdamW with the reference's
  warm-up/decay schedule, gates clamped to [0, 1]. --full-term teacher (default, the reference code): the full term
  is the teacher's attention output, a constant; student (the paper's wording): the student's own, differentiated
  (several times slower). Data: P passkeys hidden at sorted random depths of the haystack (a text file or a directory
  of .txt files; default the Gutenberg books in ../shared, first --haystack-chars characters), then every question
  with its answer. --format reference: W NATO words "to the vault" (default 10 × 32, fewer where the needles would
  fill more than a third of --ctx-min); magic-number: keyed facts " The magic number of KEY is DIGITS. " with W
  digits, for models that cannot do the reference's task (the demo model) — a model must solve the task for its
  retrieval heads to show. Writes into --out (default ./gate-training): full_attention_heads.tsv + config.json (the
  reference's format), pattern.json (ours, with provenance), checkpoint.json, history.json, training.svg (loss,
  distillation, mean gate) and gates.png (every gate over the steps, one row per gate). Ctrl-C stops after the
  current step, saves the checkpoint and the pattern so far and exits with status 130, as --stop-after N stops (N steps
  in all, e.g. to split a run across time-limited sessions) with status 0; --resume continues exactly. With --model,
  the samples must fit the model's context: --ctx-max defaults to 32000 or the context if shorter, and more is
  refused before any work. --shape NAME trains random weights (bytes as
  tokens) for timing; --measure-steps times one step at each length instead of training and projects a schedule
  of --steps steps over linspace(ctx-min, ctx-max, 50).`;

export async function trainGatesCommand(
  argv: string[],
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<object> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    shape: { type: 'string' },
    haystack: { type: 'string' },
    out: { type: 'string' },
    steps: { type: 'string' },
    lr: { type: 'string' },
    reg: { type: 'string' },
    sink: { type: 'string' },
    recent: { type: 'string' },
    'ctx-min': { type: 'string' },
    'ctx-max': { type: 'string' },
    passkeys: { type: 'string' },
    words: { type: 'string' },
    seed: { type: 'string' },
    'checkpoint-every': { type: 'string' },
    resume: { type: 'boolean' },
    'measure-steps': { type: 'string' },
    'haystack-chars': { type: 'string' },
    'full-term': { type: 'string' },
    format: { type: 'string' },
    'stop-after': { type: 'string' },
  });
  const steps = integerOption('steps', options.steps, 2000, 1);
  const learningRate = numberOption('lr', options.lr, 0.02, 1e-12);
  const regularization = numberOption('reg', options.reg, 0.05, 0);
  const window = {
    sink: integerOption('sink', options.sink, 128, 0),
    recent: integerOption('recent', options.recent, 256, 1),
  };
  const formatName = choiceOption('format', options.format, ['reference', 'magic-number'] as const, 'reference');
  const format = PASSKEY_FORMATS[formatName] as PasskeyFormat;
  const fullTerm = choiceOption('full-term', options['full-term'], ['teacher', 'student'] as const, 'teacher');
  const contextMin = integerOption('ctx-min', options['ctx-min'], 1000, 1);
  const askedMax = options['ctx-max'] === undefined ? undefined : integerOption('ctx-max', options['ctx-max'], 0, 1);
  const seed = integerOption('seed', options.seed, 42, 0);
  const stopAfter =
    options['stop-after'] === undefined ? undefined : integerOption('stop-after', options['stop-after'], 1, 1);
  const checkpointEvery = integerOption('checkpoint-every', options['checkpoint-every'], 10, 1);
  const measureLengths =
    options['measure-steps'] === undefined
      ? undefined
      : integerListOption('measure-steps', options['measure-steps'], []);
  const haystackChars = integerOption('haystack-chars', options['haystack-chars'], 2_000_000, 1000);
  const out = resolve(outputOption('out', options.out, 'directory') ?? 'gate-training');
  const haystackPath = resolve((options.haystack as string | undefined) ?? sharedBooks());
  textFiles('haystack', haystackPath);
  modelChoices(options);

  const { model, label, hash } = await trainingModel(options);
  const frozen = freezeModel(model);
  try {
    // Random weights (--shape) are for timing and take any length; a real model's samples must fit its context.
    const context = options.shape === undefined ? model.config.maxPositionEmbeddings : undefined;
    if (context !== undefined)
      checkContext('ctx-min', options['ctx-min'], contextMin, context, `samples of at least ${contextMin} tokens`);
    const tokenizer = model.tokenizer ?? byteTokenizer();
    log(`[train-gates] ${label} on ${model.backend.deviceName}; tokenizing ${haystackPath}`);
    const haystack = encodeInPieces(tokenizer, readTexts('haystack', haystackPath).slice(0, haystackChars));
    // Default: the reference's 10 × 32 words where the needles fit a third of the shortest context, else fewer.
    const fitting = fittingPasskeys(tokenizer, contextMin, format);
    const passkeys = integerOption('passkeys', options.passkeys, fitting.passkeys, 1);
    const words = integerOption('words', options.words, fitting.words, 1);
    const unit = formatName === 'reference' ? 'words' : 'digits';
    const overhead = sampleOverhead({ tokenizer, passkeys, words, format });
    const contextMax = contextMaxFor(askedMax, contextMin, context, overhead);
    log(
      `[train-gates] ${passkeys} ${formatName} passkeys of ${words} ${unit} per sample, contexts ${contextMin}–${contextMax}`,
    );
    const data = new PasskeyData({
      haystack,
      tokenizer,
      contextMin,
      contextMax,
      passkeys,
      wordsPerPasskey: words,
      seed,
      format,
    });
    if (context !== undefined && !measureLengths) {
      checkSamplesFit('ctx-max', contextMax, context, contextMax, overhead, function* () {
        for (let step = 0; step < steps; step++) yield data.sample(step);
      });
    }
    const provenance = {
      model: label,
      modelHash: hash,
      device: model.backend.deviceName,
      data: {
        haystack: haystackPath,
        haystackChars,
        haystackTokens: haystack.length,
        format: formatName,
        passkeys,
        wordsPerPasskey: words,
        contextMin,
        contextMax,
        seed,
      },
      window,
      fullTerm,
    };
    if (measureLengths) {
      const sampleAt = (length: number) =>
        new PasskeyData({
          haystack,
          tokenizer,
          contextMin: length,
          contextMax: length,
          passkeys,
          wordsPerPasskey: words,
          seed,
          format,
        }).sample(0);
      if (context !== undefined) {
        checkSamplesFit('measure-steps', options['measure-steps'], context, Math.max(...measureLengths), overhead, () =>
          measureLengths.map(sampleAt),
        );
      }
      return await measureStepTimes(frozen, sampleAt, measureLengths, {
        contextMin,
        contextMax,
        steps,
        window,
        fullTerm,
        out,
        provenance,
        log,
      });
    }
    mkdirSync(out, { recursive: true });
    const progress = trainingProgress(steps);
    const started = performance.now();
    // Ctrl-C (the CLI aborts `signal`): finish the step in flight, save the checkpoint, write the pattern so far.
    const result = await trainGates({
      model: frozen,
      data,
      steps,
      learningRate,
      regularization,
      window,
      fullTerm,
      checkpointPath: join(out, 'checkpoint.json'),
      checkpointEvery,
      resume: Boolean(options.resume),
      stopAfter,
      signal,
      onStep: (report: StepReport) => progress(report),
    });
    const seconds = (performance.now() - started) / 1000;
    const pattern = exportPattern(out, {
      gates: result.gates,
      layers: model.config.numLayers,
      kvHeads: model.config.numKvHeads,
      sink: window.sink,
      recent: window.recent,
      modelId: label,
      provenance: {
        ...provenance,
        steps: result.stepsDone,
        settings: result.settings,
        trainer: 'duoattn gate-trainer',
      },
    });
    const { reports, gates } = result.history;
    await writeFigure(join(out, 'training.svg'), trainingFigure(reports));
    await writeFigure(join(out, 'gates.png'), gateHistoryFigure(gates, model.config.numKvHeads));
    const figures = {
      stepsDone: result.stepsDone,
      finished: result.finished,
      secondsThisRun: seconds,
      secondsPerStep: reports.reduce((sum, report) => sum + report.seconds, 0) / Math.max(reports.length, 1),
      finalLoss: reports.at(-1)?.loss,
      finalDistillation: reports.at(-1)?.distillation,
      meanGate: reports.at(-1)?.meanGate,
      gates: pattern.gates,
      reports,
    };
    const document = writeResult(
      join(out, 'history.json'),
      model.backend.deviceName,
      { ...provenance, steps, learningRate, regularization },
      figures,
    );
    log(
      result.finished
        ? `[train-gates] ${result.stepsDone}/${steps} steps in ${seconds.toFixed(1)} s; pattern in ${out} (full_attention_heads.tsv, pattern.json)`
        : `[train-gates] stopped after ${result.stepsDone}/${steps} steps (${seconds.toFixed(1)} s); the pattern so far is in ${out}, --resume continues`,
    );
    return document;
  } finally {
    frozen.dispose();
    model.dispose();
  }
}

/** --shape (random bf16 weights) or --model (default: the demo model), with the hash that goes into the provenance. */
async function trainingModel(
  options: Record<string, unknown>,
): Promise<{ model: LlamaModel; label: string; hash: string }> {
  if (options.shape !== undefined) {
    const name = String(options.shape);
    const { device } = modelChoices(options);
    const model = LlamaModel.random(namedShape(name), {
      device: benchBackend(device),
      dtype: 'bf16',
      seed: RANDOM_WEIGHTS_SEED,
    });
    return { model, label: `${name} (random bf16 weights, seed 1)`, hash: `random:${name}:1` };
  }
  const { model, path } = await loadModel(options);
  return { model, label: path, hash: modelHash(path) };
}

/** Bytes as tokens, for shapes without a tokenizer (timing runs on random weights). */
function byteTokenizer(): {
  encode(text: string, options?: { addBos?: boolean }): number[];
  bosTokenId: number | undefined;
} {
  return { encode: (text) => Array.from(new TextEncoder().encode(text)), bosTokenId: undefined };
}
