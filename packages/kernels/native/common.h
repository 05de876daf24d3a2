// Shared native types: dtypes, the tensor record, the Device interface both backends implement, errors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#include <cuda_fp16.h>  // f16ToFloat / floatToF16 below use its intrinsics in device code
#endif

#if defined(__CUDACC__)
#define DUO_HD __host__ __device__ inline
#else
#define DUO_HD inline
#endif

namespace duo {

// The dtypes of @duoattn/core; they cross the native boundary by name (dtypeName / dtypeNamed). Q8_0 … Q6_K are GGUF's
// block formats kept quantized (docs/decisions/0010-weight-quantization.md): a row holds whole blocks, and a tensor's
// bytes come by blocks (tensorBytes), not elements.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, U8 = 4, Q8_0 = 5, Q4_K = 6, Q5_K = 7, Q6_K = 8 };

DUO_HD bool isBlockType(DType dtype) { return static_cast<int>(dtype) >= static_cast<int>(DType::Q8_0); }
// Values and bytes of one block (1 and the element size for the other dtypes).
DUO_HD int blockValues(DType dtype) {
  if (!isBlockType(dtype)) return 1;
  return dtype == DType::Q8_0 ? 32 : 256;
}
DUO_HD size_t blockBytes(DType dtype) {
  switch (dtype) {
    case DType::Q8_0: return 34;
    case DType::Q4_K: return 144;
    case DType::Q5_K: return 176;
    case DType::Q6_K: return 210;
    case DType::U8: return 1;
    case DType::F16:
    case DType::BF16: return 2;
    default: return 4;
  }
}
// Bytes per addressable unit: an element, or a byte of a block format (reads and writes of one address bytes).
inline size_t dtypeBytes(DType dtype) { return isBlockType(dtype) ? 1 : blockBytes(dtype); }
// Bytes of `size` values (whole blocks for a block format).
inline size_t tensorBytes(DType dtype, int64_t size) {
  return static_cast<size_t>(size / blockValues(dtype)) * blockBytes(dtype);
}
inline const char* dtypeName(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_K: return "q4_k";
    case DType::Q5_K: return "q5_k";
    case DType::Q6_K: return "q6_k";
  }
  return "?";
}

// An error with a stable code (DUO_ARG, DUO_OOM, DUO_CUDA_<name>, ...); the addon turns it into a JS error.
struct Error : std::runtime_error {
  std::string code;
  Error(std::string errorCode, const std::string& message) : std::runtime_error(message), code(std::move(errorCode)) {}
};

// The dtype TypeScript calls `name` ('f32', 'bf16', …).
inline DType dtypeNamed(const std::string& name) {
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K})
    if (name == dtypeName(dtype)) return dtype;
  throw Error("DUO_ARG", "unknown dtype '" + name + "'");
}

class Device;

struct Tensor {
  uint32_t id = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t size = 0;   // elements
  size_t bytes = 0;
  void* data = nullptr;
  Device* device = nullptr;
  // Paged tensors ([spans, length, width]): address space for all of it, memory mapped per span as commitPaged asks.
  bool paged = false;
  int64_t spans = 0;
  size_t spanBytes = 0, committedPerSpan = 0;
  // Per span, the backend's handle of each mapped page in order (a page shared by several tensors has one handle).
  std::vector<std::vector<unsigned long long>> spanPages;
  unsigned long long backing = 0;  // the backend's id of the memory reserved for it (the CPU's shmem object)
  bool sharesPages = false;        // some of its pages were mapped into, or from, another tensor (sharePaged)

  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : size / cols(); }
  template <typename T> T* as() const { return static_cast<T*>(data); }
};

// `inverse` rotates back by the same angles: RoPE's gradient (the rotation's transpose).
struct RopeArgs { int heads, headDim; bool interleaved; bool inverse = false; };

// Population count of a 64-bit word, on the host and on the device.
DUO_HD int popcount64(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __popcll(bits);
#else
  return __builtin_popcountll(bits);
#endif
}

// Most KV heads a layer with streaming heads may have: the head map is a 128-bit mask.
constexpr int kMaxKvHeads = 128;

