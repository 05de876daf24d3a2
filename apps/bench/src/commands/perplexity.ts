// duo-bench perplexity: next-token perplexity of a (held-out) book over long windows, for each attention policy and KV
// quantization scheme in one run, with each quantized run's change against the same policy unquantized.
import {
  attentionPolicies,
  buildPolicy,
  checkContext,
  duoPlanFor,
  integerOption,
  kvQuantList,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  runLabel,
  UsageError,
  writeResult,
} from '@duoattn/app-kit';
import type { AttentionPolicy, AttentionPolicyName, KvQuantScheme } from '@duoattn/core';
import type { LlamaModel } from '@duoattn/model';
import { heldOutText, readTexts } from '../default-model.js';
import { interruptionPoint } from '../interrupt.js';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';
import { runProgress } from '../progress.js';

export const perplexityHelp = `duo-bench perplexity [--model PATH] [--text FILE|DIR] [--length 16k] [--windows 2] [--device auto|cpu|cuda]
                     [--weight-dtype auto|f32|bf16] [--attention full,duo] [--kv-quant none,int8,int4] [--out FILE]
  Perplexity of every next token in --windows evenly spaced windows of --length tokens of --text (default: Pride and
  Prejudice from ../shared, held out of the demo model's training), each window a fresh sequence fed in
  --prefill-chunk chunks, for every --attention policy × --kv-quant scheme; quantized runs are reported against the
  same policy unquantized. --length: default 16k or the model's context if shorter; more than the context is refused
  before the text is read. A progress line per window (with an ETA) goes to stderr; Ctrl-C stops at the next prefill
  chunk with exit status 130 and writes nothing.
${POLICY_HELP}`;

interface PerplexityRow {
  policy: AttentionPolicyName;
  kvQuant: KvQuantScheme;
  tokens: number;
  meanNll: number;
  perplexity: number;
  seconds: number;
  /** Quantized runs: perplexity / the same policy's unquantized perplexity − 1. */
  changeVsUnquantized?: number;
}

