// duo-bench accs: the ACCS analysis (how much long-range context the hidden states encode) for each attention policy,
// on a book or on synthetic sequences whose compressibility is a dial; JSON, CSV and SVG figures with bootstrap
// intervals.
import { readFileSync } from 'node:fs';
import { type AccsAnalysis, analyzeAccs, expectPerturbation, PERTURBATIONS, syntheticDocuments } from '@duoattn/accs';
import {
  attentionPolicies,
  buildPolicy,
  checkContext,
  type FigurePanel,
  type FigureSpec,
  integerOption,
  lineChart,
  numberOption,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  type PolicySettings,
  parseOptions,
  policySettings,
  runLabel,
  UsageError,
  writeFigure,
  writeResult,
  writeText,
} from '@duoattn/app-kit';
import { type AttentionPolicyName, DEFAULT_SPARSITY } from '@duoattn/core';
import type { LlamaModel } from '@duoattn/model';
import { heldOutText, textFiles } from '../default-model.js';
import { encodeInPieces } from '../encode.js';
import { loadModel, MODEL_OPTIONS } from '../model-options.js';
import { runProgress } from '../progress.js';

export const accsHelp = `duo-bench accs [--model PATH] [--data FILE|DIR|synthetic] [--prefix 4k] [--suffix 512] [--gap 0]
               [--perturb shuffle|random|document|truncate] [--samples 100] [--resamples 1000] [--seed S]
               [--attention full,duo,streaming] [--sparsity 0.5,0.75] [--period 64] [--noise 0,0.1,0.5,1]
               [--no-collapse] [--device …] [--out FILE.json] [--csv FILE.csv] [--plots PREFIX[.png]]
  For each policy (duo once per --sparsity), runs --samples documents as BOS ⊕ prefix ⊕ gap ⊕ suffix and again with
  the prefix perturbed, and compares the hidden states at the suffix (every layer; 0 is the embedding output):
  self-similarity, anisotropy (exact grouped estimator), ACCS = SelfSim − A and (SelfSim − A)/(1 − A), per layer and
  per distance from the prefix, with bootstrap intervals over documents; per document the prefix's LZMA ratio and
  the entropy and KL (to uniform, to the unigram prior) of the next-token distributions at the suffix. --data: a text
  file or a directory of them (cut into windows; default Pride and Prejudice from ../shared), or "synthetic": a random
  segment of --period tokens repeated with each --noise rate (one data set per rate: compressibility as a dial).
  --plots PREFIX writes PREFIX-layers.svg, PREFIX-distance.svg and PREFIX-compressibility.svg (PREFIX.png: the same
  three as PNG). A progress line per document (with an ETA) goes to stderr; Ctrl-C stops at the next document with
  exit status 130 and writes nothing.
${POLICY_HELP}`;

interface AccsRun {
  readonly label: string;
  readonly attention: AttentionPolicyName;
  readonly sparsity?: number;
  readonly data: string;
  readonly noise?: number;
  /** Wall time of the analysis (both runs of every document, the bootstrap, the compressibility). */
  readonly seconds: number;
  readonly analysis: AccsAnalysis;
}

/** Number lists like "0.5,0.75". */
function numberList(name: string, value: unknown, fallback: number[], min: number, max: number): number[] {
  if (value === undefined) return fallback;
  return String(value)
    .split(',')
    .map((item) => numberOption(name, item.trim(), 0, min, max));
}

/** Text files of --data, as token windows of `length` (one per document, non-overlapping, in file order). */
function textDocuments(model: LlamaModel, path: string, length: number, samples: number): number[][] {
  const tokenizer = model.tokenizer;
  if (!tokenizer) throw new UsageError('--model: this model has no tokenizer; use --data synthetic');
  const files = textFiles('data', path);
  const documents: number[][] = [];
  for (const file of files) {
    const ids = encodeInPieces(tokenizer, readFileSync(file, 'utf8'), (samples - documents.length) * length);
    for (let start = 0; start + length <= ids.length && documents.length < samples; start += length) {
      documents.push(ids.slice(start, start + length));
    }
    if (documents.length >= samples) break;
  }
  if (documents.length < 2) {
    throw new UsageError(
      `--data: "${path}" holds ${documents.length} window(s) of ${length} tokens; ACCS needs at least 2`,
    );
  }
  return documents;
}

