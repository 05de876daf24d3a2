// cuBLAS opened at run time (dlopen): the build needs no cuBLAS headers or libraries; the GPU machine supplies them.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>

#include <string>

namespace duo {
namespace cuda {

class CublasLibrary {
 public:
  // Loads libcublas once; `available()` says whether it worked and `reason()` why not.
  static CublasLibrary& instance();
  bool available() const { return handle_ != nullptr; }
  const std::string& reason() const { return reason_; }
  // Row-major out[n, m] = beta·out + x[n, k] · weight[m, k]ᵀ, with x and weight of `type`, out f32, f32 accumulation.
  void gemm(cudaStream_t stream, int m, int n, int k, const void* weight, const void* x, cudaDataType type, float* out,
            float beta);
  // Row-major out[n, k] = beta·out + gradOut[n, m] · weight[m, k] (a matmul's input gradient), f32 accumulation.
  void gemmBackward(cudaStream_t stream, int m, int n, int k, const void* weight, const void* gradOut, cudaDataType type,
                    float* out, float beta);

 private:
  CublasLibrary();
  // One cublasGemmEx in column-major terms: out[rows, columns] = beta·out + op(weight) · operand.
  void run(cudaStream_t stream, int weightOp, int rows, int columns, int inner, const void* weight, int weightLead,
           const void* operand, int operandLead, cudaDataType type, float* out, int outLead, float beta);
  void* library_ = nullptr;
  void* handle_ = nullptr;
  std::string reason_;
  using SetStream = int (*)(void*, cudaStream_t);
  using GemmEx = int (*)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, const void*,
                         cudaDataType, int, const void*, void*, cudaDataType, int, int, int);
  SetStream setStream_ = nullptr;
  GemmEx gemmEx_ = nullptr;
};

}  // namespace cuda
}  // namespace duo
