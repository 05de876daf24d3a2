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

void PagedMemory::mapFresh(CUdeviceptr at, size_t count, std::vector<unsigned long long>& handles, cudaStream_t stream) const {
  const DriverMemory& driver = DriverMemory::get();
  const size_t page = pageBytes();
  const CUmemAllocationProp prop = allocationProp();
  std::vector<CUmemGenericAllocationHandle> added;
  size_t mapped = 0;
  try {
    for (size_t i = 0; i < count; i++) {
      CUmemGenericAllocationHandle handle = 0;
      CUresult status = driver.create(&handle, page, &prop, 0);
      if (status == CUDA_ERROR_OUT_OF_MEMORY) {
        // Memory the stream-ordered pool keeps for reuse is memory the driver cannot map: hand it back and retry.
        cudaMemPool_t pool;
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        check(cudaDeviceGetDefaultMemPool(&pool, device_), "cudaDeviceGetDefaultMemPool");
        check(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
        status = driver.create(&handle, page, &prop, 0);
      }
      checkDriver(status, "cuMemCreate (paged tensor)");
      added.push_back(handle);
      checkDriver(driver.map(at + i * page, page, 0, handle, 0), "cuMemMap");
      mapped++;
    }
  } catch (...) {
    for (size_t i = 0; i < mapped; i++) driver.unmap(at + i * page, page);
    for (CUmemGenericAllocationHandle handle : added) driver.release(handle);
    throw;
  }
  handles.insert(handles.end(), added.begin(), added.end());
}

size_t PagedMemory::commit(Tensor& tensor, size_t bytesPerSpan, cudaStream_t stream) {
  const DriverMemory& driver = DriverMemory::get();
  const size_t page = pageBytes();
  const size_t wanted = std::min(tensor.spanBytes, (bytesPerSpan + page - 1) / page * page);
  if (wanted <= tensor.committedPerSpan) return 0;
  if (tensor.spans == 0) {  // nothing to back (a layer whose heads all stream)
    tensor.committedPerSpan = wanted;
    return 0;
  }
  tensor.spanPages.resize(static_cast<size_t>(tensor.spans));
  const size_t piece = wanted - tensor.committedPerSpan;
  CUmemAccessDesc access = {};
  access.location = allocationProp().location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  const auto at = [&](int64_t span) {
    return reinterpret_cast<CUdeviceptr>(tensor.data) + span * tensor.spanBytes + tensor.committedPerSpan;
  };
  // A failure part way (out of memory at span k) undoes this call: the tensor then stays as it was, and releasing it
  // later unmaps exactly what its committedPerSpan says.
  int64_t done = 0;
  try {
    for (int64_t span = 0; span < tensor.spans; span++) {
      mapFresh(at(span), piece / page, tensor.spanPages[span], stream);
      done++;
      checkDriver(driver.setAccess(at(span), piece, &access, 1), "cuMemSetAccess");
    }
  } catch (...) {
    for (int64_t span = 0; span < done; span++) {
      std::vector<unsigned long long>& handles = tensor.spanPages[span];
      driver.unmap(at(span), piece);
      for (size_t i = handles.size() - piece / page; i < handles.size(); i++) driver.release(handles[i]);
      handles.resize(handles.size() - piece / page);
    }
    throw;
  }
  tensor.committedPerSpan = wanted;
  return piece * static_cast<size_t>(tensor.spans);
}

size_t PagedMemory::share(Tensor& target, Tensor& source, size_t bytesPerSpan, cudaStream_t stream) {
  const DriverMemory& driver = DriverMemory::get();
  const size_t page = pageBytes();
  const size_t whole = bytesPerSpan / page, total = (bytesPerSpan + page - 1) / page;
  target.spanPages.resize(static_cast<size_t>(target.spans));
  CUmemAccessDesc access = {};
  access.location = allocationProp().location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  size_t fresh = 0;
  for (int64_t span = 0; span < target.spans; span++) {
    const CUdeviceptr from = reinterpret_cast<CUdeviceptr>(source.data) + span * source.spanBytes;
    const CUdeviceptr to = reinterpret_cast<CUdeviceptr>(target.data) + span * target.spanBytes;
    std::vector<unsigned long long>& handles = target.spanPages[span];
    // A failure leaves what is mapped recorded (released exactly by release) and the target otherwise unusable.
    target.sharesPages = source.sharesPages = true;
    for (size_t i = 0; i < whole; i++) {
      const unsigned long long handle = source.spanPages[span][i];
      checkDriver(driver.map(to + i * page, page, 0, handle, 0), "cuMemMap (shared page)");
      handles.push_back(handle);
      auto found = mappings_.find(handle);
      if (found == mappings_.end()) mappings_.emplace(handle, 2);
      else found->second++;
    }
    if (total > whole) {
      mapFresh(to + whole * page, 1, handles, stream);
      fresh += page;
    }
    if (total > 0) checkDriver(driver.setAccess(to, total * page, &access, 1), "cuMemSetAccess");
    // Copy on write: the partial page's bytes, after the work already queued that writes them.
    if (total > whole)
      check(cudaMemcpyAsync(reinterpret_cast<void*>(to + whole * page), reinterpret_cast<const void*>(from + whole * page),
                            bytesPerSpan - whole * page, cudaMemcpyDeviceToDevice, stream),
            "cudaMemcpyAsync (shared paged tensor)");
  }
  target.committedPerSpan = total * page;
  return fresh;
}

size_t PagedMemory::release(Tensor& tensor, cudaStream_t stream) {
  if (!tensor.data) return 0;
  const DriverMemory& driver = DriverMemory::get();
  const size_t page = pageBytes();
  // Kernels still queued may read the pages: unmap only once the stream is done.
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  size_t released = 0;
  for (int64_t span = 0; span < static_cast<int64_t>(tensor.spanPages.size()); span++) {
    const std::vector<unsigned long long>& handles = tensor.spanPages[span];
    const CUdeviceptr base = reinterpret_cast<CUdeviceptr>(tensor.data) + span * tensor.spanBytes;
    if (!handles.empty()) checkDriver(driver.unmap(base, handles.size() * page), "cuMemUnmap");
    for (unsigned long long handle : handles) {
      auto found = mappings_.find(handle);
      if (found != mappings_.end()) {
        // Another tensor still maps it: it keeps the handle.
        if (--found->second == 1) mappings_.erase(found);
        continue;
      }
      checkDriver(driver.release(handle), "cuMemRelease");
      released += page;
    }
  }
  checkDriver(driver.addressFree(reinterpret_cast<CUdeviceptr>(tensor.data), tensor.bytes), "cuMemAddressFree");
  tensor.spanPages.clear();
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
