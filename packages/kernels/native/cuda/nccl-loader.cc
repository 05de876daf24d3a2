// Loads NCCL with dlopen and declares the few entry points we call (values from nccl.h: ncclUint8 = 1; results 0 = ok,
// 1 unhandled CUDA error, 2 system error, 3 internal error, 4 invalid argument, 5 invalid usage, 6 remote error).
#include "nccl-loader.h"

#include <dlfcn.h>

#include <vector>

#include "../common.h"
#include "shared-library.h"

namespace duo {
namespace cuda {

namespace {
constexpr int kUint8 = 1;  // ncclUint8: gathers move bytes, whatever the tensor's dtype
constexpr int kFloat32 = 7;  // ncclFloat32
constexpr int kSum = 0;      // ncclSum
const char* const kResultNames[] = {"ncclSuccess",         "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
                                    "ncclInvalidArgument", "ncclInvalidUsage",       "ncclRemoteError", "ncclInProgress"};
}  // namespace

NcclLibrary& NcclLibrary::instance(const std::string& directory) {
  static NcclLibrary library(directory);
  return library;
}

NcclLibrary::NcclLibrary(const std::string& directory) {
  std::string tried;
  std::vector<std::string> directories;
  if (!directory.empty()) directories.push_back(directory);
  library_ = openFirstLibrary({"libnccl.so.2", "libnccl.so"}, tried, directories);
  if (!library_) {
    reason_ = "libnccl could not be loaded (install NCCL, or set DUO_NCCL_PATH to the directory of libnccl.so.2):" + tried;
    return;
  }
  getVersion_ = reinterpret_cast<GetVersion>(dlsym(library_, "ncclGetVersion"));
  getUniqueId_ = reinterpret_cast<GetUniqueId>(dlsym(library_, "ncclGetUniqueId"));
  commInitRank_ = reinterpret_cast<CommInitRank>(dlsym(library_, "ncclCommInitRank"));
  commDestroy_ = reinterpret_cast<CommDestroy>(dlsym(library_, "ncclCommDestroy"));
  allGather_ = reinterpret_cast<AllGather>(dlsym(library_, "ncclAllGather"));
  broadcast_ = reinterpret_cast<Broadcast>(dlsym(library_, "ncclBroadcast"));
  allReduce_ = reinterpret_cast<AllReduce>(dlsym(library_, "ncclAllReduce"));
  errorString_ = reinterpret_cast<ErrorString>(dlsym(library_, "ncclGetErrorString"));
  if (!getVersion_ || !getUniqueId_ || !commInitRank_ || !commDestroy_ || !allGather_ || !broadcast_ || !allReduce_ ||
      !errorString_) {
    reason_ = "libnccl lacks one of ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclAllGather, "
              "ncclBroadcast, ncclAllReduce, ncclGetErrorString (NCCL 2.7 or later is needed)";
    return;
  }
  if (getVersion_(&version_) != 0) {
    reason_ = "ncclGetVersion failed";
    return;
  }
  available_ = true;
}

void NcclLibrary::check(int result, const char* what) const {
  if (result == 0) return;
  const std::string name = result > 0 && result < 8 ? kResultNames[result] : "ncclResult" + std::to_string(result);
  throw Error("DUO_NCCL_" + name, std::string(what) + " failed: " + name + " (" + errorString_(result) + ")");
}

std::string NcclLibrary::uniqueId() {
  if (!available_) throw Error("DUO_NCCL_UNAVAILABLE", reason_);
  UniqueId id{};
  check(getUniqueId_(&id), "ncclGetUniqueId");
  static const char* const kDigits = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * sizeof(id.internal));
  for (char byte : id.internal) {
    const auto value = static_cast<unsigned char>(byte);
    hex += kDigits[value >> 4];
    hex += kDigits[value & 15];
  }
  return hex;
}

void* NcclLibrary::open(const std::string& uniqueIdHex, int rank, int size) {
  if (!available_) throw Error("DUO_NCCL_UNAVAILABLE", reason_);
  UniqueId id{};
  if (uniqueIdHex.size() != 2 * sizeof(id.internal))
    throw Error("DUO_ARG", "an NCCL unique id is 256 hex digits but received " + std::to_string(uniqueIdHex.size()) + " characters");
  auto digit = [&](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw Error("DUO_ARG", std::string("an NCCL unique id is hex digits but holds '") + c + "'");
  };
  for (size_t i = 0; i < sizeof(id.internal); i++)
    id.internal[i] = static_cast<char>(digit(uniqueIdHex[2 * i]) * 16 + digit(uniqueIdHex[2 * i + 1]));
  void* communicator = nullptr;
  check(commInitRank_(&communicator, size, id, rank), "ncclCommInitRank");
  return communicator;
}

void NcclLibrary::allGather(void* communicator, const void* input, void* output, size_t bytes, cudaStream_t stream) {
  check(allGather_(input, output, bytes, kUint8, communicator, stream), "ncclAllGather");
}

void NcclLibrary::broadcast(void* communicator, void* data, size_t bytes, int root, cudaStream_t stream) {
  check(broadcast_(data, data, bytes, kUint8, root, communicator, stream), "ncclBroadcast");
}

void NcclLibrary::allReduceSum(void* communicator, float* data, size_t count, cudaStream_t stream) {
  check(allReduce_(data, data, count, kFloat32, kSum, communicator, stream), "ncclAllReduce");
}

void NcclLibrary::close(void* communicator) {
  if (communicator) commDestroy_(communicator);
}

}  // namespace cuda
}  // namespace duo
