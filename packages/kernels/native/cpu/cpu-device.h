// The CPU backend: f32 compute on a thread pool; reads f32 / f16 / bf16 weights and caches.
#pragma once
#include <memory>

#include "../common.h"
#include "thread-pool.h"

namespace duo {

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(unsigned threads);
  const char* kind() const override { return "cpu"; }
  std::string name() const override;
  void* allocate(size_t bytes) override;
  void release(void* pointer, size_t bytes) override;
  void write(Tensor& tensor, const void* host, size_t byteOffset, size_t bytes) override;
  PendingRead* read(const Tensor& tensor, void* host, size_t byteOffset, size_t bytes) override;
  void synchronize() override {}
  MemoryInfo memory() const override { return {allocated_, peak_, 0, 0}; }
  void resetPeak() override { peak_ = allocated_; }
  void tune(const Tuning& tuning) override { integerQ8_ = tuning.integerQ8; }
  size_t pageBytes() const override;
  void reservePaged(Tensor& tensor) override;
  void commitPaged(Tensor& tensor, size_t bytesPerSpan) override;
  void sharePaged(Tensor& target, Tensor& source, size_t bytesPerSpan) override;
  void releasePaged(Tensor& tensor) override;

  void copyRows(const Tensor& source, Tensor& target, int64_t sourceRow, int64_t targetRow, int64_t rows) override;
  void convert(const Tensor& source, Tensor& target) override;
  void fillRandom(Tensor& tensor, uint64_t seed, float standardDeviation) override;
  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void rmsNorm(const Tensor& x, const Tensor& weight, Tensor& out, float eps) override;
  void matmul(const Tensor& x, const Tensor& weight, Tensor& out, const Tensor* bias, const Tensor* residual) override;
  void rope(Tensor& x, const Tensor& positions, const Tensor& inverseFrequencies, const RopeArgs& args) override;
  void elementwise(ElementwiseOp op, const Tensor* const* inputs, Tensor& out) override;  // cpu/elementwise.cc
  void writeCache(const Tensor& source, Tensor& cache, int64_t start) override;
  void ropeWriteCache(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                      const RopeArgs& args, int kvHeads, Tensor& keyCache, Tensor& valueCache,
                      const StreamingLayout& streaming, const KvQuantPlanes& quant) override;
  void attentionPrefill(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) override;
  void attentionDecode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) override;
  void mergeAttention(const Tensor& parts, Tensor& out, int partCount, int heads, int headDim) override;
  void argmax(const Tensor& logits, Tensor& out) override;
  void softmax(const Tensor& logits, Tensor& out, float temperature) override;
  void sample(const Tensor& logits, const Tensor& settings, Tensor& out) override;
  void writeCacheQuantized(const Tensor& source, Tensor& codes, Tensor& scales, int64_t start, int scheme) override;  // cpu/quantize.cc
  void matmulBackward(const Tensor& gradOut, const Tensor& weight, Tensor& gradInput, bool accumulate) override;
  void rmsNormBackward(const Tensor& x, const Tensor& weight, const Tensor& gradOut, Tensor& gradInput, float eps,
                       bool accumulate) override;
  void swigluBackward(const Tensor& gate, const Tensor& up, const Tensor& gradOut, Tensor& gradGate, Tensor& gradUp) override;
  void attentionBackward(const Tensor& q, const Tensor& keyCache, const Tensor& valueCache, const Tensor& out,
                         const Tensor& gradOut, Tensor& gradQuery, Tensor& gradKey, Tensor& gradValue,
                         const AttentionBackwardArgs& args) override;
  void gateMix(const Tensor& streaming, const Tensor& full, const Tensor& gates, Tensor& out, const GateMixArgs& args) override;
  void gateMixBackward(const Tensor& gradOut, const Tensor& streaming, const Tensor& full, const Tensor& gates,
                       Tensor& gradStreaming, Tensor& gradGates, const GateMixArgs& args) override;

  ThreadPool& pool() { return pool_; }

 private:
  // Quantizes rows of k and v (after RoPE) into the code / scale planes at `positions`; streaming heads to their region
  // (cpu/quantize.cc).
  void writeQuantizedRows(const Tensor& k, const Tensor& v, const int32_t* positions, int kvHeads, int headDim, Tensor& keyCodes,
                          Tensor& valueCodes, const StreamingLayout& streaming, const KvQuantPlanes& quant);
  // Every page a paged tensor maps: the shmem object and page it lives in, and how many tensors map it. A tensor's
  // spanPages hold indices into pages_; freed records are reused.
  struct PageRecord {
    unsigned long long backing = 0, backingPage = 0;
    uint32_t mappings = 0;
  };
  unsigned long long newPage(unsigned long long backing, unsigned long long backingPage);
  ThreadPool pool_;
  size_t allocated_ = 0, peak_ = 0;
  bool integerQ8_ = true;
  std::vector<PageRecord> pages_;
  std::vector<unsigned long long> freeRecords_;
  unsigned long long nextBacking_ = 1;
};

// Element i of a tensor whose storage is `dtype`, as f32.
inline float loadFloat(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: return bf16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DType::F16: return f16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DType::I32: return static_cast<float>(static_cast<const int32_t*>(base)[i]);
    case DType::U8: return static_cast<float>(static_cast<const uint8_t*>(base)[i]);
    default: break;  // block formats are read by whole blocks (loadFloats)
  }
  return 0;
}
inline void storeFloat(void* base, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::F32: static_cast<float*>(base)[i] = value; break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = floatToBf16(value); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = floatToF16(value); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(value); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(value); break;
    default: break;  // block formats are never written element by element
  }
}
// Converts `count` elements starting at element `offset` of `base` to f32.
void loadFloats(const void* base, DType dtype, int64_t offset, int64_t count, float* out);

// Σ a[i]·b[i] with 16 partial sums (vectorised; a fixed order, so repeatable), and y += scale · x.
float dotProduct(const float* a, const float* b, int64_t count);
void addScaled(float scale, const float* x, float* y, int64_t count);

// x · Wᵀ for f32 x [n, k] and W [m, k] (any float dtype or block format) into out [n, m], plus optional bias and
// residual; `integerQ8`: Q8_0 weights multiply x rounded to int8 pieces (Tuning::integerQ8), else exact x.
void cpuMatmul(ThreadPool& pool, const float* x, int64_t n, int64_t k, const void* weight, DType weightType, int64_t m,
               float* out, const float* bias, const float* residual, bool integerQ8 = false);

}  // namespace duo
