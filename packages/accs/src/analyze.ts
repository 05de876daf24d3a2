// The ACCS analysis of a model over documents: each document runs as BOS ⊕ prefix ⊕ gap ⊕ suffix and again with the
// prefix perturbed; the hidden states at the suffix positions (every layer, the embedding output as layer 0) are
// compared, and only running sums are kept. Any attention policy works (the session options pass through), so the
// same analysis measures what DuoAttention's streaming heads give up.
import { DuoArgumentError } from '@duoattn/core';
import { type LlamaModel, type SessionOptions, seededRandom } from '@duoattn/model';
import { AccsAccumulator, type AccsEstimates, doublingBins } from './accumulator.js';
import { type CollapseDiagnostics, collapseDiagnostics, unigramPrior } from './collapse.js';
import { type Compressibility, compressibility } from './compress.js';
import { expectPerturbation, type PerturbationName, perturbPrefix } from './perturb.js';

export interface AccsOptions {
  /** Token ids of each document (no BOS: it is added when the model has one); each at least prefix + gap + suffix. */
  readonly documents: readonly (readonly number[])[];
  /** Tokens of the prefix that gets perturbed. */
  readonly prefix: number;
  /** Tokens of the suffix whose states are compared. */
  readonly suffix: number;
  /** Untouched tokens between prefix and suffix (distances then start at `gap`). Default 0. */
  readonly gap?: number;
  /** Default 'shuffle' (the paper's). */
  readonly perturbation?: PerturbationName;
  /** Layers to compare, 0 (embedding output) … numLayers. Default all. */
  readonly layers?: readonly number[];
  /** Lower edges of the distance bins. Default gap, gap + 1, gap + 2, gap + 4, … below gap + suffix. */
  readonly binEdges?: readonly number[];
  /** The attention policy and the rest of the session's options (maxTokens is set here). */
  readonly session?: SessionOptions;
  /** Bootstrap resamples over documents. Default 1000. */
  readonly resamples?: number;
  /** Seeds the perturbations and the bootstrap. Default 0. */
  readonly seed?: number;
  /** Entropy and KL (to uniform, to the corpus unigram prior) of the next-token distribution at suffix positions. */
  readonly collapse?: boolean;
  /** Decodes a prefix for its text compressibility (a tokenizer's decode). */
  readonly decode?: (tokens: readonly number[]) => string;
  readonly onDocument?: (done: number, total: number) => void;
  /** Stops the analysis before the next document once aborted, throwing the signal's reason. */
  readonly signal?: AbortSignal;
}

/** What one document contributes besides the states: its prefix's compressibility and the collapse diagnostics. */
export interface AccsDocument {
  readonly index: number;
  readonly compressibility: Compressibility;
  /** Means over the suffix positions of the clean run, and of the perturbed run. */
  readonly collapse?: { readonly clean: CollapseDiagnostics; readonly perturbed: CollapseDiagnostics };
}

export interface AccsAnalysis extends AccsEstimates {
  readonly perturbation: PerturbationName;
  readonly prefix: number;
  readonly gap: number;
  readonly suffix: number;
  readonly perDocument: readonly AccsDocument[];
}

/** Compressibility per document and prefix length: the same documents analysed under several policies pay once. */
const measured = new WeakMap<readonly number[], Map<number, Compressibility>>();

function prefixCompressibility(
  document: readonly number[],
  prefix: number,
  decode: ((tokens: readonly number[]) => string) | undefined,
): Compressibility {
  const byLength = measured.get(document) ?? new Map<number, Compressibility>();
  measured.set(document, byLength);
  const key = decode ? prefix : -prefix; // with and without text
  const known = byLength.get(key);
  if (known) return known;
  const head = document.slice(0, prefix);
  const value = compressibility(head, decode?.(head));
  byLength.set(key, value);
  return value;
}

function positiveInteger(name: string, value: number, minimum = 1): void {
  if (!Number.isInteger(value) || value < minimum) {
    throw new DuoArgumentError(
      name,
      `Expected \`${name}\` to be an integer ≥ ${minimum} but received ${String(value)}`,
    );
  }
}

/** Logits of `rows` final-layer states: the model's final norm, then its output head (`model.blocks.logits`). */
async function suffixLogits(model: LlamaModel, states: Float32Array, rows: number): Promise<Float32Array> {
  const backend = model.backend;
  const config = model.config;
  const hidden = backend.upload('f32', [rows, config.hiddenSize], states);
  const normed = backend.alloc('f32', [rows, config.hiddenSize]);
  const logits = backend.alloc('f32', [rows, config.vocabSize]);
  try {
    model.blocks.logits(hidden, normed, logits);
    return (await backend.read(logits)) as Float32Array;
  } finally {
    for (const tensor of [hidden, normed, logits]) tensor.dispose();
  }
}

