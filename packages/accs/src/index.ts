// @duoattn/accs: the ACCS analyzer (Sun & Hsieh, arXiv 2410.12292): how much long-range context a model's hidden
// states encode, under any attention policy.
export {
  AccsAccumulator,
  type AccsBin,
  type AccsEstimates,
  type AccsLayer,
  type AccumulatorOptions,
  doublingBins,
  type Estimate,
} from './accumulator.js';
export { type AccsAnalysis, type AccsDocument, type AccsOptions, analyzeAccs } from './analyze.js';
export { type CollapseDiagnostics, collapseDiagnostics, unigramPrior } from './collapse.js';
export { type Compressibility, compressibility, lzmaRatio, tokenBytes } from './compress.js';
export {
  type AnisotropyGroup,
  accsOf,
  anisotropyGroup,
  bootstrapSamples,
  groupedAnisotropy,
  pairwiseAnisotropy,
  percentileInterval,
  rowCosine,
  type StateRows,
} from './estimators.js';
export {
  expectPerturbation,
  PERTURBATIONS,
  type PerturbationContext,
  type PerturbationName,
  perturbPrefix,
} from './perturb.js';
export { type SyntheticOptions, syntheticDocuments } from './synthetic.js';
