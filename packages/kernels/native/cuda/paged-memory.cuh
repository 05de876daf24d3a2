// Paged tensors on one CUDA device: address space reserved up front, physical memory mapped per span as a cache grows.
#pragma once
#include <cuda.h>

#include <cstddef>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// Address space from cuMemAddressReserve; each commit maps one new piece of physical memory per span (cuMemCreate +
// cuMemMap), so a cache grows in place and kernels and captured graphs keep their addresses. The device's memory
// accounting takes the bytes commit and release return.
class PagedMemory {
 public:
  PagedMemory() = default;
  explicit PagedMemory(int device) : device_(device) {}
  // The unit memory is mapped in (the driver's minimum granularity).
  size_t pageBytes() const;
  // Sets tensor.data to address space for tensor.bytes, nothing mapped.
  void reserve(Tensor& tensor) const;
  // Maps each span's first `bytesPerSpan` (rounded up to pages; never shrinks); returns the bytes newly mapped over all
  // spans. Work queued on `stream` may be waited for (to hand the stream-ordered pool's memory back when it is short).
  size_t commit(Tensor& tensor, size_t bytesPerSpan, cudaStream_t stream) const;
  // Unmaps and frees everything once `stream` is done with it; returns the bytes that were mapped.
  size_t release(Tensor& tensor, cudaStream_t stream) const;

 private:
  CUmemAllocationProp allocationProp() const;
  int device_ = 0;
};

}  // namespace cuda
}  // namespace duo
