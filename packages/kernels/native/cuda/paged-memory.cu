// Paged tensors on CUDA (paged-memory.cuh): the driver's virtual-memory calls, reached at run time.
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "paged-memory.cuh"

namespace duo {
namespace cuda {

namespace {
// The driver's virtual-memory calls, reached through cudart's entry-point query (cudart is linked statically and
// libcuda is not linked at all, so one binary still loads where there is no driver).
struct DriverMemory {
  decltype(&cuMemAddressReserve) addressReserve = nullptr;
  decltype(&cuMemAddressFree) addressFree = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) setAccess = nullptr;
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;

  static const DriverMemory& get() {
    static const DriverMemory functions = [] {
      DriverMemory f;
      auto load = [](const char* name, auto& target) {
        void* pointer = nullptr;
        cudaDriverEntryPointQueryResult status;
        check(cudaGetDriverEntryPointByVersion(name, &pointer, 12000, cudaEnableDefault, &status), name);
        if (!pointer || status != cudaDriverEntryPointSuccess) throw Error("DUO_CUDA_NO_VMM", std::string("the driver lacks ") + name);
        target = reinterpret_cast<std::remove_reference_t<decltype(target)>>(pointer);
      };
      load("cuMemAddressReserve", f.addressReserve);
      load("cuMemAddressFree", f.addressFree);
      load("cuMemCreate", f.create);
      load("cuMemRelease", f.release);
      load("cuMemMap", f.map);
      load("cuMemUnmap", f.unmap);
      load("cuMemSetAccess", f.setAccess);
      load("cuMemGetAllocationGranularity", f.granularity);
      return f;
    }();
    return functions;
  }
};

void checkDriver(CUresult status, const char* what) {
  if (status == CUDA_SUCCESS) return;
  const std::string code = status == CUDA_ERROR_OUT_OF_MEMORY ? "DUO_OOM" : "DUO_CUDA_DRIVER_" + std::to_string(static_cast<int>(status));
  throw Error(code, std::string(what) + " failed with driver error " + std::to_string(static_cast<int>(status)));
}
}  // namespace

size_t PagedMemory::pageBytes() const {
  size_t granularity = 0;
  const CUmemAllocationProp prop = allocationProp();
  checkDriver(DriverMemory::get().granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity");
  return granularity;
}

void PagedMemory::reserve(Tensor& tensor) const {
  CUdeviceptr pointer = 0;
  if (tensor.bytes > 0) checkDriver(DriverMemory::get().addressReserve(&pointer, tensor.bytes, 0, 0, 0), "cuMemAddressReserve");
  tensor.data = reinterpret_cast<void*>(pointer);
}

size_t PagedMemory::commit(Tensor& tensor, size_t bytesPerSpan, cudaStream_t stream) const {
  const DriverMemory& driver = DriverMemory::get();
  const size_t page = pageBytes();
  const size_t wanted = std::min(tensor.spanBytes, (bytesPerSpan + page - 1) / page * page);
  if (wanted <= tensor.committedPerSpan) return 0;
  if (tensor.spans == 0) {  // nothing to back (a layer whose heads all stream)
    tensor.committedPerSpan = wanted;
    return 0;
  }
  const size_t piece = wanted - tensor.committedPerSpan;
  const CUmemAllocationProp prop = allocationProp();
  CUmemAccessDesc access = {};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  // What this call maps, so a failure part way (out of memory at span k) can be undone: the tensor then stays as it
  // was, and releasing it later unmaps exactly what its committedPerSpan says.
  std::vector<CUmemGenericAllocationHandle> added;
  int64_t mapped = 0;
  const auto at = [&](int64_t span) {
    return reinterpret_cast<CUdeviceptr>(tensor.data) + span * tensor.spanBytes + tensor.committedPerSpan;
  };
  try {
    for (int64_t span = 0; span < tensor.spans; span++) {
      CUmemGenericAllocationHandle handle = 0;
      CUresult status = driver.create(&handle, piece, &prop, 0);
      if (status == CUDA_ERROR_OUT_OF_MEMORY) {
        // Memory the stream-ordered pool keeps for reuse is memory the driver cannot map: hand it back and retry.
        cudaMemPool_t pool;
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        check(cudaDeviceGetDefaultMemPool(&pool, device_), "cudaDeviceGetDefaultMemPool");
        check(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
        status = driver.create(&handle, piece, &prop, 0);
      }
      checkDriver(status, "cuMemCreate (paged tensor)");
      added.push_back(handle);
      checkDriver(driver.map(at(span), piece, 0, handle, 0), "cuMemMap");
      mapped++;
      checkDriver(driver.setAccess(at(span), piece, &access, 1), "cuMemSetAccess");
    }
  } catch (...) {
    for (int64_t span = 0; span < mapped; span++) driver.unmap(at(span), piece);
    for (CUmemGenericAllocationHandle handle : added) driver.release(handle);
    throw;
  }
  for (CUmemGenericAllocationHandle handle : added) tensor.pageHandles.push_back(handle);
  tensor.committedPerSpan = wanted;
  return piece * static_cast<size_t>(tensor.spans);
}

size_t PagedMemory::release(Tensor& tensor, cudaStream_t stream) const {
  if (!tensor.data) return 0;
  const DriverMemory& driver = DriverMemory::get();
  // Kernels still queued may read the pages: unmap only once the stream is done.
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (int64_t span = 0; span < tensor.spans; span++) {
    if (tensor.committedPerSpan > 0)
      checkDriver(driver.unmap(reinterpret_cast<CUdeviceptr>(tensor.data) + span * tensor.spanBytes, tensor.committedPerSpan), "cuMemUnmap");
  }
  for (unsigned long long handle : tensor.pageHandles) checkDriver(driver.release(handle), "cuMemRelease");
  checkDriver(driver.addressFree(reinterpret_cast<CUdeviceptr>(tensor.data), tensor.bytes), "cuMemAddressFree");
  const size_t released = static_cast<size_t>(tensor.spans) * tensor.committedPerSpan;
  tensor.pageHandles.clear();
  tensor.committedPerSpan = 0;
  tensor.data = nullptr;
  return released;
}

CUmemAllocationProp PagedMemory::allocationProp() const {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device_;
  return prop;
}

}  // namespace cuda
}  // namespace duo
