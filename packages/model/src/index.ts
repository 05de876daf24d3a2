// Public surface of @duoattn/model.
export {
  type AdmissionPolicy,
  BatchEngine,
  type BatchEngineOptions,
  type BatchEngineStats,
  type BatchRequest,
  type BatchResult,
  type BatchStream,
  type BatchToken,
  type BatchUsage,
  defaultKvBudget,
  type FinishReason,
} from './batch/batch-engine.js';
export { type CheckedRequest, checkRequest } from './batch/request.js';
export { applyChatTemplate, type ChatMessage } from './chat-template.js';
export {
  type CacheBytes,
  GroupEngine,
  type GroupEngineOptions,
  type InProcessGroupOptions,
  inProcessGroup,
  type RankGroup,
} from './group/group-engine.js';
export type { GroupRequest, ParallelSplit } from './group/group-rank.js';
export {
  EngineWorker,
  type EngineWorkerInfo,
  type EngineWorkerOptions,
  startEngineWorker,
  type WorkerGroup,
  type WorkerModel,
} from './hosts/engine-worker.js';
export { type ProcessGroupOptions, startProcessGroup } from './hosts/process-group.js';
export { type ForkRanksOptions, forkRanks, type NcclIdMessage, rankRendezvous } from './hosts/rank-launch.js';
export { LlamaBlocks } from './llama-blocks.js';
export {
  type GeneratedToken,
  type GenerateOptions,
  type GenerationStats,
  LlamaModel,
  type LoadModelOptions,
  type ModelRuntimeOptions,
  type RandomModelOptions,
} from './llama-model.js';
export {
  type Checkpoint,
  loadTensor,
  readTensorF32,
  requireTensor,
  type StoredEncoding,
  type StoredTensor,
} from './loaders/checkpoint.js';
export { openGguf } from './loaders/gguf.js';
export {
  encodeGgufTensor,
  fillerVocabulary,
  GGML_TYPE_IDS,
  type GgufMetadataValue,
  type GgufTensorEntry,
  type GgufTensorType,
  ggufBlockValues,
  ggufTensorName,
  ggufValue,
  ggufVocabularyMetadata,
  llamaMetadata,
  type RandomGgufOptions,
  storedType,
  writeGgufFile,
  writeRandomGguf,
} from './loaders/gguf-writer.js';
export { configFromHf, openHf, readSafetensorsHeader } from './loaders/hf.js';
export { type Llama2cOptions, openLlama2c } from './loaders/llama2c.js';
export { EMBEDDING, FINAL_NORM, LM_HEAD, layerNames } from './loaders/names.js';
export { openCheckpoint } from './loaders/open-checkpoint.js';
export { ropeInverseFrequencies } from './rope.js';
export { argmax, checkSampling, type SamplingOptions, sampleToken, seededRandom } from './sampling.js';
export {
  type CaptureRequest,
  type ContextParallelOptions,
  type ForwardOptions,
  type ForwardResult,
  type ResolvedPolicy,
  resolvePolicy,
  Session,
  type SessionOptions,
} from './session.js';
export {
  rankConfig,
  rankPlan,
  type TensorParallelOptions,
  type TensorParallelRank,
} from './tensor-parallel.js';
export { HfTokenizer, type HfTokenizerOptions } from './tokenizers/hf-tokenizer.js';
export { ggufVocabularyTokenizer, loadLlama2cTokenizer, ScoreBpeTokenizer } from './tokenizers/score-bpe.js';
export type { StreamDecoder, Tokenizer } from './tokenizers/tokenizer.js';
export type { WeightDtypeOption } from './weights.js';