// A 128-bit set of KV heads as two words. Scalars, not an array: kernels take it inside their parameters, and indexing
// a parameter array with a run-time value makes the compiler copy the whole parameter struct to local memory first.
struct HeadMask {
  uint64_t low = 0, high = 0;  // heads 0 … 63, 64 … 127
  DUO_HD uint64_t word(int head) const { return head < 64 ? low : high; }
  DUO_HD bool has(int head) const { return (word(head) >> (head & 63)) & 1u; }
  DUO_HD void add(int head) { (head < 64 ? low : high) |= 1ull << (head & 63); }
  // Members below `head`.
  DUO_HD int below(int head) const {
    const int bit = head & 63;
    const uint64_t under = bit == 0 ? 0 : (word(head) & (~0ull >> (64 - bit)));
    return (head < 64 ? 0 : popcount64(low)) + popcount64(under);
  }
};

// Context parallelism (ADR 0011): a sequence's positions dealt to `ranks` ranks in chunks of `chunk` tokens (chunk c =
// ⌊p / chunk⌋ to rank c mod ranks). A rank's main caches hold the keys of its own chunks in position order: position p
// at slot ⌊c / ranks⌋ · chunk + p mod chunk. One rank (the default) holds every position at slot = position.
struct ContextShard {
  int ranks = 1, rank = 0;
  int64_t chunk = 1;
  DUO_HD bool active() const { return ranks > 1; }
  DUO_HD bool owns(int64_t position) const { return !active() || (position / chunk) % ranks == rank; }
  DUO_HD int64_t slot(int64_t position) const {
    return active() ? (position / chunk / ranks) * chunk + position % chunk : position;
  }
  // How many positions below `end` this rank holds.
  DUO_HD int64_t ownedBelow(int64_t end) const {
    if (!active()) return end;
    const int64_t whole = end / chunk;
    const int64_t mine = whole / ranks + (whole % ranks > rank ? 1 : 0);
    return mine * chunk + (whole % ranks == rank ? end % chunk : 0);
  }
  // The position of this rank's key number `index` (in position order).
  DUO_HD int64_t positionAt(int64_t index) const {
    return active() ? ((index / chunk) * ranks + rank) * chunk + index % chunk : index;
  }
};

// DuoAttention's streaming heads. The weights keep the checkpoint's KV head order; a session's plan is a map instead:
// `streamingHeads` holds the KV heads that stream. The other (retrieval) heads keep every key in the op's main caches
// at slot = position, in ascending head order; the streaming heads keep `sink` slots (positions 0 … sink − 1) and then
// a ring of `ring` slots in the region `key`/`value` ([streamingHeads, sink + ring, headDim], ascending head order), so
// the region never grows. A query at position i sees key j iff j ≤ i and (j < sink or j ≥ windowStart(i)).
// `key == nullptr`: every head is full and KV head h is row h of the main caches.
struct StreamingLayout {
  void* key = nullptr;  // attention reads the region, the RoPE + cache write fills it
  void* value = nullptr;
  int retrievalKvHeads = 0;            // rows of the main caches
  HeadMask streamingHeads;   // KV heads 0 … 127 that stream
  int64_t sink = 0, recent = 0, ring = 1;
  bool chunked = false;  // the reference's chunk-wise mask: the window starts `recent` keys before the call's first query
  ContextShard shard;    // which positions the main caches hold, and where (the streaming region is never sharded)

