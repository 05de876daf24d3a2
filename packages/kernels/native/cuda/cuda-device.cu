// The CUDA backend: one stream, stream-ordered allocations, pinned staging for transfers (pinned-pool.cuh), paged
// tensors (paged-memory.cu), per-op profiles (op-profiler.cuh), and every op enqueued without waiting.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "../elementwise.h"
#include "cublas-loader.h"
#include "cuda-common.cuh"
#include "cuda-device.h"
#include "nccl-loader.h"
#include "op-profiler.cuh"
#include "paged-memory.cuh"
#include "pinned-pool.cuh"

namespace duo {
namespace cuda {
namespace {

class CudaDevice final : public Device {
 public:
  CudaDevice() {
    check(cudaGetDevice(&device_), "cudaGetDevice");
    paged_ = PagedMemory(device_);
    check(cudaGetDeviceProperties(&properties_, device_), "cudaGetDeviceProperties");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    wgmmaCompiled();  // its probe launch runs now, before any graph capture
    // The decode attention's arrival counts: zeroed once, left zero by every launch (attentionDecode's splits).
    check(cudaMalloc(&arrivals_, kDecodeArrivals * sizeof(int)), "cudaMalloc (decode arrivals)");
    check(cudaMemset(arrivals_, 0, kDecodeArrivals * sizeof(int)), "cudaMemset (decode arrivals)");
    // Keep freed blocks in the pool instead of returning them to the driver at each synchronisation.
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, device_), "cudaDeviceGetDefaultMemPool");
    uint64_t threshold = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "cudaMemPoolSetAttribute");
  }
  ~CudaDevice() override {
    if (scratch_) cudaFreeAsync(scratch_, stream_);
    cudaStreamSynchronize(stream_);
    cudaFree(arrivals_);
    if (CublasLibrary::instance().available()) CublasLibrary::instance().forget(stream_);
    for (cudaGraphExec_t graph : graphs_)
      if (graph) cudaGraphExecDestroy(graph);
    for (void* communicator : communicators_) NcclLibrary::instance().close(communicator);
    for (SmallSlot& slot : smallSlots_) {
      if (slot.data) cudaFreeHost(slot.data);
      if (slot.done) cudaEventDestroy(slot.done);
    }
    cudaStreamDestroy(stream_);
  }

  const char* kind() const override { return "cuda"; }
  std::string name() const override {
    return std::string(properties_.name) + " (sm_" + std::to_string(properties_.major) + std::to_string(properties_.minor) + ", " +
           std::to_string(properties_.multiProcessorCount) + " SMs)";
  }