export async function perplexityCommand(
  argv: string[],
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<object> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    ...POLICY_OPTIONS,
    text: { type: 'string' },
    length: { type: 'string' },
    windows: { type: 'string' },
    out: { type: 'string' },
  });
  const policies = attentionPolicies(options.attention, ['full'], true);
  const quants = kvQuantList(options['kv-quant']);
  const settings = policySettings({ ...options, 'kv-quant': undefined }, policies);
  const askedLength = options.length === undefined ? undefined : integerOption('length', options.length, 0, 2);
  const windows = integerOption('windows', options.windows, 2, 1);
  const out = outputOption('out', options.out);
  const { weightDtype } = modelChoices(options);
  const textPath = heldOutText('text', options.text);
  const { model, path } = await loadModel(options);
  const rows: PerplexityRow[] = [];
  try {
    const context = model.config.maxPositionEmbeddings;
    const length = askedLength ?? Math.min(16384, context);
    checkContext('length', options.length, length, context, `${length} tokens per window`);
    const tokenizer = model.tokenizer;
    if (!tokenizer) throw new UsageError(`--model: ${path} has no tokenizer`);
    const text = tokenizer.encode(readTexts('text', textPath), { addBos: false });
    const bos = tokenizer.bosTokenId === undefined ? [] : [tokenizer.bosTokenId];
    const body = length - bos.length;
    if (body * windows > text.length) {
      throw new UsageError(
        `--length × --windows: ${windows} windows of ${length} tokens need ${body * windows} tokens but "${textPath}" has ${text.length}`,
      );
    }
    // Evenly spaced, non-overlapping windows.
    const stride = Math.floor(text.length / windows);
    const sequences = Array.from({ length: windows }, (_, w) => [...bos, ...text.slice(w * stride, w * stride + body)]);
    const plan = duoPlanFor(policies, settings, model.config);
    const runs = policies.flatMap((policy) => quants.map((kvQuant) => ({ policy, kvQuant })));
    const progress = runProgress('perplexity');
    const work = runs.length * sequences.reduce((sum, sequence) => sum + sequence.length, 0);
    let done = 0;
    for (const [index, { policy, kvQuant }] of runs.entries()) {
      const started = performance.now();
      let nll = 0;
      let count = 0;
      const label = `run ${index + 1}/${runs.length} ${runLabel(policy, kvQuant)}`;
      for (const [w, sequence] of sequences.entries()) {
        const window = await sequenceNll(
          model,
          sequence,
          buildPolicy(policy, { ...settings, kvQuant }, model.config, plan),
          signal,
          `${label}, window ${w + 1}/${windows}`,
        );
        nll += window.nll;
        count += window.count;
        done += sequence.length;
        progress(
          done,
          work,
          `${label}, window ${w + 1}/${windows}, perplexity so far ${Math.exp(nll / count).toFixed(3)}`,
        );
      }
      const row: PerplexityRow = {
        policy,
        kvQuant,
        tokens: count,
        meanNll: nll / count,
        perplexity: Math.exp(nll / count),
        seconds: (performance.now() - started) / 1000,
      };
      rows.push(row);
    }
    for (const row of rows) {
      const plain = rows.find((other) => other.policy === row.policy && other.kvQuant === 'none');
      if (row.kvQuant !== 'none' && plain) row.changeVsUnquantized = row.perplexity / plain.perplexity - 1;
      const change =
        row.changeVsUnquantized === undefined
          ? ''
          : ` (${row.changeVsUnquantized >= 0 ? '+' : ''}${(row.changeVsUnquantized * 100).toFixed(3)} % vs unquantized)`;
      log(
        `perplexity ${runLabel(row.policy, row.kvQuant).padEnd(16)} ${row.perplexity.toFixed(4)} over ${row.tokens} tokens${change}`,
      );
    }
    const runSettings = {
      model: path,
      text: textPath,
      length,
      windows,
      policies,
      kvQuant: quants,
      ...(plan
        ? {
            headPlan: {
              sparsity: plan.sparsity,
              sink: plan.sink,
              recent: plan.recent,
              pattern: settings.pattern ?? 'even split',
            },
          }
        : {}),
      prefillChunk: settings.prefillChunk,
      prefillMask: settings.prefillMask,
      weightDtype,
      scoring:
        'mean negative log-likelihood of every token after the first of each window, natural log; perplexity = exp',
    };
    const figures = { perplexity: rows };
    return out
      ? writeResult(out, model.backend.deviceName, runSettings, figures)
      : { settings: runSettings, ...figures };
  } finally {
    model.dispose();
  }
}

/**
 * Summed negative log-likelihood of tokens 1 … n − 1 of `sequence`, fed one prefill chunk of logits at a time; stops
 * at a chunk's start once `signal` is aborted (`where` names the window).
 */
async function sequenceNll(
  model: LlamaModel,
  sequence: number[],
  policy: AttentionPolicy,
  signal: AbortSignal | undefined,
  where: string,
): Promise<{ nll: number; count: number }> {
  const session = model.createSession({ policy, maxTokens: sequence.length });
  const chunk = session.policy.prefillChunk;
  const vocab = model.config.vocabSize;
  let nll = 0;
  let count = 0;
  try {
    for (let start = 0; start < sequence.length; start += chunk) {
      await interruptionPoint(signal, `${where}, token ${start}`);
      const piece = sequence.slice(start, start + chunk);
      const { logits } = await session.forward(piece, { logits: 'all' });
      const all = logits as Float32Array;
      for (let r = 0; r < piece.length; r++) {
        const next = sequence[start + r + 1];
        if (next === undefined) break;
        const row = all.subarray(r * vocab, (r + 1) * vocab);
        let maximum = Number.NEGATIVE_INFINITY;
        for (const value of row) maximum = Math.max(maximum, value);
        let sum = 0;
        for (const value of row) sum += Math.exp(value - maximum);
        nll += maximum + Math.log(sum) - (row[next] ?? 0);
        count++;
      }
    }
  } finally {
    session.dispose();
  }
  return { nll, count };
}