  DUO_HD bool active() const { return key != nullptr; }
  DUO_HD bool streams(int kvHead) const { return active() && streamingHeads.has(kvHead); }
  // Streaming heads below `kvHead`: a streaming head's row in the region; the rest give a retrieval head's row.
  DUO_HD int streamingBelow(int kvHead) const { return streamingHeads.below(kvHead); }
  // Row of retrieval head `kvHead` in the main caches (every head's own index when none streams).
  DUO_HD int64_t fullRow(int kvHead) const { return active() ? kvHead - streamingBelow(kvHead) : kvHead; }
  // The KV head at `index` of region order (the main caches' rows, then the region's): decode lays its blocks out so.
  DUO_HD int headAt(int index, int kvHeads) const {
    if (!active()) return index;
    const bool streaming = index >= retrievalKvHeads;
    int rank = streaming ? index - retrievalKvHeads : index;
    for (int head = 0; head < kvHeads; head++)
      if (streams(head) == streaming && rank-- == 0) return head;
    return kvHeads - 1;
  }
  DUO_HD int64_t slot(int64_t position) const { return position < sink ? position : sink + (position - sink) % ring; }
  DUO_HD int64_t slots() const { return sink + ring; }
  // Element offset in the region of streaming KV head `kvHead`'s first slot, and of `position`'s row.
  DUO_HD int64_t headStart(int kvHead, int64_t headDim) const {
    return static_cast<int64_t>(streamingBelow(kvHead)) * slots() * headDim;
  }
  DUO_HD int64_t element(int kvHead, int64_t position, int64_t headDim) const {
    return headStart(kvHead, headDim) + slot(position) * headDim;
  }
  // Element offset of `position`'s row of KV head `kvHead` in a main cache of `capacity` slots.
  DUO_HD int64_t fullElement(int kvHead, int64_t position, int64_t capacity, int64_t headDim) const {
    return (fullRow(kvHead) * capacity + shard.slot(position)) * headDim;
  }
  // The oldest non-sink key a query at `position` sees; `firstQuery` is the position of the call's first query.
  DUO_HD int64_t windowStart(int64_t position, int64_t firstQuery) const {
    return chunked ? firstQuery - recent : position - recent + 1;
  }
};

// The keys one query block visits, as logical indices 0 … count − 1 in increasing position: the sinks, then the
// window of the block's first query at `firstQuery` (a full head: every position below keyEnd). `callFirstQuery` is
// the position of the op's first query row (the chunked mask anchors the window there).
struct KeyRange {
  int64_t sinkCount, windowFirst, count;
  DUO_HD int64_t position(int64_t index) const { return index < sinkCount ? index : windowFirst + (index - sinkCount); }
};
DUO_HD KeyRange keyRangeFor(const StreamingLayout& layout, bool streaming, int64_t keyEnd, int64_t firstQuery,
                            int64_t callFirstQuery) {
  if (!streaming) return KeyRange{keyEnd, keyEnd, keyEnd};
  const int64_t sinkCount = keyEnd < layout.sink ? keyEnd : layout.sink;
  int64_t windowFirst = layout.windowStart(firstQuery, callFirstQuery);
  if (windowFirst < layout.sink) windowFirst = layout.sink;
  const int64_t windowCount = keyEnd > windowFirst ? keyEnd - windowFirst : 0;
  return KeyRange{sinkCount, windowFirst, sinkCount + windowCount};
}
// Whether the query at `position` sees the key at `key` (both absolute positions).
DUO_HD bool keyVisible(const StreamingLayout& layout, bool streaming, int64_t position, int64_t key, int64_t firstQuery) {
  return key <= position && (!streaming || key < layout.sink || key >= layout.windowStart(position, firstQuery));
}

// A quantized cache (docs/decisions/0006-kv-quantization.md): the op's key/value tensors (and the streaming region's)
// are u8 code planes; these are the fp16 scale planes beside them. scheme 0: not quantized.
struct KvQuantPlanes {
  int scheme = 0;  // KvQuant (quant.h)
  const uint16_t* keyScales = nullptr;
  const uint16_t* valueScales = nullptr;
  const uint16_t* streamKeyScales = nullptr;
  const uint16_t* streamValueScales = nullptr;
  int64_t codeBytes = 0, scaleHalves = 0;
};

struct AttentionArgs {
  int heads, kvHeads, headDim;
  float scale;
  int64_t keyLength;
  int64_t queryStart;  // absolute position of query row 0 (prefill); keyLength - 1 for decode
  // Decode only: when set, the key count is lengthFrom[0] + 1, read on the device when the kernel runs (so a
  // captured graph serves every step); keyLength then only sizes the launch.
  const int32_t* lengthFrom = nullptr;
  StreamingLayout streaming;
  KvQuantPlanes quant;
  // attentionPartial (context parallelism): each output row also carries, after its heads · headDim values, the heads'
  // log-sum-exp of their scaled scores (−∞ where nothing is visible), and with a shard on rank r > 0 the streaming
  // heads are left to rank 0 (zeros, −∞).
  bool partial = false;
};