/** Runs the analysis; the model is left as it was (sessions are made and disposed here). */
export async function analyzeAccs(model: LlamaModel, options: AccsOptions): Promise<AccsAnalysis> {
  const { documents, prefix, suffix } = options;
  const gap = options.gap ?? 0;
  positiveInteger('prefix', prefix);
  positiveInteger('suffix', suffix);
  positiveInteger('gap', gap, 0);
  const perturbation = expectPerturbation(options.perturbation ?? 'shuffle');
  const config = model.config;
  const layers = options.layers ?? Array.from({ length: config.numLayers + 1 }, (_, l) => l);
  for (const layer of layers) positiveInteger('layers', layer, 0);
  if (documents.length < 2) {
    throw new DuoArgumentError('documents', `Expected at least 2 documents but received ${documents.length}`);
  }
  const needed = prefix + gap + suffix;
  documents.forEach((document, d) => {
    if (document.length < needed) {
      throw new DuoArgumentError(
        'documents',
        `Expected every document to hold prefix + gap + suffix = ${needed} tokens but document ${d} has ${document.length}`,
      );
    }
  });
  const bos = config.bosTokenId === undefined ? [] : [config.bosTokenId];
  const special = new Set([...bos, ...config.eosTokenIds]);
  const random = seededRandom((options.seed ?? 0) + 1);
  const accumulator = new AccsAccumulator({
    layers,
    dimension: config.hiddenSize,
    binEdges: options.binEdges ?? doublingBins(suffix, gap),
  });
  const prior = options.collapse ? unigramPrior(documents, config.vocabSize) : undefined;
  // The collapse diagnostics need the logits at the suffix only: the last layer's states there (captured anyway, or
  // added to the capture) go through the final norm and the output head, rather than the head running on every row.
  const captureLayers = prior && !layers.includes(config.numLayers) ? [...layers, config.numLayers] : layers;
  const perDocument: AccsDocument[] = [];
  const session = model.createSession({ ...options.session, maxTokens: bos.length + needed });
  try {
    for (const [d, document] of documents.entries()) {
      if (options.signal) {
        // The event loop turns first, so an abort from a handler (a SIGINT's) is seen: CPU work never waits.
        await new Promise((resolve) => setImmediate(resolve));
        options.signal.throwIfAborted();
      }
      const head = document.slice(0, prefix);
      const tail = document.slice(prefix, needed);
      const changed = perturbPrefix(perturbation, head, {
        random,
        vocabSize: config.vocabSize,
        special,
        donor: documents[(d + 1) % documents.length],
      });
      const run = async (prefixTokens: readonly number[]) => {
        const tokens = [...bos, ...prefixTokens, ...tail];
        const first = bos.length + prefixTokens.length + gap;
        const positions = Array.from({ length: suffix }, (_, i) => first + i);
        session.reset();
        // Only the suffix needs the last layer's output: earlier prefill chunks skip its attention and MLP.
        const result = await session.forward(tokens, {
          logits: 'none',
          capture: { layers: captureLayers, positions },
          outputsFrom: first,
        });
        const states = result.captured ?? new Map<number, Float32Array>();
        const last = states.get(config.numLayers);
        // The next-token distributions the model gives at the suffix positions.
        const logits = prior && last ? await suffixLogits(model, last, suffix) : undefined;
        return { states, logits };
      };
      const clean = await run(head);
      const perturbed = await run(changed);
      accumulator.addDocument(
        clean.states,
        perturbed.states,
        Array.from({ length: suffix }, (_, i) => gap + i),
      );
      perDocument.push({
        index: d,
        compressibility: prefixCompressibility(document, prefix, options.decode),
        ...(prior && clean.logits && perturbed.logits
          ? {
              collapse: {
                clean: collapseDiagnostics(clean.logits, config.vocabSize, prior),
                perturbed: collapseDiagnostics(perturbed.logits, config.vocabSize, prior),
              },
            }
          : {}),
      });
      options.onDocument?.(d + 1, documents.length);
    }
  } finally {
    session.dispose();
  }
  const estimates = accumulator.estimates(options.resamples ?? 1000, options.seed ?? 0);
  return { ...estimates, perturbation, prefix, gap, suffix, perDocument };
}
