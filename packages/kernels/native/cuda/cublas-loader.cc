// Loads cuBLAS with dlopen and declares the few entry points we call (values from cublas_api.h).
#include "cublas-loader.h"

#include <dlfcn.h>

#include <vector>

#include "../common.h"
#include "shared-library.h"

namespace duo {
namespace cuda {

namespace {
constexpr int kOpN = 0;               // CUBLAS_OP_N
constexpr int kOpT = 1;               // CUBLAS_OP_T
constexpr int kCompute32F = 68;       // CUBLAS_COMPUTE_32F: f32 accumulation, no TF32 down-conversion
constexpr int kGemmDefault = -1;      // CUBLAS_GEMM_DEFAULT
}  // namespace

CublasLibrary& CublasLibrary::instance() {
  static CublasLibrary library;
  return library;
}

CublasLibrary::CublasLibrary() {
  std::string tried;
  // cublasLt first, with RTLD_GLOBAL, so libcublas finds it even without an rpath.
  openFirstLibrary({"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}, tried);
  library_ = openFirstLibrary({"libcublas.so.13", "libcublas.so.12", "libcublas.so"}, tried);
  if (!library_) {
    reason_ = "libcublas could not be loaded:" + tried;
    return;
  }
  create_ = reinterpret_cast<Create>(dlsym(library_, "cublasCreate_v2"));
  destroy_ = reinterpret_cast<Destroy>(dlsym(library_, "cublasDestroy_v2"));
  setStream_ = reinterpret_cast<SetStream>(dlsym(library_, "cublasSetStream_v2"));
  gemmEx_ = reinterpret_cast<GemmEx>(dlsym(library_, "cublasGemmEx"));
  if (!create_ || !destroy_ || !setStream_ || !gemmEx_) {
    reason_ = "libcublas lacks cublasCreate_v2 / cublasDestroy_v2 / cublasSetStream_v2 / cublasGemmEx";
    return;
  }
  void* handle = nullptr;
  int status = create_(&handle);
  if (status != 0) {
    reason_ = "cublasCreate_v2 failed with status " + std::to_string(status);
    return;
  }
  spare_ = handle;
  available_ = true;
}

void* CublasLibrary::handleFor(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& entry : handles_)
    if (entry.first == stream) return entry.second;
  void* handle = spare_;
  spare_ = nullptr;
  int status = handle ? 0 : create_(&handle);
  if (status == 0) status = setStream_(handle, stream);
  if (status != 0) {
    if (handle) destroy_(handle);
    throw Error("DUO_CUDA_CUBLAS_STATUS_" + std::to_string(status), "creating a cuBLAS handle failed with status " + std::to_string(status));
  }
  handles_.emplace_back(stream, handle);
  return handle;
}

void CublasLibrary::forget(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t i = 0; i < handles_.size(); i++) {
    if (handles_[i].first != stream) continue;
    destroy_(handles_[i].second);
    handles_.erase(handles_.begin() + static_cast<long>(i));
    return;
  }
}

void CublasLibrary::gemm(cudaStream_t stream, int m, int n, int k, const void* weight, const void* x, cudaDataType type,
                         float* out, float beta, int outLead) {
  // Column-major view: outᵀ[m, n] = W[m, k] · xᵀ[k, n]; W is stored row-major [m, k], i.e. column-major [k, m].
  run(stream, kOpT, m, n, k, weight, k, x, k, type, out, outLead > 0 ? outLead : m, beta);
}

void CublasLibrary::gemmBackward(cudaStream_t stream, int m, int n, int k, const void* weight, const void* gradOut,
                                 cudaDataType type, float* out, float beta) {
  // Column-major view: outᵀ[k, n] = Wᵀ[k, m] · gradOutᵀ[m, n]; row-major W [m, k] is column-major [k, m] as it stands.
  run(stream, kOpN, k, n, m, weight, k, gradOut, m, type, out, k, beta);
}

void CublasLibrary::run(cudaStream_t stream, int weightOp, int rows, int columns, int inner, const void* weight,
                        int weightLead, const void* operand, int operandLead, cudaDataType type, float* out, int outLead,
                        float beta) {
  if (!available_) throw Error("DUO_CUDA_CUBLAS_UNAVAILABLE", reason_);
  void* handle = handleFor(stream);  // bound to `stream` when it was created
  const float alpha = 1.0f;
  const int status = gemmEx_(handle, weightOp, kOpN, rows, columns, inner, &alpha, weight, type, weightLead, operand, type,
                             operandLead, &beta, out, CUDA_R_32F, outLead, kCompute32F, kGemmDefault);
  if (status != 0) throw Error("DUO_CUDA_CUBLAS_STATUS_" + std::to_string(status), "cublasGemmEx failed with status " + std::to_string(status));
}

}  // namespace cuda
}  // namespace duo