// One sequence of a batched step (continuous batching), for the layer an op runs: its rows of the step's q / k / v /
// out (rowStart … rowStart + rows − 1, at positions queryStart … queryStart + rows − 1; keys 0 … queryStart + rows − 1)
// and its own caches, layout and quantization. rows 0: the sequence sits this step out. Rows of one slice are a decode
// token (rows 1) or a prefill chunk; slices follow each other in row order.
struct BatchSlice {
  Tensor* keyCache = nullptr;
  Tensor* valueCache = nullptr;
  StreamingLayout streaming;
  KvQuantPlanes quant;
  int64_t rowStart = 0, rows = 0, queryStart = 0;
};

// The attention arguments of one slice: the op's shape (heads, kvHeads, headDim, scale) with the slice's keys,
// position, layout and quantization.
inline AttentionArgs sliceArgs(const AttentionArgs& shape, const BatchSlice& slice) {
  AttentionArgs args = shape;
  args.keyLength = slice.queryStart + slice.rows;
  args.queryStart = slice.queryStart;
  args.lengthFrom = nullptr;
  args.streaming = slice.streaming;
  args.quant = slice.quant;
  return args;
}

// Rows first … first + count − 1 of a row-major tensor, as a tensor sharing its memory (never paged). The rows of a
// one-dimensional tensor (positions [n]) are its elements.
inline Tensor rowView(const Tensor& tensor, int64_t first, int64_t count) {
  const bool vector = tensor.shape.size() == 1;
  const int64_t cols = vector ? 1 : tensor.cols();
  Tensor view;
  view.id = tensor.id;
  view.dtype = tensor.dtype;
  view.shape = vector ? std::vector<int64_t>{count} : std::vector<int64_t>{count, cols};
  view.size = count * cols;
  view.bytes = static_cast<size_t>(view.size) * dtypeBytes(tensor.dtype);
  view.data = static_cast<char*>(tensor.data) + static_cast<size_t>(first * cols) * dtypeBytes(tensor.dtype);
  view.device = tensor.device;
  return view;
}

// Attention's input gradients over one whole sequence (training): query rows at positions 0 … length − 1 against keys
// 0 … length − 1 held in caches [kvHeads, capacity, headDim] at slot = position. `window` selects the Λ mask (key j
// visible to query i iff j ≤ i and (j < sink or i − j < recent)); otherwise causal.
struct AttentionBackwardArgs {
  int heads, kvHeads, headDim;
  float scale;
  int64_t length, capacity;
  bool window = false;
  int64_t sink = 0, recent = 0;
  // Queries that see key j: j … queryEnd(j) − 1.
  DUO_HD int64_t queryEnd(int64_t key) const {
    if (!window || key < sink) return length;
    return key + recent < length ? key + recent : length;
  }
  // Keys query i sees, as logical indices 0 … keyCount(i) − 1 in increasing position: the sinks, then the window.
  DUO_HD int64_t sinkCount(int64_t query) const {
    if (!window) return 0;
    return query + 1 < sink ? query + 1 : sink;
  }
  DUO_HD int64_t windowFirst(int64_t query) const {
    if (!window) return 0;
    const int64_t first = query - recent + 1;
    return first > sink ? first : sink;
  }
  DUO_HD int64_t keyCount(int64_t query) const {
    const int64_t first = windowFirst(query);
    return sinkCount(query) + (query + 1 > first ? query + 1 - first : 0);
  }
  DUO_HD int64_t keyAt(int64_t query, int64_t index) const {
    const int64_t sinks = sinkCount(query);
    return index < sinks ? index : windowFirst(query) + (index - sinks);
  }
};

// The gate mix of DuoAttention's training: head h of query group g outputs (1 − α_g)·streaming + α_g·full, α clamped to
// [0, 1]; rows are [heads · headDim].
struct GateMixArgs { int heads, kvHeads, headDim; };

struct MemoryInfo { size_t allocated, peak, deviceFree, deviceTotal; };

