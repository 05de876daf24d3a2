// Public surface of @duoattn/core: types and errors only, no runtime dependencies.
export type {
  AttentionAttributes,
  AttentionBackwardAttributes,
  Backend,
  BackendMemory,
  DecodeAttentionAttributes,
  GateMixAttributes,
  HostArray,
  PrefillAttentionAttributes,
  QuantizedKv,
  RopeAttributes,
  StreamingHeads,
  TensorHandle,
} from './backend.js';
export {
  type DeviceKind,
  DTYPES,
  type DType,
  dtypeBytes,
  INT4_GROUP,
  isDType,
  KV_QUANT_SCHEMES,
  type KvQuantScheme,
  kvQuantLayout,
} from './dtype.js';
export {
  DuoArgumentError,
  DuoBackendUnavailableError,
  DuoCheckpointError,
  DuoCudaError,
  DuoDisposedError,
  DuoError,
  type DuoErrorCode,
  DuoOutOfMemoryError,
  DuoTokenizerError,
} from './errors.js';
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
  DEFAULT_CACHE_BLOCK_TOKENS,
  DEFAULT_MAX_NEW_TOKENS,
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_RECENT,
  DEFAULT_SESSION_TOKENS,
  DEFAULT_SINK,
  DEFAULT_SPARSITY,
} from './defaults.js';
export {
  type AttentionPolicy,
  type DuoAttentionPolicy,
  FULL_ATTENTION,
  type FullAttentionPolicy,
  type StreamingAttentionPolicy,
} from './policy.js';
export { SHAPES } from './shapes.js';
