// Public surface of @duoattn/app-kit: what duoattn's apps share — command-line options and usage errors, the attention
// policy options and the policy they build, named model shapes, result records and their writer, figures (SVG or PNG).
export {
  checkContext,
  choiceOption,
  integerListOption,
  integerOption,
  numberOption,
  type OptionSpec,
  outputOption,
  parseOptions,
} from './command-options.js';
export { FIGURE_EXTENSIONS, figurePath, svgToPng, toPng, toSvg, writeFigure } from './figure-files.js';
export {
  type ChartOptions,
  type FigurePanel,
  type FigurePoint,
  type FigureSeries,
  type FigureSpec,
  type HeatmapOptions,
  heatmap,
  lineChart,
  scatter,
  tokenCountLabel,
  wrapTitle,
} from './figures.js';
export { FIGURE_FONT, textWidthEm } from './font-metrics.js';
export { namedShape, RANDOM_WEIGHT_DTYPES, RANDOM_WEIGHTS_SEED, randomModelLabel } from './model-shapes.js';
export {
  attentionPolicies,
  buildPolicy,
  describePolicy,
  duoPlan,
  duoPlanFor,
  kvQuantList,
  type PlanSource,
  POLICY_HELP,
  POLICY_OPTIONS,
  type PolicySettings,
  policySettings,
  runLabel,
} from './policy-options.js';
export { currentCommit, type ResultRecord, resultRecord, writeResult, writeText } from './result-records.js';
export { type DecodeTiming, decodeLatency, type GreedyDecoder, median, quantile } from './statistics.js';
export { UsageError, type UsageErrorDetails } from './usage-error.js';
