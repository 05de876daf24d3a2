// cuBLAS opened at run time (dlopen): the build needs no cuBLAS headers or libraries; the GPU machine supplies them.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>

#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace duo {
namespace cuda {

// One per process. Every CUDA stream (one per environment's device) gets its own cuBLAS handle: cuBLAS advises
// against sharing a handle between threads, and a handle's stream and workspace are its configuration.
class CublasLibrary {
 public:
  // Loads libcublas once; `available()` says whether it worked and `reason()` why not.
  static CublasLibrary& instance();
  bool available() const { return available_; }
  const std::string& reason() const { return reason_; }
  // Row-major out[n, m] = beta·out + x[n, k] · weight[m, k]ᵀ, with x and weight of `type`, out f32, f32 accumulation;
  // out's rows `outLead` apart (0: m; a slice of a wider output's columns).
  void gemm(cudaStream_t stream, int m, int n, int k, const void* weight, const void* x, cudaDataType type, float* out,
            float beta, int outLead = 0);
  // Row-major out[n, k] = beta·out + gradOut[n, m] · weight[m, k] (a matmul's input gradient), f32 accumulation.
  void gemmBackward(cudaStream_t stream, int m, int n, int k, const void* weight, const void* gradOut, cudaDataType type,
                    float* out, float beta);
  // Destroys the handle of a stream about to be destroyed (its device is going away).
  void forget(cudaStream_t stream);

 private:
  CublasLibrary();
  // One cublasGemmEx in column-major terms: out[rows, columns] = beta·out + op(weight) · operand.
  void run(cudaStream_t stream, int weightOp, int rows, int columns, int inner, const void* weight, int weightLead,
           const void* operand, int operandLead, cudaDataType type, float* out, int outLead, float beta);
  // The handle bound to `stream`, created on first use.
  void* handleFor(cudaStream_t stream);
  void* library_ = nullptr;
  bool available_ = false;
  void* spare_ = nullptr;  // the handle created at load to check that cuBLAS works; the first stream takes it
  std::mutex mutex_;       // guards handles_ and spare_
  std::vector<std::pair<cudaStream_t, void*>> handles_;
  std::string reason_;
  using Create = int (*)(void**);
  using Destroy = int (*)(void*);
  using SetStream = int (*)(void*, cudaStream_t);
  using GemmEx = int (*)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, const void*,
                         cudaDataType, int, const void*, void*, cudaDataType, int, int, int);
  Create create_ = nullptr;
  Destroy destroy_ = nullptr;
  SetStream setStream_ = nullptr;
  GemmEx gemmEx_ = nullptr;
};

}  // namespace cuda
}  // namespace duo