// The element-wise ops of ops.def (elementwise.h has their functors: the formula each backend runs).
enum class ElementwiseOp : int {
#define DUO_ELEMENTWISE(name, parameters, formula) name,
#include "ops.def"
};

// One backend. Ops are synchronous enqueues (CUDA) or synchronous runs (CPU).
class Device {
 public:
  virtual ~Device() = default;
  virtual const char* kind() const = 0;
  virtual std::string name() const = 0;
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* pointer, size_t bytes) = 0;
  virtual void write(Tensor& tensor, const void* host, size_t byteOffset, size_t bytes) = 0;
  // Starts a copy to `host`; the returned waiter blocks until the bytes are there (called off the JS thread).
  struct PendingRead { virtual ~PendingRead() = default; virtual void wait() = 0; };
  virtual PendingRead* read(const Tensor& tensor, void* host, size_t byteOffset, size_t bytes) = 0;
  virtual void synchronize() = 0;
  virtual MemoryInfo memory() const = 0;
  // Starts a new peak: the peak becomes what is allocated now.
  virtual void resetPeak() = 0;
  // Paged tensors. pageBytes: the unit memory is mapped in. reservePaged sets tensor.data to address space for
  // tensor.bytes (spans × spanBytes, spanBytes a multiple of pageBytes) with nothing mapped; commitPaged maps each
  // span's first `bytesPerSpan` (rounded up to pages; never shrinks); releasePaged unmaps and frees everything.
  // sharePaged maps into each span of `target` (nothing committed yet) the pages of the same span of `source` that lie
  // wholly inside its first `bytesPerSpan` — the same physical pages at the same offsets, so a write through either
  // tensor shows in both — and gives the last partial page, if any, a fresh page holding a copy of those bytes (copy on
  // write: both may write past `bytesPerSpan`). A page is freed when the last tensor mapping it is released; memory()
  // counts it once. The caller keeps both tensors from writing below `bytesPerSpan` once shared.
  virtual size_t pageBytes() const = 0;
  virtual void reservePaged(Tensor& tensor) = 0;
  virtual void commitPaged(Tensor& tensor, size_t bytesPerSpan) = 0;
  virtual void sharePaged(Tensor& target, Tensor& source, size_t bytesPerSpan) = 0;
  virtual void releasePaged(Tensor& tensor) = 0;
  // Per-op device time since the last call (op name → {count, milliseconds}); empty unless the backend profiles.
  struct OpTime { std::string name; int count; double milliseconds; };
  virtual std::vector<OpTime> takeProfile() { return {}; }
  // Knobs for benchmarks and A/B runs, passed from TypeScript (the backend's options); the defaults are the shipped
  // behaviour. Devices without such knobs ignore them.
  struct Tuning {
    bool profile = false;          // time every op with events (takeProfile)
    bool chainLaunches = true;     // programmatic dependent launch where the GPU has it
    int64_t gemvMinSlice = 1024;   // smallest split-K slice of the decode GEMV
    int gemvWaveRule = 2;          // 0: fill rule alone, 1: wave rule, 2: chained-launch rule when chaining
    std::string gemvPinnedSplits;  // "rowsxk:split,…" pins the split of a shape
    bool batchInvariant = false;   // a row's results never depend on the other rows of a call (batch engine)
    int64_t skinnyRowsMax = 64;    // most rows the skinny tensor-core matmul takes outside that mode (0: cuBLAS)
    bool longSplitsFirst = true;   // a batch's decode attention starts every sequence's full-head splits first
    int decodeMmaBlocks = 2;       // resident blocks of the tensor-core decode over 16-bit caches (2 or 3)
    int decodeBatchMerge = 16;     // a batch's decode heads of at most this many splits merge in the kernel (1–64)
    bool integerQ8 = true;         // CPU: Q8_0 products over x rounded to int8 pieces (as CUDA, llama.cpp); false: exact x
  };
  virtual void tune(const Tuning&) {}

  virtual void copyRows(const Tensor& source, Tensor& target, int64_t sourceRow, int64_t targetRow, int64_t rows) = 0;
  virtual void convert(const Tensor& source, Tensor& target) = 0;
  virtual void fillRandom(Tensor& tensor, uint64_t seed, float standardDeviation) = 0;
  virtual void embedding(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  virtual void rmsNorm(const Tensor& x, const Tensor& weight, Tensor& out, float eps) = 0;
  virtual void matmul(const Tensor& x, const Tensor& weight, Tensor& out, const Tensor* bias, const Tensor* residual) = 0;
  virtual void rope(Tensor& x, const Tensor& positions, const Tensor& inverseFrequencies, const RopeArgs& args) = 0;
  // out[i] = op(inputs[0][i], …) for f32 tensors of out's size (elementwiseInputs(op) of them; out may alias one).
  virtual void elementwise(ElementwiseOp op, const Tensor* const* inputs, Tensor& out) = 0;
  virtual void writeCache(const Tensor& source, Tensor& cache, int64_t start) = 0;
  virtual void attentionPrefill(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) = 0;
  virtual void attentionDecode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) = 0;
  // Context parallelism: out[r] = the rank-ordered log-sum-exp merge of `parts` ([partCount · n, heads · headDim +
  // heads]: each part's attentionPartial rows, then its heads' log-sum-exps) into out ([n, heads · headDim]).
  virtual void mergeAttention(const Tensor& parts, Tensor& out, int partCount, int heads, int headDim) = 0;
  virtual void argmax(const Tensor& logits, Tensor& out) = 0;
  virtual void softmax(const Tensor& logits, Tensor& out, float temperature) = 0;

  // Quantizes rows of `source` ([n, kvHeads · headDim] f32) into a quantized cache at positions start … start + n − 1:
  // codes [kvHeads, capacity, codeBytes] u8, scales [kvHeads, capacity, scaleHalves] f16 (quant.h; scheme: KvQuant).
  virtual void writeCacheQuantized(const Tensor& source, Tensor& codes, Tensor& scales, int64_t start, int scheme) = 0;

  // Input gradients (weights are frozen). With `accumulate` the result is added to what `gradInput` holds.
  // gradInput[n, k] (+)= gradOut[n, m] · weight[m, k]
  virtual void matmulBackward(const Tensor& gradOut, const Tensor& weight, Tensor& gradInput, bool accumulate) = 0;
  virtual void rmsNormBackward(const Tensor& x, const Tensor& weight, const Tensor& gradOut, Tensor& gradInput, float eps,
                               bool accumulate) = 0;
  virtual void swigluBackward(const Tensor& gate, const Tensor& up, const Tensor& gradOut, Tensor& gradGate, Tensor& gradUp) = 0;
  // q, out, gradOut, gradQuery: [length, heads · headDim]; gradKey, gradValue: [length, kvHeads · headDim] (the
  // projections' layout). Deterministic: every gradient element is summed by one thread in a fixed order.
  virtual void attentionBackward(const Tensor& q, const Tensor& keyCache, const Tensor& valueCache, const Tensor& out,
                                 const Tensor& gradOut, Tensor& gradQuery, Tensor& gradKey, Tensor& gradValue,
                                 const AttentionBackwardArgs& args) = 0;
  virtual void gateMix(const Tensor& streaming, const Tensor& full, const Tensor& gates, Tensor& out, const GateMixArgs& args) = 0;
  // gradStreaming = (1 − α)·gradOut; gradGates[g] = Σ_{rows, h ∈ g} ⟨gradOut_h, full_h − streaming_h⟩ (fixed order).
  virtual void gateMixBackward(const Tensor& gradOut, const Tensor& streaming, const Tensor& full, const Tensor& gates,
                               Tensor& gradStreaming, Tensor& gradGates, const GateMixArgs& args) = 0;

  // Fused ops. The defaults compose the primitives above; a backend overrides them where one launch is cheaper.
  // out[i] = x · weights[i]ᵀ (+ biases[i]) for up to three matrices sharing x (q/k/v).
  virtual void matmulGroup(const Tensor& x, const Tensor* const* weights, Tensor* const* outs, const Tensor* const* biases,
                           int count) {
    for (int i = 0; i < count; i++) matmul(x, *weights[i], *outs[i], biases[i], nullptr);
  }
  // out = silu(x · gateᵀ) ⊙ (x · upᵀ)
  virtual void matmulSwiglu(const Tensor& x, const Tensor& gate, const Tensor& up, Tensor& out) {
    Temporary product(*this, out);
    matmul(x, gate, out, nullptr, nullptr);
    matmul(x, up, product.tensor, nullptr, nullptr);
    const Tensor* inputs[] = {&out, &product.tensor};
    elementwise(ElementwiseOp::swiglu, inputs, out);
  }
  // Rotates q ([n, heads·d]) and k ([n, kvHeads·d]) in place, then writes row r of k and v into the caches at slot
  // positions[r]; KV heads that stream (see StreamingLayout) go to their region at layout.slot(positions[r]).
  virtual void ropeWriteCache(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                              const RopeArgs& args, int kvHeads, Tensor& keyCache, Tensor& valueCache,
                              const StreamingLayout& streaming, const KvQuantPlanes& quant) = 0;
  // ids[0] = next[0]; positions[0] += 1 — closes a decode step on the device so the next one can start at once.
  virtual void decodeAdvance(const Tensor& next, Tensor& ids, Tensor& positions) {
    ids.as<int32_t>()[0] = next.as<int32_t>()[0];
    positions.as<int32_t>()[0] += 1;
  }
  // Continuous batching: ropeWriteCache and attention for every slice of a step, each sequence with its own caches.
  // The defaults run the single-sequence ops slice by slice; a backend overrides them where one launch serves all.
  virtual void ropeWriteCacheBatch(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                                   const RopeArgs& args, int kvHeads, const std::vector<BatchSlice>& slices) {
    for (const BatchSlice& slice : slices) {
      if (slice.rows == 0) continue;
      Tensor qRows = rowView(q, slice.rowStart, slice.rows), kRows = rowView(k, slice.rowStart, slice.rows);
      const Tensor vRows = rowView(v, slice.rowStart, slice.rows), at = rowView(positions, slice.rowStart, slice.rows);
      ropeWriteCache(qRows, kRows, vRows, at, frequencies, args, kvHeads, *slice.keyCache, *slice.valueCache, slice.streaming,
                     slice.quant);
    }
  }
  // `shape`: heads, kvHeads, headDim and scale; each slice brings its caches, layout, quantization and positions.
  virtual void attentionBatch(const Tensor& q, Tensor& out, const AttentionArgs& shape, const std::vector<BatchSlice>& slices) {
    for (const BatchSlice& slice : slices) {
      if (slice.rows == 0) continue;
      const AttentionArgs args = sliceArgs(shape, slice);
      const Tensor qRows = rowView(q, slice.rowStart, slice.rows);
      Tensor outRows = rowView(out, slice.rowStart, slice.rows);
      if (slice.rows == 1) attentionDecode(qRows, *slice.keyCache, *slice.valueCache, outRows, args);
      else attentionPrefill(qRows, *slice.keyCache, *slice.valueCache, outRows, args);
    }
  }
  // Samples one token per row of `logits` (f32 [n, vocab]) into `out` (i32 [n]) by `settings` (f32 [n, 4]: temperature,
  // topK, topP, u). Temperature 0: the argmax (lowest index on ties). Otherwise tokens in order of falling logit (lower
  // index first on ties), the first topK of them (0: all), weights exp((logit − max) / temperature), the shortest prefix
  // whose weight reaches topP of the total (1: all), then the first token whose cumulative weight reaches u · (the
  // prefix's weight).
  virtual void sample(const Tensor& logits, const Tensor& settings, Tensor& out) {
    (void)logits, (void)settings, (void)out;
    throw Error("DUO_ARG", std::string("the ") + kind() + " backend cannot sample on the device");
  }
  // Graph capture of queued ops (CUDA graphs); backends without it throw.
  virtual void beginCapture() { throw Error("DUO_ARG", std::string("the ") + kind() + " backend cannot capture graphs"); }
  virtual int endCapture() { throw Error("DUO_ARG", std::string("the ") + kind() + " backend cannot capture graphs"); }
  virtual void launchGraph(int) { throw Error("DUO_ARG", std::string("the ") + kind() + " backend cannot capture graphs"); }
  virtual void freeGraph(int) {}
  // Communicators of ranks in several processes (NCCL, loaded at run time; ADR 0011); backends without them throw.
  // communicatorId: a new unique id (256 hex digits) that rank 0 makes and every rank opens with; openCommunicator
  // blocks until all `size` ranks have joined and returns this device's handle of it (≥ 1). Both load the library
  // first, from `libraryDirectory` when it is not empty (DUO_NCCL_PATH). The collectives are
  // enqueued on the device's stream and move bytes: allGather every rank's `input` into `output` in rank order,
  // broadcast rank `root`'s `tensor` into every rank's; allReduceSum replaces every rank's f32 `tensor` with the sum
  // over the ranks (the same bits on each; tensor parallelism's reduction after a row-parallel product).
  virtual std::string communicatorId(const std::string&) { refuseCommunicators(); }
  virtual int openCommunicator(const std::string&, const std::string&, int, int) { refuseCommunicators(); }
  virtual void allGather(int, const Tensor&, Tensor&) { refuseCommunicators(); }
  virtual void broadcast(int, Tensor&, int) { refuseCommunicators(); }
  virtual void allReduceSum(int, Tensor&) { refuseCommunicators(); }
  virtual void closeCommunicator(int) {}

 protected:
  [[noreturn]] void refuseCommunicators() const {
    throw Error("DUO_ARG", std::string("the ") + kind() + " backend has no NCCL communicators (ranks on the CPU use createInProcessGroup)");
  }
  // An f32 scratch tensor shaped like `like`, freed (stream-ordered on CUDA) when it goes out of scope.
  struct Temporary {
    Device& device;
    Tensor tensor;
    Temporary(Device& owner, const Tensor& like) : device(owner), tensor(like) {
      tensor.dtype = DType::F32;
      tensor.bytes = static_cast<size_t>(like.size) * 4;
      tensor.data = device.allocate(tensor.bytes);
    }
    ~Temporary() { device.release(tensor.data, tensor.bytes); }
    Temporary(const Temporary&) = delete;
    Temporary& operator=(const Temporary&) = delete;
  };
};

