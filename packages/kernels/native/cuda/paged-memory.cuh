// Paged tensors on one CUDA device: address space reserved up front, physical memory mapped per span as a cache grows.
#pragma once
#include <cuda.h>

#include <cstddef>
#include <unordered_map>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// Address space from cuMemAddressReserve; each commit maps new physical pages per span (one cuMemCreate handle per
// page, cuMemMap), so a cache grows in place and kernels and captured graphs keep their addresses. One handle per page
// so that share can map any whole page of one tensor into another (cuMemMap maps whole allocations only). The device's
// memory accounting takes the bytes commit, share and release return; a shared page counts once.
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
  size_t commit(Tensor& tensor, size_t bytesPerSpan, cudaStream_t stream);
  // Device::sharePaged: maps the source's whole pages below `bytesPerSpan` into `target` and copies the last partial
  // page into a fresh one (on `stream`); returns the bytes newly allocated (the fresh pages only).
  size_t share(Tensor& target, Tensor& source, size_t bytesPerSpan, cudaStream_t stream);
  // Unmaps everything once `stream` is done with it and frees the pages no other tensor maps; returns their bytes.
  size_t release(Tensor& tensor, cudaStream_t stream);

 private:
  CUmemAllocationProp allocationProp() const;
  // Maps `count` fresh pages at `at`, appending their handles to `handles`; undoes itself on failure.
  void mapFresh(CUdeviceptr at, size_t count, std::vector<unsigned long long>& handles, cudaStream_t stream) const;
  int device_ = 0;
  // Tensors mapping each page that more than one tensor maps (a page absent here is mapped by one).
  std::unordered_map<unsigned long long, int> mappings_;
};

}  // namespace cuda
}  // namespace duo