  void* allocate(size_t bytes) override {
    void* pointer = nullptr;
    cudaError_t status = cudaMallocAsync(&pointer, std::max<size_t>(bytes, 256), stream_);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t freeBytes = 0, totalBytes = 0;
      cudaMemGetInfo(&freeBytes, &totalBytes);
      throw Error("DUO_OOM", "CUDA allocation of " + std::to_string(bytes) + " bytes failed (" + std::to_string(freeBytes) +
                                 " of " + std::to_string(totalBytes) + " bytes free; this backend holds " +
                                 std::to_string(allocated_) + ")");
    }
    check(status, "cudaMallocAsync");
    allocated_ += bytes;
    peak_ = std::max(peak_, allocated_);
    return pointer;
  }
  // Paged tensors (paged-memory.cu); this device accounts for what they map.
  size_t pageBytes() const override { return paged_.pageBytes(); }
  void reservePaged(Tensor& tensor) override { paged_.reserve(tensor); }
  void commitPaged(Tensor& tensor, size_t bytesPerSpan) override {
    allocated_ += paged_.commit(tensor, bytesPerSpan, stream_);
    peak_ = std::max(peak_, allocated_);
  }
  void sharePaged(Tensor& target, Tensor& source, size_t bytesPerSpan) override {
    allocated_ += paged_.share(target, source, bytesPerSpan, stream_);
    peak_ = std::max(peak_, allocated_);
  }
  void releasePaged(Tensor& tensor) override { allocated_ -= paged_.release(tensor, stream_); }

  void release(void* pointer, size_t bytes) override {
    check(cudaFreeAsync(pointer, stream_), "cudaFreeAsync");
    allocated_ -= bytes;
  }
  void write(Tensor& tensor, const void* host, size_t byteOffset, size_t bytes) override {
    if (bytes <= kSmallWrite) {
      // Small writes (token ids, positions) go through a ring of pinned slots without waiting for the stream, so
      // the GPU never idles between decode steps; a slot is reused only after its previous copy has run.
      SmallSlot& slot = smallSlots_[nextSmallSlot_++ % kSmallSlots];
      if (!slot.data) {
        check(cudaMallocHost(&slot.data, kSmallWrite), "cudaMallocHost");
        check(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming), "cudaEventCreate");
      } else {
        check(cudaEventSynchronize(slot.done), "waiting for a staging slot");
      }
      std::memcpy(slot.data, host, bytes);
      check(cudaMemcpyAsync(static_cast<char*>(tensor.data) + byteOffset, slot.data, bytes, cudaMemcpyHostToDevice, stream_),
            "uploading a tensor");
      check(cudaEventRecord(slot.done, stream_), "cudaEventRecord");
      return;
    }
    // Through pinned staging in pieces, ordered on the stream after earlier ops.
    const size_t piece = 64 << 20;
    for (size_t done = 0; done < bytes; done += piece) {
      size_t size = std::min(piece, bytes - done);
      PinnedPool::Buffer buffer = pinned_.take(size);
      std::memcpy(buffer.data, static_cast<const char*>(host) + done, size);
      cudaError_t status = cudaMemcpyAsync(static_cast<char*>(tensor.data) + byteOffset + done, buffer.data, size,
                                           cudaMemcpyHostToDevice, stream_);
      if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
      pinned_.give(buffer);
      check(status, "uploading a tensor");
    }
  }
  PendingRead* read(const Tensor& tensor, void* host, size_t byteOffset, size_t bytes) override {
    PinnedPool::Buffer buffer = pinned_.take(bytes);
    cudaEvent_t event;
    cudaError_t status = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (status != cudaSuccess) {
      pinned_.give(buffer);
      check(status, "cudaEventCreate");
    }
    auto* pending = new CudaRead(pinned_, buffer, event, host, bytes);
    status = cudaMemcpyAsync(buffer.data, static_cast<const char*>(tensor.data) + byteOffset, bytes, cudaMemcpyDeviceToHost, stream_);
    if (status == cudaSuccess) status = cudaEventRecord(event, stream_);
    if (status != cudaSuccess) {
      delete pending;
      check(status, "reading a tensor");
    }
    return pending;
  }
  void synchronize() override { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  void resetPeak() override { peak_ = allocated_; }
  MemoryInfo memory() const override {
    size_t freeBytes = 0, totalBytes = 0;
    check(cudaMemGetInfo(&freeBytes, &totalBytes), "cudaMemGetInfo");
    return {allocated_, peak_, freeBytes, totalBytes};
  }

  void copyRows(const Tensor& source, Tensor& target, int64_t sourceRow, int64_t targetRow, int64_t rows) override {
    size_t rowBytes = source.cols() * dtypeBytes(source.dtype);
    check(cudaMemcpyAsync(static_cast<char*>(target.data) + targetRow * rowBytes, static_cast<const char*>(source.data) + sourceRow * rowBytes,
                          rows * rowBytes, cudaMemcpyDeviceToDevice, stream_),
          "copyRows");
    profiler_.mark("copyRows", stream_);
  }
  void convert(const Tensor& source, Tensor& target) override {
    launchConvert(source.data, source.dtype, target.data, target.dtype, source.size, stream_);
    profiler_.mark("convert", stream_);
  }
  void fillRandom(Tensor& tensor, uint64_t seed, float std) override {
    launchFillRandom(tensor.data, tensor.dtype, tensor.size, seed, std, stream_);
    profiler_.mark("fillRandom", stream_);
  }
  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    if (isBlockType(table.dtype)) {
      launchBlockEmbedding(table.data, table.dtype, ids.as<int32_t>(), out.as<float>(), ids.size, table.cols(), stream_);
      profiler_.mark("embedding", stream_);
      return;
    }
    launchEmbedding(table.data, table.dtype, ids.as<int32_t>(), out.as<float>(), ids.size, table.cols(), stream_);
    profiler_.mark("embedding", stream_);
  }
  void rmsNorm(const Tensor& x, const Tensor& weight, Tensor& out, float eps) override {
    launchRmsNorm(x.as<float>(), weight.data, weight.dtype, out.as<float>(), x.rows(), x.cols(), eps, stream_);
    profiler_.mark("rmsNorm", stream_);
  }
  void matmul(const Tensor& x, const Tensor& weight, Tensor& out, const Tensor* bias, const Tensor* residual) override {
    int64_t n = x.rows(), k = x.cols(), m = weight.rows();
    const float* biasData = bias ? bias->as<float>() : nullptr;
    const float* residualData = residual ? residual->as<float>() : nullptr;
    if (isBlockType(weight.dtype)) {
      blockMatmul(x, weight, out.as<float>(), biasData, residualData);
      profiler_.mark("matmul", stream_);
      return;
    }
    if (skinny(x, weight.dtype, {weight.data}, 1)) {
      const GemvTarget target{weight.data, out.as<float>(), biasData, m};
      launchSkinny(x.as<float>(), roundedInput(x, weight.dtype, 1), n, k, weight.dtype, &target, residualData, 1, skinnyOptions(),
                   stream_);
      profiler_.mark("matmul", stream_);
      return;
    }
    if (invariant_ && n <= kSkinnyRowsMax && weight.dtype == DType::F32) {
      launchGemvRowTiles(x.as<float>(), n, k, weight.data, weight.dtype, m, out.as<float>(), biasData, residualData, stream_);
      profiler_.mark("matmul", stream_);
      return;
    }
    CublasLibrary& blas = CublasLibrary::instance();
    if (n <= kGemvRows || !blas.available()) {
      launchGemv(x.as<float>(), n, k, weight.data, weight.dtype, m, out.as<float>(), biasData, residualData, stream_);
      profiler_.mark("matmul", stream_);
      return;
    }
    // Many rows: tensor-core GEMM through cuBLAS, x rounded to the weight dtype; residual via beta = 1.
    float beta = 0.0f;
    if (residualData) {
      if (residualData != out.as<float>())
        check(cudaMemcpyAsync(out.data, residualData, out.bytes, cudaMemcpyDeviceToDevice, stream_), "matmul residual copy");
      beta = 1.0f;
    }
    const void* operand = weight.dtype == DType::F32 ? x.data : convertedInput(x, weight.dtype);
    gemm(operand, n, k, weight, out.as<float>(), beta);
    launchBiasResidual(out.as<float>(), biasData, nullptr, n, m, stream_);
    profiler_.mark("matmul", stream_);
  }
  void rope(Tensor& x, const Tensor& positions, const Tensor& frequencies, const RopeArgs& args) override {
    launchRope(x.as<float>(), positions.as<int32_t>(), frequencies.as<float>(), x.rows(), x.cols(), args.heads, args.headDim,
               args.interleaved, args.inverse, stream_);
    profiler_.mark("rope", stream_);
  }
  void elementwise(ElementwiseOp op, const Tensor* const* inputs, Tensor& out) override {
    const float* data[kMaxElementwiseInputs] = {};
    for (int i = 0; i < elementwiseInputs(op); i++) data[i] = inputs[i]->as<float>();
    launchElementwise(op, data, out.as<float>(), out.size, stream_);
    profiler_.mark(elementwiseName(op), stream_);
  }
  void writeCache(const Tensor& source, Tensor& cache, int64_t start) override {
    launchWriteCache(source.as<float>(), source.rows(), source.cols(), cache.data, cache.dtype, cache.shape[0], cache.shape[1],
                     cache.shape[2], start, stream_);
    profiler_.mark("writeCache", stream_);
  }
  void mergeAttention(const Tensor& parts, Tensor& out, int partCount, int heads, int headDim) override {
    launchMergeAttention(parts.as<float>(), out.as<float>(), out.rows(), partCount, heads, headDim, stream_);
    profiler_.mark("mergeAttention", stream_);
  }
  void attentionPrefill(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) override {
    if (args.partial && q.rows() == 1) {
      attentionDecode(q, k, v, out, args);  // a decode row's partial: the decode kernels write it
      return;
    }
    // out's rows are out.cols() apart: q's width, or (partial) that and every head's log-sum-exp.
    launchAttentionPrefill(q.as<float>(), q.cols(), k.data, v.data, k.dtype, k.shape[1], out.as<float>(), q.rows(), args, stream_,
                           out.cols());
    profiler_.mark("attentionPrefill", stream_);
  }
  void attentionDecode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, const AttentionArgs& args) override {
    if (q.rows() != 1) {
      // Several query rows at the last position: the prefill kernel computes the same thing.
      AttentionArgs prefill = args;
      prefill.queryStart = args.keyLength - 1;
      attentionPrefill(q, k, v, out, prefill);
      profiler_.mark("attentionDecode", stream_);
      return;
    }
    // A device-side length (graph capture) sizes the launch for the whole cache: later steps are longer.
    // Scratch is always sized for the whole cache, so a later graph capture never has to grow it.
    AttentionArgs sizing = args;
    sizing.keyLength = std::max<int64_t>(k.shape[1], args.keyLength);
    const DecodeSplits mostSplits = attentionDecodeSplits(sizing, k.dtype, properties_.multiProcessorCount);
    const DecodeSplits splits = args.lengthFrom ? mostSplits : attentionDecodeSplits(args, k.dtype, properties_.multiProcessorCount);
    float* partial = static_cast<float*>(scratch(attentionDecodeScratch(args, mostSplits)));
    launchAttentionDecode(q.as<float>(), k.data, v.data, k.dtype, k.shape[1], out.as<float>(), args, splits, partial, arrivals_, stream_);
    profiler_.mark("attentionDecode", stream_);
  }
  // Every decode slice of one cache dtype and KV scheme in one launch; prefill chunks (and head
  // dims without a split-K kernel) slice by slice.
  void attentionBatch(const Tensor& q, Tensor& out, const AttentionArgs& shape, const std::vector<BatchSlice>& slices) override {
    const DecodeBatchPlan plan = planDecodeBatch(q, out, shape, slices, properties_.multiProcessorCount, invariant_);
    float* partial = plan.groups.empty() ? nullptr : static_cast<float*>(scratch(plan.scratchBytes));
    for (const DecodeBatchPlan::Group& group : plan.groups)
      launchAttentionDecodeBatch(group.slices.data(), static_cast<int>(group.slices.size()), group.cacheType, partial, arrivals_, longSplitsFirst_,
                                 stream_);
    if (!plan.groups.empty()) profiler_.mark("attentionBatch", stream_);
    Device::attentionBatch(q, out, shape, plan.rest);
  }
  void matmulGroup(const Tensor& x, const Tensor* const* weights, Tensor* const* outs, const Tensor* const* biases,
                   int count) override {
    bool sameType = true, blocks = false;
    for (int i = 0; i < count; i++) {
      sameType = sameType && weights[i]->dtype == weights[0]->dtype;
      blocks = blocks || isBlockType(weights[i]->dtype);
    }
    if (blocks) {
      // Block-format weights: one streaming launch for matrices of one format (a Q4_K_M file mixes Q4_K and Q6_K
      // within a layer: those go one by one).
      if (sameType && count <= 3 && x.rows() <= blockGemvRowsMax()) {
        GemvTarget targets[3];
        for (int i = 0; i < count; i++)
          targets[i] = GemvTarget{weights[i]->data, outs[i]->as<float>(), biases[i] ? biases[i]->as<float>() : nullptr, weights[i]->rows()};
        launchBlockGemv(x.as<float>(), blockWorkspace(x, weights[0]->dtype), x.rows(), x.cols(), weights[0]->dtype, targets, count,
                        nullptr, stream_);
      } else {
        for (int i = 0; i < count; i++) matmul(x, *weights[i], *outs[i], biases[i], nullptr);
      }
      profiler_.mark("matmulGroup", stream_);
      return;
    }
    std::array<const void*, 3> data = {};
    for (int i = 0; i < count && i < 3; i++) data[i] = weights[i]->data;
    if (sameType && count <= 3 && skinny(x, weights[0]->dtype, data, count)) {
      GemvTarget targets[3];
      for (int i = 0; i < count; i++)
        targets[i] = GemvTarget{weights[i]->data, outs[i]->as<float>(), biases[i] ? biases[i]->as<float>() : nullptr, weights[i]->rows()};
      launchSkinny(x.as<float>(), roundedInput(x, weights[0]->dtype, count), x.rows(), x.cols(), weights[0]->dtype, targets, nullptr, count,
                   skinnyOptions(), stream_);
      profiler_.mark("matmulGroup", stream_);
      return;
    }
    if (invariant_ && weights[0]->dtype == DType::F32) {
      Device::matmulGroup(x, weights, outs, biases, count);  // one row-tiled matmul each
      profiler_.mark("matmulGroup", stream_);
      return;
    }
    if (sameType && x.rows() > kGemvRows && weights[0]->dtype != DType::F32 && CublasLibrary::instance().available()) {
      // Many rows: round x to the weight dtype once for the whole group, then one GEMM per matrix.
      const void* operand = convertedInput(x, weights[0]->dtype);
      for (int i = 0; i < count; i++) {
        gemm(operand, x.rows(), x.cols(), *weights[i], outs[i]->as<float>(), 0.0f);
        launchBiasResidual(outs[i]->as<float>(), biases[i] ? biases[i]->as<float>() : nullptr, nullptr, x.rows(), weights[i]->rows(), stream_);
      }
      profiler_.mark("matmulGroup", stream_);
      return;
    }
    if (count > 3 || !sameType || !gemvFusable(x.rows(), x.cols(), weights[0]->dtype, x.data)) {
      Device::matmulGroup(x, weights, outs, biases, count);
      profiler_.mark("matmulGroup", stream_);
      return;
    }
    GemvTarget targets[3];
    for (int i = 0; i < count; i++)
      targets[i] = GemvTarget{weights[i]->data, outs[i]->as<float>(), biases[i] ? biases[i]->as<float>() : nullptr, weights[i]->rows()};
    launchGemvGroup(x.as<float>(), x.rows(), x.cols(), weights[0]->dtype, targets, count, stream_);
    profiler_.mark("matmulGroup", stream_);
  }
  void matmulSwiglu(const Tensor& x, const Tensor& gate, const Tensor& up, Tensor& out) override {
    if (isBlockType(gate.dtype) || isBlockType(up.dtype)) {
      if (gate.dtype == up.dtype && x.rows() <= blockGemvRowsMax())
        launchBlockGemvSwiglu(x.as<float>(), blockWorkspace(x, gate.dtype), x.rows(), x.cols(), gate.data, up.data, gate.dtype,
                              gate.rows(), out.as<float>(), stream_);
      else
        Device::matmulSwiglu(x, gate, up, out);  // two matmuls (each of its own format), then the SwiGLU
      profiler_.mark("matmulSwiglu", stream_);
      return;
    }
    bool aligned = reinterpret_cast<uintptr_t>(gate.data) % 16 == 0 && reinterpret_cast<uintptr_t>(up.data) % 16 == 0;
    if (gate.dtype == up.dtype && skinny(x, gate.dtype, {gate.data, up.data}, 2)) {
      launchSkinnySwiglu(x.as<float>(), roundedInput(x, gate.dtype, 2), x.rows(), x.cols(), gate.data, up.data, gate.dtype, gate.rows(),
                         out.as<float>(), skinnyOptions(), stream_);
      profiler_.mark("matmulSwiglu", stream_);
      return;
    }
    if (invariant_ && gate.dtype == DType::F32) {
      Device::matmulSwiglu(x, gate, up, out);  // row-tiled matmuls, then the SwiGLU
      profiler_.mark("matmulSwiglu", stream_);
      return;
    }
    if (gate.dtype == up.dtype && x.rows() > kGemvRows && gate.dtype != DType::F32 && CublasLibrary::instance().available()) {
      // Many rows: x rounded once, two GEMMs, then silu(gate) · up in place.
      const void* operand = convertedInput(x, gate.dtype);
      Temporary product(*this, out);
      gemm(operand, x.rows(), x.cols(), gate, out.as<float>(), 0.0f);
      gemm(operand, x.rows(), x.cols(), up, product.tensor.as<float>(), 0.0f);
      const float* inputs[] = {out.as<float>(), product.tensor.as<float>()};
      launchElementwise(ElementwiseOp::swiglu, inputs, out.as<float>(), out.size, stream_);
      profiler_.mark("matmulSwiglu", stream_);
      return;
    }
    if (gate.dtype != up.dtype || !aligned || !gemvFusable(x.rows(), x.cols(), gate.dtype, x.data)) {
      Device::matmulSwiglu(x, gate, up, out);
      profiler_.mark("matmulSwiglu", stream_);
      return;
    }
    launchGemvSwiglu(x.as<float>(), x.rows(), x.cols(), gate.data, up.data, gate.dtype, gate.rows(), out.as<float>(), stream_);
    profiler_.mark("matmulSwiglu", stream_);
  }
  void ropeWriteCache(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                      const RopeArgs& args, int kvHeads, Tensor& keyCache, Tensor& valueCache,
                      const StreamingLayout& streaming, const KvQuantPlanes& quant) override {
    if (quant.scheme != 0) {
      launchRopeWriteCacheQuantized(q.as<float>(), k.as<float>(), v.as<float>(), positions.as<int32_t>(), frequencies.as<float>(),
                                    q.rows(), args.heads, kvHeads, args.headDim, args.interleaved, keyCache.data, valueCache.data,
                                    keyCache.shape[1], streaming, quant, stream_);
      profiler_.mark("ropeWriteCache", stream_);
      return;
    }
    launchRopeWriteCache(q.as<float>(), k.as<float>(), v.as<float>(), positions.as<int32_t>(), frequencies.as<float>(), q.rows(),
                         args.heads, kvHeads, args.headDim, args.interleaved, keyCache.data, valueCache.data, keyCache.dtype,
                         keyCache.shape[1], streaming, stream_);
    profiler_.mark("ropeWriteCache", stream_);
  }
  void ropeWriteCacheBatch(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                           const RopeArgs& args, int kvHeads, const std::vector<BatchSlice>& slices) override {
    launchRopeWriteCacheBatch(q.as<float>(), k.as<float>(), v.as<float>(), positions.as<int32_t>(), frequencies.as<float>(), args.heads,
                              kvHeads, args.headDim, args.interleaved, slices, stream_);
    profiler_.mark("ropeWriteCacheBatch", stream_);
  }
  void decodeAdvance(const Tensor& next, Tensor& ids, Tensor& positions) override {
    launchDecodeAdvance(next.as<int32_t>(), ids.as<int32_t>(), positions.as<int32_t>(), stream_);
    profiler_.mark("decodeAdvance", stream_);
  }
  void beginCapture() override {
    profiler_.pause(true);
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  }
  int endCapture() override {
    cudaGraph_t graph = nullptr;
    cudaError_t status = cudaStreamEndCapture(stream_, &graph);
    profiler_.pause(false);
    check(status, "cudaStreamEndCapture (an op in the captured region may have synchronised or failed)");
    cudaGraphExec_t exec = nullptr;
    status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(status, "cudaGraphInstantiate");
    graphs_.push_back(exec);
    return static_cast<int>(graphs_.size());
  }
  void launchGraph(int id) override {
    if (id < 1 || id > static_cast<int>(graphs_.size()) || !graphs_[id - 1]) throw Error("DUO_ARG", "unknown or freed graph");
    check(cudaGraphLaunch(graphs_[id - 1], stream_), "cudaGraphLaunch");
    profiler_.mark("graph", stream_);
  }
  void freeGraph(int id) override {
    if (id < 1 || id > static_cast<int>(graphs_.size()) || !graphs_[id - 1]) return;
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    cudaGraphExecDestroy(graphs_[id - 1]);
    graphs_[id - 1] = nullptr;
  }
  std::string communicatorId(const std::string& libraryDirectory) override {
    return NcclLibrary::instance(libraryDirectory).uniqueId();
  }
  int openCommunicator(const std::string& libraryDirectory, const std::string& uniqueId, int rank, int size) override {
    if (size < 1 || rank < 0 || rank >= size)
      throw Error("DUO_ARG", "a communicator's rank must lie in [0, " + std::to_string(size) + ") but is " + std::to_string(rank));
    check(cudaSetDevice(device_), "cudaSetDevice");
    communicators_.push_back(NcclLibrary::instance(libraryDirectory).open(uniqueId, rank, size));
    return static_cast<int>(communicators_.size());
  }
  void allGather(int communicator, const Tensor& input, Tensor& output) override {
    NcclLibrary::instance().allGather(communicatorAt(communicator), input.data, output.data, input.bytes, stream_);
    profiler_.mark("allGather", stream_);
  }
  void broadcast(int communicator, Tensor& tensor, int root) override {
    NcclLibrary::instance().broadcast(communicatorAt(communicator), tensor.data, tensor.bytes, root, stream_);
    profiler_.mark("broadcast", stream_);
  }
  void allReduceSum(int communicator, Tensor& tensor) override {
    NcclLibrary::instance().allReduceSum(communicatorAt(communicator), tensor.as<float>(), static_cast<size_t>(tensor.size), stream_);
    profiler_.mark("allReduceSum", stream_);
  }
  void closeCommunicator(int communicator) override {
    if (communicator < 1 || communicator > static_cast<int>(communicators_.size()) || !communicators_[communicator - 1]) return;
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    NcclLibrary::instance().close(communicators_[communicator - 1]);
    communicators_[communicator - 1] = nullptr;
  }
  void argmax(const Tensor& logits, Tensor& out) override {
    launchArgmax(logits.as<float>(), out.as<int32_t>(), logits.rows(), logits.cols(), scratch(argmaxScratch(logits.rows())), stream_);
    profiler_.mark("argmax", stream_);
  }
  void sample(const Tensor& logits, const Tensor& settings, Tensor& out) override {
    launchSample(logits.as<float>(), settings.as<float>(), out.as<int32_t>(), logits.rows(), logits.cols(), stream_);
    profiler_.mark("sample", stream_);
  }
  void softmax(const Tensor& logits, Tensor& out, float temperature) override {
    launchSoftmax(logits.as<float>(), out.as<float>(), logits.rows(), logits.cols(), temperature, stream_);
    profiler_.mark("softmax", stream_);
  }

  void writeCacheQuantized(const Tensor& source, Tensor& codes, Tensor& scales, int64_t start, int scheme) override {
    const int64_t kvHeads = codes.shape[0];
    launchWriteCacheQuantized(source.as<float>(), source.rows(), source.cols(), kvHeads, static_cast<int>(source.cols() / kvHeads),
                              codes.as<uint8_t>(), scales.as<uint16_t>(), codes.shape[1], start, scheme, stream_);
    profiler_.mark("writeCacheQuantized", stream_);
  }
  void matmulBackward(const Tensor& gradOut, const Tensor& weight, Tensor& gradInput, bool accumulate) override {
    const int64_t n = gradOut.rows(), m = weight.rows(), k = weight.cols();
    if (!CublasLibrary::instance().available()) {
      launchMatmulBackward(gradOut.as<float>(), n, m, weight.data, weight.dtype, k, gradInput.as<float>(), accumulate, stream_);
      profiler_.mark("matmulBackward", stream_);
      return;
    }
    // gradOut rounded to a 16-bit weight's dtype, as the forward rounds x: tensor-core GEMM with f32 accumulation.
    const void* operand = weight.dtype == DType::F32 ? gradOut.data : convertedInput(gradOut, weight.dtype);
    const cudaDataType type =
        weight.dtype == DType::F32 ? CUDA_R_32F : (weight.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F);
    CublasLibrary::instance().gemmBackward(stream_, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), weight.data,
                                           operand, type, gradInput.as<float>(), accumulate ? 1.0f : 0.0f);
    profiler_.mark("matmulBackward", stream_);
  }
  void rmsNormBackward(const Tensor& x, const Tensor& weight, const Tensor& gradOut, Tensor& gradInput, float eps,
                       bool accumulate) override {
    launchRmsNormBackward(x.as<float>(), weight.data, weight.dtype, gradOut.as<float>(), gradInput.as<float>(), x.rows(), x.cols(),
                          eps, accumulate, stream_);
    profiler_.mark("rmsNormBackward", stream_);
  }
  void swigluBackward(const Tensor& gate, const Tensor& up, const Tensor& gradOut, Tensor& gradGate, Tensor& gradUp) override {
    launchSwigluBackward(gate.as<float>(), up.as<float>(), gradOut.as<float>(), gradGate.as<float>(), gradUp.as<float>(), gate.size,
                         stream_);
    profiler_.mark("swigluBackward", stream_);
  }
  void attentionBackward(const Tensor& q, const Tensor& keyCache, const Tensor& valueCache, const Tensor& out,
                         const Tensor& gradOut, Tensor& gradQuery, Tensor& gradKey, Tensor& gradValue,
                         const AttentionBackwardArgs& args) override {
    float* statistics = static_cast<float*>(scratch(attentionBackwardScratch(args)));
    launchAttentionBackward(q.as<float>(), keyCache.data, valueCache.data, keyCache.dtype, out.as<float>(), gradOut.as<float>(),
                            gradQuery.as<float>(), gradKey.as<float>(), gradValue.as<float>(), args, statistics, stream_);
    profiler_.mark("attentionBackward", stream_);
  }
  void gateMix(const Tensor& streaming, const Tensor& full, const Tensor& gates, Tensor& out, const GateMixArgs& args) override {
    launchGateMix(streaming.as<float>(), full.as<float>(), gates.as<float>(), out.as<float>(), streaming.size, args, stream_);
    profiler_.mark("gateMix", stream_);
  }
  void gateMixBackward(const Tensor& gradOut, const Tensor& streaming, const Tensor& full, const Tensor& gates,
                       Tensor& gradStreaming, Tensor& gradGates, const GateMixArgs& args) override {
    float* partial = static_cast<float*>(scratch(gateMixBackwardScratch(streaming.rows(), args.kvHeads)));
    launchGateMixBackward(gradOut.as<float>(), streaming.as<float>(), full.as<float>(), gates.as<float>(), gradStreaming.as<float>(),
                          gradGates.as<float>(), streaming.rows(), args, partial, stream_);
    profiler_.mark("gateMixBackward", stream_);
  }

 private:
  // The f32-activation GEMV serves single rows; 2–64 rows of half weights take the skinny tensor-core matmul where it
  // beats cuBLAS on the H100 (tools/device/skinny-bench.cu, bench/results/2026-12-06-h100-skinny/: a single matrix up
  // to 16 rows, q/k/v up to 64, gate+up up to 64 with the warpgroup kernel and 32 without; at most
  // Tuning::skinnyRowsMax rows), cuBLAS the rest; always the skinny matmul in the batch-invariant mode.
  static constexpr int64_t kGemvRows = 1;
  // Tuning::batchInvariant: a row's results do not depend on the other rows of the call (single rows, too, take the
  // skinny matmul, its k split fixed by the matrix shape; a batch's decode attention splits each sequence as if alone).
  bool invariant_ = false;
  int64_t skinnyRowsMax_ = kSkinnyRowsMax;  // Tuning::skinnyRowsMax
  bool longSplitsFirst_ = true;              // Tuning::longSplitsFirst
  // Whether a matmul of x's rows (`count` matrices sharing x; gate and up count 2) takes the skinny matmul: bf16 / f16
  // weights, k a multiple of 64, 16-byte aligned operands.
  bool skinny(const Tensor& x, DType weightType, const std::array<const void*, 3>& weights, int count) const {
    const int64_t n = x.rows();
    if (invariant_) {
      if (n < 1 || n > kSkinnyRowsMax) return false;
    } else {
      const int64_t widest = count >= 3 || (count == 2 && wgmmaCompiled()) ? 64 : (count == 2 ? 32 : 16);
      if (n < 2 || n > std::min(widest, skinnyRowsMax_)) return false;
    }
    return skinnySupported(x.cols(), weightType, x.data, weights.data(), count);
  }
  SkinnyOptions skinnyOptions() const {
    SkinnyOptions options;
    options.invariant = invariant_;
    return options;
  }
  // More than 8 rows of x: rounded once for the warp-MMA kernel's wide token tiles (none for fewer: it rounds as it
  // loads; nor for the warpgroup kernel that several matrices sharing x take, which rounds each stage's x itself: a
  // launch less, measured faster). `matrices`: how many share x (SwiGLU's gate and up count 2); one (o_proj, down)
  // takes the warp-MMA kernel. Staging f32 x in it to 16 rows measured slower than this launch (issue 16, H100).
  const void* roundedInput(const Tensor& x, DType dtype, int matrices) {
    return x.rows() > 8 && (invariant_ || matrices == 1 || !wgmmaCompiled()) ? convertedInput(x, dtype) : nullptr;
  }
  static constexpr size_t kSmallWrite = 64 * 1024;
  static constexpr int kSmallSlots = 16;
  struct SmallSlot { void* data = nullptr; cudaEvent_t done = nullptr; };
  SmallSlot smallSlots_[kSmallSlots];
  unsigned nextSmallSlot_ = 0;


  // x rounded to a 16-bit weight dtype in the scratch buffer (valid until the next op that uses scratch).
  const void* convertedInput(const Tensor& x, DType dtype) {
    void* converted = scratch(static_cast<size_t>(x.size) * 2);
    launchConvert(x.data, DType::F32, converted, dtype, x.size, stream_);
    return converted;
  }
  // out[n, m] = beta · out + operand[n, k] · weightᵀ through cuBLAS (operand already in the weight's dtype).
  void gemm(const void* operand, int64_t n, int64_t k, const Tensor& weight, float* out, float beta) {
    const cudaDataType type =
        weight.dtype == DType::F32 ? CUDA_R_32F : (weight.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F);
    CublasLibrary::instance().gemm(stream_, static_cast<int>(weight.rows()), static_cast<int>(n), static_cast<int>(k), weight.data,
                                   operand, type, out, beta);
  }

  // Block-format weights (ADR 0010). Decode rows: each weight row streamed once per 8 rows, dequantized in registers.
  // More rows (prefill): x rounded to bf16 and a slice of at most kDecodedSliceBytes of weight rows decoded to bf16 at a
  // time for a cuBLAS GEMM into that slice of out's columns: the matrix itself is never decoded whole.
  static constexpr int64_t kDecodedSliceBytes = 64 << 20;
  void blockMatmul(const Tensor& x, const Tensor& weight, float* out, const float* bias, const float* residual) {
    const int64_t n = x.rows(), k = x.cols(), m = weight.rows();
    CublasLibrary& blas = CublasLibrary::instance();
    if (n <= blockGemvRowsMax() || !blas.available()) {
      const GemvTarget target{weight.data, out, bias, m};
      launchBlockGemv(x.as<float>(), blockWorkspace(x, weight.dtype), n, k, weight.dtype, &target, 1, residual, stream_);
      return;
    }
    float beta = 0.0f;
    if (residual) {
      if (residual != out)
        check(cudaMemcpyAsync(out, residual, static_cast<size_t>(n * m) * sizeof(float), cudaMemcpyDeviceToDevice, stream_),
              "matmul residual copy");
      beta = 1.0f;
    }
    const int64_t sliceRows = std::max<int64_t>(1, std::min<int64_t>(m, kDecodedSliceBytes / (k * 2)));
    const size_t inputBytes = (static_cast<size_t>(n * k) * 2 + 255) / 256 * 256;
    auto* buffer = static_cast<unsigned char*>(scratch(inputBytes + static_cast<size_t>(sliceRows * k) * 2));
    launchConvert(x.data, DType::F32, buffer, DType::BF16, x.size, stream_);
    for (int64_t first = 0; first < m; first += sliceRows) {
      const int64_t rows = std::min(sliceRows, m - first);
      launchDecodeBlockRows(weight.data, weight.dtype, k, first, rows, buffer + inputBytes, stream_);
      blas.gemm(stream_, static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k), buffer + inputBytes, buffer, CUDA_R_16BF,
                out + first, beta, static_cast<int>(m));
    }
    launchBiasResidual(out, bias, nullptr, n, m, stream_);
  }

  // The block-format decode matmul's workspace for x's rows (scratch; null where the format needs none).
  void* blockWorkspace(const Tensor& x, DType dtype) {
    const size_t bytes = blockGemvWorkspaceBytes(dtype, x.rows(), x.cols());
    return bytes > 0 ? scratch(bytes) : nullptr;
  }
  // A growing scratch buffer; stream order makes reuse by consecutive ops safe.
  void* scratch(size_t bytes) {
    if (bytes > scratchBytes_) {
      if (scratch_) check(cudaFreeAsync(scratch_, stream_), "cudaFreeAsync");
      scratch_ = nullptr;
      size_t size = std::max(bytes, scratchBytes_ * 2);
      check(cudaMallocAsync(&scratch_, size, stream_), "cudaMallocAsync (scratch)");
      scratchBytes_ = size;
    }
    return scratch_;
  }

  int device_ = 0;
  cudaDeviceProp properties_{};
  cudaStream_t stream_ = nullptr;
  size_t allocated_ = 0, peak_ = 0;
  void* scratch_ = nullptr;
  int* arrivals_ = nullptr;  // the decode attention's (kDecodeArrivals)
  size_t scratchBytes_ = 0;
  PagedMemory paged_;
  PinnedPool pinned_;
  OpProfiler profiler_;
  std::vector<cudaGraphExec_t> graphs_;
  std::vector<void*> communicators_;  // NCCL's, by handle − 1 (null once closed)
  void* communicatorAt(int handle) const {
    if (handle < 1 || handle > static_cast<int>(communicators_.size()) || !communicators_[handle - 1])
      throw Error("DUO_DISPOSED", "communicator " + std::to_string(handle) + " is closed or was never opened on this device");
    return communicators_[handle - 1];
  }

 public:
  std::vector<OpTime> takeProfile() override { return profiler_.take(stream_); }
  void tune(const Tuning& tuning) override {
    profiler_.enable(tuning.profile);
    invariant_ = tuning.batchInvariant;
    skinnyRowsMax_ = tuning.skinnyRowsMax;
    longSplitsFirst_ = tuning.longSplitsFirst;
    setChainLaunches(tuning.chainLaunches);
    setGemvTuning(tuning);
    setDecodeTuning(tuning);
  }
};

}  // namespace
}  // namespace cuda

Device* createCudaDevice(std::string& reason) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    reason = std::string("no usable CUDA driver or GPU (") + cudaGetErrorName(status) + ": " + cudaGetErrorString(status) + ")";
    cudaGetLastError();
    return nullptr;
  }
  if (count == 0) {
    reason = "no CUDA GPU found";
    return nullptr;
  }
  try {
    return new cuda::CudaDevice();
  } catch (const Error& error) {
    reason = error.what();
    return nullptr;
  }
}

bool cudaCompiled() { return true; }

}  // namespace duo