// Counter-based generator shared by both backends so fillRandom gives identical values everywhere.

DUO_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Approximately normal: sum of four uniforms, rescaled to unit variance (cheap, identical on CPU and GPU).
DUO_HD float randomNormal(uint64_t seed, uint64_t index) {
  uint64_t a = splitmix64(seed * 0x100000001B3ull + index * 2);
  uint64_t b = splitmix64(a ^ (index * 2 + 1));
  float sum = static_cast<float>(a & 0xFFFFFFFFu) + static_cast<float>(a >> 32) + static_cast<float>(b & 0xFFFFFFFFu) +
              static_cast<float>(b >> 32);
  const float mean = 2.0f * 4294967295.0f;
  const float standard = 4294967296.0f * 0.57735026919f;  // sqrt(4/12) · 2^32
  return (sum - mean) / standard;
}

DUO_HD float bf16ToFloat(uint16_t bits) {
  uint32_t value = static_cast<uint32_t>(bits) << 16;
  float result;
  memcpy(&result, &value, 4);
  return result;
}
DUO_HD uint16_t floatToBf16(float value) {
  uint32_t bits;
  memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}
DUO_HD float f16ToFloat(uint16_t half) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(half));  // the same value, in one instruction
#endif
  uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) { mantissa <<= 1; exponent--; }
      mantissa &= 0x3ffu;
      bits = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float result;
  memcpy(&result, &bits, 4);
  return result;
}
DUO_HD uint16_t floatToF16(float value) {
#if defined(__CUDA_ARCH__)
  if (value == value) return __half_as_ushort(__float2half_rn(value));  // round to nearest even, as below
#endif
  uint32_t bits;
  memcpy(&bits, &value, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xffu) - 127 + 15;
  uint32_t mantissa = bits & 0x7fffffu;
  if (((bits >> 23) & 0xffu) == 0xffu) return static_cast<uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u : 0));
  if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exponent <= 0) {
    if (exponent < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - exponent);
    uint32_t half = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) half++;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;
  return static_cast<uint16_t>(half);
}

}  // namespace duo
