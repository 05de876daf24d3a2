// The addon's per-environment state and the argument helpers every op wrapper uses (napi/*-ops.cc).
#pragma once
#include <napi.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "../common.h"

namespace duo {
namespace binding {

// Everything the addon holds for one JS environment (the main thread, each worker thread): its tensor registry and its
// devices, each device with its own memory accounting and, on CUDA, its own stream, scratch, pinned staging and graphs.
// Node keeps one per environment (napi_set_instance_data, addon.cc) and deletes it when the environment is torn down (a
// worker exits), which frees the tensors still registered there. Shared between environments: only cuBLAS (its library
// and one handle per stream, guarded: cuda/cublas-loader.cc) and the CUDA primary context.
// The caches of the sequences of a batched step (cacheBatchCreate): per sequence, per layer, the slice template (its
// caches, layout and quantization) and the tensors it points into, checked alive at every use; the step's rows and
// positions are set per step (cacheBatchSpans).
struct CacheBatch {
  struct Entry {
    BatchSlice slice;
    std::vector<std::pair<uint32_t, void*>> tensors;  // id and data pointer of every tensor the slice reads
  };
  int layers = 0;
  std::vector<std::vector<Entry>> sequences;  // [sequence][layer]
  std::vector<int64_t> rows, queryStarts;     // per sequence, this step
};

struct AddonState {
  std::vector<Tensor*> registry{nullptr};  // id 0 is never used: -1/0 mean "none" on the JS side
  std::vector<std::unique_ptr<CacheBatch>> batches;  // cacheBatchCreate's, by id − 1 (null once freed)
  // Shared so that a read or synchronisation still running on the libuv pool keeps its device alive.
  std::shared_ptr<Device> cpuDevice;
  std::shared_ptr<Device> cudaDevice;
  std::string cudaReason;
  bool cudaProbed = false;

  AddonState() = default;
  AddonState(const AddonState&) = delete;
  AddonState& operator=(const AddonState&) = delete;
  ~AddonState();
};

// This environment's state (set by addon.cc when the addon loads there).
inline AddonState& stateOf(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }

// The environment's device named by `value` ('cpu' or 'cuda', a DeviceKind), created on first use.
const std::shared_ptr<Device>& sharedDeviceOf(const Napi::Value& value);
inline Device* deviceOf(const Napi::Value& value) { return sharedDeviceOf(value).get(); }
// The shared handle of a tensor's device (for work that outlives the call).
std::shared_ptr<Device> sharedDeviceOf(Napi::Env env, const Tensor& tensor);

// The tensor with id `value`; DUO_DISPOSED when it was freed or never existed.
Tensor& tensorAt(const Napi::Value& value);
// The tensor with id `value`, or nullptr for undefined, null or an id ≤ 0 ("none").
Tensor* optionalTensor(const Napi::Value& value);
// Throws DUO_ARG unless every tensor given (nullptr: absent) lives on one device.
void sameDevice(std::initializer_list<const Tensor*> tensors);
inline int64_t integer(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }
inline double number(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().DoubleValue(); }

// Paged tensors may be read and written only where memory is committed: the whole tensor, once fully committed.
inline void checkCommitted(const Tensor& tensor, const char* what) {
  if (tensor.paged && tensor.committedPerSpan < tensor.spanBytes)
    throw Error("DUO_ARG", std::string(what) + " of a paged tensor needs all of it committed");
}

// Gives an allocated tensor its id (its index in the registry) and returns the id to JS.
Napi::Value registerTensor(Napi::Env env, std::unique_ptr<Tensor> tensor, Device* device);
// Frees a tensor's memory (not its registry entry).
void releaseMemory(Tensor& tensor);

}  // namespace binding
}  // namespace duo