export async function accsCommand(argv: string[], log: (line: string) => void, signal?: AbortSignal): Promise<object> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    ...POLICY_OPTIONS,
    data: { type: 'string' },
    prefix: { type: 'string' },
    suffix: { type: 'string' },
    gap: { type: 'string' },
    perturb: { type: 'string' },
    samples: { type: 'string' },
    resamples: { type: 'string' },
    seed: { type: 'string' },
    period: { type: 'string' },
    noise: { type: 'string' },
    'no-collapse': { type: 'boolean' },
    out: { type: 'string' },
    csv: { type: 'string' },
    plots: { type: 'string' },
  });
  const prefix = integerOption('prefix', options.prefix, 4096, 1);
  const suffix = integerOption('suffix', options.suffix, 512, 1);
  const gap = integerOption('gap', options.gap, 0, 0);
  const samples = integerOption('samples', options.samples, 100, 2);
  const resamples = integerOption('resamples', options.resamples, 1000, 1);
  const seed = integerOption('seed', options.seed, 0);
  const period = integerOption('period', options.period, 64, 1);
  let perturbation: ReturnType<typeof expectPerturbation>;
  try {
    perturbation = expectPerturbation(options.perturb ?? 'shuffle');
  } catch {
    throw new UsageError(
      `--perturb: expected one of ${PERTURBATIONS.join(', ')} but received "${String(options.perturb)}"`,
    );
  }
  const policies = attentionPolicies(options.attention, ['full', 'duo', 'streaming'], true);
  const sparsities = numberList('sparsity', options.sparsity, [0.5, 0.75], 0, 1);
  const noises = numberList('noise', options.noise, [0, 0.1, 0.5, 1], 0, 1);
  // --sparsity is a list here (one duo run each), read above.
  const settings = policySettings({ ...options, sparsity: undefined }, policies);
  const out = outputOption('out', options.out);
  const csv = outputOption('csv', options.csv);
  const plots = options.plots === undefined ? undefined : plotFiles(String(options.plots));
  const synthetic = options.data === 'synthetic';
  const dataPath = synthetic ? 'synthetic' : heldOutText('data', options.data);
  const { model, path } = await loadModel(options);
  const card = model.backend.deviceName;
  const runs: AccsRun[] = [];
  try {
    const config = model.config;
    const length = prefix + gap + suffix;
    checkContext(
      'prefix',
      options.prefix,
      length + 1,
      config.maxPositionEmbeddings,
      `${prefix} + --gap ${gap} + --suffix ${suffix} + BOS make ${length + 1} tokens`,
    );
    const special = new Set([...(config.bosTokenId === undefined ? [] : [config.bosTokenId]), ...config.eosTokenIds]);
    const dataSets = synthetic
      ? noises.map((noise) => ({
          label: `synthetic P=${period} noise ${noise}`,
          noise,
          documents: syntheticDocuments({
            documents: samples,
            length,
            period,
            noise,
            vocabSize: config.vocabSize,
            special,
            seed,
          }),
        }))
      : [{ label: dataPath, noise: undefined, documents: textDocuments(model, dataPath, length, samples) }];
    // Every policy; duo once per sparsity, each run with its own policy (the model is shared, never changed).
    const variants = policies.flatMap((attention): { attention: AttentionPolicyName; sparsity?: number }[] =>
      attention === 'duo' ? sparsities.map((sparsity) => ({ attention, sparsity })) : [{ attention }],
    );
    const total = variants.length * dataSets.reduce((sum, set) => sum + set.documents.length, 0);
    let done = 0;
    const progress = runProgress('accs');
    for (const { attention, sparsity } of variants) {
      const runSettings: PolicySettings = { ...settings, ...(sparsity === undefined ? {} : { sparsity }) };
      const policy = buildPolicy(attention, runSettings, config);
      const policyLabel = runLabel(
        attention === 'duo' ? `duo ${Math.round((1 - (sparsity ?? DEFAULT_SPARSITY)) * 100)} %` : attention,
        runSettings.kvQuant,
      );
      for (const set of dataSets) {
        const label = dataSets.length > 1 ? `${policyLabel}, ${set.label}` : policyLabel;
        const runStarted = performance.now();
        const analysis = await analyzeAccs(model, {
          documents: set.documents,
          prefix,
          gap,
          suffix,
          perturbation,
          session: { policy },
          resamples,
          seed,
          collapse: !options['no-collapse'],
          decode: synthetic ? undefined : (tokens) => model.tokenizer?.decode(tokens) ?? '',
          signal,
          // Two runs of every document (clean and perturbed): the work in tokens.
          onDocument: (document, documents) => {
            done++;
            progress(2 * (length + 1) * done, 2 * (length + 1) * total, `${label}: document ${document}/${documents}`);
          },
        });
        const seconds = (performance.now() - runStarted) / 1000;
        runs.push({ label, attention, sparsity, data: set.label, noise: set.noise, seconds, analysis });
        const last = analysis.layers.at(-1);
        const lowest = [...analysis.layers].sort((a, b) => a.accs.value - b.accs.value)[0];
        log(
          `${label} (${seconds.toFixed(1)} s): ACCS at the last layer ${last?.accs.value.toFixed(4)} [${last?.accs.interval.map((v) => v.toFixed(4)).join(', ')}], lowest ${lowest?.accs.value.toFixed(4)} at layer ${lowest?.layer}`,
        );
      }
    }
  } finally {
    model.dispose();
  }
  if (csv) {
    writeText(csv, accsCsv(runs));
    log(`wrote ${csv}`);
  }
  const runSettings = {
    model: path,
    data: dataPath,
    ...(synthetic ? { period, noises } : {}),
    prefix,
    gap,
    suffix,
    perturbation,
    samples,
    resamples,
    seed,
    policies,
    sparsities,
    sink: settings.window.sink,
    recent: settings.window.recent,
    pattern: settings.pattern,
    kvQuant: settings.kvQuant,
    prefillChunk: settings.prefillChunk,
    estimators:
      'SelfSim: mean cosine at matching suffix positions; anisotropy: exact grouped estimator over the clean runs (float64); intervals: 2.5–97.5 % bootstrap over documents',
  };
  const figures = { runs };
  // The record first: a figure that cannot be drawn must not cost the measurements.
  const result = out ? writeResult(out, card, runSettings, figures) : { card, settings: runSettings, ...figures };
  if (plots) {
    const drawn = accsFigures(runs);
    for (const [name, file] of Object.entries(plots)) {
      await writeFigure(file, drawn[name] as FigureSpec);
      log(`wrote ${file}`);
    }
  }
  return result;
}

