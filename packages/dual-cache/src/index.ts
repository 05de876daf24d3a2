// Public surface of @duoattn/dual-cache: head patterns, plans, the dual KV cache, the page pool, the prefix cache and
// the memory planner.
export {
  type BinarizeOptions,
  checkPlan,
  evenPlan,
  invertPlan,
  planHeads,
  uniformPlan,
} from './binarize.js';
export {
  type CacheLayer,
  type DualCacheBytes,
  DualKvCache,
  type DualKvCacheOptions,
  dualCacheBytes,
  fullRegionPages,
  kvPageTokens,
  type PrefixSource,
  pageTokens,
  prefixKey,
  streamingSlots,
} from './dual-kv-cache.js';
export { KvPagePool, type KvPoolUsage, type KvRegion } from './page-pool.js';
export {
  formatGateTable,
  GATE_TOLERANCE,
  loadPattern,
  PATTERN_FORMAT,
  parseGateTable,
  patternFromJson,
  patternToJson,
  REFERENCE_CONFIG_FILE,
  REFERENCE_GATES_FILE,
  readReferencePattern,
  savePattern,
  writeReferencePattern,
} from './pattern-io.js';
export {
  type MemoryPlan,
  type MemoryPlanInput,
  maxContext,
  planMemory,
  sessionScratchBytes,
  weightBytes,
} from './planner.js';
export { policyPlan } from './policy-plan.js';
export {
  CachedPrefix,
  PrefixCache,
  type PrefixCacheStats,
  type PrefixMatch,
} from './prefix-cache.js';
export { type RingGeometry, SharedPages, type StreamingPlanes, StreamingSnapshot } from './shared-pages.js';
