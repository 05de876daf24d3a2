// Public surface of @duoattn/core: the spec (types, the Backend interface), errors, defaults and tiny pure helpers; no dependencies.
export type {
  AttentionAttributes,
  AttentionBackwardAttributes,
  Backend,
  BackendMemory,
  BatchAttentionAttributes,
  BatchCacheLayer,
  BatchSpan,
  CacheBatch,
  ContextShard,
  DecodeAttentionAttributes,
  GateMixAttributes,
  HostArray,
  MergeAttentionAttributes,
  PartialAttentionAttributes,
  PrefillAttentionAttributes,
  QuantizedKv,
  RopeAttributes,
  StreamingHeads,
  TensorHandle,
} from './backend.js';
export { type Communicator, heldPositions } from './communicator.js';
export {
  DEFAULT_CACHE_BLOCK_TOKENS,
  DEFAULT_MAX_NEW_TOKENS,
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_RECENT,
  DEFAULT_SESSION_TOKENS,
  DEFAULT_SINK,
  DEFAULT_SPARSITY,
} from './defaults.js';
export {
  bytesPerValue,
  type DeviceKind,
  DTYPES,
  type DType,
  dtypeBytes,
  type ElementDType,
  isBlockDType,
  isDType,
  type KvQuantScheme,
  tensorByteLength,
} from './dtype.js';
export {
  type DuoEnvironment,
  ENVIRONMENT_VARIABLES,
  type EnvironmentVariable,
  type EnvironmentVariableName,
  readEnvironment,
} from './environment.js';
export {
  DuoArgumentError,
  DuoBackendUnavailableError,
  DuoCapacityError,
  DuoCheckpointError,
  DuoCudaError,
  DuoDisposedError,
  DuoError,
  type DuoErrorCode,
  DuoNcclError,
  DuoOutOfMemoryError,
  DuoTokenizerError,
} from './errors.js';
export { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from './half.js';
export {
  type AttentionPolicyName,
  type HeadPattern,
  type HeadPlan,
  type PrefillMask,
  retrievalHeadCount,
} from './head-pattern.js';
export {
  groupSize,
  type ModelConfig,
  type RopeScaling,
  type RopeStyle,
  validateModelConfig,
} from './model-config.js';
export {
  type AttentionPolicy,
  type DuoAttentionPolicy,
  FULL_ATTENTION,
  type FullAttentionPolicy,
  type StreamingAttentionPolicy,
} from './policy.js';
export { randomArray, randomNormal, seededUniform } from './random.js';
export { SHAPES } from './shapes.js';
export {
  dequantizeWeights,
  quantizeWeights,
  storedWeightBytes,
  storedWeightFormat,
  WEIGHT_FORMATS,
  WEIGHT_QUANT_CHOICES,
  type WeightFormat,
  type WeightFormatLayout,
  type WeightQuantChoice,
  weightFormatBytes,
  weightQuantFormat,
} from './weight-formats.js';
