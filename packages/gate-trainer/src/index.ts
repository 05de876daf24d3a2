// Public surface of @duoattn/gate-trainer: retrieval-head identification by optimizing one gate per KV head.
export {
  fittingPasskeys,
  linspace,
  longestNeedleTokens,
  MAGIC_NUMBER_FORMAT,
  NATO_ALPHABET,
  needleText,
  ORDINALS,
  PASSKEY_FORMATS,
  PasskeyData,
  type PasskeyDataOptions,
  type PasskeyFormat,
  type PasskeySample,
  questionText,
  REFERENCE_FORMAT,
  readHaystack,
} from './dataset.js';
export { exportPattern, modelHash, type TrainedGates } from './export.js';
export {
  type FrozenModel,
  type FullTerm,
  freezeModel,
  type GateGradients,
  type GateLossOptions,
  gateGradients,
  type StreamingWindow,
} from './gate-gradients.js';
export {
  GateOptimizer,
  type GateOptimizerSettings,
  type GateOptimizerState,
  REFERENCE_OPTIMIZER,
} from './optimizer.js';
export { learningRateMultiplier } from './schedule.js';
export {
  type GateTrainingSettings,
  type StepReport,
  type TrainGatesOptions,
  type TrainGatesResult,
  type TrainingHistory,
  trainGates,
} from './trainer.js';
