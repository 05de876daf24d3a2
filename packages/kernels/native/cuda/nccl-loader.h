// NCCL opened at run time (dlopen), as cuBLAS is: the build needs no NCCL headers or libraries, and a machine without
// NCCL fails only when a communicator is asked for, with every path tried in the message (ADR 0011).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace duo {
namespace cuda {

class NcclLibrary {
 public:
  // Loads libnccl once: from `directory` first (DUO_NCCL_PATH, passed down by the TypeScript side; the first call's
  // decides, so calls on an open communicator pass none), then the CUDA library directories and the loader's search.
  static NcclLibrary& instance(const std::string& directory = {});
  bool available() const { return available_; }
  const std::string& reason() const { return reason_; }
  // The library's version, e.g. 22703 for 2.27.3.
  int version() const { return version_; }
  // A new unique id (rank 0 makes it; every rank opens with it) as 256 hex digits.
  std::string uniqueId();
  // This rank's communicator of `size` ranks (blocks until every rank has joined).
  void* open(const std::string& uniqueIdHex, int rank, int size);
  // Enqueued on `stream`: every rank's `bytes` of `input` into `output`, in rank order.
  void allGather(void* communicator, const void* input, void* output, size_t bytes, cudaStream_t stream);
  // Enqueued on `stream`: rank `root`'s `bytes` at `data` into every rank's `data`.
  void broadcast(void* communicator, void* data, size_t bytes, int root, cudaStream_t stream);
  // Enqueued on `stream`: every rank's `count` floats at `data` replaced in place by their sum over the ranks.
  void allReduceSum(void* communicator, float* data, size_t count, cudaStream_t stream);
  void close(void* communicator);

 private:
  explicit NcclLibrary(const std::string& directory);
  // Throws DUO_NCCL_<name> with the library's text for a failed call.
  void check(int result, const char* what) const;
  void* library_ = nullptr;
  bool available_ = false;
  int version_ = 0;
  std::string reason_;
  struct UniqueId {
    char internal[128];
  };
  using GetVersion = int (*)(int*);
  using GetUniqueId = int (*)(UniqueId*);
  using CommInitRank = int (*)(void**, int, UniqueId, int);
  using CommDestroy = int (*)(void*);
  using AllGather = int (*)(const void*, void*, size_t, int, void*, cudaStream_t);
  using Broadcast = int (*)(const void*, void*, size_t, int, int, void*, cudaStream_t);
  using AllReduce = int (*)(const void*, void*, size_t, int, int, void*, cudaStream_t);
  using ErrorString = const char* (*)(int);
  GetVersion getVersion_ = nullptr;
  GetUniqueId getUniqueId_ = nullptr;
  CommInitRank commInitRank_ = nullptr;
  CommDestroy commDestroy_ = nullptr;
  AllGather allGather_ = nullptr;
  Broadcast broadcast_ = nullptr;
  AllReduce allReduce_ = nullptr;
  ErrorString errorString_ = nullptr;
};

}  // namespace cuda
}  // namespace duo