/** --plots PREFIX[.svg|.png]: the file of each figure, checked before the run. */
function plotFiles(plots: string): Record<'layers' | 'distance' | 'compressibility', string> {
  const [, prefix, extension = '.svg'] = /^(.*?)(\.png|\.svg)?$/i.exec(plots) ?? [];
  const file = (name: string) => outputOption('plots', `${prefix}-${name}${extension.toLowerCase()}`) as string;
  return { layers: file('layers'), distance: file('distance'), compressibility: file('compressibility') };
}

/** One row per run and layer, then per run, layer and distance bin. */
export function accsCsv(runs: readonly AccsRun[]): string {
  const lines = [
    'run,kind,layer,from,to,pairs,selfSim,selfSimLow,selfSimHigh,anisotropy,anisotropyLow,anisotropyHigh,accs,accsLow,accsHigh,normalizedAccs,normalizedLow,normalizedHigh',
  ];
  const quote = (text: string) => `"${text.replace(/"/g, '""')}"`;
  for (const run of runs) {
    for (const row of run.analysis.layers) {
      lines.push(
        [
          quote(run.label),
          'layer',
          row.layer,
          '',
          '',
          '',
          ...[row.selfSimilarity, row.anisotropy, row.accs, row.normalizedAccs].flatMap((e) => [
            e.value,
            e.interval[0],
            e.interval[1],
          ]),
        ].join(','),
      );
    }
    for (const bin of run.analysis.bins) {
      lines.push(
        [
          quote(run.label),
          'distance',
          bin.layer,
          bin.from,
          Number.isFinite(bin.to) ? bin.to : '',
          bin.pairs,
          bin.selfSimilarity.value,
          bin.selfSimilarity.interval[0],
          bin.selfSimilarity.interval[1],
          '',
          '',
          '',
          bin.accs.value,
          bin.accs.interval[0],
          bin.accs.interval[1],
          '',
          '',
          '',
        ].join(','),
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The three figures: by layer; by distance (one panel per run, three to a row); against compressibility. */
export function accsFigures(runs: readonly AccsRun[]): Record<string, FigureSpec> {
  const byLayer = (
    title: string,
    pick: (row: AccsAnalysis['layers'][number]) => { value: number; interval: readonly [number, number] },
  ): FigurePanel => ({
    title,
    xTitle: 'layer (0 = embeddings)',
    yTitle: title,
    yZero: false,
    series: runs.map((run) => ({
      label: run.label,
      points: run.analysis.layers.map((row) => {
        const estimate = pick(row);
        return { x: row.layer, y: estimate.value, low: estimate.interval[0], high: estimate.interval[1] };
      }),
    })),
  });
  const layerCount = runs[0]?.analysis.layers.length ?? 0;
  const shown = [...new Set([1, Math.floor(layerCount / 2), layerCount - 1])].filter((layer) => layer >= 0);
  const distance: FigurePanel[] = runs.map((run) => ({
    title: run.label,
    xTitle: 'tokens from the prefix (bin start + 1)',
    yTitle: 'ACCS',
    xScale: 'log2',
    series: shown.map((layer) => ({
      label: `layer ${layer}`,
      points: run.analysis.bins
        .filter((bin) => bin.layer === layer)
        .map((bin) => ({ x: bin.from + 1, y: bin.accs.value, low: bin.accs.interval[0], high: bin.accs.interval[1] })),
    })),
  }));
  const meanRatio = (run: AccsRun) => {
    const ratios = run.analysis.perDocument.map((d) => d.compressibility.tokens).filter(Number.isFinite);
    return ratios.reduce((a, b) => a + b, 0) / Math.max(ratios.length, 1);
  };
  const policies = [...new Set(runs.map((run) => run.label.split(',')[0] as string))];
  const compressibility: FigurePanel[] = [
    {
      title: 'Anisotropy vs compressibility (last layer)',
      xTitle: 'LZMA ratio of the prefix ids',
      yTitle: 'anisotropy',
      yZero: false,
      series: policies.map((policy) => ({
        label: policy,
        points: runs
          .filter((run) => run.label.split(',')[0] === policy)
          .map((run) => {
            const last = run.analysis.layers.at(-1);
            return {
              x: meanRatio(run),
              y: last?.anisotropy.value ?? Number.NaN,
              low: last?.anisotropy.interval[0],
              high: last?.anisotropy.interval[1],
            };
          })
          .sort((a, b) => a.x - b.x),
      })),
    },
    ...(['entropy', 'klUniform', 'klUnigram'] as const).map((field) => ({
      title: { entropy: 'Entropy', klUniform: 'KL to uniform', klUnigram: 'KL to the unigram prior' }[field],
      xTitle: 'LZMA ratio of the prefix ids',
      yTitle: `${field === 'entropy' ? 'entropy' : 'KL'} (nats), clean run`,
      yZero: false,
      series: policies.map((policy) => ({
        label: policy,
        line: false,
        points: runs
          .filter((run) => run.label.split(',')[0] === policy)
          .flatMap((run) =>
            run.analysis.perDocument.map((d) => ({
              x: d.compressibility.tokens,
              y: d.collapse?.clean[field] ?? Number.NaN,
            })),
          ),
      })),
    })),
  ];
  return {
    layers: lineChart({
      panels: [
        byLayer('Self-similarity', (row) => row.selfSimilarity),
        byLayer('Anisotropy', (row) => row.anisotropy),
        byLayer('ACCS', (row) => row.accs),
      ],
    }),
    distance: lineChart({
      title: 'ACCS by distance from the prefix',
      panels: distance,
      panelWidth: 300,
      panelHeight: 180,
    }),
    compressibility: lineChart({ panels: compressibility, columns: 2 }),
  };
}
